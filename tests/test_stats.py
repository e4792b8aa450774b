"""summarize() / kernels.moments(): every statistic equals torch's own computation.

The reference is the plain whole-tensor torch expression of each definition (see
optstate/numeric/stats.py). min, max and the counts must be equal exactly; the float64 sums
(norm, mean_abs) of n elements to a relative optstate.numeric.tolerance.sum_rtol(n) and the signed
mean to sum_rtol(n) * mean_abs, because only the order of the float64 additions differs
(the bound holds for any order: AVX2, AVX-512, NEON, with or without the C kernel).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optstate.numeric import kernels
from optstate.numeric.stats import summarize
from optstate.numeric.tolerance import sum_rtol

from .kernel_paths import kernel_path  # noqa: F401 - autouse: every test on every path

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_DTYPES = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]


def reference(t: torch.Tensor) -> dict:
    """The definitions, computed by torch on the whole tensor in the obvious way."""
    n = t.numel()
    if t.is_floating_point():
        fin = t[torch.isfinite(t)]
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    else:
        fin, nan, inf = t, 0, 0
    ref = {"nan": nan, "inf": inf, "zeros": int((t == 0).sum()) / n, "numel": n}
    if fin.numel() == 0:
        ref.update(norm=None, min=None, max=None, mean=None, mean_abs=None)
        return ref
    x = fin.double()
    ref.update(
        norm=true_norm(x),
        min=float(fin.min()) if t.dtype != torch.bool else float(x.min()),
        max=float(fin.max()) if t.dtype != torch.bool else float(x.max()),
        mean=float(x.mean()),
        mean_abs=float(x.abs().mean()),
    )
    return ref


def true_norm(x: torch.Tensor) -> float:
    """torch's float64 norm, rescaled where the squares leave the float64 range (there
    torch's own norm() returns inf or loses digits, optstate gives the true value)."""
    plain = float(x.norm())
    peak = float(x.abs().max())
    if peak > 0 and (plain == float("inf") or plain < 1.5e-154):
        return peak * float((x / peak).norm())
    return plain


def assert_agrees(t: torch.Tensor) -> None:
    s = summarize(t)
    ref = reference(t)
    assert (s.numel, s.nan, s.inf, s.zeros) == (ref["numel"], ref["nan"], ref["inf"],
                                                ref["zeros"])
    assert s.min == ref["min"]
    assert s.max == ref["max"]
    if ref["norm"] is None:
        assert (s.norm, s.mean, s.mean_abs) == (None, None, None)
        return
    tol = sum_rtol(t.numel())
    assert s.norm == pytest.approx(ref["norm"], rel=tol, abs=0)
    assert s.mean_abs == pytest.approx(ref["mean_abs"], rel=tol, abs=0)
    assert abs(s.mean - ref["mean"]) <= tol * ref["mean_abs"]


@pytest.fixture
def small_chunks(monkeypatch):
    """Blocks of 7 elements, so small tensors cross many block boundaries."""
    monkeypatch.setattr(kernels, "CHUNK_ELEMENTS", 7)


