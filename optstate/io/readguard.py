"""An input file truncated while optstate reads it: one ``Error:`` line and exit 2.

Tensors of zip checkpoints are memory-mapped (``torch_file.load_torch_file``): their
bytes are read when a statistic or a comparison touches them. If another program
truncates the file meanwhile, the first touch of a page past the new end raises SIGBUS in
whichever thread reads it (torch, the C kernel's workers). That cannot be turned into a
Python exception: Python runs its signal handlers later, between bytecodes, and returning
from the fault runs the faulting read again; so the process died with no message at all.

The design, the most that can be done honestly:

* With the small C helper (``optstate/io/_sigbus.c``, built by ``pip install`` like the C
  kernel), the console script's ``enable()`` installs a SIGBUS handler. ``watch()``
  registers each mapped file (a duplicate descriptor, its size, the message prepared
  here); on SIGBUS the handler, with async-signal-safe calls only, finds the registered
  file that shrank (``fstat``), writes its ``Error:`` and ``Hint:`` lines, removes the
  temp file or folder a write was filling (``remove_on_fault``: ``unlink``, raw
  ``getdents64``) and ends the process with ``_exit(2)``; the old target is untouched,
  as after any error. Nothing else runs then (no buffered output is flushed). A SIGBUS
  that is not an address error in a mapping while watched files exist keeps the default
  action: a crash, as before.
* Everywhere (and the only guard without the helper), ``check()`` runs before a
  tensor's data is read (``kernels.moments``, ``pair_kernel.compare``) and raises a
  ``CheckpointError`` with the same message when a watched file shrank: a truncation
  between two reads is reported cleanly, with the usual clean-up; and any exception
  while a watched file has shrunk is reported as the truncation (``changed()``, read by
  ``cli.errors_to_exit``). Without the helper a truncation during a read still ends the
  process by SIGBUS, as the kernel delivers it.

Only the console script enables it (a library caller keeps its own SIGBUS handling);
``watch()`` and ``check()`` do nothing until then.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError, one_line
from optstate.base.native import c_disabled
from optstate.base.testhook import pause_at

HINT = "another program is writing or truncating it; run again once it is complete"
OTHER = ("Error: a memory-mapped input could not be read (bus error): it changed while "
         "being read, or its device failed\n")

MAX_WATCHED = 64  # as _sigbus.c's table

_enabled = False
_helper: Any = None
# (our descriptor, size and mtime (ns) when mapped, path)
_watched: list[tuple[int, int, int, Path]] = []
_tokens = itertools.count()
_slots: dict[int, int] = {}  # remove_on_fault's token -> the helper's slot


def enable() -> bool:
    """Turn the guard on for this process (the console script); whether the C handler
    is in place (False: only ``check()`` guards)."""
    global _enabled, _helper
    _enabled = True
    if _helper is None and not c_disabled():
        try:
            from optstate.io import _sigbus  # type: ignore[attr-defined]

            _sigbus.install(OTHER.encode())
            _helper = _sigbus
        except (ImportError, OSError):
            _helper = None
    return _helper is not None


def handler_installed() -> bool:
    return _helper is not None


def message(path: Path, size: int) -> str:
    """The one-line error for ``path``, mapped when it was ``size`` bytes (the signal
    handler writes the same line: it has no way to format what it finds)."""
    return f"{path} changed (was truncated) while being read; it was {size} bytes when opened"


def watch(f: Any, path: str | Path) -> None:
    """Guard the file open as ``f`` (its tensors may be mapped) until the process ends:
    one descriptor each, for the first ``MAX_WATCHED`` files a command opens (a command
    reads a few; the handler's table is that size)."""
    if not _enabled or len(_watched) >= MAX_WATCHED:
        return
    p = Path(path)
    try:
        fd = os.dup(f.fileno())
    except OSError:  # out of descriptors: the read itself will say so
        return
    st = os.fstat(fd)
    size = st.st_size
    _watched.append((fd, size, st.st_mtime_ns, p))
    if _helper is not None:
        text = f"Error: {one_line(message(p, size))}\nHint: {HINT}\n"  # as cli.fail
        _helper.watch(fd, size, text.encode("utf-8", "replace"))


def modified_message(path: Path) -> str:
    return (f"{path} changed (was modified) while being read; its numbers may mix the old "
            "and the new contents")


def changed() -> CheckpointError | None:
    """The error for the first watched file that is smaller than when it was mapped, or
    was written since (its mtime moved: rewritten in place, whose mapped pages show the
    new bytes). An exception raised while reading a file that shrank (a damaged zip
    directory, a short read) is reported as this: it is what happened.

    Bytes appended move the mtime too: reported (a writer is at work). Not seen, as it
    need not be: a file renamed over the input (the descriptor and the mapping keep the
    opened file, read whole). Not seen either: a rewrite that leaves the mtime as it was
    (``touch -d``, or inside one tick of a coarse filesystem clock)."""
    for fd, size, mtime, p in _watched:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if st.st_size < size:
            return CheckpointError(message(p, size), HINT)
        if st.st_mtime_ns != mtime:
            return CheckpointError(modified_message(p), HINT)
    return None


def remove_on_fault(path: str | Path) -> int:
    """Have the SIGBUS exit remove ``path`` too (a temp file, or a flat temp folder, being
    written: ``atomic.Staged``), so that it leaves the old target and nothing else, as an
    error does; a token for ``forget``. Without the helper nothing can run then: -1."""
    if _helper is None:
        return -1
    slot = int(_helper.remove_on_fault(os.fsencode(path)))
    if slot < 0:
        return -1
    token = next(_tokens)
    _slots[token] = slot
    return token


def forget(token: int) -> None:
    """Stop removing the path ``remove_on_fault`` gave ``token`` for (again: no-op)."""
    slot = _slots.pop(token, None)
    if slot is not None and _helper is not None:
        _helper.forget(slot)


def check() -> None:
    """Raise ``CheckpointError`` if a watched file shrank or was written; called before a
    tensor's data is read (``kernels.moments``, ``pair_kernel.compare``) and as a command
    ends (``cli.errors_to_exit``)."""
    pause_at("check")  # test hooks: a truncation now is seen by the check below;
    error = changed()
    if error is not None:
        raise error
    pause_at("read")  # one now, only by the SIGBUS handler (the read is next)
