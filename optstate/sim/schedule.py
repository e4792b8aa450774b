"""The base lrs of LR schedulers' saved states: what ``set --base-lr`` scales and what
``check`` compares with a config's lr.

A scheduler state is the dict ``scheduler.state_dict()`` returns; SequentialLR and
ChainedScheduler keep those of the schedulers they wrap under ``_schedulers``.
"""

from __future__ import annotations

from typing import Any

from optstate.base.errors import option
from optstate.base.paths import join
from optstate.base.values import is_number

# How messages name set's lr: the "lr" item of set_hyperparameters(values=...), --lr.
SET_LR = "values['lr']"


def scalar(v: Any) -> float:
    """A number or a one-element tensor as a float."""
    return float(v.item()) if hasattr(v, "item") else float(v)


def scheduler_tree(sched: dict[str, Any], rel: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The scheduler state and those it wraps (SequentialLR, ChainedScheduler), each with
    its path relative to the top: ``""``, ``"_schedulers[0]"``, ..."""
    out = [(rel, sched)]
    for i, sub in enumerate(sched.get("_schedulers") or []):
        if isinstance(sub, dict):
            out += scheduler_tree(sub, join(join(rel, "_schedulers"), i))
    return out


def base_lr_of(sched: dict[str, Any], group: dict[str, Any], gi: int) -> float:
    """A group's base lr: the scheduler's base_lrs (SequentialLR keeps none of its own:
    those of the first scheduler it wraps), else the group's initial_lr."""
    for _, state in scheduler_tree(sched):
        lrs = state.get("base_lrs")
        if isinstance(lrs, list) and gi < len(lrs):
            return scalar(lrs[gi])
    return scalar(group["initial_lr"])


def not_proportional(sched: dict[str, Any]) -> str | None:
    """Why a scheduler's lrs are not base lr times a base-free factor, or None."""
    for _, state in scheduler_tree(sched):
        if "base_lrs" not in state and "_schedulers" not in state:
            name = " (ReduceLROnPlateau changes the lr from the metric it is given, not " \
                "from a base lr)" if "patience" in state else ""
            return (f"the scheduler state has no base_lrs{name}: set the lr itself with "
                    f"{option(SET_LR)}")
        if "max_lrs" in state:
            return (f"CyclicLR moves the lr between base_lrs and max_lrs "
                    f"({', '.join(repr(scalar(v)) for v in state['max_lrs'])}), an absolute "
                    "lr of its own: scaling cannot give the run that started at another base "
                    "lr")
        eta = state.get("eta_min")
        if is_number(eta) and eta != 0:
            return (f"the scheduler's eta_min = {eta!r} is an absolute lr: the schedule is "
                    "not proportional to its base lr, so scaling cannot give the run that "
                    "started at another base lr")
    return None
