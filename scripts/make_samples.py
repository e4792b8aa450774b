"""Regenerate sample_checkpoints/ (real torch.save files made by ``optstate simulate``,
and one by a plain torch training loop of a real model).

    python scripts/make_samples.py            # rewrites sample_checkpoints/ in place
    python scripts/make_samples.py OUT_DIR    # writes the same files somewhere else

Everything is seeded, so a rerun with the same torch writes the same bytes (the
MANIFEST.json lists each file's sha256 and the torch version that wrote it); with
another torch the tensors are still identical (tests/test_samples.py checks both).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from optstate.io.torch_file import save_checkpoint  # noqa: E402
from optstate.sim.config import GroupSpec, RunSpec, SchedulerSpec  # noqa: E402
from optstate.sim.simulate import SimulationResult, simulate  # noqa: E402

DEFAULT_OUT = ROOT / "sample_checkpoints"

# The PyTorch tutorial: SGD lr=0.1 momentum=0.9 on one 2x2 weight, gradient ones.
SGD = RunSpec(optimizer="SGD", hyperparams={"lr": 0.1, "momentum": 0.9}, steps=10)

# Adam with a second group added as add_param_group({"params": w2, "lr": 1e-4}) does.
ADAM = RunSpec(
    optimizer="Adam", hyperparams={"lr": 1e-3}, steps=20, grad="quadratic", seed=1,
    groups=(GroupSpec(((2, 2), (2,)), names=("w1", "b1")),
            GroupSpec(((3, 2),), {"lr": 1e-4}, names=("w2",))),
)

# AdamW the way Hugging Face's Trainer groups it (decay / no decay) with a StepLR.
ADAMW = RunSpec(
    optimizer="AdamW", hyperparams={"lr": 5e-3, "weight_decay": 0.01}, steps=12,
    grad="normal", seed=2,
    groups=(GroupSpec(((4, 3), (3, 2)), names=("encoder.weight", "head.weight")),
            GroupSpec(((4,), (2,)), {"weight_decay": 0.0},
                      names=("encoder.bias", "head.bias"))),
    scheduler=SchedulerSpec("StepLR", {"step_size": 5, "gamma": 0.5}),
)


class TutorialNet(torch.nn.Module):
    """The PyTorch tutorial's ``Net`` ("Saving and loading a general checkpoint"), made
    small, with a BatchNorm: its state_dict holds buffers (running_mean, running_var,
    num_batches_tracked) beside the parameters, as real models' do."""

    def __init__(self) -> None:
        super().__init__()
        # no bias where BatchNorm follows, as in real CNNs: BN cancels it, so its gradient
        # is rounding noise, which Adam turns into lr-sized steps that differ per CPU
        self.conv1 = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.pool = torch.nn.MaxPool2d(2, 2)
        self.conv2 = torch.nn.Conv2d(4, 8, 3)
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))  # 3x10x10 -> 4x4x4
        x = self.pool(torch.relu(self.conv2(x)))  # -> 8x1x1
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def _tutorial_cnn(epochs: int = 3) -> dict[str, Any]:
    """The tutorial's training loop and checkpoint: Adam built from model.parameters()
    (so no param_names), a few real steps on seeded data, saved as the tutorial does."""
    torch.manual_seed(0)
    model = TutorialNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 3, 10, 10), torch.randint(0, 10, (16,))
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return {"epoch": epochs, "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(), "loss": loss.item()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_state(result: SimulationResult) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in zip(result.names, result.params, strict=True)}


def _sick_sgd() -> dict[str, Any]:
    """A real SGD state whose first buffer collapsed to zero and second exploded."""
    w, b = torch.nn.Parameter(torch.ones(10)), torch.nn.Parameter(torch.ones(6))
    opt = torch.optim.SGD([w, b], lr=0.1, momentum=0.9)
    w.grad = torch.zeros(10)
    b.grad = torch.tensor([1.0, 2.0, math.nan, math.inf, 1e30, -3.0])
    opt.step()
    return opt.state_dict()


def make_samples(out: Path) -> list[dict[str, Any]]:
    """Write every sample into ``out``; return the manifest entries."""
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []

    def add(name: str, spec: RunSpec | None, layout: str, about: str,
            command: str | None = None) -> None:
        entry: dict[str, Any] = {"path": name, "layout": layout, "about": about}
        if command:
            entry["command"] = command
        if spec is not None:
            entry["config"] = spec.to_dict()
        entries.append(entry)

    def config_file(name: str, spec: RunSpec) -> str:
        """Write ``spec`` as a --config file beside the samples; return its path."""
        (out / name).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
        add(name, None, "optstate simulate --config file", f"The run config of {name[:-5]}.pt.")
        return f"sample_checkpoints/{name}"

    simulate(SGD, save=out / "sgd_momentum.pt", force=True)
    add("sgd_momentum.pt", SGD, "optimizer.state_dict()",
        "The PyTorch tutorial: SGD lr=0.1 momentum=0.9, one 2x2 weight, gradient ones, "
        "10 steps; momentum_buffer = sum(0.9**k, k<10) = 6.5132 everywhere.",
        "optstate simulate --lr 0.1 --momentum 0.9 --steps 10 --save sgd_momentum.pt")

    simulate(ADAM, save=out / "adam_two_groups.pt", force=True)
    add("adam_two_groups.pt", ADAM, "optimizer.state_dict()",
        "Adam, two param groups (the second with lr 1e-4, as add_param_group adds it), "
        "named parameters (param_names), 20 steps on a quadratic.",
        f"optstate simulate --config {config_file('adam_two_groups.json', ADAM)} "
        "--save adam_two_groups.pt")

    adamw = simulate(ADAMW, save=out / "adamw_scheduler.pt", with_params=True, force=True)
    add("adamw_scheduler.pt", ADAMW,
        "{optimizer_state_dict, scheduler_state_dict, model_state_dict, step, optstate}",
        "AdamW with decay / no-decay groups and a StepLR, 12 steps on seeded noise, saved "
        "with --with-params in the PyTorch tutorial's general-checkpoint layout.",
        f"optstate simulate --config {config_file('adamw_scheduler.json', ADAMW)} "
        "--with-params --save adamw_scheduler.pt")

    lightning = {
        "epoch": 2,
        "global_step": adamw.final_step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in _model_state(adamw).items()},
        "loops": {},
        "callbacks": {},
        "optimizer_states": [adamw.optimizer.state_dict()],
        "lr_schedulers": [adamw.scheduler.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 5e-3},
    }
    save_checkpoint(lightning, out / "lightning.ckpt", force=True)
    add("lightning.ckpt", ADAMW,
        "{epoch, global_step, state_dict, optimizer_states[0], lr_schedulers[0], ...}",
        "The AdamW run above in PyTorch Lightning's checkpoint layout.")

    hf = out / "hf-checkpoint-12"
    hf.mkdir(exist_ok=True)
    save_checkpoint(adamw.optimizer.state_dict(), hf / "optimizer.pt", force=True)
    save_checkpoint(adamw.scheduler.state_dict(), hf / "scheduler.pt", force=True)
    losses = [x for x in adamw.history.loss if x is not None]
    trainer_state = {
        "global_step": adamw.final_step, "epoch": 2.0, "max_steps": adamw.final_step,
        "log_history": [{"step": s, "learning_rate": lr[0]}
                        for s, lr in zip(adamw.history.step, adamw.history.lr,
                                         strict=True)][1:],
        "best_metric": min(losses) if losses else None,
    }
    (hf / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json"):
        add(f"hf-checkpoint-12/{name}", ADAMW if name != "trainer_state.json" else None,
            "Hugging Face Trainer checkpoint folder",
            f"The AdamW run above as a Trainer folder writes it: {name}.")

    # The README's inspect examples: a file with no optimizer state (what inspect refuses,
    # saying what the file holds instead), and a state whose buffers collapsed and exploded.
    save_checkpoint(_model_state(adamw), out / "model.bin", force=True)
    add("model.bin", None, "model.state_dict()",
        "The AdamW run's parameters alone, as a model's pytorch_model.bin holds them: "
        "no optimizer state.")
    save_checkpoint(_sick_sgd(), out / "sick_sgd.pt", force=True)
    add("sick_sgd.pt", None, "optimizer.state_dict()",
        "SGD momentum 0.9 after one step: the first parameter got a zero gradient (its "
        "buffer is all zeros), the second a gradient holding NaN, Inf and 1e30.")

    save_checkpoint(_tutorial_cnn(), out / "tutorial_cnn.pt", force=True)
    add("tutorial_cnn.pt", None, "{epoch, model_state_dict, optimizer_state_dict, loss}",
        "The PyTorch tutorial's general checkpoint of a real CNN with BatchNorm (TutorialNet "
        "in this script), Adam built from model.parameters(), 3 steps of a plain torch "
        "training loop; the optimizer state keys params by position only.")
    # Convolutions and matmuls reduce in an order the CPU's vector width decides: another
    # CPU regenerates this file equal to float32 rounding, not bit for bit.
    entries[-1]["reproducible"] = "to float32 rounding"

    for e in entries:
        e["sha256"] = _sha256(out / e["path"])
        e["bytes"] = (out / e["path"]).stat().st_size
    manifest = {
        "generator": "python scripts/make_samples.py",
        "torch": torch.__version__,
        "files": entries,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return entries


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for e in make_samples(target):
        print(f"{e['bytes']:>7} {target / e['path']}")
