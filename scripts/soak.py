#!/usr/bin/env python3
"""Soak test: a long regression_mlp run with every built-in hook on.

    scripts/soak [--steps N] [--tloop PATH] [--keep DIR]

1. One run of N steps (default 20000) with every hook that works on a CPU
   without network, checkpoints every 100 steps (async). While it goes, the
   process's VmRSS (/proc/<pid>/status) and open file descriptors
   (/proc/<pid>/fd and their link targets) are sampled every few milliseconds,
   each sample keyed by the last step seen in metrics.jsonl.
2. The same spec in two halves in another workspace: max_steps N/2, then N,
   which resumes from the checkpoint of step N/2.
3. Checks, after a warm-up of W = max(N/10, 2 checkpoint intervals) steps:
   - RSS: the median of the samples of the last max(N/20, 200) steps before
     step N is less than 2% above the median of the samples of as many steps
     from W on. (Medians: one sample caught in a save or a profiler window
     moves neither.)
   - fds: no growth. The steps after W are cut into windows of 2 checkpoint
     intervals; a window's settled fds are those open in every one of its
     samples (same number, same target). The checkpointing hook has at most
     one save in flight (a save waits for the one before) and the profiler
     writes its trace within a step, so a file a save writes cannot stay open
     through a whole window, while a leaked one stays open for good (the
     kernel's link follows a finished save's rename, so it stays visible). The
     largest settled count of any window must equal the first window's; a fd
     leaked once within the last window is not seen. The raw maximum, fds of
     saves in flight included, is reported too.
   - Weights: model.pt of the one-go run's last checkpoint and its
     ema_model.pt equal those of the two-halves run, tensor for tensor
     (torch.equal), and the second half did resume at step N/2.
Prints a report; exit status 0 when every check holds, 1 when one fails, 2 for
bad usage. tests/python/test_soak_short.py runs the same code with a small N.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHECKPOINT_INTERVAL = 100
RSS_GROWTH_LIMIT = 0.02
POLL_S = 0.002  # between samples; never a wait for progress
MIN_WINDOW_SAMPLES = 5

# Every built-in hook that works on a CPU without network. Hooks run phase by
# phase whatever the order here. Options are set so that each hook does its
# periodic work many times over the run.
SPEC = """\
[run]
name = "soak"
workspace = "{workspace}"
seed = 0

[trainer]
max_steps = {steps}
device = "cpu"
grad_clip = 1.0

[task]
plugin = "regression_mlp"      # small: the soak is about the runtime, not the model

[optimizer]
type = "adamw"
lr = 1e-3
weight_decay = 0.01

[scheduler]                    # does not depend on max_steps, so two halves train as one run
type = "constant"
warmup_steps = 100

[[hooks]]
plugin = "cuda_max_memory"     # on a CPU: peak RSS as max_rss

[[hooks]]
plugin = "ema"

[[hooks]]
plugin = "progress"
interval = 100
with_records = true
bar = "never"

[[hooks]]
plugin = "logging"
interval = 10

[[hooks]]
plugin = "tensorboard"

[[hooks]]
plugin = "wandb"               # offline: writes files only, no network
mode = "offline"

# regression_mlp logs no images: image_files is loaded and sees every event
# but never writes a file.
[[hooks]]
plugin = "image_files"

[[hooks]]
plugin = "checkpointing"
interval = {checkpoint_interval}
keep_previous = 2
keep_interval = 5000
async = true
safetensors = true

