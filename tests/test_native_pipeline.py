"""The read-only pipeline below the commands on ``NativeTensor``s, with no torch in the process.

A real ``torch.optim`` state is saved with torch.save; a small loader here (independent of
``io.native_pickle``: its own restricted unpickler over the zip's records) turns the file
into plain containers of ``NativeTensor``s. A child process that never imports torch runs
locate -> view -> names -> kind -> report (``state/*``) and the numeric layer
(``summarize``, ``structure_summary``, ``compare_tensors``, ``count_unequal``,
``same_leaf``, ``compare_trees``) on them and asserts ``"torch" not in sys.modules``; the
same pipeline on ``torch.load``'s tensors must give the same plain data (float sums to
``tolerance.sum_rtol``, everything else exact).

Run as a script (``python tests/test_native_pipeline.py A.pt B.pt``) it is that child.
"""

from __future__ import annotations

import collections
import json
import math
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# torch's storage class names (what torch.save pickles) -> dtype names
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "Float8_e4m3fnStorage": "float8_e4m3fn",
    "Float8_e5m2Storage": "float8_e5m2",
}


def native_load(path: str | Path) -> Any:
    """A torch.save zip file as plain containers of NativeTensors (no torch import)."""
    from optstate.io.native_tensor import DTYPES, NativeStorage, NativeTensor

    zf = zipfile.ZipFile(path)
    pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
    prefix = pkl[: -len("data.pkl")]
    storages: dict[str, Any] = {}

    class StorageType:
        def __init__(self, name: str) -> None:
            self.dtype = DTYPES[_STORAGE_DTYPES[name]]

    def rebuild(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> Any:
        st, dtype = storage
        return NativeTensor(st, dtype, tuple(size), tuple(stride), offset)

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if module == "torch" and name in _STORAGE_DTYPES:
                return StorageType(name)
            raise pickle.UnpicklingError(f"{module}.{name}")

        def persistent_load(self, pid: Any) -> Any:
            _, stype, key, _location, _numel = pid
            if key not in storages:
                storages[key] = NativeStorage(zf.read(f"{prefix}data/{key}"), key=key,
                                              file=Path(path))
            return storages[key], stype.dtype

    return Unpickler(zf.open(pkl)).load()


def pipeline(obj_a: Any, obj_b: Any, path: str) -> dict[str, Any]:
    """Everything the lower half of inspect and diff computes, as plain data."""
    from optstate.io.source import Source
    from optstate.numeric.compare import compare_tensors, count_unequal
    from optstate.numeric.leaves import same_leaf
    from optstate.numeric.stats import structure_summary, summarize
    from optstate.numeric.trees import compare_trees
    from optstate.state.kind import infer_kind, stored_formats
    from optstate.state.locate import describe_contents, locate
    from optstate.state.names import name_params
    from optstate.state.report import entry_report, groups_report, params_report, plain
    from optstate.state.view import OptimizerStateView, slot_shape

    out: dict[str, Any] = {}
    views = []
    for obj in (obj_a, obj_b):
        src = Source(path=Path(path), file=Path(path), format="zip", bytes=0, obj=obj)
        loc = locate(src)
        view = OptimizerStateView.from_state_dict(loc.state, loc.extra)
        naming = name_params(view, src, loc)
        views.append(view)
        out.setdefault("location", []).append(loc.location)
        out.setdefault("naming", []).append(naming.to_dict())
        out.setdefault("groups", []).append(groups_report(view))
        out.setdefault("params", []).append(params_report(view))
        out.setdefault("slot_shapes", []).append([slot_shape(p.state, p.stored)
                                                  for p in view.params])
    va, vb = views
    out["describe_model"] = describe_contents(obj_a["model"])
    keys = {str(k) for p in va.params for k in p.state}
    kind = infer_kind([g.hyperparams for g in va.groups], keys, stored_formats(va))
    out["kind"] = kind.kind
    out["entries"] = {}
    out["compare"] = {}
    for pa, pb in zip(va.params, vb.params, strict=True):
        for k, a in pa.state.items():
            name = f"{pa.position}.{k}"
            out["entries"][name] = {
                "report": entry_report(a, values=True),
                "no_stats": entry_report(a, stats=False),
                "summary": (plain(summarize(a).to_dict()) if getattr(a, "dim", None)
                            and a.dim() > 0 else None),
                "structure": structure_summary(a) if hasattr(a, "dtype") else None,
            }
            b = pb.state[k]
            if hasattr(a, "dtype") and a.dim() > 0 and tuple(a.shape) == tuple(b.shape):
                cmp = plain(compare_tensors(a, b).to_dict())
                if not a.is_floating_point() and not a.is_complex():
                    cmp["count_unequal"] = count_unequal(a, b)
                cmp["same_leaf"] = same_leaf(a, b)
                cmp["same_self"] = same_leaf(a, a)
                out["compare"][name] = cmp
    out["trees_self"] = compare_trees(obj_a, obj_a).paths
    out["trees_ab"] = compare_trees(obj_a, obj_b).paths
    return out


# ---------------------------------------------------------------------- the checkpoints

def _save_states(tmp: Path) -> tuple[Path, Path]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    params = list(model.parameters())
    opt = torch.optim.Adam([{"params": params[:2], "lr": 1e-3},
                            {"params": params[2:], "lr": 3e-4, "weight_decay": 0.1}])
    paths = []
    for steps, name in ((3, "a.pt"), (2, "b.pt")):
        for _ in range(steps):
            model(torch.randn(5, 8)).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
        sd = opt.state_dict()
        st = sd["state"]
        # every kind of tensor the native pipeline must take as torch's does
        st[0]["exp_avg_bf16"] = st[0]["exp_avg"].to(torch.bfloat16)
        st[0]["exp_avg_fp16"] = st[0]["exp_avg"].to(torch.float16)
        st[0]["transposed"] = st[0]["exp_avg_sq"].t()  # non-contiguous
        st[0]["expanded"] = torch.full((1,), -0.25).expand(16, 8)  # stride 0
        st[1]["counts"] = torch.arange(16, dtype=torch.int64) * (steps + 1)
        st[1]["mask"] = torch.arange(16) % (steps + 1) == 0
        st[1]["nonfinite"] = torch.tensor([1.0, float("nan"), float("inf"), -0.0, 2.0])
        st[1]["int_step"] = torch.tensor(steps, dtype=torch.int32)
        st[2]["history"] = [st[2]["exp_avg"][:3].clone(), torch.tensor(1.5)]
        state = {"model": model.state_dict(), "optimizer": sd}
        # a tied weight: two names of one tensor (named once, the other as its alias)
        state["model"]["tied.weight"] = state["model"]["2.weight"]
        path = tmp / name
        torch.save(state, path)
        paths.append(path)
    return paths[0], paths[1]


def _torch_tree(path: Path) -> Any:
    import torch

    return torch.load(path, weights_only=True)


# ---------------------------------------------------------------------- comparing results

_SUMS = {"norm", "mean_abs", "norm_a", "norm_b"}


def _same(x: Any, y: Any, rtol: float, where: str, parent: dict[str, Any] | None = None) -> None:
    """x == y, but float sums (norm, mean |x|: relative; mean: by mean |x|) to ``rtol``."""
    if isinstance(x, dict):
        assert isinstance(y, dict) and list(x) == list(y), (where, x, y)
        for k in x:
            key = f"{where}.{k}"
            if k in _SUMS and isinstance(x[k], float) and isinstance(y[k], float):
                assert math.isclose(x[k], y[k], rel_tol=rtol), (key, x[k], y[k])
            elif k == "mean" and isinstance(x[k], float) and isinstance(y[k], float):
                assert abs(x[k] - y[k]) <= rtol * abs(x["mean_abs"]), (key, x[k], y[k])
            else:
                _same(x[k], y[k], rtol, key, x)
    elif isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(x) == len(y), (where, x, y)
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _same(u, v, rtol, f"{where}[{i}]")
    else:
        assert x == y or (x != x and y != y), (where, x, y)


def _child(a: Path, b: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    import os

    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    e.pop("OPTSTATE_DEBUG", None)
    r = subprocess.run([sys.executable, __file__, str(a), str(b)], capture_output=True,
                       text=True, env=e, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _json(x: Any) -> Any:
    return json.loads(json.dumps(x))  # tuples -> lists, as the child's output


def test_native_pipeline_without_torch_matches_torch(tmp_path):
    from optstate.numeric.tolerance import sum_rtol

    a, b = _save_states(tmp_path)
    native = _child(a, b)
    expected = _json(pipeline(_torch_tree(a), _torch_tree(b), str(a)))
    _same(native, expected, sum_rtol(16 * 8), "")
    # the pipeline saw what it should (not an empty or fallen-back run)
    assert native["kind"] == expected["kind"]  # "unknown": the extra entries above
    assert native["naming"][0]["source"] == "model_state_dict"
    assert native["naming"][0]["named"] == 4
    e = native["entries"]
    assert e["0.exp_avg_bf16"]["report"]["dtype"] == "bfloat16"
    assert e["0.expanded"]["report"]["view"] == "expanded"
    assert e["0.step"]["report"] == expected["entries"]["0.step"]["report"]
    assert e["1.int_step"]["report"] == {"value": 3, "dtype": "int32"}
    assert e["1.nonfinite"]["report"]["nan"] == 1 and e["1.nonfinite"]["report"]["inf"] == 1
    assert e["0.exp_avg"]["report"]["values_truncated"] is True
    assert native["compare"]["1.counts"]["count_unequal"] == 15
    assert native["compare"]["0.exp_avg"]["same_self"] is True
    assert native["trees_self"] == [] and native["trees_ab"]


def test_native_pipeline_without_the_c_kernel(tmp_path):
    from optstate.numeric.tolerance import sum_rtol

    a, b = _save_states(tmp_path)
    native = _child(a, b, {"OPTSTATE_NO_C": "1"})
    expected = _json(pipeline(_torch_tree(a), _torch_tree(b), str(a)))
    _same(native, expected, sum_rtol(16 * 8), "")


def test_a_native_tensor_beside_a_torch_one_and_complex_values(tmp_path):
    """One side read natively, the other with torch (diff of a zip file and a DeepSpeed
    folder): compared through torch. Complex values go through torch's own arithmetic."""
    import torch

    from optstate.numeric.compare import compare_tensors
    from optstate.numeric.leaves import same_leaf
    from optstate.numeric.stats import summarize

    x = torch.randn(40, 3)
    z = torch.randn(7, dtype=torch.complex64)
    torch.save({"x": x, "z": z, "y": x + 1}, tmp_path / "t.pt")
    nat = native_load(tmp_path / "t.pt")
    assert compare_tensors(nat["x"], x).equal
    r = compare_tensors(nat["y"], x)
    # max |a - b| is exact: the float64 difference of the stored float32 values
    assert (r.n_outside, r.max_abs) == (120, float(((x + 1).double() - x.double()).abs().max()))
    assert same_leaf(nat["x"], x) and not same_leaf(nat["y"], x)
    assert summarize(nat["z"]) == summarize(z)
    assert compare_tensors(nat["z"], z).equal


def test_unit_roundoff_by_name_is_torchs():
    import torch

    from optstate.io.native_tensor import DTYPES
    from optstate.numeric.tolerance import EPS, unit_roundoff

    for name in EPS:
        dt = getattr(torch, name)
        assert unit_roundoff(dt) == torch.finfo(dt).eps / 2 == unit_roundoff(DTYPES[name])
        assert unit_roundoff(name) == torch.finfo(dt).eps / 2


def test_lowbit_state_read_natively_dequantizes_as_torch(tmp_path):
    """bitsandbytes' 8-bit codes as NativeTensors: dequantized through torch (the one place
    a plain inspect imports it), the same moments as from torch.load's tensors."""
    from optstate.numeric.tolerance import sum_rtol
    from optstate.state.report import params_report
    from optstate.state.view import OptimizerStateView

    path = ROOT / "tests/fixtures/lowbit/bitsandbytes_AdamW8bit/optimizer.pt"
    nat = OptimizerStateView.from_state_dict(native_load(path))
    ref = OptimizerStateView.from_state_dict(_torch_tree(path))
    got, want = _json(params_report(nat)), _json(params_report(ref))
    assert any(p["stored"] for p in want)
    _same(got, want, sum_rtol(1 << 20), "")


if __name__ == "__main__":  # the child: no torch anywhere in this process
    a_obj, b_obj = native_load(sys.argv[1]), native_load(sys.argv[2])
    result = pipeline(a_obj, b_obj, sys.argv[1])
    print(json.dumps(result))
    assert "torch" not in sys.modules, "torch was imported"
