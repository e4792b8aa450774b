"""Remote checkpoints end to end through the CLI, against a real S3 server on loopback (moto's
server mode, tests/s3server.py) and a fault-injecting proxy in front of it (tests/faultproxy.py).

Issue #21 item 5: local and remote results equal (a torch.save Adam file, a DCP folder);
``--no-stats`` reads <= 1% of a 32 MB checkpoint (the report's ``bytes_read`` and the proxy's
log agree); an injected 503 is retried; a 403 and a 404 are one ``Error:`` line naming the URL
(exit 2, no traceback); ``s3://`` without s3fs names the extra to install.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from optstate.io import remote
from tests.conftest import ROOT
from tests.remote_reader import (
    LOCAL_READ_WITH_TORCH,
    READER_LINE,
    without_reader,
    without_reader_line,
)

FIXTURES = ROOT / "tests" / "fixtures"
# the fields that name where the bytes came from or count the reading of them
WHERE = ("path", "read", "siblings", "bytes_read", "requests", "retries")


def adam_state(shapes: list[tuple[int, ...]], steps: int = 2, seed: int = 0) -> dict:
    """A real torch.optim.Adam's state_dict() after ``steps`` real steps on random grads."""
    torch.manual_seed(seed)
    params = [nn.Parameter(torch.randn(s)) for s in shapes]
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=0.01)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt.state_dict()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Real checkpoints: ``small`` (Adam, torch.save, a few KB), ``big`` (Adam, torch.save,
    32 MB: 4 Mi parameters, exp_avg + exp_avg_sq in float32), ``dcp`` (the small state
    through dcp.save, written as two data files) and ``trainer`` (a real Hugging Face Trainer
    checkpoint folder from tests/fixtures: optimizer.pt, scheduler.pt beside it)."""
    d = tmp_path_factory.mktemp("remote_ckpts")
    small = adam_state([(16, 8), (8,), (3, 4, 5)])
    torch.save(small, d / "adam.pt")
    torch.save(adam_state([(2048, 1024), (2048, 1024)], steps=1), d / "big.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": one process on purpose
        dcp.save(small, storage_writer=dcp.FileSystemWriter(d / "adam_dcp", thread_count=2),
                 no_dist=True)
    return {"small": d / "adam.pt", "big": d / "big.pt", "dcp": d / "adam_dcp",
            "trainer": FIXTURES / "runs" / "hf_trainer" / "checkpoint-10"}


def inspect_json(cli, target, *extra: str) -> dict:
    r = cli("inspect", str(target), "--json", *extra)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def without_where(report: dict, local: Path, url: str) -> dict:
    """The report with the reading-place fields dropped and every mention of the local path
    written as the URL (warnings' ``where`` name files); the reader's keys too (a URL is read
    with torch, a local file natively: tests/remote_reader.py)."""
    report = without_reader(report)
    report = dict(report, file={k: v for k, v in report["file"].items() if k not in WHERE})
    text = json.dumps(report, sort_keys=True).replace(str(local), url)
    return json.loads(text)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


# ----------------------------------------------------------------------- local == remote

@pytest.mark.parametrize("which, stats", [("small", True), ("small", False), ("dcp", True),
                                          ("dcp", False)])
def test_local_and_remote_reports_are_equal(cli, s3, s3_bucket, ckpts, which, stats,
                                            monkeypatch):
    if stats:  # compared exactly: tests/remote_reader.py
        monkeypatch.setenv(*LOCAL_READ_WITH_TORCH)
    local = ckpts[which]
    url = f"s3://{s3_bucket}/run/{local.name}"
    (s3.put_dir if local.is_dir() else s3.put)(local, url)
    extra = () if stats else ("--no-stats",)
    here, there = inspect_json(cli, local, *extra), inspect_json(cli, url, *extra)

    assert there["file"]["path"] == url
    assert here["file"]["bytes_read"] is None  # local files are memory-mapped: not counted
    assert isinstance(there["file"]["bytes_read"], int) and there["file"]["bytes_read"] > 0
    assert there["file"]["requests"] >= 1 and there["file"]["retries"] == 0
    assert there["file"]["bytes_total"] == here["file"]["bytes_total"]
    assert without_where(there, local, url) == without_where(here, local, url)


def test_full_stats_read_each_byte_about_once(cli, s3, s3_bucket, ckpts, fault_proxy):
    """With stats every storage is read (once): bytes_read is about the file, not a multiple
    of it, and the proxy saw the same bytes go out."""
    url = s3.put(ckpts["big"], f"s3://{s3_bucket}/big.pt")
    f = inspect_json(cli, url)["file"]
    total = ckpts["big"].stat().st_size
    assert f["bytes_total"] == total
    assert 32 << 20 <= f["bytes_read"] <= total * 1.02
    assert fault_proxy.get_bytes(r"/big\.pt$") == f["bytes_read"]


def test_a_trainer_folder_reads_the_same_remotely(cli, s3, s3_bucket, ckpts, monkeypatch):
    """A real Trainer checkpoint folder (optimizer.pt, scheduler.pt beside it): the same
    state, statistics, scheduler and parameter names (from its config.json), locally and from
    the bucket."""
    monkeypatch.setenv(*LOCAL_READ_WITH_TORCH)  # stats compared exactly: tests/remote_reader.py
    local = ckpts["trainer"]
    url = s3.put_dir(local, f"s3://{s3_bucket}/run/checkpoint-10")
    here, there = inspect_json(cli, local), inspect_json(cli, url)
    assert there["scheduler"] is not None and there["naming"]["named"] > 0
    assert without_where(there, local, url) == without_where(here, local, url)


@pytest.mark.parametrize("layout", ["torch.save", "dcp"])
def test_zero_rows_do_not_make_stats_read_twice(cli, s3, s3_bucket, tmp_path, layout):
    """Rows with no gradient (an embedding's unused rows: exact zeros in both moments) are
    the common case in real runs; the statistics still read each byte once. (The underflow
    finding's count over exp_avg/exp_avg_sq once loaded them again after the statistics
    pass: free on a memory-mapped file, a second download remotely, 4.3 MB read of 2.1 MB.)"""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(256, 1024))
    opt = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    p.grad[::2] = 0  # half the rows got no gradient
    opt.step()
    if layout == "dcp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no process group": one process on purpose
            dcp.save(opt.state_dict(), storage_writer=dcp.FileSystemWriter(tmp_path / "rows"),
                     no_dist=True)
        url = s3.put_dir(tmp_path / "rows", f"s3://{s3_bucket}/rows")
    else:
        torch.save(opt.state_dict(), tmp_path / "rows.pt")
        url = s3.put(tmp_path / "rows.pt", f"s3://{s3_bucket}/rows.pt")
    f = inspect_json(cli, url)["file"]
    # each byte once; the structure (zip directory, data.pkl, .metadata) may come in whole
    # blocks on top: a second read of the moments would be +2 MB
    assert f["bytes_read"] <= f["bytes_total"] + (128 << 10), f


def test_diff_of_two_remote_files_equals_the_local_diff(cli, s3, s3_bucket, tmp_path,
                                                        monkeypatch):
    """diff takes URLs too: the same comparison, and each side says what it read."""
    monkeypatch.setenv(*LOCAL_READ_WITH_TORCH)  # stats compared exactly: tests/remote_reader.py
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(adam_state([(16, 8), (8,)], steps=2), a)
    torch.save(adam_state([(16, 8), (8,)], steps=3), b)
    ua, ub = s3.put(a, f"s3://{s3_bucket}/a.pt"), s3.put(b, f"s3://{s3_bucket}/b.pt")
    here, there = cli("diff", a, b, "--json"), cli("diff", ua, ub, "--json")
    assert here.exit_code == there.exit_code == 1, (here.stderr, there.stderr)  # they differ
    here, there = json.loads(here.stdout), json.loads(there.stdout)
    for side, local, url in (("a", a, ua), ("b", b, ub)):
        assert there[side]["path"] == url and here[side]["bytes_read"] is None
        assert there[side]["bytes_total"] == local.stat().st_size
        assert there[side]["bytes_read"] > 0 and there[side]["requests"] >= 1
        for k in ("path", "file", "bytes_read", "requests", "retries"):
            here[side].pop(k), there[side].pop(k)
    here, there = without_reader(here), without_reader(there)  # tests/remote_reader.py
    text = json.dumps(here, sort_keys=True).replace(str(a), ua).replace(str(b), ub)
    assert json.loads(text) == there


# ----------------------------------------------------------------------- read only what is needed

def test_no_stats_reads_at_most_one_percent_of_32_mb(cli, s3, s3_bucket, ckpts, fault_proxy):
    big = ckpts["big"]
    assert big.stat().st_size >= 32 << 20
    url = s3.put(big, f"s3://{s3_bucket}/run/big.pt")
    report = inspect_json(cli, url, "--no-stats")
    f = report["file"]
    assert f["bytes_total"] == big.stat().st_size
    assert 0 < f["bytes_read"] <= 0.01 * f["bytes_total"]
    # the server's side of it: what the proxy sent for that object is what was counted
    sent = fault_proxy.get_bytes(r"/run/big\.pt$")
    assert sent == f["bytes_read"]
    gets = fault_proxy.entries("GET", r"/run/big\.pt$")
    assert all(e.range for e in gets)  # range requests only, never the whole object
    assert f["requests"] >= len([e for e in gets if e.status in (200, 206)])
    # the structure is all there all the same
    assert [p["state"][k]["shape"] for p in report["params"] for k in ("exp_avg", "exp_avg_sq")
            ] == [[2048, 1024]] * 4


def test_human_footer_names_the_bytes_read(cli, s3, s3_bucket, ckpts):
    url = s3.put(ckpts["big"], f"s3://{s3_bucket}/big.pt")
    r = cli("inspect", url, "--no-stats")
    assert r.exit_code == 0, r.stderr
    # a URL is read with torch, and its dim line says so (tests/remote_reader.py)
    assert sum(line.strip().startswith(READER_LINE) for line in r.stdout.splitlines()) == 1
    footer = [line for line in without_reader_line(r.stdout) if line.strip().startswith("read ")]
    assert len(footer) == 1, r.stdout
    assert re.fullmatch(r"read [\d.]+ [kMG]?B of 33\.6 MB \([\d.]+%\) in \d+ requests?",
                        footer[0].strip()), footer[0]


# ----------------------------------------------------------------------- faults

def test_an_injected_503_is_retried_and_reported(cli, s3, s3_bucket, ckpts, fault_proxy,
                                                 monkeypatch):
    monkeypatch.setattr(remote, "BASE_DELAY", 0.01)  # the policy's own knob: a faster test
    url = s3.put(ckpts["small"], f"s3://{s3_bucket}/adam.pt")
    fault_proxy.slow_down(2, method="GET", key=r"/adam\.pt$")
    report = inspect_json(cli, url)
    injected = [e for e in fault_proxy.entries("GET", r"/adam\.pt$") if e.injected]
    assert [e.status for e in injected] == [503, 503]
    assert report["file"]["retries"] >= 2
    # and the result is the one without faults
    fault_proxy.clear_rules()
    assert without_where(report, ckpts["small"], url) == \
        without_where(inspect_json(cli, url), ckpts["small"], url)


def run_optstate(*args: str, prelude: str = "", timeout: float = 120):
    """``optstate ARGS`` in a fresh process (this process's environment: the S3 endpoint),
    after ``prelude`` (Python run first, e.g. to hide a module)."""
    code = (f"import sys\n{prelude}\nsys.argv = ['optstate', *{list(args)!r}]\n"
            "from optstate._entry import main\nmain()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    env.pop("OPTSTATE_DEBUG", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=timeout)


def assert_one_error(r, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""
    errors = error_lines(r.stderr)
    assert len(errors) == 1, r.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_403_is_one_error_line_naming_the_url(s3, s3_bucket, ckpts, fault_proxy):
    url = s3.put(ckpts["small"], f"s3://{s3_bucket}/secret/adam.pt")
    fault_proxy.deny(key=r"/secret/")
    r = run_optstate("inspect", url)
    line = assert_one_error(r, url, "403")
    assert "testing" not in r.stderr  # the (dummy) credentials are never printed
    # permanent: asked once or twice (HEAD/GET), not retried six times
    assert fault_proxy.requests(key=r"/secret/") <= 3, fault_proxy.log
    assert line.startswith("Error: access denied to ")


def assert_one_error_in_process(r, *needles: str) -> str:
    """The same for the in-process CLI (an uncaught exception would have propagated)."""
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert r.stdout == ""
    errors = error_lines(r.stderr)
    assert len(errors) == 1, r.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_404_is_one_error_line_naming_the_url(cli, s3, s3_bucket):
    url = f"s3://{s3_bucket}/no/such/ckpt.pt"
    assert_one_error_in_process(cli("inspect", url), url, "does not exist")


def test_the_query_string_is_not_printed(cli, s3, s3_bucket):
    r = cli("inspect", f"s3://{s3_bucket}/missing.pt?X-Amz-Signature=abc123")
    assert_one_error_in_process(r, f"s3://{s3_bucket}/missing.pt")
    assert "abc123" not in r.stderr and "X-Amz" not in r.stderr, r.stderr


def test_s3_without_s3fs_names_the_extra(s3, s3_bucket):
    r = run_optstate("inspect", f"s3://{s3_bucket}/adam.pt",
                     prelude="sys.modules['s3fs'] = None")
    assert_one_error(r, "s3fs", "not installed")
    assert "pip install 'optstate[s3]'" in r.stderr


def test_local_commands_need_no_fsspec(ckpts):
    """fsspec and its backends are optional: hidden, a local inspect works as before."""
    r = run_optstate("inspect", str(ckpts["small"]), "--json", "--no-stats",
                     prelude="for m in ('fsspec', 's3fs', 'boto3', 'botocore'): "
                             "sys.modules[m] = None")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["file"]["bytes_read"] is None


def test_a_folder_not_read_remotely_yet_is_one_clear_error(cli, s3, s3_bucket):
    """A DeepSpeed folder in a bucket: one line saying so (and to copy it), not a guess."""
    folder = FIXTURES / "deepspeed" / "zero2_fp32_ws1" / "checkpoint"
    url = s3.put_dir(folder, f"s3://{s3_bucket}/ds/checkpoint")
    r = cli("inspect", url)
    assert_one_error_in_process(r, url)
    assert "local" in r.stderr.lower(), r.stderr
