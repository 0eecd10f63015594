"""W&B offline runs read back by wandb's own reader of .wandb files (its
DataStore and Record protobuf) and by `wandb sync --view`."""
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import tomllib

from PIL import Image
from wandb.proto import wandb_internal_pb2
from wandb.sdk.internal import datastore

from conftest import CLI, PROGRESS_DEADLINE_S, TEST_PLUGINS, logged_rows, start_until

SPEC = """
[run]
name = "digits-wandb"
[trainer]
max_steps = {steps}
[task]
plugin = "digits_cnn"
num_images = 3
[[hooks]]
plugin = "checkpointing"
interval = 10
[[hooks]]
plugin = "logging"
interval = 5
[[hooks]]
plugin = "wandb"
project = "from-spec"
tags = ["a", "b"]
group = "g1"
notes = "some notes"
flush_interval = 5
{extra}
"""


def write_spec(tmp_path, steps=20, extra=""):
    ws = tmp_path / "ws"
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'[plugins]\npaths = ["{TEST_PLUGINS}"]\n' + SPEC.format(steps=steps, extra=extra).replace(
            "[run]\n", f'[run]\nworkspace = "{ws}"\n', 1
        )
    )
    return spec, ws


def run(spec, env=None, *overrides, expect=0):
    args = [CLI, "run", str(spec)]
    for o in overrides:
        args += ["--set", o]
    result = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})})
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def run_dirs(root):
    return sorted(p for p in (root / "wandb").iterdir() if p.name.startswith("offline-run-"))


def check_block_layout(data):
    """wandb's Python DataStore reads chunks one after the other; the Go reader
    in wandb-core (and LevelDB's) reads 32 KiB blocks. Checks what the latter
    relies on: no chunk crosses a block, FIRST and MIDDLE chunks end exactly at
    a block end, and a block tail too short for a chunk header is zeros."""
    block, pos = datastore.LEVELDBLOG_BLOCK_LEN, datastore.LEVELDBLOG_HEADER_LEN
    while pos < len(data):
        left = block - pos % block
        if left < datastore.LEVELDBLOG_HEADER_LEN:
            assert data[pos : pos + left] == b"\0" * left, f"padding at {pos}"
            pos += left
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        end = pos + datastore.LEVELDBLOG_HEADER_LEN + length
        assert end <= pos + left, f"chunk at {pos} crosses a block boundary"
        if kind in (datastore.LEVELDBLOG_FIRST, datastore.LEVELDBLOG_MIDDLE):
            assert end % block == 0, f"chunk at {pos} of type {kind} does not fill its block"
        pos = end


