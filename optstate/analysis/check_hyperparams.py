"""``check``'s findings about the settings: the param groups' hyperparameters (lr as a
base lr when a scheduler ran, the momentum a cycling scheduler drives,
ReduceLROnPlateau's reductions) and the scheduler's own settings, against the optimizer
and scheduler a config builds.
"""

from __future__ import annotations

import math
from typing import Any

from optstate.analysis.check_result import Finding, equal_hyper, guess_kind, n_of, show
from optstate.base.errors import option
from optstate.base.values import is_number
from optstate.sim.build import Built
from optstate.sim.config import RunSpec
from optstate.sim.schedule import base_lr_of, not_proportional
from optstate.sim.trial import NOT_HYPERPARAMS
from optstate.state.report import plain
from optstate.state.view import OptimizerStateView

# Group keys added by LR schedulers (SWALR: swa_lr) or bookkeeping, never a sign of
# another optimizer.
ADDED_BY_OTHERS = _ADDED_BY_OTHERS = frozenset({
    "initial_lr", "max_lr", "min_lr", "base_lr", "max_momentum", "base_momentum", "name",
    "swa_lr"})

# Scheduler state that records progress, not configuration: where the schedule is
# (CosineAnnealingWarmRestarts' T_cur and T_i, which grows by T_mult at each restart;
# ReduceLROnPlateau's best metric and its counters), never a setting to undo.
SCHED_PROGRESS = _SCHED_PROGRESS = frozenset({
    "last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial",
    "verbose", "lr_lambdas", "base_lrs", "_initial_step", "T_cur", "T_i", "best",
    "num_bad_epochs", "cooldown_counter"})


def check_hyperparams(view: OptimizerStateView, built: Built, add: Any,
                      loaded: list[dict[str, Any]] | None,
                      sched_state: dict[str, Any] | None = None,
                      scheduled: bool = False, lr_by_deepspeed: bool = False) -> None:
    """``loaded``: the groups as torch left them after the trial's load_state_dict (the
    optimizer's ``__setstate__`` may force values: AdamW keeps decoupled_weight_decay).
    ``scheduled``: a scheduler ran and the config builds one: lr is compared as a base lr,
    and the momentum a cycling scheduler drives is not compared at all.
    ``lr_by_deepspeed``: DeepSpeed's own scheduler sets lr at every step: not compared."""
    cls_name = type(built.optimizer).__name__
    ours = built.optimizer.param_groups
    foreign: dict[str, list[int]] = {}
    ref_sched = built.scheduler.state_dict() if built.scheduler is not None else {}
    driven = _driven_momentum(sched_state if sched_state is not None else ref_sched,
                              ref_sched) if scheduled else None
    for g, o in zip(view.groups, ours, strict=False):
        config_keys = set(o) - NOT_HYPERPARAMS
        effective = loaded[g.index] if loaded is not None else g.hyperparams
        if scheduled and "lr" in g.hyperparams:
            _check_base_lr(g.index, g.hyperparams, o, sched_state, ref_sched, add)
        if lr_by_deepspeed and "lr" in g.hyperparams:
            add(Finding(
                "lr-scheduled", "info",
                f"param group {g.index}: lr {show(g.hyperparams['lr'])} is the current value "
                "of DeepSpeed's scheduler (from the run's ds_config); on resume it sets the "
                "lr at every step, so the config's lr is not compared with it: compare the "
                "ds_config's scheduler settings",
                group=g.index, detail={"key": "lr", "checkpoint": plain(g.hyperparams["lr"])},
            ))
        for k, saved in g.hyperparams.items():
            if k in NOT_HYPERPARAMS or (lr_by_deepspeed and k == "lr"):
                continue
            if scheduled and k in ("lr", "initial_lr"):
                continue  # compared as the base lr above
            if k not in config_keys:
                if k not in _ADDED_BY_OTHERS:
                    foreign.setdefault(k, []).append(g.index)
                continue
            v = effective.get(k, saved)
            if k == driven:
                low, high = (show(g.hyperparams.get(m)) for m in ("base_momentum",
                                                                  "max_momentum"))
                add(Finding(
                    "momentum-scheduled", "info",
                    f"param group {g.index}: {k} is driven by the scheduler (cycle_momentum), "
                    f"now {show(v)}, between base_momentum {low} and max_momentum {high}; it "
                    "is compared through those",
                    group=g.index, detail={"key": k, "checkpoint": plain(v)},
                ))
                if k == "betas" and not equal_hyper(tuple(v)[1:], tuple(o[k])[1:]):
                    add(_override(g.index, k, v, o[k]))
                continue
            if k in SCHEDULED_LRS and scheduled and _close_lr(v, o[k]):
                continue  # the same schedule, up to the rounding of set --base-lr's scaling
            if equal_hyper(v, o[k]) and not equal_hyper(saved, o[k]):
                add(Finding(
                    "hyperparams-kept", "info",
                    f"param group {g.index}: the checkpoint's {k} = {show(saved)} does not "
                    f"survive loading: {cls_name} sets {show(o[k])} when it loads a state",
                    group=g.index,
                    detail={"key": k, "checkpoint": plain(saved), "config": plain(o[k])},
                ))
            elif not equal_hyper(v, o[k]):
                add(_override(g.index, k, v, o[k]))
        missing = sorted(config_keys - set(g.hyperparams) - _ADDED_BY_OTHERS)
        if missing:
            add(Finding(
                "hyperparams-missing", "warn",
                f"param group {g.index} of the checkpoint has no {', '.join(missing)}: the "
                f"loaded group replaces the config's, so {cls_name} will find "
                f"{'them' if len(missing) > 1 else 'it'} missing unless it fills a default "
                "on load",
                group=g.index, detail={"keys": missing},
            ))
    if foreign:
        kind = guess_kind(view)
        add(Finding(
            "hyperparams-foreign", "warn",
            f"the checkpoint's groups have {', '.join(sorted(foreign))}, which {cls_name} "
            f"does not use{kind}: load_state_dict keeps them in the groups and {cls_name} "
            "ignores them",
            detail={"keys": sorted(foreign)},
        ))


