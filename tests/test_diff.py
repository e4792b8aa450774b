"""optstate.analysis.diff core: real torch optimizers, exact expectations computed with torch."""

from __future__ import annotations

import copy
import json
import math
import os
import re
from dataclasses import replace

import pytest
import torch

from optstate.analysis.diff import Change, DiffOptions, diff_files, diff_states
from optstate.analysis.diff_report import diff_report
from optstate.base.errors import ConfigError


def _params(*shapes: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_(True) for s in shapes]


def _step(opt: torch.optim.Optimizer, n: int = 1, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def _snapshot(opt: torch.optim.Optimizer) -> dict:
    return copy.deepcopy(opt.state_dict())


@pytest.fixture
def adam():
    """Adam with two groups (lr 0.1 and 0.01), three params, stepped 3 times."""
    ps = _params((2, 3), (3,), (4,))
    opt = torch.optim.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.01}], lr=0.1)
    _step(opt, 3)
    return opt


def test_diff_of_a_state_with_itself_is_empty(adam):
    sd = _snapshot(adam)
    r = diff_states(sd, sd)
    assert r.equal and r.changes == [] and r.complete
    # 2 groups x 11 Adam hyperparameters (torch 2.13) + 3 params x (step, exp_avg, exp_avg_sq)
    n_hyper = sum(len(g) - 1 for g in sd["param_groups"])
    assert len(r.same) == n_hyper + 9
    assert {c.kind for c in r.same} == {"equal"}


def test_one_more_step_lists_every_changed_buffer_with_exact_metrics(adam):
    a = _snapshot(adam)
    _step(adam, 1, seed=7)
    b = _snapshot(adam)
    r = diff_states(a, b)
    expected = []
    for i in range(3):
        for entry in ("step", "exp_avg", "exp_avg_sq"):
            if not torch.equal(a["state"][i][entry], b["state"][i][entry]):
                expected.append(f"state[{i}].{entry}")
    assert len(expected) == 9  # every buffer moves on a step
    assert r.paths() == expected
    steps = [c for c in r.changes if c.path.endswith(".step")]
    assert [(c.kind, c.before, c.after) for c in steps] == [("changed", 3.0, 4.0)] * 3
    for c in r.changes:
        if c.kind != "values":
            continue
        i, entry = int(c.path[6]), c.path.split(".")[1]
        x, y = a["state"][i][entry].double(), b["state"][i][entry].double()
        assert c.metrics == {
            "numel": x.numel(),
            "outside": int((x != y).sum()),
            "max_abs": float((x - y).abs().max()),
            "max_rel": float(((x - y).abs() / y.abs()).max()),
            "norm_a": float(x.norm()),
            "norm_b": float(y.norm()),
            # pairs with a NaN or Inf, by kind: none here (tests/test_diff_nan.py)
            "nan_a_only": 0, "nan_b_only": 0, "inf_a_only": 0, "inf_b_only": 0, "nan_both": 0,
        }


def test_changing_lr_in_one_group_is_exactly_that_change(adam):
    a = _snapshot(adam)
    adam.param_groups[1]["lr"] = 0.02
    b = _snapshot(adam)
    r = diff_states(a, b)
    assert r.changes == [Change("param_groups[1].lr", "changed", 0.01, 0.02)]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    from optstate.io.torch_file import load_torch_file
    from optstate.sim.config import RunSpec, SchedulerSpec
    from optstate.sim.simulate import simulate

    spec = RunSpec(optimizer="AdamW", hyperparams={"lr": 0.05}, steps=8, grad="normal",
                   scheduler=SchedulerSpec("StepLR", {"step_size": 3, "gamma": 0.5}))
    simulate(spec, save=tmp_path / "full.pt", with_params=True)
    simulate(replace(spec, steps=5), save=tmp_path / "half.pt", with_params=True)
    half = load_torch_file(tmp_path / "half.pt").obj
    simulate(replace(spec, steps=3), resume=half, save=tmp_path / "resumed.pt",
             with_params=True)
    r, side_a, side_b = diff_files(tmp_path / "full.pt", tmp_path / "resumed.pt")
    assert r.equal, r.changes
    assert side_a.location == side_b.location == "optimizer_state_dict"
    assert side_a.scheduler_location == "scheduler_state_dict"
    assert any(c.path == "scheduler.last_epoch" for c in r.same)
    # and the half-way checkpoint is not the final one, scheduler included
    r2, _, _ = diff_files(tmp_path / "half.pt", tmp_path / "full.pt")
    assert "scheduler.last_epoch" in r2.paths()
    assert "param_groups[0].lr" in r2.paths()  # StepLR halved it once more after step 6