def read_records(run_dir):
    (wandb_file,) = run_dir.glob("run-*.wandb")
    check_block_layout(wandb_file.read_bytes())
    ds = datastore.DataStore()
    ds.open_for_scan(str(wandb_file))
    records = []
    while (data := ds.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        records.append(record)
    return records


def of_type(records, kind):
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def history(records):
    """{step: {key: value}} from the history records."""
    rows = {}
    for h in of_type(records, "history"):
        row = {item.key: json.loads(item.value_json) for item in h.item}
        assert h.step.num == row["_step"]
        assert h.step.num not in rows, "one history row per step"
        rows[h.step.num] = row
    return rows


def test_an_offline_run_holds_every_record_with_the_values_and_images_on_disk(tmp_path):
    spec, ws = write_spec(tmp_path, extra="[eval]\ninterval = 10\n")  # val/ rows at steps 10 and 20
    started = time.time()
    run(spec, {"WANDB_PROJECT": "from-env", "WANDB_TAGS": "b, c,a"})

    (run_dir,) = run_dirs(ws)
    run_id = (ws / "wandb_run_id").read_text()
    assert re.fullmatch(r"offline-run-\d{8}_\d{6}-" + run_id, run_dir.name)
    assert re.fullmatch(r"[a-z0-9]{8}", run_id)
    assert (run_dir / f"run-{run_id}.wandb").is_file()
    assert (ws / "wandb" / "latest-run").resolve() == run_dir.resolve()

    records = read_records(run_dir)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds[:3] == ["header", "run", "config"]
    assert kinds[-2:] == ["exit", "final"]
    assert set(kinds) == {"header", "run", "config", "history", "summary", "files", "exit", "final"}
    assert [r.num for r in records] == list(range(1, len(records) + 1))

    (r,) = of_type(records, "run")
    assert r.run_id == run_id
    assert r.project == "from-env"  # WANDB_PROJECT overrides the spec
    assert list(r.tags) == ["a", "b", "c"]  # spec tags, then WANDB_TAGS, de-duplicated, order kept
    assert (r.display_name, r.run_group, r.notes) == ("digits-wandb", "g1", "some notes")
    assert not r.resumed
    assert started - 5 < r.start_time.seconds < time.time() + 1

    # The config is the resolved run spec.
    (config,) = of_type(records, "config")
    resolved = tomllib.loads((ws / "spec.resolved.toml").read_text())
    assert {item.key: json.loads(item.value_json) for item in config.update} == resolved

    # Every logged metric is in the history at its step, with the same value.
    rows = history(records)
    logged = logged_rows(ws)
    assert [m["step"] for m in logged] == [5, 10, 10, 15, 20, 20]  # train/ rows, and val/ rows of their own
    assert {"train/loss", "val/accuracy", "val/loss"} <= {k for m in logged for k in m}
    for m in logged:
        row = rows[m["step"]]
        for key, value in m.items():
            if key != "step":
                assert row[key] == value, key
    runtimes = [rows[s]["_runtime"] for s in sorted(rows)]
    assert runtimes == sorted(runtimes) and runtimes[0] >= 0
    assert all(started - 5 < row["_timestamp"] < time.time() + 1 for row in rows.values())

    # Images: image-file values whose path, size and sha256 match the files on disk.
    images = {(step, key): v for step, row in rows.items() for key, v in row.items() if isinstance(v, dict)}
    assert len([k for k in images if k[1].startswith("samples/")]) == 3
    assert sorted(k[0] for k in images if k[1].startswith("predictions/")) == [20, 20, 20]  # at the end
    assert [k[0] for k in images if k[1] == "val/confusion_matrix"] == [20]  # at the last evaluation
    named_by_files = {f.path for files in of_type(records, "files") for f in files.files}
    for (step, key), image in images.items():
        assert image["_type"] == "image-file" and image["format"] == "png"
        path = run_dir / "files" / image["path"]
        data = path.read_bytes()
        assert image["size"] == len(data)
        assert image["sha256"] == hashlib.sha256(data).hexdigest()
        assert image["path"].startswith("media/images/") and image["path"].endswith(".png")
        assert f"_{step}_{image['sha256'][:20]}.png" in image["path"]
        with Image.open(path) as im:
            side = 160 if key == "val/confusion_matrix" else 32  # digits_cnn's images: 10x10 cells of 16 px, digits 4x
            assert (image["width"], image["height"]) == im.size == (side, side)
        assert image["path"] in named_by_files
    assert len(named_by_files) == len(images)

    # The summary holds the last value of every key; the exit record says success.
    summary = {}
    for s in of_type(records, "summary"):
        summary.update({item.key: json.loads(item.value_json) for item in s.update})
    assert summary["train/loss"] == logged[-1]["train/loss"]
    assert summary["_step"] == 20
    (exit_record,) = of_type(records, "exit")
    assert exit_record.exit_code == 0

    # `wandb sync` itself reads the directory (--view: parse and list, upload nothing).
    sync = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "wandb"), "sync", "--legacy", "--view", str(run_dir)],
        capture_output=True, text=True, cwd=tmp_path, timeout=PROGRESS_DEADLINE_S,
        env={**os.environ, "WANDB_API_KEY": "0" * 40, "WANDB_SILENT": "true"},
    )
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert re.findall(r"^Record: (\w+)$", sync.stdout, re.M) == kinds
    assert "done." in sync.stdout


