"""The autouse fixture that runs a test module through every kernel path.

optstate/numeric/kernels.py and pair_kernel.py compute with the C kernel
(optstate/numeric/_ckernels.c: an AVX2 loop and a 2-lane loop; loaded by kernel_switch.py)
where it is built, else with torch; the numbers must not depend on the path.
The fixture switches paths with the code's own switch, ``kernel_switch.use_path`` (no
monkeypatching); a path this process cannot run is skipped with the reason (the C kernel
not built, disabled by OPTSTATE_NO_C=1, or no AVX2 and FMA on this CPU).
"""

from __future__ import annotations

import pytest

from optstate.numeric import kernel_switch


def _on_path(request):
    reason = kernel_switch.unavailable_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    with kernel_switch.use_path(request.param):
        yield request.param


@pytest.fixture(autouse=True, params=list(kernel_switch.PATHS))
def kernel_path(request):
    """Every test runs through each path: the C kernel (optstate/numeric/_ckernels.c) with its
    AVX2 loop and with its 2-lane loop, and the pure-torch path that replaces it where
    it is not built."""
    yield from _on_path(request)


@pytest.fixture(params=list(kernel_switch.PATHS))
def each_kernel_path(request):
    """The same, for the tests of a module that ask for it by name (not autouse)."""
    yield from _on_path(request)
