"""stdout is the answer: while a command works, anything else written there goes to stderr.

Libraries print while optstate loads or builds things: DeepSpeed logs through a
``logging.StreamHandler(sys.stdout)`` made at its import, a class run by ``--unsafe``
can ``print``, a C extension can write to file descriptor 1. Any of it would corrupt
``--json`` (and mix into a table). ``guard()`` is entered by every command's body
(``cli.errors_to_exit``): meanwhile ``sys.stdout`` is ``sys.stderr`` and file descriptor
1 is a copy of descriptor 2, so all of that lands on stderr; the command's answer is
written to ``answer()``: the real stdout (a stream on a saved copy of descriptor 1 while
guarded). On the way out, what was buffered for the old stdout is flushed while
descriptor 1 still points to stderr, then everything is put back.

When ``sys.stdout`` is not descriptor 1 (a test's ``CliRunner`` swaps in its own buffer),
only ``sys.stdout`` is swapped: descriptor 1 is not the answer's.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

_answers: list[TextIO] = []  # innermost guard last


def answer() -> TextIO:
    """Where a command's answer (its JSON, its table) goes: the real stdout."""
    return _answers[-1] if _answers else sys.stdout


def _fd(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return None


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """While active, stdout (``sys.stdout`` and descriptor 1) goes to stderr; see the
    module docstring. Nested guards keep the outermost answer stream."""
    if _answers or sys.stdout is None or sys.stderr is None:
        yield
        return
    real = sys.stdout
    with contextlib.suppress(Exception):
        real.flush()
    saved: int | None = None
    out: TextIO = real
    if _fd(real) == 1 and _fd(sys.stderr) is not None:
        try:
            saved = os.dup(1)
            os.dup2(_fd(sys.stderr), 1)
        except OSError:  # stdout or stderr closed: nothing to move
            if saved is not None:
                os.close(saved)
            saved = None
        else:
            line = bool(getattr(real, "line_buffering", False))
            out = open(saved, "w", buffering=1 if line else -1, closefd=False,  # noqa: SIM115
                       encoding=getattr(real, "encoding", None) or "utf-8",
                       errors=getattr(real, "errors", None) or "strict")
    sys.stdout = sys.stderr
    _answers.append(out)
    try:
        yield
    finally:
        _answers.pop()
        for s in (out, real, sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()  # the old stdout's buffer goes to stderr: fd 1 still points there
        sys.stdout = real
        if saved is not None:
            with contextlib.suppress(Exception):
                out.close()
            os.dup2(saved, 1)
            os.close(saved)
