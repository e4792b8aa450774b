"""Turn a RunSpec into real ``torch.optim`` objects: parameters, optimizer, scheduler.

Hyperparameters are checked against the optimizer class's own ``__init__`` signature, so
an unknown name or a value of the wrong type is a one-line error naming the valid ones.
"""

from __future__ import annotations

import inspect as pyinspect
import math
from dataclasses import dataclass
from typing import Any

import torch

from optstate.base.errors import ConfigError, option
from optstate.base.suggest import did_you_mean, unknown
from optstate.base.values import format_shape, is_number
from optstate.io.torch_file import clean_message
from optstate.sim.config import RunSpec, SchedulerSpec


def optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    """Every optimizer class ``torch.optim`` exports, by lower-case name."""
    out = {}
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, torch.optim.Optimizer)
            and obj is not torch.optim.Optimizer
        ):
            out[name.lower()] = obj
    return out


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """Look up ``torch.optim.<name>`` case-insensitively."""
    classes = optimizer_classes()
    cls = classes.get(name.lower())
    if cls is None:
        raise ConfigError(
            unknown("optimizer", name, classes),
            hint="choose one of " + ", ".join(sorted(c.__name__ for c in classes.values())),
        )
    return cls


def scheduler_classes() -> dict[str, type]:
    sched = torch.optim.lr_scheduler
    base = getattr(sched, "LRScheduler", None) or sched._LRScheduler
    out = {}
    for name in dir(sched):
        obj = getattr(sched, name)
        if isinstance(obj, type) and (issubclass(obj, base) or name == "ReduceLROnPlateau"):
            if name.startswith("_") or obj is base:
                continue
            out[name.lower()] = obj
    return out


# Schedulers whose arguments are callables or other schedulers cannot come from flags.
_UNBUILDABLE_SCHEDULERS = {"lambdalr", "multiplicativelr", "sequentiallr", "chainedscheduler"}


def hyperparameter_defaults(cls: type) -> dict[str, Any]:
    """Constructor arguments (besides params/optimizer) and their defaults
    (``inspect.Parameter.empty`` where required)."""
    sig = pyinspect.signature(cls.__init__)
    out = {}
    for p in sig.parameters.values():
        if p.name in ("self", "params", "optimizer") or p.kind in (p.VAR_POSITIONAL,
                                                                     p.VAR_KEYWORD):
            continue
        out[p.name] = p.default
    return out


def check_hyperparameters(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Check names and types against ``cls``'s signature; return the values to pass."""
    defaults = hyperparameter_defaults(cls)
    out = {}
    for key, value in values.items():
        if key not in defaults:
            raise ConfigError(
                f"{cls.__name__} has no hyperparameter {key!r}{where}"
                f"{did_you_mean(key, defaults)}",
                hint=f"valid names: {', '.join(defaults)}",
            )
        out[key] = _check_type(cls.__name__, key, value, defaults[key])
    return out


def _check_type(owner: str, key: str, value: Any, default: Any) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{owner} {key} must be {expected}, got {value!r}")

    if default is pyinspect.Parameter.empty or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if is_number(default) or isinstance(default, torch.Tensor):
        if not is_number(value):
            raise bad("a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise bad("a finite number")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (tuple, list)) or len(value) != len(default):
            example = ",".join(str(x) for x in default)
            raise bad(f"{len(default)} comma-separated values like {example}")
        for v, d in zip(value, default, strict=True):
            if is_number(d) and not is_number(v):
                raise bad(f"{len(default)} numbers")
        return tuple(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value


@dataclass
class Built:
    """What ``build`` returns: the live objects of one run."""

    params: list[torch.Tensor]
    names: list[str]
    group_of: list[int]
    optimizer: torch.optim.Optimizer
    scheduler: Any | None


def init_params(spec: RunSpec) -> tuple[list[torch.Tensor], list[str], list[int]]:
    """Create the parameters of every group, seeded, in group order."""
    gen = torch.Generator().manual_seed(spec.seed)
    params, names, group_of = [], [], []
    for gi, group in enumerate(spec.groups):
        for pi, shape in enumerate(group.shapes):
            try:
                t = _initial(spec, shape, gen)
            except (RuntimeError, MemoryError):
                raise ConfigError(
                    f"cannot allocate a {format_shape(shape)} parameter "
                    f"({math.prod(shape) * 4:,} bytes as float32): out of memory",
                    hint=f"simulate is for small parameters; use smaller {option('shapes')} "
                    "values",
                ) from None
            params.append(t.requires_grad_(True))
            names.append(group.names[pi] if group.names else f"group{gi}.param{pi}")
            group_of.append(gi)
    return params, names, group_of


def _initial(spec: RunSpec, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if spec.init == "normal":
        return torch.randn(shape, generator=gen)
    if spec.init == "zeros":
        return torch.zeros(shape)
    if spec.init == "ones":
        return torch.ones(shape)
    return torch.full(shape, spec.init_value)


def build(spec: RunSpec) -> Built:
    """Build the parameters, the optimizer (all groups) and the scheduler of ``spec``."""
    cls = optimizer_class(spec.optimizer)
    defaults = check_hyperparameters(cls, spec.hyperparams, "")
    for gi, group in enumerate(spec.groups):
        check_hyperparameters(cls, group.hyperparams, f" (in param group {gi})")
    params, names, group_of = init_params(spec)
    named = any(g.names for g in spec.groups)
    param_groups = []
    i = 0
    for group in spec.groups:
        ps = params[i : i + len(group.shapes)]
        ns = names[i : i + len(group.shapes)]
        i += len(group.shapes)
        entry: dict[str, Any] = {"params": list(zip(ns, ps, strict=True)) if named else ps}
        entry.update(group.hyperparams)
        param_groups.append(entry)
    try:
        optimizer = cls(param_groups, **defaults)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"torch refused to build {cls.__name__}: {clean_message(e)}") from None
    scheduler = build_scheduler(spec.scheduler, optimizer) if spec.scheduler else None
    return Built(params, names, group_of, optimizer, scheduler)


def build_scheduler(spec: SchedulerSpec, optimizer: torch.optim.Optimizer) -> Any:
    classes = scheduler_classes()
    cls = classes.get(spec.name.lower())
    if cls is None or spec.name.lower() in _UNBUILDABLE_SCHEDULERS:
        usable = sorted(c.__name__ for k, c in classes.items() if k not in _UNBUILDABLE_SCHEDULERS)
        raise ConfigError(
            f"unknown or unsupported LR scheduler {spec.name!r}"
            + (did_you_mean(spec.name, usable) if cls is None else ""),
            hint="choose one of " + ", ".join(usable),
        )
    kwargs = check_hyperparameters(cls, spec.kwargs, " (scheduler)")
    required = [
        k for k, d in hyperparameter_defaults(cls).items()
        if d is pyinspect.Parameter.empty and k not in kwargs
    ]
    if required:
        raise ConfigError(
            f"{cls.__name__} needs {', '.join(required)}",
            hint="for example " + option("scheduler_args", shown=f"{required[0]}=10",
                                         python=f"{{{required[0]!r}: 10}}"),
        )
    try:
        return cls(optimizer, **kwargs)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"torch refused to build {cls.__name__}: {clean_message(e)}") from None