def _override(gi: int, k: str, v: Any, config: Any) -> Finding:
    return Finding(
        "hyperparams-override", "warn",
        f"param group {gi}: the checkpoint's {k} = {show(v)} replaces the config's "
        f"{show(config)} (load_state_dict restores every hyperparameter from the checkpoint)",
        group=gi, detail={"key": k, "checkpoint": plain(v), "config": plain(config)},
    )


# Group keys OneCycleLR writes that are lrs of its schedule: set --base-lr scales them, so
# they may differ from a config's by the rounding of that product.
SCHEDULED_LRS = frozenset({"max_lr", "min_lr"})


def _close_lr(a: Any, b: Any) -> bool:
    """Equal up to 4 ulps: a product lr * (X / old base) rounds twice (two half-ulps) and
    the config's value (max_lr / div_factor ...) rounds on its own path."""
    a, b = plain(a), plain(b)
    if not all(is_number(x) for x in (a, b)):
        return False
    return abs(a - b) <= 4 * math.ulp(max(abs(a), abs(b)))


def _check_base_lr(gi: int, saved: dict[str, Any], ours: dict[str, Any],
                   sched_state: dict[str, Any] | None, ref_sched: dict[str, Any],
                   add: Any) -> None:
    """The checkpoint's base lr (its groups' initial_lr, its scheduler's base_lrs) against
    the config's (the initial_lr the configured scheduler wrote: the config's lr, or
    OneCycleLR's max_lr / div_factor); the current lr is the schedule's, shown only."""
    try:
        config = base_lr_of(ref_sched, ours, gi)
    except (KeyError, TypeError, ValueError):
        config = plain(ours["lr"])  # ReduceLROnPlateau keeps no base: it starts at lr
    try:
        theirs = base_lr_of(sched_state or {}, saved, gi)
    except (KeyError, TypeError, ValueError):
        _check_unbased_lr(gi, saved, ours, config, sched_state, add)
        return
    where = ", ".join(w for w, ok in (("initial_lr", "initial_lr" in saved),
                                      ("base_lrs", "base_lrs" in (sched_state or {}))) if ok)
    lr = plain(saved["lr"])
    if equal_hyper(theirs, config):
        add(Finding(
            "lr-scheduled", "info",
            f"param group {gi}: lr {show(lr)} is the scheduler's current value, from base lr "
            f"{show(theirs)} ({where}), which is the config's lr",
            group=gi, detail={"lr": lr, "base_lr": theirs, "config": config},
        ))
        return
    now = ("the group's lr is still at that base" if equal_hyper(lr, theirs)
           else f"the scheduler has taken it to {show(lr)}")
    detail = {"key": "base_lr", "checkpoint": theirs, "config": config, "lr": lr}
    why = not_proportional(sched_state) if sched_state is not None else None
    if why:  # set --base-lr refuses these: say so here rather than offer it
        now += f"; set {option('base_lr')} cannot move it: {why}"
        detail["unscalable"] = why
    add(Finding(
        "base-lr-override", "warn",
        f"param group {gi}: the checkpoint's base lr {show(theirs)} ({where}) replaces the "
        f"config's {show(config)}; {now}",
        group=gi, detail=detail,
    ))


def _check_unbased_lr(gi: int, saved: dict[str, Any], ours: dict[str, Any], config: Any,
                      sched_state: dict[str, Any] | None, add: Any) -> None:
    """The checkpoint keeps no base lr (ReduceLROnPlateau writes no initial_lr or
    base_lrs): its lr is compared with the lrs the config's lr can reach, and otherwise as
    a plain hyperparameter."""
    lr = plain(saved["lr"])
    reductions = _plateau_reductions(config, lr, sched_state or {}, gi)
    if reductions is not None:
        how = ("the config's lr" if reductions == 0 else
               f"the config's lr {show(config)} reduced {n_of(reductions, 'time')} by "
               f"ReduceLROnPlateau (factor {show(sched_state['factor'])})")
        add(Finding(
            "lr-scheduled", "info", f"param group {gi}: lr {show(lr)} is {how}",
            group=gi, detail={"lr": lr, "config": config, "reductions": reductions},
        ))
        return
    if not _is_plateau(sched_state):
        if not equal_hyper(lr, ours["lr"]):
            add(_override(gi, "lr", lr, ours["lr"]))
        return
    why = not_proportional(sched_state) if sched_state is not None else None
    add(Finding(
        "base-lr-override", "warn",
        f"param group {gi}: the checkpoint's lr {show(lr)} is not the config's "
        f"{show(config)} reduced by ReduceLROnPlateau's factor "
        f"{show(sched_state['factor'])} any number of times: the run started from another "
        "lr, and load_state_dict resumes at the checkpoint's (ReduceLROnPlateau keeps no "
        "base lr to rescale)",
        group=gi, detail={"key": "base_lr", "checkpoint": None, "config": config, "lr": lr,
                          "unscalable": why},
    ))


