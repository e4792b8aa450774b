"""Errors the core raises, written for the person who called it.

The CLI turns any ``OptstateError`` into one ``Error: ...`` line (plus an optional
``Hint: ...``) and exit status 2. Nothing in the core prints.

Naming an option. The core is a library first, so a message that sends the reader to an
option names it by its Python parameter, through ``option()``, never by a flag:

    raise OutputExistsError(f"{p} already exists",
                            hint=f"pass {option('force', True)} to overwrite it")

reads ``pass force=True to overwrite it`` to a library user. The command line speaks
flags: every command runs inside ``speaking(words)`` (``cli/flags.py`` knows the flag of
each parameter), under which the same call reads ``pass --force to overwrite it``. The
forms, in Python words | the CLI's:

    option("match")                          match        | --match
    option("force", True)                    force=True   | --force
    option("stats", False)                   stats=False  | --no-stats
    option("key", key, shown=repr(key))      key='opt.v1' | --key 'opt.v1'
    option("lr", shown="VALUE")              lr=VALUE     | --lr VALUE
    option("values['lr']")                   values['lr'] | --lr
    option("values", shown="KEY=VALUE", python="{KEY: VALUE}")
                                             values={KEY: VALUE} | --set KEY=VALUE

``shown`` is the value's text in the CLI's words (default ``str(value)``), ``python`` in
Python's (default ``repr(value)``); either given without a value is a placeholder, and
``shown`` alone serves both. A name may be an item of a dict parameter (``values['lr']``:
``set_hyperparameters(values={"lr": ...})``, the CLI's ``--lr``).

Like gettext's current locale, the words are chosen when the text is built: after that a
message is plain text everywhere, in ``str(error)``, ``error.message``, and the warnings
and notes of a result (which name options too, and which ``--json`` prints as they are).
So build such texts when they are needed, never in a module-level constant. The choice is
one process-wide setting (not a context variable) so that threads a command starts
(prefetch) speak as it does.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Control characters (newlines, ESC of ANSI sequences, ...) and the C1 range: a message
# names files and keys taken from untrusted checkpoints, and must stay one plain line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """``text`` with ANSI sequences removed and other control characters escaped, so a
    hostile file name or key cannot break the one-line ``Error:`` or paint the terminal."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


class _Named:
    """The value of an option that is named, not set (``option("match")``)."""

    def __repr__(self) -> str:
        return "NAMED"


NAMED: Any = _Named()


@dataclass(frozen=True)
class Option:
    """An option a message refers to: the Python parameter ``name``, the ``value`` it is
    set to (``NAMED`` when only the option is named), and ``shown``, the value's text in
    the CLI's words, and ``python`` its text in Python's (either may be a placeholder
    such as ``VALUE`` when there is no value)."""

    name: str
    value: Any = NAMED
    shown: str | None = None
    python: str | None = None

    def python_words(self) -> str:
        """``force=True``, ``key='opt.v1'``, ``lr=VALUE``, or the bare name."""
        if self.python is not None:
            return f"{self.name}={self.python}"
        if self.value is NAMED:
            return self.name if self.shown is None else f"{self.name}={self.shown}"
        value = os.fspath(self.value) if isinstance(self.value, os.PathLike) else self.value
        return f"{self.name}={value!r}"


_words: Callable[[Option], str] = Option.python_words


def option(name: str, value: Any = NAMED, *, shown: str | None = None,
           python: str | None = None) -> str:
    """The option ``name`` (set to ``value``) in the words of whoever is listening: Python
    (``force=True``) unless a ``speaking`` block chose others (the CLI's ``--force``)."""
    return _words(Option(name, value, shown, python))


@contextlib.contextmanager
def speaking(words: Callable[[Option], str]) -> Iterator[None]:
    """Within the block, ``option()`` reads as ``words(Option)`` says (the CLI: flags)."""
    global _words
    previous, _words = _words, words
    try:
        yield
    finally:
        _words = previous


class OptstateError(Exception):
    """A problem the user can fix; ``str(err)`` is the one-line message."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(OptstateError):
    """A bad option, config file or hyperparameter."""


class CheckpointError(OptstateError):
    """A file that cannot be read as a checkpoint (missing, broken, refused)."""


class UnsafeCheckpointError(CheckpointError):
    """A file that would run code or that safe loading refuses."""


class NoOptimizerStateError(CheckpointError):
    """A readable checkpoint that holds no optimizer state (or not the one asked for)."""


class StateMismatchError(OptstateError):
    """A state that does not fit the optimizer it is loaded into."""


class OutputExistsError(OptstateError):
    """An output path exists and replacing it was not asked for (``force``)."""
