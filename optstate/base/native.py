"""``OPTSTATE_NO_C=1``: the one switch that keeps optstate's optional compiled helpers unused.

Two small C extensions are built by ``pip install`` where a GCC-like compiler is there
(``setup.py``; without one the install still succeeds): the reductions' C kernel
(``numeric/_ckernels.c``, chosen in ``numeric/kernel_switch.py``) and the SIGBUS handler
for inputs truncated while mapped (``io/_sigbus.c``, ``io/readguard.py``). With
``OPTSTATE_NO_C`` set to anything but "" or "0", neither is imported: the process runs as
an install without a compiler does (CI runs the suite both ways).
"""

from __future__ import annotations

import os


def c_disabled() -> bool:
    """Whether ``OPTSTATE_NO_C`` asks to run without the compiled helpers."""
    return os.environ.get("OPTSTATE_NO_C", "").strip() not in ("", "0")
