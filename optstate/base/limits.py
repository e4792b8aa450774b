"""How much structure optstate reads from one checkpoint: the documented limits.

A checkpoint's cost must follow the bytes it really stores, never what it claims. A few
kilobytes of pickle can ask torch's (pure Python) unpickler to rebuild a million tensors
or a million parameter groups (a minute or more), a 4-byte storage can be viewed as 2**40
elements (terabytes once copied), and a DCP folder's metadata can name shapes and paths
of any size. Each limit below is checked before the work it bounds is done (the pickle
pre-scan in ``prescan.py``, the walk in ``walk.py``, DCP metadata in ``dcp.py``) and is
far above what a real optimizer state needs (a 70B model's Adam state holds ~2k tensors;
names are < 1 KiB; nesting is < 10 levels).

Raise one for a file you trust with the environment variable ``OPTSTATE_LIMITS``:

    OPTSTATE_LIMITS="tensors=2000000,items=5000000" optstate inspect big.pt

Values take ``k``/``M``/``G`` suffixes (powers of 1000) or ``KiB``/``MiB``/``GiB``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace

from optstate.base.errors import CheckpointError, ConfigError

ENV = "OPTSTATE_LIMITS"


@dataclass(frozen=True)
class Limits:
    """The limits, by the name ``OPTSTATE_LIMITS`` uses for each."""

    tensors: int = 500_000  # tensors one file or DCP folder holds
    items: int = 1_000_000  # list and dict entries (parameter groups, state entries, ...)
    string: int = 65_536  # bytes of one string (a key, a parameter name, a value)
    depth: int = 100  # levels of nesting
    nodes: int = 10_000_000  # objects when the structure is unfolded as a tree
    expand: int = 256 * 2**20  # bytes that copying views (or DCP chunks) may add to what is stored


# What each limit counts, for messages and the README table.
DESCRIPTIONS = {
    "tensors": "tensors in one checkpoint",
    "items": "entries of all lists and dicts together (parameter groups, state entries, ...)",
    "string": "bytes in one string (a key, a name, a value)",
    "depth": "levels of nesting",
    "nodes": "objects when shared references are unfolded as a tree",
    "expand": "bytes that copying expanded views or DCP chunks may add to what the file stores",
}

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
           "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_VALUE = re.compile(r"\s*(\d+)\s*([a-z]*)\s*", re.I)


def parse(text: str) -> Limits:
    """``name=value,name=value`` (the format of ``OPTSTATE_LIMITS``) over the defaults."""
    known = {f.name for f in fields(Limits)}
    changes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        m = _VALUE.fullmatch(value)
        if not sep or name not in known or not m or m.group(2).lower() not in _SUFFIX:
            raise ConfigError(
                f"{ENV} has {part!r}; expected name=number with name one of "
                f"{', '.join(sorted(known))}",
                hint=f'e.g. {ENV}="tensors=2000000,string=1MiB"',
            )
        changes[name] = int(m.group(1)) * _SUFFIX[m.group(2).lower()]
    return replace(Limits(), **changes)


def current() -> Limits:
    """The limits in force: the defaults, with ``OPTSTATE_LIMITS`` applied."""
    return parse(os.environ.get(ENV, ""))


def human(name: str, value: int) -> str:
    if name in ("expand",):
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= size and value % size == 0:
                return f"{value // size}{unit}"
    return str(value)


def size_text(n: int) -> str:
    """Bytes for a message: exact below 1 MiB, else in MiB / GiB / TiB."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:,} bytes"


class LimitError(CheckpointError):
    """A checkpoint beyond one of the documented limits."""

    def __init__(self, where: str, what: str, name: str, value: int) -> None:
        super().__init__(
            f"{where} {what} (limit {name}={human(name, value)})",
            hint=f'if you trust this file, raise the limit: {ENV}="{name}=N" '
            "(see the README's Security section)",
        )
        self.limit = name
