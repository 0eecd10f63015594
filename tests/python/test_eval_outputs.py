"""Evaluation ([eval], `tloop eval`, `tloop predict`) checked against PyTorch.

The example tasks' splits are rebuilt here from the same seeds, their models
re-implemented in PyTorch and loaded from model.pt: the metrics the runtime
logs must be the ones PyTorch computes from scratch."""
import gzip
import json
import pathlib
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import CLI, logged_rows

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIGITS = ROOT / "plugins" / "tasks" / "digits_cnn" / "data" / "digits.csv.gz"
SEED = 3

# run_tloop puts these right after its [run] table: the first line is [run] seed,
# in the spec file itself, so that `tloop eval` and `tloop predict` see it too.
DIGITS_SPEC = f"""seed = {SEED}
[trainer]
max_steps = 40
[task]
plugin = "digits_cnn"
num_images = 0
[eval]
interval = 20
[[hooks]]
plugin = "checkpointing"
interval = 20
[[hooks]]
plugin = "image_files"
"""

REGRESSION_SPEC = f"""seed = {SEED}
[trainer]
max_steps = 30
[task]
plugin = "regression_mlp"
val_size = 150
eval_batch_size = 64
[eval]
interval = 10
[[hooks]]
plugin = "checkpointing"
interval = 10
"""


def cli(*args):
    result = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def cli_json(*args):
    return json.loads(cli(*args, "--json"))


def last_eval_row(ws, key):
    rows = [r for r in logged_rows(ws) if key in r]
    assert rows, f"no row has {key}"
    return rows[-1]


# ---------------------------------------------------------------- digits_cnn


def digits_val_split(seed, holdout_fraction=0.2):
    """digits_cnn's "val" split: the first int(n * holdout_fraction) images of
    a randperm seeded with seed + 104729, pixels / 16 as float32."""
    rows = [[int(v) for v in line.split(",")] for line in gzip.open(DIGITS, "rt").read().splitlines() if line.strip()]
    data = torch.tensor(rows, dtype=torch.int64)
    x = (data[:, :64].to(torch.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = data[:, 64]
    n = len(rows)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 104729))
    n_val = int(n * holdout_fraction)
    idx = perm[:n_val]
    return x[idx], y[idx]


def digits_forward(model, x):
    """DigitsNet of digits_cnn.cpp in PyTorch."""
    h = F.relu(F.conv2d(x, model["conv1.weight"], model["conv1.bias"], padding=1))
    h = F.relu(F.conv2d(h, model["conv2.weight"], model["conv2.bias"], padding=1))
    h = F.max_pool2d(h, 2)
    h = F.relu(F.linear(h.flatten(1), model["fc1.weight"], model["fc1.bias"]))
    return F.linear(h, model["fc2.weight"], model["fc2.bias"])


@pytest.fixture
def digits_run(run_tloop, tmp_path):
    ws = run_tloop(DIGITS_SPEC)
    return ws, tmp_path / "spec.toml"


