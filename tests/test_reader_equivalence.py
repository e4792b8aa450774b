"""Every checkpoint of the suite reads the same through both readers (issue #22 item 4).

Each checkpoint goes through ``inspect --json`` and ``diff --json`` (against itself, and
against a later or changed copy where there is one), each saved run through ``timeline
--json``, once with ``OPTSTATE_READER=torch`` and once with ``OPTSTATE_READER=native``, in
process (CliRunner). The two outputs must be the same JSON, exit status and stderr, except:

- ``reader`` / ``reader_note`` of the file's own dict (``file`` in inspect, ``a`` / ``b``
  in diff): they say which reader ran, so they differ by definition;
- the float sums (``norm``, ``mean_abs``, diff's ``norm_a`` / ``norm_b``): within
  ``numeric.tolerance.sum_rtol(numel)`` relative, the signed ``mean`` within
  ``sum_rtol(numel) * mean_abs`` (the two readers may add in different orders: numpy or
  the C kernel against torch under ``OPTSTATE_NO_C=1``; the bound holds for any order).
  timeline's norms say no numel: the checkpoint's size in bytes bounds it, and its
  ``ratio`` (a norm over the previous one) gets twice the bound and a rounding.
  Everything else (min, max, counts, max |a-b|, messages) exactly.

The checkpoints: every file and checkpoint folder under ``tests/fixtures`` and
``sample_checkpoints`` (those torch refuses too: both readers must then print the same
``Error:`` line), and states built here with real ``torch.optim`` optimizers (every
optimizer of ``tests/optim_states.py``, two groups, bf16 / fp16 / fp8 states, strided,
expanded and offset views, float and int steps, NaN/Inf, a tensor over one 256 Ki block,
a legacy (non-zip) file, a model beside the state, and DCP folders written by
``torch.distributed.checkpoint``).

A pass where everything fell back to torch would prove nothing: ``test_zip_and_dcp_go_native``
requires the plain torch.save zip files and the DCP folders to be read natively, and the
module's teardown prints how many checkpoints went native.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from optstate.numeric.tolerance import UNIT_ROUNDOFF_FLOAT64, sum_rtol
from tests.optim_states import OPTIMIZERS, stepped_optimizer
from tests.test_dcp import dcp_save

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_ROOTS = (ROOT / "tests" / "fixtures", ROOT / "sample_checkpoints")
NOT_CHECKPOINTS = {".json", ".md"}  # generators' notes and expected values
# A folder is a checkpoint when it holds one of these (a Trainer / accelerate folder, a DCP
# folder, a DeepSpeed folder or one of its tags, FSDP2 rank files, a low-bit state).
FOLDER_MARKERS = ("optimizer.pt", "optimizer.bin", ".metadata", "latest", "rank0.pt")

# Keys whose values are float sums: (key, what bounds the difference).
RELATIVE_SUMS = {"norm", "mean_abs", "norm_a", "norm_b"}
SIGNED_SUMS = {"mean"}
RATIOS = {"ratio"}  # timeline's worst entry: its norm over the previous checkpoint's
# Said by the reader about itself: differ by definition.
READER_KEYS = {"reader", "reader_note"}

# fixture id -> reader the native run used (for the summary at teardown)
WENT: dict[str, str] = {}


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _is_checkpoint_folder(d: Path) -> bool:
    if any((d / m).exists() for m in FOLDER_MARKERS):
        return True
    return any(c.is_dir() and c.name.startswith("global_step") for c in d.iterdir())


def suite_checkpoints() -> list[str]:
    out = []
    for root in FIXTURE_ROOTS:
        for p in sorted(root.rglob("*")):
            if any(part.startswith(".") for part in p.relative_to(root).parent.parts):
                continue  # a tool's hidden folder (timeline's cache), not a checkpoint
            if p.is_file() and p.suffix not in NOT_CHECKPOINTS:
                out.append(_rel(p))
            elif p.is_dir() and not p.name.startswith(".") and _is_checkpoint_folder(p):
                out.append(_rel(p))
    return out


def _run_pairs() -> list[tuple[str, str]]:
    """Consecutive checkpoints of each saved training run (tests/fixtures/runs)."""
    pairs = []
    for run in sorted((ROOT / "tests" / "fixtures" / "runs").iterdir()):
        if not run.is_dir():
            continue
        members = sorted(p for p in run.iterdir()
                         if (p.is_dir() and not p.name.startswith(".")) or p.suffix == ".ckpt")
        pairs += [(_rel(a), _rel(b)) for a, b in zip(members, members[1:], strict=False)]
    return pairs


SUITE = suite_checkpoints()
RUN_PAIRS = _run_pairs()


# ------------------------------------------------------------------ states built here


def _save(obj, path: Path, **kw) -> Path:
    torch.save(obj, path, **kw)
    return path


def _adam(steps: int, dtype=torch.float32, sizes=((3, 4), (4,)), groups: int = 1):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in sizes]
    if groups == 2:
        opt = torch.optim.Adam([{"params": params[:1]},
                                {"params": params[1:], "lr": 1e-3, "betas": (0.8, 0.99)}],
                               lr=0.01)
    else:
        opt = torch.optim.Adam(params, lr=0.01)
    for step in range(steps):
        for p in params:
            p.grad = (p.detach() * (0.5 + step) + 0.01).to(dtype)
        opt.step()
    return opt, params


def _views(sd: dict) -> dict:
    """Adam's state with entries that are views: transposed (non-contiguous), expanded
    (stride 0), at a storage offset, and two entries sharing one storage."""
    s0, s1 = sd["state"][0], sd["state"][1]
    s0["exp_avg"] = s0["exp_avg"].t().contiguous().t()  # same values, strides (1, 3)
    s0["exp_avg_sq"] = (s0["exp_avg_sq"][:1] + 0.25).expand(3, 4)  # strides (0, 1)
    big = torch.arange(20, dtype=torch.float32) / 7 - 1
    s1["exp_avg"] = big[5:9]  # storage offset 5, in big's storage with...
    s1["extra"] = big[12:16]  # ...this one (apart) and...
    s1["overlap"] = big[7:11]  # ...this one, which overlaps exp_avg
    s1["scalar_expanded"] = torch.tensor(2.5).expand(4)  # one element, stride 0
    return sd


def _fp8(sd: dict) -> dict:
    for st in sd["state"].values():
        st["exp_avg"] = st["exp_avg"].to(torch.float8_e4m3fn)
        st["exp_avg_sq"] = st["exp_avg_sq"].to(torch.float8_e5m2)
    return sd


def _steps(sd: dict) -> dict:
    """0-d float step (torch's default), 0-d int64 step, a Python int step."""
    sd["state"][0]["step"] = torch.tensor(int(sd["state"][0]["step"]), dtype=torch.int64)
    sd["state"][1]["step"] = int(sd["state"][1]["step"])
    return sd


def _nan_inf(sd: dict) -> dict:
    ea = sd["state"][0]["exp_avg"]
    ea[0, 0], ea[1, 1], ea[2, 2] = float("nan"), float("inf"), float("-inf")
    sd["state"][1]["exp_avg_sq"][2] = float("nan")
    return sd


def _container(opt, params) -> dict:
    """The tutorial layout: the model's state_dict beside the optimizer's (names)."""
    model = {"encoder.weight": params[0].detach(), "encoder.bias": params[1].detach()}
    return {"epoch": 3, "model_state_dict": model, "optimizer_state_dict": opt.state_dict()}


def _build(kind: str, steps: int, folder: Path) -> Path:
    name = f"{kind}_{steps}"
    if kind in OPTIMIZERS:
        return _save(stepped_optimizer(kind, steps)[0].state_dict(), folder / f"{name}.pt")
    if kind == "two_groups":
        return _save(_adam(steps, groups=2)[0].state_dict(), folder / f"{name}.pt")
    if kind in ("bf16", "fp16"):
        dt = torch.bfloat16 if kind == "bf16" else torch.float16
        return _save(_adam(steps, dtype=dt)[0].state_dict(), folder / f"{name}.pt")
    if kind == "fp8":
        return _save(_fp8(_adam(steps)[0].state_dict()), folder / f"{name}.pt")
    if kind == "views":
        return _save(_views(_adam(steps)[0].state_dict()), folder / f"{name}.pt")
    if kind == "steps":
        return _save(_steps(_adam(steps)[0].state_dict()), folder / f"{name}.pt")
    if kind == "nan_inf":
        return _save(_nan_inf(_adam(steps)[0].state_dict()), folder / f"{name}.pt")
    if kind == "big":  # over one 256 Ki-element block, odd sizes: block sums, tails
        sd = _adam(steps, sizes=((300_007,), (1_025,)))[0].state_dict()
        return _save(sd, folder / f"{name}.pt")
    if kind == "big_bf16":
        sd = _adam(steps, dtype=torch.bfloat16, sizes=((262_145,), (7,)))[0].state_dict()
        return _save(sd, folder / f"{name}.pt")
    if kind == "legacy":  # the non-zip format: the native reader must hand it to torch
        return _save(_adam(steps)[0].state_dict(), folder / f"{name}.pt",
                     _use_new_zipfile_serialization=False)
    if kind == "container":
        return _save(_container(*_adam(steps)), folder / f"{name}.pt")
    if kind == "dcp":  # positional layout: a plain state_dict()
        return dcp_save(_adam(steps)[0].state_dict(), folder / name)
    if kind == "dcp_fqn":  # the layout FSDP users save: keys are parameter names
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(5, 3)).pow(2).sum().backward()
            opt.step()
        return dcp_save({"optim": get_optimizer_state_dict(model, opt),
                          "model": model.state_dict(), "step": steps}, folder / name)
    raise AssertionError(kind)


