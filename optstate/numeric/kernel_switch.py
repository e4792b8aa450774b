"""Which code runs the reductions: the optional C kernel or torch. The one switch.

The C kernel (``optstate/numeric/_ckernels.c``, built by ``setup.py`` where a GCC-like C
compiler is available) computes the same per-block numbers as the torch code in
``kernels.py`` and ``pair_kernel.py``, in one pass over the source memory; where it is
not built, torch runs and the numbers are the same (the tests run every case both ways).

- ``OPTSTATE_NO_C=1`` in the environment (read once, at import) keeps the C kernel from
  being imported at all: the process runs as an install without a compiler does.
- ``use_path`` switches between the paths this process can run (tests, benchmarks);
  ``current_path`` says which one runs; ``available_paths`` lists them.
- ``active_c_kernel`` is how the reductions ask, once per run of blocks.

The same switch serves the tensors of the native reader (``io/native_tensor.py``,
``numeric/native_kernels.py``): on a C path their contiguous blocks run through the C
kernel at their mapped address; on "torch" (no C kernel) they run through numpy, since
they have no torch to run on. No torch import here: element kinds are keyed by dtype name.

Example: ``with use_path("torch"): summarize(t)`` gives what an install without the C
kernel gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

from optstate.base.native import c_disabled

# OPTSTATE_NO_C=1: never import the optional C kernel (CI runs the suite both ways, so the
# torch fallback is tested as it runs where the extension was not built).
C_DISABLED = c_disabled()

_ckernels: ModuleType | None = None
if not C_DISABLED:
    try:  # the optional C kernel; the torch code is the fallback
        from optstate.numeric import _ckernels
    except ImportError:  # not built (no C compiler at install time)
        _ckernels = None

# Reductions use the C kernel where it applies; switched by use_path only.
_use_c = _ckernels is not None

# dtype name -> the C kernel's element kind (its enum in _ckernels.c; other dtypes, and
# complex, never take it). Every kind widens to float64 exactly, as torch's ``.double()``
# does (int64/uint64 beyond 2**53 round to nearest, in both).
C_KINDS = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3,
           "float8_e4m3fn": 4, "float8_e5m2": 5, "float8_e4m3fnuz": 6, "float8_e5m2fnuz": 7,
           "int8": 8, "uint8": 9, "int16": 10, "int32": 11, "int64": 12, "bool": 13,
           "uint16": 14, "uint32": 15, "uint64": 16}

# The kinds torch tensors take the C kernel for (the others run in torch, as they always
# have); the native reader's tensors take every kind in C_KINDS.
TORCH_C_KINDS = {name: C_KINDS[name] for name in ("float32", "float64", "bfloat16", "float16")}


def torch_c_kind(dtype: object) -> int | None:
    """The C kernel's kind for a torch dtype (None: the torch path)."""
    return TORCH_C_KINDS.get(str(dtype).removeprefix("torch."))

# The ways a reduction can run: the C kernel's AVX2 loop (with FMA), its 2-lane loop (SSE2 / NEON),
# or torch operations on a float64 buffer. All give the same numbers (tested).
PATHS = ("c-avx2", "c-2lane", "torch")


def active_c_kernel() -> ModuleType | None:
    """The C kernel module when reductions run on it now, else None (torch)."""
    return _ckernels if _use_c else None


def available_paths() -> list[str]:
    """The paths this process can run: "torch" always; the C kernel's loops when it is
    built, not disabled by OPTSTATE_NO_C=1, and (AVX2 and FMA) supported by the CPU."""
    if _ckernels is None:
        return ["torch"]
    wide = "avx2" in _ckernels.vector_paths()[0]
    return [*(["c-avx2"] if wide else []), "c-2lane", "torch"]


def current_path() -> str:
    """The path reductions run on now: "c-avx2", "c-2lane" or "torch"."""
    if not _use_c or _ckernels is None:
        return "torch"
    return "c-avx2" if _ckernels.vector_paths()[1] == "avx2" else "c-2lane"


def unavailable_reason(path: str) -> str | None:
    """Why ``path`` cannot run in this process (None: it can)."""
    if path not in PATHS:
        raise ValueError(f"unknown kernel path {path!r}; one of {', '.join(PATHS)}")
    if path == "torch":
        return None
    if C_DISABLED:
        return "the C kernel is disabled (OPTSTATE_NO_C=1)"
    if _ckernels is None:
        return "the optional C kernel is not built (no C compiler at install time?)"
    if path == "c-avx2" and path not in available_paths():
        return "this CPU has no AVX2 or no FMA"
    return None


@contextlib.contextmanager
def use_path(path: str) -> Iterator[None]:
    """Run this process's reductions on ``path`` (see ``PATHS``) inside the block, then
    switch back. Not thread-safe: for tests and benchmarks, not for concurrent callers."""
    global _use_c
    reason = unavailable_reason(path)
    if reason is not None:
        raise RuntimeError(f"kernel path {path!r} is not available: {reason}")
    before_c = _use_c
    before_wide = _ckernels is not None and _ckernels.vector_paths()[1] == "avx2"
    if path != "torch":
        _ckernels.vector_paths(path == "c-avx2")
    _use_c = path != "torch"
    try:
        yield
    finally:
        _use_c = before_c
        if _ckernels is not None:
            _ckernels.vector_paths(before_wide)