def adam_state() -> dict[str, torch.Tensor]:
    """exp_avg / exp_avg_sq of a real Adam after three steps. (The first optimizer built
    in a process imports torch._dynamo, about a second; later tests reuse it.)"""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 33))
    opt = torch.optim.Adam([w], lr=1e-2)
    for _ in range(3):
        w.grad = torch.randn_like(w)
        opt.step()
    return opt.state_dict()["state"][0]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_float_dtypes_random(dtype):
    torch.manual_seed(1)
    assert_agrees((torch.randn(1000) * 3).to(dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_float_dtypes_with_nan_inf_zero(dtype, small_chunks):
    torch.manual_seed(2)
    t = torch.randn(100).to(dtype)
    t[[0, 6, 7, 50]] = float("nan")  # 6|7 straddles a block boundary
    t[[13, 14, 99]] = float("inf")
    t[20] = -float("inf")
    t[[30, 31, 32]] = 0.0
    t[33] = -0.0
    assert_agrees(t)
    s = summarize(t)
    assert (s.nan, s.inf, s.zeros) == (4, 4, 0.04)


@pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
def test_integer_and_bool(dtype, small_chunks):
    torch.manual_seed(3)
    if dtype == torch.bool:
        t = torch.rand(50) > 0.3
    else:
        info = torch.iinfo(dtype)
        t = torch.randint(max(info.min, -1000), min(info.max, 1000), (50,), dtype=dtype)
        t[[4, 9]] = 0
    assert_agrees(t)


def test_real_adam_state(small_chunks):
    for value in adam_state().values():
        if value.dim() > 0:
            assert_agrees(value)


def test_default_chunks_many_blocks():
    # 3.5 default blocks of real data: the unpatched path.
    torch.manual_seed(4)
    t = torch.randn(int(kernels.CHUNK_ELEMENTS * 3.5))
    t[kernels.CHUNK_ELEMENTS - 1] = float("nan")
    t[kernels.CHUNK_ELEMENTS] = 0.0
    assert_agrees(t)


def test_empty_and_zero_dim():
    s = summarize(torch.empty(0, 3))
    assert (s.numel, s.norm, s.min, s.zeros, s.nan) == (0, None, None, None, 0)
    assert_agrees(torch.tensor(-2.5))
    assert_agrees(torch.tensor(float("nan")))
    s = summarize(torch.tensor(-2.5))
    assert (s.shape, s.min, s.max, s.norm, s.mean_abs) == ((), -2.5, -2.5, 2.5, 2.5)


def test_all_nonfinite():
    t = torch.tensor([float("nan"), float("inf"), -float("inf")])
    s = summarize(t)
    assert (s.norm, s.min, s.max, s.mean, s.nan, s.inf, s.zeros) == (None, None, None, None,
                                                                      1, 2, 0.0)


def test_all_nan_block_in_the_middle(small_chunks):
    t = torch.arange(-10.0, 11.0)  # 21 elements: blocks 0-6, 7-13, 14-20
    t[7:14] = float("nan")
    assert_agrees(t)
    assert summarize(t).nan == 7


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_single_sign_blocks_with_zeros(sign, small_chunks):
    # Blocks of one sign take the |sum| shortcut for sum |x|; zeros must still count.
    t = sign * torch.arange(0.0, 30.0)
    t[[5, 17]] = 0.0
    assert_agrees(t)
    assert summarize(t).zeros == 3 / 30


def test_non_contiguous(small_chunks):
    torch.manual_seed(5)
    base = torch.randn(12, 10)
    base[3, 4] = float("nan")
    for t in (base.t(), base[::2, 1::3], base[:, 3], base.t()[2:9]):
        assert not t.is_contiguous()
        assert_agrees(t)
    wide = torch.randn(3, 40).t()  # rows longer than a block: blocks split inside a row
    assert_agrees(wide)
    assert_agrees(torch.randn(2, 3, 20).permute(2, 0, 1))


def test_expanded_tensor():
    # a view repeating stored elements is summarised over its storage (each stored
    # element once; optstate/numeric/views.py), with the logical numel beside
    stored = torch.tensor([1.0, -2.0, 0.0])
    t = stored.expand(4, 3)
    s = summarize(t)
    ref = reference(stored)
    assert (s.numel, s.stored, s.view, s.zeros) == (12, 3, "expanded", 1 / 3)
    assert (s.min, s.max, s.nan, s.inf) == (ref["min"], ref["max"], 0, 0)
    assert s.norm == pytest.approx(ref["norm"], rel=sum_rtol(3))
    assert s.mean == pytest.approx(ref["mean"], abs=sum_rtol(3) * ref["mean_abs"])


def test_float32_huge_values_do_not_overflow():
    # Squares of 1e30 overflow float32; the float64 accumulation keeps them.
    t = torch.full((16,), 1e30)
    assert math.isinf(float(t.norm()))
    assert summarize(t).norm == pytest.approx(4 * float(t[0]), rel=sum_rtol(16))
    assert_agrees(t)
    m = torch.full((3,), torch.finfo(torch.float32).max)
    assert summarize(m).norm == pytest.approx(float(m.double().norm()), rel=sum_rtol(3))


def test_float64_norm_rescaled_beyond_the_float64_range(small_chunks):
    big = torch.tensor([3e200, -4e200, 0.0, float("nan")], dtype=torch.float64)
    assert math.isinf(float(big[:3].norm()))  # torch's own float64 norm overflows
    assert summarize(big).norm == pytest.approx(5e200, rel=sum_rtol(3))
    tiny = torch.tensor([3e-200, 4e-200], dtype=torch.float64)
    assert summarize(tiny).norm == pytest.approx(5e-200, rel=sum_rtol(2))
    assert summarize(tiny).min == 3e-200


def test_norm_closer_to_exact_than_tolerance():
    # The chunked float64 norm against the exactly rounded one (math.fsum of squares),
    # within the stated bound for any summation order (a fixed 1e-14 here failed on an
    # AVX-512 CPU's torch path: 1.5e-14, issue #15).
    torch.manual_seed(6)
    t = torch.randn(300_000)
    exact = math.sqrt(math.fsum(v * v for v in t.double().tolist()))
    assert summarize(t).norm == pytest.approx(exact, rel=sum_rtol(t.numel()))


def test_sparse_tensor():
    dense = torch.tensor([[0.0, 2.0], [-3.0, 0.0]])
    s = summarize(dense.to_sparse())
    assert (s.norm, s.min, s.max, s.zeros) == (math.sqrt(13.0), -3.0, 2.0, 0.5)


def test_complex():
    t = torch.tensor([3 + 4j, 0j, complex("nan")], dtype=torch.complex64)
    s = summarize(t)
    assert (s.norm, s.min, s.max, s.nan, s.zeros, s.mean_abs) == (5.0, None, None, 1, 1 / 3,
                                                                   2.5)


def test_meta_tensor():
    s = summarize(torch.empty(3, 4, device="meta"))
    assert (s.numel, s.bytes, s.norm) == (12, 48, None)


def test_progress_reports_every_byte(small_chunks):
    seen: list[int] = []
    t = torch.randn(50, dtype=torch.float16)
    t[9] = float("nan")
    summarize(t, progress=seen.append)
    assert sum(seen) == 100 and len(seen) == 8


def test_moments_leaves_the_thread_count_alone():
    before = torch.get_num_threads()
    kernels.moments(torch.randn(10))
    assert torch.get_num_threads() == before


floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e30, -1e-30]),
)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(floats, min_size=1, max_size=60),
    limit=st.integers(1, 16),
    dtype=st.sampled_from(FLOAT_DTYPES),
    step=st.integers(1, 3),
)
def test_property_matches_torch(values, limit, dtype, step):
    old = kernels.CHUNK_ELEMENTS
    kernels.CHUNK_ELEMENTS = limit
    try:
        t = torch.tensor(values, dtype=torch.float32).to(dtype)[::step]
        assert_agrees(t)
    finally:
        kernels.CHUNK_ELEMENTS = old


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1,
                       max_size=40),
       limit=st.integers(1, 9))
