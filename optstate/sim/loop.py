"""The one training loop, shared by ``simulate`` and ``simulate --world-size``.

Each step is exactly what a hand-written training loop does::

    optimizer.zero_grad()            # per spec.zero_grad: set_to_none / zeros / skipped
    <gradients written into .grad>   # autograd's accumulation rule (gradients.py)
    optimizer.step()                 # LBFGS: step(closure)
    scheduler.step()                 # if configured (ReduceLROnPlateau: step(loss))

``run_loop`` steps the tensors it is given and records the ``History``. What differs
between one process and an FSDP2 rank is passed in: how the whole parameters are read
(``whole``: on a rank, the shards gathered), how a step's gradients reach ``.grad``
(``fill_grads``: on a rank, computed on the whole parameters and split to the shard)
and what is saved after a step (``save_due``). Everything else (the order of the calls,
which steps are recorded and what a record holds) is this one piece of code, so the two
give the same numbers bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from optstate.base.errors import ConfigError, option
from optstate.io.torch_file import clean_message
from optstate.numeric.kernels import norm_fn
from optstate.sim.config import RunSpec
from optstate.sim.gradients import GradientSource, accumulate, make_source


@dataclass
class History:
    """Per-step records, one entry per recorded step: the start, every step that is a
    multiple of ``record_every``, and the final step (see ``record_interval``)."""

    step: list[int] = field(default_factory=list)
    loss: list[float | None] = field(default_factory=list)
    param_norm: list[float] = field(default_factory=list)
    lr: list[list[float]] = field(default_factory=list)  # one lr per group
    # (x, y) per recorded step when the run has exactly two parameter elements (the 2-D
    # objectives that --plot draws over their contour plot); empty otherwise.
    point: list[tuple[float, float]] = field(default_factory=list)
    record_every: int = 1


# The "auto" history: at most this many recorded steps, and the norms read at most this
# many parameter elements over a run (the norm is a float64 pass over every parameter).
MAX_RECORDS = 1000
MAX_NORM_ELEMENTS = 50_000_000


def record_interval(steps: int, numel: int) -> int:
    """The ``record_every`` of ``"auto"``: the smallest k >= 1 with at most
    ``MAX_RECORDS`` recorded steps (``ceil(steps / k)``) whose norms read at most
    ``MAX_NORM_ELEMENTS`` elements in all (``ceil(steps / k) * numel``). It depends only
    on the run's size, never on timing: 10 000 steps of a 2x2 record every 10th step,
    50 steps of 10M parameters every 10th, runs up to 1000 steps of up to 50 000
    elements every step. Beyond 5e7 elements only the start and the end are recorded."""
    records = min(MAX_RECORDS, MAX_NORM_ELEMENTS // max(numel, 1))
    if records < 1:
        return max(steps, 1)
    return max(1, -(-steps // records))


def resolve_record_every(record_every: int | str, steps: int, numel: int) -> int:
    """``record_every`` as a number of steps (``"auto"``: ``record_interval``)."""
    return record_every if record_every != "auto" else record_interval(steps, numel)


# What torch raises when a setting its constructor accepted fails at step() (capturable
# on CPU, differentiable on leaf parameters, OneCycleLR past total_steps, ...).
TORCH_REFUSALS = (RuntimeError, ValueError, TypeError, AssertionError)


def _refused(obj: Any, step: int, e: BaseException) -> ConfigError:
    return ConfigError(
        f"torch refused step {step} of {type(obj).__name__}: {clean_message(e)}",
        hint="torch's constructor accepts these settings but its step() does not (on "
        "this device); change the hyperparameters or the scheduler arguments",
    )


def run_loop(
    spec: RunSpec,
    params: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    *,
    start: int,
    every: int,
    whole: Callable[[], list[torch.Tensor]] | None = None,
    fill_grads: Callable[[GradientSource, int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    save_due: Callable[[int], None] | None = None,
    refusals: tuple[type[BaseException], ...] = TORCH_REFUSALS,
) -> History:
    """Step ``optimizer`` (over ``params``) from step ``start`` for ``spec.steps`` steps
    on ``spec``'s synthetic gradients; return the history, recorded at ``start``, at
    every multiple of ``every`` and at the end.

    ``whole()`` gives the whole parameters the loss, the norm and the 2-D point are read
    from (default: ``params`` themselves); ``fill_grads(source, step)`` writes a step's
    gradients into ``params``' ``.grad`` (default: ``source.fill_grads``). After each
    step: ``on_step(done)``, then ``save_due(done)`` (also called with ``start`` before
    the first step, for a run of zero steps). What torch raises at ``step()`` among
    ``refusals`` becomes one ``ConfigError`` naming the step."""
    end = start + spec.steps
    history = History(record_every=every)
    source = make_source(spec.grad, spec.grad_value, spec.seed)
    opt, sched = optimizer, scheduler
    is_lbfgs = isinstance(opt, torch.optim.LBFGS)
    sparse = isinstance(opt, torch.optim.SparseAdam)
    plateau = sched is not None and isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    set_to_none = spec.zero_grad == "none"
    zero = spec.zero_grad != "never"
    if spec.zero_grad == "zeros" and source.name == "none":
        # Older torch kept zero-filled .grad tensors after the first backward; with no
        # gradient source we start from that state so steps still run on zero grads.
        for p in params:
            p.grad = torch.zeros_like(p).to_sparse() if sparse else torch.zeros_like(p)
    if fill_grads is None:
        def fill_grads(source: GradientSource, step: int) -> None:
            source.fill_grads(params, step, sparse=sparse)

    two_d = sum(p.numel() for p in params) == 2
    # Recording recurs through the run: views, blocks and (without a scheduler, where
    # nothing changes the learning rates) the lr list are made once, not per record.
    if whole is None:
        norm_now = norm_fn(params)  # norm_of(params): float64, chunked, no temporaries

        def snapshot() -> tuple[list[torch.Tensor], Callable[[], float]]:
            return params, norm_now
    else:
        def snapshot() -> tuple[list[torch.Tensor], Callable[[], float]]:
            tensors = whole()
            return tensors, norm_fn(tensors)
    loss_now = source.loss if source.has_objective else None
    fixed_lr = None if sched is not None else [float(g["lr"]) for g in opt.param_groups]

    def record(step: int) -> None:
        tensors, norm_now = snapshot()
        norm = norm_now()
        history.step.append(step)
        history.loss.append(loss_now(tensors) if loss_now is not None else None)
        history.param_norm.append(norm)
        history.lr.append([float(g["lr"]) for g in opt.param_groups] if fixed_lr is None
                          else fixed_lr.copy())
        if two_d:
            x, y = torch.cat([p.detach().reshape(-1) for p in tensors]).tolist()
            history.point.append((x, y))

    record(start)
    if save_due is not None:
        save_due(start)
    next_record = (start // every + 1) * every
    for step in range(start, end):
        if is_lbfgs:
            def closure(step: int = step) -> torch.Tensor:
                if zero:
                    opt.zero_grad(set_to_none=set_to_none)
                accumulate(params, source.gradients(params, step))
                if not source.has_objective:
                    return torch.tensor(0.0)
                with torch.no_grad():  # the loss a hand-written closure returns
                    return source.objective(params)

            try:
                opt.step(closure)
            except refusals as e:
                raise _refused(opt, step + 1, e) from None
        else:
            if zero:
                opt.zero_grad(set_to_none=set_to_none)
            fill_grads(source, step)
            try:
                opt.step()
            except refusals as e:
                raise _refused(opt, step + 1, e) from None
        if sched is not None:
            try:
                if plateau:
                    loss = source.loss(params if whole is None else whole())
                    sched.step(loss if loss is not None else 0.0)
                else:
                    sched.step()
            except refusals as e:
                raise _refused(sched, step + 1, e) from None
        done = step + 1
        if done == next_record:
            record(done)
            next_record += every
        elif done == end:
            record(done)
        if on_step is not None:
            on_step(done)
        if save_due is not None:
            save_due(done)
    return history


def divergence_warning(history: History) -> str | None:
    """Where the recorded parameter norms first turn NaN or Inf, said as precisely as
    the history allows: between two recorded steps, it happened after the earlier."""
    rows = list(zip(history.step, history.param_norm, strict=True))
    i = next((i for i, (_, n) in enumerate(rows) if not math.isfinite(n)), None)
    if i is None:
        return None
    bad = rows[i][0]
    if i == 0 or bad - rows[i - 1][0] == 1:
        return (f"the run diverged: parameters hold NaN or Inf from step {bad} on "
                f"(try a smaller {option('lr')})")
    return (f"the run diverged: parameters hold NaN or Inf from recorded step {bad} on, "
            f"first after step {rows[i - 1][0]} (the history records every "
            f"{history.record_every} steps; {option('record_every', 1)} finds the step; try a "
            f"smaller {option('lr')})")
