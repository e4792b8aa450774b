"""Run specifications: what optimizer to build, on which parameters, stepped how.

Pure Python (no torch import): the spec, config files and validation. Command-line
text (``--set key=value``, ``--group``, overrides of a config) is read in
``spec_text.py``; checks that need torch (hyperparameters against the optimizer's
signature) live in ``build.py``.

A config file (TOML or JSON) looks like this; command-line flags override it::

    optimizer = "AdamW"        # any torch.optim class, case-insensitive
    steps = 100
    seed = 0
    grad = "quadratic"         # constant | normal | quadratic | rosenbrock | none
    zero_grad = "none"         # none | zeros | never
    init = "normal"            # normal | zeros | ones | constant

    [hyperparams]              # constructor arguments, the defaults of every group
    lr = 1e-3
    betas = [0.9, 0.999]

    [[groups]]                 # one table per param group
    shapes = ["2x2", "3"]
    names = ["w", "b"]         # optional

    [[groups]]
    shapes = ["3x3"]
    lr = 1e-4                  # any other key overrides a hyperparameter for this group

    [scheduler]                # optional, any torch.optim.lr_scheduler class
    name = "StepLR"
    step_size = 5
    gamma = 0.5
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (see pyproject)
    import tomli as tomllib

from optstate.base import suggest
from optstate.base.errors import ConfigError, option
from optstate.base.values import format_shape

GRAD_SOURCES = ("constant", "normal", "quadratic", "rosenbrock", "none")
ZERO_GRAD_MODES = ("none", "zeros", "never")
INIT_MODES = ("normal", "zeros", "ones", "constant")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class GroupSpec:
    """One param group: the shapes of its parameters and its hyperparameter overrides."""

    shapes: tuple[Shape, ...]
    hyperparams: dict[str, Any] = field(default_factory=dict)
    names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SchedulerSpec:
    """An LR scheduler from ``torch.optim.lr_scheduler`` and its constructor arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    """Everything ``simulate`` needs to build and step an optimizer reproducibly."""

    optimizer: str = "SGD"
    hyperparams: dict[str, Any] = field(default_factory=dict)
    groups: tuple[GroupSpec, ...] = (GroupSpec(shapes=((2, 2),)),)
    steps: int = 10
    seed: int = 0
    grad: str = "constant"
    grad_value: float = 1.0
    zero_grad: str = "none"
    init: str = "normal"
    init_value: float = 0.0
    scheduler: SchedulerSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict that ``spec_from_dict`` reads back."""
        out: dict[str, Any] = {
            "optimizer": self.optimizer,
            "steps": self.steps,
            "seed": self.seed,
            "grad": self.grad,
            "grad_value": self.grad_value,
            "zero_grad": self.zero_grad,
            "init": self.init,
            "init_value": self.init_value,
            "hyperparams": {k: _jsonable(v) for k, v in self.hyperparams.items()},
            "groups": [],
        }
        for g in self.groups:
            gd: dict[str, Any] = {"shapes": [format_shape(s) for s in g.shapes]}
            if g.names is not None:
                gd["names"] = list(g.names)
            gd.update({k: _jsonable(v) for k, v in g.hyperparams.items()})
            out["groups"].append(gd)
        if self.scheduler is not None:
            out["scheduler"] = {"name": self.scheduler.name, **{
                k: _jsonable(v) for k, v in self.scheduler.kwargs.items()}}
        return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def parse_shape(text: Any) -> Shape:
    """``"2x2"`` / ``"3"`` / ``[2, 2]`` / ``2`` -> a tuple of positive ints."""
    if isinstance(text, bool):
        raise ConfigError(f"bad shape {text!r}: use sizes like 2x2 or 10")
    if isinstance(text, int):
        dims: list[Any] = [text]
    elif isinstance(text, (list, tuple)):
        dims = list(text)
    elif isinstance(text, str):
        s = text.strip().lower().replace("×", "x")
        if s in ("", "()", "scalar"):
            return ()
        dims = s.split("x")
    else:
        raise ConfigError(f"bad shape {text!r}: use sizes like 2x2 or 10")
    out = []
    for d in dims:
        try:
            n = int(d) if not isinstance(d, bool) else None
        except (TypeError, ValueError):
            n = None
        if n is None or n <= 0 or (isinstance(d, float) and not d.is_integer()):
            raise ConfigError(
                f"bad shape {text!r}: every size must be a positive whole number",
                hint="shapes look like 2x2, 3x4x5 or 10",
            )
        out.append(n)
    return tuple(out)


# --------------------------------------------------------------------------- files


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict (by extension; TOML otherwise)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory, not a file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {p} is not valid JSON: {e}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(
                f"config file {p} is not valid TOML: {e}",
                hint="use a .json extension for JSON configs",
            ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a table/object at the top level")
    return data


_TOP_KEYS = {
    "optimizer", "hyperparams", "groups", "steps", "seed", "grad", "grad_value",
    "zero_grad", "init", "init_value", "scheduler",
}


def spec_from_dict(data: dict[str, Any], where: str = "config") -> RunSpec:
    """Validate a config mapping and turn it into a RunSpec."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}"
            + (suggest.did_you_mean(unknown[0], _TOP_KEYS) if len(unknown) == 1 else ""),
            hint=f"valid keys: {', '.join(sorted(_TOP_KEYS))}; optimizer arguments go in "
            "[hyperparams]",
        )
    kw: dict[str, Any] = {}
    if "optimizer" in data:
        kw["optimizer"] = _want(data["optimizer"], str, "optimizer", where)
    if "hyperparams" in data:
        hp = _want(data["hyperparams"], dict, "hyperparams", where)
        kw["hyperparams"] = _frozen_items(hp)
    if "groups" in data:
        groups = _want(data["groups"], list, "groups", where)
        kw["groups"] = tuple(_group_from_dict(g, i, where) for i, g in enumerate(groups))
        _names_once(kw["groups"], where)
    for key, typ in (("steps", int), ("seed", int), ("grad", str), ("zero_grad", str),
                     ("init", str)):
        if key in data:
            kw[key] = _want(data[key], typ, key, where)
    for key in ("grad_value", "init_value"):
        if key in data:
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}: {key} must be a number, got {v!r}")
            kw[key] = float(v)
    if "scheduler" in data and data["scheduler"] is not None:
        sd = dict(_want(data["scheduler"], dict, "scheduler", where))
        name = sd.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{where}: [scheduler] needs a name, e.g. name = \"StepLR\"")
        kw["scheduler"] = SchedulerSpec(name, _frozen_items(sd))
    return validate(RunSpec(**kw))