def _one_param_state(a_val: list[float], dtype=torch.float64) -> dict:
    return {"state": {0: {"buf": torch.tensor(a_val, dtype=dtype)}},
            "param_groups": [{"params": [0], "lr": 0.1}]}


@pytest.mark.parametrize(("a", "outside"), [
    (1.5, 0),               # |a-b| = 0.5 = atol + rtol*|b|: on the edge counts as close
    (1.5 - 2**-40, 0),      # just inside
    (1.5 + 2**-40, 1),      # just outside
    (0.5, 0), (0.5 - 2**-40, 1),
])
def test_tolerance_edges_use_atol_plus_rtol_times_b(a, outside):
    r = diff_states(_one_param_state([a]), _one_param_state([1.0]),
                    DiffOptions(atol=0.25, rtol=0.25))
    assert [c.metrics["outside"] for c in r.changes] == ([outside] if outside else [])
    assert torch.isclose(torch.tensor(a, dtype=torch.float64), torch.tensor(1.0,
                         dtype=torch.float64), atol=0.25, rtol=0.25).item() == (outside == 0)


def test_both_tolerances_apply_at_once():
    a, b = _one_param_state([1.5]), _one_param_state([1.0])
    assert not diff_states(a, b, DiffOptions(atol=0.25)).equal
    assert not diff_states(a, b, DiffOptions(rtol=0.25)).equal
    assert diff_states(a, b, DiffOptions(atol=0.25, rtol=0.25)).equal


def test_rtol_is_relative_to_b_as_numpy_isclose():
    one, two = _one_param_state([1.0]), _one_param_state([2.0])
    assert diff_states(one, two, DiffOptions(rtol=0.5)).equal  # |1-2| <= 0.5*2
    assert not diff_states(two, one, DiffOptions(rtol=0.5)).equal  # |2-1| > 0.5*1


def test_scalar_tolerance_matches_tensor_tolerance():
    a = {"state": {}, "param_groups": [{"params": [], "lr": 1.5}]}
    b = {"state": {}, "param_groups": [{"params": [], "lr": 1.0}]}
    assert diff_states(a, b, DiffOptions(atol=0.25, rtol=0.25)).equal
    r = diff_states(a, b, DiffOptions(atol=0.25, rtol=0.25 - 2**-40))
    assert r.changes == [Change("param_groups[0].lr", "changed", 1.5, 1.0)]


def test_nan_in_the_same_place_is_equal_by_default():
    nan = math.nan
    a, b = _one_param_state([1.0, nan, 3.0]), _one_param_state([1.0, nan, 3.0])
    assert diff_states(a, b).equal
    r = diff_states(a, b, DiffOptions(nan_equal=False))
    assert [(c.path, c.kind, c.metrics["outside"]) for c in r.changes] == [
        ("state[0].buf", "values", 1)]
    assert r.changes[0].metrics["max_abs"] == 0.0  # over the finite pairs


def test_nan_against_a_number_is_a_difference():
    r = diff_states(_one_param_state([1.0, math.nan]), _one_param_state([1.0, 2.0]))
    assert [(c.path, c.metrics["outside"]) for c in r.changes] == [("state[0].buf", 1)]
    # NaN against a number stays a difference whatever the tolerance
    assert not diff_states(_one_param_state([math.nan]), _one_param_state([2.0]),
                           DiffOptions(atol=1e9)).equal


