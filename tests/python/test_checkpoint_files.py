"""Checkpoint files read back by Python's own readers."""
import json
import pathlib

import torch
from safetensors.torch import load_file

SPEC = """
[trainer]
max_steps = 7
[task]
plugin = "digits_cnn"
num_images = 0
[[hooks]]
plugin = "ema"
[[hooks]]
plugin = "checkpointing"
interval = 5
keep_previous = 1
safetensors = true
"""


def test_model_pt_and_safetensors_hold_the_model_state_dict(run_tloop):
    ws = run_tloop(SPEC)
    root = ws / "checkpoints"
    assert (root / "latest").read_text() == "7\n"
    assert sorted(p.name for p in root.iterdir()) == ["5", "7", "latest"]
    model = torch.load(root / "7" / "model.pt", weights_only=True)
    # The module's own order and names, like nn.Module.state_dict().
    assert list(model) == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
    ]
    assert model["conv1.weight"].shape == (16, 1, 3, 3)
    assert model["fc2.weight"].dtype == torch.float32
    safe = load_file(root / "7" / "model.safetensors")
    assert set(safe) == set(model)
    for name, tensor in model.items():
        assert torch.equal(safe[name], tensor), name
    # The rest of the run state: optimizer, RNG, and each hook's (EMA) under its key.
    state = torch.load(root / "7" / "state.pt", weights_only=True)
    assert {"optimizer/fc2.weight/exp_avg", "optimizer/fc2.weight/exp_avg_sq", "rng/cpu"} <= set(state)
    assert state["optimizer/fc2.weight/exp_avg"].shape == model["fc2.weight"].shape
    assert state["hooks/ema/ema_model/fc2.weight"].shape == model["fc2.weight"].shape
    assert not torch.equal(state["hooks/ema/ema_model/fc2.weight"], model["fc2.weight"])


def test_the_manifest_lists_every_file_with_its_size(run_tloop):
    ws = run_tloop(SPEC)
    checkpoint = ws / "checkpoints" / "7"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["step"] == 7
    files = {p.name for p in checkpoint.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    for name, info in manifest["files"].items():
        assert (checkpoint / name).stat().st_size == info["size"]
    scalars = json.loads((checkpoint / "state.json").read_text())
    assert scalars["trainer/step"] == {"int": 7}
    assert "digits_cnn 1.0.0" in scalars["meta/plugins"]["string"]
    assert "[trainer]" in scalars["meta/spec"]["string"]
