"""``optstate config CKPT``: the run config (``sim/config.py``'s format) that rebuilds the
optimizer a checkpoint was saved from, so that ``check CKPT --config`` it exits 0.

What a checkpoint says, and so what the config holds:

- ``optimizer``: the torch.optim class ``state.kind.infer_kind`` finds from the group
  keys and state entries (an unknown kind, or one torch does not ship: no config);
- ``[hyperparams]``: the values every group shares; a group's own values go in its
  ``[[groups]]`` table. Keys a scheduler or trainer writes into the groups
  (``initial_lr``, ``max_lr``, ...) are not constructor arguments and are left out;
  under a rebuilt scheduler ``lr`` is the base lr (``initial_lr``), as check compares it;
- ``shapes``: each parameter's shape from its state entries (Adafactor's from
  row_var / col_var); a parameter with no state has no known shape: "1" is written and
  a comment says so (check accepts any shape there: torch starts its state fresh);
- ``names``: when every parameter of a group is named (``state.names.name_params``);
- ``[scheduler]``: its class is not stored. Each buildable torch scheduler whose
  constructor arguments the state holds is built with them on the config's optimizer,
  and kept when its state then has the same settings as the checkpoint's; exactly one
  must be left, else no ``[scheduler]`` and a comment says why (LambdaLR's function is
  never stored: it cannot be rebuilt);
- ``steps``: the step count the state records (``step``), else the scheduler's
  ``last_epoch``.

Values TOML cannot hold (None, objects) are left out when the constructor's default is
the same value, otherwise left out with a comment; the header says which file, where in
it, and how names were found. ``render.config_view.config_toml`` writes the TOML.
"""

from __future__ import annotations

import inspect as pyinspect
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optstate.analysis.check_hyperparams import ADDED_BY_OTHERS, SCHED_PROGRESS
from optstate.analysis.check_result import equal_hyper
from optstate.base.errors import ConfigError
from optstate.base.values import format_shape
from optstate.io.source import open_source
from optstate.sim.build import (
    _UNBUILDABLE_SCHEDULERS,
    build,
    hyperparameter_defaults,
    optimizer_classes,
    scheduler_classes,
)
from optstate.sim.config import spec_from_dict
from optstate.sim.trial import NOT_HYPERPARAMS
from optstate.state.kind import infer_kind, stored_formats
from optstate.state.locate import is_deepspeed_scheduler, locate
from optstate.state.names import name_params, slot_shape
from optstate.state.view import OptimizerStateView

Shape = tuple[int, ...]



@dataclass
class ConfigFrom:
    """A config derived from a checkpoint: ``data`` (what ``spec_from_dict`` reads) and
    the comments that go with it in TOML."""

    data: dict[str, Any]
    header: list[str] = field(default_factory=list)  # lines of the opening comment
    notes: dict[str, list[str]] = field(default_factory=dict)  # table -> its comments
    naming: dict[str, Any] | None = None


# --------------------------------------------------------------------------- entry points


def config_from_checkpoint(path: str | Path, *, key: str | None = None,
                           model_file: str | Path | None = None,
                           unsafe: bool = False) -> ConfigFrom:
    """Open a checkpoint (safely), find its optimizer state, name its params and derive
    the config."""
    source = open_source(path, unsafe=unsafe)
    located = locate(source, key)
    view = OptimizerStateView.from_state_dict(located.state)
    naming = name_params(view, source, located, model_file=model_file)
    ds = source.details.get("scheduler") if source.format == "deepspeed" else None
    out = config_from_view(view, located.scheduler,
                           ds.get("type") if isinstance(ds, dict) else None)
    out.naming = naming.to_dict()
    where = f" at {located.location!r}" if located.location else " at the top level"
    head = [f"optstate config: {source.label}, the optimizer state{where}"]
    if located.scheduler_location:
        head.append(f"scheduler state: {located.scheduler_location}")
    if naming.named:
        head.append(f"names: {naming.from_words()}"
                    + (f" (matched by {naming.matched})" if naming.matched else ""))
    if naming.reason:
        head.append(f"names: {naming.reason}")
    if naming.named:  # what the names rest on (the order assumption), as inspect says it
        head += [f"names: {note}" for note in naming.notes]
    out.header = head + out.header
    return out


