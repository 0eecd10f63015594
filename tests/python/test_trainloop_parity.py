"""The equivalence suite: tloop against the Python trainloop it matches.

Both sides train the same two-layer MLP (tests/plugins/parity_mlp.cpp on the
tloop side, `Mlp` here) from the same data and initial weights, written once
by this file as float32, with the same options. The per-micro-step losses,
the pre-clip gradient norms, the grad scaler's scale and the final weights
must be bit-identical (Adam and AdamW: within 1e-6). Any change to a loop
detail (the accumulation division, the clipping coefficient, the order of
unscale, clip and step, the scheduler) shows up here."""
import math

import pytest
import torch
from torch import nn


try:  # a requirement of the suite, not optional: missing, the check fails rather than skips
    import trainloop
except ImportError as e:
    raise ImportError("trainloop==0.11.0 is a test requirement (requirements.txt): run scripts/setup") from e

N, DIM, HIDDEN, BATCH, STEPS = 64, 5, 16, 8, 30


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(DIM, HIDDEN)
        self.l2 = nn.Linear(HIDDEN, 1)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


def lr_factor(kind, warmup, min_ratio, t, max_steps):
    """tloop's schedule ([scheduler] in the README), as a LambdaLR function."""
    if t < warmup:
        return (t + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    span = max(1, max_steps - warmup)
    progress = min(max((t - warmup) / span, 0.0), 1.0)
    if kind == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress)


class Recorder(trainloop.BaseHook):
    """Per step: the micro-steps' losses, the pre-clip norm, the scale used."""

    def __init__(self):
        self.losses, self.grad_norms, self.scales = {}, {}, {}

    def on_before_optimizer_step(self, trainer):
        if trainer.grad_scaler.is_enabled():
            self.scales[trainer.step] = trainer.grad_scaler.get_scale()

    def on_after_step(self, trainer):
        self.losses[trainer.step] = [loss.item() for loss in trainer.step_info["loss"]]
        if "grad_norm" in trainer.step_info:
            self.grad_norms[trainer.step] = trainer.step_info["grad_norm"].item()


class Trainer(trainloop.BaseTrainer):
    def __init__(self, data, case, recorder):
        super().__init__(
            max_steps=STEPS,
            grad_clip=case["trainer"].get("grad_clip"),
            mixed_precision=case["trainer"].get("mixed_precision"),
            gradient_accumulation_steps=case["trainer"].get("gradient_accumulation_steps", 1),
            device="cpu",
        )
        self.data, self.case, self.recorder = data, case, recorder

    def build_data_loader(self):
        def batches():
            i = 0
            while True:
                start = (i * BATCH) % N
                yield self.data["x"][start : start + BATCH], self.data["y"][start : start + BATCH]
                i += 1

        return batches()

    def build_model(self):
        model = Mlp()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.data[name])
        return model

    def build_optimizer(self):
        o = dict(self.case["optimizer"])
        kind, lr = o.pop("type"), o.pop("lr")
        if kind == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=lr, **o)
        betas = (o.pop("beta1", 0.9), o.pop("beta2", 0.999))
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        return cls(self.model.parameters(), lr=lr, betas=betas, **o)

    def build_lr_scheduler(self):
        s = self.case.get("scheduler")
        if s is None:
            return None
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda t: lr_factor(s["type"], s.get("warmup_steps", 0), s.get("min_lr_ratio", 0.0), t, STEPS),
        )

    def build_hooks(self):
        return [self.recorder]

    def forward(self, batch):
        x, y = batch
        loss = nn.functional.mse_loss(self.model(x), y)
        if self.case.get("half_loss"):
            loss = loss.half()
        return loss, {}


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def toml_table(name, values):
    return f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