def test_logged_val_metrics_are_pytorchs_on_the_rebuilt_split(digits_run):
    ws, _ = digits_run
    evaluated = [r["step"] for r in logged_rows(ws) if "val/accuracy" in r]
    assert evaluated == [20, 40]
    row = last_eval_row(ws, "val/accuracy")
    assert row["step"] == 40

    model = torch.load(ws / "checkpoints" / "40" / "model.pt", weights_only=True)
    x, y = digits_val_split(SEED)
    with torch.no_grad():
        logits = digits_forward(model, x)
    accuracy = (logits.argmax(1) == y).double().mean().item()
    loss = F.cross_entropy(logits.double(), y).item()
    assert row["val/accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert row["val/loss"] == pytest.approx(loss, abs=1e-5)
    assert 0.2 < accuracy  # it learned something; chance is 0.1

    # The last evaluation's confusion matrix (image_files writes it at step 40):
    # row = true class, cell = 255 * count / row sum, 16x16 pixels per cell.
    image = Image.open(ws / "visualizations" / "40" / "val" / "confusion_matrix.png")
    assert image.size == (160, 160)
    assert image.mode == "L"
    pixels = np.asarray(image)
    counts = np.zeros((10, 10), dtype=np.int64)
    np.add.at(counts, (y.numpy(), logits.argmax(1).numpy()), 1)
    expected = 255 * counts // np.maximum(counts.sum(1, keepdims=True), 1)
    assert np.array_equal(pixels, np.kron(expected, np.ones((16, 16), dtype=np.int64)).astype(np.uint8))
    # Only at the last step.
    assert not (ws / "visualizations" / "20" / "val").exists()


def test_tloop_eval_reproduces_the_logged_metrics(digits_run):
    ws, spec = digits_run
    row = last_eval_row(ws, "val/accuracy")
    logged = {k: v for k, v in row.items() if k.startswith("val/")}
    assert set(logged) == {"val/accuracy", "val/loss"}

    out = cli_json("eval", spec)
    assert {k: v for k, v in out.items() if k.startswith("val/")} == logged
    latest = cli_json("eval", spec, "--checkpoint", "latest", "--split", "val")
    assert {k: v for k, v in latest.items() if k.startswith("val/")} == logged

    test = cli_json("eval", spec, "--split", "test")
    assert {"test/accuracy", "test/loss"} <= set(test)
    assert not any(k.startswith("val/") for k in test)
    assert 0.0 <= test["test/accuracy"] <= 1.0


def test_tloop_predict_writes_logits_and_targets(digits_run):
    ws, spec = digits_run
    row = last_eval_row(ws, "val/accuracy")
    cli("predict", spec, "--checkpoint", "latest", "--split", "val")
    out = ws / "predictions" / "val"
    logits = np.load(out / "logits.npy")
    targets = np.load(out / "targets.npy")
    n_val = int(1797 * 0.2)
    assert logits.shape == (n_val, 10)
    assert targets.shape == (n_val,)
    accuracy = float((logits.argmax(1) == targets).mean())
    assert accuracy == pytest.approx(row["val/accuracy"], abs=1e-9)


# ---------------------------------------------------------------- regression_mlp


def regression_val_split(seed, val_size, input_dim=8, noise=0.01):
    """regression_mlp's "val" split: w_true and v_true are the first two draws
    of the data generator (seed + 7919); the val inputs and noise come from a
    generator of their own (seed + 15485863)."""
    gen = torch.Generator().manual_seed(seed + 7919)
    w_true = torch.randn(1, input_dim, generator=gen)
    v_true = torch.randn(1, input_dim, generator=gen)
    val_gen = torch.Generator().manual_seed(seed + 15485863)
    x = torch.randn(val_size, input_dim, generator=val_gen)
    y = F.linear(x, w_true) * 0.5 + torch.sin(F.linear(x, v_true)) + noise * torch.randn(val_size, 1, generator=val_gen)
    return x, y


def test_regression_val_mse_and_mae_are_pytorchs(run_tloop, tmp_path):
    ws = run_tloop(REGRESSION_SPEC)
    rows = [r for r in logged_rows(ws) if "val/mse" in r]
    assert [r["step"] for r in rows] == [10, 20, 30]
    row = rows[-1]
    assert {"val/mse", "val/mae", "val/loss"} <= set(row)

    model = torch.load(ws / "checkpoints" / "30" / "model.pt", weights_only=True)
    x, y = regression_val_split(SEED, 150)
    with torch.no_grad():
        pred = F.linear(torch.tanh(F.linear(x, model["fc1.weight"], model["fc1.bias"])),
                        model["fc2.weight"], model["fc2.bias"])
    err = (pred - y).double()
    assert row["val/mse"] == pytest.approx(err.pow(2).mean().item(), rel=1e-5)
    assert row["val/mae"] == pytest.approx(err.abs().mean().item(), rel=1e-5)
    # loss: the batches' mse weighted by their sizes (64, 64, 22), i.e. the mse.
    assert row["val/loss"] == pytest.approx(row["val/mse"], rel=1e-5)

    cli("predict", tmp_path / "spec.toml", "--checkpoint", "latest", "--split", "val")
    predictions = np.load(ws / "predictions" / "val" / "predictions.npy")
    targets = np.load(ws / "predictions" / "val" / "targets.npy")
    assert predictions.shape == (150, 1)
    np.testing.assert_allclose(predictions, pred.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(targets, y.numpy(), rtol=1e-6, atol=1e-7)
