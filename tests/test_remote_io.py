"""Remote reads (issue #21): ``optstate.io.remote`` (RemotePath, RemoteFile, ReadStats, the
retry policy, the missing-extra error) and remote torch.save files read through the CLI,
against moto's S3 server on loopback (``tests/s3server.py``; fixtures ``s3``, ``s3_bucket``,
``fault_proxy`` in ``tests/conftest.py``)."""

from __future__ import annotations

import os
import random

import pytest

from optstate.base.errors import CheckpointError, ConfigError
from optstate.io import remote
from optstate.io.remote import ReadStats, RemotePath, display, is_url, local_path
from tests.remote_reader import LOCAL_READ_WITH_TORCH, without_reader_line


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(remote, "BASE_DELAY", 0.001)


def test_is_url_and_display():
    assert is_url("s3://bucket/k") and is_url("hf://org/repo") and is_url("file:///tmp/x")
    assert not is_url("C:\\x\\y.pt") and not is_url("ckpt.pt") and not is_url("/a/b")
    assert local_path("file:///tmp/a%20b.pt") == __import__("pathlib").Path("/tmp/a b.pt")
    assert local_path("s3://b/k") is None
    assert display("https://user:secret@host:9000/b/k.pt?X-Amz-Signature=abc#f") == \
        "https://host:9000/b/k.pt"
    assert display("s3://bucket/run/ckpt.pt") == "s3://bucket/run/ckpt.pt"


def test_remote_path_navigation(s3, s3_bucket):
    s3.put(b"x" * 10, f"s3://{s3_bucket}/run/step/optimizer.pt")
    s3.put(b"y" * 3, f"s3://{s3_bucket}/run/step/scheduler.pt")
    folder = RemotePath(f"s3://{s3_bucket}/run/step/")
    assert str(folder) == f"s3://{s3_bucket}/run/step" and folder.name == "step"
    f = folder / "optimizer.pt"
    assert f.name == "optimizer.pt" and f.suffix == ".pt" and f.parent == folder
    assert f.key == f"{s3_bucket}/run/step/optimizer.pt"
    assert f.exists() and f.is_file() and not f.is_dir() and f.size() == 10
    assert folder.is_dir() and not folder.is_file() and folder.parent.is_dir()
    assert [p.name for p in folder.iterdir()] == ["optimizer.pt", "scheduler.pt"]
    missing = folder / "nope.pt"
    assert not missing.exists() and not missing.is_file() and not missing.is_dir()
    with pytest.raises(CheckpointError, match=r"s3://.*/run/step/nope.pt does not exist$"):
        missing.read_range(0, 4)


def test_remote_file_reads_equal_the_bytes(s3, s3_bucket):
    rng = random.Random(21)
    data = os.urandom(700_000)
    url = s3.put(data, f"s3://{s3_bucket}/blob.bin")
    stats = ReadStats()
    f = RemotePath(url).open_ranged(stats)
    f.block = 4096  # small blocks: many block edges in 700 kB
    assert f.seek(0, os.SEEK_END) == len(data)
    spans = [(0, 1), (4095, 4097), (4096, 8192), (len(data) - 5, len(data) + 10),
             (12_000, 12_000 + 3 * 4096 + 7), (len(data), len(data) + 4)]
    spans += [(a, a + rng.randrange(1, 10_000)) for a in
              (rng.randrange(len(data)) for _ in range(80))]
    for a, b in spans:
        f.seek(a)
        assert f.read(b - a) == data[a:b], (a, b)
    f.seek(100)
    assert f.read(5) == data[100:105] and f.tell() == 105
    f.seek(-3, os.SEEK_CUR)
    assert f.read(3) == data[102:105]
    counted = stats.to_dict()
    # every request is one 4 KiB block (or a read of more than a block, exactly)
    assert counted["requests"] > 0 and counted["retries"] == 0
    assert counted["bytes_read"] <= counted["requests"] * 10_000


