"""A hand-written torch training loop: what a user would type, with no optstate code.

``simulate`` is tested against this bit for bit. The loop builds parameters with a
seeded generator, computes losses with autograd (``loss.backward()``), and steps the
optimizer the way the PyTorch docs do. Only torch is imported here, on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ReferenceRun:
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    losses: list[float]


def make_params(shapes_per_group: list[list[tuple[int, ...]]], seed: int,
                init: str = "normal", init_value: float = 0.0) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shapes in shapes_per_group:
        group = []
        for shape in shapes:
            if init == "normal":
                t = torch.randn(shape, generator=gen)
            elif init == "zeros":
                t = torch.zeros(shape)
            elif init == "ones":
                t = torch.ones(shape)
            else:
                t = torch.full(shape, init_value)
            group.append(t.requires_grad_(True))
        out.append(group)
    return out


def objective(kind: str, params: list[torch.Tensor], value: float) -> torch.Tensor:
    """The loss whose gradient autograd computes."""
    if kind == "constant":
        return sum((p * value).sum() for p in params)
    if kind == "quadratic":
        return sum(0.5 * ((p - value) ** 2).sum() for p in params)
    if kind == "rosenbrock":
        flat = torch.cat([p.reshape(-1) for p in params])
        x, y = flat[0::2], flat[1::2]
        return ((1 - x) ** 2 + 100 * (y - x**2) ** 2).sum()
    raise ValueError(kind)


def write_gradients(kind: str, params: list[torch.Tensor], value: float, seed: int,
                    step: int, sparse: bool = False) -> torch.Tensor | None:
    """Fill .grad for one step; returns the loss (None for noise / no gradient)."""
    if kind == "none":
        return None
    if kind == "normal":
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        for p in params:
            g = torch.randn(p.shape, generator=gen)
            g = g.to_sparse() if sparse else g
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)
        return None
    loss = objective(kind, params, value)
    if sparse:
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            if p.grad is None:
                p.grad = g.to_sparse()
            else:
                p.grad.add_(g.to_sparse())
    else:
        loss.backward()
    return loss


def reference_run(
    optimizer: str,
    shapes_per_group: list[list[tuple[int, ...]]],
    *,
    defaults: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    steps: int = 10,
    seed: int = 0,
    grad: str = "constant",
    grad_value: float = 1.0,
    zero_grad: str = "none",
    init: str = "normal",
    init_value: float = 0.0,
    scheduler: tuple[str, dict[str, Any]] | None = None,
) -> ReferenceRun:
    groups = make_params(shapes_per_group, seed, init, init_value)
    params = [p for g in groups for p in g]
    overrides = overrides or [{} for _ in groups]
    cls = getattr(torch.optim, optimizer)
    # The first group goes to the constructor, later ones through add_param_group, as
    # in the PyTorch tutorial.
    opt = cls([{"params": groups[0], **overrides[0]}], **(defaults or {}))
    for g, o in zip(groups[1:], overrides[1:], strict=True):
        opt.add_param_group({"params": g, **o})
    sched = None
    if scheduler is not None:
        sched = getattr(torch.optim.lr_scheduler, scheduler[0])(opt, **scheduler[1])
    sparse = optimizer == "SparseAdam"
    losses: list[float] = []
    if zero_grad == "zeros" and grad == "none":
        for p in params:
            p.grad = torch.zeros_like(p).to_sparse() if sparse else torch.zeros_like(p)

    for step in range(steps):
        if optimizer == "LBFGS":
            def closure(step: int = step) -> torch.Tensor:
                if zero_grad != "never":
                    opt.zero_grad(set_to_none=zero_grad == "none")
                loss = write_gradients(grad, params, grad_value, seed, step)
                return loss.detach() if loss is not None else torch.tensor(0.0)

            opt.step(closure)
        else:
            if zero_grad != "never":
                opt.zero_grad(set_to_none=zero_grad == "none")
            loss = write_gradients(grad, params, grad_value, seed, step, sparse)
            opt.step()
            if loss is not None:
                losses.append(float(loss.detach()))
        if sched is not None:
            sched.step()
    return ReferenceRun(params, opt, sched, losses)
