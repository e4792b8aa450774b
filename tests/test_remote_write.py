"""Writing checkpoints to object storage (issue #21): ``set -o s3://...`` and ``convert ...
s3://...`` are written and checked locally, then uploaded whole or not at all, against a
real S3 server (moto, loopback) and a fault-injecting proxy in front of it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.remote_reader import LOCAL_READ_WITH_TORCH, without_reader

PATH_FIELDS = ("path", "read", "bytes_read", "requests", "retries")


def _drop(report):
    """A report without the fields that name where it was read from and what it cost, nor
    the reader's (a URL is read with torch, a local file natively: tests/remote_reader.py)."""
    report = without_reader(report)
    if isinstance(report, dict):
        return {k: _drop(v) for k, v in report.items() if k not in PATH_FIELDS}
    if isinstance(report, list):
        return [_drop(v) for v in report]
    return report


@pytest.fixture
def adam_file(tmp_path) -> Path:
    """A real Adam state_dict after 2 steps, as a torch.save file."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    torch.save(opt.state_dict(), tmp_path / "adam.pt")
    return tmp_path / "adam.pt"


@pytest.fixture
def quick_retries(monkeypatch) -> None:
    """The retry policy as it is (6 attempts, x2 backoff), from 10 ms instead of 0.2 s."""
    import optstate.io.remote as remote

    monkeypatch.setattr(remote, "BASE_DELAY", 0.01)


@pytest.fixture
def local_tmp(tmp_path, monkeypatch) -> Path:
    """Where optstate's local staging goes during the test (to see that nothing is left)."""
    d = tmp_path / "tmpdir"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_set_to_a_url_reads_back_as_the_local_result(cli, s3, s3_bucket, adam_file,
                                                     tmp_path, local_tmp, monkeypatch):
    monkeypatch.setenv(*LOCAL_READ_WITH_TORCH)  # stats compared exactly: tests/remote_reader.py
    url = f"s3://{s3_bucket}/run/new.pt"
    r = cli("set", adam_file, "-o", url, "--lr", "0.5", "--set", "betas=0.8,0.99")
    assert r.exit_code == 0, r.stderr
    r = cli("set", adam_file, "-o", tmp_path / "new.pt", "--lr", "0.5", "--set",
            "betas=0.8,0.99")
    assert r.exit_code == 0, r.stderr
    remote = cli("inspect", url, "--json")
    local = cli("inspect", tmp_path / "new.pt", "--json")
    assert remote.exit_code == 0, remote.stderr
    assert _drop(json.loads(remote.stdout)) == _drop(json.loads(local.stdout))
    assert json.loads(remote.stdout)["param_groups"][0]["hyperparams"]["lr"] == 0.5
    assert s3.keys(s3_bucket) == ["run/new.pt"]
    assert list(local_tmp.iterdir()) == []


def test_set_from_a_url_to_a_url_and_in_place(cli, s3, s3_bucket, adam_file, local_tmp):
    src = s3.put(adam_file, f"s3://{s3_bucket}/adam.pt")
    r = cli("set", src, "-o", f"s3://{s3_bucket}/b.pt", "--lr", "0.25", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["outputs"] == [f"s3://{s3_bucket}/b.pt"]
    # --in-place on a URL: the object is replaced whole by one PUT
    r = cli("set", f"s3://{s3_bucket}/b.pt", "--in-place", "--lr", "0.125")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(cli("inspect", f"s3://{s3_bucket}/b.pt", "--json", "--no-stats").stdout)
    assert rep["param_groups"][0]["hyperparams"]["lr"] == 0.125
    assert s3.keys(s3_bucket) == ["adam.pt", "b.pt"]
    assert list(local_tmp.iterdir()) == []


def test_an_existing_object_needs_force(cli, s3, s3_bucket, adam_file):
    url = s3.put(adam_file, f"s3://{s3_bucket}/new.pt")
    r = cli("set", adam_file, "-o", url, "--lr", "0.5")
    assert r.exit_code == 2
    assert r.stderr == (f"Error: {url} already exists\nHint: pass --force to overwrite it\n")
    r = cli("set", adam_file, "-o", url, "--lr", "0.5", "--force")
    assert r.exit_code == 0, r.stderr
    # --force replaces a torch.save file only, never another object
    other = s3.put(b"my notes", f"s3://{s3_bucket}/notes.pt")
    r = cli("set", adam_file, "-o", other, "--lr", "0.5", "--force")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error: {other} is not a torch.save checkpoint; --force "
                               "replaces only a checkpoint file")
    body = s3.client.get_object(Bucket=s3_bucket, Key="notes.pt")["Body"].read()
    assert body == b"my notes"


