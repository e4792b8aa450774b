"""Finding the optimizer state (and its scheduler) inside a loaded checkpoint.

Recognised layouts: a bare ``optimizer.state_dict()``; a dict holding one under any key
(``optimizer``, ``optimizer_state_dict`` as in the PyTorch tutorial, ``optim``, ...);
PyTorch Lightning's ``optimizer_states`` list with ``lr_schedulers`` beside it; Hugging
Face folders (see ``source.py``). Locations are written like ``optimizer_states[1]``,
``trainer.optimizer`` or ``run["opt.v1"]`` (``paths.py``) and are what ``--key`` accepts.
"""

from __future__ import annotations

import shlex
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

from optstate.base.errors import CheckpointError, ConfigError, NoOptimizerStateError, option
from optstate.base.paths import PathNotFound, follow, join, path_keys
from optstate.base.suggest import did_you_mean
from optstate.io.dcp_metadata import is_index
from optstate.io.native_tensor import is_native, is_tensor
from optstate.io.source import Source

# How far into a container we look for an optimizer state (Lightning: depth 2).
_MAX_DEPTH = 4
_MAX_NODES = 10_000

_SCHEDULER_KEYS = (
    "scheduler", "lr_scheduler", "scheduler_state_dict", "lr_scheduler_state_dict",
    "sched", "schedulers", "lr_schedulers",
)


@dataclass
class Located:
    """An optimizer state found in a source, and the scheduler state beside it, if any."""

    location: str  # '' when the whole file is the optimizer state
    state: dict[str, Any]
    scheduler: dict[str, Any] | None = None
    scheduler_location: str | None = None
    candidates: tuple[str, ...] = ()  # every optimizer state location in the source
    # A wrapper's per-param state beside the located one (``wrapper_entries``).
    extra: dict[tuple[int, int], dict[str, tuple[str, Any]]] | None = None


def wrapper_entries(obj: Any, location: str,
                    ) -> dict[tuple[int, int], dict[str, tuple[str, Any]]] | None:
    """A wrapper optimizer's own per-param state, beside the base state at ``location``:
    pytorch-optimizer's Lookahead saves ``{"lookahead_state": {(group, index): {"slow_params":
    T}}, "base_optimizer": {...}}`` (Magma: ``magma_state`` ... ``alignment``). Returned by
    (group, index in group) as ``{"lookahead_state.slow_params": (place, value)}``; None when
    there is none."""
    keys = path_keys(location)
    if not keys:
        return None
    parent, prefix = obj, ""
    for k in keys[:-1]:
        try:
            parent, prefix = parent[k], join(prefix, k)
        except (KeyError, IndexError, TypeError):
            return None
    if not isinstance(parent, dict):
        return None
    out: dict[tuple[int, int], dict[str, tuple[str, Any]]] = {}
    for wkey, per in parent.items():
        if wkey == keys[-1] or not isinstance(wkey, str) or not isinstance(per, dict) or not per:
            continue
        if not all(isinstance(k, tuple) and len(k) == 2 and all(is_index(i) for i in k)
                   and isinstance(v, dict) for k, v in per.items()):
            continue
        for pos, entries in per.items():
            for name, value in entries.items():
                out.setdefault(pos, {})[f"{wkey}.{name}"] = (
                    join(join(join(prefix, wkey), pos), name), value)
    return out or None


def is_optimizer_state(obj: Any) -> bool:
    """The shape of ``Optimizer.state_dict()``: ``state`` and a list of ``param_groups``."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("param_groups"), list)
        and "state" in obj
        and isinstance(obj["state"], dict)
        and all(isinstance(g, dict) and "params" in g for g in obj["param_groups"])
    )


def is_scheduler_state(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    # ChainedScheduler keeps no last_epoch of its own: only the schedulers it chains.
    wrapped = obj.get("_schedulers")
    if isinstance(wrapped, list) and wrapped and "_last_lr" in obj:
        return all(is_scheduler_state(s) for s in wrapped)
    if is_deepspeed_scheduler(obj):
        return True
    return "last_epoch" in obj and ("base_lrs" in obj or "_last_lr" in obj or "best" in obj)


def is_deepspeed_scheduler(obj: Any) -> bool:
    """DeepSpeed's own LR schedulers (WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle,
    LRRangeTest: ``deepspeed/runtime/lr_schedules.py``) save only
    ``{"last_batch_iteration": N}`` and set every group's lr at each step."""
    return (isinstance(obj, dict) and "last_batch_iteration" in obj and "last_epoch" not in obj
            and all(k == "last_batch_iteration" for k in obj))


def _children(obj: Any) -> list[tuple[Any, Any]]:
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, (list, tuple)):
        return list(enumerate(obj))
    return []


