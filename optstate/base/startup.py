"""The console script's start-up and Python's cyclic garbage collector.

Start-up is mostly imports (typer, rich, then torch's ~1.4 s), which make long-lived
objects only; with the cyclic collector on, each full collection during them rescans
everything imported so far (~0.15 s of ``import torch`` here). The console script
(``optstate/_entry.py``) imports with the collector off (``pause_collector``);
``resume_collector()``, called as a command's body starts (``cli.errors_to_exit``),
imports torch, freezes what start-up made and turns the collector back on. A library
caller never pauses it, so for them ``resume_collector`` only imports torch.

inspect, diff and timeline read torch.save zip files and DCP folders without torch
(issue #22): their bodies start with ``resume_collector(torch=False)``, and the code that
falls back to torch (an old file, ``--unsafe``, ``--workers``) imports it through
``import_torch()``, with SIGINT deferred as here.
"""

from __future__ import annotations

import gc
import sys
import warnings

from optstate.base import interrupt
from optstate.base.testhook import pause_at

_collector_paused = False


def pause_collector() -> None:
    """Turn the cyclic collector off for start-up's imports (if it is on)."""
    global _collector_paused
    if gc.isenabled():
        gc.disable()
        _collector_paused = True


def resume_collector(*, torch: bool = True) -> None:
    """Import torch (SIGINT deferred; ``torch=False``: not yet), then freeze and resume
    the collector if start-up paused it."""
    global _collector_paused
    with interrupt.deferred():
        pause_at("import_torch")  # test hook: reached also when torch is not imported
        if torch:
            import_torch()
    if _collector_paused:
        gc.freeze()  # start-up objects: never rescanned
        gc.enable()
        _collector_paused = False


def import_torch() -> None:
    """Import torch with SIGINT deferred (a no-op once imported): its imports swallow
    or mangle a KeyboardInterrupt, which is raised when they end instead."""
    if "torch" in sys.modules:
        return
    collecting = gc.isenabled()
    gc.disable()  # its imports make long-lived objects only (see above)
    try:
        with interrupt.deferred(), warnings.catch_warnings():
            # numpy is optional (only --plot uses it, through matplotlib); torch warns at
            # import when it is missing, about its numpy interop, which optstate never uses
            warnings.filterwarnings("ignore", "Failed to initialize NumPy", UserWarning)
            import torch  # noqa: F401
    finally:
        if collecting:
            gc.enable()


def resume_unused_collector() -> None:
    """Turn the collector back on when no command's body ran (help, a usage error)."""
    global _collector_paused
    if _collector_paused:
        gc.enable()
        _collector_paused = False