def test_nan_scalars_follow_the_same_rule():
    a = {"state": {}, "param_groups": [{"params": [], "lr": math.nan}]}
    assert diff_states(a, copy.deepcopy(a)).equal
    assert diff_states(a, copy.deepcopy(a), DiffOptions(nan_equal=False)).paths() == [
        "param_groups[0].lr"]


def test_non_finite_scalars_stay_visible_in_before_after():
    a = {"state": {0: {"s": torch.tensor(math.nan)}},
         "param_groups": [{"params": [0], "lr": math.nan, "betas": (0.9, math.inf)}]}
    b = {"state": {0: {"s": torch.tensor(1.0)}},
         "param_groups": [{"params": [0], "lr": math.inf, "betas": (0.9, -math.inf)}]}
    r = diff_states(a, b)
    assert [(c.path, c.before, c.after) for c in r.changes] == [
        ("param_groups[0].lr", "nan", "inf"), ("param_groups[0].betas", [0.9, "inf"],
                                               [0.9, "-inf"]), ("state[0].s", "nan", 1.0)]
    json.dumps(diff_report(r), allow_nan=False)  # valid JSON


def test_inf_equals_inf_only():
    inf = math.inf
    assert diff_states(_one_param_state([inf]), _one_param_state([inf])).equal
    assert not diff_states(_one_param_state([inf]), _one_param_state([-inf]),
                           DiffOptions(atol=1e300)).equal


def test_different_optimizer_kind_gives_structural_changes_not_a_crash():
    ps = _params((2,), (3,))
    sgd = torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    adam = torch.optim.Adam(_params((2,), (3,)), lr=0.1)
    _step(sgd, 2)
    _step(adam, 2)
    r = diff_states(_snapshot(sgd), _snapshot(adam))
    got = {(c.path, c.kind) for c in r.changes}
    sgd_only = set(sgd.param_groups[0]) - set(adam.param_groups[0]) - {"params"}
    adam_only = set(adam.param_groups[0]) - set(sgd.param_groups[0]) - {"params"}
    assert sgd_only >= {"momentum", "dampening", "nesterov"}
    assert adam_only >= {"betas", "eps", "amsgrad"}
    expected = {(f"param_groups[0].{k}", "removed") for k in sgd_only}
    expected |= {(f"param_groups[0].{k}", "added") for k in adam_only}
    for i in range(2):
        expected.add((f"state[{i}].momentum_buffer", "removed"))
        expected |= {(f"state[{i}].{e}", "added") for e in ("step", "exp_avg", "exp_avg_sq")}
    structural = {x for x in got if x[1] in ("added", "removed")}
    assert structural == expected
    assert r.optimizers == ("SGD", "Adam")
    assert r.notes == ["a holds SGD state, b holds Adam state"]
    assert "hint" not in diff_report(r)  # capturable etc. differ because the kinds do
    removed = next(c for c in r.changes if c.path == "state[0].momentum_buffer")
    assert removed.before == {"shape": [2], "dtype": "float32"} and removed.after is None


def test_shape_and_dtype_changes():
    a = {"state": {0: {"buf": torch.zeros(2, 3), "v": torch.ones(4)}},
         "param_groups": [{"params": [0]}]}
    b = {"state": {0: {"buf": torch.zeros(3, 2), "v": torch.ones(4, dtype=torch.bfloat16)}},
         "param_groups": [{"params": [0]}]}
    r = diff_states(a, b)
    assert r.changes == [Change("state[0].buf", "shape", [2, 3], [3, 2]),
                         Change("state[0].v", "dtype", "float32", "bfloat16")]
    # a dtype change with different values reports both
    b["state"][0]["v"] = torch.full((4,), 2.0, dtype=torch.bfloat16)
    kinds = [(c.path, c.kind) for c in diff_states(a, b).changes]
    assert kinds[1:] == [("state[0].v", "dtype"), ("state[0].v", "values")]


