"""compare_tensors() / pair_kernel.compare(): the chunked pass equals plain torch.

The reference is the whole-tensor float64 torch expression: ``torch.isclose`` for the
count outside tolerance, ``(a.double() - b.double()).abs()`` over finite pairs for the
differences. Counts, max_abs and max_rel must be equal exactly; the norms of n elements
to a relative optstate.numeric.tolerance.sum_rtol(n) (the bound for any summation order).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optstate.numeric import kernel_switch, kernels
from optstate.numeric.compare import compare_tensors
from optstate.numeric.tolerance import sum_rtol
from tests.test_stats import true_norm  # one reference norm for both files

from .kernel_paths import kernel_path  # noqa: F401 - autouse: every test on every path
from .test_diff_nan import KEYS as NONFINITE
from .test_diff_nan import expected as nonfinite_expected

NAN, INF = float("nan"), float("inf")


def reference(a, b, atol=0.0, rtol=0.0, nan_equal=True) -> dict:
    x, y = a.double(), b.double()
    close = torch.isclose(x, y, rtol=rtol, atol=atol, equal_nan=nan_equal)
    both = torch.isfinite(x) & torch.isfinite(y)
    d = (x - y).abs()[both]
    yb = y.abs()[both]
    nz = yb != 0
    fa, fb = x[torch.isfinite(x)], y[torch.isfinite(y)]
    return {
        "n_outside": int((~close).sum()),
        "max_abs": float(d.max()) if d.numel() else None,
        "max_rel": float((d[nz] / yb[nz]).max()) if bool(nz.any()) else None,
        "norm_a": true_norm(fa) if fa.numel() else None,
        "norm_b": true_norm(fb) if fb.numel() else None,
    }


def assert_agrees(a, b, **tol) -> None:
    r = compare_tensors(a, b, **tol)
    ref = reference(a, b, **tol)
    assert (r.n_outside, r.max_abs, r.max_rel) == (ref["n_outside"], ref["max_abs"],
                                                   ref["max_rel"])
    assert r.equal == (ref["n_outside"] == 0)
    # pairs with a NaN or Inf, by kind (the definition: tests/test_diff_nan.py)
    assert {k: getattr(r, k) for k in NONFINITE} == nonfinite_expected(a, b)
    for key in ("norm_a", "norm_b"):
        got, want = getattr(r, key), ref[key]
        assert (got is None) == (want is None)
        if want is not None:
            assert got == pytest.approx(want, rel=sum_rtol(a.numel()), abs=0)


def test_c_kernel_is_built():
    # The README's install builds it (setup.py) where a GCC/Clang-like C compiler is
    # there; without it (or with OPTSTATE_NO_C=1) optstate still works, on the slower
    # torch path, and the C kernel's cases in this file are skipped with the reason.
    reason = kernel_switch.unavailable_reason("c-2lane")
    if reason is not None:
        pytest.skip(reason)
    assert "c-2lane" in kernel_switch.available_paths()
    assert kernel_switch.current_path() in kernel_switch.available_paths()


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(kernels, "CHUNK_ELEMENTS", 5)


def adam_states(steps: tuple[int, int]) -> tuple[dict, dict]:
    """exp_avg / exp_avg_sq of one real Adam run, saved after steps[0] and steps[1]."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(40, 7))
    opt = torch.optim.Adam([w], lr=1e-2)
    out = []
    for i in range(1, max(steps) + 1):
        w.grad = torch.randn_like(w)
        opt.step()
        if i in steps:
            out.append({k: v.clone() for k, v in opt.state_dict()["state"][0].items()})
    return out[0], out[1]


def test_real_adam_states_consecutive_steps(small_chunks):
    s1, s2 = adam_states((2, 3))
    for key in ("exp_avg", "exp_avg_sq"):
        assert_agrees(s1[key], s2[key])
        assert_agrees(s1[key], s2[key], atol=1e-8, rtol=1e-5)
        assert_agrees(s1[key], s2[key], atol=1e-3, rtol=1e-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16,
                                   torch.bfloat16])