[[hooks]]
plugin = "profiler"            # one window of 3 recorded steps every {profile_period} steps
wait = {profile_wait}
warmup = 2
active = 3
repeat = 0
"""


def write_spec(path, workspace, steps, checkpoint_interval=CHECKPOINT_INTERVAL):
    profile_period = max(50, steps // 20)
    path.write_text(
        SPEC.format(
            workspace=workspace,
            steps=steps,
            checkpoint_interval=checkpoint_interval,
            profile_period=profile_period,
            profile_wait=profile_period - 5,
        )
    )


def child_env():
    # WANDB_* in the caller's environment would move or disable the wandb hook's output.
    return {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}


@dataclasses.dataclass
class Sample:
    t: float  # seconds since the start
    step: int  # last step seen in metrics.jsonl (0 before the first row)
    rss_kib: int
    anon_kib: int  # RssAnon: the heap's part of rss_kib (the rest is mostly library code paged in)
    fds: dict  # fd number -> link target


def read_sample(pid):
    """VmRSS, RssAnon and open fds of pid, or None once the process has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = {line.split(":")[0]: line.split()[1] for line in f if line.startswith(("VmRSS:", "RssAnon:"))}
        rss, anon = int(status["VmRSS"]), int(status["RssAnon"])
        fds = {}
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                fds[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
            except FileNotFoundError:  # closed between listdir and readlink
                pass
        return rss, anon, fds
    except (FileNotFoundError, ProcessLookupError, KeyError):
        return None


class StepReader:
    """The last step in metrics.jsonl, read incrementally (complete lines only)."""

    def __init__(self, path):
        self.path, self.offset, self.step, self.rest = path, 0, 0, b""

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.step
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        for line in lines:
            if line.strip():
                self.step = max(self.step, json.loads(line)["step"])
        return self.step


@dataclasses.dataclass
class Run:
    returncode: int
    wall_s: float
    output: str
    samples: list


def run_tloop(tloop, spec, workspace, log, *overrides, sample=False):
    """Runs `tloop run spec`, its output into log; samples it when asked."""
    args = [str(tloop), "run", str(spec)]
    for o in overrides:
        args += ["--set", o]
    samples = []
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=child_env())
        try:
            if sample:
                steps = StepReader(pathlib.Path(workspace) / "metrics.jsonl")
                while proc.poll() is None:
                    step = steps.poll()  # before the sample: a lower bound of the step sampled
                    got = read_sample(proc.pid)
                    if got is None:
                        break
                    samples.append(Sample(time.monotonic() - start, step, *got))
                    time.sleep(POLL_S)
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return Run(proc.returncode, time.monotonic() - start, pathlib.Path(log).read_text(), samples)


def windows(steps, checkpoint_interval=CHECKPOINT_INTERVAL):
    """Warm-up, RSS window and fd window, in steps."""
    return max(steps // 10, 2 * checkpoint_interval), max(steps // 20, 200), 2 * checkpoint_interval


def analyse(samples, steps, checkpoint_interval=CHECKPOINT_INTERVAL):
    """RSS and fd figures of a sampled run; see the module's doc for the rules."""
    warmup, window, fd_window = windows(steps, checkpoint_interval)
    r = {"warmup_steps": warmup, "window_steps": window, "fd_window_steps": fd_window, "samples": len(samples)}
    first = [s for s in samples if warmup <= s.step < warmup + window]
    last = [s for s in samples if steps - window <= s.step < steps]
    r["first_window_samples"], r["last_window_samples"] = len(first), len(last)
    if not first or not last:
        r["error"] = "no samples in the RSS window after warm-up or at the end"
        return r
    r["rss_after_warmup_mib"] = statistics.median(s.rss_kib for s in first) / 1024
    r["rss_end_mib"] = statistics.median(s.rss_kib for s in last) / 1024
    r["rss_max_mib"] = max(s.rss_kib for s in samples if s.step < steps) / 1024  # not the exit's (library pages)
    r["rss_growth"] = r["rss_end_mib"] / r["rss_after_warmup_mib"] - 1
    r["anon_after_warmup_mib"] = statistics.median(s.anon_kib for s in first) / 1024
    r["anon_end_mib"] = statistics.median(s.anon_kib for s in last) / 1024

    after = [s for s in samples if warmup <= s.step < steps]
    settled = []  # per window after warm-up: (first step, fds open in every sample)
    for lo in range(warmup, steps - fd_window + 1, fd_window):  # whole windows only
        group = [s for s in after if lo <= s.step < lo + fd_window]
        common = set(group[0].fds.items()) if group else set()
        for s in group[1:]:
            common &= set(s.fds.items())
        settled.append((lo, len(group), common))
    thin = [f"{lo}-{lo + fd_window}: {n}" for lo, n, _ in settled if n < MIN_WINDOW_SAMPLES]
    if not settled or thin:
        r["error"] = f"too few samples in a window to tell a settled fd from one in flight ({', '.join(thin)})"
        return r
    base = settled[0][2]
    r["fds_after_warmup"] = len(base)
    r["fds_settled_max"] = max(len(c) for _, _, c in settled)
    r["fds_end"] = len(settled[-1][2])
    r["fd_windows"] = len(settled)
    r["fd_window_samples_min"] = min(n for _, n, _ in settled)
    r["fds_raw_max"] = max(len(s.fds) for s in after)
    r["fds_after_warmup_targets"] = sorted(t for _, t in base)
    grown = {}
    for lo, _, common in settled:
        for fd, target in sorted(common - base):
            grown.setdefault((fd, target), lo)
    r["fds_grown"] = [f"fd {fd} -> {target} (settled from step {lo})" for (fd, target), lo in grown.items()]
    in_flight = set()
    for s in after:
        in_flight |= {t for fd, t in s.fds.items() if (fd, t) not in base}
    r["fds_in_flight_targets"] = len(in_flight)
    # Their shapes, steps and run ids made N: what the in-flight fds were.
    r["fds_in_flight_kinds"] = sorted({re.sub(r"\d+", "N", t) for t in in_flight})
    return r


def load_tensors(path):
    import torch

    return torch.load(path, weights_only=True, map_location="cpu")


def compare_state_dicts(a_path, b_path):
    """None when equal tensor for tensor, else what differs."""
    import torch

    a, b = load_tensors(a_path), load_tensors(b_path)
    if a.keys() != b.keys():
        return f"keys differ: {sorted(a.keys() ^ b.keys())}"
    for k in a:
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k]):
            return f"{k} differs (max abs diff {(a[k].double() - b[k].double()).abs().max().item():.3g})"
    return None


