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
              (rng.randrange(len(data)) for _ in range(200))]
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
