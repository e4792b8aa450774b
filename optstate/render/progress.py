"""Progress on the terminal for any operation that runs longer than about a second.

One mechanism for every command. The core knows nothing of it: it takes a plain
callback, ``on_progress(done, total)`` (tensors read, bytes compared, steps taken), and
calls it as it goes. ``Progress`` is such a callback and a context manager around the
operation::

    with Progress("comparing", enabled=progress_wanted(json=json_)) as on_progress:
        diff_files(a, b, on_progress=on_progress)  # None when not wanted

Whether it shows is decided by elapsed time, never by the size of the job: nothing is
drawn during the first ``after`` seconds (1 s; ``OPTSTATE_PROGRESS_AFTER`` overrides),
so quick runs cost one clock read per callback and print nothing; past that, a bar on
stderr (a spinner while no count is known, as during a long load that calls nothing),
redrawn at most ten times a second, removed when the operation ends. Only where stderr
is a terminal, never with ``--json`` or ``--quiet``: stdout stays the answer.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

AFTER = 1.0  # seconds of silence before progress shows
PER_SECOND = 10  # redraws at most


def progress_wanted(*, json: bool = False, quiet: bool = False, stream: Any = None) -> bool:
    """Progress only for a person watching: stderr a terminal, no --json / --quiet."""
    stream = sys.stderr if stream is None else stream
    if json or quiet:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def delay_from_env() -> float:
    """``OPTSTATE_PROGRESS_AFTER`` (seconds, >= 0) or the default ``AFTER``."""
    text = os.environ.get("OPTSTATE_PROGRESS_AFTER", "")
    try:
        value = float(text)
    except ValueError:
        return AFTER
    return value if value >= 0 else AFTER


class Progress:
    """A ``(done, total)`` callback that draws progress once ``after`` seconds have passed.

    ``clock`` and ``make_bar`` are for tests (a fake clock; a recorder instead of rich).
    ``watch``: also start a spinner from a timer thread when the operation calls nothing
    for ``after`` seconds (a long load, a torch save)."""

    def __init__(self, label: str, *, enabled: bool, after: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 make_bar: Callable[[], Any] | None = None, watch: bool = True) -> None:
        self.label = label
        self.enabled = enabled
        self.after = delay_from_env() if after is None else after
        self.clock = clock
        self.make_bar = make_bar or _rich_bar
        self.watch = watch and enabled
        self.bar: Any = None
        self.task: Any = None
        self.done = 0
        self.total: int | None = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._due = clock() + self.after  # when to look next (show, then redraw)
        self._closed = False

    # -- the callback ---------------------------------------------------------------
    def __call__(self, done: int, total: int | None = None, label: str | None = None
                 ) -> None:
        """``done`` of ``total`` (None: unknown); ``label`` renames what is being done."""
        self.done, self.total = done, total
        if label is not None:
            self.label = label
        if not self.enabled:
            return
        now = self.clock()
        if now < self._due:  # the common case: one clock read and a comparison
            return
        self._due = now + 1 / PER_SECOND
        with self._lock:
            if self._closed:
                return
            if self.bar is None:
                self._show()
            self.bar.update(self.task, completed=self.done, total=self.total,
                            description=self.label)

    def steps(self, total: int) -> Callable[[int], None]:
        """A per-step callback ``on_step(step)`` for a run of ``total`` steps that may
        start after step 0 (a resumed run counts from its first step)."""
        first: list[int] = []

        def on_step(step: int) -> None:
            if not first:
                first.append(step - 1)
            self(step - first[0], total)

        return on_step

    # -- the operation ----------------------------------------------------------------
    def __enter__(self) -> Progress | None:
        """Starts the clock; gives the callback, or None when progress is not wanted (so
        the core skips whatever work only progress needs)."""
        self.start()
        return self if self.enabled else None

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the clock (``after`` seconds from now, progress may show)."""
        self._due = self.clock() + self.after
        if self.watch:
            self._timer = threading.Timer(self.after, self._spin)
            self._timer.daemon = True
            self._timer.start()

    def close(self) -> None:
        """Stop: cancel the timer, draw the last count and remove the bar."""
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._closed = True
            if self.bar is not None:
                self.bar.update(self.task, completed=self.done, total=self.total)
                self.bar.stop()

    def _spin(self) -> None:
        with self._lock:
            if self.bar is None and not self._closed:
                self._show()

    def _show(self) -> None:  # under the lock
        self.bar = self.make_bar()
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=self.total, completed=self.done)


def _rich_bar() -> Any:
    from rich.progress import (
        BarColumn,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import Progress as RichProgress

    from optstate.render.terminal_safe import safe_console

    console = safe_console(stderr=True)
    return RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        TaskProgressColumn(), TimeElapsedColumn(), console=console,
                        transient=True, refresh_per_second=PER_SECOND)
