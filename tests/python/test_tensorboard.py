"""TensorBoard event files read back by TensorBoard's own EventAccumulator."""
import json
import signal
import subprocess

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from conftest import CLI, TEST_PLUGINS, logged_rows, start_until

SPEC = """
[trainer]
max_steps = {steps}
[task]
plugin = "digits_cnn"
num_images = 3
[[hooks]]
plugin = "logging"
interval = 5
[[hooks]]
plugin = "tensorboard"
flush_interval = 5
"""


# The validation split every 10 steps: rows of their own, and the last
# evaluation's prediction images.
EVAL = """
[eval]
interval = 10
"""


def accumulate(ws):
    ea = EventAccumulator(str(ws / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def hparams(ea):
    out = {}
    for tag, content in ea.PluginTagToContent("hparams").items():
        out[tag] = plugin_data_pb2.HParamsPluginData.FromString(content)
    return out


def test_scalars_images_spec_text_and_hparams(run_tloop):
    ws = run_tloop(SPEC.format(steps=20) + EVAL)
    ea = accumulate(ws)
    rows = [json.loads(line) for line in (ws / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 10, 15, 20, 20]  # the evaluations log rows of their own
    keys = {k for r in rows for k in r} - {"step"}
    assert {"train/loss", "train/accuracy", "val/accuracy", "train/lr/group_0"} <= keys
    for key in keys:
        logged = {r["step"]: r[key] for r in rows if key in r}
        events = ea.Scalars(key)
        assert [e.step for e in events] == sorted(logged), key
        for event in events:
            assert event.value == pytest.approx(logged[event.step], rel=1e-6), key  # float32 in the event file
    images = ea.Tags()["images"]
    assert len([t for t in images if t.startswith("samples/")]) == 3
    assert len([t for t in images if t.startswith("predictions/")]) == 3
    sample = ea.Images(images[0])[0]
    assert (sample.step, sample.width, sample.height) == (1, 32, 32)
    assert sample.encoded_image_string.startswith(b"\x89PNG")
    text = ea.Tensors("run_spec/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "[trainer]" in text and "max_steps = 20" in text
    h = hparams(ea)
    start = h["_hparams_/session_start_info"].session_start_info
    assert start.hparams["trainer.max_steps"].number_value == 20
    assert start.hparams["task.plugin"].string_value == "digits_cnn"
    assert start.hparams["hooks.1.plugin"].string_value == "tensorboard"
    assert h["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS


def _loss_events(ws):
    """How many train/loss scalars TensorBoard reads from the event files so far."""
    try:
        return len(accumulate(ws).Scalars("train/loss"))
    except Exception:  # no directory, file or such tag yet (the readers raise several kinds)
        return 0


def _start_long_run(tmp_path):
    ws = tmp_path / "ws"
    spec = tmp_path / "long.toml"
    spec.write_text(f'[plugins]\npaths = ["{TEST_PLUGINS}"]\n[run]\nworkspace = "{ws}"\n' + SPEC.format(steps=100000000))
    return start_until(spec, lambda: _loss_events(ws) >= 3, "three flushed train/loss events"), ws


def test_a_killed_run_leaves_a_readable_file_up_to_its_last_flush(tmp_path):
    proc, ws = _start_long_run(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = [row["step"] for row in logged_rows(ws)]
    ea = accumulate(ws)
    steps = [e.step for e in ea.Scalars("train/loss")]
    assert len(steps) >= 3
    assert steps == logged[: len(steps)]  # everything up to the last flush, in order
    assert "_hparams_/session_end_info" not in hparams(ea)


def test_a_signal_exit_flushes_and_closes_the_session_as_failed(tmp_path):
    proc, ws = _start_long_run(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 128 + signal.SIGTERM
    ea = accumulate(ws)
    logged = [row["step"] for row in logged_rows(ws)]
    assert [e.step for e in ea.Scalars("train/loss")] == logged  # nothing lost
    assert hparams(ea)["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_FAILURE


def test_a_resumed_run_shows_each_step_once_in_tensorboard_and_metrics_jsonl(run_tloop, tmp_path):
    checkpointing = '[[hooks]]\nplugin = "checkpointing"\ninterval = 10\n'
    # The first run ends after step 15 (event_recorder asks to exit with code
    # 3; an exit with 0 would save the step): 11..15 are logged but not
    # checkpointed, so the second run trains them again.
    stop_at_15 = f'[[hooks]]\nplugin = "event_recorder"\nexit_at = 15\nexit_code = 3\nfile = "{tmp_path / "events.txt"}"\n'
    ws = tmp_path / "ws"
    spec = tmp_path / "stopped.toml"
    spec.write_text(f'[plugins]\npaths = ["{TEST_PLUGINS}"]\n[run]\nworkspace = "{ws}"\n' + SPEC.format(steps=20) + checkpointing + stop_at_15)
    assert subprocess.run([CLI, "run", str(spec)], capture_output=True).returncode == 3
    first = logged_rows(ws)
    assert [r["step"] for r in first] == [5, 10, 15]

    ws = run_tloop(SPEC.format(steps=20) + checkpointing)  # resumes from step 10
    rows = logged_rows(ws)
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert rows[:2] == first[:2]
    # the first run's row of step 15 is kept aside, not lost
    replaced = [json.loads(line) for line in (ws / "metrics.replaced.jsonl").read_text().splitlines()]
    assert replaced == [first[2]]

    # TensorBoard drops the earlier file's events from the restart on (SessionLog START).
    losses = accumulate(ws).Scalars("train/loss")
    assert [e.step for e in losses] == [5, 10, 15, 20]
    for event, row in zip(losses, rows):
        assert event.value == pytest.approx(row["train/loss"], rel=1e-6)
