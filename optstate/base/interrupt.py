"""Ctrl-C as one pending-interrupt flag, so that it always ends as ``Interrupted`` + 130.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives. At
start-up that is inside an import (typer, rich, torch: ~1.5 s), where library code
catches it (torch's optional ``import numpy`` swallows it and the run completes) or
leaves a half-imported module behind that fails later as another error
(``ImportError``, ``RecursionError``); inside a write it would leave a half-written file.

So the console script routes SIGINT here (``install()``): the handler always records the
interrupt (``pending()``); inside a ``deferred()`` block it only records it, and the
outermost block raises ``KeyboardInterrupt`` as it ends (``check()``); elsewhere it
raises at once, as Python's own handler does. ``cli.errors_to_exit`` reports any failure
that happens while an interrupt is pending as the interrupt, not as the error it caused;
whoever reports it first calls ``announce()`` (``Interrupted.`` once, the exit status),
which, like ``hold()`` on a normal exit, holds any later SIGINT until the process ends.

Writers (``optstate.io.atomic``) wrap their write-then-publish in ``deferred()`` too; a
caller that never ran ``install()`` (a library user, ``CliRunner``) still gets the
deferral: ``deferred()`` routes SIGINT here for its duration when it can (main thread,
Python's default handler in place) and puts the previous handler back afterwards.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MESSAGE = "Interrupted."  # what the command line prints for it, on stderr
EXIT_CODE = 130  # 128 + SIGINT, as a shell reports a process that SIGINT ended

_pending = False
_announced = False
_depth = 0  # deferred() blocks entered and not yet left (any thread)
# install() ran: this process is the command line and ends with this interrupt, so the
# flag stays set once raised (errors_to_exit reads it). A library caller's process goes
# on after its KeyboardInterrupt: there, raising it clears the flag.
_installed = False


def _raise() -> None:
    global _pending
    if not _installed:
        _pending = False
    raise KeyboardInterrupt


def _on_sigint(signum: int, frame: Any) -> None:
    global _pending
    _pending = True
    if _depth == 0:
        _raise()


def _can_route() -> bool:
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)


def _early_handler() -> Any:
    """``optstate/__init__.py``'s handler, when the command line's import installed it
    (a SIGINT sets its ``arrived``, nothing raised, until ``install()`` takes over). Known
    by its name: this module does not import the top-level package (tests/test_layers.py)."""
    handler = signal.getsignal(signal.SIGINT)
    named = (getattr(handler, "__module__", None), getattr(handler, "__name__", None))
    return handler if named == ("optstate", "_sigint_before_entry") else None


def install() -> None:
    """Route SIGINT through this module for the rest of the process (the console script).
    A SIGINT that the parent set to be ignored (``nohup``, a background job) stays so."""
    global _installed, _pending
    early = _early_handler()
    if early is not None or _can_route():
        signal.signal(signal.SIGINT, _on_sigint)
        _installed = True
        if early is not None:
            _pending = _pending or early.arrived  # raised by the next safe point


def hold() -> None:
    """Defer SIGINT for the rest of the process: it is exiting (its work is done, or it
    is reporting the interrupt already), and a late signal must not raise mid-exit."""
    global _depth
    if _installed:  # a library caller's process goes on: never hold its SIGINT
        _depth += 1


def announce() -> int:
    """Print ``Interrupted.`` to stderr (once per process, whoever reports it first) and
    hold further SIGINTs; the exit status to end with."""
    global _announced, _pending
    hold()
    if not _announced:
        import sys

        print(MESSAGE, file=sys.stderr)
    if _installed:
        _announced = True
    else:  # a library caller's process (CliRunner) goes on: the interrupt is over
        _pending = False
    return EXIT_CODE


def pending() -> bool:
    """Whether a SIGINT has arrived (raised or still deferred)."""
    early = None if _pending or _installed else _early_handler()
    if early is not None:
        return bool(early.arrived)  # before install(): the pause hooks ask
    return _pending


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a SIGINT has arrived: a safe point to stop at."""
    if _pending:
        _raise()


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT until the block ends, then raise ``KeyboardInterrupt`` if one came.
    An exception from the block propagates as it is (``pending()`` tells the caller
    whether an interrupt came too)."""
    global _depth
    routed = _can_route()
    previous = signal.signal(signal.SIGINT, _on_sigint) if routed else None
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if routed:
            signal.signal(signal.SIGINT, previous)
    if _depth == 0:
        check()
