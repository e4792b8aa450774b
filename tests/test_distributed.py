"""``simulate --world-size N``: real processes, gloo, FSDP2 on a CPU mesh, dcp.save.

Each sharded run starts N Python processes that import torch (seconds each on a busy
machine), so the runs are made once per module and shared by the tests that read them:
one world-size-2 run through the CLI and one world-size-1 run through the core API.

Tolerance: none. FSDP2 splits every parameter along dim 0 and the optimizers here are
elementwise, so each rank computes exactly the single-process arithmetic on its slice;
the tests demand bit-for-bit equality with the single-process run.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from optstate.base.errors import ConfigError, OptstateError
from optstate.cli import app
from optstate.io.lazy import materialize
from optstate.io.source import open_source
from optstate.sim.config import RunSpec, SchedulerSpec, parse_shape
from optstate.sim.distributed import simulate_sharded, simulate_sharded_many
from optstate.sim.simulate import simulate
from optstate.sim.spec_text import apply_overrides, parse_group

# Uneven splits on purpose: 5 rows over 2 ranks is 3 + 2, 1 row is 1 + 0 (an empty shard).
RUN = ["-O", "adam", "--lr", "0.05", "--weight-decay", "0.01", "--shape", "5x3",
       "--shape", "7", "--group", "1x4 lr=0.2", "--grad", "normal", "--steps", "4",
       "--seed", "3", "--scheduler", "StepLR", "--scheduler-arg", "step_size=2"]


def _invoke(*args: str):
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return r


def _listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                    host, port = f[1].split(":")
                    raw = bytes.fromhex(host)  # 32-bit words in host (little-endian) order
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One single-process run and the same run on 2 processes, both saved, both reported;
    while the sharded run goes, every listening socket of its processes is recorded."""
    d = tmp_path_factory.mktemp("dist")
    single = _invoke("simulate", *RUN, "--save", d / "single.pt", "--save-every", "2",
                     "--json")
    assert single.exit_code == 0, single.stderr
    listens: set[tuple[str, int]] = set()
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            listens.update(_listening([os.getpid(), *_our_workers(Path(tempfile.gettempdir()))]))
            time.sleep(0.1)

    watcher = threading.Thread(target=probe)
    watcher.start()
    try:
        sharded = _invoke("simulate", *RUN, "--world-size", "2", "--save", d / "sharded",
                          "--save-every", "2", "--json")
    finally:
        done.set()
        watcher.join()
    assert sharded.exit_code == 0, sharded.stderr
    return d, json.loads(single.stdout), json.loads(sharded.stdout), listens


def test_only_loopback_addresses_are_used(runs):
    listens = runs[3]
    # the parent's rendezvous store and one gloo listener per worker, at least
    assert len(listens) >= 3, listens
    assert {host for host, _ in listens} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listens


def test_sharded_report_equals_single_process_report(runs):
    d, single, sharded, _ = runs
    single, sharded = dict(single), dict(sharded)  # the module's runs stay as they are
    assert sharded.pop("world_size") == 2
    assert sharded.pop("saved") == [str(d / "sharded.step000002"),
                                    str(d / "sharded.step000004"), str(d / "sharded")]
    assert single.pop("saved") == [str(d / "single.step000002.pt"),
                                   str(d / "single.step000004.pt"), str(d / "single.pt")]
    # parameters, every state value, loss/param-norm/lr history: all bit for bit
    assert sharded == single