BUILT = [*OPTIMIZERS, "two_groups", "bf16", "fp16", "fp8", "views", "steps", "nan_inf",
         "big", "big_bf16", "legacy", "container", "dcp", "dcp_fqn"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """kind -> (state after 3 steps, state after 4), built on first use."""
    folder = tmp_path_factory.mktemp("equivalence")
    cache: dict[str, tuple[Path, Path]] = {}

    def get(kind: str) -> tuple[Path, Path]:
        if kind not in cache:
            cache[kind] = (_build(kind, 3, folder), _build(kind, 4, folder))
        return cache[kind]

    return get


# ------------------------------------------------------------------ running and comparing


def run(args: list[str], reader: str) -> tuple[int, dict | str, str]:
    """(exit status, parsed JSON stdout or the raw text, stderr) of one in-process run."""
    from typer.testing import CliRunner

    from optstate.cli import app

    res = CliRunner().invoke(app, args, env={"OPTSTATE_READER": reader, "NO_COLOR": "1"},
                             catch_exceptions=False)
    try:
        out: dict | str = json.loads(res.stdout)
    except ValueError:
        out = res.stdout
    return res.exit_code, out, res.stderr


def _close(key: str, a, b, n: int | None, scale: float | None) -> bool:
    """Are two float sums (or lists of them, timeline's series) equal within the bound for
    sums of ``n`` terms? ``scale``: mean |x|, which bounds a signed mean's error."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(key, x, y, n, scale)
                                        for x, y in zip(a, b, strict=True))
    if not (isinstance(a, float) and isinstance(b, float)):
        return type(a) is type(b) and a == b
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    if n is None or math.isinf(a) or math.isinf(b):
        return False
    tol = sum_rtol(n)
    if key in RATIOS:  # each norm within tol, then one rounding of the quotient on each side
        tol = 2 * tol / (1 - tol) + 2 * UNIT_ROUNDOFF_FLOAT64
    if key in SIGNED_SUMS:
        return scale is not None and abs(a - b) <= tol * scale
    return abs(a - b) <= tol * max(abs(a), abs(b))


def differences(a, b, path: str = "$", n_bound: int | None = None) -> list[str]:
    """Where the torch run's JSON (a) and the native run's (b) differ beyond what is allowed.
    A float sum is bounded by its own ``numel`` where the same dict says it, else by
    ``n_bound`` (an upper bound of any tensor's numel: the bound grows with n)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys_a, keys_b = set(a), set(b)
        if "format" in a or "format" in b:  # the file's own dict: says which reader ran
            keys_a -= READER_KEYS
            keys_b -= READER_KEYS
        out = []
        if keys_a != keys_b:
            out.append(f"{path}: keys only in torch {sorted(keys_a - keys_b)}, "
                       f"only in native {sorted(keys_b - keys_a)}")
        n = a.get("numel") if isinstance(a.get("numel"), int) else None
        n = n if n is not None and n == b.get("numel") else n_bound
        scale = max(abs(a.get("mean_abs") or 0.0), abs(b.get("mean_abs") or 0.0))
        for k in sorted(keys_a & keys_b, key=str):
            x, y = a[k], b[k]
            if k in RELATIVE_SUMS | SIGNED_SUMS | RATIOS and isinstance(x, (float, list)):
                if not _close(k, x, y, n, scale):
                    out.append(f"{path}.{k}: {x!r} (torch) vs {y!r} (native), n {n}")
            else:
                out += differences(x, y, f"{path}.{k}", n_bound)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items (torch) vs {len(b)} (native)"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{path}[{i}]", n_bound)]
    if type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a)
                                          and math.isnan(b))):
        return []
    return [f"{path}: {a!r} (torch) vs {b!r} (native)"]


