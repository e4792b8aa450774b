"""diff says when a value became NaN or Inf on one side only (issue #18, review finding 7).

Before, a checkpoint whose exp_avg had one NaN read ``outside: 1/64  max|a−b|: 0``: true
numbers (max |a − b| is over the finite pairs) that hide the NaN. The metrics now count,
exactly and on every kernel path, the pairs with NaN on one side only (``nan_a_only``,
``nan_b_only``), ±Inf against a finite value (``inf_a_only``, ``inf_b_only``) and NaN on
both sides (``nan_both``); the human table says them beside ``outside``.
The counts are checked against plain torch expressions on the same tensors.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from optstate.analysis.diff import DiffOptions, diff_states
from optstate.numeric.compare import compare_tensors
from optstate.numeric.kernels import CHUNK_ELEMENTS

from .kernel_paths import each_kernel_path  # noqa: F401 - a fixture, asked for by name

KEYS = ("nan_a_only", "nan_b_only", "inf_a_only", "inf_b_only", "nan_both")


def adam_state(steps: int = 3) -> dict:
    """A real Adam state: an 8x8 Linear (64-element exp_avg) trained a few steps."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randn(16, 8)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return copy.deepcopy(opt.state_dict())


def expected(a: torch.Tensor, b: torch.Tensor) -> dict[str, int]:
    """The definition, in plain torch on whole tensors."""
    na, nb = torch.isnan(a), torch.isnan(b)
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    ia, ib = torch.isinf(a), torch.isinf(b)
    return {"nan_a_only": int((na & ~nb).sum()), "nan_b_only": int((nb & ~na).sum()),
            "inf_a_only": int((ia & fb).sum()), "inf_b_only": int((ib & fa).sum()),
            "nan_both": int((na & nb).sum())}


def counts(cmp) -> dict[str, int]:  # noqa: ANN001 - a TensorComparison
    return {k: getattr(cmp, k) for k in KEYS}


def test_one_nan_in_b_is_told_in_json_and_table(tmp_path, cli):
    a = adam_state()
    b = copy.deepcopy(a)
    b["state"][0]["exp_avg"].view(-1)[5] = math.nan
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    r = cli("diff", "--json", tmp_path / "a.pt", tmp_path / "b.pt")
    assert r.exit_code == 1, r.stdout
    (change,) = json.loads(r.stdout)["changes"]
    assert change["path"] == "state[0].exp_avg"
    m = change["metrics"]
    assert (m["numel"], m["outside"], m["max_abs"]) == (64, 1, 0.0)
    assert {k: m[k] for k in KEYS} == {**dict.fromkeys(KEYS, 0), "nan_b_only": 1}
    r = cli("diff", tmp_path / "a.pt", tmp_path / "b.pt", env={"COLUMNS": "200"})
    assert r.exit_code == 1
    assert "1/64 (1 NaN in b only)" in r.stdout, r.stdout
    assert "over the finite pairs" in r.stdout, r.stdout
    # the other way round: NaN in a only
    r = cli("diff", "--json", tmp_path / "b.pt", tmp_path / "a.pt")
    m = json.loads(r.stdout)["changes"][0]["metrics"]
    assert (m["nan_a_only"], m["nan_b_only"]) == (1, 0)


def test_inf_against_a_number_and_nan_on_both_sides(tmp_path, cli):
    a = adam_state()
    b = copy.deepcopy(a)
    b["state"][0]["exp_avg_sq"].view(-1)[:3] = math.inf
    a["state"][1]["exp_avg"].view(-1)[0] = math.nan
    b["state"][1]["exp_avg"].view(-1)[0] = math.nan
    b["state"][1]["exp_avg"].view(-1)[1] = -math.inf
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    r = cli("diff", "--json", "--nan-differs", tmp_path / "a.pt", tmp_path / "b.pt")
    ch = {c["path"]: c["metrics"] for c in json.loads(r.stdout)["changes"]
          if c["metrics"] is not None}
    sq, ea = ch["state[0].exp_avg_sq"], ch["state[1].exp_avg"]
    assert (sq["outside"], sq["inf_b_only"], sq["nan_b_only"]) == (3, 3, 0)
    assert (ea["outside"], ea["inf_b_only"], ea["nan_both"]) == (2, 1, 1)
    r = cli("diff", "--nan-differs", tmp_path / "a.pt", tmp_path / "b.pt",
            env={"COLUMNS": "200"})
    assert "3/64 (3 Inf in b only)" in r.stdout, r.stdout
    assert "2/8 (1 Inf in b only, 1 NaN on both sides)" in r.stdout, r.stdout


