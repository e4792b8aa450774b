"""The lr per group that a saved LR scheduler itself computes at its ``last_epoch``: what the
lr should be if the run followed its schedule (``timeline``'s ``lr_off_schedule``).

The numbers come from torch's own scheduler class, never from a formula re-typed here: the
saved state (``scheduler.state_dict()`` is the instance's whole ``__dict__`` but the
optimizer) is loaded with the class's ``load_state_dict`` into a bare instance of the class
the keys name (``state.report.scheduler_report``), attached to a dummy ``torch.optim.SGD``
whose groups hold the saved base lrs, and the class computes the lr:

- StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR, CosineAnnealingLR and
  PolynomialLR by ``_get_closed_form_lr()`` (from ``base_lrs`` and ``last_epoch``). A run
  reaches its lr step by step (``get_lr`` multiplies the group's lr by a factor each step),
  so the two agree up to the rounding of those steps (``numeric.tolerance.schedule_atol``),
  and differ by far more when someone or something changed the lr in between;
- CosineAnnealingWarmRestarts, CyclicLR and OneCycleLR by their ``get_lr()``, which does not
  chain on the group's lr (T_cur/T_i; last_epoch against base_lrs/max_lrs; the group's
  initial_lr/max_lr/min_lr, which OneCycleLR keeps in the optimizer's groups, not in its own
  state: pass them as ``groups``). These agree exactly with the run.

The rest cannot be computed from what is saved and give ``(None, reason)``: LambdaLR and
MultiplicativeLR (the lambdas are code), ReduceLROnPlateau (follows a metric), SequentialLR
and ChainedScheduler (compose others), DeepSpeed's schedulers (their settings live in the
config), and states whose class is not recognised.

Constructing the class first is not needed (and would take each class's constructor
arguments back out of the state): ``load_state_dict`` overwrites every attribute the
constructor sets.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any

from optstate.state.report import scheduler_report

CLOSED_FORM = ("StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR",
               "CosineAnnealingLR", "PolynomialLR")
NOT_CHAINED = ("CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR")

_WHY_NOT = {
    "LambdaLR": "LambdaLR's lambdas are code, not saved",
    "ReduceLROnPlateau": "ReduceLROnPlateau follows a metric, not a schedule",
    "SequentialLR": "SequentialLR composes other schedulers",
    "ChainedScheduler": "ChainedScheduler composes other schedulers",
    "DeepSpeed scheduler": "DeepSpeed's scheduler keeps its settings in the config",
    "unknown": "the scheduler's class is not recognised",
}


def _number(v: Any) -> float | None:
    if hasattr(v, "item") and getattr(v, "numel", lambda: 0)() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def scheduled_lrs(sched_state: dict[str, Any], n_groups: int, *,
                  groups: list[dict[str, Any]] | None = None,
                  ) -> tuple[list[float] | None, str]:
    """The lr per group the saved scheduler computes at its ``last_epoch``, and how
    ("closed form of StepLR"), or ``(None, reason)`` when it cannot be known from the state.
    ``groups``: the optimizer's groups' hyperparameters (only OneCycleLR needs them)."""
    if not isinstance(sched_state, dict):
        return None, "the scheduler state is not a dict"
    kind = scheduler_report(sched_state, "")["kind"]
    if "lr_lambdas" in sched_state and kind == "LambdaLR":
        # MultiplicativeLR saves the same keys as LambdaLR
        return None, "LambdaLR's (or MultiplicativeLR's) lambdas are code, not saved"
    if kind not in CLOSED_FORM and kind not in NOT_CHAINED:
        return None, _WHY_NOT.get(kind, f"{kind} is not computed here")
    base = [_number(v) for v in sched_state.get("base_lrs") or []]
    if len(base) != n_groups or any(b is None for b in base):
        return None, (f"the scheduler has {len(base)} base lrs for {n_groups} "
                      "param groups" if len(base) != n_groups
                      else "the scheduler's base lrs are not numbers")
    last_epoch = _number(sched_state.get("last_epoch"))
    if last_epoch is None or last_epoch < 0:
        return None, "the scheduler has no last_epoch"
    if kind == "CyclicLR" and sched_state.get("_scale_fn_custom") is not None:
        return None, "CyclicLR's scale_fn is code, not saved"
    if kind == "OneCycleLR" and (groups is None or len(groups) != n_groups):
        return None, "OneCycleLR keeps its max_lr and min_lr in the param groups"
    if kind == "CosineAnnealingLR" and last_epoch > (_number(sched_state.get("T_max")) or 0):
        # past T_max the chained lr climbs back from near eta_min, and the rounding of the
        # bottom grows with T_max**2 relative to the lr: no bound to compare it with
        return None, "CosineAnnealingLR is past its T_max"
    try:
        values = _compute(kind, dict(sched_state), base, groups)
    except Exception as exc:  # the saved state is not what this torch's class expects
        return None, f"{kind} could not compute it from the saved state ({type(exc).__name__})"
    lrs = [_number(v) for v in values]
    if len(lrs) != n_groups or any(v is None or not math.isfinite(v) for v in lrs):
        return None, f"{kind} gave no finite lr per group"
    how = "closed form" if kind in CLOSED_FORM else "get_lr"
    return [float(v) for v in lrs if v is not None], f"{kind} {how} at last_epoch " \
        f"{int(last_epoch)}"


def _compute(kind: str, state: dict[str, Any], base: list[float | None],
             groups: list[dict[str, Any]] | None) -> list[Any]:
    import torch
    from torch.optim import lr_scheduler

    cls = getattr(lr_scheduler, kind)
    params = [torch.nn.Parameter(torch.zeros(0)) for _ in base]
    opt = torch.optim.SGD([{"params": [p], "lr": b} for p, b in zip(params, base,
                                                                       strict=True)],
                          lr=base[0] or 0.0, momentum=0.9)
    for i, group in enumerate(opt.param_groups):
        group["initial_lr"] = base[i]
        group["betas"] = (0.9, 0.999)  # CyclicLR/OneCycleLR write beta1 when cycling it
    if kind == "OneCycleLR":
        if groups is None or len(groups) != len(base):
            raise ValueError("OneCycleLR needs the groups' max_lr and min_lr")
        for group, saved in zip(opt.param_groups, groups, strict=True):
            for key in ("initial_lr", "max_lr", "min_lr"):
                value = _number(saved.get(key))
                if value is None:
                    raise ValueError(f"no {key}")
                group[key] = value
            for key in ("max_momentum", "base_momentum"):  # cycled beside the lr
                group[key] = _number(saved.get(key)) or 0.9
    if kind == "MultiStepLR" and not isinstance(state.get("milestones"), Counter):
        ms = state.get("milestones")
        state["milestones"] = Counter(ms) if isinstance(ms, (list, tuple)) else \
            Counter({int(k): int(v) for k, v in dict(ms).items()})
    sched = cls.__new__(cls)
    sched.optimizer = opt
    if kind == "CyclicLR":
        if state.get("_scale_fn_custom") is not None:
            raise ValueError("CyclicLR's scale_fn is code")
        sched._scale_fn_custom = None
    sched.load_state_dict(state)
    with warnings.catch_warnings():
        # get_lr outside step() warns "use get_last_lr()": here it is the point
        warnings.simplefilter("ignore")
        if kind in CLOSED_FORM:
            return list(sched._get_closed_form_lr())
        return list(sched.get_lr())
