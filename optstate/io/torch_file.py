"""Reading and writing torch.save files: safe loads, atomic saves.

Security policy: every load passes ``weights_only=True`` explicitly (so torch ignores
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) and ``map_location="cpu"``. torch is handed a file
we opened ourselves (or its ``/proc/self/fd`` path when memory-mapping), never the
user's path: torch sends a path ending in ``.safetensors`` to another loader whatever
the file holds. Before torch unpickles anything, the pickle is pre-scanned against the
documented limits (``prescan.py``, ``limits.py``): what torch would build is counted
from the opcodes, so work follows the bytes stored, never what a file claims; a zip's
structure is checked first (``torch_zip.py``). After loading, the object is ``walk``ed.
``unsafe=True`` exists for files the user trusts; nothing sets it by default (the
CLI's ``--unsafe`` flag, which warns loudly, or a library caller's ``unsafe=True``).

About 500 lines on purpose: one load sequence (format, pre-scan, the reader's choice, the
native read or ``torch.load``, the wording of each refusal) read top to bottom, and the three
small writers that load back with it.

``reader="auto"`` (inspect, diff, timeline) reads a zip file without torch when
``native_pickle`` knows all of it; torch reads everything else, as before, and gives every
verdict on damaged or refused files: the native reader only ever steps aside.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import pickle
import re
import stat
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optstate.base.errors import (
    CheckpointError,
    ConfigError,
    OptstateError,
    UnsafeCheckpointError,
    option,
)
from optstate.base.limits import Limits, size_text
from optstate.base.limits import current as current_limits
from optstate.io import readguard
from optstate.io.prescan import PickleCounts, scan, scan_legacy
from optstate.io.targets import check_target
from optstate.io.torch_zip import TorchZip, check_zip, data_pkl, mapped_storages_fit
from optstate.io.walk import WalkReport, walk

ZIP_MAGIC = b"PK\x03\x04"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A text (protocol 0) pickle starting with a GLOBAL opcode: 'cmodule\nname\n'
_PROTO0_GLOBAL = re.compile(rb"\(?c([\w.]+)\n([\w.]+)\n")


@dataclass
class LoadedFile:
    """A loaded torch.save file and what we know about it."""

    path: Path
    format: str  # "zip" | "legacy"
    bytes: int
    obj: Any
    walk: WalkReport | None = None  # what the bounded walk saw (None: not checked)
    reader: str = "torch"  # "native": read without torch (native_pickle.py)
    reader_note: str | None = None  # why torch read it when another reader was asked for


def detect_format(path: Path, head: bytes | None = None) -> str:
    """'zip' (torch >= 1.6), 'legacy' (the older pickle stream), or an error that says
    what the file is instead. ``head``: the file's first 512 bytes, if already read."""
    if head is None:
        head = _read_head(path, 512)
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head[:1] == b"\x80":
        return "legacy"
    if len(head) > 262 and head[257:262] == b"ustar":
        raise CheckpointError(
            f"{path} is a tar archive (the torch < 0.4 checkpoint format), which optstate "
            "does not read",
            hint="load and re-save it with an old torch: torch.save(torch.load(f), out)",
        )
    m = _PROTO0_GLOBAL.match(head)
    if m:
        raise UnsafeCheckpointError(
            f"{path} is a bare pickle (protocol 0) that calls "
            f"{m.group(1).decode()}.{m.group(2).decode()}, not a torch.save file; refused "
            "without running it"
        )
    if head.count(0) == len(head):
        raise CheckpointError(f"{path} starts with {len(head)} zero bytes, not a torch.save "
                              "file (an interrupted copy or a preallocated file?)")
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        raise CheckpointError(f"{path} looks like JSON text, not a torch.save file")
    if _looks_like_text(head):
        raise CheckpointError(f"{path} is a text file, not a torch.save file")
    if head.startswith(b"\x89HDF"):
        raise CheckpointError(f"{path} is an HDF5 file, not a torch.save file")
    raise CheckpointError(
        f"{path} is not a torch.save file (unknown format, starts with {head[:8].hex(' ')})"
    )


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    # NUL and other control bytes are valid UTF-8 but never in text files
    return not any(ord(c) < 32 and c not in "\t\n\r\f" for c in text)