def test_a_failed_upload_leaves_no_object_and_no_temp(cli, s3, s3_bucket, adam_file,
                                                      fault_proxy, local_tmp, quick_retries):
    fault_proxy.fail_puts()
    url = f"s3://{s3_bucket}/new.pt"
    r = cli("set", adam_file, "-o", url, "--lr", "0.5")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error: cannot write {url}: ")
    assert r.stderr.count("\n") == 1 and "after 6 attempts" in r.stderr
    assert "Traceback" not in r.stderr
    assert fault_proxy.requests("PUT", key="new.pt") == 6
    assert s3.keys(s3_bucket) == []
    assert list(local_tmp.iterdir()) == []


def test_convert_to_a_dcp_folder_url_uploads_metadata_last(cli, s3, s3_bucket, adam_file,
                                                           fault_proxy, tmp_path, monkeypatch):
    monkeypatch.setenv(*LOCAL_READ_WITH_TORCH)  # stats compared exactly: tests/remote_reader.py
    url = f"s3://{s3_bucket}/run/dcp"
    r = cli("convert", adam_file, url)
    assert r.exit_code == 0, r.stderr
    puts = [e.path.rsplit("/", 1)[-1] for e in fault_proxy.entries("PUT", key=s3_bucket)]
    assert puts[-1] == ".metadata" and len(puts) >= 2
    assert s3.keys(s3_bucket, "run/dcp/")[0] == "run/dcp/.metadata"
    # and back, from the URL: the same state as the local round trip
    r = cli("convert", url, f"s3://{s3_bucket}/back.pt")
    assert r.exit_code == 0, r.stderr
    assert cli("convert", adam_file, tmp_path / "dcp").exit_code == 0
    assert cli("convert", tmp_path / "dcp", tmp_path / "back.pt").exit_code == 0
    remote = cli("inspect", f"s3://{s3_bucket}/back.pt", "--json")
    local = cli("inspect", tmp_path / "back.pt", "--json")
    assert _drop(json.loads(remote.stdout)) == _drop(json.loads(local.stdout))
    # a folder that exists is never replaced (no rename in object storage)
    r = cli("convert", adam_file, url, "--force")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error: {url} already exists; a folder in object storage is "
                               "not replaced")


def test_a_failed_dcp_upload_deletes_what_it_uploaded(cli, s3, s3_bucket, adam_file,
                                                      fault_proxy, local_tmp, quick_retries):
    fault_proxy.fail_puts(key=r"\.metadata$")
    url = f"s3://{s3_bucket}/run/dcp"
    r = cli("convert", adam_file, url)
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error: cannot write {url}/.metadata: ")
    uploaded = [e for e in fault_proxy.entries("PUT", key=r"\.distcp$") if e.status == 200]
    assert uploaded  # the data file went up first ...
    assert s3.keys(s3_bucket) == []  # ... and was deleted again
    assert list(local_tmp.iterdir()) == []


def test_a_bucket_that_denies_puts_is_one_error_line(cli, s3, s3_bucket, adam_file,
                                                     fault_proxy, local_tmp):
    fault_proxy.deny(method="PUT")
    url = f"s3://{s3_bucket}/new.pt"
    r = cli("set", adam_file, "-o", url, "--lr", "0.5")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == f"Error: access denied to {url} (HTTP 403)"
    assert fault_proxy.requests("PUT") == 1  # permanent: not retried
    assert s3.keys(s3_bucket) == []
    assert list(local_tmp.iterdir()) == []


