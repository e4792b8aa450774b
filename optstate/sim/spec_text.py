"""A RunSpec from command-line text: values (``true``, ``1e-3``, ``0.9,0.95``),
``key=value`` assignments, ``--group`` texts, and a base spec (a config file or the
defaults) overridden by the values given.

Pure Python (no torch import), like ``config.py``.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from optstate.base.errors import ConfigError, option
from optstate.sim.config import GroupSpec, RunSpec, SchedulerSpec, Shape, parse_shape, validate


def parse_value(text: str) -> Any:
    """Parse a command-line value: ``true``/``false``, ``none``, int, float, or a
    comma-separated tuple of those (``betas=0.9,0.95``). Anything else stays a string."""
    s = text.strip()
    if "," in s:
        parts = [p for p in s.split(",")]
        if any(p.strip() == "" for p in parts) and not s.endswith(","):
            raise ConfigError(f"cannot parse {text!r}: empty item in a comma-separated list")
        return tuple(parse_value(p) for p in parts if p.strip() != "")
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, parsed value)."""
    if "=" not in text:
        raise ConfigError(
            f"expected key=value, got {text!r}", hint="for example " + option(
                "assignments", shown="betas=0.9,0.95", python="['betas=0.9,0.95']")
        )
    key, _, value = text.partition("=")
    key = sys.intern(key.strip())  # see config._frozen_items
    if not key.isidentifier():
        raise ConfigError(f"{key!r} is not a hyperparameter name (in {text!r})")
    return key, parse_value(value)


def parse_group(text: str) -> GroupSpec:
    """A ``--group`` value: space-separated shapes and key=value overrides,
    e.g. ``"3x3 4 lr=1e-4 betas=0.9,0.95"``."""
    shapes: list[Shape] = []
    hyper: dict[str, Any] = {}
    for tok in text.split():
        if "=" in tok:
            k, v = parse_assignment(tok)
            hyper[k] = v
        else:
            shapes.append(parse_shape(tok))
    if not shapes:
        raise ConfigError(
            f"{option('groups', [text], shown=repr(text))} names no parameter shape",
            hint="for example " + option("groups", shown='"3x3 lr=1e-4"',
                                         python="['3x3 lr=1e-4']"),
        )
    return GroupSpec(shapes=tuple(shapes), hyperparams=hyper)


def apply_overrides(
    spec: RunSpec,
    *,
    optimizer: str | None = None,
    hyperparams: dict[str, Any] | None = None,
    shapes: list[Shape] | None = None,
    groups: list[GroupSpec] | None = None,
    scheduler: SchedulerSpec | None = None,
    **fields: Any,
) -> RunSpec:
    """Command-line flags over a config: given values win, ``None`` means "not given".

    ``shapes`` replaces the shapes of the first group; ``groups`` replaces all groups
    after the first (``--group`` adds groups, as ``add_param_group`` does)."""
    changes: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if optimizer is not None:
        changes["optimizer"] = optimizer
    if hyperparams:
        changes["hyperparams"] = {**spec.hyperparams, **hyperparams}
    if scheduler is not None:
        changes["scheduler"] = scheduler
    new_groups = list(spec.groups)
    if shapes:
        first = new_groups[0]
        new_groups[0] = GroupSpec(tuple(shapes), first.hyperparams,
                                  first.names if first.names and
                                  len(first.names) == len(shapes) else None)
    if groups:
        new_groups = [new_groups[0], *groups]
    if shapes or groups:
        changes["groups"] = tuple(new_groups)
    return validate(replace(spec, **changes))


def spec_from_flags(
    base: RunSpec,
    *,
    optimizer: str | None = None,
    common: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
    shapes: list[str] | None = None,
    groups: list[str] | None = None,
    scheduler: str | None = None,
    scheduler_args: list[str] | None = None,
    **fields: Any,
) -> RunSpec:
    """The run ``simulate``'s flags describe, over ``base`` (a config file or defaults).

    ``common`` holds the flags with their own options (``--lr`` ...; None = not given),
    ``assignments`` the ``--set key=value`` texts, ``shapes``/``groups`` the ``--shape``
    and ``--group`` texts; ``--scheduler-arg`` without ``--scheduler`` amends the
    config's scheduler."""
    hyper: dict[str, Any] = dict(parse_assignment(a) for a in assignments or [])
    hyper.update({sys.intern(k): v for k, v in (common or {}).items() if v is not None})
    sched_kwargs = dict(parse_assignment(a) for a in scheduler_args or [])
    sched = None
    if scheduler is not None:
        sched = SchedulerSpec(scheduler, sched_kwargs)
    elif sched_kwargs:
        if base.scheduler is None:
            raise ConfigError(f"{option('scheduler_args')} needs "
                              f"{option('scheduler', shown='NAME')} (or a [scheduler] in the "
                              "config)")
        sched = SchedulerSpec(base.scheduler.name, {**base.scheduler.kwargs, **sched_kwargs})
    return apply_overrides(
        base, optimizer=optimizer, hyperparams=hyper,
        shapes=[parse_shape(s) for s in shapes] if shapes else None,
        groups=[parse_group(g) for g in groups] if groups else None,
        scheduler=sched, **fields,
    )
