"""Start reading big checkpoint files into the page cache while Python starts up.

``optstate inspect big.pt`` spends its first second or more importing torch. When the
file is not in memory yet (the first look at a fresh checkpoint), the disk can be busy
during that time instead of after it: ``start()`` runs a daemon thread that asks the
kernel to read the named files sequentially (``readahead(2)`` on Linux, else
``posix_fadvise(WILLNEED)``), in 32 MiB steps, without copying anything into this process.
The tensors are later memory-mapped from those cached pages. It changes no result: the
file is only read, through its own descriptor, and any error is ignored. Files already
in memory cost a few system calls.

Only regular files of at least ``MIN_BYTES`` are read (a FIFO or a device is never
opened), and only while they fit in half the available memory, so prefetching cannot push
the rest of the file (or other programs' data) out of the cache.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterable

MIN_BYTES = 64 << 20
STEP = 32 << 20


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def candidates(args: Iterable[str]) -> list[tuple[str, int]]:
    """Regular files worth prefetching among ``args`` (paths or folders of files)."""
    out: list[tuple[str, int]] = []
    for arg in args:
        if not arg or arg.startswith("-"):
            continue
        try:
            st = os.stat(arg)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((arg, st.st_size))
        elif stat.S_ISDIR(st.st_mode):  # a DCP or Trainer folder: its files, not deeper
            try:
                with os.scandir(arg) as it:
                    for e in it:
                        try:
                            if e.is_file(follow_symlinks=True):
                                out.append((e.path, e.stat().st_size))
                        except OSError:
                            continue
            except OSError:
                continue
    out = [(p, n) for p, n in out if n >= MIN_BYTES]
    avail = _available_memory()
    if avail is not None and sum(n for _, n in out) > avail // 2:
        return []
    return out


def _read_ahead(files: list[tuple[str, int]]) -> None:
    readahead = None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        readahead = libc.readahead
        readahead.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_size_t)
        readahead.restype = ctypes.c_ssize_t
    except (OSError, AttributeError, ImportError):
        readahead = None
    for path, size in files:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            for off in range(0, size, STEP):
                if readahead is not None:
                    readahead(fd, off, STEP)
                elif hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, off, STEP, os.POSIX_FADV_WILLNEED)
                else:
                    return
        except OSError:
            pass
        finally:
            os.close(fd)


def start(args: Iterable[str]) -> threading.Thread | None:
    """Prefetch the big regular files among ``args`` on a daemon thread (None: none)."""
    files = candidates(args)
    if not files:
        return None
    t = threading.Thread(target=_read_ahead, args=(files,), name="optstate-prefetch",
                         daemon=True)
    t.start()
    return t
