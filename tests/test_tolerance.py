"""optstate.numeric.tolerance: the stated bound covers any summation order; OPTSTATE_NO_C works.

Another CPU sums in other vector widths (AVX-512: 8 doubles per lane set, AVX2: 4, NEON: 2)
and another BLAS in other blocks, so a test that compares optstate with torch must allow
what *any* order can give, not what this machine's order gives. The data below is built
so that a left-to-right sum rounds up at every step (1.0, then terms of 0.75 ulp(1)):
its orders spread by ~n*u/4 relative, 5.5e-12 at n = 1e5, beyond the old fixed 1e-12.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from optstate.numeric import kernel_switch
from optstate.numeric.compare import compare_tensors
from optstate.numeric.stats import summarize
from optstate.numeric.tolerance import gamma, sum_rtol

from .kernel_paths import each_kernel_path  # noqa: F401 - a fixture, asked for by name

ROOT = Path(__file__).resolve().parent.parent
K = 100_000
SMALL = 1.5 * 2.0 ** -53  # 0.75 ulp(1.0): 1 + SMALL rounds up to 1 + ulp, 0.25 ulp high


def lane_sum(values: list[float], lanes: int) -> float:
    """A vectorised sum as a CPU with ``lanes`` float64 lanes does it: lane j adds every
    lanes-th value left to right, then the lanes are added."""
    acc = [0.0] * lanes
    for i, v in enumerate(values):
        acc[i % lanes] += v
    total = 0.0
    for a in acc:
        total += a
    return total


def orders(values: list[float]) -> dict[str, float]:
    """The same float64 sum in the orders real hardware and libraries use."""
    shuffled = list(values)
    random.Random(0).shuffle(shuffled)
    out = {f"{n} lanes": lane_sum(values, n) for n in (1, 2, 4, 8, 16)}
    out["reversed"] = lane_sum(values[::-1], 1)
    out["shuffled"] = lane_sum(shuffled, 1)
    out["pairwise"] = float(torch.tensor(values, dtype=torch.float64).sum())
    out["exact"] = math.fsum(values)
    return out


def adversarial_terms() -> list[float]:
    return [1.0] + [SMALL] * K


def test_orders_really_differ_beyond_the_old_fixed_tolerance():
    # the premise: a fixed 1e-12 is no bound for n = 1e5, whatever the CPU
    sums = orders(adversarial_terms())
    spread = (max(sums.values()) - min(sums.values())) / sums["exact"]
    assert spread > 1e-12
    assert spread == pytest.approx(K * 0.25 * 2.0 ** -52, rel=1e-3)


def test_every_order_within_the_stated_bound():
    values = adversarial_terms()
    sums = orders(values)
    tol = sum_rtol(len(values))
    for a, x in sums.items():
        for b, y in sums.items():
            assert abs(x - y) <= tol * y, (a, b, abs(x - y) / y, tol)


def test_statistics_agree_with_every_order(each_kernel_path):  # noqa: F811
    # x*x of each value is the adversarial term: a left-to-right sum of squares rounds up
    # at every step. optstate's norm, mean |x| and mean (and diff's norms) must lie within
    # the stated bound of the same sums taken in every order above.
    t = torch.full((K + 1,), math.sqrt(SMALL), dtype=torch.float64)
    t[0] = 1.0
    t[1::2].neg_()  # signs cancel in the mean, not in mean |x| or the norm
    n = t.numel()
    tol = sum_rtol(n)
    vals = t.tolist()
    sq = orders([v * v for v in vals])
    ab = orders([abs(v) for v in vals])
    signed = orders(vals)
    s = summarize(t)
    r = compare_tensors(t, t.clone())
    for order in sq:
        for got in (s.norm, r.norm_a, r.norm_b):
            assert abs(got - math.sqrt(sq[order])) <= tol * math.sqrt(sq[order]), order
        assert abs(s.mean_abs - ab[order] / n) <= tol * ab[order] / n, order
        assert abs(s.mean - signed[order] / n) <= tol * s.mean_abs, order


def test_bound_values():
    u = 2.0 ** -53
    assert gamma(10) == pytest.approx(10 * u, rel=1e-14)
    assert sum_rtol(1) == pytest.approx(4 * 3 * u, rel=1e-14)
    assert sum_rtol(300_000) == pytest.approx(4 * 300_002 * u, rel=1e-9)
    assert sum_rtol(2**60) == math.inf  # no digit is guaranteed any more
    assert sum_rtol(10, torch.float32) == pytest.approx(4 * 12 * 2.0 ** -24, rel=1e-5)


def _kernel_report(env: dict[str, str]) -> list[str]:
    code = ("import sys, torch; from optstate.numeric import kernel_switch, kernels; "
            "s = kernels.moments(torch.arange(5.0)); "
            "print(kernel_switch.current_path(), 'optstate.numeric._ckernels' in sys.modules, "
            "s.sum)")
    e = {k: v for k, v in os.environ.items() if k != "OPTSTATE_NO_C"}
    out = subprocess.run([sys.executable, "-c", code], env={**e, **env}, text=True,
                         capture_output=True, check=True)
    return out.stdout.split()


def test_optstate_no_c_disables_the_extension():
    # the documented switch, read at import: the C kernel is never even imported
    assert _kernel_report({"OPTSTATE_NO_C": "1"}) == ["torch", "False", "10.0"]
    path, imported, total = _kernel_report({})  # as built
    if importlib.util.find_spec("optstate.numeric._ckernels") is None:
        assert (path, imported) == ("torch", "False")
    else:
        assert path in ("c-avx2", "c-2lane") and imported == "True"
    assert total == "10.0"


def test_use_path_switches_and_restores(each_kernel_path):  # noqa: F811
    before = kernel_switch.current_path()
    assert before == each_kernel_path
    with kernel_switch.use_path("torch"):
        assert kernel_switch.current_path() == "torch"
    assert kernel_switch.current_path() == before
    with pytest.raises(ValueError, match="unknown kernel path"):
        with kernel_switch.use_path("avx512"):
            pass


@pytest.mark.slow
def test_install_without_a_c_compiler_succeeds_and_gives_the_same_numbers(tmp_path):
    # CC=false: a C compiler that always fails. The build must still succeed (setup.py's
    # extensions are optional), ship no compiled module, and the installed copy must run
    # on torch with the numbers the tests hold every path to.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "optstate", src / "optstate",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k != "OPTSTATE_NO_C"}
    env["CC"] = "false"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                           env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("optstate-*.whl")
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith((".so", ".pyd"))]
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                    "--target", str(site), str(wheel)], env=env, capture_output=True,
                   check=True)
    code = ("import optstate, torch; from optstate.numeric import kernel_switch; "
            "from optstate.numeric.stats import summarize; "
            "s = summarize(torch.linspace(-3, 5, 1_000_003)); "
            "print(optstate.__file__); print(kernel_switch.current_path()); "
            "print(repr(s.min), repr(s.max), s.nan, repr(s.norm))")
    run = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(site)},
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    where, path, numbers = run.stdout.splitlines()
    assert where.startswith(str(site)) and path == "torch"
    lo, hi, nan, norm = numbers.split()
    here = summarize(torch.linspace(-3, 5, 1_000_003))  # this process: the C kernel if built
    assert (float(lo), float(hi), int(nan)) == (here.min, here.max, here.nan)
    assert float(norm) == pytest.approx(here.norm, rel=sum_rtol(1_000_003), abs=0)
