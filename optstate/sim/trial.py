"""Trials: what a resume does, run by torch itself on copies, so its own error is the word
on whether a state loads and steps.

One trial (``trial_resume``): ``optimizer.load_state_dict`` of a copy of the state, one
``step()`` on gradients of ones, then the scheduler's ``load_state_dict`` and ``step()``.
Two ways to get the optimizer it runs on:

- ``run_trial``: the one a config builds (``check``);
- ``trial_step``: one of the kind that wrote the state, over parameters shaped like its
  state (``set``, which has no config: does the changed state still load and step?).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch

from optstate.base.errors import CheckpointError
from optstate.io.torch_file import clean_message
from optstate.sim.build import Built, build
from optstate.sim.config import RunSpec

# Group keys that are not hyperparameters: the parameters themselves and their names.
NOT_HYPERPARAMS = frozenset({"params", "param_names"})

# The stages of a trial, in order, and how a report names each.
STAGES = {"load_state_dict": "optimizer.load_state_dict()", "step": "optimizer.step()",
          "scheduler_load_state_dict": "scheduler.load_state_dict()",
          "scheduler_step": "scheduler.step()"}


def torch_error(e: BaseException) -> str:
    """torch's error as one line: ``KeyError: missing key 'max_exp_avg_sq'``."""
    msg = clean_message(e)
    if isinstance(e, KeyError):
        msg = f"missing key {msg}"
    return f"{type(e).__name__}: {msg}"


def step_once(built: Built, *, scheduler: bool = False) -> None:
    """One ``step()`` on gradients of ones (sparse ones for SparseAdam, a closure for
    LBFGS), and the scheduler's step if ``scheduler``."""
    sparse = isinstance(built.optimizer, torch.optim.SparseAdam)  # takes sparse grads only
    for p in built.params:
        p.grad = torch.ones_like(p).to_sparse() if sparse else torch.ones_like(p)

    def closure() -> torch.Tensor:
        return torch.zeros(())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(built.optimizer, torch.optim.LBFGS):
            built.optimizer.step(closure)
        else:
            built.optimizer.step()
        if scheduler and built.scheduler is not None:
            _scheduler_step(built.scheduler)


def _scheduler_step(scheduler: Any) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(0.0)
    else:
        scheduler.step()


def trial_resume(built: Built, state: dict[str, Any],
                 scheduler_state: dict[str, Any] | None = None, *,
                 after_load: Callable[[torch.optim.Optimizer], None] | None = None,
                 ) -> dict[str, str | None]:
    """Load a copy of ``state`` into ``built``'s optimizer, step once, then (if ``built``
    has a scheduler and ``scheduler_state`` is given) load and step the scheduler. Each
    stage (``STAGES``): "ok", torch's error (``torch_error``), or None when not reached.
    ``after_load`` sees the optimizer right after a successful load."""
    out: dict[str, str | None] = {stage: None for stage in STAGES}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built.optimizer.load_state_dict(copy.deepcopy(state))
        out["load_state_dict"] = "ok"
    except Exception as e:
        out["load_state_dict"] = torch_error(e)
        return out
    if after_load is not None:
        after_load(built.optimizer)
    try:
        step_once(built)
        out["step"] = "ok"
    except Exception as e:
        out["step"] = torch_error(e)
        return out
    if built.scheduler is not None and scheduler_state is not None:
        try:
            built.scheduler.load_state_dict(copy.deepcopy(scheduler_state))
            out["scheduler_load_state_dict"] = "ok"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _scheduler_step(built.scheduler)
            out["scheduler_step"] = "ok"
        except Exception as e:
            key = ("scheduler_step" if out["scheduler_load_state_dict"] == "ok"
                   else "scheduler_load_state_dict")
            out[key] = torch_error(e)
    return out


def run_trial(sd: dict[str, Any], spec: RunSpec,
              scheduler_state: dict[str, Any] | None) -> dict[str, Any]:
    """Do what a resume does, on copies: build from the config, load_state_dict, one step
    (and the scheduler's load and step). Each stage: "ok", torch's error message, or None
    when not reached; ``missing_after_load``: per group, the configured hyperparameters the
    loaded groups lack even after the optimizer filled its defaults; ``_loaded_groups``
    (for the caller to pop): the groups' hyperparameters as the load left them."""
    built = build(spec)
    configured = [set(g) for g in built.optimizer.param_groups]
    missing: dict[str, list[str]] = {}
    loaded: list[dict[str, Any]] = []

    def after_load(optimizer: torch.optim.Optimizer) -> None:
        for gi, (want, g) in enumerate(zip(configured, optimizer.param_groups, strict=True)):
            lacking = sorted(want - set(g))
            if lacking:
                missing[str(gi)] = lacking
        loaded.extend({k: v for k, v in g.items() if k not in NOT_HYPERPARAMS}
                      for g in optimizer.param_groups)

    out: dict[str, Any] = trial_resume(built, sd, scheduler_state, after_load=after_load)
    out["missing_after_load"] = missing
    if out["load_state_dict"] == "ok":
        out["_loaded_groups"] = loaded
    return out


def trial_step(sd: dict[str, Any]) -> str | None:
    """Load the state into a fresh optimizer of the kind that wrote it, over parameters
    shaped like its state, and take one step on gradients of ones: "ok", or torch's error
    (amsgrad=True with no max_exp_avg_sq saved, say). None when the kind or the parameter
    shapes cannot be told."""
    from optstate.state.kind import infer_kind
    from optstate.state.view import OptimizerStateView

    try:
        view = OptimizerStateView.from_state_dict(sd)
    except CheckpointError:
        return None
    guess = infer_kind([g.hyperparams for g in view.groups],
                       {k for p in view.params for k in p.state})
    cls = getattr(torch.optim, guess.kind, None)
    if guess.confidence not in ("high", "medium") or cls is None or guess.kind in (
            "LBFGS", "SparseAdam", "Adafactor"):
        return None  # flat, sparse or factored state: shapes do not give the params
    params = []
    for p in view.params:
        shapes = {tuple(v.shape) for k, v in p.state.items()
                  if isinstance(v, torch.Tensor) and v.dim() > 0}
        if len(shapes) > 1:
            return None
        params.append(torch.zeros(next(iter(shapes), (1,)), requires_grad=True))
    groups, i = [], 0
    for g in view.groups:
        groups.append({"params": params[i:i + len(g.param_keys)]})
        i += len(g.param_keys)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer = cls(groups)
    except Exception as e:
        return torch_error(e)
    built = Built(params, [], [], optimizer, None)
    stages = trial_resume(built, sd)
    return next((v for v in stages.values() if v not in (None, "ok")), "ok")


def reference_state(spec: RunSpec) -> list[dict[str, Any]]:
    """Per parameter, the state the configured optimizer creates at its first step (on
    gradients of ones): the 'configured shapes' a checkpoint's state must have."""
    try:
        built = build(spec)
        step_once(built)
    except Exception:  # SparseAdam needs sparse gradients &c.: fall back to param shapes
        return [{} for g in spec.groups for _ in g.shapes]
    state = built.optimizer.state
    return [dict(state.get(p, {})) for p in built.params]