def test_sharded_folder_is_a_dcp_checkpoint_with_one_file_per_rank(runs):
    d = runs[0]
    for name in ("sharded", "sharded.step000002", "sharded.step000004"):
        assert sorted(p.name for p in (d / name).iterdir()) == [
            ".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not [p for p in d.iterdir() if "optstate-tmp" in p.name]


def test_sharded_state_equals_single_process_state_exactly(runs):
    d = runs[0]
    from optstate.io.torch_file import load_torch_file

    single = load_torch_file(d / "single.pt").obj["optimizer_state_dict"]
    sharded = materialize(open_source(d / "sharded").obj)
    names = ["group0.param0", "group0.param1", "group1.param0"]
    assert list(sharded["state"]) == names
    assert [g["params"] for g in sharded["param_groups"]] == [names[:2], names[2:]]
    for pos, name in enumerate(names):
        a, b = single["state"][pos], sharded["state"][name]
        assert sorted(a) == sorted(b) == ["exp_avg", "exp_avg_sq", "step"]
        for key in a:
            assert a[key].dtype == b[key].dtype
            assert torch.equal(a[key], b[key]), (name, key)
    for ga, gb in zip(single["param_groups"], sharded["param_groups"], strict=True):
        assert {k: v for k, v in ga.items() if k != "params"} == {
            k: v for k, v in gb.items() if k != "params"}


def test_diff_single_file_against_sharded_folder_is_equal(runs):
    d = runs[0]
    r = _invoke("diff", d / "single.pt", d / "sharded")
    assert r.exit_code == 0, r.stdout + r.stderr


def test_save_every_series_matches_step_by_step(runs):
    d = runs[0]
    assert _invoke("diff", d / "single.step000002.pt", d / "sharded.step000002").exit_code == 0
    assert _invoke("diff", d / "single.step000004.pt", d / "sharded").exit_code == 0
    r = _invoke("diff", d / "sharded.step000002", d / "sharded")
    assert r.exit_code == 1  # two more steps changed the state


def test_two_rank_folder_equals_one_file_folder(runs, tmp_path):
    """The single-process file converted to DCP (one chunk per tensor) against the 2-rank
    folder (two chunks each): diff reads both whole, and they are equal."""
    d = runs[0]
    assert _invoke("convert", d / "single.pt", tmp_path / "one_rank").exit_code == 0
    r = _invoke("diff", tmp_path / "one_rank", d / "sharded", "--json")
    assert r.exit_code == 0, r.stdout


def test_inspect_of_sharded_folder_shows_the_same_tensors(runs):
    d = runs[0]
    a = json.loads(_invoke("inspect", d / "single.pt", "--json").stdout)
    b = json.loads(_invoke("inspect", d / "sharded", "--json").stdout)
    assert [p["name"] for p in b["params"]] == ["group0.param0", "group0.param1",
                                                "group1.param0"]
    assert [p["state"] for p in a["params"]] == [p["state"] for p in b["params"]]
    assert a["param_groups"][0]["hyperparams"] == b["param_groups"][0]["hyperparams"]
    assert a["optimizer"]["kind"] == b["optimizer"]["kind"] == "Adam"


def test_layout_shows_how_each_tensor_is_split_across_ranks(runs):
    d = runs[0]
    r = _invoke("inspect", d / "sharded", "--layout", "--no-stats", "--json")
    layout = json.loads(r.stdout)["layout"]
    assert layout["ranks"] == [0, 1]
    chunks = {t["key"]: [(c["rank"], c["offsets"], c["sizes"]) for c in t["chunks"]]
              for t in layout["tensors"]}
    assert chunks["state.group0.param0.exp_avg"] == [(0, [0, 0], [3, 3]), (1, [3, 0], [2, 3])]
    assert chunks["state.group0.param1.exp_avg_sq"] == [(0, [0], [4]), (1, [4], [3])]
    # one row over two ranks: rank 1 holds an empty slice
    assert chunks["state.group1.param0.exp_avg"] == [(0, [0, 0], [1, 4]), (1, [1, 0], [0, 4])]
    from optstate.render.dcp_view import chunk_text

    first = next(t for t in layout["tensors"] if t["key"] == "state.group0.param0.exp_avg")
    assert [chunk_text(c) for c in first["chunks"]] == ["rank 0 [0:3, 0:3]", "rank 1 [3:5, 0:3]"]
    human = _invoke("inspect", d / "sharded", "--layout", "--no-stats").stdout
    assert "storage layout: 2 rank(s); __0_0.distcp (" in human


def _same_run(single, sharded) -> None:
    """Bit-for-bit: every state tensor, every parameter, the recorded history."""
    a, b = single.optimizer.state_dict(), sharded.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for pos, entries in a["state"].items():
        assert entries.keys() == b["state"][pos].keys()
        for key, x in entries.items():
            y = b["state"][pos][key]
            if isinstance(x, torch.Tensor):
                assert x.dtype == y.dtype and torch.equal(x, y), (pos, key)
            else:
                assert x == y, (pos, key)
    for p, q in zip(single.params, sharded.params, strict=True):
        assert torch.equal(p, q)
    assert sharded.history == single.history


def test_world_size_one_equals_single_process(tmp_path):
    """One process, several gradient sources, zero_grad modes and schedulers; the first run
    saved as a DCP folder."""
    specs = [
        apply_overrides(RunSpec(), optimizer="SGD",
                        hyperparams={"lr": 0.1, "momentum": 0.9, "nesterov": True},
                        shapes=[parse_shape("3x2")], groups=[parse_group("4 lr=0.3")],
                        steps=3, grad="quadratic", grad_value=0.5),
        apply_overrides(RunSpec(), optimizer="Adam", shapes=[parse_shape("2")], steps=4,
                        grad="rosenbrock", zero_grad="never"),
        apply_overrides(RunSpec(), optimizer="RMSprop", hyperparams={"momentum": 0.5},
                        shapes=[parse_shape("2x3")], steps=3, grad="none",
                        zero_grad="zeros"),
        apply_overrides(RunSpec(), optimizer="SGD", hyperparams={"lr": 0.5},
                        shapes=[parse_shape("3")], steps=5, grad="quadratic",
                        scheduler=SchedulerSpec("ReduceLROnPlateau", {"patience": 0})),
    ]
    results = simulate_sharded_many(specs, world_size=1, save=tmp_path / "one")
    assert results[0].saved == [tmp_path / "one"]
    for spec, result in zip(specs, results, strict=True):
        _same_run(simulate(spec), result)
    single = simulate(specs[0])
    state = materialize(open_source(tmp_path / "one").obj)["state"]
    for pos, name in enumerate(["group0.param0", "group1.param0"]):
        assert torch.equal(state[name]["momentum_buffer"],
                           single.optimizer.state_dict()["state"][pos]["momentum_buffer"])


SHARDABLE = ["SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad",
             "Adadelta", "ASGD"]


def test_every_elementwise_optimizer_matches_on_two_ranks():
    """The README's list: each of these gives the single-process run bit for bit on 2
    ranks (uneven shards), in one launch of the worker processes."""
    specs = [apply_overrides(RunSpec(), optimizer=name, shapes=[parse_shape("5x3"),
                                                                parse_shape("7")],
                             steps=3, grad="normal") for name in SHARDABLE]
    for spec, result in zip(specs, simulate_sharded_many(specs, world_size=2), strict=True):
        _same_run(simulate(spec), result)


def test_the_other_optimizers_are_refused():
    from optstate.sim.build import optimizer_classes

    others = sorted(c.__name__ for c in optimizer_classes().values()
                    if c.__name__ not in SHARDABLE)
    assert others == ["Adafactor", "LBFGS", "Muon", "Rprop", "SparseAdam"]
    for name in others:
        with pytest.raises(ConfigError, match="^world_size: "):
            simulate_sharded(apply_overrides(RunSpec(), optimizer=name), world_size=2)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("args, message", [
    (["--world-size", "0"], "Error: --world-size must be between 1 and 16, got 0"),
    (["-O", "lbfgs", "--world-size", "2"], "Error: --world-size: LBFGS flattens all "
     "parameters into one vector; FSDP2 does not support it"),
    (["-O", "Rprop", "--world-size", "2"], "Error: --world-size: torch's DTensor cannot run "
     "Rprop's masked in-place update on a shard"),
    (["--world-size", "2", "--with-params", "--save", "x"],
     "Error: --with-params does not work with --world-size yet"),
    (["--world-size", "2", "--save-every", "2"],
     "Error: --save-every needs --save PATH to name the series"),
])
def test_refusals_are_one_line_and_start_no_process(cli, tmp_path, args, message):
    t = time.monotonic()
    r = cli("simulate", *args)
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == message
    assert time.monotonic() - t < 2  # refused before any worker started


def test_existing_save_folder_needs_force(cli, tmp_path):
    (tmp_path / "out").mkdir()
    r = cli("simulate", "--world-size", "2", "--save", tmp_path / "out")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [f"Error: {tmp_path / 'out'} already exists",
                                     "Hint: pass --force to overwrite it"]


def _our_workers(root: Path) -> list[int]:
    """Pids of live worker processes whose job file lives under ``root``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().split()[2]
            except OSError:
                continue
            if "optstate.sim.distributed" in cmd and str(root) in cmd and state != "Z":
                pids.append(int(entry.name))
    return pids


def _leftovers(folder: Path) -> list[str]:
    """What a run left in ``folder``: its work folder, temp outputs or the output itself
    (torch's own caches, e.g. torchinductor_<user>, are not ours)."""
    return sorted(n for n in os.listdir(folder)
                  if "optstate" in n or n == "out" or n.startswith(".out."))


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Make the run's temp folders land under tmp_path, so the test can find them."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


SMALL = apply_overrides(RunSpec(), optimizer="Adam", shapes=[parse_shape("4")], steps=2)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to see pids")
def test_timeout_stops_workers_and_cleans_up(private_tmp):
    seen: set[int] = set()
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            seen.update(_our_workers(private_tmp))
            time.sleep(0.05)

    watcher = threading.Thread(target=probe)
    watcher.start()
    try:
        with pytest.raises(OptstateError, match=r"did not finish within 1 s; its processes "
                                                "were stopped"):
            simulate_sharded(SMALL, world_size=2, save=private_tmp / "out", timeout=1)
    finally:
        done.set()
        watcher.join()
    assert len(seen) == 2  # both workers were running...
    assert _our_workers(private_tmp) == []  # ...and are gone
    assert _leftovers(private_tmp) == []  # no work folder, no half-written output


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to see pids")
def test_debug_keeps_the_worker_logs(private_tmp, monkeypatch):
    monkeypatch.setenv("OPTSTATE_DEBUG", "1")
    with pytest.raises(OptstateError) as e:
        simulate_sharded(SMALL, world_size=1, timeout=0.5)
    keep = Path(e.value.hint.removeprefix("the workers' full output is in "))
    assert keep.parent == private_tmp and sorted(os.listdir(keep)) == ["rank0.log"]


def test_ctrl_c_stops_workers_and_cleans_up(private_tmp):
    """Ctrl-C (KeyboardInterrupt in the parent) once both workers are running."""
    seen: set[int] = set()

    def interrupt_when_running() -> None:
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            seen.update(_our_workers(private_tmp))
            time.sleep(0.05)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_running).start()
    with pytest.raises(KeyboardInterrupt):
        simulate_sharded(SMALL, world_size=2, save=private_tmp / "out", timeout=120)
    assert len(seen) == 2
    assert _our_workers(private_tmp) == []
    assert _leftovers(private_tmp) == []


def test_bad_parameter_name_is_refused_before_spawning():
    from optstate.sim.config import GroupSpec

    spec = RunSpec(groups=(GroupSpec(shapes=((2,),), names=("a..b",)),))
    with pytest.raises(ConfigError, match="cannot be a module path"):
        simulate_sharded(spec, world_size=2)


def test_a_worker_error_comes_back_as_its_own_one_line_error(tmp_path):
    """A worker reports its error to the parent (error.<rank>.json), which raises it as the
    same kind of error; a rank that only lost its peers ranks after it."""
    from optstate.sim.distributed import _worker_error
    from optstate.sim.distributed_worker import _main

    job = {"world_size": 2, "port": 1, "saves": [], "work": str(tmp_path),
           "specs": [{**SMALL.to_dict(), "optimizer": "Nope"}], "every": [1]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    (tmp_path / "error.0.json").write_text(json.dumps(
        {"rank": 0, "kind": "RuntimeError", "message": "Connection closed by peer", "hint": None}))
    assert _main([str(tmp_path / "job.json"), "1"]) == 1
    err = _worker_error(tmp_path, [0, 1], [1, 1])
    assert type(err) is ConfigError
    assert err.message == "unknown optimizer 'Nope'"
    (tmp_path / "error.1.json").unlink()
    err = _worker_error(tmp_path, [0], [1, None])
    assert type(err) is OptstateError
    assert err.message == ("rank 0 of the sharded run failed: RuntimeError: Connection closed "
                           "by peer")
    (tmp_path / "error.0.json").unlink()
    (tmp_path / "rank1.log").write_text("Traceback ...\nSegmentation fault\n")
    assert _worker_error(tmp_path, [1], [0, -11]).message == (
        "rank 1 of the sharded run was killed by signal 11: Segmentation fault")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_parent(tmp_path):
    """A parent killed with SIGKILL cannot clean up; the kernel then kills its workers."""
    parent = subprocess.Popen(
        [sys.executable, "-c", f"""
import json, subprocess, sys, time
job = {{"world_size": 2, "port": 1, "out": None, "work": {str(tmp_path)!r},
       "parent": __import__("os").getpid(), "specs": []}}
open({str(tmp_path / "job.json")!r}, "w").write(json.dumps(job))
w = subprocess.Popen([sys.executable, "-c",
    "import sys, time; sys.argv = ['x'] + sys.argv[1:]; "
    "from optstate.sim.distributed_worker import _die_with_parent; import json; "
    "_die_with_parent(json.load(open(sys.argv[1]))['parent']); "
    "open(sys.argv[2], 'w').write('ready'); time.sleep(60)",
    {str(tmp_path / "job.json")!r}, {str(tmp_path / "ready")!r}], start_new_session=True)
print(w.pid, flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    worker = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "ready").exists()
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(worker, os.WNOHANG)  # reaped by init, not by us; just in case
        state = ""
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{worker}/stat").read_text().split()[2]
        if state == "Z":
            break
        time.sleep(0.05)
    alive = Path(f"/proc/{worker}").exists() and Path(f"/proc/{worker}/stat").read_text(
        ).split()[2] != "Z"
    assert not alive



def test_human_view_says_it_was_sharded(runs):
    from rich.console import Console

    from optstate.render.simulate_view import simulate_view

    d, single, sharded, _ = runs
    console = Console(width=200, record=True, color_system=None)
    console.print(simulate_view(sharded))
    text = console.export_text()
    assert ("sharded over 2 processes (FSDP2 on a CPU mesh, gloo); the state above is gathered "
            "from the shards; saved as a DCP folder") in text
    console = Console(width=200, record=True, color_system=None)
    console.print(simulate_view(single))
    assert "sharded" not in console.export_text()


def test_a_sharded_run_saved_as_one_file_holds_the_single_process_state(runs, tmp_path):
    """``--world-size 2 --save X.pt``: the DCP folder the workers wrote becomes one
    torch.save file, read back and compared with what was written (as ``convert`` does);
    its optimizer state is the single-process run's, to diff's tolerance."""
    d, _, _, _ = runs
    r = _invoke("simulate", *RUN, "--world-size", "2", "--save", tmp_path / "sharded.pt")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "sharded.pt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    same = _invoke("diff", d / "single.pt", tmp_path / "sharded.pt", "--quiet")
    assert same.exit_code == 0, same.stdout + same.stderr
