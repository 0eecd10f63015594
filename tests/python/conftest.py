"""Shared fixtures: run the real tloop CLI and read what it wrote."""
import json
import os
import pathlib
import subprocess
import time

import pytest

CLI = os.environ["TLOOP_CLI"]
TEST_PLUGINS = os.environ["TLOOP_TEST_PLUGIN_DIR"]


@pytest.fixture
def run_tloop(tmp_path):
    """Writes `spec` (TOML text) with its workspace under tmp_path, runs it, returns the workspace."""

    def run(spec: str, *overrides: str) -> pathlib.Path:
        workspace = tmp_path / "ws"
        spec_file = tmp_path / "spec.toml"
        spec_file.write_text(
            f'[plugins]\npaths = ["{TEST_PLUGINS}"]\n[run]\nworkspace = "{workspace}"\n' + spec
        )
        args = [CLI, "run", str(spec_file)]
        for o in overrides:
            args += ["--set", o]
        result = subprocess.run(args, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return workspace

    return run


# How long a test waits for progress it expects: generous, so that a slow or
# loaded machine passes; only a hang should ever reach it.
PROGRESS_DEADLINE_S = 300


def start_until(spec, ready, what):
    """Starts `tloop run spec` in the background and returns the process once
    `ready()` holds: a test waits for observed progress, never a fixed time.
    Fails, naming `what`, when the run exits first or the deadline passes."""
    proc = subprocess.Popen([CLI, "run", str(spec)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + PROGRESS_DEADLINE_S
    try:
        while not ready():
            if proc.poll() is not None and not ready():
                pytest.fail(f"the run exited with {proc.returncode} before {what}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {PROGRESS_DEADLINE_S} s")
            time.sleep(0.02)  # a poll interval, not a wait for progress
    except BaseException:  # a failure (or an error in ready) leaves no endless run behind
        proc.kill()
        proc.wait()
        raise
    return proc


def logged_rows(workspace):
    """The complete lines of metrics.jsonl (a killed run may leave half a line)."""
    lines = (workspace / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]