def test_finite_changes_say_nothing_more(tmp_path, cli):
    torch.save(adam_state(3), tmp_path / "a.pt")
    torch.save(adam_state(4), tmp_path / "b.pt")
    r = cli("diff", "--json", tmp_path / "a.pt", tmp_path / "b.pt")
    for c in json.loads(r.stdout)["changes"]:
        if c["metrics"] is not None:
            assert {k: c["metrics"][k] for k in KEYS} == dict.fromkeys(KEYS, 0)
    r = cli("diff", tmp_path / "a.pt", tmp_path / "b.pt", env={"COLUMNS": "200"})
    assert "only)" not in r.stdout and "finite pairs" not in r.stdout, r.stdout


def test_mirrored_change_swaps_the_sides():
    a = adam_state()
    b = copy.deepcopy(a)
    b["state"][0]["exp_avg"].view(-1)[0] = math.nan
    b["state"][0]["exp_avg"].view(-1)[1] = math.inf
    (ab,) = diff_states(a, b, DiffOptions()).changes
    (ba,) = diff_states(b, a, DiffOptions()).changes
    assert ab.mirrored().metrics == {**ba.metrics, "max_rel": ab.metrics["max_rel"]}
    assert (ba.metrics["nan_a_only"], ba.metrics["inf_a_only"]) == (1, 1)


def _spoiled(t: torch.Tensor, g: torch.Generator, k: int) -> torch.Tensor:
    """t with k random elements each set to NaN, +Inf or -Inf."""
    t = t.clone()
    flat = t.view(-1)
    idx = torch.randint(0, flat.numel(), (k,), generator=g)
    vals = torch.tensor([math.nan, math.inf, -math.inf])[torch.randint(0, 3, (k,),
                                                                        generator=g)]
    flat[idx] = vals.to(t.dtype)
    return t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "multi-block"])
def test_counts_are_exact_on_every_path(each_kernel_path, dtype, layout):  # noqa: F811
    g = torch.Generator().manual_seed(7)
    n = CHUNK_ELEMENTS * 2 + 123 if layout == "multi-block" else 600
    base = torch.randn(n, generator=g).to(dtype)
    a = _spoiled(base, g, 40)
    b = _spoiled(base, g, 40)
    b[:5] = a[:5]  # some non-finite pairs equal on both sides
    if layout == "transposed":
        a, b, base = (t.view(20, 30).t() for t in (a, b, base))
        assert not a.is_contiguous()
    for x, y in ((a, b), (b, a), (a, base), (base, b)):
        for nan_equal in (True, False):
            cmp = compare_tensors(x, y, atol=1e-3, nan_equal=nan_equal)
            want = expected(x, y)
            assert counts(cmp) == want
            assert sum(want.values()) > 0
    clean = compare_tensors(base, base * 2)
    assert counts(clean) == dict.fromkeys(KEYS, 0)


def test_complex_and_storage_views_count_too():
    a = torch.tensor([1 + 1j, complex(math.nan, 0), 2j, complex(math.inf, 1)])
    b = torch.tensor([complex(math.nan, 0), complex(math.nan, 0), 2j, 3 + 0j])
    assert counts(compare_tensors(a, b)) == expected(a, b) == {
        "nan_a_only": 0, "nan_b_only": 1, "inf_a_only": 1, "inf_b_only": 0, "nan_both": 1}
    # views repeating stored elements: counted over the stored pairs, as outside is
    sa = torch.tensor([1.0, math.nan]).expand(50, 2)
    sb = torch.tensor([math.inf, math.nan]).expand(50, 2)
    cmp = compare_tensors(sa, sb)
    assert cmp.stored == 2
    assert counts(cmp) == {**dict.fromkeys(KEYS, 0), "inf_b_only": 1, "nan_both": 1}


def test_by_entry_overview_counts_them(tmp_path, cli):
    a = adam_state()
    b = copy.deepcopy(a)
    b["state"][0]["exp_avg"].view(-1)[5] = math.nan
    b["state"][1]["exp_avg"].view(-1)[0] = math.inf
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    report = json.loads(cli("diff", "--json", tmp_path / "a.pt", tmp_path / "b.pt").stdout)
    (row,) = [r for r in report["by_entry"] if r["entry"] == "exp_avg"]
    assert (row["outside"], row["numel"], row["nan_b_only"], row["inf_b_only"]) == (2, 72, 1, 1)
    r = cli("diff", "--max-diffs", "0", tmp_path / "a.pt", tmp_path / "b.pt",
            env={"COLUMNS": "200"})
    assert "2/72 (1 NaN in b only, 1 Inf in b only)" in r.stdout, r.stdout
    assert "over the finite pairs" in r.stdout, r.stdout
