"""A derived run config (``analysis.config_from.ConfigFrom``) as TOML, with its comments.

A small writer (no new dependency): strings, bools, ints, floats (TOML has inf and nan),
lists (tuples as lists), tables and arrays of tables; ``tomllib`` reads it back.
"""

from __future__ import annotations

import math
import re
import textwrap
from typing import Any

from optstate.analysis.config_from import ConfigFrom

COMMENT_WIDTH = 88  # comments wrap here; values never do (a TOML line is one value)


def config_toml(derived: ConfigFrom) -> str:
    return to_toml(derived.data, derived.header, derived.notes)



_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else _string(k)


def _string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    """One TOML value: strings, bools, ints, floats (inf, -inf, nan), lists."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"TOML cannot hold {type(v).__name__}")


def _comment(text: str) -> list[str]:
    """Comment lines; control characters (TOML allows none in a comment but tab) shown
    escaped, as a file name from a checkpoint may hold them."""
    text = "".join(ch if ch in "\n\t" or (ord(ch) >= 0x20 and ord(ch) != 0x7F)
                   else f"\\x{ord(ch):02x}" for ch in text)
    out = []
    for line in text.split("\n"):
        out += ["# " + part for part in textwrap.wrap(
            line, COMMENT_WIDTH - 2, subsequent_indent="  ", break_long_words=False,
            break_on_hyphens=False) or [""]]
    return out


def to_toml(data: dict[str, Any], header: list[str] | None = None,
            notes: dict[str, list[str]] | None = None) -> str:
    """``data`` (plain values, dicts as tables, lists of dicts as arrays of tables) as
    TOML; ``header`` and ``notes[table]`` as comments ("groups.0" for the first
    [[groups]])."""
    notes = notes or {}
    lines = [c for h in header or [] for c in _comment(h)]
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in data.items()
              if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
    if lines:
        lines.append("")
    for k, v in data.items():
        if k not in tables and k not in arrays:
            lines.append(f"{_key(k)} = {toml_value(v)}")
    for k, v in tables.items():
        lines += ["", f"[{_key(k)}]"] + [c for n in notes.get(k, []) for c in _comment(n)]
        lines += [f"{_key(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    for k, v in arrays.items():
        for i, item in enumerate(v):
            lines += ["", f"[[{_key(k)}]]"]
            lines += [c for n in notes.get(f"{k}.{i}", []) for c in _comment(n)]
            lines += [f"{_key(kk)} = {toml_value(vv)}" for kk, vv in item.items()]
    for k, ns in notes.items():  # notes of a table that was left out (no [scheduler])
        if k not in tables and "." not in k and ns:
            lines += [""] + [c for n in ns for c in _comment(f"[{k}] {n}")]
    return "\n".join(lines) + "\n"
