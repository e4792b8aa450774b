"""Synthetic gradient sources: what ``backward()`` would leave in ``param.grad``.

Each source is deterministic for a given seed and step, so a run that is saved and
resumed at step k sees exactly the gradients the uninterrupted run saw. Gradients are
the autograd gradients of a small objective (so they are bit for bit what
``loss.backward()`` gives in a hand-written loop), written with autograd's accumulation
rule: a parameter whose ``.grad`` is None receives the new tensor, otherwise the new
gradient is added in place (what ``backward()`` does when ``zero_grad`` was skipped).

- ``constant``: every element ``value`` (the tutorial's ``torch.ones``); the objective is
  the linear function ``sum(w * value)``.
- ``normal``: seeded N(0, 1) noise, drawn afresh each step; there is no objective.
- ``quadratic``: the gradient of ``0.5 * ||w - value||^2``, i.e. ``w - value``.
- ``rosenbrock``: the 2-D Rosenbrock function ``(1 - x)^2 + 100 (y - x^2)^2`` on
  consecutive pairs (x, y) of all parameter elements (one pair: the classic 2-D case),
  summed; minimum 0 at x = y = 1.
- ``none``: no gradient at all (a frozen or unused parameter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Rosenbrock constants: the textbook a = 1, b = 100.
_ROSEN_A = 1.0
_ROSEN_B = 100.0


class GradientSource:
    """Computes per-step gradients and the objective for a list of parameters.

    Sources with an objective define it once, as a torch expression; gradients are what
    autograd makes of it, exactly what ``loss.backward()`` leaves in a training loop."""

    name = "base"
    has_objective = True

    def __init__(self, value: float = 1.0, seed: int = 0) -> None:
        self.value = value
        self.seed = seed
        # (params, their versions, objective with its graph) from the last loss() call:
        # a training loop runs one forward per step, so the history's loss and the next
        # step's gradients share one (same values, bit for bit; half the work on big runs)
        self._pending: tuple[list[torch.Tensor], list[int], torch.Tensor] | None = None

    def objective(self, params: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _stepping_objective(self, params: list[torch.Tensor]) -> torch.Tensor:
        """``objective`` as the loop computes it every step: equal to it up to the sign
        of a zero (``sum()`` starts at 0, turning -0.0 into 0.0), with the same gradients
        bit for bit; ``loss`` restores the sign. Sources override it to skip that add."""
        return self.objective(params)

    def _take_objective(self, params: list[torch.Tensor]) -> torch.Tensor:
        """The objective's graph for ``params``: the one ``loss`` just built for the same
        values if there is one (used once), else a fresh forward."""
        pending, self._pending = self._pending, None
        if pending is not None and _same_values(pending[0], pending[1], params):
            return pending[2]
        return self._forward(params)

    def _forward(self, params: list[torch.Tensor]) -> torch.Tensor:
        """``_stepping_objective`` with autograd on; as in a training loop, it usually is
        (no context to enter per step then)."""
        if torch.is_grad_enabled():
            return self._stepping_objective(params)
        with torch.enable_grad():
            return self._stepping_objective(params)

    def gradients(self, params: list[torch.Tensor], step: int) -> list[torch.Tensor] | None:
        return list(torch.autograd.grad(self._take_objective(params), params))

    def fill_grads(self, params: list[torch.Tensor], step: int, sparse: bool = False) -> None:
        """``accumulate(params, self.gradients(params, step), sparse)``; for objectives
        through ``backward()`` itself, as a training loop does (its AccumulateGrad stores
        the same values, or adds them in place: bit for bit the same, one call less)."""
        if sparse or not self.has_objective or type(self).gradients is not \
                GradientSource.gradients:
            accumulate(params, self.gradients(params, step), sparse=sparse)
            return
        # backward() as a training loop calls it: the objective's only leaves are params
        self._take_objective(params).backward()

    def loss(self, params: list[torch.Tensor]) -> float | None:
        """The objective's value (in the parameters' dtype, as a training loop sees it)."""
        if params and all(p.requires_grad and p.is_leaf for p in params):
            obj = self._forward(params)
            self._pending = (list(params), [p._version for p in params], obj)
            return 0.0 + obj.item()  # 0.0 +: the value (sign of zero) of sum()'s
        with torch.no_grad():
            return float(self.objective(params))


def _same_values(before: list[torch.Tensor], versions: list[int],
                 params: list[torch.Tensor]) -> bool:
    """The same tensors, not modified in place since (autograd's version counters)."""
    return len(before) == len(params) and all(
        a is b and v == b._version for a, v, b in zip(before, versions, params, strict=True))


class ConstantGradient(GradientSource):
    name = "constant"

    def objective(self, params):
        return sum((p * self.value).sum() for p in params)

    def _stepping_objective(self, params):
        if len(params) == 1:
            return (params[0] * self.value).sum()
        return self.objective(params)


class NormalGradient(GradientSource):
    name = "normal"
    has_objective = False

    def gradients(self, params, step):
        # A generator re-seeded per step: step k's noise does not depend on earlier
        # steps, so resuming at k reproduces the uninterrupted run.
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]

    def loss(self, params):
        return None


