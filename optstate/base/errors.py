"""Errors the core raises, written for the person at the prompt.

The CLI turns any ``OptstateError`` into one ``Error: ...`` line (plus an optional
``Hint: ...``) and exit status 2. Nothing in the core prints.
"""

from __future__ import annotations

import re

# Control characters (newlines, ESC of ANSI sequences, ...) and the C1 range: a message
# names files and keys taken from untrusted checkpoints, and must stay one plain line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """``text`` with ANSI sequences removed and other control characters escaped, so a
    hostile file name or key cannot break the one-line ``Error:`` or paint the terminal."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


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
    """A bad flag, config file or hyperparameter."""


class CheckpointError(OptstateError):
    """A file that cannot be read as a checkpoint (missing, broken, refused)."""


class UnsafeCheckpointError(CheckpointError):
    """A file that would run code or that safe loading refuses."""


class NoOptimizerStateError(CheckpointError):
    """A readable checkpoint that holds no optimizer state (or not the one asked for)."""


class StateMismatchError(OptstateError):
    """A state that does not fit the optimizer it is loaded into."""


class OutputExistsError(OptstateError):
    """An output path exists and --force was not given."""