@pytest.mark.parametrize("tol", [{}, {"atol": 1e-2}, {"rtol": 0.05}, {"atol": 1e-3,
                                                                       "rtol": 1e-2}])
def test_dtypes_and_tolerances(dtype, tol, small_chunks):
    torch.manual_seed(1)
    a = torch.randn(60).to(dtype)
    b = (a.double() + 0.01 * torch.randn(60, dtype=torch.float64)).to(dtype)
    b[[3, 4, 5]] = a[[3, 4, 5]]
    b[10] = 0.0
    assert_agrees(a, b, **tol)


def test_identical_tensors():
    torch.manual_seed(2)
    a = torch.randn(1000)
    r = compare_tensors(a, a.clone())
    assert (r.equal, r.n_outside, r.max_abs, r.max_rel) == (True, 0, 0.0, 0.0)
    assert r.norm_a == r.norm_b


def test_all_zero_b_has_no_relative_difference(small_chunks):
    a = torch.tensor([0.0, 1.0, -2.0, 0.0, 0.0, 0.0, 3.0])
    r = compare_tensors(a, torch.zeros(7))
    assert (r.n_outside, r.max_abs, r.max_rel, r.norm_b) == (3, 3.0, None, 0.0)
    z = compare_tensors(torch.zeros(7), torch.zeros(7))
    assert (z.equal, z.max_abs, z.max_rel, z.norm_a) == (True, 0.0, None, 0.0)


@pytest.mark.parametrize("nan_equal", [True, False])
def test_nan_inf_rules(nan_equal, small_chunks):
    a = torch.tensor([NAN, NAN, INF, INF, -INF, 1.0, 2.0, 3.0, NAN, 0.0, 5.0, 6.0])
    b = torch.tensor([NAN, 1.0, INF, -INF, 1.0, 1.0, INF, 3.5, NAN, 0.0, 5.0, 6.5])
    assert_agrees(a, b, nan_equal=nan_equal)
    r = compare_tensors(a, b, nan_equal=nan_equal)
    # outside: NaN vs 1, Inf vs -Inf, -Inf vs 1, 2 vs Inf, 3 vs 3.5, 6 vs 6.5 (+ NaN pairs)
    assert r.n_outside == (6 if nan_equal else 8)
    assert (r.max_abs, r.max_rel) == (0.5, 0.5 / 3.5)


def test_all_nan_has_no_metrics():
    a = torch.full((4,), NAN)
    r = compare_tensors(a, a.clone())
    assert (r.equal, r.max_abs, r.max_rel, r.norm_a, r.norm_b) == (True, None, None, None,
                                                                   None)
    assert compare_tensors(a, a.clone(), nan_equal=False).n_outside == 4


def test_mixed_dtypes(small_chunks):
    torch.manual_seed(3)
    a = torch.randn(30)
    b = a.to(torch.bfloat16)
    assert_agrees(a, b)
    assert_agrees(b, a, rtol=1e-2)
    assert_agrees(torch.arange(12), torch.arange(12.0) * 1.5)


def test_different_strides_walk_in_lockstep(small_chunks):
    torch.manual_seed(4)
    base = torch.randn(9, 11)
    a = base.t()  # non-contiguous
    b = base.t().contiguous() + 0.001 * torch.randn(11, 9)
    assert_agrees(a, b)
    assert_agrees(b, a, atol=1e-4)
    wide = torch.randn(2, 30)
    assert_agrees(wide.t(), wide.t().contiguous().mul(1.01))


def test_default_chunks_many_blocks():
    torch.manual_seed(5)
    n = int(kernels.CHUNK_ELEMENTS * 2.5)
    a = torch.randn(n)
    b = a.clone()
    b[kernels.CHUNK_ELEMENTS] += 1.0
    b[-1] = NAN
    assert_agrees(a, b)
    r = compare_tensors(a, b)
    assert r.n_outside == 2