def test_read_stats_count_exact_ranges(s3, s3_bucket):
    data = os.urandom(1 << 20)
    rp = RemotePath(s3.put(data, f"s3://{s3_bucket}/blob.bin"))
    stats = ReadStats()
    f = rp.open_ranged(stats)
    f.seek(10)
    assert f.read(3) == data[10:13]  # one block (256 KiB)
    assert f.read(5) == data[13:18]  # from the cache
    assert stats.to_dict() == {"bytes_read": 256 << 10, "bytes_total": 0, "requests": 1,
                               "retries": 0}
    f.seek(300_000)
    assert f.read(600_000) == data[300_000:900_000]  # bigger than a block: one exact request
    assert stats.requests == 2 and stats.bytes_read == (256 << 10) + 600_000
    assert rp.read_range(5, 9, stats) == data[5:9]
    assert stats.requests == 3 and stats.bytes_read == (256 << 10) + 600_004


def _logged_gets(proxy, n: int) -> list:
    """The proxy's GET entries, once ``n`` are logged (it logs after answering)."""
    import time

    deadline = time.monotonic() + 5
    while True:
        gets = [e for e in proxy.entries() if e.method == "GET"]
        if len(gets) >= n or time.monotonic() > deadline:
            return gets
        time.sleep(0.01)


def test_transient_errors_are_retried_by_us_only(s3_bucket, s3, fault_proxy, fast_retries):
    data = os.urandom(5000)
    url = s3.put(data, f"s3://{s3_bucket}/blob.bin")
    fault_proxy.slow_down(2, key="blob.bin")
    stats = ReadStats()
    assert RemotePath(url).read_range(100, 200, stats) == data[100:200]
    gets = _logged_gets(fault_proxy, 3)
    # two injected 503s, then the answer: 3 requests at the server, 2 retries, all ours
    assert [e.status for e in gets] == [503, 503, 206]
    assert stats.to_dict() == {"bytes_read": 100, "bytes_total": 0, "requests": 1,
                               "retries": 2}


def test_retries_give_up_after_six_attempts(s3_bucket, s3, fault_proxy, fast_retries):
    url = s3.put(b"z" * 100, f"s3://{s3_bucket}/blob.bin")
    rp = RemotePath(url)
    rp.size()
    fault_proxy.slow_down(100, key="blob.bin")
    stats = ReadStats()
    with pytest.raises(CheckpointError) as e:
        rp.read_range(0, 10, stats)
    assert str(e.value).startswith(f"cannot read {url}: ")
    assert str(e.value).endswith("after 6 attempts")
    assert stats.retries == 5
    assert len(_logged_gets(fault_proxy, 6)) == 6


def test_access_denied(s3_bucket, s3, fault_proxy):
    url = s3.put(b"z" * 100, f"s3://{s3_bucket}/blob.bin")
    fault_proxy.deny()
    with pytest.raises(CheckpointError) as e:
        RemotePath(url).read_range(0, 10)
    assert str(e.value) == f"access denied to {url} (HTTP 403)"
    assert "credentials" in e.value.hint


def test_missing_extra_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(ConfigError) as e:
        RemotePath("s3://bucket/run/ckpt.pt")
    assert str(e.value) == "reading s3:// URLs needs s3fs, which is not installed"
    assert e.value.hint == "pip install 'optstate[s3]'"
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(ConfigError, match=r"gs:// URLs needs gcsfs"):
        RemotePath("gs://bucket/x.pt")


def test_unknown_protocol_is_one_line():
    with pytest.raises(ConfigError) as e:
        RemotePath("nosuchproto://bucket/x.pt")
    assert "\n" not in str(e.value) and "nosuchproto" in str(e.value)


# --------------------------------------------------------------------------- torch.save files


def _adam_two_groups():
    import torch

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(40, 30)), torch.nn.Parameter(torch.randn(30))]
    b = [torch.nn.Parameter(torch.randn(7, 5))]
    opt = torch.optim.Adam([{"params": a}, {"params": b, "lr": 1e-2}], lr=1e-3)
    for _ in range(3):
        for p in a + b:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt.state_dict()


