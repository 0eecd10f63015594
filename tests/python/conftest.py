"""Shared fixtures: run the real tloop CLI and read what it wrote."""
import os
import pathlib
import subprocess

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
