"""The profiler hook's Chrome traces, opened with Holistic Trace Analysis."""
import json
import subprocess

import pytest
from hta.trace_analysis import TraceAnalysis

from conftest import CLI, TEST_PLUGINS, logged_rows

DIGITS = """
[trainer]
max_steps = {steps}
gradient_accumulation_steps = 2
grad_clip = 1.0
[task]
plugin = "digits_cnn"
batch_size = 16
[optimizer]
type = "adamw"
lr = 1e-3
[[hooks]]
plugin = "ema"
[[hooks]]
plugin = "logging"
interval = 1
"""

PROFILER = '[[hooks]]\nplugin = "profiler"\n'


def windows(workspace):
    return sorted(p.name for p in (workspace / "profiler").iterdir())


def events_by_iteration(window_dir):
    """{step: [event name, ...]} from HTA's view of the window's rank-0 trace."""
    analysis = TraceAnalysis(trace_dir=str(window_dir), include_last_profiler_step=True)
    trace = analysis.t.get_trace(0)
    names = analysis.t.symbol_table.get_sym_table()
    out = {}
    for iteration, name in zip(trace["iteration"], trace["name"]):
        out.setdefault(int(iteration), []).append(names[name])
    return out, trace, names


def test_each_window_holds_its_steps_with_forward_backward_and_optimizer_step(run_tloop):
    ws = run_tloop(DIGITS.format(steps=12) + PROFILER + "wait = 1\nwarmup = 1\nactive = 2\nrepeat = 2\n")
    # cycle of 4 steps (1 wait, 1 warm-up, 2 recorded), twice: steps 3-4 and 7-8
    assert windows(ws) == ["steps_3-4", "steps_7-8"]
    for window, steps in (("steps_3-4", (3, 4)), ("steps_7-8", (7, 8))):
        files = list((ws / "profiler" / window).iterdir())
        assert [f.name for f in files] == ["rank0.pt.trace.json"]
        assert json.loads(files[0].read_text())["distributedInfo"]["rank"] == 0
        by_step, trace, names = events_by_iteration(ws / "profiler" / window)
        assert set(by_step) - {-1} == set(steps)
        for step in steps:
            names_in_step = by_step[step]
            assert names_in_step.count(f"ProfilerStep#{step}") == 1
            # two micro-batches each: fetch, forward, backward; one clipped optimizer step
            assert names_in_step.count("tloop::next_batch") == 2
            assert names_in_step.count("tloop::forward") == 2
            assert names_in_step.count("tloop::backward") == 2
            assert names_in_step.count("tloop::clip_grad_norm") == 1
            assert names_in_step.count("Optimizer.step#AdamW.step") == 1
            assert names_in_step.count("hooks[0] (ema) after_step") == 1
            assert "aten::_foreach_lerp_" in names_in_step  # the EMA update inside its hook call

        # The convolution runs inside a forward range, on the same thread.
        forwards = trace[trace["name"] == names.index("tloop::forward")]
        convs = trace[trace["name"] == names.index("aten::conv2d")]
        assert len(convs) > 0 and len(convs) % (2 * len(steps)) == 0  # as many in every forward
        for _, conv in convs.iterrows():
            inside = forwards[(forwards["ts"] <= conv["ts"]) & (conv["ts"] + conv["dur"] <= forwards["ts"] + forwards["dur"])]
            assert len(inside) == 1


def test_repeat_zero_records_until_the_end_and_writes_the_window_cut_short(run_tloop):
    ws = run_tloop(DIGITS.format(steps=9) + PROFILER + "skip_first = 1\nwait = 0\nwarmup = 0\nactive = 3\nrepeat = 0\n")
    assert windows(ws) == ["steps_2-4", "steps_5-7", "steps_8-9"]
    by_step, _, _ = events_by_iteration(ws / "profiler" / "steps_8-9")
    assert set(by_step) - {-1} == {8, 9}


def test_profiling_leaves_the_losses_unchanged(run_tloop, tmp_path):
    plain = [row["train/loss"] for row in logged_rows(run_tloop(DIGITS.format(steps=6)))]
    (tmp_path / "ws").rename(tmp_path / "plain")
    profiled = [row["train/loss"] for row in logged_rows(run_tloop(DIGITS.format(steps=6) + PROFILER))]
    assert len(plain) == 6
    assert profiled == plain


@pytest.mark.parametrize("bad", ["../outside", "/tmp/absolute", ""])
def test_a_directory_outside_the_workspace_is_refused(tmp_path, bad):
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'[plugins]\npaths = ["{TEST_PLUGINS}"]\n[run]\nworkspace = "{tmp_path / "ws"}"\n'
        + DIGITS.format(steps=2)
        + PROFILER
        + f'dir = "{bad}"\n'
    )
    result = subprocess.run([CLI, "run", str(spec)], capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "profiler" in result.stderr and f'dir = "{bad}"' in result.stderr
    assert not (tmp_path / "outside").exists()