def _reader_of(report: dict | str, side: str | None = None) -> str:
    if not isinstance(report, dict):
        return "error"
    d = report.get(side) if side else report.get("file")
    return str((d or {}).get("reader", "missing"))


def _numel_bound(report: dict) -> int | None:
    """timeline says no numel beside its norms: no tensor of a checkpoint has more elements
    than the checkpoint has bytes."""
    sizes = [c.get("identity", {}).get("bytes") for c in report.get("checkpoints", [])]
    return max((s for s in sizes if isinstance(s, int)), default=None)


def assert_same(args: list[str]) -> dict | str:
    """Run ``args`` with each reader; assert the outputs agree; return the native one."""
    code_t, out_t, err_t = run(args, "torch")
    code_n, out_n, err_n = run(args, "native")
    assert (code_t, err_t) == (code_n, err_n), (args, err_t, err_n)
    if isinstance(out_t, str) or isinstance(out_n, str):
        assert out_t == out_n
    else:
        diffs = differences(out_t, out_n, n_bound=_numel_bound(out_t))
        assert not diffs, "\n".join([" ".join(args), *diffs[:20]])
    return out_n


# ------------------------------------------------------------------ the tests


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if WENT:
        counts = Counter(WENT.values())
        line = (f"reader equivalence: {counts.get('native', 0)} of {len(WENT)} checkpoints "
                f"read natively; " + ", ".join(f"{v}: {n}" for v, n in sorted(counts.items())))
        rep = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if rep is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # shown without -s
                rep.write_line(line)