def test_step_as_int_versus_tensor_is_a_type_change_only():
    a = {"state": {0: {"step": 5}}, "param_groups": [{"params": [0]}]}
    b = {"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"params": [0]}]}
    assert diff_states(a, b).changes == [Change("state[0].step", "type", "int",
                                                "tensor(float32)")]
    b["state"][0]["step"] = torch.tensor(6.0)
    assert [c.kind for c in diff_states(a, b).changes] == ["type", "changed"]


def test_params_moved_between_groups_added_and_removed():
    ps = _params((2,), (2,), (2,))
    a = torch.optim.SGD([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.1, momentum=0.9)
    b = torch.optim.SGD([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.1, momentum=0.9)
    for opt in (a, b):
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
    r = diff_states(_snapshot(a), _snapshot(b))
    assert r.changes == [Change("state[1]", "moved", 0, 1)]

    c = torch.optim.SGD([{"params": ps[:1]}, {"params": ps[1:2]}], lr=0.1, momentum=0.9)
    for p in ps[:2]:
        p.grad = torch.ones_like(p)
    c.step()
    r = diff_states(_snapshot(a), _snapshot(c))
    assert [(x.path, x.kind) for x in r.changes] == [("state[1]", "moved"),
                                                      ("state[2]", "removed")]
    assert r.changes[1].before == {"group": 1, "name": None,
                                   "state": {"momentum_buffer": {"shape": [2],
                                                                 "dtype": "float32"}}}


def test_groups_added_and_removed():
    a = {"state": {}, "param_groups": [{"params": [0], "lr": 0.1}]}
    b = {"state": {}, "param_groups": [{"params": [0], "lr": 0.1},
                                       {"params": [1], "lr": 0.01}]}
    r = diff_states(a, b)
    assert [(c.path, c.kind) for c in r.changes] == [("param_groups[1]", "added"),
                                                      ("state[1]", "added")]
    assert r.changes[0].after == {"params": 1, "hyperparams": {"lr": 0.01}}
    assert r.groups == (1, 2) and r.params == (1, 2)


def _named_adam(order: list[int]) -> dict:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    named = list(model.named_parameters())
    opt = torch.optim.Adam([named[i] for i in order], lr=0.1)
    for p in model.parameters():
        p.grad = torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape)
    opt.step()
    return _snapshot(opt)


def test_names_match_by_name_and_report_reordering():
    a = _named_adam([0, 1, 2, 3])
    b = _named_adam([1, 0, 2, 3])
    assert a["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    r = diff_states(a, b)
    assert r.matched_by == "name"
    assert r.changes == [Change('state["0.weight"]', "reordered", 0, 1),
                         Change('state["0.bias"]', "reordered", 1, 0)]
    # a parameter name is a key --ignore takes; a name inside it is not
    assert diff_states(a, b, DiffOptions(ignore=("0.weight",))).paths() == [
        'state["0.bias"]']
    assert diff_states(a, b, DiffOptions(ignore=("weight",))).paths() == r.paths()
    # matched by position, the same files differ in shape
    rp = diff_states(a, b, DiffOptions(match="position"))
    assert rp.matched_by == "position"
    assert ("state[0].exp_avg", "shape") in {(c.path, c.kind) for c in rp.changes}
    assert [(c.before, c.after) for c in rp.changes if c.kind == "renamed"] == [
        ("0.weight", "0.bias"), ("0.bias", "0.weight")]
    assert [c.path for c in rp.changes if c.kind == "renamed"] == ["state[0]", "state[1]"]


def test_match_by_name_without_names_is_an_error(adam):
    with pytest.raises(ConfigError, match="^match='name' needs parameter names"):
        diff_states(_snapshot(adam), _snapshot(adam), DiffOptions(match="name"))


def test_ignore_by_key_path_and_prefix(adam):
    a = _snapshot(adam)
    b = copy.deepcopy(a)
    b["param_groups"][0]["foreach"] = True
    b["param_groups"][1]["lr"] = 0.5
    b["state"][2]["step"] = torch.tensor(99.0)
    assert diff_states(a, b).paths() == ["param_groups[0].foreach", "param_groups[1].lr",
                                         "state[2].step"]
    r = diff_states(a, b, DiffOptions(ignore=("foreach", "step")))
    assert r.paths() == ["param_groups[1].lr"]
    assert r.ignored == 2 + 3  # foreach in both groups, step of three params
    assert diff_states(a, b, DiffOptions(ignore=("param_groups[1]", "state"))).paths() == [
        "param_groups[0].foreach"]
    assert diff_states(a, b, DiffOptions(ignore=("param_groups[1].lr", "foreach",
                                                 "state[2].step"))).equal


def test_ignore_hint_names_version_keys(adam):
    a = _snapshot(adam)
    b = copy.deepcopy(a)
    del b["param_groups"][0]["fused"]
    report = diff_report(diff_states(a, b))
    assert report["hint"] == "keys that differ between torch versions: ignore=('fused',)"


def test_scheduler_states_compared_when_both_have_one():
    opt = torch.optim.SGD(_params((2,)), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    sa = copy.deepcopy(sched.state_dict())
    for _ in range(2):
        opt.step()
        sched.step()
    sb = sched.state_dict()
    r = diff_states(_snapshot(opt), _snapshot(opt), scheduler_a=sa, scheduler_b=sb)
    got = {c.path: (c.before, c.after) for c in r.changes}
    assert got == {"scheduler.last_epoch": (0, 2), "scheduler._step_count": (1, 3),
                   "scheduler._last_lr": ([0.1], [0.05])}


def test_stop_after_stops_early(adam):
    a = _snapshot(adam)
    _step(adam)
    r = diff_states(a, _snapshot(adam), DiffOptions(stop_after=1))
    assert len(r.changes) == 1 and not r.complete and not r.equal


def test_report_caps_listing_but_counts_everything(adam):
    a = _snapshot(adam)
    _step(adam)
    r = diff_states(a, _snapshot(adam))
    rep = diff_report(r, max_diffs=2)
    assert rep["schema"] == "optstate.diff/1"
    assert [c["path"] for c in rep["changes"]] == ["state[0].step", "state[0].exp_avg"]
    assert rep["omitted"] == 7
    assert rep["counts"] == {"differences": 9, "structural": 0, "numeric": 9,
                             "equal": 22, "ignored": 0}
    assert "same" not in rep
    assert len(diff_report(r, verbose=True)["same"]) == 22


@pytest.mark.parametrize("bad", [{"atol": -1.0}, {"rtol": math.nan}, {"atol": math.inf},
                                 {"match": "fuzzy"}])
def test_bad_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        DiffOptions(**bad)


def test_progress_reports_bytes_up_to_the_total(adam):
    sd = _snapshot(adam)
    seen: list[tuple[int, int]] = []
    diff_states(sd, sd, on_progress=lambda d, t: seen.append((d, t)))
    per_param = [2 * sum(v.numel() * v.element_size() for v in st.values())
                 for st in sd["state"].values()]
    total = sum(per_param)
    assert seen == [(sum(per_param[: i + 1]), total) for i in range(3)]


def _mapped_file(t: torch.Tensor) -> str | None:
    """The file a tensor's memory is mapped from (Linux /proc/self/maps), or None; a
    tensor read without torch (``io.native_tensor``) by its storage's address."""
    from optstate.io.native_tensor import is_native

    ptr = t.storage.address() if is_native(t) else t.untyped_storage().data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= ptr < hi:
                return fields[5] if len(fields) > 5 else None
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_diff_files_memory_maps_zip_checkpoints(tmp_path, adam, monkeypatch):
    torch.save(adam.state_dict(), tmp_path / "a.pt")
    torch.save(adam.state_dict(), tmp_path / "b.pt")
    import optstate.analysis.diff_walk as diff_mod

    seen: list[str | None] = []
    real = diff_mod.compare_tensors

    def spy(x, y, **kw):
        seen.extend([_mapped_file(x), _mapped_file(y)])
        return real(x, y, **kw)

    monkeypatch.setattr(diff_mod, "compare_tensors", spy)
    r, _, _ = diff_files(tmp_path / "a.pt", tmp_path / "b.pt")
    assert r.equal
    # every tensor compared was read from its file's mapping, not loaded into memory
    assert len(seen) == 12
    assert set(seen) == {str(tmp_path / "a.pt"), str(tmp_path / "b.pt")}


def test_integers_beyond_float64_precision_differ_in_exact_mode():
    a = {"state": {0: {"n": torch.tensor([2**60, 5]), "s": 2**60}},
         "param_groups": [{"params": [0]}]}
    b = {"state": {0: {"n": torch.tensor([2**60 + 1, 5]), "s": 2**60 + 1}},
         "param_groups": [{"params": [0]}]}
    r = diff_states(a, b)
    assert [(c.path, c.kind) for c in r.changes] == [("state[0].n", "values"),
                                                      ("state[0].s", "changed")]
    assert r.changes[0].metrics["outside"] == int((a["state"][0]["n"] !=
                                                    b["state"][0]["n"]).sum()) == 1
    assert r.changes[1].before == 2**60 and r.changes[1].after == 2**60 + 1
    assert diff_states(a, b, DiffOptions(atol=1)).equal


def test_state_outside_every_group_is_compared_by_key():
    a = {"state": {0: {"buf": torch.ones(2)}}, "param_groups": [{"params": [0]}]}
    b = copy.deepcopy(a)
    b["state"][7] = {"buf": torch.zeros(3)}
    r = diff_states(a, b)
    assert r.changes == [Change("state[7]", "added", None, {
        "group": None, "name": None, "state": {"buf": {"shape": [3], "dtype": "float32"}}})]
    assert r.notes == ["some state belongs to no param group (load_state_dict drops it): "
                       "a has 0, b has 1"]
    c = copy.deepcopy(b)
    c["state"][7]["buf"][0] = 1.0
    assert [(x.path, x.kind) for x in diff_states(b, c).changes] == [("state[7].buf", "values")]


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_tensors_compare_as_their_dense_values(layout):
    def sparse(t: torch.Tensor) -> torch.Tensor:
        return t.to_sparse() if layout == "coo" else t.to_sparse_csr()

    dense_a = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    dense_b = torch.tensor([[0.0, 1.0], [2.5, 0.0]])
    a = {"state": {0: {"m": sparse(dense_a)}}, "param_groups": [{"params": [0]}]}
    b = {"state": {0: {"m": sparse(dense_b)}}, "param_groups": [{"params": [0]}]}
    a2 = {"state": {0: {"m": sparse(dense_a.clone())}}, "param_groups": [{"params": [0]}]}
    assert diff_states(a, a2).equal
    (c,) = diff_states(a, b).changes
    assert (c.path, c.kind, c.metrics["outside"], c.metrics["max_abs"]) == (
        "state[0].m", "values", 1, 0.5)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax",
                                  "NAdam", "RAdam", "ASGD", "Rprop", "LBFGS", "SparseAdam"])
def test_every_optimizer_one_more_step_changes_only_numbers(name):
    from optstate.sim.config import RunSpec
    from optstate.sim.simulate import simulate

    a = simulate(RunSpec(optimizer=name, steps=2, grad="normal")).optimizer_state
    b = simulate(RunSpec(optimizer=name, steps=3, grad="normal")).optimizer_state
    assert diff_states(a, a).equal
    r = diff_states(a, b)
    assert r.optimizers == (name, name)
    # LBFGS keeps histories that grow by one direction per step
    assert {c.kind for c in r.changes} <= {"changed", "values", "length"}
    expected = {f"state[0].{k}" for k in a["state"][0]
                if not _same(a["state"][0][k], b["state"][0][k])}
    # the entry each change is under (state[0].old_dirs[1] is under state[0].old_dirs)
    assert {re.match(r"state\[0\]\.\w+", c.path).group(0) for c in r.changes} == expected


def _same(x, y) -> bool:
    """Plain torch/python equality, NaN equal to NaN (the diff default)."""
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x.shape == y.shape and torch.equal(x.nan_to_num(), y.nan_to_num())
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same(p, q) for p, q in zip(x, y, strict=True))
    return x == y