def config_from_state(sd: dict[str, Any],
                      scheduler_state: dict[str, Any] | None = None) -> ConfigFrom:
    """The config of an optimizer ``state_dict`` (names as the view finds them)."""
    return config_from_view(OptimizerStateView.from_state_dict(sd), scheduler_state)


def config_from_view(view: OptimizerStateView,
                     scheduler_state: dict[str, Any] | None = None,
                     deepspeed_scheduler: str | None = None) -> ConfigFrom:
    """``deepspeed_scheduler``: the type the run's ds_config names, when the scheduler
    state is DeepSpeed's own (``state.locate.is_deepspeed_scheduler``)."""
    out = ConfigFrom({})
    keys = {k for p in view.params for k in p.state}
    guess = infer_kind([g.hyperparams for g in view.groups], keys, stored_formats(view))
    cls = optimizer_classes().get((guess.inner or guess.kind).lower())  # SGD under SWALR
    if cls is None:
        raise ConfigError(
            f"cannot write a config: the optimizer is {guess.kind} ({guess.reason})"
            if guess.kind == "unknown" else
            f"cannot write a config: the state is {guess.kind}'s, not a torch.optim class"
            if guess.library not in (None, "torch.optim") else
            f"cannot write a config: the state is {guess.kind}'s, which this torch "
            f"({torch.__version__}) does not ship",
            hint="a config names a torch.optim class; write one by hand for other optimizers")
    _refuse_foreign(view, cls, guess.kind)
    low_bit = sorted({d["format"] for p in view.params for d in p.stored.values()
                      if str(d.get("format", "")).startswith(("torchao-", "bitsandbytes-"))})
    if low_bit:  # state.lowbit: torch.optim cannot step (or load) quantized state
        raise ConfigError(
            f"cannot write a config: the state is stored low-bit ({', '.join(low_bit)}), which "
            f"torch's {cls.__name__} cannot load or step; its keys are closest to {guess.kind}'s",
            hint="a config builds a torch.optim class; torch cannot build this optimizer")
    data = out.data
    data["optimizer"] = cls.__name__
    out.header.append(f"optimizer: {cls.__name__} ({guess.confidence} confidence: "
                      f"{guess.reason})")
    steps = _recorded_steps(view, scheduler_state)
    if steps is not None:
        data["steps"] = steps
    else:
        out.header.append("steps: the state records no step count (simulate's default "
                          "applies)")
    defaults = hyperparameter_defaults(cls)
    per_group = [_group_values(g.hyperparams, defaults, out.notes.setdefault(
        f"groups.{g.index}", [])) for g in view.groups]
    common = _common(per_group)
    data["hyperparams"] = common
    data["groups"] = []
    for g, values in zip(view.groups, per_group, strict=True):
        notes = out.notes.setdefault(f"groups.{g.index}", [])
        entry: dict[str, Any] = {"shapes": []}
        params = [p for p in view.params if p.group == g.index]
        fresh = []
        for p in params:
            shape = param_shape(p.state, cls.__name__)
            if shape is None and cls.__name__ != "LBFGS":
                shape = p.model_shape  # no state, but the model it was named from knows
            if shape is None:
                fresh.append(p.position)
                shape = (1,)
            entry["shapes"].append(format_shape(shape))
        flat = _flat_size(params) if cls.__name__ == "LBFGS" else None
        if flat is not None and flat >= len(params):
            entry["shapes"] = [str(flat - len(params) + 1)] + ["1"] * (len(params) - 1)
            fresh = []
            notes.append(f"LBFGS keeps one flat state ({flat} elements) for all its params: "
                         "their shapes are not stored; these placeholders add up to "
                         f"{flat} so that the flat state fits")
        if fresh:
            notes.append(f"param{'s' * (len(fresh) > 1)} {', '.join(map(str, fresh))}: no "
                         "state, shape unknown (\"1\" written; check accepts any shape for "
                         "a param without state)")
        names = [p.name for p in params]
        if names and all(n is not None for n in names):
            entry["names"] = names
            notes += [f"{p.name} is also {', '.join(p.aliases)} (tied: one parameter)"
                      for p in params if p.aliases]
        elif any(n is not None for n in names):
            notes.append(f"names: only {sum(n is not None for n in names)} of {len(names)} "
                         "params are named, so none are listed")
        entry.update({k: v for k, v in values.items() if k not in common})
        data["groups"].append(entry)
    if is_deepspeed_scheduler(scheduler_state):  # sets every group's lr at each step
        name = f"DeepSpeed's {deepspeed_scheduler}" if deepspeed_scheduler else \
            "DeepSpeed's scheduler"
        at = scheduler_state.get("last_batch_iteration")  # type: ignore[union-attr]
        out.header.append(f"lr: the current value of {name} (last_batch_iteration {at}), "
                          "which sets the lr at every step, not a constant; no [scheduler]: "
                          "DeepSpeed's schedulers are not torch's (their settings are in the "
                          "run's ds_config)")
    elif scheduler_state is not None:
        _add_scheduler(out, scheduler_state)
    if data.get("scheduler") is not None:
        # A scheduler starts from the base lr (initial_lr); check compares that.
        for g, entry in zip(view.groups, data["groups"], strict=True):
            base = g.hyperparams.get("initial_lr")
            if base is not None:
                entry["lr"] = _value(base)
        lrs = [e.get("lr", common.get("lr")) for e in data["groups"]]
        if lrs and all(x is not None and equal_hyper(x, lrs[0]) for x in lrs):
            common["lr"] = lrs[0]
            for e in data["groups"]:
                e.pop("lr", None)
        else:
            common.pop("lr", None)
    if not data["hyperparams"]:
        del data["hyperparams"]
    spec_from_dict(data, "the derived config")  # what check will read: valid by construction
    return out