def test_agrees_with_the_plain_torch_baseline():
    # What a hand-written script computes: allclose + (a - b).abs().max() in float32.
    s1, s2 = adam_states((4, 5))
    a, b = s1["exp_avg"], s2["exp_avg"]
    r = compare_tensors(a, b, atol=1e-8, rtol=1e-5)
    assert r.equal == torch.allclose(a, b, atol=1e-8, rtol=1e-5)
    assert torch.tensor(r.max_abs, dtype=torch.float32) == (a - b).abs().max()


def test_empty_zero_dim_and_shape_mismatch():
    r = compare_tensors(torch.empty(0), torch.empty(0))
    assert (r.equal, r.n_outside) == (True, 0)
    assert_agrees(torch.tensor(1.5), torch.tensor(2.0))
    with pytest.raises(ValueError, match="shapes differ"):
        compare_tensors(torch.zeros(2, 3), torch.zeros(3, 2))


def test_float64_norms_beyond_the_float64_range(small_chunks):
    a = torch.tensor([3e200, 4e200], dtype=torch.float64)
    r = compare_tensors(a, a * 0.5)
    assert r.norm_a == pytest.approx(5e200, rel=sum_rtol(2))
    assert r.norm_b == pytest.approx(2.5e200, rel=sum_rtol(2))
    assert (r.max_abs, r.max_rel) == (2e200, 1.0)


def test_complex():
    a = torch.tensor([1 + 1j, 2 - 1j])
    r = compare_tensors(a, a.clone())
    assert (r.equal, r.max_abs) == (True, 0.0)
    r = compare_tensors(a, torch.tensor([1 + 1j, 2 + 1j]))
    assert (r.n_outside, r.max_abs) == (1, 2.0)


def test_progress_counts_both_sides(small_chunks):
    seen: list[int] = []
    compare_tensors(torch.zeros(12), torch.zeros(12, dtype=torch.float64),
                    progress=seen.append)
    assert sum(seen) == 12 * (4 + 8) and len(seen) == 3


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1.0, 1.0000001]),
)


@settings(max_examples=150, deadline=None)
@given(
    pairs=st.lists(st.tuples(values, values), min_size=1, max_size=40),
    limit=st.integers(1, 12),
    atol=st.sampled_from([0.0, 1e-8, 1e-3, 1.0]),
    rtol=st.sampled_from([0.0, 1e-5, 0.1]),
    nan_equal=st.booleans(),
)
def test_property_matches_torch(pairs, limit, atol, rtol, nan_equal):
    old = kernels.CHUNK_ELEMENTS
    kernels.CHUNK_ELEMENTS = limit
    try:
        a = torch.tensor([p[0] for p in pairs])
        b = torch.tensor([p[1] for p in pairs])
        assert_agrees(a, b, atol=atol, rtol=rtol, nan_equal=nan_equal)
        assert compare_tensors(a, a.clone(), nan_equal=True).equal
    finally:
        kernels.CHUNK_ELEMENTS = old


def test_worker_threads_give_identical_numbers(small_chunks):
    # compare() splits the blocks across torch.get_num_threads() worker threads; the
    # block results combine order-independently, so the numbers cannot depend on it.
    torch.manual_seed(6)
    a = torch.randn(200)
    b = a + 0.01 * torch.randn(200)
    b[[7, 150]] = NAN
    before = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(compare_tensors(a, b, atol=1e-3, rtol=1e-2))
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1] == results[2]
    assert_agrees(a, b, atol=1e-3, rtol=1e-2)