def test_a_resumed_run_keeps_its_id_and_continues_its_history(tmp_path):
    spec, ws = write_spec(tmp_path, steps=10)
    run(spec)
    run_id = (ws / "wandb_run_id").read_text()
    run(spec, None, "trainer.max_steps=20")  # resumes from the checkpoint at step 10
    first, second = run_dirs(ws)
    assert (ws / "wandb_run_id").read_text() == run_id
    assert second.name.endswith("-" + run_id) and first.name != second.name
    records = read_records(second)
    (r,) = of_type(records, "run")
    assert r.run_id == run_id and r.resumed and r.starting_step == 10
    assert sorted(history(records)) == [15, 20]
    assert sorted(history(read_records(first))) == [1, 5, 10]
    # _runtime continues from the first run's (kept in the checkpoint).
    assert history(records)[15]["_runtime"] >= history(read_records(first))[10]["_runtime"]


def test_environment_overrides_pick_the_id_and_the_directory(tmp_path):
    spec, ws = write_spec(tmp_path, steps=5)
    elsewhere = tmp_path / "wandb_dir"
    run(spec, {"WANDB_RUN_ID": "myrun42", "WANDB_DIR": str(elsewhere)})
    assert not (ws / "wandb").exists()
    (run_dir,) = run_dirs(elsewhere)
    assert run_dir.name.endswith("-myrun42")
    assert of_type(read_records(run_dir), "run")[0].run_id == "myrun42"
    assert (ws / "wandb_run_id").read_text() == "myrun42"


def test_wandb_environment_names_the_run_unless_the_spec_does(tmp_path):
    spec, ws = write_spec(tmp_path, steps=3)
    spec.write_text(spec.read_text().replace('group = "g1"\n', "").replace('notes = "some notes"\n', ""))
    environment = {
        "WANDB_NAME": "env-name",
        "WANDB_ENTITY": "my-team",
        "WANDB_JOB_TYPE": "train",
        "WANDB_NOTES": "from the environment",
        "WANDB_RUN_GROUP": "sweep-1",
        "WANDB_MODE": "online",
    }
    result = run(spec, environment)
    (r,) = of_type(read_records(run_dirs(ws)[0]), "run")
    assert (r.display_name, r.entity, r.job_type, r.notes, r.run_group) == (
        "env-name", "my-team", "train", "from the environment", "sweep-1")
    # WANDB_MODE=online: said once that tloop writes an offline run for wandb sync.
    output = result.stdout + result.stderr
    assert output.count("WANDB_MODE=online") == 1 and "wandb sync" in output

    # An option the spec gives wins over its variable, as wandb.init's arguments do.
    shutil.rmtree(ws)
    spec.write_text(spec.read_text().replace('plugin = "wandb"', 'plugin = "wandb"\nname = "spec-name"\nentity = "spec-team"'))
    run(spec, environment)
    (r,) = of_type(read_records(run_dirs(ws)[0]), "run")
    assert (r.display_name, r.entity, r.job_type) == ("spec-name", "spec-team", "train")


def test_a_fresh_run_gets_a_new_id_and_resume_never_refuses_the_stored_one(tmp_path):
    spec, ws = write_spec(tmp_path, steps=5)
    run(spec)
    first = (ws / "wandb_run_id").read_text()
    run(spec, {"WANDB_RESUME": "never"}, "trainer.max_steps=10")  # resumes training, not the W&B run
    second = (ws / "wandb_run_id").read_text()
    assert second != first
    shutil.rmtree(ws / "checkpoints")  # no checkpoint: training starts over, and so does the W&B run
    run(spec)
    assert (ws / "wandb_run_id").read_text() not in (first, second)
    assert len(run_dirs(ws)) == 3


def test_disabled_mode_writes_nothing(tmp_path):
    spec, ws = write_spec(tmp_path, steps=5, extra='mode = "disabled"')
    run(spec)
    assert not (ws / "wandb").exists() and not (ws / "wandb_run_id").exists()
    spec, ws = write_spec(tmp_path, steps=5)
    run(spec, {"WANDB_MODE": "disabled"})
    assert not (ws / "wandb").exists()


