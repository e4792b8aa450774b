"""Views that repeat stored elements: statistics and diffs over their storage (issue #16).

A 2 KB file can hold ``torch.zeros(1).expand(2**40)``, or 16 KB viewed with strides
(1, 1, 1, 1) as 2**40 elements. inspect and diff must do work that follows the bytes
stored: they summarise the distinct stored elements such a view covers (reporting the
logical count beside), compare two such views element for element over their storage
when their sizes and strides agree, and refuse with one Error line otherwise.
"""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch

from optstate.numeric.compare import UncomparableViewsError, compare_tensors
from optstate.numeric.stats import summarize
from optstate.numeric.tolerance import sum_rtol
from optstate.numeric.views import EXPANDED, OVERLAPPING, distinct_elements, repeated_view
from tests.bounded import run_bounded

HUGE = 2**40


def covered_offsets(t: torch.Tensor) -> list[int]:
    """Brute force: every index of the view, its storage offset; the distinct ones."""
    offs = {t.storage_offset() + sum(i * s for i, s in zip(idx, t.stride(), strict=True))
            for idx in itertools.product(*(range(n) for n in t.shape))}
    return sorted(offs)


def test_distinct_elements_against_brute_force():
    base = torch.arange(400, dtype=torch.float64)  # value == storage offset
    rng = random.Random(0)
    kinds = set()
    for _ in range(400):
        dims = rng.randint(1, 4)
        shape = [rng.randint(1, 5) for _ in range(dims)]
        stride = [rng.choice([0, 1, 1, 2, 3, 5, 7, 12, 30]) for _ in range(dims)]
        span = 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
        offset = rng.randint(0, 400 - span)
        t = base.as_strided(shape, stride, offset)
        got = distinct_elements(t)
        kinds.add(repeated_view(t))
        assert sorted(got.reshape(-1).tolist()) == covered_offsets(t), (shape, stride, offset)
        assert got.numel() <= span
    assert kinds == {None, EXPANDED, OVERLAPPING}


def test_detection_from_sizes_and_strides():
    assert repeated_view(torch.zeros(1).expand(HUGE)) == EXPANDED
    assert repeated_view(torch.zeros(4096).as_strided((1024,) * 4, (1,) * 4)) == OVERLAPPING
    assert repeated_view(torch.zeros(3, 4).t()) is None
    assert repeated_view(torch.zeros(5)[::2]) is None
    assert repeated_view(torch.zeros(1).expand(1)) is None


def adam_like(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> dict:
    return {"state": {0: {"step": torch.tensor(3.0), "exp_avg": exp_avg,
                          "exp_avg_sq": exp_avg_sq}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                              "weight_decay": 0.0, "amsgrad": False, "params": [0]}]}


def storage_values() -> torch.Tensor:
    torch.manual_seed(0)
    s = torch.randn(4096)
    s[7] = float("nan")
    s[100:110] = 0.0
    return s


def hostile_files(tmp_path, legacy: bool = False):
    """zeros(1).expand(2**40) and 16 KB viewed as (1024,)*4 with strides (1,1,1,1)."""
    expanded = torch.full((1,), -0.25).expand(HUGE)
    overlapping = storage_values().as_strided((1024,) * 4, (1,) * 4)
    path = tmp_path / ("legacy.pt" if legacy else "hostile.pt")
    torch.save(adam_like(expanded, overlapping), path,
               _use_new_zipfile_serialization=not legacy)
    assert path.stat().st_size < 20_000
    return path


def test_summarize_expanded_and_overlapping_over_storage():
    s = summarize(torch.full((1,), -0.25).expand(HUGE))
    assert (s.numel, s.stored, s.view) == (HUGE, 1, EXPANDED)
    assert (s.norm, s.min, s.max, s.mean, s.mean_abs, s.zeros) == (0.25, -0.25, -0.25, -0.25,
                                                                   0.25, 0.0)
    assert s.to_dict()["over"] == "storage" and s.to_dict()["stored"] == 1
    stored = storage_values()
    s = summarize(stored.as_strided((1024,) * 4, (1,) * 4))
    fin = stored[torch.isfinite(stored)].double()
    assert (s.numel, s.stored, s.view, s.nan) == (HUGE, 4093, OVERLAPPING, 1)
    assert s.zeros == 10 / 4093
    assert (s.min, s.max) == (float(fin[:4093 - 1].min()), float(fin[:4093 - 1].max()))
    assert s.norm == pytest.approx(float(fin[:4092].norm()), rel=sum_rtol(4093))
    # an ordinary tensor keeps the schema it always had
    assert "stored" not in summarize(torch.ones(3)).to_dict()


