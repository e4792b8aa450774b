"""prefetch.py: big checkpoint files start loading into the page cache at start-up.

Only regular files of at least MIN_BYTES are read, never FIFOs or devices, not options,
and nothing when the files would not fit in half the available memory.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import time

import pytest

from optstate.io import prefetch


@pytest.fixture
def small_min(monkeypatch):
    monkeypatch.setattr(prefetch, "MIN_BYTES", 1000)


def write(path, n: int):
    path.write_bytes(os.urandom(n))
    return str(path)


def test_candidates_are_big_regular_files_and_folder_contents(tmp_path, small_min):
    big = write(tmp_path / "big.pt", 5000)
    small = write(tmp_path / "small.pt", 10)
    folder = tmp_path / "dcp"
    folder.mkdir()
    shard = write(folder / "__0_0.distcp", 4000)
    write(folder / ".metadata", 10)
    (folder / "nested").mkdir()
    write(folder / "nested" / "deep.bin", 9000)  # not deeper than one level
    got = prefetch.candidates(["inspect-is-not-a-file", "--key", big, small, str(folder),
                               str(tmp_path / "missing.pt"), ""])
    assert got == [(big, 5000), (shard, 4000)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifos_and_devices_are_never_opened(tmp_path, small_min):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    assert prefetch.candidates([str(fifo), "/dev/zero", "/dev/null"]) == []
    assert prefetch.start([str(fifo)]) is None  # opening it would block forever


def test_nothing_when_files_exceed_half_the_available_memory(tmp_path, small_min,
                                                             monkeypatch):
    big = write(tmp_path / "big.pt", 5000)
    monkeypatch.setattr(prefetch, "_available_memory", lambda: 9000)
    assert prefetch.candidates([big]) == []
    monkeypatch.setattr(prefetch, "_available_memory", lambda: 10_000)
    assert prefetch.candidates([big]) == [(big, 5000)]


def test_read_ahead_survives_vanished_and_unreadable_files(tmp_path):
    gone = str(tmp_path / "gone.pt")
    prefetch._read_ahead([(gone, 1 << 30)])  # no exception: prefetching is best effort


def _resident_fraction(path: str) -> float:
    """Share of the file's pages in the page cache (mincore(2) on a private mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            anchor = ctypes.c_char.from_buffer(m)
            rc = libc.mincore(ctypes.addressof(anchor), size, vec)
            del anchor
        finally:
            m.close()
    if rc != 0:
        pytest.skip("mincore is not available")
    return sum(v & 1 for v in vec) / pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux page cache")
def test_a_file_out_of_the_cache_is_read_into_it(tmp_path, small_min):
    path = write(tmp_path / "ckpt.pt", 8 << 20)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if _resident_fraction(path) > 0.5:
        pytest.skip("this file system keeps the file in memory (tmpfs?): nothing to show")
    t = prefetch.start([path])
    assert t is not None
    t.join(timeout=30)
    # readahead(2) only starts the reads: wait for them (the disk's speed, not ours)
    deadline = time.monotonic() + 30
    while _resident_fraction(path) < 0.99 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _resident_fraction(path) > 0.99