def latest_checkpoint(workspace):
    root = pathlib.Path(workspace) / "checkpoints"
    return root / (root / "latest").read_text().strip()


def soak(tloop, steps, base_dir, checkpoint_interval=CHECKPOINT_INTERVAL, log=print):
    """Runs the whole soak in base_dir (which must be empty or absent); returns (report dict, problems)."""
    base_dir = pathlib.Path(base_dir)
    one, halves = base_dir / "one-go", base_dir / "halves"
    for d in (one, halves):
        d.mkdir(parents=True)
    problems = []

    write_spec(one / "spec.toml", one / "ws", steps, checkpoint_interval)
    log(f"soak: one run of {steps} steps, sampled ({one})")
    run = run_tloop(tloop, one / "spec.toml", one / "ws", one / "output.log", sample=True)
    report = {"steps": steps, "wall_s": run.wall_s}
    if run.returncode != 0:
        problems.append(f"the one-go run exited with {run.returncode}: {run.output[-2000:]}")
        return report, problems
    with open(base_dir / "samples.jsonl", "w") as f:
        for s in run.samples:
            f.write(json.dumps(dataclasses.asdict(s)) + "\n")
    report.update(analyse(run.samples, steps, checkpoint_interval))

    half = steps // 2
    write_spec(halves / "spec.toml", halves / "ws", steps, checkpoint_interval)
    log(f"soak: the same spec in two halves, {half} + {steps - half} steps ({halves})")
    first = run_tloop(tloop, halves / "spec.toml", halves / "ws", halves / "output-1.log", f"trainer.max_steps={half}")
    report["halves_wall_s"] = first.wall_s
    if first.returncode != 0:
        problems.append(f"the first half exited with {first.returncode}: {first.output[-2000:]}")
        return report, problems
    second = run_tloop(tloop, halves / "spec.toml", halves / "ws", halves / "output-2.log")
    report["halves_wall_s"] += second.wall_s
    if second.returncode != 0:
        problems.append(f"the second half exited with {second.returncode}: {second.output[-2000:]}")
        return report, problems
    report["resumed"] = f"at step {half}" in "\n".join(
        line for line in second.output.splitlines() if "checkpointing: resumed from" in line
    )

    a, b = latest_checkpoint(one / "ws"), latest_checkpoint(halves / "ws")
    report["checkpoints"] = f"{a.name} / {b.name}"
    diff = {}
    if a.name.removesuffix("_keep") != str(steps) or b.name.removesuffix("_keep") != str(steps):
        diff["checkpoint"] = f"latest checkpoints are {a.name} and {b.name}, not {steps}"
    else:
        diff["model.pt"] = compare_state_dicts(a / "model.pt", b / "model.pt")
    diff["ema_model.pt"] = compare_state_dicts(one / "ws" / "ema_model.pt", halves / "ws" / "ema_model.pt")
    report["weights_identical"] = not any(diff.values())
    report["weights_diff"] = {k: v for k, v in diff.items() if v}
    return report, problems


