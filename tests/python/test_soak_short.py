"""A short pass of scripts/soak (the soak itself runs outside CI): the same
spec, every hook on and async checkpoints every 100 steps, for 600 steps.
Checks that no file descriptor stays open for good after warm-up and that
the final weights equal those of the same run done in two halves. Resident
memory has a loose bound here (10%, against the soak's 2%): at 600 steps
both of its windows lie within 600 steps of start-up, where memory may still
be settling, so the real limit would make a fragile test (short runs have
measured flat so far); this only catches a gross leak."""
import os
import pathlib
import sys

from conftest import CLI

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import soak  # noqa: E402

STEPS = 600


def test_soak_short_pass(tmp_path):
    report, problems = soak.soak(CLI, STEPS, tmp_path / "soak", log=lambda message: None)
    problems = soak.check(report, problems, rss_limit=0.10)
    assert not problems, soak.format_report(report, problems, os.cpu_count())
    assert report["resumed"] and report["weights_identical"]
    assert report["fds_after_warmup"] >= 6  # the run's own files are seen (lock, log, metrics, tb, wandb, ...)


def synthetic_samples(leak_from=None, rss_growth_per_step=0):
    """A sample every 2 steps of a 600-step run with 8 fds open throughout, a
    save in flight (two fds) at every checkpoint step, and from step leak_from
    on one more fd that is never closed."""
    base = {i: f"/w/ws/file{i}" for i in range(8)}
    samples = []
    for step in range(0, 600, 2):
        fds = dict(base)
        if leak_from is not None and step >= leak_from:  # keeps its number; later ones take the next
            fds[len(fds)] = f"/w/ws/checkpoints/{leak_from}/state.pt"
        if step % 100 < 6:
            fds[len(fds)] = f"/w/ws/checkpoints/.tmp-{step // 100 * 100}/model.pt"
            fds[len(fds)] = "/w/ws/checkpoints"
        samples.append(soak.Sample(step / 1000, step, 350 * 1024 + rss_growth_per_step * step, 180 * 1024, fds))
    return samples


def test_fd_rule_tells_a_leak_from_a_save_in_flight():
    clean = soak.analyse(synthetic_samples(), 600)
    assert (clean["fds_after_warmup"], clean["fds_settled_max"], clean["fds_raw_max"]) == (8, 8, 10)
    assert clean["fds_grown"] == [] and clean["rss_growth"] == 0

    leaky = soak.analyse(synthetic_samples(leak_from=350), 600)
    assert leaky["fds_settled_max"] == 9
    assert leaky["fds_grown"] == ["fd 8 -> /w/ws/checkpoints/350/state.pt (settled from step 400)"]

    growing = soak.analyse(synthetic_samples(rss_growth_per_step=100), 600)  # 100 KiB a step
    assert growing["rss_growth"] > 0.02