def _sgd_momentum():
    import torch

    torch.manual_seed(1)
    ps = [torch.nn.Parameter(torch.randn(20, 10)), torch.nn.Parameter(torch.randn(10))]
    opt = torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt.state_dict()


def _shared_storages():
    """An SGD state whose momentum buffers are views into one storage (as a flat buffer
    gives them), one of them strided: each view rebuilt from the one storage."""
    sd = _sgd_momentum()
    import torch

    flat = torch.randn(420)
    sd["state"][0]["momentum_buffer"] = flat[:200].view(20, 10)
    sd["state"][1]["momentum_buffer"] = flat[200:400:2]
    return sd


def _json(cli, target) -> dict:
    import json

    r = cli("inspect", target, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def _same_but_file(local: dict, remote_doc: dict) -> None:
    lf, rf = local.pop("file"), remote_doc.pop("file")
    assert rf["reader"] == "torch" and rf["reader_note"]  # a URL: tests/remote_reader.py
    assert (lf["format"], lf["bytes"], lf["bytes_total"]) == \
        (rf["format"], rf["bytes"], rf["bytes_total"])
    assert lf["bytes_read"] is None and rf["bytes_read"] > 0 and rf["requests"] > 0
    assert {k: v.rsplit("/", 1)[-1] for k, v in lf.get("siblings", {}).items()} == \
        {k: v.rsplit("/", 1)[-1] for k, v in rf.get("siblings", {}).items()}
    assert local == remote_doc


@pytest.mark.parametrize("make", [_adam_two_groups, _sgd_momentum, _shared_storages])
def test_remote_file_inspects_as_the_local_file(cli, s3, s3_bucket, tmp_path, make,
                                                monkeypatch):
    import torch

    # statistics compared exactly: the local file read with torch as the URL is (the native
    # kernels' sums of _shared_storages' strided view differ in the last bit, within
    # sum_rtol: tests/remote_reader.py, tests/test_reader_equivalence.py)
    monkeypatch.setenv(*LOCAL_READ_WITH_TORCH)
    torch.save(make(), tmp_path / "opt.pt")
    url = s3.put(tmp_path / "opt.pt", f"s3://{s3_bucket}/run/opt.pt")
    local, remote_doc = _json(cli, tmp_path / "opt.pt"), _json(cli, url)
    assert remote_doc["file"]["path"] == url and remote_doc["file"]["read"] == url
    size = (tmp_path / "opt.pt").stat().st_size
    assert remote_doc["file"]["bytes_total"] == size
    # every storage once, plus the structure (the pickle, the zip directory)
    assert remote_doc["file"]["bytes_read"] < size + (200 << 10)
    _same_but_file(local, remote_doc)


def test_remote_trainer_folder(cli, s3, s3_bucket, tmp_path, monkeypatch):
    import torch

    # statistics compared exactly: the local folder read with torch as the URL is (without
    # the C kernel, numpy's sums and torch's differ in the last bit on some CPUs)
    monkeypatch.setenv(*LOCAL_READ_WITH_TORCH)

    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    torch.manual_seed(2)
    p = torch.nn.Parameter(torch.randn(6, 4))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
        sched.step()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(sched.state_dict(), folder / "scheduler.pt")
    url = s3.put_dir(folder, f"s3://{s3_bucket}/run/checkpoint-500/")
    local, remote_doc = _json(cli, folder), _json(cli, url)
    assert remote_doc["file"]["path"] == url
    assert remote_doc["file"]["read"] == f"{url}/optimizer.pt"
    assert remote_doc["file"]["siblings"] == {"scheduler": f"{url}/scheduler.pt"}
    assert remote_doc["scheduler"]["kind"] == local["scheduler"]["kind"] is not None
    _same_but_file(local, remote_doc)


def test_no_stats_reads_under_one_percent_of_32_mb(cli, s3, s3_bucket, tmp_path):
    import json

    import torch

    ps = [torch.nn.Parameter(torch.zeros(1000, 1000)) for _ in range(4)]
    opt = torch.optim.Adam(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "big.pt")
    size = (tmp_path / "big.pt").stat().st_size
    assert size > 32_000_000
    url = s3.put(tmp_path / "big.pt", f"s3://{s3_bucket}/big.pt")
    r = cli("inspect", url, "--no-stats", "--json")
    assert r.exit_code == 0, r.stdout
    f = json.loads(r.stdout)["file"]
    assert f["bytes_total"] == size and f["retries"] == 0
    assert 0 < f["bytes_read"] <= size // 100, f
    human = cli("inspect", url, "--no-stats")
    pct = f"{100 * f['bytes_read'] / size:.2f}%"
    assert f"read {f['bytes_read'] / 1000:.1f} kB of {size / 1e6:.1f} MB ({pct}) in " \
        f"{f['requests']} requests\n" in human.stdout


def test_stats_stream_every_storage_once(cli, s3, s3_bucket, tmp_path):
    import json

    import torch

    torch.save(_adam_two_groups(), tmp_path / "a.pt")
    size = (tmp_path / "a.pt").stat().st_size
    url = s3.put(tmp_path / "a.pt", f"s3://{s3_bucket}/a.pt")
    f = json.loads(cli("inspect", url, "--json").stdout)["file"]
    tensor_bytes = sum(4 * n for n in (1200, 30, 35)) * 2 + 3 * 4  # moments + steps
    assert tensor_bytes <= f["bytes_read"] <= tensor_bytes + 2 * (64 << 10)
    assert f["bytes_total"] == size


# --------------------------------------------------------------------------- errors


def test_missing_object_is_one_line(cli, s3, s3_bucket):
    url = f"s3://{s3_bucket}/run/ckpt.pt"  # was: "Error: s3:/<bucket>/run/ckpt.pt does not exist"
    r = cli("inspect", url)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == f"Error: {url} does not exist\n"


def test_access_denied_is_one_line(cli, s3, s3_bucket, fault_proxy, tmp_path):
    import torch

    torch.save(_sgd_momentum(), tmp_path / "s.pt")
    url = s3.put(tmp_path / "s.pt", f"s3://{s3_bucket}/s.pt")
    fault_proxy.deny()
    r = cli("inspect", url)
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert lines[0] == f"Error: access denied to {url} (HTTP 403)"
    assert len(lines) == 2 and lines[1].startswith("Hint: check the credentials")


def test_diff_remote_against_local(cli, s3, s3_bucket, tmp_path):
    import torch

    torch.save(_sgd_momentum(), tmp_path / "s.pt")
    url = s3.put(tmp_path / "s.pt", f"s3://{s3_bucket}/s.pt")
    r = cli("diff", url, tmp_path / "s.pt")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert f"a: {url} · SGD" in r.stdout
    r = cli("diff", url, url)
    assert r.exit_code == 0, r.stdout + r.stderr


def test_without_s3fs_the_message_names_the_extra(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['s3fs'] = None\n"
            "sys.argv = ['optstate', 'inspect', 's3://bucket/run/ckpt.pt']\n"
            "import runpy; runpy.run_module('optstate', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 2, r.stderr
    assert r.stderr == ("Error: reading s3:// URLs needs s3fs, which is not installed\n"
                        "Hint: pip install 'optstate[s3]'\n")


@pytest.mark.parametrize("blocked, url, expected", [
    ("aiohttp", "https://example.invalid/a.pt",
     "Error: reading https:// URLs needs aiohttp, which is not installed\n"
     "Hint: pip install 'optstate[http]'\n"),
    ("fsspec", "oss://bucket/a.pt",
     "Error: reading oss:// URLs needs fsspec, which is not installed\n"
     "Hint: pip install fsspec and fsspec's backend for oss:// URLs\n"),
])
def test_a_missing_backend_is_named_whatever_the_protocol(blocked, url, expected):
    """fsspec without aiohttp was 'internal error: ModuleNotFoundError' for an https URL; an
    unknown protocol without fsspec was told to install the s3 extra."""
    import subprocess
    import sys

    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            f"sys.argv = ['optstate', 'inspect', {url!r}]\n"
            "import runpy; runpy.run_module('optstate', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 2, r.stderr
    assert r.stderr == expected


def test_model_option_stays_local(cli):
    r = cli("inspect", "whatever.pt", "--model", "s3://bucket/model.safetensors")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == \
        "Error: --model takes a local file, not a URL: s3://bucket/model.safetensors"


def test_local_arguments_unchanged(cli, tmp_path):
    r = cli("inspect", tmp_path / "nope.pt")
    assert r.exit_code == 2 and r.stderr == f"Error: {tmp_path / 'nope.pt'} does not exist\n"


def test_legacy_file_is_not_read_remotely(cli, s3, s3_bucket, tmp_path):
    import torch

    torch.save(_sgd_momentum(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    url = s3.put(tmp_path / "old.pt", f"s3://{s3_bucket}/old.pt")
    r = cli("inspect", url)
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (
        f"Error: {url} is a torch.save file in the legacy (pre-1.6, non-zip) format, "
        "which optstate does not read remotely yet")


def test_repeating_views_are_seen_as_locally(s3, s3_bucket, tmp_path):
    """A view that repeats its stored elements (stride 0) counts in the walk's
    ``expand_bytes`` remotely as it does locally (set/convert refuse a copy past the limit)."""
    import torch

    from optstate.io.source import open_source

    sd = _sgd_momentum()
    sd["state"][1]["momentum_buffer"] = torch.randn(1).expand(10)
    torch.save(sd, tmp_path / "x.pt")
    url = s3.put(tmp_path / "x.pt", f"s3://{s3_bucket}/x.pt")
    local, remote_src = open_source(tmp_path / "x.pt"), open_source(url)
    assert local.walk.expand_bytes == 36
    assert remote_src.walk.expand_bytes == local.walk.expand_bytes
    buf = remote_src.obj["state"][1]["momentum_buffer"]
    assert buf.stride() == (0,) and torch.equal(buf.clone(), sd["state"][1]["momentum_buffer"])


def test_sparse_tensors_are_not_read_remotely(cli, s3, s3_bucket, tmp_path):
    import torch

    sd = _sgd_momentum()
    sd["state"][1]["momentum_buffer"] = torch.randn(10).to_sparse()
    torch.save(sd, tmp_path / "sp.pt")
    url = s3.put(tmp_path / "sp.pt", f"s3://{s3_bucket}/sp.pt")
    r = cli("inspect", url)
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (
        f"Error: {url} is a file holding sparse or quantized tensors, which optstate does "
        "not read remotely yet")


def test_statistics_hold_about_two_storages(s3, s3_bucket, tmp_path):
    """With statistics, a 32 MB file of eight 4 MB storages streams through: what Python
    holds at the peak (tracemalloc, in a fresh process: the fetched bytes are Python
    objects) stays near two storages and their copies, never the whole file."""
    import json
    import subprocess
    import sys

    import torch

    ps = [torch.nn.Parameter(torch.zeros(1000, 1000)) for _ in range(4)]
    opt = torch.optim.Adam(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "big.pt")
    size = (tmp_path / "big.pt").stat().st_size
    url = s3.put(tmp_path / "big.pt", f"s3://{s3_bucket}/big.pt")
    code = ("import json, sys, tracemalloc\n"
            "from optstate.analysis.inspect import inspect_path\n"
            "inspect_path(sys.argv[1], stats=False)\n"  # imports and structure first
            "tracemalloc.start()\n"
            "r = inspect_path(sys.argv[1])\n"
            "print(json.dumps([tracemalloc.get_traced_memory()[1], r['file']['bytes_read']]))\n")
    r = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    peak, read = json.loads(r.stdout)
    assert 8 * 4_000_000 <= read <= size  # every storage was read (each byte once)
    assert peak < 4 * 4_000_000 + (2 << 20), peak  # the whole file would be 32 MB
    print(f"peak {peak:,} B of a {size:,} B file")


@pytest.mark.parametrize("extra", [[], ["--hist"]])
def test_zero_rows_and_histograms_read_each_byte_once(cli, s3, s3_bucket, tmp_path, extra):
    """Rows that got no gradient (zeros in both moments) make inspect count underflowed
    elements on the tensors, and --hist bins them: neither downloads a storage again."""
    import json

    import torch

    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(256, 512)) for _ in range(3)]
    opt = torch.optim.Adam(ps, lr=1e-3)
    for p in ps:
        p.grad = torch.randn_like(p)
        p.grad[::2] = 0
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "rows.pt")
    url = s3.put(tmp_path / "rows.pt", f"s3://{s3_bucket}/rows.pt")
    f = json.loads(cli("inspect", url, "--json", *extra).stdout)["file"]
    assert f["bytes_read"] <= f["bytes_total"] * 1.02, f


def test_remote_trainer_folder_named_from_its_config(cli, s3, s3_bucket, monkeypatch):
    """A Trainer folder with config.json: the params are named from the model it describes
    (built on the meta device), remotely as locally; config.json's bytes are counted."""
    monkeypatch.setenv(*LOCAL_READ_WITH_TORCH)  # stats compared exactly: tests/remote_reader.py
    from pathlib import Path

    pytest.importorskip("transformers", reason="naming from config.json needs transformers")
    local = Path(__file__).parent / "fixtures" / "runs" / "hf_trainer" / "checkpoint-10"
    url = s3.put_dir(local, f"s3://{s3_bucket}/run/checkpoint-10")
    here, there = _json(cli, local), _json(cli, url)
    assert any(p["name"] for p in there["params"])
    assert there["file"]["bytes_read"] >= (local / "config.json").stat().st_size
    _same_but_file(here, there)


def test_a_retried_read_shows_in_the_footer(cli, s3, s3_bucket, fault_proxy, fast_retries,
                                            tmp_path):
    import json

    import torch

    torch.save(_sgd_momentum(), tmp_path / "s.pt")
    url = s3.put(tmp_path / "s.pt", f"s3://{s3_bucket}/s.pt")
    fault_proxy.slow_down(1, key=r"s\.pt$")
    doc = json.loads(cli("inspect", url, "--json").stdout)
    assert doc["file"]["retries"] == 1
    fault_proxy.slow_down(1, key=r"s\.pt$")
    out = cli("inspect", url).stdout
    # (a small file is read whole in one request: its tail holds everything; the dim
    # "read with torch: ..." line a URL prints is not the footer: tests/remote_reader.py)
    last = without_reader_line(out.rstrip())[-1]
    assert last.endswith((" requests, 1 retry", " 1 request, 1 retry")), out[-300:]


# --------------------------------------------------------------------------- review R2 (F1)


def _saved(tmp_path, sd, name="opt.pt"):
    import torch

    torch.save(sd, tmp_path / name)
    return tmp_path / name


def test_an_object_replaced_while_read_is_refused(s3, s3_bucket, tmp_path):
    """R2 #1: the structure is read from one object; its tensors must not come from
    another one put under the same key (same size, same layout) in the meantime."""
    import torch

    from optstate.io.remote_torch import load_remote_torch

    torch.manual_seed(5)  # storages of 240 kB: read when used, not with the structure
    ps = [torch.nn.Parameter(torch.randn(300, 200)) for _ in range(2)]
    opt = torch.optim.Adam(ps)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    sd = opt.state_dict()
    first = _saved(tmp_path, sd, "a.pt")
    for s in sd["state"].values():
        s["exp_avg"].mul_(-7)
    second = _saved(tmp_path, sd, "b.pt")
    assert first.stat().st_size == second.stat().st_size
    url = s3.put(first, f"s3://{s3_bucket}/d.pt")
    loaded = load_remote_torch(RemotePath(url), ReadStats())
    s3.put(second, url)
    with pytest.raises(CheckpointError) as e:
        loaded.obj["state"][0]["exp_avg"].load()
    assert str(e.value).startswith(f"{url} changed while being read")
    assert e.value.hint == "read it again once the writer has finished"


def test_a_dcp_data_file_replaced_while_read_is_refused(s3, s3_bucket, tmp_path):
    from optstate.io.dcp_remote import list_folder, pinned

    url = s3.put(b"a" * 100, f"s3://{s3_bucket}/dcp/__0_0.distcp")
    folder = RemotePath(url).parent
    assert list_folder(folder) == {"__0_0.distcp": 100}
    assert pinned(folder, "__0_0.distcp").read_range(0, 4) == b"aaaa"
    s3.put(b"b" * 100, url)
    with pytest.raises(CheckpointError, match="changed while being read"):
        pinned(folder, "__0_0.distcp").read_range(0, 4)


def test_reasons_carry_no_credentials(fast_retries):
    """R2 #4: whatever a backend pastes into its message, no userinfo and no query."""
    def fail():
        raise ValueError('Parameter validation failed: Invalid bucket name '
                         '"AKIAXXX:topsecret@bkt": see https://h/x?X-Amz-Signature=sig1 '
                         'and s3://id:pw@b/k')
    with pytest.raises(CheckpointError) as e:
        remote.retrying(fail, "s3://AKIAXXX:topsecret@bkt/a.pt")
    text = str(e.value)
    assert "topsecret" not in text and "AKIAXXX" not in text and "sig1" not in text
    assert "pw@" not in text and "id:" not in text
    assert text.startswith("cannot read s3://bkt/a.pt: Parameter validation failed")


def test_credentials_in_the_url_are_not_printed(cli, s3):
    r = cli("inspect", "s3://AKIAXXX:topsecret@bkt/a.pt")
    assert r.exit_code == 2
    assert "topsecret" not in r.stderr and "AKIAXXX" not in r.stderr, r.stderr
    assert r.stderr.startswith("Error: ")


def test_listing_is_bounded_by_the_items_limit(s3, s3_bucket, monkeypatch):
    """R2 #6: a listing longer than limits.items is refused, page by page."""
    from optstate.base.limits import LimitError

    for i in range(5):
        s3.put(b"x", f"s3://{s3_bucket}/many/k{i}")
    folder = RemotePath(f"s3://{s3_bucket}/many")
    assert len(list(folder.iterdir())) == 5
    monkeypatch.setenv("OPTSTATE_LIMITS", "items=3")
    with pytest.raises(LimitError, match=r"many lists more than 3 entries \(limit items=3\)"):
        list(folder.iterdir())
    from optstate.io.dcp_remote import list_folder

    with pytest.raises(LimitError):
        list_folder(folder)


def test_a_huge_metadata_is_refused_before_it_is_fetched(cli, s3, s3_bucket, fault_proxy,
                                                       monkeypatch):
    """R2 #7: .metadata's size from the listing, checked before any byte of it is read."""
    s3.put(b"\0" * 5000, f"s3://{s3_bucket}/big/.metadata")
    s3.put(b"\0" * 10, f"s3://{s3_bucket}/big/__0_0.distcp")
    monkeypatch.setenv("OPTSTATE_LIMITS", "items=10")
    r = cli("inspect", f"s3://{s3_bucket}/big")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (
        f"Error: s3://{s3_bucket}/big/.metadata is 5,000 bytes, more than DCP metadata of "
        "10 keys and chunks takes (256 bytes each); it was not fetched (limit items=10)")
    assert fault_proxy.requests("GET", key=r"\.metadata") == 0


def _http_url(proxy, bucket, key, s3=None):
    if s3 is not None:  # readable without credentials, as a presigned URL is
        s3.client.put_object_acl(Bucket=bucket, Key=key, ACL="public-read")
    return f"{proxy.endpoint}/{bucket}/{key}"


@pytest.mark.parametrize("status,code,expected", [
    (403, "AccessDenied", "access denied to {url} (HTTP 403)"),
    (401, "Unauthorized", "access denied to {url} (HTTP 401)"),
    (410, "Gone", "{url} does not exist"),
    (400, "BadRequest", "cannot read {url}: HTTP 400 (Bad Request)"),
])
def test_http_statuses_are_kept(s3, s3_bucket, fault_proxy, fast_retries, status, code,
                                expected):
    """R2 #8: fsspec's HTTP filesystem reports every failure as FileNotFoundError."""
    s3.put(b"z" * 100, f"s3://{s3_bucket}/a.pt")
    url = _http_url(fault_proxy, s3_bucket, "a.pt")
    fault_proxy.add_rule(status, code, key="a.pt")
    with pytest.raises(CheckpointError) as e:
        RemotePath(url).size()
    assert str(e.value).startswith(expected.format(url=url))
    assert "does not exist" not in str(e.value) or status == 410


def test_http_5xx_is_retried(s3, s3_bucket, fault_proxy, fast_retries):
    s3.put(b"z" * 100, f"s3://{s3_bucket}/a.pt")
    url = _http_url(fault_proxy, s3_bucket, "a.pt", s3)
    fault_proxy.unavailable(2, method=("HEAD", "GET"), key="a.pt")
    assert RemotePath(url).size() == 100
    fault_proxy.clear_rules()
    fault_proxy.add_rule(500, "InternalError", key="a.pt")
    with pytest.raises(CheckpointError) as e:
        RemotePath(url).size()
    assert str(e.value) == f"cannot read {url}: HTTP 500 (Internal Server Error) after 6 attempts"


def test_http_connection_refused_is_not_missing(fast_retries):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CheckpointError) as e:
        RemotePath(f"http://u:p@127.0.0.1:{port}/x.pt").size()
    assert str(e.value) == (f"cannot read http://127.0.0.1:{port}/x.pt: cannot connect to "
                            "the server after 6 attempts")


