"""The one path syntax: where something is inside a loaded checkpoint.

Every location optstate prints (``found at``, ``--json`` locations, diff and set paths,
warnings, error messages) is built here, and every path a user gives (``--key``) is read
here, so what is printed is always what ``--key`` selects.

A path is a sequence of keys, written from the top level down:

- a string key that is an ASCII identifier (``[A-Za-z_][A-Za-z0-9_]*``) is written as is,
  after a dot except at the start: ``trainer.optimizer``, ``param_groups[0].lr``;
- an int (a list or tuple index, or an int dict key such as the ``state`` dict's) is
  written in brackets: ``optimizer_states[1]``, ``state[0]``;
- any other string (dots, brackets, quotes, spaces, digits only, empty, non-ASCII) is
  written in brackets as a double-quoted string with backslash escapes:
  ``run["opt.v1"]``, ``[""]["a.b"][0]``, ``state["0"]`` (the string "0", not the int 0);
- any other key (bool, None, a float, a tuple) is written in brackets as its Python
  literal: ``[True]``, ``[None]``, ``[(1, 2)]``.

The empty path is the top level (``.`` is accepted for it too). Reading is lenient where
that cannot pick the wrong object: single quotes work like double quotes, and an
unbracketed name may hold other characters (``lightning-state.opt``); an unbracketed
number (``optimizer_states.1``) selects the string key "1" when there is one, else
index or int key 1.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from optstate.base.errors import ConfigError

TOP_LEVEL = "(top level)"

# The --key help text every command shows (one place, like the syntax itself).
KEY_HELP = (
    "Where the optimizer state is inside the file, as inspect prints it: names joined by "
    "dots (trainer.optimizer), [N] for a list index or an int key (optimizer_states[1]), "
    "[\"...\"] for any other key (run[\"opt.v1\"], [\"\"] for the empty string)."
)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"-?[0-9]+")
_BARE = re.compile(r"[^.\[\]\"']+")


@dataclass(frozen=True)
class Step:
    """One key of a parsed path. ``bare`` marks an unbracketed name that is not an
    identifier (``1`` in ``optimizer_states.1``): it may also stand for an int."""

    key: Any
    bare: bool = False


# --------------------------------------------------------------------------- printing


_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def format_key(key: Any, first: bool = False) -> str:
    """One key as a path segment (``.lr``, ``[0]``, ``["opt.v1"]``); ``first`` for the
    segment that starts a path (no leading dot)."""
    if isinstance(key, str):
        if _IDENT.fullmatch(key):
            return key if first else "." + key
        return f"[{_quote(key)}]"
    if isinstance(key, int) and not isinstance(key, bool):
        return f"[{key}]"
    return f"[{key!r}]"


def join(path: str, key: Any) -> str:
    """``path`` (already printed) followed by ``key``."""
    return path + format_key(key, first=not path)


def bracket(path: str, key: Any) -> str:
    """``path`` followed by ``key`` always in brackets: diff's ``state["fc.weight"]``, a
    parameter matched by name rather than a key of the ``state`` dict."""
    if isinstance(key, str):
        return f"{path}[{_quote(key)}]"
    return path + format_key(key)


def format_path(keys: Iterable[Any]) -> str:
    """A sequence of keys as one path; ``""`` for the top level."""
    text = ""
    for k in keys:
        text = join(text, k)
    return text


def display(path: str) -> str:
    """A path for a message: ``(top level)`` for the empty one."""
    return path or TOP_LEVEL


# --------------------------------------------------------------------------- reading


class _NonFinite(ast.NodeTransformer):
    """``inf`` and ``nan``, which repr prints for float keys and literal_eval cannot read."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in ("inf", "nan"):
            return ast.copy_location(ast.Constant(float(node.id)), node)
        return node


def _literal(token: str, path: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "invalid escape sequence" in a typed key
            tree = _NonFinite().visit(ast.parse(token.strip(), mode="eval"))
            return ast.literal_eval(tree)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise ConfigError(f"path {path!r}: cannot read the key [{token}]",
                          hint=_SYNTAX_HINT) from None


_SYNTAX_HINT = ('names join with dots (a.b), indexes and int keys go in brackets ([0]), '
                'other keys in quotes (a["b.c"])')


def _bracket_end(text: str, start: int, path: str) -> int:
    """Index of the ``]`` closing the bracket opened at ``start`` (quotes and nested
    brackets or parentheses inside a literal are skipped)."""
    depth, i, quote = 0, start + 1, None
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")}":
            depth -= 1
        elif ch == "]":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise ConfigError(f"path {path!r}: '[' at position {start} is never closed",
                      hint=_SYNTAX_HINT)


def parse_path(path: str) -> tuple[Step, ...]:
    """The keys of a printed path (the inverse of ``format_path``); ConfigError when it
    does not read as a path."""
    if path in ("", "."):
        return ()
    steps: list[Step] = []
    i, n = 0, len(path)
    while i < n:
        ch = path[i]
        if ch == "[":
            end = _bracket_end(path, i, path)
            token = path[i + 1:end]
            if _INT.fullmatch(token):
                steps.append(Step(int(token)))
            else:
                steps.append(Step(_literal(token, path)))
            i = end + 1
            continue
        if ch == ".":
            if not steps or i + 1 >= n or path[i + 1] in ".[":
                raise ConfigError(f"path {path!r}: a name is missing at position {i}",
                                  hint=_SYNTAX_HINT)
            i += 1
        elif steps:
            raise ConfigError(f"path {path!r}: expected '.' or '[' at position {i}",
                              hint=_SYNTAX_HINT)
        m = _BARE.match(path, i)
        if m is None:
            raise ConfigError(f"path {path!r}: unexpected {path[i]!r} at position {i}",
                              hint=_SYNTAX_HINT)
        name = m.group(0)
        steps.append(Step(name, bare=not _IDENT.fullmatch(name)))
        i = m.end()
    return tuple(steps)


def path_keys(path: str) -> tuple[Any, ...]:
    """The keys of a printed path, as plain values."""
    return tuple(s.key for s in parse_path(path))


class PathNotFound(LookupError):
    """``follow`` could not go on at ``steps[index]``."""

    def __init__(self, index: int, segment: str) -> None:
        super().__init__(segment)
        self.index = index
        self.segment = segment


def step_into(node: Any, step: Step) -> Any:
    """``node[step.key]`` as the path means it; KeyError when there is nothing there."""
    key = step.key
    if isinstance(node, dict):
        if key in node:
            return node[key]
        if step.bare and _INT.fullmatch(key) and int(key) in node:
            return node[int(key)]
        if _has_nan(key):  # unequal to itself: matched by its printed form
            for k in node:
                if _has_nan(k) and format_key(k) == format_key(key):
                    return node[k]
    elif isinstance(node, (list, tuple)):
        if step.bare and _INT.fullmatch(key):
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool) and -len(node) <= key < len(node):
            return node[key]
    raise KeyError(key)


def _has_nan(key: Any) -> bool:
    if isinstance(key, float):
        return key != key
    return isinstance(key, tuple) and any(_has_nan(k) for k in key)


def follow(obj: Any, path: str) -> Any:
    """The object ``path`` selects in ``obj``; PathNotFound naming the first segment
    that selects nothing, ConfigError when ``path`` is not a path."""
    node = obj
    for i, step in enumerate(parse_path(path)):
        try:
            node = step_into(node, step)
        except (KeyError, TypeError):
            raise PathNotFound(i, format_key(step.key, first=i == 0)) from None
    return node
