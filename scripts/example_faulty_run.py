"""A small real training run with two faults, for ``optstate timeline`` (README, "timeline").

    python scripts/example_faulty_run.py run          # writes run/step_10.pt ... step_100.pt
    python -m scripts.example_faulty_run run          # the same, from anywhere with the
                                                      # checkout on PYTHONPATH

A three-layer MLP (``embed``, ``hidden``, ``head``) learns a fixed random regression with
AdamW (two param groups, as the Hugging Face Trainer makes them: weights with weight
decay, biases without) under a CosineAnnealingLR, built from ``model.named_parameters()``
so that the optimizer state carries the parameter names. Every 10 steps it saves
``{"model", "optimizer", "scheduler", "step"}`` with ``torch.save``, as the PyTorch
tutorial does. Two faults are injected:

- step 40: one element of ``hidden.weight``'s gradient is NaN (a bad batch). AdamW writes
  it into that parameter's ``exp_avg``/``exp_avg_sq`` and the parameter; from the next
  step on the loss is NaN and so is every gradient: the NaN spreads to every parameter.
- step 70: someone multiplies every group's lr by 1000 by hand; the scheduler keeps
  stepping from there (CosineAnnealingLR's recursive form follows the lr it finds).

Seeded: the same torch writes the same numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

STEPS = 100
EVERY = 10
NAN_AT = 40  # the gradient of NAN_PARAM holds one NaN at this step
NAN_PARAM = "hidden.weight"
LR_AT = 70  # every group's lr x LR_FACTOR at this step
LR_FACTOR = 1000.0


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        self.hidden = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(torch.tanh(self.embed(x)))))


def train(out: Path, *, nan_at: int | None = NAN_AT, lr_at: int | None = LR_AT,
          steps: int = STEPS, every: int = EVERY) -> list[Path]:
    """Train and save every ``every`` steps into ``out``; returns the files written.
    ``nan_at=None`` / ``lr_at=None``: without that fault."""
    torch.manual_seed(0)
    model = MLP()
    x = torch.randn(64, 8)
    y = torch.randn(64, 1)
    named = list(model.named_parameters())
    decay = [(n, p) for n, p in named if n.endswith("weight")]
    no_decay = [(n, p) for n, p in named if not n.endswith("weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if step == nan_at:
            dict(named)[NAN_PARAM].grad[3, 5] = float("nan")
        if step == lr_at:
            for group in opt.param_groups:
                group["lr"] *= LR_FACTOR
        opt.step()
        sched.step()
        if step % every == 0:
            path = out / f"step_{step}.pt"
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "step": step}, path)
            written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    files = train(Path(argv[0]))
    print(f"saved {len(files)} checkpoints in {argv[0]}: {files[0].name} ... {files[-1].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