def test_a_json_config_file_becomes_the_config_and_spans_blocks(tmp_path):
    config = {"lr": 0.1, "layers": [1, 2, 3], "big": "x" * 100_000}  # one record over three 32 KiB blocks
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec, ws = write_spec(tmp_path, steps=5, extra=f'config = "{tmp_path / "config.json"}"')
    run(spec)
    (run_dir,) = run_dirs(ws)
    (c,) = of_type(read_records(run_dir), "config")
    assert {item.key: json.loads(item.value_json) for item in c.update} == config


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    spec, ws = write_spec(tmp_path, steps=5, extra=f'config = "{tmp_path / "missing.json"}"')
    result = run(spec, expect=2)
    assert f"config: cannot read JSON file '{tmp_path / 'missing.json'}'" in result.stderr + result.stdout
    assert not ws.exists()
    (tmp_path / "bad.json").write_text("{not json")
    spec, ws = write_spec(tmp_path, steps=5, extra=f'config = "{tmp_path / "bad.json"}"')
    result = run(spec, expect=2)
    assert "is not valid JSON" in result.stderr + result.stdout
    spec, ws = write_spec(tmp_path, steps=5)
    result = run(spec, {"WANDB_RESUME": "sometimes"}, expect=2)
    assert "WANDB_RESUME='sometimes': expected allow, must, never or auto" in result.stderr + result.stdout
    result = run(spec, {"WANDB_RUN_ID": "a/b"}, expect=2)
    assert "WANDB_RUN_ID='a/b'" in result.stderr + result.stdout
    assert not ws.exists()


def _flushed_loss_rows(ws):
    """How many history rows with train/loss the .wandb file holds so far; 0
    until the file is past its first 32 KiB block (the reader must cross one)."""
    files = list((ws / "wandb").glob("offline-run-*/run-*.wandb")) if (ws / "wandb").exists() else []
    if not files or files[0].stat().st_size <= datastore.LEVELDBLOG_BLOCK_LEN:
        return 0
    try:
        rows = history(read_records(files[0].parent))
    except Exception:  # a flush in progress: the tail is not complete yet
        return 0
    return sum("train/loss" in row for row in rows.values())


def _start_long_run(tmp_path):
    """Starts an endless run; returns once its .wandb file holds 30 loss rows past its first block."""
    spec, ws = write_spec(tmp_path, steps=100000000)
    return start_until(spec, lambda: _flushed_loss_rows(ws) >= 30, "30 flushed rows past the first block"), ws


def test_a_killed_run_is_readable_up_to_its_last_flush(tmp_path):
    proc, ws = _start_long_run(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_dir,) = run_dirs(ws)
    wandb_file = run_dir / "run-{}.wandb".format((ws / "wandb_run_id").read_text())
    assert wandb_file.stat().st_size > datastore.LEVELDBLOG_BLOCK_LEN
    records = read_records(run_dir)  # every record parses, across block boundaries
    assert "exit" not in [r.WhichOneof("record_type") for r in records]
    rows = history(records)
    logged = [m["step"] for m in logged_rows(ws)]
    steps = [s for s in sorted(rows) if "train/loss" in rows[s]]
    assert len(steps) >= 30
    assert steps == logged[: len(steps)]  # everything up to the last flush, in order


def test_a_signal_exit_writes_the_exit_code_and_every_row(tmp_path):
    proc, ws = _start_long_run(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 128 + signal.SIGTERM
    (run_dir,) = run_dirs(ws)
    records = read_records(run_dir)
    assert [r.WhichOneof("record_type") for r in records][-2:] == ["exit", "final"]
    assert of_type(records, "exit")[0].exit_code == 128 + signal.SIGTERM
    rows = history(records)
    assert [s for s in sorted(rows) if "train/loss" in rows[s]] == [m["step"] for m in logged_rows(ws)]