def test_compare_same_layout_over_storage_and_refuse_different_layouts():
    a = storage_values().as_strided((1024,) * 4, (1,) * 4)
    b_store = storage_values()
    b_store[50] += 1.0
    b = b_store.as_strided((1024,) * 4, (1,) * 4)
    r = compare_tensors(a, b)
    assert (r.n_outside, r.max_abs, r.stored, r.view) == (1, 1.0, 4093, OVERLAPPING)
    e = torch.zeros(1).expand(HUGE)
    assert compare_tensors(e, e).equal
    with pytest.raises(UncomparableViewsError, match="4,093 stored elements"):
        compare_tensors(a, torch.zeros(1).expand((1024,) * 4))
    # one side an ordinary tensor: compared element for element (its storage bounds it)
    x = torch.zeros(1).expand(1000)
    r = compare_tensors(x, torch.arange(1000.0))
    assert (r.n_outside, r.stored, r.view) == (999, None, None)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_inspect_is_bounded_and_reports_storage_statistics(tmp_path, legacy):
    path = hostile_files(tmp_path, legacy)
    r = run_bounded("inspect", path, "--json", "--values", "--hist", timeout=45)
    assert not r.timed_out and r.returncode == 0, r.stderr
    state = json.loads(r.stdout)["params"][0]["state"]
    ea, es = state["exp_avg"], state["exp_avg_sq"]
    # --values: the first and last 8 in flattened order, read without flattening
    first, last = storage_values()[:8].tolist(), storage_values()[4085:4093].tolist()
    assert es["values_first"] == [None if math.isnan(v) else v for v in first]
    assert (es["values_last"], ea["values_last"]) == (last, [-0.25] * 8)
    # --hist: over the same stored elements (NaN counted apart, as in the statistics)
    h = es["histogram"]
    assert (h["stored"], h["over"], h["nan"], sum(h["counts"])) == (4093, "storage", 1, 4092)
    assert (ea["histogram"]["stored"], ea["histogram"]["counts"].count(1)) == (1, 1)
    assert (ea["numel"], ea["stored"], ea["over"], ea["view"]) == (HUGE, 1, "storage", EXPANDED)
    assert (ea["norm"], ea["min"], ea["mean"], ea["zeros"]) == (0.25, -0.25, -0.25, 0.0)
    stored = storage_values()[:4093].double()
    fin = stored[torch.isfinite(stored)]
    assert (es["numel"], es["stored"], es["view"], es["nan"]) == (HUGE, 4093, OVERLAPPING, 1)
    assert (es["min"], es["max"]) == (float(fin.min()), float(fin.max()))
    assert es["norm"] == pytest.approx(float(fin.norm()), rel=sum_rtol(4093))
    assert es["mean"] == pytest.approx(float(fin.mean()), abs=sum_rtol(4093) * es["mean_abs"])
    assert r.seconds < 45


def test_inspect_human_view_says_what_the_statistics_are_over(tmp_path):
    r = run_bounded("inspect", hostile_files(tmp_path), timeout=45)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())  # lines wrap at the terminal's width
    assert ("state[0].exp_avg: stats over 1 stored element of 1,099,511,627,776 "
            "(expanded view)") in out
    assert ("state[0].exp_avg_sq: stats over 4,093 stored elements of 1,099,511,627,776 "
            "(overlapping view)") in out


def test_diff_is_bounded(tmp_path):
    a = hostile_files(tmp_path)
    r = run_bounded("diff", a, a, "--json", timeout=45)
    assert not r.timed_out and r.returncode == 0, r.stderr
    changed = storage_values()
    changed[3] += 0.5
    b = tmp_path / "b.pt"
    torch.save(adam_like(torch.full((1,), -0.25).expand(HUGE),
                         changed.as_strided((1024,) * 4, (1,) * 4)), b)
    r = run_bounded("diff", a, b, "--json", timeout=45)
    assert not r.timed_out and r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    (change,) = [c for c in doc["changes"] if c.get("metrics")]
    m = change["metrics"]
    assert (m["numel"], m["stored"], m["over"], m["outside"]) == (HUGE, 4093, "storage", 1)
    assert m["max_abs"] == pytest.approx(0.5, rel=1e-6)
    c = tmp_path / "c.pt"
    torch.save(adam_like(torch.full((1,), -0.25).expand(HUGE),
                         torch.zeros(1).expand((1024,) * 4)), c)
    r = run_bounded("diff", a, c, timeout=45)
    assert not r.timed_out and r.returncode == 2, r.stderr
    assert r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    assert "4,093 stored elements" in r.stderr and "1 stored element" in r.stderr
    assert math.isfinite(r.seconds)


def test_diff_human_view_counts_stored_pairs(cli, tmp_path):
    a = hostile_files(tmp_path)
    changed = storage_values()
    changed[3] += 0.5
    b = tmp_path / "b.pt"
    torch.save(adam_like(torch.full((1,), -0.25).expand(HUGE),
                         changed.as_strided((1024,) * 4, (1,) * 4)), b)
    r = cli("diff", a, b)
    assert r.exit_code == 1, r.stderr
    assert "1/4093 stored" in r.stdout and "1099511627776" not in r.stdout
    r = cli("diff", a, b, "--json")
    (row,) = [e for e in json.loads(r.stdout)["by_entry"] if e["entry"] == "exp_avg_sq"]
    assert (row["outside"], row["numel"]) == (1, 4093)
