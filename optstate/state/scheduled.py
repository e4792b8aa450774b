"""The lr per group that a saved LR scheduler computes at its ``last_epoch``: what the
lr should be if the run followed its schedule (``timeline``'s ``lr_off_schedule``).

Without torch: each class's own formula, as torch (2.13, the version tested) writes it in
``torch/optim/lr_scheduler.py``, the same Python float operations in the same order, over
the attributes its ``state_dict()`` saves (the instance's ``__dict__`` but the optimizer).
``tests/test_scheduled.py`` checks every formula against torch's class, loaded with the
same saved state, bit for bit, at every step of real runs; a class or state it does not
know gives ``(None, reason)``, never a guess.

- StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR, CosineAnnealingLR and
  PolynomialLR by their closed form (``_get_closed_form_lr``: from ``base_lrs`` and
  ``last_epoch``). A run reaches its lr step by step (``get_lr`` multiplies the group's lr
  by a factor each step), so the two agree up to the rounding of those steps
  (``numeric.tolerance.schedule_atol``), and differ by far more when someone or something
  changed the lr in between;
- CosineAnnealingWarmRestarts, CyclicLR and OneCycleLR by their ``get_lr()``, which does not
  chain on the group's lr (T_cur/T_i; last_epoch against base_lrs/max_lrs; the group's
  initial_lr/max_lr/min_lr, which OneCycleLR keeps in the optimizer's groups, not in its own
  state: pass them as ``groups``). These agree exactly with the run. A CyclicLR given its
  own ``scale_fn`` as a function saves nothing of it: where its saved ``scale_mode`` is
  not its mode's, that is said; where it is (a function with the default "cycle" on a
  "triangular" CyclicLR), the state cannot tell, and timeline's finding names it as a
  possible cause.

Tensor lrs (``lr=torch.tensor(0.1)``) give ``(None, reason)``: torch computes them in
their own dtype. The rest cannot be computed from what is saved either: LambdaLR and
MultiplicativeLR (the lambdas are code), ReduceLROnPlateau (follows a metric), SequentialLR
and ChainedScheduler (compose others), DeepSpeed's schedulers (their settings live in the
config), and states whose class is not recognised.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from optstate.io.native_tensor import is_tensor
from optstate.state.report import scheduler_report

CLOSED_FORM = ("StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR",
               "CosineAnnealingLR", "PolynomialLR")
NOT_CHAINED = ("CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR")
# The lrs OneCycleLR (and the optimizer) keep in the param groups.
_GROUP_LRS = ("lr", "initial_lr", "max_lr", "min_lr")

_WHY_NOT = {
    "LambdaLR": "LambdaLR's lambdas are code, not saved",
    "ReduceLROnPlateau": "ReduceLROnPlateau follows a metric, not a schedule",
    "SequentialLR": "SequentialLR composes other schedulers",
    "ChainedScheduler": "ChainedScheduler composes other schedulers",
    "DeepSpeed scheduler": "DeepSpeed's scheduler keeps its settings in the config",
    "unknown": "the scheduler's class is not recognised",
}


def _number(v: Any) -> float | None:
    """A finite real number as a float, else None (a 1-element tensor: its value)."""
    if hasattr(v, "item") and getattr(v, "numel", lambda: 0)() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an int past the float range
        return None
    return f if math.isfinite(f) else None


# The scale_mode each CyclicLR mode sets; a saved state with another one was given its
# own scale_fn, which a state_dict does not save when it is a function.
_CYCLIC_MODES = {"triangular": "cycle", "triangular2": "cycle", "exp_range": "iterations"}


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
    raw_base = sched_state.get("base_lrs")
    if not isinstance(raw_base, (list, tuple)):
        return None, "the scheduler's base lrs are not a list"
    if groups is not None and not (isinstance(groups, list)
                                   and all(isinstance(g, dict) for g in groups)):
        return None, "the param groups are not dicts"
    lr_values = [*raw_base, *(g.get(k) for g in groups or [] for k in _GROUP_LRS)]
    if any(is_tensor(v) for v in lr_values):
        return None, "the lrs are tensors, which torch computes in their own dtype"
    base = [_number(v) for v in raw_base]
    if len(base) != n_groups or any(b is None for b in base):
        return None, (f"the scheduler has {len(base)} base lrs for {n_groups} "
                      "param groups" if len(base) != n_groups
                      else "the scheduler's base lrs are not finite numbers")
    raw_epoch = sched_state.get("last_epoch")
    last_epoch = _number(raw_epoch)
    if last_epoch is None or last_epoch < 0:
        return None, "the scheduler has no last_epoch"
    if kind == "CyclicLR" and (why := _cyclic_refusal(sched_state)) is not None:
        return None, why
    if kind == "MultiStepLR" and not _whole_milestones(sched_state.get("milestones")):
        # the run decays only at an epoch equal to a milestone: never at 2.5, where the
        # closed form has decayed since
        return None, "MultiStepLR has milestones that are not whole numbers"
    if kind == "OneCycleLR" and (groups is None or len(groups) != n_groups):
        return None, "OneCycleLR keeps its max_lr and min_lr in the param groups"
    if kind == "CosineAnnealingLR":
        t_max = _number(sched_state.get("T_max"))
        if t_max is None:
            return None, "CosineAnnealingLR's T_max is not a finite number"
        if last_epoch > t_max:
            # past T_max the chained lr climbs back from near eta_min, and the rounding of
            # the bottom grows with T_max**2 relative to the lr: no bound to compare it with
            return None, "CosineAnnealingLR is past its T_max"
    try:
        values = _compute(kind, dict(sched_state), base, groups)
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:  # not the class's state
        return None, f"{kind} could not compute it from the saved state ({type(exc).__name__})"
    lrs = [_number(v) for v in values]
    if len(lrs) != n_groups or any(v is None for v in lrs):
        return None, f"{kind} gave no finite lr per group"
    how = "closed form" if kind in CLOSED_FORM else "get_lr"
    return [float(v) for v in lrs if v is not None], f"{kind} {how} at last_epoch {raw_epoch}"


def _cyclic_refusal(state: dict[str, Any]) -> str | None:
    """Why a CyclicLR state cannot be computed: a scale_fn of its own (a callable object's
    state is saved; a function's is not, but its ``scale_mode`` then need not be the one
    its ``mode`` sets), or a mode it does not know."""
    if state.get("_scale_fn_custom") is not None:
        return "CyclicLR's scale_fn is code, not saved"
    mode = state.get("mode")
    implied = _CYCLIC_MODES.get(mode) if isinstance(mode, str) else None
    if implied is None:
        return "CyclicLR has a mode this reader does not know"
    if state.get("scale_mode", implied) != implied:
        return "CyclicLR was given its own scale_fn, which is code, not saved"
    return None


def _compute(kind: str, state: dict[str, Any], base: list[float | None],
             groups: list[dict[str, Any]] | None) -> list[Any]:
    """``kind``'s lr per group from its saved ``state``, as its torch class computes it
    (``_get_closed_form_lr`` or ``get_lr``): the same expressions, copied term by term."""
    if kind in CLOSED_FORM:
        return [_CLOSED_FORM[kind](state, b, state["last_epoch"]) for b in base]
    if kind == "CosineAnnealingWarmRestarts":
        eta_min = state["eta_min"]
        return [eta_min + (b - eta_min) * (1 + math.cos(math.pi * state["T_cur"] /
                                                          state["T_i"])) / 2 for b in base]
    if kind == "CyclicLR":
        return _cyclic(state, base)
    return _one_cycle(state, groups or [])


def _passed(saved: Any, last_epoch: Any) -> int:
    """MultiStepLR's ``bisect_right(sorted(self.milestones.elements()), last_epoch)``: how
    many milestones (with their counts) are at or before ``last_epoch``, counted without
    listing them (a count in a file is a number anyone could make 10**12). The saved
    Counter is a dict of milestone: count (``elements()`` skips counts below 1); other
    writers save a plain list. Milestones are compared as they are (whole numbers:
    ``_whole_milestones``)."""
    if isinstance(saved, dict):  # dict.items: nothing an instance sets is called
        pairs = list(dict.items(saved))
    elif isinstance(saved, (list, tuple)):
        pairs = [(m, 1) for m in saved]
    else:
        raise ValueError("milestones of an unknown shape")
    if not all(_real(m) and isinstance(c, int) for m, c in pairs):
        raise TypeError("milestones and counts that are not numbers")
    return sum(c for m, c in pairs if c > 0 and m <= last_epoch)


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _whole_milestones(saved: Any) -> bool:
    """Every milestone a whole number (what the run's epochs can equal); other shapes are
    left to ``_passed`` to refuse."""
    if not isinstance(saved, (dict, list, tuple)):
        return True
    keys = dict.keys(saved) if isinstance(saved, dict) else saved
    return all(not isinstance(m, float) or m.is_integer() for m in keys)


def _gamma(state: dict[str, Any]) -> float:
    """A factor raised to a step count, as a float: an integer one would make Python
    compute the exact integer power (``10 ** 10**9`` never ends), where torch's float
    gamma gives the same number at once."""
    gamma = state["gamma"]
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError("gamma is not a number")
    return float(gamma)


# torch.optim.lr_scheduler's _get_closed_form_lr, one base lr at a time (same operations).
_CLOSED_FORM: dict[str, Callable[[dict[str, Any], float, Any], Any]] = {
    "StepLR": lambda s, b, e: b * _gamma(s) ** (e // s["step_size"]),
    "MultiStepLR": lambda s, b, e: b * _gamma(s) ** _passed(s["milestones"], e),
    "ConstantLR": lambda s, b, e: b * (s["factor"] + (e >= s["total_iters"])
                                       * (1 - s["factor"])),
    "LinearLR": lambda s, b, e: b * (s["start_factor"] + (s["end_factor"] - s["start_factor"])
                                     * min(s["total_iters"], e) / s["total_iters"]),
    "ExponentialLR": lambda s, b, e: b * _gamma(s) ** e,
    "CosineAnnealingLR": lambda s, b, e: s["eta_min"] + (b - s["eta_min"]) * (
        1 + math.cos(math.pi * e / s["T_max"])) / 2,
    "PolynomialLR": lambda s, b, e: b * (1.0 - min(s["total_iters"], e) / s["total_iters"]
                                         ) ** s["power"],
}

# CyclicLR's scale functions by mode (its _init_scale_fn), and what they are applied to.
_CYCLIC_SCALE: dict[str, tuple[Callable[[float, Any], float], str]] = {
    "triangular": (lambda gamma, x: 1.0, "cycle"),
    "triangular2": (lambda gamma, x: 1 / (2.0 ** (x - 1)), "cycle"),
    "exp_range": (lambda gamma, x: gamma**x, "iterations"),
}


def _cyclic(state: dict[str, Any], base: list[float | None]) -> list[Any]:
    """CyclicLR.get_lr (lr only: the momentum it cycles is not an lr)."""
    if state.get("_scale_fn_custom") is not None:
        raise ValueError("CyclicLR's scale_fn is code")
    scale_fn, scale_mode = _CYCLIC_SCALE[state["mode"]]
    gamma = _gamma(state) if scale_mode == "iterations" else None
    last_epoch, total_size = state["last_epoch"], state["total_size"]
    cycle = math.floor(1 + last_epoch / total_size)
    x = 1.0 + last_epoch / total_size - cycle
    if x <= state["step_ratio"]:
        scale_factor = x / state["step_ratio"]
    else:
        scale_factor = (x - 1) / (state["step_ratio"] - 1)
    lrs = []
    for base_lr, max_lr in zip(base, state["max_lrs"], strict=True):
        base_height = (max_lr - base_lr) * scale_factor
        at = cycle if scale_mode == "cycle" else last_epoch
        lrs.append(base_lr + base_height * scale_fn(gamma, at))
    return lrs


_ANNEAL: dict[str, Callable[[float, float, float], float]] = {
    # OneCycleLR._annealing_cos and _annealing_linear
    "cos": lambda start, end, pct: end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1),
    "linear": lambda start, end, pct: (end - start) * pct + start,
}


def _one_cycle(state: dict[str, Any], groups: list[dict[str, Any]]) -> list[Any]:
    """OneCycleLR.get_lr, over the groups' initial_lr/max_lr/min_lr."""
    anneal = _ANNEAL[state["_anneal_func_type"]]
    step_num = state["last_epoch"]
    if step_num > state["total_steps"]:
        raise ValueError("past total_steps")
    phases = state["_schedule_phases"]
    lrs = []
    for group in groups:
        values = {key: _number(group.get(key)) for key in ("initial_lr", "max_lr", "min_lr")}
        if any(v is None for v in values.values()):
            raise ValueError("a group without initial_lr, max_lr or min_lr")
        start_step = 0.0
        for i, phase in enumerate(phases):
            end_step = phase["end_step"]
            if step_num <= end_step or i == len(phases) - 1:
                pct = (step_num - start_step) / (end_step - start_step)
                lrs.append(anneal(values[phase["start_lr"]], values[phase["end_lr"]], pct))
                break
            start_step = phase["end_step"]
    return lrs