# --------------------------------------------------------------------------- parts


def _refuse_foreign(view: OptimizerStateView, cls: type, kind: str) -> None:
    """Group keys that neither the class takes nor torch, a scheduler or a trainer writes:
    another optimizer (a subclass, a third-party one) wrote the state. A config naming the
    torch class would present a guess as fact: no config."""
    known = set(hyperparameter_defaults(cls)) | NOT_HYPERPARAMS | ADDED_BY_OTHERS
    try:
        known |= set(cls([torch.zeros(1, requires_grad=True)]).param_groups[0])
    except Exception:  # a class that needs arguments: its signature says enough
        pass
    foreign = sorted({str(k) for g in view.groups for k in g.hyperparams} - known)
    if foreign:
        raise ConfigError(
            f"cannot write a config: the param groups hold {', '.join(foreign)}, which "
            f"torch's {cls.__name__} does not take or write: another optimizer (a subclass "
            f"or a third-party one) wrote this state; its keys are closest to {kind}'s",
            hint="a config builds a torch.optim class; torch cannot build this optimizer")


def param_shape(state: dict[str, Any], kind: str = "") -> Shape | None:
    """A parameter's shape from its state entries (``state.names.slot_shape``: Adafactor's
    factored row_var (..., R, 1) and col_var (..., 1, C) give (..., R, C)); None when it
    has no state, or it is LBFGS's flat state."""
    return None if kind == "LBFGS" else slot_shape(state)


def _flat_size(params: list[Any]) -> int | None:
    """LBFGS's flat state (d, prev_flat_grad: one element per element of all params)."""
    for p in params:
        for k in ("d", "prev_flat_grad"):
            v = p.state.get(k)
            if isinstance(v, torch.Tensor) and v.dim() == 1:
                return v.numel()
    return None


def _recorded_steps(view: OptimizerStateView,
                    sched: dict[str, Any] | None) -> int | None:
    steps = []
    for p in view.params:
        s = p.state.get("step")
        if isinstance(s, torch.Tensor) and s.numel() == 1:
            s = s.item()
        if isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s):
            steps.append(int(s))
    if steps:
        return max(steps)
    last = (sched or {}).get("last_epoch")
    return last if isinstance(last, int) and not isinstance(last, bool) and last >= 0 else None


_UNSET = object()


def _value(v: Any) -> Any:
    """A hyperparameter as TOML can hold it (tensors as numbers, tuples as lists), or
    ``_UNSET`` when it cannot (None, objects, tensors of several elements)."""
    if isinstance(v, torch.Tensor):
        return _value(v.item()) if v.numel() == 1 and not v.is_meta else _UNSET
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        items = [_value(x) for x in v]
        return _UNSET if any(x is _UNSET for x in items) else items
    return _UNSET


