"""Real optimizer states for the inspect tests: every torch.optim optimizer, stepped on a
small real problem (no optstate code involved in making them)."""

from __future__ import annotations

from typing import Any

import torch

# Every torch.optim optimizer and the constructor arguments that make its state interesting.
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "SGD": {"lr": 0.1, "momentum": 0.9},
    "Adam": {"lr": 0.01},
    "AdamW": {"lr": 0.01},
    "RMSprop": {"lr": 0.01, "momentum": 0.5, "centered": True},
    "Adagrad": {"lr": 0.1},
    "Adadelta": {"lr": 1.0},
    "Adamax": {"lr": 0.01},
    "NAdam": {"lr": 0.01},
    "RAdam": {"lr": 0.01},
    "ASGD": {"lr": 0.01},
    "Rprop": {"lr": 0.01},
    "LBFGS": {"lr": 0.5, "history_size": 3},
    "SparseAdam": {"lr": 0.01},
    "Adafactor": {"lr": 0.01},
}


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 4, generator=g)),
            torch.nn.Parameter(torch.randn(4, generator=g))]


def stepped_optimizer(name: str, steps: int = 3, seed: int = 0, **overrides: Any
                      ) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """A real ``torch.optim.<name>`` over two params, stepped ``steps`` times."""
    params = make_params(seed)
    cls = getattr(torch.optim, name)
    opt = cls(params, **{**OPTIMIZERS[name], **overrides})
    target = [torch.full_like(p, 0.5) for p in params]

    def loss_fn() -> torch.Tensor:
        return sum(((p - t) ** 2).sum() for p, t in zip(params, target, strict=True))

    for _ in range(steps):
        if name == "SparseAdam":
            for p in params:
                dense = 2 * (p.detach() - 0.5)
                p.grad = dense.to_sparse()
            opt.step()
            continue

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        opt.step(closure)
    return opt, params


def state_dict_of(name: str, steps: int = 3, **overrides: Any) -> dict[str, Any]:
    return stepped_optimizer(name, steps, **overrides)[0].state_dict()
