"""``set``, planning: which values change where (``plan_changes``), checked and typed
like the values already in the checkpoint (``coerce_value``), and putting them into the
loaded objects (``apply_changes``). Nothing is written here (``set_write`` does that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from optstate.base.errors import ConfigError, option
from optstate.base.paths import join, path_keys
from optstate.base.suggest import did_you_mean
from optstate.base.values import is_number
from optstate.numeric.leaves import same_leaf
from optstate.sim.schedule import SET_LR, base_lr_of, not_proportional, scalar, scheduler_tree
from optstate.state.locate import Located
from optstate.state.view import GROUP_META_KEYS

# Group keys that ``set`` may not touch: they are bookkeeping, not hyperparameters.
_READ_ONLY = frozenset(GROUP_META_KEYS)


@dataclass
class Change:
    """One value ``set`` changed."""

    target: str  # "optimizer" | "scheduler"
    file: str  # the file the value lives in
    path: str  # where in that file's object tree, e.g. optimizer_states[0].param_groups[1].lr
    key: str
    group: int | None
    old: Any
    new: Any


@dataclass
class SetResult:
    source: str
    location: str
    scheduler_location: str | None
    changes: list[Change]
    trial: str | None = None  # torch's load_state_dict + step() on the new state: "ok" or why not
    outputs: list[str] = field(default_factory=list)
    verified: dict[str, int] = field(default_factory=dict)  # leaves compared per file
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False


# --------------------------------------------------------------------------- values


def coerce_value(key: str, new: Any, old: Any, where: str) -> Any:
    """``new`` in the type of ``old`` (the value already in the checkpoint), or a
    ConfigError saying what is expected. A tuple stays a tuple, a float a float, a
    tensor a tensor of the same dtype."""
    import torch

    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"{key}{where} must be {expected} (the checkpoint holds {_show(old)}), got "
            f"{_show(new)}"
        )

    if old is None:  # foreach=None & co.: any value is what torch accepts there
        return new
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise bad("true or false")
        return new
    if isinstance(old, torch.Tensor):
        if old.numel() != 1 or not is_number(new):
            raise bad("a number" if old.numel() == 1 else f"a tensor of shape {list(old.shape)}")
        _finite(new, bad)
        return torch.tensor(new, dtype=old.dtype).reshape(old.shape)
    if is_number(old):
        if not is_number(new):
            raise bad("a number")
        _finite(new, bad)
        # An int stays an int only if an int is given: torch writes weight_decay=0 and
        # dampening=0 as ints, and 1e-4 must still be accepted there.
        return new if isinstance(old, int) else float(new)
    if isinstance(old, (tuple, list)):
        items = new if isinstance(new, (tuple, list)) else None
        if items is None or len(items) != len(old):
            example = ",".join(str(x) for x in old)
            raise bad(f"{len(old)} comma-separated values like {example}")
        out = [coerce_value(f"{key}[{i}]", n, o, where)
               for i, (n, o) in enumerate(zip(items, old, strict=True))]
        return tuple(out) if isinstance(old, tuple) else out
    if isinstance(old, str):
        if not isinstance(new, str):
            raise bad("a string")
        return new
    raise bad(f"a {type(old).__name__}")


def _finite(v: Any, bad: Any) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise bad("a finite number")


def _show(v: Any) -> str:
    import torch

    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return f"tensor({v.item()!r}, dtype={str(v.dtype).removeprefix('torch.')})"
    return repr(v)


# --------------------------------------------------------------------------- planning


def plan_changes(
    located: Located,
    values: dict[str, Any],
    *,
    group: int | None = None,
    scheduler: bool = True,
    scheduler_values: dict[str, Any] | None = None,
    file_label: str = "",
    scheduler_file_label: str = "",
    base_lr: float | None = None,
) -> list[Change]:
    """The changes that setting ``values`` makes (nothing is modified yet). Raises
    ConfigError for an unknown group or key, or a value of the wrong type.

    ``base_lr``: the base lr a scheduler starts from, changed as if the run had started
    there (see ``_base_lr_changes``)."""
    if base_lr is not None and "lr" in values:
        raise ConfigError(f"give {option(SET_LR)} or {option('base_lr')}, not both")
    groups = located.state["param_groups"]
    if not groups:
        raise ConfigError("this optimizer state has no param groups to change")
    if group is not None and not 0 <= group < len(groups):
        raise ConfigError(
            f"{option('group', group)}: this optimizer state has {len(groups)} param group(s), "
            f"numbered 0 to {len(groups) - 1}"
        )
    chosen = [group] if group is not None else list(range(len(groups)))
    groups_path = join(located.location, "param_groups")
    changes: list[Change] = []
    for key, value in values.items():
        if key in _READ_ONLY:
            raise ConfigError(f"{key!r} is bookkeeping, not a hyperparameter; set cannot "
                              "change it")
        for gi in chosen:
            g = groups[gi]
            if key not in g:
                known = [k for k in g if k not in _READ_ONLY]
                raise ConfigError(
                    f"param group {gi} has no hyperparameter {key!r}"
                    f"{did_you_mean(key, map(str, known))}",
                    hint=f"its hyperparameters: {', '.join(map(str, known))}",
                )
            new = coerce_value(key, value, g[key], f" (param group {gi})")
            changes.append(Change("optimizer", file_label, join(join(groups_path, gi), key),
                                  key, gi, g[key], new))
            if key == "lr" and "initial_lr" in g:
                init = coerce_value("initial_lr", value, g["initial_lr"], f" (param group {gi})")
                changes.append(Change("optimizer", file_label,
                                      join(join(groups_path, gi), "initial_lr"), "initial_lr",
                                      gi, g["initial_lr"], init))
    if scheduler and "lr" in values and located.scheduler is not None:
        changes += _scheduler_changes(located, values["lr"], chosen, len(groups),
                                      scheduler_file_label)
    if scheduler_values:
        changes += _scheduler_settings(located, scheduler_values, scheduler_file_label)
    if base_lr is not None:
        changes += _base_lr_changes(located, base_lr, chosen, file_label,
                                    scheduler_file_label)
    return [c for c in changes if not same_leaf(c.old, c.new)]


# Group keys a scheduler writes that hold lrs of the same schedule (OneCycleLR's peak and
# floor): they move with the base lr.
_SCHEDULED_LR_KEYS = ("max_lr", "min_lr")


def _base_lr_changes(located: Located, base_lr: Any, chosen: list[int], file_label: str,
                     sched_label: str) -> list[Change]:
    """``--base-lr X``: the state of the run that would have started at base lr X.

    The lr-based schedulers torch ships compute every lr as base lr times a factor that
    does not depend on the base (StepLR, MultiStepLR, ExponentialLR, LinearLR,
    ConstantLR, PolynomialLR, CosineAnnealingLR and CosineAnnealingWarmRestarts with
    eta_min = 0, LambdaLR, MultiplicativeLR, OneCycleLR, and SequentialLR/ChainedScheduler
    of those), chainable or closed form. So per group, with f = X / old base: initial_lr and
    base_lrs become X and every lr of the schedule (the group's lr, _last_lr, OneCycleLR's
    max_lr/min_lr, those of wrapped schedulers) is multiplied by f. Schedules holding an
    absolute lr (eta_min != 0, CyclicLR's max_lrs) or no base at all (ReduceLROnPlateau)
    are refused: scaling cannot give that run."""
    groups = located.state["param_groups"]
    sched = located.scheduler
    has_initial = any("initial_lr" in g for g in groups)
    if sched is None:
        if has_initial:
            raise ConfigError(f"{option('base_lr')}: the groups have initial_lr (a scheduler "
                              "ran) but no "
                              "scheduler state was found beside the optimizer state: its "
                              "base_lrs and _last_lr could not follow")
        raise ConfigError(f"{option('base_lr')}: no scheduler state beside the optimizer "
                          "state and no initial_lr in its groups: without a scheduler the lr is "
                          f"the base lr; use {option(SET_LR)}")
    why = not_proportional(sched)
    if why:
        raise ConfigError(f"{option('base_lr')}: {why}")
    if not is_number(base_lr) or not math.isfinite(base_lr) or base_lr <= 0:
        raise ConfigError(f"{option('base_lr')} must be a positive number, got {base_lr!r}")
    groups_path = join(located.location, "param_groups")
    sched_prefix = _scheduler_prefix(located, sched_label)
    out: list[Change] = []
    for gi in chosen:
        g = groups[gi]
        old = base_lr_of(sched, g, gi)
        if "initial_lr" in g and not math.isclose(scalar(g["initial_lr"]), old,
                                                  rel_tol=1e-12):
            raise ConfigError(
                f"{option('base_lr')}: param group {gi}'s initial_lr "
                f"{scalar(g['initial_lr'])!r} and "
                f"the scheduler's base_lrs[{gi}] {old!r} disagree: which one is the base lr "
                "cannot be told")
        if old == 0:
            raise ConfigError(f"{option('base_lr')}: param group {gi}'s base lr is 0: there is no "
                              "schedule to scale")
        factor = base_lr / old
        where = f" (param group {gi})"

        def opt_change(key: str, new: Any, *, gi: int = gi, where: str = where) -> None:
            g = groups[gi]
            out.append(Change("optimizer", file_label, join(join(groups_path, gi), key),
                              key, gi, g[key], coerce_value(key, new, g[key], where)))

        opt_change("lr", scalar(g["lr"]) * factor)
        if "initial_lr" in g:
            opt_change("initial_lr", base_lr)
        for key in _SCHEDULED_LR_KEYS:
            if key in g and is_number(scalar(g[key])):
                opt_change(key, scalar(g[key]) * factor)
        for rel, state in scheduler_tree(sched):
            for key in ("base_lrs", "_last_lr"):
                lrs = state.get(key)
                if not isinstance(lrs, list) or len(lrs) != len(groups):
                    continue
                new = base_lr if key == "base_lrs" and not rel else scalar(lrs[gi]) * factor
                name = join(rel, key)  # "base_lrs", "_schedulers[1].base_lrs"
                out.append(Change("scheduler", sched_label,
                                  join(_join_path(sched_prefix, name), gi), name, gi,
                                  lrs[gi], coerce_value(key, new, lrs[gi], where)))
    return out


def _join_path(path: str, rel: str) -> str:
    for key in path_keys(rel):
        path = join(path, key)
    return path


def _scheduler_prefix(located: Located, file_label: str) -> str:
    """The path of the scheduler state in its file ('': the file is the scheduler)."""
    loc = located.scheduler_location or ""
    # A sibling file's scheduler is that file's whole object: paths start at its root.
    return "" if file_label and file_label == loc else loc


def _scheduler_settings(located: Located, values: dict[str, Any],
                        file_label: str) -> list[Change]:
    """``--scheduler-set step_size=10``: top-level scheduler attributes, which
    ``scheduler.load_state_dict`` copies onto the scheduler as they are."""
    sched = located.scheduler
    if sched is None:
        raise ConfigError(f"{option('scheduler_values')}: no scheduler state found beside the "
                          "optimizer state")
    prefix = _scheduler_prefix(located, file_label)
    out = []
    for key, value in values.items():
        if key not in sched:
            known = [k for k in sched if not str(k).startswith("_")]
            raise ConfigError(f"the scheduler state has no {key!r}"
                              f"{did_you_mean(key, map(str, known))}",
                              hint=f"its settings: {', '.join(map(str, known))}")
        if key in ("base_lrs", "_last_lr"):
            raise ConfigError(f"{key} follows {option(SET_LR)}; set the learning rate with "
                              f"{option(SET_LR)}")
        new = coerce_value(key, value, sched[key], " (scheduler)")
        out.append(Change("scheduler", file_label, join(prefix, key), key, None, sched[key],
                          new))
    return out


def _scheduler_changes(located: Located, lr: Any, chosen: list[int], n_groups: int,
                       file_label: str) -> list[Change]:
    sched = located.scheduler
    assert sched is not None
    prefix = _scheduler_prefix(located, file_label)
    out = []
    for key in ("base_lrs", "_last_lr"):
        lrs = sched.get(key)
        if not isinstance(lrs, list) or len(lrs) != n_groups:
            continue
        for gi in chosen:
            new = coerce_value(key, lr, lrs[gi], f" (scheduler, group {gi})")
            out.append(Change("scheduler", file_label, join(join(prefix, key), gi), key, gi,
                              lrs[gi], new))
    return out


def apply_changes(located: Located, changes: list[Change]) -> None:
    """Write the planned values into the loaded objects (in place)."""
    groups = located.state["param_groups"]
    for c in changes:
        if c.target == "optimizer":
            groups[c.group][c.key] = c.new
        else:
            assert located.scheduler is not None
            if c.group is None:
                located.scheduler[c.key] = c.new
            else:  # "base_lrs", or "_schedulers[1].base_lrs" in a wrapped scheduler
                state = located.scheduler
                *outer, key = path_keys(c.key)
                for k in outer:
                    state = state[k]
                state[key][c.group] = c.new