@pytest.mark.parametrize("ckpt", SUITE)
def test_suite_checkpoint_reads_the_same(ckpt):
    out = assert_same(["inspect", str(ROOT / ckpt), "--json"])
    WENT[ckpt] = _reader_of(out)
    assert_same(["diff", str(ROOT / ckpt), str(ROOT / ckpt), "--json"])


@pytest.mark.parametrize(("a", "b"), RUN_PAIRS, ids=[f"{a}..{b}" for a, b in RUN_PAIRS])
def test_run_checkpoints_diff_the_same(a, b):
    assert_same(["diff", str(ROOT / a), str(ROOT / b), "--json"])


RUNS = sorted(_rel(p) for p in (ROOT / "tests" / "fixtures" / "runs").iterdir() if p.is_dir())


@pytest.mark.parametrize("run_dir", RUNS)
def test_timeline_reads_the_same(run_dir):
    assert_same(["timeline", str(ROOT / run_dir), "--json", "--no-cache"])


@pytest.mark.parametrize("kind", BUILT)
def test_built_state_reads_the_same(kind, built):
    a, b = built(kind)
    out = assert_same(["inspect", str(a), "--json"])
    WENT[f"built:{kind}"] = _reader_of(out)
    assert_same(["inspect", str(b), "--json"])
    assert_same(["diff", str(a), str(a), "--json"])
    assert_same(["diff", str(a), str(b), "--json"])
    assert_same(["diff", str(b), str(a), "--json", "--atol", "1e-3", "--rtol", "1e-2"])


