"""inspect, diff and timeline read torch.save zip files and DCP folders without importing
torch (issue #22): each command runs in a fresh process through the console script's entry
point, and ``torch`` must not be in ``sys.modules`` when it ends. When a checkpoint is read
by torch after all (an old file), the reports say so (``file.reader``, ``reader_note``),
and the human views say why in one dim line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.test_dcp import dcp_save

# The command, run as the console script runs it; a finder that only watches records the
# stack of the first `import torch` (it imports nothing and changes nothing), for the
# failure message: the module to fix.
SCRIPT = r"""
import sys, traceback
first = []
class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not first:
            first.append("".join(traceback.format_stack(limit=16)[:-1]))
        return None
sys.meta_path.insert(0, _Watch())
from optstate._entry import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as e:
    code = e.code
sys.stdout.flush()
sys.stderr.write(f"\n@@ exit={code} torch={'torch' in sys.modules}\n")
if first:
    sys.stderr.write("first import of torch:\n" + first[0])
"""


def _trained_adam(steps: int) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    return opt


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Real Adam states after 2 and 3 steps, as torch.save zip files and as DCP folders
    (written by torch.distributed.checkpoint), and a run of each kind for timeline."""
    d = tmp_path_factory.mktemp("no_torch")
    (d / "run_zip").mkdir()
    (d / "run_dcp").mkdir()
    for steps in (1, 2, 3):
        sd = _trained_adam(steps).state_dict()
        torch.save(sd, d / "run_zip" / f"step_{steps}.pt")
        dcp_save(sd, d / "run_dcp" / f"step_{steps}")
    sd2, sd3 = (_trained_adam(n).state_dict() for n in (2, 3))
    torch.save(sd2, d / "a.pt")
    torch.save(sd3, d / "b.pt")
    torch.save(sd2, d / "a_legacy.pt", _use_new_zipfile_serialization=False)
    dcp_save(sd2, d / "a_dcp")
    dcp_save(sd3, d / "b_dcp")
    return d


def _run(args: list[str], cwd: Path) -> tuple[int, str, str, bool]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    for var in ("OPTSTATE_READER", "OPTSTATE_DEBUG", "RANK", "WORLD_SIZE"):
        env.pop(var, None)  # the default reader choice, one process
    r = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    err, sep, tail = r.stderr.rpartition("\n@@ ")
    assert sep, r.stderr
    status, loaded = tail.split("\n", 1)[0].split()
    return int(status.removeprefix("exit=")), r.stdout, err + tail, loaded == "torch=True"


CASES = {  # name: (args with {a} {b} {run}, exit status)
    "inspect": (["inspect", "{a}"], 0),
    "inspect --no-stats": (["inspect", "{a}", "--no-stats"], 0),
    "inspect --json": (["inspect", "{a}", "--json"], 0),
    "inspect --layout --json": (["inspect", "{a}", "--layout", "--json"], 0),
    "diff": (["diff", "{a}", "{b}"], 1),
    "diff --json": (["diff", "{a}", "{b}", "--json"], 1),
    "diff same": (["diff", "{a}", "{a}"], 0),
    "timeline": (["timeline", "{run}"], 0),
    "timeline --json --no-cache": (["timeline", "{run}", "--json", "--no-cache"], 0),
}
KINDS = {"zip": ("a.pt", "b.pt", "run_zip"), "dcp": ("a_dcp", "b_dcp", "run_dcp")}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("case", list(CASES))
def test_read_only_commands_never_import_torch(ckpts, kind, case):
    a, b, run = (str(ckpts / n) for n in KINDS[kind])
    template, expected = CASES[case]
    if "--layout" in template and kind != "dcp":
        pytest.skip("--layout describes DCP folders only")
    args = [x.format(a=a, b=b, run=run) for x in template]
    code, out, err, loaded = _run(args, ckpts)
    assert code == expected, err
    assert not loaded, f"{' '.join(template)} on a {kind} checkpoint imported torch:\n{err}"
    assert "read with torch" not in out
    if "--json" in args:
        report = json.loads(out)
        files = ([report["file"]] if args[0] == "inspect" else
                 [report["a"], report["b"]] if args[0] == "diff" else report["checkpoints"])
        assert {(f["reader"], f["reader_note"]) for f in files} == {("native", None)}


@pytest.mark.parametrize("kind", list(KINDS))
def test_timeline_from_its_cache_imports_no_torch(ckpts, kind, tmp_path):
    run = str(ckpts / KINDS[kind][2])
    for hits in (0, 3):  # the first run writes the cache, the second reads every record
        code, out, err, loaded = _run(["timeline", run, "--json", "--cache", str(tmp_path)],
                                      ckpts)
        assert code == 0 and not loaded, err
        report = json.loads(out)
        assert report["cache"]["hits"] == hits
        assert {c["reader"] for c in report["checkpoints"]} == {"native"}


