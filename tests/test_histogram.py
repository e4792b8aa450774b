"""inspect --hist: histogram data equal to torch's own, drawn as rich bars."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optstate.analysis.histogram import histogram
from optstate.render.histogram import bar_levels, sparkline


def manual_counts(x: torch.Tensor, edges: list[float]) -> list[int]:
    """Count by comparing with the edges: [a, b) bins, the last one [a, b]."""
    n = len(edges) - 1
    return [int(((x >= edges[i]) & ((x < edges[i + 1]) if i < n - 1 else (x <= edges[i + 1])))
                .sum()) for i in range(n)]


def test_edges_and_counts_are_torch_histogram_of_the_finite_values():
    t = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    t[5], t[17], t[400] = math.nan, math.inf, -math.inf
    t[7:12] = 0.0
    h = histogram(t, bins=16)
    finite = t[torch.isfinite(t)].double()
    counts, edges = torch.histogram(finite, bins=16,
                                    range=(float(finite.min()), float(finite.max())))
    assert h["edges"] == edges.tolist()
    assert h["counts"] == [int(c) for c in counts]
    assert h["counts"] == manual_counts(finite, h["edges"])
    assert (h["min"], h["max"]) == (float(finite.min()), float(finite.max()))
    assert (h["nan"], h["posinf"], h["neginf"], h["zeros"], h["numel"]) == (1, 1, 1, 5, 1000)
    assert sum(h["counts"]) == 997
    assert h["of"] == "values" and h["bins"] == 16


def test_one_value_sits_in_the_middle_bin_like_torch_without_a_range():
    t = torch.full((7,), 3.0)
    h = histogram(t, bins=4)
    counts, edges = torch.histogram(t.double(), bins=4)  # torch's own +-0.5 convention
    assert h["edges"] == edges.tolist() == [2.5, 2.75, 3.0, 3.25, 3.5]
    assert h["counts"] == [int(c) for c in counts] == [0, 0, 7, 0]
    zeros = histogram(torch.zeros(5), bins=4)
    assert (zeros["zeros"], zeros["min"], zeros["max"], zeros["counts"]) == (5, 0.0, 0.0,
                                                                           [0, 0, 5, 0])


def test_huge_values_still_bin():
    big = histogram(torch.full((3,), 1e20), bins=4)
    assert big["edges"][0] < 1e20 < big["edges"][-1] and big["counts"] == [0, 0, 3, 0]
    edge = histogram(torch.tensor([-1e308, 0.0, 1e308], dtype=torch.float64), bins=4)
    assert edge["edges"] == [-1e308, -5e307, 0.0, 5e307, 1e308]
    assert edge["counts"] == [1, 0, 1, 1]


def test_dtypes_and_layouts():
    ints = histogram(torch.tensor([0, 1, 1, 5], dtype=torch.int64), bins=5)
    assert ints["counts"] == [1, 2, 0, 0, 1] and ints["zeros"] == 1
    flags = histogram(torch.tensor([True, False, True]), bins=2)
    assert flags["counts"] == [1, 2]
    z = torch.tensor([3 + 4j, 0j, 1j], dtype=torch.complex64)
    c = histogram(z, bins=5)
    assert (c["of"], c["min"], c["max"], c["counts"]) == ("abs", 0.0, 5.0, [1, 1, 0, 0, 1])
    sparse = torch.tensor([[0.0, 2.0], [0.0, 0.0]]).to_sparse()
    s = histogram(sparse, bins=2)
    assert (s["counts"], s["zeros"]) == ([3, 1], 3)
    bf = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
    assert histogram(bf, bins=3)["edges"] == [-2.25, -1.0, 0.25, 1.5]


def test_nothing_to_bin():
    for t in (torch.empty(0), torch.full((3,), math.nan), torch.empty(4, device="meta")):
        h = histogram(t)
        assert h["edges"] is None and h["counts"] is None and h["min"] is None
    assert histogram(torch.full((3,), math.nan))["nan"] == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1,
                max_size=40), st.integers(1, 12))
def test_every_element_is_counted_once(values, bins):
    t = torch.tensor(values, dtype=torch.float32)
    h = histogram(t, bins=bins)
    binned = sum(h["counts"]) if h["counts"] is not None else 0
    assert binned + h["nan"] + h["posinf"] + h["neginf"] == len(values)
    if h["counts"] is not None:
        finite = t[torch.isfinite(t)].double()
        assert h["edges"][0] <= float(finite.min()) and float(finite.max()) <= h["edges"][-1]
        assert len(h["edges"]) == bins + 1


def test_bars():
    assert bar_levels([0, 1, 4, 8]) == [0, 1, 4, 8]
    assert sparkline([0, 1, 4, 8]) == " ▁▄█"
    assert sparkline([1_000_000, 0, 1]) == "█ ▁"  # a lone outlier stays visible
    assert sparkline([0, 0]) == "  "


# --------------------------------------------------------------------------- inspect --hist


@pytest.fixture
def sick_sgd(tmp_path):
    """A real SGD state whose first buffer collapsed to zero and second exploded."""
    w, b = torch.nn.Parameter(torch.ones(10)), torch.nn.Parameter(torch.ones(6))
    opt = torch.optim.SGD([w, b], lr=0.1, momentum=0.9)
    w.grad = torch.zeros(10)
    b.grad = torch.tensor([1.0, 2.0, math.nan, math.inf, 1e30, -3.0])
    opt.step()
    path = tmp_path / "sick.pt"
    torch.save(opt.state_dict(), path)
    return path


def test_inspect_hist_human(cli, sick_sgd):
    r = cli("inspect", sick_sgd, "--hist")
    assert r.exit_code == 0, r.stderr
    lines = [line.rstrip() for line in r.stdout.splitlines()]
    start = lines.index("histograms (16 bins from min to max of the finite values)")
    assert lines[start + 1:start + 5] == [
        "param entry           min histogram          max   zeros NaN ±Inf",
        "─" * 65,
        "    0 momentum_buffer   0 all 0              0      100%   0    0",
        "    1 momentum_buffer  -3 ▕█              ▃▏ 1e+30    0%   1    1",
    ]


def test_inspect_hist_json_is_torch_histogram_of_each_buffer(cli, tmp_path):
    path = tmp_path / "adam.pt"
    r = cli("simulate", "-O", "adam", "--grad", "normal", "--shape", "8x8", "--shape", "5",
            "--steps", "3", "--save", path)
    assert r.exit_code == 0, r.stderr
    report = json.loads(cli("inspect", path, "--hist", "--json").stdout)
    state = torch.load(path, weights_only=True)["state"]
    checked = 0
    for p in report["params"]:
        for name, entry in p["state"].items():
            t = state[p["position"]][name]
            if t.dim() == 0:
                assert "histogram" not in entry  # step: a scalar, nothing to bin
                continue
            x = t.double().reshape(-1)
            counts, edges = torch.histogram(x, bins=16, range=(float(x.min()), float(x.max())))
            assert entry["histogram"]["edges"] == edges.tolist()
            assert entry["histogram"]["counts"] == [int(c) for c in counts]
            checked += 1
    assert checked == 4
    plain = json.loads(cli("inspect", path, "--json").stdout)
    assert "histogram" not in plain["params"][0]["state"]["exp_avg"]


def test_inspect_hist_follows_the_selection(cli, sick_sgd):
    report = json.loads(cli("inspect", sick_sgd, "--hist", "--param", "1", "--json").stdout)
    assert [p["position"] for p in report["params"]] == [1]
    assert report["params"][0]["state"]["momentum_buffer"]["histogram"]["nan"] == 1


def test_inspect_hist_needs_tensor_data(cli, sick_sgd):
    r = cli("inspect", sick_sgd, "--hist", "--no-stats")
    assert r.exit_code == 2
    assert r.stderr == "Error: --hist reads tensor data; it cannot go with --no-stats\n"


def test_inspect_hist_reads_lazy_tensors_of_a_dcp_folder(cli, tmp_path):
    from tests.test_dcp import dcp_save, trained

    _, opt = trained()
    torch.save(opt.state_dict(), tmp_path / "adam.pt")
    folder = dcp_save(opt.state_dict(), tmp_path / "adam_dcp")
    plain, dcp = (json.loads(cli("inspect", p, "--hist", "--json").stdout)
                  for p in (tmp_path / "adam.pt", folder))
    hists = [[(name, e.get("histogram")) for name, e in p["state"].items()]
             for p in dcp["params"]]
    assert hists == [[(name, e.get("histogram")) for name, e in p["state"].items()]
                     for p in plain["params"]]
    assert sum(h is not None for row in hists for _, h in row) == 8  # exp_avg(_sq) x 4
