"""``OPTSTATE_DEBUG``: set to anything but ``0``, optstate keeps what it otherwise tidies
away for the user: the traceback behind an ``Error:`` line (``cli._exit_for``) and the
worker logs of a failed ``simulate --world-size`` run (``sim/distributed.py``)."""

from __future__ import annotations

import os


def debug_enabled() -> bool:
    """Whether ``OPTSTATE_DEBUG`` is set (and not ``0``); read at each call."""
    return os.environ.get("OPTSTATE_DEBUG", "") not in ("", "0")