def test_status_reasons_read_once():
    """R2 #10: 'HTTP 500 500 ([Errno 121] Internal Server Error)' is 'HTTP 500 ...'."""
    class Boto(Exception):
        response = {"Error": {"Code": "500", "Message": "Internal Server Error"},
                    "ResponseMetadata": {"HTTPStatusCode": 500}}

    try:
        try:
            raise Boto("An error occurred (500)")
        except Boto as inner:
            raise OSError(121, "Internal Server Error") from inner
    except OSError as e:
        assert remote._reason(e) == "HTTP 500 (Internal Server Error)"


def test_a_server_ignoring_ranges_is_named(s3, s3_bucket, fault_proxy, fast_retries):
    url = s3.put(os.urandom(20_000), f"s3://{s3_bucket}/a.pt")
    fault_proxy.ignore_range(1, key="a.pt")
    with pytest.raises(CheckpointError) as e:
        RemotePath(url).read_range(0, 100)
    assert str(e.value) == (f"{url}: the server sent 20,000 bytes for a range of 100: it "
                            "does not honour range requests")


def test_a_stalled_download_says_so(s3, s3_bucket, fault_proxy, fast_retries, monkeypatch):
    """R2 #11: one read timeout (OPTSTATE_READ_TIMEOUT), and the message says why."""
    monkeypatch.setenv("OPTSTATE_READ_TIMEOUT", "0.3")
    monkeypatch.setattr(remote, "ATTEMPTS", 2)
    from tests.s3server import clear_fs_cache

    clear_fs_cache()
    url = s3.put(b"z" * 1000, f"s3://{s3_bucket}/a.pt")
    fault_proxy.stall(10, key="a.pt")
    with pytest.raises(CheckpointError) as e:
        RemotePath(url).read_range(0, 100)
    assert str(e.value) == (f"cannot read {url}: the server stopped sending (no data for "
                            "0.3 s) after 2 attempts")
    monkeypatch.setenv("OPTSTATE_READ_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="OPTSTATE_READ_TIMEOUT is 'soon'"):
        remote.read_timeout()