def test_norm_fn_is_the_blockwise_float64_norm_at_any_thread_count(small_chunks):
    # norm_fn (what simulate records every step): per block, the float64 dot of the
    # widened block with itself, summed exactly (math.fsum), then sqrt; the blocks of
    # big tensors run on worker threads, small tensors are one block; the views it
    # prepares once see later in-place updates.
    import math

    torch.manual_seed(7)
    big = torch.randn(6, 7)  # 42 elements: 9 blocks of at most 5
    wide = torch.randn(7, 6).t()  # non-contiguous: shape-based blocks
    small = torch.randn(2, 2)
    tensors = [big, wide, small]

    def expected() -> float:
        parts = [float(torch.dot(x, x)) for x in
                 [small.reshape(-1).double()]
                 + [p.double().reshape(-1) for t in (big, wide)
                    for (p,) in kernels.blocks(t)]]
        return math.sqrt(math.fsum(parts))

    before = torch.get_num_threads()
    try:
        values = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            norm = kernels.norm_fn(tensors)
            values.append(norm())
            big.mul_(2.0)
            small.mul_(4.0)
            values.append(norm())
            assert norm() == kernels.norm_of(tensors)
            assert torch.get_num_threads() == n
            big.div_(2.0)
            small.div_(4.0)
    finally:
        torch.set_num_threads(before)
    assert values[0] == values[2] == values[4] == kernels.norm_of(tensors) != values[1]
    assert values[1] == values[3] == values[5]
    assert values[0] == expected()
    assert values[0] == pytest.approx(float(torch.cat([t.reshape(-1) for t in tensors])
                                            .double().norm()), rel=sum_rtol(88))


# Values that stress the fast loop's assumptions: an |a - b| or a square beyond the
# float64 range, squares below it, subnormals, signed zeros, tolerances that overflow.
EDGE64 = [0.0, -0.0, 1.0, -1.0, 1e308, -1e308, 1.7e308, 1e-200, -1e-200, 5e-324, 1e154,
          3e-160, 2.5, 1e-3, NAN, INF, -INF]


@pytest.mark.parametrize("dtype_a", [torch.float32, torch.float64, torch.float16,
                                     torch.bfloat16])
@pytest.mark.parametrize("dtype_b", [torch.float32, torch.float64, torch.float16,
                                     torch.bfloat16])
def test_every_dtype_pair_at_the_edges(dtype_a, dtype_b):
    gen = torch.Generator().manual_seed(8)
    n = 1000
    pick = torch.randint(len(EDGE64), (2, n), generator=gen)
    edge = torch.tensor(EDGE64, dtype=torch.float64)
    x, y = edge[pick[0]], edge[pick[1]]
    # runs of ordinary values (the fast loop) between the edge values
    x[200:600] = torch.randn(400, generator=gen, dtype=torch.float64)
    y[200:600] = x[200:600] * (1 + 1e-3 * torch.randn(400, generator=gen,
                                                          dtype=torch.float64))
    y[300:340] = x[300:340]
    x[700:780] = 0.0
    y[700:780] = 0.0
    a, b = x.to(dtype_a), y.to(dtype_b)
    for tol in ({}, {"atol": 1e-8, "rtol": 1e-5}, {"rtol": 3.0}, {"atol": 1e300}):
        for nan_equal in (True, False):
            assert_agrees(a, b, nan_equal=nan_equal, **tol)
            assert_agrees(a[200:600], b[200:600], nan_equal=nan_equal, **tol)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1,
                  max_size=600),
    shift=st.sampled_from([0.0, 1e-9, 1e-3, 1.0]),
    atol=st.sampled_from([0.0, 1e-8, 1e-3]),
    rtol=st.sampled_from([0.0, 1e-5, 0.1]),
    dtypes=st.sampled_from([(torch.float64, torch.float64), (torch.float32, torch.float32),
                            (torch.float32, torch.float64), (torch.bfloat16, torch.float16)]),
)
def test_property_long_runs_match_torch(data, shift, atol, rtol, dtypes):
    # runs of hundreds of values: the C kernel's vector loop, not only its careful path
    a = torch.tensor(data, dtype=torch.float64)
    b = a * (1 + shift) + shift
    a, b = a.to(dtypes[0]), b.to(dtypes[1])
    assert_agrees(a, b, atol=atol, rtol=rtol)
    assert_agrees(b, a, atol=atol, rtol=rtol, nan_equal=False)
