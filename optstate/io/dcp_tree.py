"""A DCP folder's flattened keys put back into the nested state torch.save would have given.

DCP stores a state dict flattened: lists become dicts keyed 0..n-1, an optimizer's positional
state keys become strings, and empty containers vanish. Both readers of a DCP folder (torch's,
``dcp.py``, and the one without torch, ``native_dcp.py``) rebuild the tree with these two
functions; they touch only plain containers, never a tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from optstate.base.errors import CheckpointError


def rebuild_tree(keys: Iterable[str], values: dict[str, Any],
                 path_of: Callable[[str], tuple[Any, ...]], value_of: Callable[[str], Any],
                 depth: int, where: str) -> dict[Any, Any]:
    """The nested state from DCP's flat ``keys``: each key's value (``value_of``: a tensor,
    or one of the non-tensor ``values`` loaded whole, which are not entered) put at its
    path, then the lists and positional keys put back."""
    loaded = {id(v) for v in values.values() if isinstance(v, (dict, list, tuple))}
    root: dict[Any, Any] = {}
    for key in keys:
        value = value_of(key)
        node = root
        path = path_of(key)
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    try:
        return restore_positions(lists_back(root, skip=loaded), loaded)
    except RecursionError:  # only with the depth limit raised past Python's stack
        raise CheckpointError(f"{where} nests its keys too deeply to read "
                              f"(limit depth={depth})") from None


def lists_back(node: Any, parent: dict[Any, Any] | None = None, key: Any = None,
               skip: set[int] = frozenset()) -> Any:  # type: ignore[assignment]
    """Turn dicts keyed exactly 0..n-1 back into lists (param_groups), except an optimizer's
    ``state``, which torch keys by position in a dict. Values loaded whole (``skip``: by
    id) came back with their types and are left alone."""
    if not isinstance(node, dict) or id(node) in skip:
        return node
    for k in list(node):
        node[k] = lists_back(node[k], node, k, skip)
    is_opt_state = key == "state" and parent is not None and "param_groups" in parent
    if node and not is_opt_state and list(node) == list(range(len(node))):
        return [node[i] for i in range(len(node))]
    return node


def restore_positions(node: Any, skip: set[int] = frozenset()) -> Any:  # type: ignore[assignment]
    """DCP flattening writes an optimizer's positional state keys (0, 1, ...) as strings;
    the ``params`` lists (stored whole, types intact) say which keys were integers. And it
    drops empty containers, so an optimizer that has not stepped loses ``state: {}``.
    Values loaded whole (``skip``) are not entered."""
    if id(node) in skip:
        return node
    if isinstance(node, dict):
        for k in list(node):
            node[k] = restore_positions(node[k], skip)
        state, groups = node.get("state"), node.get("param_groups")
        if state is None and "state" not in node and isinstance(groups, list) and groups and all(
            isinstance(g, dict) and "params" in g for g in groups
        ):
            # DCP stores no empty containers: a fresh optimizer's empty state vanishes.
            node = {"state": {}, **node}
        elif isinstance(state, dict) and isinstance(groups, list):
            ints = {str(p): p for g in groups if isinstance(g, dict)
                    for p in (g.get("params") or []) if isinstance(p, int)}
            if ints and all(isinstance(k, str) and k in ints for k in state):
                node["state"] = {ints[k]: v for k, v in state.items()}
    elif isinstance(node, list):
        return [restore_positions(v, skip) for v in node]
    return node