def _group_values(hyper: dict[str, Any], defaults: dict[str, Any],
                  notes: list[str]) -> dict[str, Any]:
    out = {}
    for k, v in hyper.items():
        if k in NOT_HYPERPARAMS or k in ADDED_BY_OTHERS or k not in defaults:
            continue  # not a constructor argument: torch or a scheduler wrote it
        tv = _value(v)
        if tv is _UNSET:
            if not _same(v, defaults[k]):
                notes.append(f"{k} = {v!r} cannot be written in TOML; the config's default "
                             f"{defaults[k]!r} differs (check will say so)")
            continue
        out[k] = tv
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return equal_hyper(a, b) or a == b
    except Exception:
        return False


def _common(per_group: list[dict[str, Any]]) -> dict[str, Any]:
    if not per_group:
        return {}
    first = per_group[0]
    return {k: v for k, v in first.items()
            if all(k in g and equal_hyper(g[k], v) for g in per_group[1:])}


def _add_scheduler(out: ConfigFrom, sched: dict[str, Any]) -> None:
    notes = out.notes.setdefault("scheduler", [])
    if "lr_lambdas" in sched:
        notes.append("the checkpoint's scheduler is a LambdaLR or MultiplicativeLR: its "
                     "function is not stored, so it cannot be rebuilt; no [scheduler]")
        return
    if "_schedulers" in sched:
        notes.append("the checkpoint's scheduler chains others (SequentialLR / "
                     "ChainedScheduler): no [scheduler], it cannot be rebuilt from a config")
        return
    settings = {k for k in sched if k not in SCHED_PROGRESS}
    found: list[tuple[str, dict[str, Any]]] = []
    for lname, cls in sorted(scheduler_classes().items()):
        if lname in _UNBUILDABLE_SCHEDULERS:
            continue
        kwargs = _scheduler_kwargs(cls, sched)
        if kwargs is None:
            continue
        trial = dict(out.data, scheduler={"name": cls.__name__, **kwargs})
        try:
            built = build(spec_from_dict(trial, "scheduler trial"))
            ref = built.scheduler.state_dict()
        except Exception:
            continue
        ours = {k for k in ref if k not in SCHED_PROGRESS}
        if ours == settings and all(equal_hyper(ref[k], sched[k]) or _same(ref[k], sched[k])
                                    for k in settings):
            found.append((cls.__name__, kwargs))
    if len(found) == 1:
        name, kwargs = found[0]
        out.data["scheduler"] = {"name": name, **kwargs}
        notes.append(f"{name}: inferred from the scheduler state's settings "
                     f"({', '.join(sorted(settings)) or 'none'}); its class is not stored")
    elif not found:
        notes.append("the scheduler state's settings "
                     f"({', '.join(sorted(settings)) or 'none'}) do not give back the "
                     "constructor arguments of a torch scheduler (OneCycleLR and CyclicLR "
                     "keep theirs in derived form); no [scheduler]")
    else:
        notes.append("the scheduler state fits several schedulers ("
                     f"{', '.join(n for n, _ in found)}); no [scheduler], pick one")


def _scheduler_kwargs(cls: type, sched: dict[str, Any]) -> dict[str, Any] | None:
    """The constructor arguments of ``cls`` found in a scheduler state (ReduceLROnPlateau's
    min_lr is kept as min_lrs); None when a required one is missing or not TOML."""
    kwargs = {}
    for p in list(pyinspect.signature(cls.__init__).parameters.values())[2:]:
        if p.name in ("last_epoch", "verbose") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in sched:
            v = sched[p.name]
        elif p.name + "s" in sched:
            vs = sched[p.name + "s"]
            v = vs[0] if isinstance(vs, list) and vs and all(x == vs[0] for x in vs) else vs
        elif p.default is not p.empty:
            continue
        else:
            return None
        if isinstance(v, Counter):  # MultiStepLR keeps its milestones as a Counter
            v = sorted(v.elements())
        tv = _value(v)
        if tv is _UNSET:
            if v is None and p.default is None:
                continue
            return None
        kwargs[p.name] = tv
    return kwargs