class QuadraticGradient(GradientSource):
    name = "quadratic"

    def objective(self, params):
        return sum(0.5 * ((p - self.value) ** 2).sum() for p in params)

    def _stepping_objective(self, params):
        if len(params) == 1:
            return 0.5 * ((params[0] - self.value) ** 2).sum()
        return self.objective(params)


class RosenbrockGradient(GradientSource):
    name = "rosenbrock"

    def objective(self, params):
        flat = torch.cat([p.reshape(-1) for p in params])
        x, y = flat[0::2], flat[1::2]
        return ((_ROSEN_A - x) ** 2 + _ROSEN_B * (y - x**2) ** 2).sum()


class NoGradient(GradientSource):
    name = "none"
    has_objective = False

    def gradients(self, params, step):
        return None

    def loss(self, params):
        return None


SOURCES: dict[str, type[GradientSource]] = {
    c.name: c
    for c in (ConstantGradient, NormalGradient, QuadraticGradient, RosenbrockGradient, NoGradient)
}


def make_source(name: str, value: float = 1.0, seed: int = 0) -> GradientSource:
    return SOURCES[name](value=value, seed=seed)


def accumulate(params: list[torch.Tensor], grads: list[torch.Tensor] | None,
               sparse: bool = False) -> None:
    """Write ``grads`` into ``.grad`` the way autograd's AccumulateGrad does."""
    if grads is None:
        return
    for p, g in zip(params, grads, strict=True):
        if sparse:
            g = g.to_sparse()
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)


# --------------------------------------------------------------------------- the objective


def optimum(grad: str, grad_value: float, numel: int) -> list[float] | None:
    """Where the objective of gradient source ``grad`` is smallest, for ``numel``
    parameter elements; None when it has no minimum (linear, or no objective)."""
    if grad == "rosenbrock":
        return [1.0] * numel
    if grad == "quadratic":
        return [float(grad_value)] * numel
    return None


def objective_grid(grad: str, grad_value: float, xs: Sequence[float],
                   ys: Sequence[float]) -> torch.Tensor:
    """The objective of one 2-element parameter at every (x, y) of the grid xs × ys, as a
    float64 tensor indexed ``[j, i]`` (row = y), computed by the source's own objective
    (vmapped over the grid): what ``--plot`` draws as contour lines."""
    source = make_source(grad, grad_value)
    x = torch.as_tensor(xs, dtype=torch.float64)
    y = torch.as_tensor(ys, dtype=torch.float64)
    gy, gx = torch.meshgrid(y, x, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    with torch.no_grad():
        z = torch.vmap(lambda xy: source.objective([xy]))(points)
    return z.reshape(gy.shape)
