"""inspect and diff across processes (``--workers N``, torchrun): analysis/ranks.py.

Every run here starts real processes (gloo on loopback, each importing torch: seconds on a
busy machine), so the checkpoints are made once per module and the multi-process runs are
few. The one-process report is the reference: the N-process one must equal it, except the
float sums of tensors summarised chunk by chunk (norm, mean, mean |x|), which agree
within ``numeric.tolerance.sum_rtol(n)`` (the mean within ``sum_rtol(n) * mean_abs``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from optstate.analysis.ranks import Unit, assign
from optstate.cli import app
from optstate.numeric.kernels import merge_moments, moments
from optstate.numeric.tolerance import sum_rtol
from optstate.render.inspect_view import read_line

# Uneven rows over 2 ranks (301 = 151 + 150), big enough for several 256 Ki-element blocks
# per chunk, so the chunked sums really are added in another order.
RUN = ["-O", "adam", "--shape", "301x1000", "--shape", "7", "--grad", "normal",
       "--seed", "5"]


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ranks")
    r = _cli("simulate", *RUN, "--steps", "3", "--world-size", "2", "--save", d / "dcp")
    assert r.exit_code == 0, r.output
    r = _cli("simulate", *RUN, "--steps", "4", "--save", d / "b.pt")
    assert r.exit_code == 0, r.output
    return {"dcp": d / "dcp", "file": d / "b.pt"}


def _agree(one: object, many: object, where: str = "") -> None:
    """``many`` equals ``one``; a summary's float sums within the stated tolerance."""
    if isinstance(one, dict) and isinstance(many, dict):
        assert list(one) == list(many), where
        n = one.get("numel")
        for k in one:
            a, b = one[k], many[k]
            if k in ("norm", "mean_abs", "mean") and isinstance(a, float) and isinstance(n, int):
                assert isinstance(b, float), f"{where}.{k}"
                scale = abs(one["mean_abs"]) if k == "mean" else abs(a)
                assert abs(a - b) <= sum_rtol(n) * scale, (f"{where}.{k}", a, b)
            else:
                _agree(a, b, f"{where}.{k}")
    elif isinstance(one, list) and isinstance(many, list):
        assert len(one) == len(many), where
        for i, (a, b) in enumerate(zip(one, many, strict=True)):
            _agree(a, b, f"{where}[{i}]")
    else:
        assert one == many, (where, one, many)


def test_units_go_largest_first_to_the_least_loaded_rank() -> None:
    units = [Unit(0, None, 10), Unit(1, 0, 40), Unit(1, 1, 30), Unit(2, None, 25)]
    split = assign(units, 2)
    assert split == [[Unit(1, 0, 40), Unit(0, None, 10)], [Unit(1, 1, 30), Unit(2, None, 25)]]
    assert assign(units, 2) == split  # deterministic: every rank computes the same


