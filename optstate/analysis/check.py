"""``check``: will ``optimizer.load_state_dict(ckpt)`` work for the optimizer a config
builds, and will it do what the user thinks?

Two kinds of evidence, both reported:

- findings: a comparison of the checkpoint's groups, parameters, state entries and
  scheduler state with the optimizer (and scheduler) the config builds, each explained
  in plain words with what torch will do about it;
- a trial: the same ``load_state_dict`` and one ``step()`` (and the scheduler's), run by
  torch itself on a fresh copy of the configured optimizer with a copy of the state.
  torch's own error, if any, is the final word on "would fail".

Verdict and exit status: ``ok`` (0) loading works and matches; ``differs`` (1) it works
but something differs that is worth knowing; ``fails`` (2) torch would refuse the state
or fail at the first step.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from optstate.edit.hyperparameters import base_lr_of, not_proportional
from optstate.io.source import open_source
from optstate.io.torch_file import clean_message
from optstate.sim.build import Built, build
from optstate.sim.config import RunSpec, format_shape, read_config_file, spec_from_dict
from optstate.state.kind import SIGNATURES, infer_kind
from optstate.state.locate import locate
from optstate.state.report import plain
from optstate.state.view import OptimizerStateView

LEVELS = ("info", "warn", "fail")
VERDICTS = {"info": ("ok", 0), "warn": ("differs", 1), "fail": ("fails", 2)}

# Group keys added by LR schedulers or bookkeeping, never a sign of another optimizer.
_NOT_HYPERPARAMS = frozenset({"params", "param_names"})
_ADDED_BY_OTHERS = frozenset({"initial_lr", "max_lr", "min_lr", "base_lr", "max_momentum",
                              "base_momentum", "name"})
# Scheduler state that records progress, not configuration: where the schedule is
# (CosineAnnealingWarmRestarts' T_cur and T_i, which grows by T_mult at each restart;
# ReduceLROnPlateau's best metric and its counters), never a setting to undo.
_SCHED_PROGRESS = frozenset({"last_epoch", "_step_count", "_last_lr",
                             "_get_lr_called_within_step", "_is_initial", "verbose",
                             "lr_lambdas", "base_lrs", "_initial_step", "T_cur", "T_i",
                             "best", "num_bad_epochs", "cooldown_counter"})


@dataclass
class Finding:
    # group-count, group-size, names-reordered, names-differ, hyperparams-override,
    # hyperparams-kept, hyperparams-foreign, hyperparams-missing, state-shape,
    # state-foreign, state-missing, state-incomplete, dtype-cast, state-orphans, scheduler-*, trial
    code: str
    level: str  # "info" | "warn" | "fail"
    message: str
    group: int | None = None
    param: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckResult:
    source: str
    location: str
    scheduler_location: str | None
    config: str
    optimizer: str
    groups: dict[str, list[int]]  # {"checkpoint": [n per group], "config": [...]}
    findings: list[Finding]
    trial: dict[str, Any]
    fixes: list[str] = field(default_factory=list)  # `optstate set` lines that apply the config
    no_fix_reason: str | None = None  # why no `set` line is offered though some differ

    @property
    def verdict(self) -> str:
        return VERDICTS[self.worst][0]

    @property
    def exit_code(self) -> int:
        return VERDICTS[self.worst][1]

    @property
    def worst(self) -> str:
        return max((f.level for f in self.findings), key=LEVELS.index, default="info")


# --------------------------------------------------------------------------- entry points


def check_checkpoint(path: str | Path, config: str | Path, *, key: str | None = None,
                     unsafe: bool = False, trial: bool = True) -> CheckResult:
    """Load the checkpoint (safely) and the config, and compare them."""
    spec = spec_from_dict(read_config_file(config), str(config))
    source = open_source(path, unsafe=unsafe)
    located = locate(source, key)
    result = check_state(located.state, spec, scheduler_state=located.scheduler, trial=trial)
    result.source = source.label
    result.location = located.location
    result.scheduler_location = located.scheduler_location
    result.config = str(config)
    if source.format != "dcp":  # set writes torch.save files and folders only
        result.fixes = fix_commands(result, str(path), key)
    return result


def check_state(sd: dict[str, Any], spec: RunSpec, *,
                scheduler_state: dict[str, Any] | None = None,
                trial: bool = True) -> CheckResult:
    """Compare an optimizer ``state_dict`` (and scheduler state) with what ``spec`` builds."""
    view = OptimizerStateView.from_state_dict(sd)
    built = build(spec)
    cls = type(built.optimizer)
    ours = built.optimizer.param_groups
    result = CheckResult("", "", None, "", cls.__name__, {
        "checkpoint": [len(g.param_keys) for g in view.groups],
        "config": [len(g["params"]) for g in ours],
    }, [], {})
    add = result.findings.append
    loaded_groups = None
    if trial:
        result.trial = run_trial(sd, spec, scheduler_state)
        loaded_groups = result.trial.pop("_loaded_groups", None)
    _check_kind(view, built, add)
    structure_ok = _check_structure(view, spec, built, add)
    # A config's lr is the base lr its scheduler starts from; the checkpoint's group lr is
    # where the scheduler has taken it. initial_lr (which LRScheduler writes into every
    # group) or scheduler state in the checkpoint says a scheduler ran.
    scheduled = built.scheduler is not None and (
        scheduler_state is not None or any("initial_lr" in g.hyperparams for g in view.groups))
    if len(view.groups) == len(ours):  # otherwise torch stops before comparing groups
        _check_hyperparams(view, built, add, loaded_groups,
                           scheduler_state if scheduled else None, scheduled)
    if structure_ok:
        _check_names(view, spec, built, add)
        _check_state_entries(view, spec, built, add)
    _check_scheduler(scheduler_state, built, spec, add, scheduled)
    if trial:
        _reconcile(result)
    result.findings.sort(key=_action_order)
    return result


# The order a user acts on findings in: the wrong optimizer first, then a checkpoint that
# does not fit the configured parameters, then state torch will mishandle, then what
# `set` can change, then torch's own verdict; information last.
_ORDER = ("optimizer-kind", "group-count", "group-size", "state-shape", "names-reordered",
          "names-differ", "state-foreign", "hyperparams-foreign", "hyperparams-missing",
          "state-incomplete", "dtype-cast", "state-orphans", "base-lr-override",
          "hyperparams-override", "scheduler-kind", "scheduler-missing", "scheduler-override",
          "trial")


def _action_order(f: Finding) -> tuple[bool, int]:
    return (f.level == "info", _ORDER.index(f.code) if f.code in _ORDER else len(_ORDER))


# Findings an `optstate set` line resolves: only when every finding that is not
# information is one of these is a set line offered (otherwise it would not make the
# checkpoint fit, and offering it would say it does).
FIXED_BY_SET = frozenset({"hyperparams-override", "base-lr-override", "scheduler-override"})


def _check_kind(view: OptimizerStateView, built: Built, add: Any) -> None:
    """State of another optimizer (AdamW's exp_avg into SGD): before anything else, as
    nothing else about the pair matters until it is the right checkpoint."""
    cls_name = type(built.optimizer).__name__
    keys = {k for p in view.params for k in p.state}
    own = _own_state_keys(cls_name, [])
    if not keys or own is None:
        return
    guess = infer_kind([g.hyperparams for g in view.groups], keys)
    if guess.kind in ("unknown", cls_name) or cls_name in guess.candidates:
        return  # Adam and AdamW: one update, told apart by decoupled_weight_decay
    # Foreign state entries say so on their own; entries the configured optimizer shares
    # (RAdam's and AdamW's exp_avg/exp_avg_sq/step) only with groups that are certain.
    if guess.confidence not in (("high", "medium") if not keys <= own else ("high",)):
        return
    add(Finding(
        "optimizer-kind", "warn",
        f"the checkpoint holds {guess.kind} state ({', '.join(sorted(keys))}), the config "
        f"builds {cls_name}: this checkpoint was not written by the optimizer the config "
        "builds" + (f" (its param groups are {guess.kind}'s; {cls_name} keeps state entries "
                    "of the same names, made by another update)" if keys <= own else ""),
        detail={"checkpoint": guess.kind, "config": cls_name, "state_keys": sorted(keys)},
    ))


# --------------------------------------------------------------------------- structure


def _check_structure(view: OptimizerStateView, spec: RunSpec, built: Built, add: Any) -> bool:
    ours = built.optimizer.param_groups
    shapes = _shapes_side_by_side(view, spec)
    if len(view.groups) != len(ours):
        add(Finding(
            "group-count", "fail",
            f"the checkpoint has {_n(len(view.groups), 'param group')}, the config builds "
            f"{len(ours)}: load_state_dict raises \"loaded state dict has a different number "
            "of parameter groups\"" + _first_difference_text(shapes),
            detail={"checkpoint": len(view.groups), "config": len(ours), **shapes},
        ))
        return False
    ok = True
    for g, o in zip(view.groups, ours, strict=True):
        if len(g.param_keys) != len(o["params"]):
            ok = False
            add(Finding(
                "group-size", "fail",
                f"param group {g.index} holds {_n(len(g.param_keys), 'parameter')} in the "
                f"checkpoint but {len(o['params'])} in the config: load_state_dict compares "
                "the groups in order, by parameter count only, and raises \"loaded state "
                "dict contains a parameter group that doesn't match the size of optimizer's "
                "group\"" + _first_difference_text(shapes),
                group=g.index,
                detail={"checkpoint": len(g.param_keys), "config": len(o["params"]),
                        **shapes},
            ))
    return ok


def _shapes_side_by_side(view: OptimizerStateView, spec: RunSpec) -> dict[str, Any]:
    """Both sides' parameter shapes, group by group (the checkpoint's read from its state
    tensors: "?" where a parameter has none or they disagree), and the first position
    where they differ."""
    theirs: list[list[str]] = []
    for g in view.groups:
        row = []
        for key in g.param_keys:
            pv = next((p for p in view.params if p.key == key and p.group == g.index), None)
            found = {tuple(v.shape) for v in (pv.state.values() if pv else [])
                     if isinstance(v, torch.Tensor) and v.dim() > 0}
            row.append(format_shape(found.pop()) if len(found) == 1 else "?")
        theirs.append(row)
    ours = [[format_shape(s) for s in g.shapes] for g in spec.groups]
    first = None
    for gi in range(max(len(theirs), len(ours))):
        a = theirs[gi] if gi < len(theirs) else []
        b = ours[gi] if gi < len(ours) else []
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else None
            y = b[i] if i < len(b) else None
            if x != y and not (x == "?" and y is not None):
                first = {"group": gi, "position": i}
                break
        if first:
            break
    return {"shapes": {"checkpoint": theirs, "config": ours}, "first_difference": first}


def _first_difference_text(shapes: dict[str, Any]) -> str:
    first = shapes["first_difference"]
    if first is None:
        return ""
    gi, i = first["group"], first["position"]

    def at(side: str) -> str:
        rows = shapes["shapes"][side]
        return rows[gi][i] if gi < len(rows) and i < len(rows[gi]) else "nothing"

    return (f"; the shapes first differ at group {gi}, position {i}: {at('checkpoint')} in "
            f"the checkpoint, {at('config')} in the config")


def _check_names(view: OptimizerStateView, spec: RunSpec, built: Built, add: Any) -> None:
    """torch matches parameters by position only (pytorch#1489); names show when the
    positions no longer mean the same parameters."""
    theirs = [p.name for p in view.params]
    ours = [n for g in spec.groups for n in (g.names or [None] * len(g.shapes))]
    if None in theirs or None in ours:
        return
    if theirs == ours:
        return
    moved = [(i, t, o) for i, (t, o) in enumerate(zip(theirs, ours, strict=True)) if t != o]
    if sorted(theirs) == sorted(ours):
        where = {n: i for i, n in enumerate(ours)}
        pairs = "; ".join(
            f"position {i} is {t!r} in the checkpoint but {o!r} in the config, so {t}'s "
            f"state goes to {o}" for i, t, o in moved[:4]) + (" …" if len(moved) > 4 else "")
        add(Finding(
            "names-reordered", "warn",
            f"the same parameter names in a different order: torch matches by position, not "
            f"by name; {pairs}",
            detail={"moves": [{"position": i, "checkpoint": t, "config": o,
                               "config_position_of_checkpoint_name": where[t]}
                              for i, t, o in moved]},
        ))
        return
    only_ckpt = [n for n in theirs if n not in ours]
    only_cfg = [n for n in ours if n not in theirs]
    add(Finding(
        "names-differ", "warn",
        "parameter names differ (torch ignores names and matches by position): only in the "
        f"checkpoint: {', '.join(only_ckpt) or '-'}; only in the config: "
        f"{', '.join(only_cfg) or '-'}",
        detail={"only_checkpoint": only_ckpt, "only_config": only_cfg},
    ))


# --------------------------------------------------------------------------- hyperparameters


def _check_hyperparams(view: OptimizerStateView, built: Built, add: Any,
                       loaded: list[dict[str, Any]] | None,
                       sched_state: dict[str, Any] | None = None,
                       scheduled: bool = False) -> None:
    """``loaded``: the groups as torch left them after the trial's load_state_dict (the
    optimizer's ``__setstate__`` may force values: AdamW keeps decoupled_weight_decay).
    ``scheduled``: a scheduler ran and the config builds one: lr is compared as a base lr,
    and the momentum a cycling scheduler drives is not compared at all."""
    cls_name = type(built.optimizer).__name__
    ours = built.optimizer.param_groups
    foreign: dict[str, list[int]] = {}
    ref_sched = built.scheduler.state_dict() if built.scheduler is not None else {}
    driven = _driven_momentum(sched_state if sched_state is not None else ref_sched,
                              ref_sched) if scheduled else None
    for g, o in zip(view.groups, ours, strict=False):
        config_keys = set(o) - _NOT_HYPERPARAMS
        effective = loaded[g.index] if loaded is not None else g.hyperparams
        if scheduled and "lr" in g.hyperparams:
            _check_base_lr(g.index, g.hyperparams, o, sched_state, ref_sched, add)
        for k, saved in g.hyperparams.items():
            if k in _NOT_HYPERPARAMS:
                continue
            if scheduled and k in ("lr", "initial_lr"):
                continue  # compared as the base lr above
            if k not in config_keys:
                if k not in _ADDED_BY_OTHERS:
                    foreign.setdefault(k, []).append(g.index)
                continue
            v = effective.get(k, saved)
            if k == driven:
                low, high = (_show(g.hyperparams.get(m)) for m in ("base_momentum",
                                                                  "max_momentum"))
                add(Finding(
                    "momentum-scheduled", "info",
                    f"param group {g.index}: {k} is driven by the scheduler (cycle_momentum), "
                    f"now {_show(v)}, between base_momentum {low} and max_momentum {high}; it "
                    "is compared through those",
                    group=g.index, detail={"key": k, "checkpoint": plain(v)},
                ))
                if k == "betas" and not _equal_hyper(tuple(v)[1:], tuple(o[k])[1:]):
                    add(_override(g.index, k, v, o[k]))
                continue
            if k in _SCHEDULED_LRS and scheduled and _close_lr(v, o[k]):
                continue  # the same schedule, up to the rounding of set --base-lr's scaling
            if _equal_hyper(v, o[k]) and not _equal_hyper(saved, o[k]):
                add(Finding(
                    "hyperparams-kept", "info",
                    f"param group {g.index}: the checkpoint's {k} = {_show(saved)} does not "
                    f"survive loading: {cls_name} sets {_show(o[k])} when it loads a state",
                    group=g.index,
                    detail={"key": k, "checkpoint": plain(saved), "config": plain(o[k])},
                ))
            elif not _equal_hyper(v, o[k]):
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
        kind = _guess_kind(view)
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
        f"param group {gi}: the checkpoint's {k} = {_show(v)} replaces the config's "
        f"{_show(config)} (load_state_dict restores every hyperparameter from the checkpoint)",
        group=gi, detail={"key": k, "checkpoint": plain(v), "config": plain(config)},
    )


# Group keys OneCycleLR writes that are lrs of its schedule: set --base-lr scales them, so
# they may differ from a config's by the rounding of that product.
_SCHEDULED_LRS = frozenset({"max_lr", "min_lr"})


def _close_lr(a: Any, b: Any) -> bool:
    """Equal up to 4 ulps: a product lr * (X / old base) rounds twice (two half-ulps) and
    the config's value (max_lr / div_factor ...) rounds on its own path."""
    a, b = plain(a), plain(b)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
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
    if _equal_hyper(theirs, config):
        add(Finding(
            "lr-scheduled", "info",
            f"param group {gi}: lr {_show(lr)} is the scheduler's current value, from base lr "
            f"{_show(theirs)} ({where}), which is the config's lr",
            group=gi, detail={"lr": lr, "base_lr": theirs, "config": config},
        ))
        return
    now = ("the group's lr is still at that base" if _equal_hyper(lr, theirs)
           else f"the scheduler has taken it to {_show(lr)}")
    detail = {"key": "base_lr", "checkpoint": theirs, "config": config, "lr": lr}
    why = not_proportional(sched_state) if sched_state is not None else None
    if why:  # set --base-lr refuses these: say so here rather than offer it
        now += f"; set --base-lr cannot move it: {why}"
        detail["unscalable"] = why
    add(Finding(
        "base-lr-override", "warn",
        f"param group {gi}: the checkpoint's base lr {_show(theirs)} ({where}) replaces the "
        f"config's {_show(config)}; {now}",
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
               f"the config's lr {_show(config)} reduced {_n(reductions, 'time')} by "
               f"ReduceLROnPlateau (factor {_show(sched_state['factor'])})")
        add(Finding(
            "lr-scheduled", "info", f"param group {gi}: lr {_show(lr)} is {how}",
            group=gi, detail={"lr": lr, "config": config, "reductions": reductions},
        ))
        return
    if not _is_plateau(sched_state):
        if not _equal_hyper(lr, ours["lr"]):
            add(_override(gi, "lr", lr, ours["lr"]))
        return
    why = not_proportional(sched_state) if sched_state is not None else None
    add(Finding(
        "base-lr-override", "warn",
        f"param group {gi}: the checkpoint's lr {_show(lr)} is not the config's "
        f"{_show(config)} reduced by ReduceLROnPlateau's factor "
        f"{_show(sched_state['factor'])} any number of times: the run started from another "
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
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (start, lr)):
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


def _equal_hyper(a: Any, b: Any) -> bool:
    a, b = plain(a), plain(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not (
            isinstance(a, bool) or isinstance(b, bool)):
        return a == b or (isinstance(a, float) and isinstance(b, float)
                          and math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal_hyper(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _guess_kind(view: OptimizerStateView) -> str:
    guess = infer_kind([g.hyperparams for g in view.groups],
                        {k for p in view.params for k in p.state})
    if guess.kind == "unknown":
        return ""
    return f" (the checkpoint looks like {guess.kind} state)"


# --------------------------------------------------------------------------- state entries


def _own_state_keys(cls_name: str, reference: list[dict[str, Any]]) -> set[str] | None:
    for sig in SIGNATURES:
        if sig.name == cls_name:
            return set(sig.state)
    seen = {k for st in reference for k in st}
    return seen or None


def _check_state_entries(view: OptimizerStateView, spec: RunSpec, built: Built,
                         add: Any) -> None:
    cls_name = type(built.optimizer).__name__
    reference = reference_state(spec)
    own = _own_state_keys(cls_name, reference)
    foreign: dict[str, int] = {}
    casts: dict[tuple[str, str], list[str]] = {}
    fresh: list[int] = []
    lacking: dict[str, list[int]] = {}
    for pv in view.params:
        param = built.params[pv.position]
        name = built.names[pv.position]
        ref = reference[pv.position] if pv.position < len(reference) else {}
        if not pv.state and ref:
            fresh.append(pv.position)
        elif ref and (own is None or set(pv.state) <= own):  # foreign state: reported below
            for k in sorted(set(ref) - set(pv.state)):
                lacking.setdefault(k, []).append(pv.position)
        for k, v in pv.state.items():
            if own is not None and k not in own:
                foreign[k] = foreign.get(k, 0) + 1
                continue
            if not isinstance(v, torch.Tensor):
                continue
            expected = _expected_shape(k, ref, param, cls_name)
            if expected is not None and v.dim() > 0 and tuple(v.shape) != expected:
                add(Finding(
                    "state-shape", "fail",
                    f"param {pv.position} ({name}): the checkpoint's {k} has shape "
                    f"{format_shape(tuple(v.shape))} but the configured parameter needs "
                    f"{format_shape(expected)}: load_state_dict accepts this silently and the "
                    "first step() fails",
                    param=pv.position,
                    detail={"key": k, "checkpoint": list(v.shape), "config": list(expected)},
                ))
            if v.is_floating_point() and k != "step" and v.dtype != param.dtype:
                pair = (_dt(v.dtype), _dt(param.dtype))
                casts.setdefault(pair, []).append(f"{pv.position}.{k}")
    if foreign:
        keys = ", ".join(f"{k} ({_n(n, 'param')})" for k, n in sorted(foreign.items()))
        add(Finding(
            "state-foreign", "warn",
            f"state entries {keys} are not {cls_name} state{_guess_kind(view)}: "
            f"load_state_dict keeps them, {cls_name} never reads them, and its own state "
            "starts from zero",
            detail={"keys": sorted(foreign)},
        ))
    for (src, dst), where in casts.items():
        lossy = torch.finfo(getattr(torch, src)).bits > torch.finfo(getattr(torch, dst)).bits
        add(Finding(
            "dtype-cast", "warn",
            f"{_n(len(where), 'state tensor')} {'are' if len(where) > 1 else 'is'} {src} but "
            f"the parameters are {dst}: load_state_dict casts them to {dst}"
            + (" (precision is lost)" if lossy else ""),
            detail={"from": src, "to": dst, "entries": where},
        ))
    for k, where in lacking.items():
        add(Finding(
            "state-incomplete", "warn",
            f"{_n(len(where), 'parameter')} ({_positions(where)}) "
            f"{'have' if len(where) > 1 else 'has'} saved state without "
            f"{k!r}, which the configured {cls_name} creates at its first step: torch may "
            "fail on it when loading or stepping (see the trial)",
            detail={"key": k, "params": where},
        ))
    if fresh:
        add(Finding(
            "state-missing", "info",
            f"{_n(len(fresh), 'parameter')} ({_positions(fresh)}) "
            f"{'have' if len(fresh) > 1 else 'has'} no saved state: "
            f"{'their' if len(fresh) > 1 else 'its'} "
            f"{cls_name} state starts fresh at the first step",
            detail={"params": fresh},
        ))
    if view.orphan_keys:
        add(Finding(
            "state-orphans", "warn",
            f"the checkpoint has state for {_n(len(view.orphan_keys), 'key')} in no param "
            "group; load_state_dict keeps it but no parameter uses it",
            detail={"keys": [plain(k) for k in view.orphan_keys]},
        ))


def _expected_shape(key: str, ref: dict[str, Any], param: torch.Tensor,
                    cls_name: str) -> tuple[int, ...] | None:
    r = ref.get(key)
    if isinstance(r, torch.Tensor):
        return tuple(r.shape) if r.dim() > 0 else None
    if cls_name in ("LBFGS", "Adafactor") or key == "step":
        return None  # flat or factored state: only the reference step knows the shapes
    return tuple(param.shape)


def reference_state(spec: RunSpec) -> list[dict[str, Any]]:
    """Per parameter, the state the configured optimizer creates at its first step (on
    gradients of ones): the 'configured shapes' a checkpoint's state must have."""
    try:
        built = build(spec)
        _one_step(built)
    except Exception:  # SparseAdam needs sparse gradients &c.: fall back to param shapes
        return [{} for g in spec.groups for _ in g.shapes]
    state = built.optimizer.state
    return [dict(state.get(p, {})) for p in built.params]


def _one_step(built: Built, *, scheduler: bool = False) -> None:
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
            if isinstance(built.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                built.scheduler.step(0.0)
            else:
                built.scheduler.step()


# --------------------------------------------------------------------------- scheduler


def _check_scheduler(sched: dict[str, Any] | None, built: Built, spec: RunSpec,
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
        if not _equal_hyper(sched[k], ref[k]):
            add(Finding(
                "scheduler-override", "warn",
                f"scheduler: the checkpoint's {k} = {_show(sched[k])} replaces the config's "
                f"{_show(ref[k])} (scheduler.load_state_dict restores every attribute)",
                detail={"key": k, "checkpoint": plain(sched[k]), "config": plain(ref[k])},
            ))
    # Under a scheduler the base lrs are compared with the config's lr (base-lr-override).
    if not scheduled and "base_lrs" in sched and "base_lrs" in ref and not _equal_hyper(
            sched["base_lrs"], ref["base_lrs"]):
        add(Finding(
            "scheduler-base-lrs", "warn",
            f"scheduler: the checkpoint's base_lrs {_show(sched['base_lrs'])} replace the "
            f"config's {_show(ref['base_lrs'])}; schedulers that compute from base_lrs "
            "(LambdaLR, the Hugging Face default) go back to the checkpoint's lr at their next "
            "step",
            detail={"checkpoint": plain(sched["base_lrs"]), "config": plain(ref["base_lrs"])},
        ))
    if "last_epoch" in sched:
        add(Finding("scheduler-resume", "info",
                    f"the scheduler resumes at last_epoch {plain(sched['last_epoch'])}",
                    detail={"last_epoch": plain(sched["last_epoch"])}))


# --------------------------------------------------------------------------- trial


def run_trial(sd: dict[str, Any], spec: RunSpec,
              scheduler_state: dict[str, Any] | None) -> dict[str, Any]:
    """Do what a resume does, on copies: build from the config, load_state_dict, one step
    (and the scheduler's load and step). Each stage: "ok", torch's error message, or None
    when not reached; ``missing_after_load``: per group, the configured hyperparameters the
    loaded groups lack even after the optimizer filled its defaults."""
    out: dict[str, Any] = {"load_state_dict": None, "step": None,
                           "scheduler_load_state_dict": None, "scheduler_step": None,
                           "missing_after_load": {}}
    built = build(spec)
    configured = [set(g) for g in built.optimizer.param_groups]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built.optimizer.load_state_dict(copy.deepcopy(sd))
        out["load_state_dict"] = "ok"
    except Exception as e:
        out["load_state_dict"] = _torch_error(e)
        return out
    for gi, (want, g) in enumerate(zip(configured, built.optimizer.param_groups, strict=True)):
        lacking = sorted(want - set(g))
        if lacking:
            out["missing_after_load"][str(gi)] = lacking
    out["_loaded_groups"] = [{k: v for k, v in g.items() if k not in _NOT_HYPERPARAMS}
                             for g in built.optimizer.param_groups]
    try:
        _one_step(built)
        out["step"] = "ok"
    except Exception as e:
        out["step"] = _torch_error(e)
        return out
    if built.scheduler is not None and scheduler_state is not None:
        try:
            built.scheduler.load_state_dict(copy.deepcopy(scheduler_state))
            out["scheduler_load_state_dict"] = "ok"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if isinstance(built.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    built.scheduler.step(0.0)
                else:
                    built.scheduler.step()
            out["scheduler_step"] = "ok"
        except Exception as e:
            key = ("scheduler_step" if out["scheduler_load_state_dict"] == "ok"
                   else "scheduler_load_state_dict")
            out[key] = _torch_error(e)
    return out


_STAGES = {"load_state_dict": "optimizer.load_state_dict()", "step": "optimizer.step()",
           "scheduler_load_state_dict": "scheduler.load_state_dict()",
           "scheduler_step": "scheduler.step()"}


def _torch_error(e: BaseException) -> str:
    msg = clean_message(e)
    if isinstance(e, KeyError):
        msg = f"missing key {msg}"
    return f"{type(e).__name__}: {msg}"


def _reconcile(result: CheckResult) -> None:
    """torch has the final word: a failure the findings did not predict becomes a finding;
    a predicted step failure that torch got through (by broadcasting) is downgraded."""
    trial = result.trial
    failed = {k: v for k, v in trial.items() if k in _STAGES and v not in (None, "ok")}
    if trial.get("load_state_dict") == "ok":
        missing = trial.get("missing_after_load", {})
        for f in result.findings:
            if f.code == "hyperparams-missing" and not missing.get(str(f.group)):
                f.level = "info"
                f.message += f" (it does: {result.optimizer} filled them when loading)"
    static_fail = any(f.level == "fail" for f in result.findings)
    if failed and not static_fail:
        stage, msg = next(iter(failed.items()))
        result.findings.append(Finding(
            "trial", "fail", f"torch fails at {_STAGES[stage]}: {msg}",
            detail={"stage": stage, "error": msg},
        ))
    if not failed and trial.get("step") == "ok":
        for f in result.findings:
            if f.code == "state-shape":
                f.level = "warn"
                f.message = f.message.replace(
                    "the first step() fails",
                    "torch's first step() ran anyway by broadcasting: the state no longer "
                    "matches the parameter")


# --------------------------------------------------------------------------- report


def check_report(result: CheckResult) -> dict[str, Any]:
    """The plain-data report of a ``check`` run (schema ``optstate.check/1``)."""
    return {
        "schema": "optstate.check/1",
        "source": result.source,
        "location": result.location,
        "scheduler_location": result.scheduler_location,
        "config": result.config,
        "optimizer": result.optimizer,
        "verdict": result.verdict,
        "exit_code": result.exit_code,
        "groups": result.groups,
        "findings": [asdict(f) for f in result.findings],
        "trial": result.trial,
        "fixes": result.fixes,
        "no_fix_reason": result.no_fix_reason,
    }


def fix_commands(result: CheckResult, path: str, key: str | None = None) -> list[str]:
    """``optstate set`` command lines that write the config's hyperparameters (and
    scheduler settings) into a copy of the checkpoint, for the overrides found: one line,
    or one per group when the groups need different values (chained through copies)."""
    import shlex

    per_group: dict[int, dict[str, Any]] = {}
    sched: dict[str, Any] = {}
    blocking = [f for f in result.findings if f.level != "info" and (
        f.code not in FIXED_BY_SET or f.detail.get("unscalable"))]
    fixable = [f for f in result.findings if f.level != "info" and f.code in FIXED_BY_SET]
    if blocking:
        if fixable:
            codes = ", ".join(dict.fromkeys(f.code for f in blocking))
            result.no_fix_reason = (
                "no `optstate set` line is suggested: set changes hyperparameters, and it "
                f"would not make this checkpoint fit ({codes} above)")
        return []
    base = [f for f in fixable if f.code == "base-lr-override"]
    if base and result.scheduler_location is None:
        result.no_fix_reason = (
            "no `optstate set` line is suggested: the base lr differs, and set --base-lr "
            "needs the scheduler state beside the optimizer state (this file has none) to "
            "scale it alike")
        return []
    for f in fixable:
        if f.code == "base-lr-override":
            per_group.setdefault(f.group, {})["--base-lr"] = f.detail["config"]
        elif f.code == "hyperparams-override":
            if base and f.detail["key"] in _SCHEDULED_LRS:
                continue  # --base-lr scales them with the base
            per_group.setdefault(f.group, {})[f.detail["key"]] = f.detail["config"]
        elif f.code == "scheduler-override":
            sched[f.detail["key"]] = f.detail["config"]
    if not per_group and not sched:
        return []
    stem = Path(path)
    out = shlex.quote(str(stem.with_name(stem.stem + "-fixed" + stem.suffix)))
    src = shlex.quote(path)
    pick = f" --key {shlex.quote(key)}" if key else ""

    def text(v: Any) -> str:
        return shlex.quote(",".join(map(str, v)) if isinstance(v, list) else str(v))

    def flags(values: dict[str, Any], sched_values: dict[str, Any]) -> str:
        parts = [f"--lr {text(v)}" if k == "lr" else f"{k} {text(v)}" if k == "--base-lr"
                 else f"--set {k}={text(v)}" for k, v in values.items()]
        parts += [f"--scheduler-set {k}={text(v)}" for k, v in sched_values.items()]
        return " ".join(parts)

    n_groups = len(result.groups["checkpoint"])
    distinct = {repr(v) for v in per_group.values()}
    if not per_group or (len(per_group) == n_groups and len(distinct) == 1):
        values = next(iter(per_group.values())) if per_group else {}
        return [f"optstate set {src}{pick} -o {out} {flags(values, sched)}"]
    lines, current = [], src
    for i, (gi, values) in enumerate(sorted(per_group.items())):
        last = i == len(per_group) - 1
        target = out if last else shlex.quote(
            str(stem.with_name(f"{stem.stem}-fixed{i}{stem.suffix}")))
        lines.append(f"optstate set {current}{pick} -o {target} --group {gi} "
                     f"{flags(values, sched if last else {})}")
        current = target
    return lines


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _show(v: Any) -> str:
    p = plain(v)
    if isinstance(p, list):
        return "(" + ", ".join(map(str, p)) + ")"
    return repr(p)


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _positions(ps: list[int]) -> str:
    text = ", ".join(map(str, ps[:8]))
    return f"position{'s' * (len(ps) > 1)} " + text + (" …" if len(ps) > 8 else "")


__all__ = ["CheckResult", "Finding", "check_checkpoint", "check_report", "check_state",
           "reference_state", "run_trial"]
