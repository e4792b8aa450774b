"""The console script's start-up and Python's cyclic garbage collector.

Start-up is mostly imports (typer, rich, then torch's ~1.4 s), which make long-lived
objects only; with the cyclic collector on, each full collection during them rescans
everything imported so far (~0.15 s of ``import torch`` here). The console script
(``optstate/_entry.py``) imports with the collector off (``pause_collector``);
``resume_collector()``, called as a command's body starts (``cli.errors_to_exit``),
imports torch, freezes what start-up made and turns the collector back on. A library
caller never pauses it, so for them ``resume_collector`` only imports torch.
"""

from __future__ import annotations

import gc
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


def resume_collector() -> None:
    """Import torch (SIGINT deferred), then freeze and resume the collector if start-up
    paused it."""
    global _collector_paused
    # torch's imports swallow or mangle a KeyboardInterrupt: deferred
    with interrupt.deferred(), warnings.catch_warnings():
        # numpy is optional (only --plot uses it, through matplotlib); torch warns at
        # import when it is missing, about its numpy interop, which optstate never uses
        warnings.filterwarnings("ignore", "Failed to initialize NumPy", UserWarning)
        pause_at("import_torch")
        import torch  # noqa: F401 - the import every command makes first
    if _collector_paused:
        gc.freeze()  # start-up objects: never rescanned
        gc.enable()
        _collector_paused = False


def resume_unused_collector() -> None:
    """Turn the collector back on when no command's body ran (help, a usage error)."""
    global _collector_paused
    if _collector_paused:
        gc.enable()
        _collector_paused = False
