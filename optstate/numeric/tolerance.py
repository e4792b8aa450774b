"""How closely optstate's float sums agree with torch's: the one place this is stated.

optstate's statistics (norm, mean, mean |x|) and diff's norms are float64 sums, as torch's
``t.double().norm()`` etc. are; only the order of the additions differs. That order is not
fixed anywhere: torch's CPU kernels sum in vector lanes whose width follows the CPU (SSE2 /
NEON: 2 doubles, AVX2: 4, AVX-512: 8) and the BLAS build, optstate sums 256 Ki-element
blocks (in the C kernel's lanes, or in torch) and adds the block results exactly. So the
agreement must be a bound that holds for *any* summation order, not a figure measured on
one machine (a fixed 1e-14 passed on AVX2 and failed on AVX-512, issue #15).

The bound (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 3.1
and 4.2): with ``u`` the unit roundoff of the accumulation dtype (eps/2; 2**-53 for
float64) and ``gamma(k) = k*u / (1 - k*u)``, any float sum of n terms, in any order (any
binary tree of additions: each term passes through at most n-1 of them) is within
``gamma(n-1) * sum(|x_i|)`` of the exact sum. Each side of a comparison also rounds once per
term before summing (x*x for a norm; x/peak and its square in the rescaled norm) and a few
times after (optstate's exact combination of block sums is rounded once; sqrt; the
division of a mean; the product by peak), so each side is within ``gamma(n+2) * S`` of the
exact value, S = sum of |terms| (for a norm the relative error even halves under sqrt).
Two such results differ by at most ``2 * gamma(n+2) * S``, and S is within a factor
1/(1 - gamma) of either computed non-negative sum.

``sum_rtol`` is that, times a safety factor of 2: room for a reference that rounds a few
more times per term than counted above (torch's norm or mean kernels may rescale or
divide partial sums) without the bound becoming a measured guess again. It is a
guarantee, not the typical error: random data lands near sqrt(n)*u (1e-15..1e-13), but an
adversarial order reaches ~n*u/4 (tests/test_tolerance.py builds one).

Uses: for non-negative sums (sum of squares, norm, sum |x|, mean |x|) the relative
difference is at most ``sum_rtol(n)``; for a signed sum (mean) the difference is at most
``sum_rtol(n) * mean_abs`` (the bound scales with sum |x|, not with the possibly cancelling
sum). n is the number of elements summed. Exact results (min, max, counts, max |a-b|)
need no tolerance at all.
"""

from __future__ import annotations

import math

# Why the bound is doubled (see above).
SAFETY = 2.0

# float64's unit roundoff: optstate accumulates every real sum in float64.
UNIT_ROUNDOFF_FLOAT64 = 2.0 ** -53


# torch.finfo(dtype).eps of each floating dtype, by name: asked without importing torch
# (a NativeDtype or a name; tests/test_tolerance.py checks these against torch.finfo)
EPS = {"float64": 2.0 ** -52, "float32": 2.0 ** -23, "float16": 2.0 ** -10,
       "bfloat16": 2.0 ** -7, "float8_e4m3fn": 2.0 ** -3, "float8_e5m2": 2.0 ** -2,
       "float8_e4m3fnuz": 2.0 ** -3, "float8_e5m2fnuz": 2.0 ** -3}


def unit_roundoff(dtype: object = None) -> float:
    """eps/2 of the accumulation dtype (a torch floating dtype, the native reader's
    ``NativeDtype`` or a dtype name; float64 by default)."""
    if dtype is None:
        return UNIT_ROUNDOFF_FLOAT64
    eps = EPS.get(str(dtype).removeprefix("torch."))
    if eps is not None:
        return eps / 2
    import torch

    return torch.finfo(dtype).eps / 2


def gamma(k: int, dtype: object = None) -> float:
    """Higham's gamma_k = k*u / (1 - k*u): the relative error bound of k roundings in a row;
    inf where k*u >= 1 (no bound: the sum may have lost every digit)."""
    ku = max(k, 0) * unit_roundoff(dtype)
    return ku / (1.0 - ku) if ku < 1.0 else math.inf


def sum_rtol(n: int, dtype: object = None) -> float:
    """The largest relative difference between two sums of ``n`` non-negative terms accumulated
    in ``dtype`` (float64 by default) in any two orders, per the bound above: SAFETY * 2 *
    gamma(n+2) / (1 - gamma(n+2)). E.g. float64: 1.3e-15 for n = 1, 1.3e-10 for n = 300 000."""
    g = gamma(n + 2, dtype)
    return SAFETY * 2.0 * g / (1.0 - g) if g < 1.0 else math.inf


# Roundings per step of a chained LR schedule (below): a factor of at most ~8 roundings
# (cos to 1 ulp, two 1 + cos, a ratio, a product, eta_min in and out) and its product.
SCHEDULE_ROUNDINGS_PER_STEP = 16


def schedule_atol(steps: int, scale: float) -> float:
    """How far an lr a run reached step by step through an LR scheduler (torch's ``get_lr``
    multiplies the group's lr by a factor each step: StepLR, LinearLR, CosineAnnealingLR...)
    may be from the scheduler's closed form at the same epoch (``state.scheduled``), ``scale``
    being the larger of the group's base lr and the two lrs. Each step multiplies the lr by a
    factor computed to within SCHEDULE_ROUNDINGS_PER_STEP roundings, so the relative error of
    the chain is at most gamma(16 * steps); CosineAnnealingLR's factor near T_max is a ratio
    of two small ``1 + cos`` whose rounding is absolute (about u * base lr per step), hence
    the scale includes the base lr. Times SAFETY, as sum_rtol. Any change a person or a bug
    makes to an lr is many orders of magnitude above this (1e-12 of the base lr at 10^4
    steps)."""
    return SAFETY * gamma(SCHEDULE_ROUNDINGS_PER_STEP * (max(steps, 0) + 1)) * scale