@pytest.mark.parametrize("stage", ["publish", "uploaded"])
def test_ctrl_c_publishes_nothing(s3, s3_bucket, adam_file, tmp_path, stage):
    """A real process, stopped by SIGINT while the checked copy waits to be uploaded
    (``publish``: set -o URL), or once a DCP folder's first data file is up (``uploaded``:
    convert to a folder URL; what was uploaded is deleted)."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    staging = tmp_path / "staging"
    staging.mkdir()
    env = {**os.environ, "PYTHONPATH": str(root), "NO_COLOR": "1", "TMPDIR": str(staging),
           "OPTSTATE_TEST_PAUSE_AT": f"{stage}=60"}
    env.pop("OPTSTATE_DEBUG", None)
    url = f"s3://{s3_bucket}/new.pt"
    args = ["set", str(adam_file), "-o", url, "--lr", "0.5"]
    if stage == "uploaded":
        args = ["convert", str(adam_file), f"s3://{s3_bucket}/run/dcp"]
    proc = subprocess.Popen([sys.executable, "-m", "optstate", *args], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if line.startswith(f"optstate-test-pause: {stage}"):
                break
        if stage == "uploaded":
            assert s3.keys(s3_bucket) == ["run/dcp/__0_0.distcp"]
        assert list(staging.iterdir())  # the checked copy, staged locally
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(60) == 130, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Interrupted." in rest
    assert s3.keys(s3_bucket) == []
    assert list(staging.iterdir()) == []


def test_a_missing_bucket_is_named_as_such(cli, s3, s3_bucket, adam_file, local_tmp):
    url = f"s3://{s3_bucket}-gone/new.pt"
    r = cli("set", adam_file, "-o", url, "--lr", "0.5")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (f"Error: cannot write {url}: its bucket does not "
                                        "exist")
    assert list(local_tmp.iterdir()) == []


def test_a_trainer_folder_url_in_place_and_copies_refused(cli, s3, s3_bucket, tmp_path):
    """--in-place on a Trainer folder URL rewrites its optimizer and scheduler objects, each
    by one PUT; a copy of a folder to or from a URL is refused with a hint."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(sched.state_dict(), folder / "scheduler.pt")
    url = s3.put_dir(folder, f"s3://{s3_bucket}/checkpoint-1")
    r = cli("set", url, "--in-place", "--lr", "0.5")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(cli("inspect", url, "--json", "--no-stats").stdout)
    assert rep["param_groups"][0]["hyperparams"]["lr"] == 0.5
    assert rep["scheduler"]["base_lrs"] == [0.5]
    for src, dst in ((url, f"s3://{s3_bucket}/c2"), (folder, f"s3://{s3_bucket}/c3")):
        r = cli("set", src, "-o", dst, "--lr", "0.5")
        assert r.exit_code == 2
        assert r.stderr.startswith("Error: set writes a copy of a checkpoint folder only "
                                   "from and to local paths")
    assert s3.keys(s3_bucket) == ["checkpoint-1/optimizer.pt", "checkpoint-1/scheduler.pt"]


# -- session 7 fixes (R2 2, 3, 9; H1's commands that took only local paths) ---------------
def _other_writer(monkeypatch, s3, url, replacement, at):
    """At write stage ``at`` of the in-process command, another writer puts ``replacement``
    at ``url`` (the stage hook the subprocess tests use, called here in process)."""
    import optstate.base.testhook as testhook
    import optstate.io.remote_write as remote_write

    def pause(stage):
        if stage == at:
            s3.put(replacement, url)

    monkeypatch.setattr(testhook, "pause_at", pause)
    monkeypatch.setattr(remote_write, "pause_at", pause)


@pytest.mark.parametrize("stage", ["verify", "publish"])
def test_set_in_place_refuses_an_object_replaced_meanwhile(cli, s3, s3_bucket, adam_file,
                                                           tmp_path, monkeypatch, local_tmp,
                                                           stage):
    """Another writer's object put after set read the input is never overwritten (no lost
    update): one Error line saying the input changed, nothing written. ``verify``: before
    the read-back check (which would otherwise report a difference as a bug); ``publish``:
    checked, before the upload (If-Match on the ETag read)."""
    url = s3.put(adam_file, f"s3://{s3_bucket}/c.pt")
    sd = torch.load(adam_file, weights_only=True)
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"] * -7
    torch.save(sd, tmp_path / "other.pt")
    other = (tmp_path / "other.pt").read_bytes()
    _other_writer(monkeypatch, s3, url, other, stage)
    r = cli("set", url, "--in-place", "--lr", "0.5")
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert lines[0] == (f"Error: {url} changed while being edited (another writer replaced "
                        "it after it was read); nothing was written")
    assert len(lines) == 2 and lines[1].startswith("Hint: ")
    assert "bug" not in r.stderr
    assert s3.client.get_object(Bucket=s3_bucket, Key="c.pt")["Body"].read() == other
    assert list(local_tmp.iterdir()) == []


def test_a_conditional_put_refuses_a_change_after_the_last_check(s3, s3_bucket, adam_file,
                                                                 tmp_path):
    """The upload itself is conditional (If-Match): an object replaced after the re-check
    is not overwritten either (upload_file with the ETag that was read)."""
    from optstate.base.errors import CheckpointError
    from optstate.io.remote import RemotePath
    from optstate.io.remote_write import object_version, upload_file

    url = s3.put(adam_file, f"s3://{s3_bucket}/c.pt")
    p = RemotePath(url)
    etag = object_version(p)
    assert etag
    s3.put(b"newer", url)
    (tmp_path / "mine.pt").write_bytes(b"mine")
    with pytest.raises(CheckpointError, match="changed while being edited"):
        upload_file(tmp_path / "mine.pt", p, if_match=etag)
    assert s3.client.get_object(Bucket=s3_bucket, Key="c.pt")["Body"].read() == b"newer"


