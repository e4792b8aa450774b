"""DCP folders in object storage (issue #21): the same reading as a local folder, its bytes
by exact range requests from a real S3 server (moto, loopback), every byte counted."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from optstate.io.dcp import DcpCheckpoint
from optstate.io.lazy import materialize
from tests.remote_reader import LOCAL_READ_WITH_TORCH, without_reader

PATH_FIELDS = ("path", "read", "bytes_read", "requests", "retries")


def _adam_dcp(folder: Path) -> Path:
    """A real Adam state after 3 steps, saved by dcp.save in one process."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": one process on purpose
        dcp.save(opt.state_dict(), storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A one-process DCP folder and a 2-rank sharded one (simulate --world-size 2)."""
    from typer.testing import CliRunner

    from optstate.cli import app

    d = tmp_path_factory.mktemp("dcp")
    one = _adam_dcp(d / "one")
    r = CliRunner().invoke(app, [
        "simulate", "-O", "adam", "--lr", "0.05", "--shape", "6x3", "--shape", "5",
        "--steps", "3", "--seed", "1", "--world-size", "2", "--save", str(d / "sharded")],
        catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return {"one": one, "sharded": d / "sharded"}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return (type(b) is torch.Tensor and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b, strict=True)))
    return type(a) is type(b) and a == b


def _drop(report):
    """A report without the fields that name where it was read from and what it cost, nor
    the reader's (a URL is read with torch, a local file natively: tests/remote_reader.py)."""
    report = without_reader(report)
    if isinstance(report, dict):
        return {k: _drop(v) for k, v in report.items() if k not in PATH_FIELDS}
    if isinstance(report, list):
        return [_drop(v) for v in report]
    return report


def _data_ranges(folder: Path, *, scalars: bool) -> list[tuple[str, int, int]]:
    """(file, start, end) of the stored chunks of the tensors with (``scalars=False``: of
    more than 0 dimensions) data."""
    md = DcpCheckpoint(folder).metadata
    out = []
    for index, info in md.storage_data.items():
        entry = md.state_dict_metadata[index.fqn]
        if isinstance(entry, TensorStorageMetadata) and (len(entry.size) == 0) == scalars:
            out.append((info.relative_path, info.offset, info.offset + info.length))
    return out


@pytest.mark.parametrize("kind", ["one", "sharded"])
def test_remote_folder_reads_back_as_the_local_one(s3, s3_bucket, folders, kind):
    from optstate.io.remote import RemotePath

    url = s3.put_dir(folders[kind], f"s3://{s3_bucket}/run/{kind}")
    local = DcpCheckpoint(folders[kind])
    remote = DcpCheckpoint(RemotePath(url))
    assert remote.total_bytes == local.total_bytes == remote.read.bytes_total
    assert _same(materialize(local.rebuild()), materialize(remote.rebuild()))
    # every stored item once, .metadata once: nothing read twice, nothing else
    stored = sum(info.length for info in local.metadata.storage_data.values())
    meta = (folders[kind] / ".metadata").stat().st_size
    assert remote.read.bytes_read == stored + meta
    assert remote.read.retries == 0


@pytest.mark.parametrize("kind", ["one", "sharded"])
def test_inspect_json_remote_equals_local(cli, s3, s3_bucket, folders, kind, monkeypatch):
    monkeypatch.setenv(*LOCAL_READ_WITH_TORCH)  # stats compared exactly: tests/remote_reader.py
    url = s3.put_dir(folders[kind], f"s3://{s3_bucket}/run/{kind}")
    for extra in ((), ("--no-stats",)):
        loc = cli("inspect", folders[kind], "--json", *extra)
        rem = cli("inspect", url, "--json", *extra)
        assert loc.exit_code == 0, loc.stderr
        assert rem.exit_code == 0, rem.stderr
        lrep, rrep = json.loads(loc.stdout), json.loads(rem.stdout)
        assert _drop(rrep) == _drop(lrep)
        assert rrep["file"]["bytes_total"] == lrep["file"]["bytes_total"]
        assert rrep["file"]["bytes_read"] > 0


def test_no_stats_reads_metadata_values_and_step_counts_only(cli, s3, s3_bucket, folders,
                                                            fault_proxy):
    """--no-stats: .metadata, the non-tensor values and the 0-d step counts, each run of
    adjacent items in one request; no range of a tensor chunk with data is asked for."""
    folder = folders["one"]
    url = s3.put_dir(folder, f"s3://{s3_bucket}/one")
    r = cli("inspect", url, "--json", "--no-stats")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    md = DcpCheckpoint(folder).metadata
    small = sum(info.length for index, info in md.storage_data.items()
                if not isinstance(md.state_dict_metadata[index.fqn], TensorStorageMetadata)
                or len(md.state_dict_metadata[index.fqn].size) == 0)
    meta = (folder / ".metadata").stat().st_size
    assert rep["file"]["bytes_read"] == meta + small
    big = _data_ranges(folder, scalars=False)
    # everything but the tensors' data (a tiny state: .metadata is most of the rest)
    assert rep["file"]["bytes_read"] + sum(t - s for _, s, t in big) == \
        rep["file"]["bytes_total"]
    gets = [e for e in fault_proxy.entries("GET", key=s3_bucket) if e.range]
    steps = _data_ranges(folder, scalars=True)
    # .metadata; the values (adjacent: one request); each step count (dcp.save puts it
    # between its param's moments)
    assert len(gets) == 2 + len(steps) == 6
    assert sum(e.bytes_sent for e in gets) == meta + small
    for e in gets:
        start, end = (int(x) for x in e.range.removeprefix("bytes=").split("-"))
        name = e.path.rsplit("/", 1)[-1]
        for file, s, t in big:
            assert not (file == name and start < t and s <= end), (e, file, s, t)


class _Touch:
    """Unpickling this creates a file: proof that code from the checkpoint ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_hostile_folders_are_refused_remotely_as_locally(cli, s3, s3_bucket, tmp_path):
    """A value that would run code, and a .metadata that would: the local Error line, with
    the URL for the path; nothing runs."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"state": {}, "param_groups": [{"lr": _Touch(marker), "params": []}]},
                 storage_writer=dcp.FileSystemWriter(evil), no_dist=True)
    bad_meta = _adam_dcp(tmp_path / "bad_meta")
    (bad_meta / ".metadata").write_bytes(pickle.dumps(_Touch(marker)))
    for folder in (evil, bad_meta):
        url = s3.put_dir(folder, f"s3://{s3_bucket}/{folder.name}")
        local, remote = cli("inspect", folder), cli("inspect", url)
        assert local.exit_code == remote.exit_code == 2
        assert "refused without running it" in local.stderr
        assert remote.stderr == local.stderr.replace(str(folder), url)
    assert not marker.exists()


def test_ctrl_c_while_reading_is_an_interrupt_not_an_error(s3, s3_bucket, folders,
                                                           fault_proxy):
    """SIGINT while torch's dcp.load waits on a throttled read (torch wraps every error,
    KeyboardInterrupt too, in a CheckpointException): 'Interrupted.' and 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    url = s3.put_dir(folders["one"], f"s3://{s3_bucket}/one")
    fault_proxy.slow_down(1000, key=r"\.distcp$")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "NO_COLOR": "1"}
    env.pop("OPTSTATE_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "optstate", "inspect", url],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    try:
        end = time.monotonic() + 60
        while fault_proxy.requests("GET", key=r"\.distcp$") < 2:
            assert proc.poll() is None and time.monotonic() < end
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(60) == 130, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert err.strip().splitlines()[-1] == "Interrupted.", err
    assert "Error" not in err