SGD = {"type": "sgd", "lr": 0.05}
CASES = {
    "sgd": {"trainer": {}, "optimizer": SGD},
    "momentum": {"trainer": {}, "optimizer": {**SGD, "momentum": 0.9}},
    "nesterov_weight_decay": {
        "trainer": {},
        "optimizer": {**SGD, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    },
    "accumulation": {"trainer": {"gradient_accumulation_steps": 4}, "optimizer": {**SGD, "momentum": 0.9}},
    "bf16": {"trainer": {"mixed_precision": "bf16"}, "optimizer": {**SGD, "momentum": 0.9}},
    "clipping": {"trainer": {"grad_clip": 0.05}, "optimizer": {**SGD, "lr": 0.2}},
    "cosine_warmup": {
        "trainer": {"gradient_accumulation_steps": 2},
        "optimizer": {**SGD, "momentum": 0.9},
        "scheduler": {"type": "cosine", "warmup_steps": 5, "min_lr_ratio": 0.1},
    },
    # An fp16 loss through the grad scaler: the scale must be applied in float32.
    "fp16_scaler": {"trainer": {"mixed_precision": "fp16"}, "optimizer": {**SGD, "lr": 0.2}, "half_loss": True},
    "adam": {"trainer": {"grad_clip": 1.0}, "optimizer": {"type": "adam", "lr": 0.01}, "tolerance": 1e-6},
    "adamw": {
        "trainer": {"gradient_accumulation_steps": 2},
        "optimizer": {"type": "adamw", "lr": 0.01, "weight_decay": 0.05},
        "tolerance": 1e-6,
    },
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The data and initial weights, as float32 tensors and as the task's files."""
    directory = tmp_path_factory.mktemp("parity_data")
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(N, DIM, generator=gen)
    tensors = {"x": x, "y": (x @ torch.randn(DIM, 1, generator=gen)).sin() + 0.1 * torch.randn(N, 1, generator=gen)}
    torch.manual_seed(99)
    for name, p in Mlp().named_parameters():
        tensors[name] = p.detach().clone()
    for name, t in tensors.items():
        t.contiguous().numpy().tofile(directory / f"{name}.f32")
    return directory, tensors


def tloop_run(run_tloop, directory, case):
    """Runs the case in tloop; returns (per-step info, final weights)."""
    events = directory.parent / "events.txt"
    events.unlink(missing_ok=True)
    task = {"plugin": "parity_mlp", "data": str(directory), "n": N, "dim": DIM, "hidden": HIDDEN, "batch_size": BATCH}
    if case.get("half_loss"):
        task["half_loss"] = True
    spec = (
        toml_table("trainer", {"max_steps": STEPS, "device": "cpu", **case["trainer"]})
        + toml_table("task", task)
        + toml_table("optimizer", case["optimizer"])
        + (toml_table("scheduler", case["scheduler"]) if "scheduler" in case else "")
        + f'[[hooks]]\nplugin = "event_recorder"\nstep_info = true\nfile = "{events}"\n'
        + '[[hooks]]\nplugin = "checkpointing"\ninterval = 1000\n'
    )
    workspace = run_tloop(spec)
    info = {}
    for line in events.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "step_info":
            info.setdefault(int(parts[2]), {})[parts[3]] = [float(v) for v in parts[4:]]
    weights = torch.load(workspace / "checkpoints" / str(STEPS) / "model.pt", weights_only=True)
    return info, weights


def trainloop_run(tensors, case):
    recorder = Recorder()
    trainer = Trainer(tensors, case, recorder)
    trainer.train()
    return recorder, {k: v.detach() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("name", list(CASES))
def test_tloop_matches_trainloop(name, data, run_tloop):
    directory, tensors = data
    case = CASES[name]
    info, weights = tloop_run(run_tloop, directory, case)
    expected, expected_weights = trainloop_run(tensors, case)
    tolerance = case.get("tolerance")

    assert sorted(info) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        losses = info[step]["loss"]
        if tolerance is None:
            assert losses == expected.losses[step], f"step {step}: loss"
        else:
            assert losses == pytest.approx(expected.losses[step], abs=tolerance, rel=tolerance), f"step {step}: loss"
        if "grad_clip" in case["trainer"]:
            norm = info[step]["grad_norm"]
            assert norm == pytest.approx([expected.grad_norms[step]], abs=tolerance or 0, rel=tolerance or 0), (
                f"step {step}: grad_norm"
            )
        if expected.scales:
            assert info[step]["loss_scale"] == [expected.scales[step]], f"step {step}: grad scaler scale"

    assert sorted(weights) == sorted(expected_weights)
    for key, value in expected_weights.items():
        if tolerance is None:
            assert torch.equal(weights[key], value), f"{key} differs after {STEPS} steps"
        else:
            torch.testing.assert_close(weights[key], value, atol=tolerance, rtol=tolerance)

    if name == "fp16_scaler":
        # The run must have exercised the scaler: a finite loss every step and at least one backoff.
        assert all(math.isfinite(v) for s in info.values() for v in s["loss"])
        assert len(set(expected.scales.values())) > 1, "the scale never changed: the case does not test the scaler"