@pytest.mark.parametrize("scale", [1.0, 1e200, 1e-200])
def test_merged_moments_of_pieces_agree_with_one_pass(scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(600_001, generator=g, dtype=torch.float64) * scale
    t[5], t[400_000], t[7] = float("nan"), float("inf"), 0.0
    whole = moments(t)
    merged = merge_moments([moments(p) for p in (t[:123_457], t[123_457:500_000],
                                                 t[500_000:])])
    for k in ("numel", "finite", "nan", "inf", "zeros", "min", "max"):
        assert getattr(merged, k) == getattr(whole, k), k
    n = whole.finite
    assert abs(merged.sumabs - whole.sumabs) <= sum_rtol(n) * whole.sumabs
    assert abs(merged.sum - whole.sum) <= sum_rtol(n) * whole.sumabs
    assert math.isfinite(merged.norm)  # rescaled where the squares leave float64
    assert abs(merged.norm - whole.norm) <= sum_rtol(n) * whole.norm


def test_workers_2_inspect_equals_one_process(ckpts: dict[str, Path]) -> None:
    for path in (ckpts["dcp"], ckpts["file"]):
        one = _cli("inspect", path, "--json")
        two = _cli("inspect", path, "--json", "--workers", "2")
        assert one.exit_code == two.exit_code == 0, two.output
        _agree(json.loads(one.stdout), json.loads(two.stdout))


def test_workers_2_diff_equals_one_process(ckpts: dict[str, Path]) -> None:
    one = _cli("diff", ckpts["dcp"], ckpts["file"], "--json")
    two = _cli("diff", ckpts["dcp"], ckpts["file"], "--json", "--workers", "2")
    assert one.exit_code == two.exit_code == 1, two.output
    assert json.loads(two.stdout) == json.loads(one.stdout)  # pairs are whole units: exact


def _torchrun(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", "-m", "optstate", *map(str, args)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_torchrun_prints_one_document_equal_to_one_process(ckpts: dict[str, Path]) -> None:
    r = _torchrun("inspect", ckpts["dcp"], "--json")
    assert r.returncode == 0, r.stderr
    _agree(json.loads(_cli("inspect", ckpts["dcp"], "--json").stdout),
           json.loads(r.stdout))  # one document: json.loads refuses two
    r = _torchrun("diff", ckpts["dcp"], ckpts["file"], "--json")
    assert r.returncode != 0  # torchrun reports the ranks' exit 1 (differences) as failed
    # every rank exits 1, and only after rank 0 printed (none killed by torchrun: -15)
    assert r.stderr.count("exitcode  : 1 ") == 2 and "exitcode  : -15" not in r.stderr
    assert json.loads(r.stdout) == json.loads(
        _cli("diff", ckpts["dcp"], ckpts["file"], "--json").stdout)


def test_commands_not_split_run_on_rank_0_alone_under_torchrun() -> None:
    """A command that is not split over ranks runs once (rank 0); the others print
    nothing and exit 0."""
    from optstate.base.version import __version__

    r = _torchrun("--version")
    assert (r.returncode, r.stdout) == (0, f"optstate {__version__}\n")


def test_a_rank_failing_on_a_damaged_chunk_is_one_error_line(ckpts: dict[str, Path],
                                                            tmp_path: Path) -> None:
    import shutil

    from optstate.io.dcp_metadata import read_metadata

    bad = tmp_path / "bad"
    shutil.copytree(ckpts["dcp"], bad)
    md = read_metadata(bad)
    index, info = next((k, v) for k, v in md.storage_data.items()
                       if k.offset is not None and k.fqn.endswith("exp_avg_sq")
                       and v.relative_path == "__1_0.distcp")
    data = bytearray((bad / info.relative_path).read_bytes())
    data[info.offset:info.offset + 4] = b"XXXX"  # the chunk's zip header
    (bad / info.relative_path).write_bytes(bytes(data))
    r = _cli("inspect", bad, "--json", "--workers", "2")
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"Error: {bad / info.relative_path}: the chunk of ")
    assert [ln for ln in lines if ln.startswith("Error:")] == [lines[0]]
    assert "Traceback" not in r.stderr


def test_remote_diff_reports_what_it_read_across_workers(cli, s3, s3_bucket,
                                                         ckpts: dict[str, Path]) -> None:
    """diff's sides carry bytes_read / bytes_total / requests / retries (a local side:
    bytes_read None), the human view one read line per remote side; with --workers the
    workers' reads are counted too (every process reads the structure, one the tensors)."""
    url = f"s3://{s3_bucket}/run/b.pt"
    s3.put(ckpts["file"], url)
    one = cli("diff", url, ckpts["file"], "--json")
    assert one.exit_code == 0, one.stderr
    a, b = json.loads(one.stdout)["a"], json.loads(one.stdout)["b"]
    size = ckpts["file"].stat().st_size
    assert a["path"] == url and a["bytes_total"] == size and a["retries"] == 0
    # every storage is read once (the records' own zip headers need not be), + the structure
    assert 0.99 * size <= a["bytes_read"] <= 1.1 * size and a["requests"] >= 2
    assert (b["bytes_read"], b["requests"], b["bytes_total"]) == (None, None, size)
    two = json.loads(cli("diff", url, ckpts["file"], "--json", "--workers", "2").stdout)["a"]
    assert two["bytes_read"] > a["bytes_read"] and two["requests"] > a["requests"]
    human = cli("diff", url, ckpts["file"]).stdout
    assert [ln for ln in human.splitlines() if "read " in ln and "read with torch" not in ln
            ] == [f"a: {read_line(a).plain}"]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _rank_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((e[5:].decode() for e in env if e.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_torchrun_rank_1_failing_first_still_gets_rank_0s_error_line(
        ckpts: dict[str, Path], tmp_path: Path) -> None:
    """R2 #5: a truncated data file; rank 1 fails while rank 0 is still busy (held at the
    `command` test hook). Before: rank 1 exited 2 at once, torchrun killed rank 0 before it
    printed, and no optstate Error line was seen. Now rank 1 waits for rank 0, which
    prints the one Error line; both exit 2."""
    import shutil
    import time

    bad = tmp_path / "bad"
    shutil.copytree(ckpts["dcp"], bad)
    f = bad / "__1_0.distcp"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    release = tmp_path / "release"
    release.mkdir()
    p = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", "-m", "optstate", "inspect", str(bad)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OPTSTATE_TEST_PAUSE_AT": "command=4",
             "OPTSTATE_TEST_RELEASE_DIR": str(release)})
    try:
        deadline = time.monotonic() + 120
        released = False
        while not released and time.monotonic() < deadline and p.poll() is None:
            for c in _children(p.pid):
                if _rank_of(c) == "1":
                    (release / f"command.{c}").touch()  # rank 1 goes on; rank 0 waits 4 s
                    released = True
            time.sleep(0.05)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert released
    assert out == ""
    errors = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: {f} is truncated"), err
    assert "exitcode  : 2" in err and "exitcode  : -15" not in err, err


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_ctrl_c_to_a_workers_parent_leaves_no_worker_behind(ckpts: dict[str, Path],
                                                             tmp_path: Path) -> None:
    """SIGINT to ``inspect --workers 2`` while its workers run (held at the `worker` test
    hook): Interrupted., exit 130, and both workers are gone when the parent has exited."""
    import signal
    import time

    p = subprocess.Popen(
        [sys.executable, "-m", "optstate", "inspect", str(ckpts["dcp"]), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OPTSTATE_TEST_PAUSE_AT": "worker=60",
             "TMPDIR": str(tmp_path)})
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            logs = list(tmp_path.glob("optstate-ranks-*/rank*.log"))
            if len(logs) == 2 and all("optstate-test-pause: worker" in f.read_text()
                                      for f in logs):
                break
            time.sleep(0.05)
        workers = _children(p.pid)
        assert len(workers) == 2, workers
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert (p.returncode, out) == (130, ""), err
    assert err.splitlines()[-1] == "Interrupted."
    assert not [w for w in workers if Path(f"/proc/{w}").exists()], workers
    assert not list(tmp_path.glob("optstate-ranks-*"))  # the work folder removed


def test_torchrun_error_on_rank_1_alone_is_printed_by_rank_0(ckpts: dict[str, Path],
                                                             tmp_path: Path) -> None:
    """Rank 1 alone fails (it is given a damaged copy) while rank 0 waits in the gather of
    results: rank 1's end meets it there, rank 0 prints rank 1's Error line, both exit 2."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpts["dcp"], bad)
    f = bad / "__1_0.distcp"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    script = tmp_path / "rank1_bad.py"
    script.write_text("import os, sys\nfrom optstate._entry import main\n"
                      f"main(['inspect', {str(bad)!r} if os.environ['RANK'] == '1' "
                      f"else {str(ckpts['dcp'])!r}])\n")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", str(script)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.stdout == ""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: {f} is truncated"), r.stderr
    assert r.stderr.count("exitcode  : 2 ") == 2, r.stderr