def test_property_float64_full_range(values, limit):
    old = kernels.CHUNK_ELEMENTS
    kernels.CHUNK_ELEMENTS = limit
    try:
        t = torch.tensor(values, dtype=torch.float64)
        s = summarize(t)
        ref = reference(t)
        assert (s.min, s.max, s.nan, s.inf, s.zeros) == (ref["min"], ref["max"], ref["nan"],
                                                         ref["inf"], ref["zeros"])
        fin = [v for v in values if math.isfinite(v)]
        if fin:
            peak = max(abs(v) for v in fin)
            exact = peak * math.sqrt(math.fsum((v / peak) ** 2 for v in fin)) if peak else 0.0
            assert s.norm == pytest.approx(exact, rel=sum_rtol(len(values)))
    finally:
        kernels.CHUNK_ELEMENTS = old


def test_worker_threads_give_identical_numbers(small_chunks):
    # moments() splits the blocks across torch.get_num_threads() worker threads; the
    # block results combine order-independently, so the numbers cannot depend on it.
    torch.manual_seed(7)
    t = torch.randn(300)
    t[[3, 200]] = float("nan")
    t[[50, 51]] = 0.0
    t[250] = -float("inf")
    before = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(summarize(t))
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1] == results[2]
    assert_agrees(t)


# (no +-1e308: their sum overflows, and inf - inf makes both means NaN)
EDGE64 = [0.0, -0.0, 1.0, -1.0, 1e200, -1e200, 1e-200, -1e-200, 5e-324, 1e154, 3e-160,
          2.5, 1e-3, float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_long_runs_with_edges_in_every_dtype(dtype):
    # runs of hundreds of ordinary values (the C kernel's vector loop) beside runs that
    # hold NaN, Inf, zeros, subnormals and values whose squares leave float64's range
    gen = torch.Generator().manual_seed(11)
    edge = torch.tensor(EDGE64, dtype=torch.float64)
    t = edge[torch.randint(len(EDGE64), (2000,), generator=gen)]
    t[256:1280] = torch.randn(1024, generator=gen, dtype=torch.float64)
    t[1300:1400] = 0.0
    t[1536:1792] = 1e-3 * torch.rand(256, generator=gen, dtype=torch.float64)
    t = t.to(dtype)
    for piece in (t, t[256:1280], t[1536:1792], t[1300:1400], t[100:1100]):
        assert_agrees(piece)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.one_of(st.floats(-1e300, 1e300),  # sums stay finite
                                 st.sampled_from([float("nan"), float("inf"), -float("inf")])),
                       min_size=1, max_size=700),
       dtype=st.sampled_from(FLOAT_DTYPES))
def test_property_long_runs(values, dtype):
    t = torch.tensor(values, dtype=torch.float64).to(dtype)
    assert_agrees(t)