def test_a_failed_dcp_upload_whose_cleanup_fails_names_what_is_left(cli, s3, s3_bucket,
                                                                    adam_file, fault_proxy,
                                                                    local_tmp, quick_retries):
    fault_proxy.fail_puts(key=r"\.metadata$")
    fault_proxy.add_rule(500, "InternalError", method="DELETE")
    fault_proxy.add_rule(500, "InternalError", method="POST", query=r"(^|&)delete")
    url = f"s3://{s3_bucket}/run/dcp"
    r = cli("convert", adam_file, url)
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error: cannot write {url}/.metadata: ")
    assert s3.keys(s3_bucket) == ["run/dcp/__0_0.distcp"]
    hint = r.stderr.splitlines()[-1]
    assert hint.startswith("Hint: ") and f"{url}/__0_0.distcp" in hint
    assert "could not be removed" in hint and "delete" in hint
    assert "Traceback" not in r.stderr
    assert list(local_tmp.iterdir()) == []


@pytest.fixture
def run_config(tmp_path, adam_file, cli) -> Path:
    r = cli("config", adam_file, "-o", tmp_path / "run.toml")
    assert r.exit_code == 0, r.stderr
    return tmp_path / "run.toml"


def test_check_and_config_read_urls(cli, s3, s3_bucket, adam_file, run_config):
    url = s3.put(adam_file, f"s3://{s3_bucket}/a.pt")
    for args in (("check", "{}", "--config", str(run_config), "--json"),
                 ("config", "{}", "--json")):
        remote = cli(*[a.format(url) for a in args])
        local = cli(*[a.format(adam_file) for a in args])
        assert remote.exit_code == local.exit_code == 0, remote.stderr
        assert remote.stdout.replace(url, "X") == local.stdout.replace(str(adam_file), "X")


def test_commands_that_read_local_paths_only_say_so(cli, s3, s3_bucket, adam_file,
                                                    run_config):
    url = s3.put(adam_file, f"s3://{s3_bucket}/a.pt")
    cases = {
        ("timeline", f"s3://{s3_bucket}/run"):
            f"Error: timeline reads local files and folders only, not URLs: "
            f"s3://{s3_bucket}/run",
        ("check", url, "--config", f"s3://{s3_bucket}/run.toml"):
            f"Error: --config takes a local file, not a URL: s3://{s3_bucket}/run.toml",
        ("config", url, "-o", f"s3://{s3_bucket}/run.toml"):
            f"Error: --output takes a local file, not a URL: s3://{s3_bucket}/run.toml",
    }
    for args, first in cases.items():
        r = cli(*args)
        assert r.exit_code == 2, (args, r.stderr)
        assert r.stderr.splitlines()[0] == first
        assert "does not exist" not in r.stderr


def test_simulate_resumes_from_a_url(cli, s3, s3_bucket, tmp_path):
    """--resume reads a URL as inspect does (it took a local Path: "s3:/b/k does not
    exist"); the run continues exactly as from the local file."""
    r = cli("simulate", "--optimizer", "adam", "--steps", "3", "--save", tmp_path / "k.pt")
    assert r.exit_code == 0, r.stderr
    url = s3.put(tmp_path / "k.pt", f"s3://{s3_bucket}/k.pt")
    out = []
    for src in (url, tmp_path / "k.pt"):
        r = cli("simulate", "--optimizer", "adam", "--steps", "2", "--resume", src, "--json")
        assert r.exit_code == 0, r.stderr
        out.append(_drop(json.loads(r.stdout)))
    assert out[0] == out[1]


def test_set_in_place_on_a_trainer_folder_url_refuses_a_replaced_file(cli, s3, s3_bucket,
                                                                      tmp_path, monkeypatch):
    """The same for a folder's optimizer.pt (its ETag from the listing before the read)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    url = s3.put_dir(folder, f"s3://{s3_bucket}/checkpoint-1")
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "newer.pt")
    newer = (tmp_path / "newer.pt").read_bytes()
    _other_writer(monkeypatch, s3, f"{url}/optimizer.pt", newer, "publish")
    r = cli("set", url, "--in-place", "--lr", "0.5")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (f"Error: {url}/optimizer.pt changed while being "
                                        "edited (another writer replaced it after it was "
                                        "read); nothing was written")
    body = s3.client.get_object(Bucket=s3_bucket, Key="checkpoint-1/optimizer.pt")["Body"]
    assert body.read() == newer