def test_diff_across_formats_reads_the_same(built):
    zip_a, _ = built("views")  # a strided zip against a DCP folder of the same optimizer
    dcp_a, dcp_b = built("dcp")
    assert_same(["diff", str(zip_a), str(dcp_b), "--json"])
    assert_same(["diff", str(built("two_groups")[0]), str(dcp_a), "--json"])
    legacy_a, _ = built("legacy")  # read by torch on one side, natively on the other
    assert_same(["diff", str(legacy_a), str(zip_a), "--json"])
    assert_same(["diff", str(dcp_b), str(legacy_a), "--json"])


NATIVE_EXPECTED = ["sample_checkpoints/adam_two_groups.pt", "sample_checkpoints/sgd_momentum.pt",
                   "tests/fixtures/runs/dcp/step_10"]


def test_zip_and_dcp_go_native(built):
    """The plain torch.save zip files and DCP folders are read natively (else the
    equivalence above could pass by everything falling back to torch); the legacy format
    is handed to torch, which says so."""
    paths = [ROOT / p for p in NATIVE_EXPECTED]
    paths += [built(k)[0] for k in ("Adam", "bf16", "fp8", "views", "big", "dcp", "dcp_fqn")]
    went = {}
    for p in paths:
        code, out, err = run(["inspect", str(p), "--json"], "native")
        assert code == 0, err
        went[str(p)] = (_reader_of(out), out["file"].get("reader_note"))
        code, out_t, err = run(["inspect", str(p), "--json"], "torch")
        assert _reader_of(out_t) == "torch", p
    assert all(v == ("native", None) for v in went.values()), went
    code, out, err = run(["diff", str(paths[0]), str(paths[1]), "--json"], "native")
    assert (_reader_of(out, "a"), _reader_of(out, "b")) == ("native", "native"), out
    code, out, err = run(["inspect", str(built("legacy")[0]), "--json"], "native")
    assert code == 0, err
    assert _reader_of(out) == "torch" and out["file"]["reader_note"], out["file"]


def test_the_comparison_allows_only_what_it_says():
    """Reader keys and float sums within sum_rtol(numel) pass; anything else is reported."""
    n = 1000
    tol = sum_rtol(n)
    entry = {"numel": n, "norm": 2.0, "mean": 1e-3, "mean_abs": 1.0, "min": -1.0, "nan": 0}
    torch_json = {"file": {"format": "zip", "reader": "torch", "reader_note": None},
                  "params": [dict(entry)]}
    near = {**entry, "norm": 2.0 * (1 + tol / 2), "mean": 1e-3 + tol / 2}
    native = {"file": {"format": "zip", "reader": "native", "reader_note": None},
              "params": [near]}
    assert differences(torch_json, native) == []
    for key, value in (("norm", 2.0 * (1 + 3 * tol)), ("mean", 1e-3 + 3 * tol),
                       ("min", math.nextafter(-1.0, 0.0)), ("nan", 1)):
        far = {**native, "params": [{**near, key: value}]}
        assert [d.split(":")[0] for d in differences(torch_json, far)] == [
            f"$.params[0].{key}"]
    assert differences({"a": {"reader": "x"}}, {"a": {"reader": "y"}})  # not a file dict
    series = {"norm": [1.0, 2.0]}  # no numel beside it: only with a bound given
    moved = {"norm": [1.0, 2.0 * (1 + tol / 2)]}
    assert differences(series, moved) and not differences(series, moved, n_bound=n)