def _is_plateau(sched: dict[str, Any] | None) -> bool:
    return isinstance(sched, dict) and {"factor", "min_lrs", "eps"} <= set(sched)


def _plateau_reductions(start: Any, lr: Any, sched: dict[str, Any], gi: int) -> int | None:
    """How many of ReduceLROnPlateau's reductions (its own arithmetic: lr * factor,
    floored at min_lr, skipped when the change is under eps) take ``start`` to ``lr``;
    0 when they are equal, None when none does."""
    if not all(is_number(x) for x in (start, lr)):
        return None
    x = float(start)
    if _is_plateau(sched):
        factor, eps = float(plain(sched["factor"])), float(plain(sched["eps"]))
        mins = plain(sched["min_lrs"])
        floor = float(mins[gi]) if isinstance(mins, list) and gi < len(mins) else 0.0
    else:
        factor = eps = floor = 0.0
    for n in range(10_000):
        if x == lr or _close_lr(x, lr):
            return n
        new = max(x * factor, floor)
        if not 0 < factor < 1 or not x - new > eps or x < lr:
            return None
        x = new
    return None


def _driven_momentum(sched: dict[str, Any], ref: dict[str, Any]) -> str | None:
    """The group key a cycling scheduler (OneCycleLR, CyclicLR with cycle_momentum) sets at
    every step: betas (its beta1) or momentum; None when no scheduler drives one."""
    if not (sched.get("cycle_momentum") and ref.get("cycle_momentum")):
        return None
    return "betas" if sched.get("use_beta1") else "momentum"


# --------------------------------------------------------------------------- scheduler


def check_scheduler(sched: dict[str, Any] | None, built: Built, spec: RunSpec,
                    add: Any, scheduled: bool = False) -> None:
    if spec.scheduler is None:
        if sched is not None:
            add(Finding("scheduler-unused", "info",
                        "the checkpoint holds scheduler state, but the config builds no "
                        "scheduler"))
        return
    name = spec.scheduler.name
    if sched is None:
        add(Finding("scheduler-missing", "warn",
                    f"the config builds {name} but the checkpoint holds no scheduler state: "
                    "the scheduler starts from epoch 0"))
        return
    ref = built.scheduler.state_dict()
    theirs = {k for k in sched if k not in _SCHED_PROGRESS}
    ours = {k for k in ref if k not in _SCHED_PROGRESS}
    if theirs != ours:
        add(Finding(
            "scheduler-kind", "warn",
            f"the checkpoint's scheduler state has {', '.join(sorted(theirs - ours)) or 'no'} "
            f"settings {name} lacks and lacks {', '.join(sorted(ours - theirs)) or 'none'}: "
            f"it was saved by another scheduler; {name}.load_state_dict copies every saved "
            "attribute onto the scheduler regardless",
            detail={"only_checkpoint": sorted(theirs - ours), "only_config": sorted(ours - theirs)},
        ))
    for k in sorted(theirs & ours):
        if not equal_hyper(sched[k], ref[k]):
            add(Finding(
                "scheduler-override", "warn",
                f"scheduler: the checkpoint's {k} = {show(sched[k])} replaces the config's "
                f"{show(ref[k])} (scheduler.load_state_dict restores every attribute)",
                detail={"key": k, "checkpoint": plain(sched[k]), "config": plain(ref[k])},
            ))
    # Under a scheduler the base lrs are compared with the config's lr (base-lr-override).
    if not scheduled and "base_lrs" in sched and "base_lrs" in ref and not equal_hyper(
            sched["base_lrs"], ref["base_lrs"]):
        add(Finding(
            "scheduler-base-lrs", "warn",
            f"scheduler: the checkpoint's base_lrs {show(sched['base_lrs'])} replace the "
            f"config's {show(ref['base_lrs'])}; schedulers that compute from base_lrs "
            "(LambdaLR, the Hugging Face default) go back to the checkpoint's lr at their next "
            "step",
            detail={"checkpoint": plain(sched["base_lrs"]), "config": plain(ref["base_lrs"])},
        ))
    if "last_epoch" in sched:
        add(Finding("scheduler-resume", "info",
                    f"the scheduler resumes at last_epoch {plain(sched['last_epoch'])}",
                    detail={"last_epoch": plain(sched["last_epoch"])}))
