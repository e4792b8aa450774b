"""A pause at a named stage, so a test can signal a real process at a known moment.

``OPTSTATE_TEST_PAUSE_AT=stage[,stage...]`` makes ``pause_at(stage)`` print
``optstate-test-pause: STAGE`` to stderr and sleep ``OPTSTATE_TEST_PAUSE_SECONDS``
(default 30) seconds (``stage=SECONDS``: that stage's own time); unset (every real
run), it returns at once. Tests read the marker,
then send SIGINT or SIGKILL, instead of guessing a delay.

With ``OPTSTATE_TEST_RELEASE_DIR=DIR`` too, the pause also ends as soon as the file
``DIR/STAGE.PID`` exists (PID: this process's), so a test orders two processes by creating
it, and the seconds are only a limit; a pause that reaches the limit unreleased prints
``optstate-test-pause: STAGE not released`` and the process goes on.

Write stages (``optstate.io.atomic``): ``write`` (the temp file or folder is being written),
``verify`` (written, before the read-back check), ``publish`` (checked, before the
rename), ``published`` (renamed into place, the replaced copy not yet removed). A URL
target (``optstate.io.remote_write``): ``publish`` is before the upload, ``uploaded``
after each file of a DCP folder is uploaded, ``published`` once all are.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "OPTSTATE_TEST_PAUSE_AT"
RELEASE_ENV = "OPTSTATE_TEST_RELEASE_DIR"


def pause_at(stage: str) -> None:
    """Stop here for the test that asked for ``stage`` (a no-op otherwise)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    # "stage=SECONDS" pauses that stage for its own time (0: only the marker)
    pauses = dict((item.split("=", 1) + [""])[:2] for item in wanted.split(","))
    if stage not in pauses:
        return
    from optstate.base import interrupt

    sys.stderr.write(f"optstate-test-pause: {stage}\n")
    sys.stderr.flush()
    seconds = float(pauses[stage] or os.environ.get("OPTSTATE_TEST_PAUSE_SECONDS", "30"))
    end = time.monotonic() + seconds
    release_dir = os.environ.get(RELEASE_ENV)
    release = os.path.join(release_dir, f"{stage}.{os.getpid()}") if release_dir else None
    # a Ctrl-C held by interrupt.deferred() (a write) ends the pause: the process goes on
    # to the safe point that acts on it
    while time.monotonic() < end and not interrupt.pending():
        if release is not None and os.path.exists(release):
            return
        time.sleep(min(0.02, max(0.0, end - time.monotonic())))
    if release is not None and not interrupt.pending() and not os.path.exists(release):
        sys.stderr.write(f"optstate-test-pause: {stage} not released\n")
        sys.stderr.flush()
