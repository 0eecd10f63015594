#!/usr/bin/env python3
"""Checkpoint save speed, measured side by side in one run.

1. A synchronous save's throughput against a raw sequential write (os.write +
   fsync) of the same number of bytes to the same disk.
2. The loop's stall with `async = true` against the synchronous save time.

The model is regression_mlp made large (about 64 MiB of weights, about 200 MiB
per checkpoint with AdamW's state). Usage:
    .venv/bin/python bench/checkpoint_bench.py [--tloop build/bin/tloop] [--dir DIR] [--device cuda]

With --device cuda the weights and AdamW's state live on the GPU, so a save
(and an async save's stall) includes their copy to host memory.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import tempfile
import time

SPEC = """
[run]
workspace = "{ws}"
[trainer]
max_steps = 8
device = "{device}"
[task]
plugin = "regression_mlp"
input_dim = 1024
hidden_dim = 16384
batch_size = 256
[optimizer]
type = "adamw"
lr = 1e-4
[[hooks]]
plugin = "checkpointing"
interval = 2
keep_previous = 0
async = {is_async}
[[hooks]]
plugin = "logging"
interval = 1
"""


def run(tloop, base, name, is_async, device):
    ws = base / name
    spec = base / f"{name}.toml"
    spec.write_text(SPEC.format(ws=ws, is_async="true" if is_async else "false", device=device))
    subprocess.run([tloop, "--log-level", "warn", "run", str(spec)], check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (ws / "metrics.jsonl").read_text().splitlines()]
    stalls = [r["train/checkpoint_stall"] for r in rows if "train/checkpoint_stall" in r]
    saves = [r["train/checkpoint_save_time"] for r in rows if "train/checkpoint_save_time" in r]
    checkpoint = ws / "checkpoints" / "8"
    size = sum(p.stat().st_size for p in checkpoint.iterdir())
    return stalls, saves, size


def raw_write(directory, size, repeats=3):
    """Seconds to write `size` bytes sequentially and fsync them, best of `repeats`."""
    chunk = os.urandom(1 << 20)
    times = []
    for i in range(repeats):
        path = directory / f"raw-{i}.bin"
        start = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        left = size
        while left > 0:
            left -= os.write(fd, chunk[: min(left, len(chunk))])
        os.fsync(fd)
        os.close(fd)
        times.append(time.perf_counter() - start)
        path.unlink()
    return min(times)


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser()
    parser.add_argument("--tloop", default=str(root / "build" / "bin" / "tloop"))
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary dir under /tmp)")
    parser.add_argument("--device", default="cpu", help="trainer.device of the runs: cpu, cuda, cuda:N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = pathlib.Path(tmp)
        sync_stalls, sync_saves, size = run(args.tloop, base, "sync", False, args.device)
        async_stalls, async_saves, _ = run(args.tloop, base, "async", True, args.device)
        raw = raw_write(base, size)
    sync_time = statistics.median(sync_saves)
    mib = size / (1 << 20)
    print(f"device: {args.device}; checkpoint size: {mib:.1f} MiB; {len(sync_saves)} saves per run")
    print(f"raw sequential write + fsync: {raw:.3f} s ({mib / raw:.0f} MiB/s)")
    print(f"synchronous save (median):    {sync_time:.3f} s ({mib / sync_time:.0f} MiB/s)")
    print(f"  ratio sync save throughput / raw write throughput: {raw / sync_time:.2f}")
    print(f"async stall (median):         {statistics.median(async_stalls):.3f} s;"
          f" background write (median) {statistics.median(async_saves):.3f} s")
    print(f"  ratio async stall / sync save time: {statistics.median(async_stalls) / sync_time:.2f}")
    # Later saves also wait for the previous background write (at most one
    # save is in flight) when steps are faster than writes, as on a GPU.
    print(f"async stall of the first save (no save in flight): {async_stalls[0]:.3f} s")
    print(f"  ratio first async stall / sync save time: {async_stalls[0] / sync_time:.2f}")


if __name__ == "__main__":
    main()