def check(report, problems, rss_limit=RSS_GROWTH_LIMIT):
    """Adds to problems every check that fails."""
    if problems:
        return problems
    if "error" in report:
        problems.append(report["error"])
        return problems
    if not report["rss_growth"] < rss_limit:
        problems.append(f"RSS grew {report['rss_growth']:.2%} after warm-up (limit {rss_limit:.0%})")
    if report["fds_settled_max"] != report["fds_after_warmup"] or report["fds_grown"]:
        problems.append(
            f"fds grew from {report['fds_after_warmup']} to {report['fds_settled_max']}: " + "; ".join(report["fds_grown"])
        )
    if not report["resumed"]:
        problems.append(f"the second half did not resume at step {report['steps'] // 2}")
    if not report["weights_identical"]:
        problems.append(f"weights differ from the two-halves run: {report['weights_diff']}")
    return problems


def short(target):
    """A path from the workspace on (ws/...), else as it is."""
    parts = pathlib.PurePath(target).parts
    return "/".join(parts[parts.index("ws") + 1 :]) if "ws" in parts else target


def format_report(report, problems, cores):
    r = report
    lines = [f"soak: {r['steps']} steps of regression_mlp, every hook, async checkpoints every {CHECKPOINT_INTERVAL} steps"]
    lines.append(f"machine: {cores} cores; {time.strftime('%Y-%m-%d %H:%M')}")
    if "wall_s" in r:
        lines.append(f"wall time: one go {r['wall_s']:.1f} s" + (f", two halves {r['halves_wall_s']:.1f} s" if "halves_wall_s" in r else ""))
    if "rss_growth" in r:
        lines += [
            f"samples: {r['samples']}; warm-up {r['warmup_steps']} steps",
            f"RSS (median over {r['window_steps']} steps; {r['first_window_samples']} and "
            f"{r['last_window_samples']} samples): after warm-up {r['rss_after_warmup_mib']:.1f} MiB, at the end "
            f"{r['rss_end_mib']:.1f} MiB, growth {r['rss_growth']:+.2%} (limit {RSS_GROWTH_LIMIT:.0%}); max before step {r['steps']} {r['rss_max_mib']:.1f} MiB",
            f"  of which RssAnon (heap): after warm-up {r['anon_after_warmup_mib']:.1f} MiB, at the end {r['anon_end_mib']:.1f} MiB",
            f"fds (open through all of a {r['fd_window_steps']}-step window; {r['fd_windows']} windows of "
            f"{r['fd_window_samples_min']}+ samples): after warm-up {r['fds_after_warmup']}, max after warm-up "
            f"{r['fds_settled_max']}, at the end {r['fds_end']}; raw max {r['fds_raw_max']} with saves in flight "
            f"({r['fds_in_flight_targets']} distinct in-flight targets)",
            "  open throughout: " + ", ".join(os.path.basename(t) or t for t in r["fds_after_warmup_targets"]),
            "  others seen after warm-up (saves in flight): " + ", ".join(short(t) for t in r["fds_in_flight_kinds"]),
        ]
    if "weights_identical" in r:
        lines.append(
            f"two halves resumed at {r['steps'] // 2}: {'yes' if r['resumed'] else 'NO'}; final weights (model.pt, "
            f"ema_model.pt of checkpoints {r['checkpoints']}) identical: {'yes' if r['weights_identical'] else 'NO'}"
        )
    lines.append("result: " + ("PASS" if not problems else "FAIL"))
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20000, help="steps of the run (even; default 20000)")
    parser.add_argument("--tloop", default=str(ROOT / "build" / "bin" / "tloop"), help="the tloop binary")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR (new or empty) and keep it; default: a temporary directory")
    args = parser.parse_args(argv)
    warmup, window, _ = windows(args.steps)
    if args.steps % 2 or args.steps < warmup + 2 * window:
        parser.error(f"--steps must be even and at least {warmup + 2 * window} ({args.steps})")
    if not os.access(args.tloop, os.X_OK):
        parser.error(f"no tloop binary at {args.tloop} (build it with scripts/build)")
    if args.keep:
        keep = pathlib.Path(args.keep)
        if keep.exists() and any(keep.iterdir()):
            parser.error(f"--keep {keep}: not empty")
        base, tmp = keep, None
    else:
        tmp = tempfile.mkdtemp(prefix="tloop-soak-")
        base = pathlib.Path(tmp)
    try:
        report, problems = soak(args.tloop, args.steps, base, log=lambda m: print(m, file=sys.stderr, flush=True))
        problems = check(report, problems)
        print(format_report(report, problems, os.cpu_count()))
        if args.keep:
            print(f"kept: {base} (samples.jsonl: every sample with its fds)")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