def _read_head(path: Path, n: int) -> bytes:
    with _open_regular(path) as f:
        return f.read(n)


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[Any]:
    """Open ``path`` for reading, with one-line errors for the usual failures."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
        # (it is refused below as not a regular file); regular files ignore the flag.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise _is_a_directory(path) from None
    except PermissionError:
        raise CheckpointError(f"permission denied reading {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot open {path}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):  # os.open opens folders read-only without complaint
            raise _is_a_directory(path)
        raise CheckpointError(f"{path} is not a regular file")
    f = os.fdopen(fd, "rb")
    try:
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        yield f
    finally:
        f.close()


def _is_a_directory(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is a directory",
        hint="give a checkpoint file, or a Hugging Face / DCP checkpoint folder",
    )


def clean_message(e: BaseException) -> str:
    """torch's exception text as one line, ANSI codes and stack hints removed."""
    text = _ANSI.sub("", str(e)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


READERS = ("torch", "auto", "native")
COMPRESSED_NOTE = ("the zip's members are compressed (torch.save stores them uncompressed, "
                   "so it was re-zipped)")


def choose_reader(reader: str) -> tuple[str, str | None]:
    """("native" | "torch", why torch) for a caller's ``reader``: "torch" (the default of
    every caller that copies or writes), "auto" or "native" (read without torch when the
    file allows). ``OPTSTATE_READER=torch|native`` overrides "auto" and "native"; it is
    read at each call."""
    if reader not in READERS:
        raise ValueError(f"reader must be one of {', '.join(READERS)}, not {reader!r}")
    if reader == "torch":
        return "torch", None
    forced = os.environ.get("OPTSTATE_READER", "")
    if forced.strip().lower() == "torch":
        return "torch", "OPTSTATE_READER=torch"
    if forced.strip().lower() not in ("", "native", "auto"):  # a typo must not pass unseen
        raise ConfigError(f"OPTSTATE_READER={forced.strip()} is not a reader: use torch or "
                          "native")
    return "native", None


def load_torch_file(path: str | Path, *, mmap: bool = False, unsafe: bool = False,
                    reader: str = "torch") -> LoadedFile:
    """Load a torch.save file safely (``weights_only=True``) onto the CPU, then ``walk``
    what was loaded (cycles, depth, size as a tree, sparse invariants). ``reader``
    ("torch", "auto", "native": ``choose_reader``): a zip file that the native reader
    knows is read without torch (``native_pickle.py``; always memory-mapped), anything
    else with torch, ``reader_note`` saying why."""
    p = Path(path)
    chosen, note = choose_reader(reader)
    with _open_regular(p) as f:  # one open: what we check is what torch reads
        fmt = detect_format(p, f.read(512))
        size = os.fstat(f.fileno()).st_size
        readguard.watch(f, p)  # truncated while it is read: one Error line (readguard.py)
        zinfo = check_zip(p, f, size) if fmt == "zip" else None
        limits = current_limits()
        pkl, counts = _prescan(p, f, zinfo, limits)
        if chosen == "native":
            note = _not_native(fmt, zinfo, counts, pkl, unsafe)
            if note is None:
                from optstate.io.native_pickle import NativeUnsupported, read_native

                try:
                    obj = read_native(p, f, size, zinfo, pkl)
                except NativeUnsupported as e:
                    note = str(e)
                else:  # the same walk, the same verdicts as over torch's tree
                    walked = walk(obj, label=str(p), max_depth=limits.depth,
                                  max_nodes=limits.nodes)
                    return LoadedFile(path=p, format=fmt, bytes=size, obj=obj, walk=walked,
                                      reader="native")
        # torch maps stored records raw: a compressed one would be read as garbage
        use_mmap = (mmap and zinfo is not None and not zinfo.compressed
                    and os.path.exists(f"/proc/self/fd/{f.fileno()}"))
        f.seek(0)
        target: Any = f"/proc/self/fd/{f.fileno()}" if use_mmap else f
        try:
            obj = _torch_load(p, fmt, target, use_mmap, unsafe)
        except UnsafeCheckpointError:
            raise
        except CheckpointError:
            if not use_mmap or unsafe:
                raise
            # torch's read path describes damage better (record sizes): say what it says
            use_mmap = False
            f.seek(0)
            obj = _torch_load(p, fmt, f, False, unsafe)
        walked = walk(obj, label=str(p), storages=use_mmap, max_depth=limits.depth,
                      max_nodes=limits.nodes)
        # (never with --unsafe: a second load would run the file's code a second time)
        if use_mmap and not unsafe and not mapped_storages_fit(f, zinfo, walked):
            # torch's mmap path does not compare record sizes with the tensors the pickle
            # describes (its read path does): a short record would show the bytes after
            # it. Read the file instead, and let torch check.
            del obj, walked
            f.seek(0)
            obj = _torch_load(p, fmt, f, False, unsafe)
            walked = walk(obj, label=str(p), max_depth=limits.depth, max_nodes=limits.nodes)
    if walked.storage_bytes > size:
        # torch's safe unpickler allows the legacy constructors: torch.FloatTensor(2**30)
        # in a few hundred bytes is a 4 GiB tensor that statistics would read and set copy
        raise CheckpointError(
            f"{p} holds tensors of {size_text(walked.storage_bytes)}, more than the file's "
            f"{size:,} bytes: their data is not read from the file but built from a size "
            "(e.g. torch.FloatTensor(N)); refused")
    walked.storages = None
    return LoadedFile(path=p, format=fmt, bytes=size, obj=obj, walk=walked,
                      reader_note=note)


def _not_native(fmt: str, zinfo: TorchZip | None, counts: PickleCounts | None,
                pkl: bytes | None, unsafe: bool) -> str | None:
    """Why the native reader leaves this file to torch, or None."""
    if unsafe:
        return f"{option('unsafe', True)} (torch's full unpickler)"
    if fmt != "zip" or zinfo is None or counts is None:
        return "the legacy (non-zip) torch.save format"
    if zinfo.compressed:
        return COMPRESSED_NOTE
    return counts.native_refusal(len(pkl or b""))


def _prescan(p: Path, f: Any, zinfo: TorchZip | None, limits: Limits
             ) -> tuple[bytes | None, PickleCounts | None]:
    """Count the tensors, list and dict entries, nesting and string lengths the pickle
    asks for (``prescan.py``) before torch's unpickler builds any of it; a zip's
    ``data.pkl`` and what the scan saw."""
    if zinfo is not None:
        data = data_pkl(p, f, zinfo)
        return data, scan(data, 0, limits, str(p))[1]
    try:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None, None  # cannot map (an empty or special file): torch reads it and judges
    with mapped:
        return None, scan_legacy(mapped, limits, str(p))


def prescan_bytes(data: bytes, label: str) -> PickleCounts:
    """The pre-scan for torch.save bytes held in memory (a DCP folder's non-tensor
    values, which torch.load reads with weights_only=True): same limits, same messages."""
    return prescan_stream(io.BytesIO(data), len(data), label)


def prescan_stream(f: Any, size: int, label: str) -> PickleCounts:
    """The pre-scan for the torch.save bytes a seekable ``f`` of ``size`` bytes holds (a
    DCP value or tensor chunk) before torch.load reads them; what it saw. A native
    unpickler (Python's C one) must also see ``complete`` (it takes opcodes torch's
    refuses) and ``memo`` below the pickle's size (it allocates twice the index)."""
    limits = current_limits()
    f.seek(0)
    if f.read(4) == ZIP_MAGIC:
        zinfo = check_zip(Path(label), f, size)
        return scan(data_pkl(Path(label), f, zinfo), 0, limits, label)[1]
    f.seek(0)
    return scan_legacy(f.read(size), limits, label)


@contextlib.contextmanager
def _quiet_device_mesh() -> Iterator[None]:
    """``--unsafe`` unpickles torch's own DeviceMesh (FSDP2's DTensors), and torch logs a
    line about process groups per mesh to stderr: nothing the user can act on here."""
    import logging

    log = logging.getLogger("torch.distributed.device_mesh")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield None
    finally:
        log.setLevel(level)


def _torch_load(p: Path, fmt: str, target: Any, use_mmap: bool, unsafe: bool, *,
                map_location: str = "cpu") -> Any:
    """``map_location="meta"``: no storage data is read (a remote file: ``remote_torch``)."""
    from optstate.base.startup import import_torch

    import_torch()  # SIGINT deferred and the collector paused while torch imports
    import torch

    from optstate.io import inert

    try:
        with warnings.catch_warnings(), torch.sparse.check_sparse_tensor_invariants(True), (
                _quiet_device_mesh() if unsafe else inert.decoding()) as decoded:
            warnings.simplefilter("ignore")
            obj = torch.load(
                target,
                map_location=map_location,
                weights_only=not unsafe,  # always explicit: see the module docstring
                mmap=use_mmap,
            )
        # foreign classes (DeepSpeed's, torchao's, DTensor) were decoded inertly (inert.py)
        return inert.settle(obj) if decoded is not None and decoded.tensors else obj
    except pickle.UnpicklingError as e:
        raise _refusal(p, e) from None
    except OptstateError:
        raise
    except RecursionError:
        raise CheckpointError(f"{p} is nested too deeply to read") from None
    except MemoryError:
        raise CheckpointError(f"{p} needs more memory than this machine has to load") from None
    except RuntimeError as e:
        if "alloc_cpu" not in str(e) and "DefaultCPUAllocator" not in str(e):
            raise _load_failure(p, fmt, e) from None
        # torch's allocator failed (its RuntimeError, not MemoryError)
        raise CheckpointError(f"{p} needs more memory than this machine has to load") from None
    except Exception as e:  # torch raises IndexError, KeyError, struct.error, ... (#127525)
        raise _load_failure(p, fmt, e) from None


def _refusal(path: Path, e: BaseException) -> CheckpointError:
    text = _ANSI.sub("", str(e))
    m = re.search(r"GLOBAL\s+([\w.]+)", text)
    if m:
        return UnsafeCheckpointError(
            f"{path} needs {m.group(1)}, which safe loading does not allow; refused without "
            "running it",
            hint=f"if you wrote this file yourself and trust it, {option('unsafe', True)} loads "
            "it with full pickle (this can run arbitrary code)",
        )
    m = re.search(r"Unsupported operand (\d+)", text)
    if m:
        op = int(m.group(1))
        name = _OPCODE_NAMES.get(op, f"0x{op:02x}")
        return UnsafeCheckpointError(
            f"{path} uses the pickle opcode {name}, which safe loading does not support "
            "(torch.save writes pickle protocol 2); refused without running it",
            hint="re-save it with torch.save, which writes protocol 2",
        )
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text, re.S)
    detail = m.group(1).strip().splitlines()[0] if m else clean_message(e)
    return UnsafeCheckpointError(f"{path} was refused by safe loading: {detail}")


