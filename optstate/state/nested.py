"""Per-parameter state nested in dicts or objects, flattened into entries named by path.

Most optimizers keep one tensor per entry (``state[3]["exp_avg"]``). Others nest:

- heavyball keeps each parameter's state in a dict per view of the parameter (``state[0]``
  is ``{0: {"exp_avg_exp_avg_6": ..., "is_initialized": {0, 3}, "scale_by_psgd_Q_4":
  [...]}}``; with ``split`` one parameter has several views, 0, 1, ...);
- pytorch-optimizer's DASH keeps a list of dicts per param (``blocks[0].exp_avg_sq``);
- pytorch-optimizer's ScalableShampoo keeps Python objects (``PreConditioner`` with
  ``statistics`` and ``pre_conditioners`` lists, ``SGDGraft`` with ``momentum``), decoded
  inertly by ``io.inert`` (``Inert``: their fields, never their code).

``unpack_nested`` (one of ``state.packed._UNPACKERS``) replaces such an entry by its
leaves, each an entry named by its path below the param's state in the one path syntax
(``base.paths``): ``[0].exp_avg_exp_avg_6``, ``[0].is_initialized``,
``pre_conditioner.statistics``, ``graft.momentum``, so ``state[0][0].exp_avg_exp_avg_6`` is
the place in the file (``analysis.findings.at`` joins them so). The view index ``[0]`` stays
in the name even when there is only one view: it is where the tensor is, and a plain
``step`` of torch.optim is not the same thing as heavyball's ``[0].step``.

Leaves: a tensor; a list or tuple (kept whole: a list of tensors, heavyball's
``[(shape, tensor), ...]``; reports show lists item by item); any other plain value of a
dict (a set, an int, None) as it is. Of an object only the fields that hold tensors become
entries (its other fields are its settings, kept in ``ParamView.raw_state``); an object
whose fields hold no tensor is one entry showing its class. ``stored[name]`` =
``{"format": "nested", "from": [name]}`` for every entry that came out of a dict or an
object (and ``"object"``: the class of the object it is a field of).
"""

from __future__ import annotations

from typing import Any

from optstate.base.paths import format_path
from optstate.io.inert import Inert
from optstate.io.native_tensor import is_tensor

MAX_DEPTH = 16  # deeper nesting is left as it is (walk already bounded the tree)


def _holds_tensor(value: Any, depth: int = 0) -> bool:
    if is_tensor(value):
        return True
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v, depth + 1) for v in value.values())
    if isinstance(value, Inert):
        return any(_holds_tensor(v, depth + 1) for v in value.state.values())
    return False


def is_nested(value: Any) -> bool:
    """A dict, an object, or a list holding either (pytorch-optimizer's DASH keeps a list of
    dicts per param: ``blocks``); a list of tensors is a leaf."""
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, (dict, Inert)) for v in value)
    return isinstance(value, (dict, Inert))


def unpack_nested(entries: dict[Any, Any],
                  stored: dict[str, dict[str, Any]]) -> dict[Any, Any]:
    """Each dict- or object-valued entry -> its leaves (module docstring)."""
    if not any(is_nested(v) for v in entries.values()):
        return entries
    out: dict[Any, Any] = {}
    for k, v in entries.items():
        if not is_nested(v):
            out[k] = v
            continue
        for path, leaf, cls in _leaves((k,), v, None, 0):
            name = format_path(path)
            out[name] = leaf
            d: dict[str, Any] = {"format": "nested", "from": [name]}
            if cls is not None:
                d["object"] = cls
            stored[name] = d
    return out


def _leaves(path: tuple[Any, ...], value: Any, cls: str | None,
            depth: int) -> list[tuple[tuple[Any, ...], Any, str | None]]:
    if depth > MAX_DEPTH or not is_nested(value):
        return [(path, value, cls)]
    if isinstance(value, Inert):
        fields = [(k, v) for k, v in value.state.items() if _holds_tensor(v)]
        if not fields:
            return [(path, f"<{value.qualname}>", value.qualname)]
        out = []
        for k, v in fields:
            out += _leaves(path + (k,), v, value.qualname, depth + 1)
        return out
    if not value:
        return [(path, value, cls)]
    out = []
    for k, v in (enumerate(value) if isinstance(value, (list, tuple)) else value.items()):
        out += _leaves(path + (k,), v, cls, depth + 1)
    return out


def is_path_name(entry: Any) -> bool:
    """Whether an entry name is a path of several keys (``[0].exp_avg_exp_avg_6``,
    ``graft.momentum``): a name ``unpack_nested`` gave, to be joined to the param's place
    as a path (``state[0][0].exp_avg_exp_avg_6``). A raw entry key that happens to read as
    such a path (``"a.b"``) is taken as one too: no optimizer known names entries so."""
    if not isinstance(entry, str) or not entry or (entry[0] != "[" and "." not in entry):
        return False
    from optstate.base.paths import path_keys

    try:
        keys = path_keys(entry)
    except Exception:  # noqa: BLE001 - not a path: a plain name
        return False
    return len(keys) > 1 and format_path(keys) == entry


def join_entry(path: str, entry: Any) -> str:
    """A param's place joined with one of its entries: ``state[3]`` + ``exp_avg`` ->
    ``state[3].exp_avg``; a nested entry's name is a path: ``state[3]`` + ``[0].exp_avg``
    -> ``state[3][0].exp_avg`` (``is_path_name``)."""
    from optstate.base.paths import join

    if is_path_name(entry):
        return path + entry if entry.startswith("[") else f"{path}.{entry}"
    return join(path, entry)
