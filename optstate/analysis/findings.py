"""The shape of a finding (an inspect warning or note) and the words for its places,
shared by ``suspicious.py`` and ``underflow.py``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from optstate.base.paths import join
from optstate.io.native_tensor import is_tensor
from optstate.state.nested import join_entry

SHOW = 6  # places listed in a message before "and N more"


def at(position: int, entry: str | None = None) -> str:
    """``state[3]`` / ``state[3].exp_avg``: a param's state by position (the key
    load_state_dict matches), in the one path syntax."""
    path = join("state", position)
    # a nested entry (state.nested) is a path: [0].exp_avg -> state[3][0].exp_avg
    return path if entry is None else join_entry(path, entry)


def places(items: list[str]) -> str:
    """``a, b, c``, or the first ``SHOW`` and ``and N more``."""
    if len(items) <= SHOW:
        return ", ".join(items)
    return ", ".join(items[:SHOW]) + f" and {len(items) - SHOW} more"


def finding(code: str, message: str, where: Iterable[str] = (),
            names: Iterable[str | None] | None = None) -> dict[str, Any]:
    """A warning or note: a stable code, one line for people, the places it concerns and,
    for places that are params' state (``state[3].exp_avg``), ``names``: each place's
    param name, parallel to ``where`` (None where the name is not known)."""
    out: dict[str, Any] = {"code": code, "message": message, "where": list(where)}
    if names is not None:
        out["names"] = list(names)
        if len(out["names"]) != len(out["where"]):
            raise ValueError(f"{code}: {len(out['names'])} names for "
                             f"{len(out['where'])} places")
    return out


def as_number(value: Any) -> float | None:
    """A number (or a 0-d tensor) as a float; None for anything else."""
    if is_tensor(value):
        if len(value.shape) != 0 or value.is_meta:
            return None
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