def _group_from_dict(g: Any, i: int, where: str) -> GroupSpec:
    if not isinstance(g, dict):
        raise ConfigError(f"{where}: groups[{i}] must be a table with shapes = [...]")
    g = dict(g)
    shapes = g.pop("shapes", None)
    if shapes is None and "shape" in g:
        shapes = [g.pop("shape")]
    if not isinstance(shapes, list) or not shapes:
        raise ConfigError(f"{where}: groups[{i}] needs shapes = [\"2x2\", ...]")
    names = g.pop("names", None)
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}: groups[{i}].names must be a list of strings")
        if len(names) != len(shapes):
            raise ConfigError(
                f"{where}: groups[{i}] has {len(shapes)} shapes but {len(names)} names"
            )
        for k, n in enumerate(names):
            if not n.strip():
                raise ConfigError(f"{where}: groups[{i}].names has an empty name at "
                                  f"position {k}")
            if n in names[:k]:
                raise ConfigError(f"{where}: groups[{i}].names lists {n!r} twice (each "
                                  "parameter has one name)")
    return GroupSpec(
        shapes=tuple(parse_shape(s) for s in shapes),
        hyperparams=_frozen_items(g),
        names=tuple(names) if names is not None else None,
    )


def _names_once(groups: tuple[GroupSpec, ...], where: str) -> None:
    """A name in two groups would make check compare a parameter twice."""
    first: dict[str, int] = {}
    for i, g in enumerate(groups):
        for n in g.names or ():
            if first.setdefault(n, i) != i:
                raise ConfigError(f"{where}: groups[{i}].names lists {n!r}, which "
                                  f"groups[{first[n]}] lists too (each parameter is in one "
                                  "group)")


def _frozen_items(d: dict[str, Any]) -> dict[str, Any]:
    """Keys interned (pickle shares equal strings only when they are the same object: a
    config file's ``lr`` would otherwise make a saved state differ by a few bytes from
    the same run given by flags), values frozen."""
    return {sys.intern(str(k)): _freeze(v) for k, v in d.items()}


def _freeze(v: Any) -> Any:
    """TOML/JSON lists become tuples: torch keeps betas & co. as tuples."""
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def _want(v: Any, typ: type, key: str, where: str) -> Any:
    if typ is int and isinstance(v, bool):
        raise ConfigError(f"{where}: {key} must be a whole number, got {v!r}")
    if not isinstance(v, typ):
        kind = {int: "a whole number", str: "a string", dict: "a table", list: "a list"}[typ]
        raise ConfigError(f"{where}: {key} must be {kind}, got {v!r}")
    return v


def validate(spec: RunSpec) -> RunSpec:
    """Checks that need no torch: ranges and choices."""
    if spec.steps < 0:
        raise ConfigError(f"steps must be 0 or more, got {spec.steps}")
    if spec.grad not in GRAD_SOURCES:
        raise ConfigError(
            suggest.unknown("gradient source", spec.grad, GRAD_SOURCES),
            hint=f"choose one of {', '.join(GRAD_SOURCES)}",
        )
    if spec.zero_grad not in ZERO_GRAD_MODES:
        raise ConfigError(
            suggest.unknown("zero_grad mode", spec.zero_grad, ZERO_GRAD_MODES),
            hint=f"choose one of {', '.join(ZERO_GRAD_MODES)}",
        )
    if spec.init not in INIT_MODES:
        raise ConfigError(
            suggest.unknown("init", spec.init, INIT_MODES),
            hint=f"choose one of {', '.join(INIT_MODES)}",
        )
    if not spec.groups:
        raise ConfigError("at least one param group is needed")
    for g in spec.groups:
        if not g.shapes:
            raise ConfigError("every param group needs at least one parameter shape")
    if not math.isfinite(spec.grad_value) or not math.isfinite(spec.init_value):
        raise ConfigError("grad_value and init_value must be finite numbers")
    if spec.grad == "rosenbrock":
        total = sum(math.prod(s) for g in spec.groups for s in g.shapes)
        if total % 2:
            raise ConfigError(
                f"the Rosenbrock objective pairs up coordinates, but the parameters have "
                f"{total} elements in all",
                hint="use an even number of elements, e.g. "
                + option("shapes", shown="2", python="['2']"),
            )
    return spec