def _opcode_names() -> dict[int, str]:
    import pickletools

    return {ord(op.code): op.name for op in pickletools.opcodes if len(op.code) == 1}


_OPCODE_NAMES = _opcode_names()


def _load_failure(path: Path, fmt: str, e: BaseException) -> CheckpointError:
    msg = clean_message(e)
    low = msg.lower()
    if isinstance(e, EOFError) or isinstance(e, struct.error) or "unexpected end" in low \
            or "truncat" in low or "ran out of input" in low or "unexpected eof" in low:
        return CheckpointError(f"{path} is truncated (the file ends early)",
                               hint="re-copy or re-save the checkpoint")
    m = re.search(r"failed locating file (data/\w+)", msg)
    if m:
        return CheckpointError(f"{path} is damaged: tensor data {m.group(1)} is missing",
                               hint="re-copy or re-save the checkpoint")
    m = re.search(r"record size \((\d+) bytes\) does not match expected size \((\d+) bytes",
                  msg)
    if m:
        return CheckpointError(
            f"{path} is damaged: a tensor needs {m.group(2)} bytes but its data holds "
            f"{m.group(1)}", hint="re-copy or re-save the checkpoint")
    if "not resizable" in low:  # mmap: a storage slice cut short by the end of the file
        return CheckpointError(f"{path} is damaged: a tensor needs more bytes than its data "
                               "holds", hint="re-copy or re-save the checkpoint")
    if "wrong byte size" in low:  # legacy format; torch's text has a raw %ld in it
        return CheckpointError(f"{path} is damaged: a tensor's data does not match its "
                               "declared size", hint="re-copy or re-save the checkpoint")
    if "invalid protocol version" in low:
        return CheckpointError(f"{path} is damaged: {_first_sentence(msg, 120)}",
                               hint="re-copy or re-save the checkpoint")
    if "invalid magic number" in low:
        return CheckpointError(f"{path} is not a torch.save file (wrong magic number)")
    if "sparse" in low or "inconsistent with indices" in low or "indices" in low:
        return CheckpointError(f"{path} holds an invalid sparse tensor ({msg})")
    if "central directory" in msg or "zip archive" in low or "miniz" in low:
        return CheckpointError(f"{path} is a damaged zip archive: {_first_sentence(msg)}",
                               hint="re-copy or re-save the checkpoint")
    if isinstance(e, (IndexError, KeyError, UnicodeDecodeError, AssertionError, TypeError,
                      AttributeError)):
        # what torch's unpickler raises on a damaged stream (pytorch#127525)
        return CheckpointError(
            f"{path} is damaged: its pickled data is malformed ({type(e).__name__}: "
            f"{_first_sentence(msg, 120)})", hint="re-copy or re-save the checkpoint")
    return CheckpointError(
        f"cannot read {path} as a torch checkpoint ({fmt} format): {_first_sentence(msg)}"
    )


