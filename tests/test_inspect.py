"""The inspect core (analysis/inspect.py): real optimizers, real files, numbers equal to torch's."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optstate.analysis.inspect import inspect_path
from optstate.base.errors import ConfigError
from optstate.numeric.tolerance import sum_rtol
from tests.optim_states import OPTIMIZERS, make_params, state_dict_of, stepped_optimizer


def save(tmp_path, obj, name="opt.pt", **kw):
    path = tmp_path / name
    torch.save(obj, path, **kw)
    return path


def expected_stats(t: torch.Tensor) -> dict:
    """What the report must say about ``t``, from plain torch expressions."""
    fin = t[torch.isfinite(t)]
    x = fin.double()
    return {
        "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
        "numel": t.numel(), "bytes": t.numel() * t.element_size(),
        "norm": float(x.norm()), "min": float(fin.min()), "max": float(fin.max()),
        "mean": float(x.mean()), "mean_abs": float(x.abs().mean()),
        "nan": int(torch.isnan(t).sum()), "inf": int(torch.isinf(t).sum()),
        "zeros": float((t == 0).sum()) / t.numel(),
    }


def same_stats(rep: dict, want: dict) -> bool:
    """Exact for shape, dtype, sizes, min, max, counts; float64 sums (norm, mean, mean|x|) to
    the documented sum_rtol(numel) (numeric/tolerance.py: only the order of additions differs)."""
    summed = ("norm", "mean", "mean_abs")
    if {k: v for k, v in rep.items() if k not in summed} != {
            k: v for k, v in want.items() if k not in summed}:
        return False
    for k in summed:
        if (rep[k] is None) != (want[k] is None):
            return False
        if want[k] is None:
            continue
        tol = sum_rtol(want["numel"]) * (want["mean_abs"] if k == "mean" else abs(want[k]))
        if abs(rep[k] - want[k]) > tol:
            return False
    return True


def check_entry(rep: dict, value) -> None:
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        t = value.to_dense() if value.is_sparse else value
        want = expected_stats(t)
        assert same_stats(rep, want), (rep, want)
    elif isinstance(value, torch.Tensor):
        assert rep == {"value": value.item(), "dtype": str(value.dtype).removeprefix("torch.")}
    elif isinstance(value, list):
        assert len(rep["items"]) == len(value)
        for r, v in zip(rep["items"], value, strict=True):
            check_entry(r, v)
    else:
        assert rep == {"value": value}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_exact_statistics(tmp_path, name):
    sd = state_dict_of(name, steps=3)
    report = inspect_path(save(tmp_path, sd))
    assert report["schema"] == "optstate.inspect/1"
    assert report["optimizer"]["kind"] == name
    assert report["optimizer"]["confidence"] == "high"
    assert [g["params"] for g in report["param_groups"]] == [
        g["params"] for g in sd["param_groups"]]
    assert len(report["params"]) == 2
    for p in report["params"]:
        raw = sd["state"].get(p["id"], {})
        assert list(p["state"]) == [str(k) for k in raw]
        for entry, value in raw.items():
            check_entry(p["state"][entry], value)
    json.dumps(report, allow_nan=False)  # JSON-ready as is


def test_report_layout_for_sgd_momentum(tmp_path):
    opt, params = stepped_optimizer("SGD", steps=2)
    report = inspect_path(save(tmp_path, opt.state_dict()))
    assert report["file"] == {"path": str(tmp_path / "opt.pt"), "read": str(tmp_path / "opt.pt"),
                              "format": "zip", "bytes": (tmp_path / "opt.pt").stat().st_size,
                              # memory-mapped: what the kernel pages in is not counted
                              "bytes_read": None, "requests": None, "retries": None,
                              "bytes_total": (tmp_path / "opt.pt").stat().st_size,
                              # read without torch (issue #22)
                              "reader": "native", "reader_note": None}
    assert report["location"] == ""
    assert report["legacy_ids"] is False
    g = report["param_groups"][0]
    assert g["index"] == 0 and g["params"] == [0, 1] and g["n_params"] == 2
    assert g["hyperparams"]["lr"] == 0.1 and g["hyperparams"]["momentum"] == 0.9
    assert report["params"][0]["id"] == 0 and report["params"][1]["group"] == 0
    assert report["totals"] == {
        "groups": 1, "params": 2, "params_with_state": 2, "state_tensors": 2,
        "state_scalars": 0, "numel": 16, "bytes": 64, "bytes_by_dtype": {"float32": 64},
        "bytes_stored": 64, "bytes_stored_by_format": {"float32": 64},  # as in the file
        "orphan_state_keys": [],
        "low_bit": None,  # no quantized entries (issue #19, tests/test_lowbit.py)
    }
    assert report["warnings"] == [] and report["notes"] == []
    assert report["scheduler"] is None


def test_half_precision_state(tmp_path):
    sd = state_dict_of("Adam", steps=3)
    for i, dtype in ((0, torch.bfloat16), (1, torch.float16)):
        for k in ("exp_avg", "exp_avg_sq"):
            sd["state"][i][k] = sd["state"][i][k].to(dtype)
    report = inspect_path(save(tmp_path, sd))
    for i, dtype in ((0, torch.bfloat16), (1, torch.float16)):
        rep = report["params"][i]["state"]["exp_avg_sq"]
        assert same_stats(rep, expected_stats(sd["state"][i]["exp_avg_sq"]))
        assert rep["dtype"] == str(dtype).removeprefix("torch.")
        assert rep["bytes"] == rep["numel"] * 2
        # min/max exact in the tensor's own dtype
        assert rep["max"] == float(sd["state"][i]["exp_avg_sq"].max())
    assert report["totals"]["bytes_by_dtype"] == {"bfloat16": 48, "float16": 16,
                                                  "float32": 8}


def test_nan_and_inf_counted_stats_over_finite_and_warned(tmp_path):
    sd = state_dict_of("Adam", steps=2)
    buf = sd["state"][0]["exp_avg"]
    buf[0, 0], buf[1, 1], buf[2, 2] = float("nan"), float("inf"), float("-inf")
    sd["state"][1]["exp_avg_sq"][:] = float("nan")
    report = inspect_path(save(tmp_path, sd))
    rep = report["params"][0]["state"]["exp_avg"]
    assert (rep["nan"], rep["inf"]) == (1, 2)
    assert same_stats(rep, expected_stats(buf))
    allnan = report["params"][1]["state"]["exp_avg_sq"]
    assert allnan["nan"] == 4
    assert [allnan[k] for k in ("norm", "min", "max", "mean", "mean_abs")] == [None] * 5
    codes = {w["code"]: w for w in report["warnings"]}
    assert codes["nan"]["where"] == ["state[0].exp_avg", "state[1].exp_avg_sq"]
    assert codes["nan"]["message"].startswith(
        "NaN in state[0].exp_avg (1 NaN), state[1].exp_avg_sq (4 NaN): ")
    assert codes["inf"]["where"] == ["state[0].exp_avg"]
    assert codes["inf"]["message"].startswith("Inf in state[0].exp_avg (2 Inf): ")
    text = json.dumps(report, allow_nan=False)  # valid JSON: None plus the counts
    assert json.loads(text)["params"][1]["state"]["exp_avg_sq"]["norm"] is None


def test_non_finite_step_scalar_is_warned(tmp_path):
    sd = state_dict_of("Adam", steps=2)
    sd["state"][1]["step"] = torch.tensor(float("nan"))
    report = inspect_path(save(tmp_path, sd))
    assert report["params"][1]["state"]["step"] == {"value": None, "dtype": "float32"}
    (w,) = report["warnings"]
    assert (w["code"], w["where"]) == ("nan", ["state[1].step"])
    assert "state[1].step (a NaN or Inf scalar)" in w["message"]


def test_zero_grad_trap_gives_empty_state_warning(tmp_path):
    params = make_params()
    opt = torch.optim.Adam(params, lr=0.01)
    for _ in range(3):
        loss = sum((p ** 2).sum() for p in params)
        loss.backward()
        opt.zero_grad()  # the trap: grads cleared (to None) before step()
        opt.step()
    report = inspect_path(save(tmp_path, opt.state_dict()))
    assert report["totals"]["params_with_state"] == 0
    assert [w["code"] for w in report["warnings"]] == ["empty_state"]
    assert "zero_grad" in report["warnings"][0]["message"]


def test_zero_filled_grads_give_all_zero_buffers(tmp_path):
    params = make_params()
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for _ in range(2):
        sum((p ** 2).sum() for p in params).backward()
        opt.zero_grad(set_to_none=False)  # grads zero-filled: step() runs on zeros
        opt.step()
    report = inspect_path(save(tmp_path, opt.state_dict()))
    assert report["params"][0]["state"]["momentum_buffer"]["zeros"] == 1.0
    (w,) = report["warnings"]
    assert w["code"] == "zero_buffer"
    assert w["where"] == ["state[0].momentum_buffer", "state[1].momentum_buffer"]


def test_sgd_without_momentum_is_stateless_by_design(tmp_path):
    report = inspect_path(save(tmp_path, state_dict_of("SGD", momentum=0.0)))
    assert report["warnings"] == []
    assert [n["code"] for n in report["notes"]] == ["stateless"]


def test_step_mismatch_from_a_param_that_missed_a_step(tmp_path):
    params = make_params()
    opt = torch.optim.Adam(params, lr=0.01)
    for step in range(3):
        opt.zero_grad()
        loss = (params[0] ** 2).sum() + ((params[1] ** 2).sum() if step == 0 else 0)
        loss.backward()
        opt.step()
    report = inspect_path(save(tmp_path, opt.state_dict()))
    assert report["params"][0]["state"]["step"]["value"] == 3.0
    assert report["params"][1]["state"]["step"]["value"] == 1.0
    (w,) = report["warnings"]
    assert w["code"] == "step_mismatch"
    assert w["message"].startswith("step counts differ between params (step 1: param 1; "
                                   "step 3: param 0)")


def test_params_and_groups_without_state(tmp_path):
    a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
    frozen = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([{"params": [a, frozen]}, {"params": [b, c], "lr": 0.1}])
    opt.zero_grad()
    (a.sum() * 2).backward()
    opt.step()
    report = inspect_path(save(tmp_path, opt.state_dict()))
    codes = [(w["code"], w["where"]) for w in report["warnings"]]
    assert codes == [("group_without_state", ["param_groups[1]"]),
                     ("param_without_state", ["state[1]"])]


def test_orphan_state_and_shape_mismatch_and_negative_second_moment(tmp_path):
    sd = state_dict_of("Adam", steps=2)
    sd["state"][7] = {k: v.clone() for k, v in sd["state"][1].items()}
    sd["state"][0]["exp_avg_sq"] = torch.zeros(4, 3)
    sd["state"][1]["exp_avg_sq"][0] = -1.0
    report = inspect_path(save(tmp_path, sd))
    codes = {w["code"]: w for w in report["warnings"]}
    assert codes["orphan_state"]["where"] == ["state[7]"]
    assert report["totals"]["orphan_state_keys"] == [7]
    assert codes["shape_mismatch"]["message"].startswith(
        "state[0] buffers differ in shape (exp_avg 3x4, exp_avg_sq 4x3)")
    assert codes["negative_second_moment"]["where"] == ["state[1].exp_avg_sq"]
    assert "state[1].exp_avg_sq (min -1)" in codes["negative_second_moment"]["message"]


def test_legacy_id_keys_are_shown_by_position(tmp_path):
    sd = state_dict_of("SGD", steps=2)
    ids = [140234567890123, 140234567890555]
    legacy = {
        "state": {ids[i]: v for i, v in sd["state"].items()},
        "param_groups": [{**sd["param_groups"][0], "params": ids}],
    }
    report = inspect_path(save(tmp_path, legacy))
    assert report["legacy_ids"] is True
    assert [(p["position"], p["id"]) for p in report["params"]] == [(0, ids[0]), (1, ids[1])]
    assert [n["code"] for n in report["notes"]] == ["legacy_ids"]
    check_entry(report["params"][1]["state"]["momentum_buffer"],
                sd["state"][1]["momentum_buffer"])
    # --param accepts the position, and the legacy id itself
    assert [p["position"] for p in inspect_path(tmp_path / "opt.pt", params=[str(ids[1])])[
        "params"]] == [1]


def test_param_names_from_named_parameters(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.named_parameters(), lr=0.01)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == ["weight", "bias"]
    report = inspect_path(save(tmp_path, sd))
    assert [p["name"] for p in report["params"]] == ["weight", "bias"]
    assert report["param_groups"][0]["names"] == ["weight", "bias"]
    assert "param_names" not in report["param_groups"][0]["hyperparams"]
    assert [p["position"] for p in inspect_path(tmp_path / "opt.pt", params=["bias"])[
        "params"]] == [1]


def test_lbfgs_nested_lists(tmp_path):
    sd = state_dict_of("LBFGS", steps=3)
    report = inspect_path(save(tmp_path, sd))
    st = report["params"][0]["state"]
    raw = sd["state"][0]
    assert len(st["old_dirs"]["items"]) == len(raw["old_dirs"]) > 0
    check_entry(st["old_dirs"], raw["old_dirs"])
    assert st["n_iter"] == {"value": raw["n_iter"]}
    assert report["params"][1]["state"] == {}
    assert report["warnings"] == []  # LBFGS keeps state on its first param only


def test_filters_by_param_and_group(tmp_path):
    a, b, c = (torch.nn.Parameter(torch.full((2,), float(i))) for i in range(3))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b, c], "lr": 0.5}], lr=0.1, momentum=0.9)
    (a.sum() + b.sum() + c.sum()).backward()
    opt.step()
    path = save(tmp_path, opt.state_dict())
    by_group = inspect_path(path, groups=[1])
    assert [p["position"] for p in by_group["params"]] == [1, 2]
    assert [g["index"] for g in by_group["param_groups"]] == [1]
    assert by_group["totals"]["params"] == 3  # totals cover the whole state
    assert [p["position"] for p in inspect_path(path, params=["2", "0"])["params"]] == [0, 2]
    assert inspect_path(path, params=["0"], groups=[1])["params"] == []
    # the library's words name the parameters (the CLI's --param/--group: test_inspect_cli)
    with pytest.raises(ConfigError, match=r"^params=\['3'\]: the state has 3 parameters"):
        inspect_path(path, params=["3"])
    with pytest.raises(ConfigError, match=r"^params=\['w'\]: no parameter has that name"):
        inspect_path(path, params=["w"])
    with pytest.raises(ConfigError, match=r"^groups=\[2\]: the state has 2 param groups"):
        inspect_path(path, groups=[2])


def test_no_stats_reads_no_tensor_data(tmp_path, monkeypatch):
    import optstate.state.report

    def refuse(t):
        raise AssertionError("summarize called under --no-stats")

    monkeypatch.setattr(optstate.state.report, "summarize", refuse)
    monkeypatch.setattr(optstate.state.report, "tensor_values", refuse)
    sd = state_dict_of("Adam", steps=2)
    report = inspect_path(save(tmp_path, sd), stats=False)
    assert report["stats"] is False
    assert report["params"][0]["state"]["exp_avg"] == {
        "shape": [3, 4], "dtype": "float32", "numel": 12, "bytes": 48}
    assert report["params"][0]["state"]["step"] == {"value": 2.0, "dtype": "float32"}
    assert report["totals"]["bytes"] == 2 * (48 + 16) + 8


def test_no_stats_on_lazy_tensors_does_not_load_them(tmp_path):
    from optstate.io.lazy import LazyTensor
    from optstate.state.report import entry_report

    loads = []

    def loader():
        loads.append(1)
        return torch.ones(3, 4)

    lazy = LazyTensor((3, 4), torch.float32, loader)
    assert entry_report(lazy, stats=False) == {
        "shape": [3, 4], "dtype": "float32", "numel": 12, "bytes": 48}
    assert loads == []
    assert entry_report(lazy)["norm"] == pytest.approx(float(torch.ones(3, 4).double().norm()),
                                                       rel=sum_rtol(12))
    assert loads


def test_values_full_for_small_and_ends_for_big(tmp_path):
    big = torch.nn.Parameter(torch.arange(100.0))
    small = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([small, big], lr=0.1, momentum=0.9)
    small.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    big.grad = torch.arange(100.0)
    opt.step()
    report = inspect_path(save(tmp_path, opt.state_dict()), values=True)
    s = report["params"][0]["state"]["momentum_buffer"]
    assert s["values"] == [[1.0, 2.0], [3.0, 4.0]]
    b = report["params"][1]["state"]["momentum_buffer"]
    assert "values" not in b
    assert b["values_first"] == [float(i) for i in range(8)]
    assert b["values_last"] == [float(i) for i in range(92, 100)]
    assert b["values_truncated"] is True


def test_scheduler_report_and_lr_mismatch(tmp_path):
    opt, _ = stepped_optimizer("SGD")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    sd = opt.state_dict()
    ckpt = {"optimizer": sd, "lr_scheduler": sched.state_dict()}
    report = inspect_path(save(tmp_path, ckpt))
    assert report["scheduler"] == {
        "location": "lr_scheduler", "kind": "StepLR", "last_epoch": 1, "step_count": 2,
        "last_lr": [0.05], "base_lrs": [0.1], "settings": {"step_size": 1, "gamma": 0.5},
    }
    assert report["warnings"] == []
    sd["param_groups"][0]["lr"] = 0.2  # edited after the scheduler stepped
    report = inspect_path(save(tmp_path, ckpt, name="edited.pt"))
    (w,) = report["warnings"]
    assert w["code"] == "scheduler_lr_mismatch"
    assert "group 0: lr 0.2 vs scheduler 0.05" in w["message"]


def test_unreadable_scheduler_beside_optimizer_is_a_warning(tmp_path):
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    torch.save(state_dict_of("AdamW"), folder / "optimizer.pt")
    (folder / "scheduler.pt").write_bytes(b"")
    report = inspect_path(folder)
    assert report["file"]["read"] == str(folder / "optimizer.pt")
    assert [w["code"] for w in report["warnings"]] == ["scheduler_unreadable"]
    assert report["warnings"][0]["message"].endswith("is empty (0 bytes)")


def _relocate_to_cuda(data: bytes) -> bytes:
    """A torch.save zip whose storages say 'cuda:0', as if saved on a GPU (this machine has
    none). The pickled location string is the only difference."""
    zin = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            member = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert member.count(b"X\x03\x00\x00\x00cpu") > 0
                member = member.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info.filename, member)
    return out.getvalue()


def test_state_saved_on_cuda_opens_on_cpu(tmp_path):
    sd = state_dict_of("SGD")
    buf = io.BytesIO()
    torch.save(sd, buf)
    path = tmp_path / "gpu.pt"
    path.write_bytes(_relocate_to_cuda(buf.getvalue()))
    if not torch.cuda.is_available():  # proof the file really asks for a GPU
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    report = inspect_path(path)
    check_entry(report["params"][0]["state"]["momentum_buffer"],
                sd["state"][0]["momentum_buffer"])


def test_legacy_format_file(tmp_path):
    sd = state_dict_of("RMSprop")
    report = inspect_path(save(tmp_path, {"optim": sd}, _use_new_zipfile_serialization=False))
    assert report["file"]["format"] == "legacy"
    assert report["location"] == "optim"
    check_entry(report["params"][0]["state"]["square_avg"], sd["state"][0]["square_avg"])


def test_sparse_adam_step_is_an_int_scalar(tmp_path):
    sd = state_dict_of("SparseAdam")
    report = inspect_path(save(tmp_path, sd))
    assert report["params"][0]["state"]["step"] == {"value": 3}
    check_entry(report["params"][0]["state"]["exp_avg"], sd["state"][0]["exp_avg"])


def test_scheduler_state_missing_is_noted(tmp_path):
    opt, _ = stepped_optimizer("SGD")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    report = inspect_path(save(tmp_path, opt.state_dict()))  # saved without the scheduler
    assert report["warnings"] == []
    (note,) = report["notes"]
    assert note["code"] == "scheduler_elsewhere"
    assert note["message"].startswith("an LR scheduler changed the lr (group 0: 0.1 → 0.05)")


def test_zero_lr_is_noted(tmp_path):
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.0}], lr=0.1, momentum=0.9)
    (a.sum() + b.sum()).backward()
    opt.step()
    report = inspect_path(save(tmp_path, opt.state_dict()))
    assert [(n["code"], n["where"]) for n in report["notes"]] == [
        ("zero_lr", ["param_groups[1].lr"])]


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@settings(max_examples=8, deadline=None,  # each example writes and loads a file
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3), min_size=1,
                       max_size=4),
       dtype_index=st.integers(0, len(_DTYPES) - 1), seed=st.integers(0, 2**16))
def test_any_saved_state_reads_back_exactly(tmp_path, shapes, dtype_index, seed):
    """Whatever shapes and dtype a state has, written by torch.save and read by inspect:
    structure exact, min/max exact in the dtype, counts exact."""
    g = torch.Generator().manual_seed(seed)
    dtype = _DTYPES[dtype_index]
    bufs = [(torch.randn(tuple(s), generator=g) * 10).to(dtype) for s in shapes]
    for b in bufs:
        if b.numel() > 1:
            b.view(-1)[0] = 0.0  # at least one exact zero
    sd = {"state": {i: {"momentum_buffer": b} for i, b in enumerate(bufs)},
          "param_groups": [{**state_dict_of("SGD", steps=0)["param_groups"][0],
                            "params": list(range(len(bufs)))}]}
    path = tmp_path / f"h{seed}.pt"
    torch.save(sd, path)
    report = inspect_path(path)
    assert report["optimizer"]["kind"] == "SGD"
    for p, b in zip(report["params"], bufs, strict=True):
        check_entry(p["state"]["momentum_buffer"], b)
    assert report["totals"]["bytes"] == sum(b.numel() * b.element_size() for b in bufs)