def find_optimizer_states(obj: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every optimizer state in ``obj`` (breadth first, bounded), with its location."""
    found: list[tuple[str, dict[str, Any]]] = []
    queue: deque[tuple[str, Any, int]] = deque([("", obj, 0)])
    seen = 0
    while queue and seen < _MAX_NODES:
        loc, node, depth = queue.popleft()
        seen += 1
        state = as_optimizer_state(node)
        if state is not None:
            found.append((loc, state))
            continue  # an optimizer state does not contain another one
        if depth >= _MAX_DEPTH:
            continue
        for key, child in _children(node):
            if isinstance(child, (dict, list, tuple)) or _is_optimizer_object(child):
                queue.append((join(loc, key), child, depth + 1))
    return found


def _is_optimizer_object(obj: Any) -> bool:
    """A pickled ``torch.optim.Optimizer`` itself (only --unsafe loads one)."""
    if isinstance(obj, (dict, list, tuple, str, bytes, int, float)) or obj is None \
            or is_native(obj) or "torch" not in sys.modules:  # no torch: no such object
        return False
    import torch

    return isinstance(obj, torch.optim.Optimizer)


def as_optimizer_state(obj: Any) -> dict[str, Any] | None:
    """``obj`` if it is an optimizer state_dict; the state_dict of a pickled optimizer
    object (``torch.save(optimizer)``, readable with --unsafe only); else None."""
    if is_optimizer_state(obj):
        return obj
    if _is_optimizer_object(obj):
        return obj.state_dict()
    return None


def resolve_key(obj: Any, key: str, where: str = "this checkpoint") -> Any:
    """Follow a location like ``optimizer_states[1]``, ``a.b`` or ``run["opt.v1"]``
    (the syntax of ``paths.py``) into ``obj`` (``where`` names it in the error: diff has
    two files and --key applies to both)."""
    try:
        return follow(obj, key)
    except (PathNotFound, ConfigError) as e:
        # A top-level key typed without quotes (--key opt.v1 for {"opt.v1": ...}) is
        # still taken when it is not a path to something else.
        if isinstance(obj, dict) and isinstance(key, str) and key in obj:
            return obj[key]
        if isinstance(e, ConfigError):
            raise
        found = [loc for loc, _ in find_optimizer_states(obj)]
        raise NoOptimizerStateError(
            f"{option('key', key, shown=repr(key))}: nothing at {e.segment!r} in {where}"
            f"{did_you_mean(key, found)}",
            hint=f"it holds {describe_contents(obj)}",
        ) from None


def describe_contents(obj: Any) -> str:
    """A few words on what an object is, for 'no optimizer state found' messages."""
    if is_tensor(obj):
        return f"a single tensor of shape {list(obj.shape)}"
    if isinstance(obj, dict):
        if not obj:
            return "an empty dict"
        if is_scheduler_state(obj):
            if "last_epoch" not in obj:
                return f"an LR scheduler state_dict (chaining {len(obj['_schedulers'])})"
            return f"an LR scheduler state_dict (last_epoch {obj.get('last_epoch')})"
        model = _describe_model_state(obj)
        if model is not None:
            return model
        keys = []
        for k in list(obj)[:8]:
            inner = _describe_model_state(obj[k]) if isinstance(obj[k], dict) else None
            keys.append(f"{k} ({inner})" if inner else str(k))
        more = f", … ({len(obj)} keys)" if len(obj) > 8 else ""
        what = "a dict"
        if any(str(k).startswith("pytorch-lightning_version") for k in obj):
            what = "a PyTorch Lightning checkpoint saved without optimizer state (as " \
                   "save_weights_only=True does)," if "optimizer_states" not in obj else \
                   "a PyTorch Lightning checkpoint"
        return f"{what} with keys {', '.join(keys)}{more}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} item{'s' * (len(obj) != 1)}"
    return f"a {type(obj).__name__}"


def _describe_model_state(obj: dict[Any, Any]) -> str | None:
    """'a model state_dict with N tensors' when every value is a tensor."""
    if not obj or not all(is_tensor(v) for v in obj.values()):
        return None
    n = len(obj)
    numel = sum(v.numel() for v in obj.values())
    return f"a model state_dict with {n} tensor{'s' * (n != 1)} ({numel:,} elements)"


def summarize_candidate(state: dict[str, Any]) -> str:
    """'Adam, 2 groups, 5 params' for listing the optimizer states a file holds."""
    from optstate.state.kind import infer_kind

    groups = [g for g in state["param_groups"] if isinstance(g, dict)]
    n_params = sum(len(g.get("params", [])) for g in groups)
    keys = {str(k) for v in state["state"].values() if isinstance(v, dict) for k in v}
    kind = infer_kind([{k: v for k, v in g.items() if k != "params"} for g in groups], keys)
    return (f"{kind.kind}, {len(groups)} group{'s' * (len(groups) != 1)}, {n_params} "
            f"param{'s' * (n_params != 1)}")


def locate(source: Source, key: str | None = None) -> Located:
    """Find the one optimizer state in ``source`` (or the one ``key`` names)."""
    obj = source.obj
    found = find_optimizer_states(obj)
    candidates = tuple(loc for loc, _ in found)
    if key is not None:
        node = resolve_key(obj, key, source.label)
        node = as_optimizer_state(node) or node
        inner = _one_level_down(node)
        if inner is not None:  # a wrapper (Magma's {"base": state, "magma_state": ...})
            key, node = join(key, inner[0]), inner[1]
        if not is_optimizer_state(node):
            raise NoOptimizerStateError(
                f"{option('key', key, shown=repr(key))} in {source.label} is "
                f"{describe_contents(node)}, not an "
                "optimizer state",
                hint=_candidates_hint(candidates),
            )
        # Spelled as find_optimizer_states spells it (so `optimizer_states.1` pairs with
        # lr_schedulers[1] like `optimizer_states[1]` does).
        location = next((loc for loc, st in found if st is node), key)
        state = node
    elif not found:
        _raise_if_malformed(source, obj)
        raise NoOptimizerStateError(
            f"{source.label} holds {describe_contents(obj)}; no optimizer state found",
            hint="an optimizer state is a dict with 'state' and 'param_groups' "
            "(optimizer.state_dict())",
        )
    elif len(found) > 1:
        listing = "; ".join(f"{loc} ({summarize_candidate(st)})" for loc, st in found)
        raise NoOptimizerStateError(
            f"{source.label} holds {len(found)} optimizer states: {listing}",
            hint=f"pick one with {option('key')}, e.g. "
            f"{option('key', candidates[0] or '.', shown=shlex.quote(candidates[0] or '.'))}",
        )
    else:
        location, state = found[0]
    sched, sched_loc = _find_scheduler(source, location)
    return Located(location, state, sched, sched_loc, candidates,
                   wrapper_entries(obj, location))


def _raise_if_malformed(source: Source, obj: Any) -> None:
    """A dict that is almost an optimizer state ('state' and per-param dicts, but no
    usable 'param_groups'; or 'param_groups' but no 'state') is a damaged one: say so,
    rather than 'no optimizer state found'. Bounded like find_optimizer_states."""
    queue: deque[tuple[str, Any, int]] = deque([("", obj, 0)])
    seen = 0
    while queue and seen < _MAX_NODES:
        loc, node, depth = queue.popleft()
        seen += 1
        if isinstance(node, dict):
            state, groups = node.get("state"), node.get("param_groups")
            where = f"at {loc!r}" if loc else "at the top level"
            if isinstance(state, dict) and groups is None and "param_groups" not in node \
                    and all(isinstance(v, dict) for v in list(state.values())[:64]):
                raise CheckpointError(
                    f"{source.label}: malformed optimizer state {where}: it has 'state' but "
                    "no 'param_groups'",
                    hint="optimizer.state_dict() always has both; the file was edited or "
                    "written by other code",
                )
            if "param_groups" in node and "state" in node:
                raise CheckpointError(
                    f"{source.label}: malformed optimizer state {where}: 'param_groups' must "
                    "be a list of dicts with a 'params' list, and 'state' a dict",
                )
        if depth < _MAX_DEPTH:
            for key, child in _children(node):
                if isinstance(child, (dict, list, tuple)):
                    queue.append((join(loc, key), child, depth + 1))


def _one_level_down(node: Any) -> tuple[Any, dict[str, Any]] | None:
    """The one optimizer state directly inside ``node`` (a wrapper optimizer's state_dict:
    pytorch-optimizer's Magma keeps its base optimizer's under ``base``), else None."""
    if not isinstance(node, dict) or is_optimizer_state(node):
        return None
    inner = [(k, st) for k, v in node.items() if (st := as_optimizer_state(v)) is not None]
    return inner[0] if len(inner) == 1 else None


def _candidates_hint(candidates: tuple[str, ...]) -> str | None:
    if not candidates:
        return "this checkpoint holds no optimizer state"
    shown = ", ".join(c or "(top level)" for c in candidates[:6])
    more = f" and {len(candidates) - 6} more" if len(candidates) > 6 else ""
    return f"optimizer states are at: {shown}{more}"


def _find_scheduler(source: Source, location: str) -> tuple[dict[str, Any] | None, str | None]:
    """The scheduler state that goes with the optimizer state at ``location``."""
    if "scheduler" in source.siblings and is_scheduler_state(source.siblings["scheduler"]):
        return source.siblings["scheduler"], source.sibling_files["scheduler"].name
    obj = source.obj
    if not isinstance(obj, dict):
        return None, None
    # Lightning: optimizer_states[i] pairs with lr_schedulers[i].
    keys = path_keys(location)
    if len(keys) == 2 and keys[0] == "optimizer_states" and type(keys[1]) is int:
        scheds = obj.get("lr_schedulers")
        i = keys[1]
        if isinstance(scheds, list) and 0 <= i < len(scheds) and is_scheduler_state(scheds[i]):
            return scheds[i], join("lr_schedulers", i)
        return None, None
    for k in _SCHEDULER_KEYS:
        v = obj.get(k)
        if is_scheduler_state(v):
            return v, k
        if isinstance(v, list) and len(v) == 1 and is_scheduler_state(v[0]):
            return v[0], join(k, 0)
    return None, None