def _first_sentence(msg: str, limit: int = 200) -> str:
    first = msg.split(". ")[0]
    return first if len(first) <= limit else first[:limit] + "…"


# --------------------------------------------------------------------------- writing


def check_writable(path: str | Path, force: bool, *, kind: str | None = None) -> Path:
    """Fail early (before any work) if ``path`` exists and ``force`` is not set, is a
    folder, is not a torch.save file (``kind="torch"``: what ``--force`` may replace), or
    its folder is missing or not searchable."""
    return check_target(path, force, kind=kind)


def atomic_write(path: str | Path, write: Any, *, force: bool = False,
                 verify: Any = None, notes: list[str] | None = None,
                 needed: Any = None, kind: str | None = None,
                 if_match: str | None = None) -> Path:
    """Write through ``write(fileobj)`` to a temp file beside ``path``, fsync, optionally
    ``verify(temp_path)``, then rename over ``path`` and fsync the folder
    (``optstate.io.atomic.staged``). A crash at any point leaves either the old file or the
    new one, never half of one; an error or Ctrl-C leaves the old file and no temp."""
    from optstate.base.testhook import pause_at
    from optstate.io.atomic import staged

    with staged(path, force=force, notes=notes, needed=needed, kind=kind,
                if_match=if_match) as tmp:
        assert tmp.fd is not None
        with os.fdopen(tmp.fd, "wb") as f:
            tmp.fd = None  # the file object closes it now
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            pause_at("verify")
            verify(tmp.path)
    return tmp.target  # a Path, or a RemotePath for a URL (uploaded)


def save_checkpoint(obj: Any, path: str | Path, *, force: bool = False,
                    notes: list[str] | None = None) -> Path:
    """``torch.save(obj)`` atomically, re-loading the temp file with ``weights_only=True``
    before it replaces anything, so what we write is what a safe load reads back. The
    reload memory-maps the tensor data (checking the zip, the pickle and that every
    storage fits its record) instead of reading it back: the bytes are the ones torch
    just wrote from memory, and reading 80 MB again cost more than the save's fsync.
    ``notes`` receives what was found left over from an interrupted write."""

    def verify(tmp: Path) -> None:
        try:
            load_torch_file(tmp, mmap=True)
        except CheckpointError as e:
            raise CheckpointError(
                f"refusing to write {path}: the saved data does not load back safely ({e})"
            ) from None

    from optstate.io.atomic import saved_size, torch_save

    try:
        return atomic_write(path, lambda f: torch_save(obj, f), force=force, verify=verify,
                            notes=notes, needed=lambda: saved_size(obj), kind="torch")
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from None