def test_an_old_file_is_read_by_torch_and_the_reports_say_why(ckpts, cli):
    legacy, zipped = ckpts / "a_legacy.pt", ckpts / "a.pt"
    r = cli("inspect", legacy, "--json")
    assert r.exit_code == 0, r.stderr
    f = json.loads(r.stdout)["file"]
    assert f["reader"] == "torch" and "legacy" in f["reader_note"]
    r = cli("inspect", legacy, env={"COLUMNS": "200"})
    assert f"read with torch: {f['reader_note']}" in r.stdout.splitlines()
    r = cli("inspect", zipped, env={"COLUMNS": "200"})
    assert "read with" not in r.stdout
    # one side each way: the same values, equal (dtypes compared by name)
    r = cli("diff", zipped, legacy, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert (report["a"]["reader"], report["b"]["reader"]) == ("native", "torch")
    r = cli("diff", zipped, legacy, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stdout
    assert f"b: read with torch: {f['reader_note']}" in r.stdout.splitlines()


def test_timeline_says_which_checkpoints_torch_read(ckpts, cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for n in (1, 2):
        (run / f"step_{n}.pt").write_bytes((ckpts / "run_zip" / f"step_{n}.pt").read_bytes())
    sd = torch.load(ckpts / "run_zip" / "step_3.pt", weights_only=True)
    torch.save(sd, run / "step_3.pt", _use_new_zipfile_serialization=False)
    r = cli("timeline", run, "--json", "--no-cache")
    assert r.exit_code == 0, r.stderr
    cps = json.loads(r.stdout)["checkpoints"]
    assert [c["reader"] for c in cps] == ["native", "native", "torch"]
    note = cps[2]["reader_note"]
    r = cli("timeline", run, "--no-cache", env={"COLUMNS": "200"})
    assert f"read with torch: 1 of 3 checkpoints ({note})" in r.stdout.splitlines()


def test_subnormals_known_without_torch_are_torch_finfo():
    from optstate.analysis.underflow import SUBNORMAL

    for name, value in SUBNORMAL.items():
        info = torch.finfo(getattr(torch, name))
        assert value == info.tiny * info.eps, name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float8_e4m3fn",
                                   "float8_e5m2"])
def test_underflow_counted_without_torch_as_torch_counts_it(tmp_path, monkeypatch, dtype):
    """A second moment partly 0 beside a first moment that is not: the elements and the
    largest |first| over them, counted in numpy over the native reader's bytes (bf16 and
    float8 decoded), are torch's."""
    from optstate.analysis.inspect import inspect_path

    dt = getattr(torch, dtype)
    m = torch.tensor([0.5, -3.0, 0.0, 2.0, -0.25, 1.0], dtype=torch.float32).to(dt)
    v = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.5], dtype=torch.float32).to(dt)
    sd = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": m, "exp_avg_sq": v}},
          "param_groups": [{"params": [0], "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                            "weight_decay": 0.0, "amsgrad": False}]}
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    reports = {}
    for reader in ("native", "torch"):
        monkeypatch.setenv("OPTSTATE_READER", reader)
        reports[reader] = inspect_path(path)
        assert reports[reader]["file"]["reader"] == reader
    found = [[w for w in reports[r]["warnings"] if w["code"] == "second_moment_underflow"]
             for r in ("native", "torch")]
    assert found[0] == found[1] and len(found[0]) == 1
    assert "3 of 6 elements" in found[0][0]["message"]


def test_dtype_and_device_values_compare_by_name_across_readers(tmp_path, cli):
    """A dtype or device in the state, one file read natively and the other by torch:
    the same value (by name), not a change of type; another dtype is a change."""
    sd = _trained_adam(2).state_dict()
    sd["param_groups"][0].update(dt=torch.bfloat16, dev=torch.device("cpu"))
    torch.save(sd, tmp_path / "a.pt")
    torch.save(sd, tmp_path / "b.pt", _use_new_zipfile_serialization=False)
    r = cli("diff", tmp_path / "a.pt", tmp_path / "b.pt", "--json")
    report = json.loads(r.stdout)
    assert (report["a"]["reader"], report["b"]["reader"]) == ("native", "torch")
    assert r.exit_code == 0 and report["changes"] == [], r.stdout
    sd["param_groups"][0].update(dt=torch.float16, dev=torch.device("meta"))
    torch.save(sd, tmp_path / "c.pt", _use_new_zipfile_serialization=False)
    r = cli("diff", tmp_path / "a.pt", tmp_path / "c.pt", "--json")
    assert r.exit_code == 1
    dt, dev = json.loads(r.stdout)["changes"]
    assert (dt["path"], dt["kind"], dt["before"], dt["after"]) == (
        "param_groups[0].dt", "changed", "torch.bfloat16", "torch.float16")
    assert (dev["path"], dev["kind"], dev["before"], dev["after"]) == (  # as torch prints
        "param_groups[0].dev", "changed", "device(type='cpu')", "device(type='meta')")


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2),
    "MultiStepLR": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [1, 2, 2], 0.5),  # Counter
    "CyclicLR": lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.001, 0.01, step_size_up=2),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.01, total_steps=5),
    "CosineAnnealingWarmRestarts":
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 2),
}


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_timeline_of_a_run_with_a_scheduler_imports_no_torch(tmp_path, kind):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = SCHEDULERS[kind](opt)
    run = tmp_path / "run"
    run.mkdir()
    lrs = []
    for step in (1, 2, 3):
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "step": step}, run / f"step_{step}.pt")
    code, out, err, loaded = _run(["timeline", str(run), "--json", "--no-cache"], tmp_path)
    assert code == 0, err  # no finding: the scheduled lr is the run's
    report = json.loads(out)
    assert {c["reader"] for c in report["checkpoints"]} == {"native"}
    assert not loaded, err
    [group] = report["lr"]
    assert group["lr"] == lrs
    assert all(v is not None for v in group["scheduled_lr"]), report["checkpoints"]
