"""Reading and writing torch.save files: safe loads, atomic saves.

Security policy: every load passes ``weights_only=True`` explicitly (so torch ignores
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) and ``map_location="cpu"``. torch is handed a file
we opened ourselves (or its ``/proc/self/fd`` path when memory-mapping), never the
user's path: torch sends a path ending in ``.safetensors`` to another loader whatever
the file holds. ``unsafe=True`` exists for files the user trusts; only the CLI's
``--unsafe`` flag sets it, and it warns loudly.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError, OutputExistsError, UnsafeCheckpointError

ZIP_MAGIC = b"PK\x03\x04"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class LoadedFile:
    """A loaded torch.save file and what we know about it."""

    path: Path
    format: str  # "zip" | "legacy"
    bytes: int
    obj: Any


def detect_format(path: Path) -> str:
    """'zip' (torch >= 1.6), 'legacy' (the older pickle stream), or an error that says
    what the file is instead."""
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
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_head(path: Path, n: int) -> bytes:
    with _open_regular(path) as f:
        return f.read(n)


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[Any]:
    """Open ``path`` for reading, with one-line errors for the usual failures."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(
            f"{path} is a directory",
            hint="give a checkpoint file, or a Hugging Face / DCP checkpoint folder",
        ) from None
    except PermissionError:
        raise CheckpointError(f"permission denied reading {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot open {path}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CheckpointError(f"{path} is not a regular file")
        yield f
    finally:
        f.close()


def clean_message(e: BaseException) -> str:
    """torch's exception text as one line, ANSI codes and stack hints removed."""
    text = _ANSI.sub("", str(e)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def load_torch_file(path: str | Path, *, mmap: bool = False, unsafe: bool = False) -> LoadedFile:
    """Load a torch.save file safely (``weights_only=True``) onto the CPU."""
    import torch

    p = Path(path)
    fmt = detect_format(p)
    with _open_regular(p) as f:
        size = os.fstat(f.fileno()).st_size
        if fmt == "zip":
            _check_zip(p, f)
            f.seek(0)
        use_mmap = mmap and fmt == "zip" and os.path.exists(f"/proc/self/fd/{f.fileno()}")
        target: Any = f"/proc/self/fd/{f.fileno()}" if use_mmap else f
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(
                    target,
                    map_location="cpu",
                    weights_only=not unsafe,
                    mmap=use_mmap,
                )
        except pickle.UnpicklingError as e:
            raise _refusal(p, e) from None
        except CheckpointError:
            raise
        except (RuntimeError, EOFError, ValueError, KeyError, IndexError, OSError,
                UnicodeDecodeError, AttributeError, TypeError, ImportError,
                MemoryError, OverflowError, zipfile.BadZipFile) as e:
            raise _load_failure(p, fmt, e) from None
        except Exception as e:  # struct.error and other stray errors from malformed files
            raise _load_failure(p, fmt, e) from None
    return LoadedFile(path=p, format=fmt, bytes=size, obj=obj)


def _check_zip(path: Path, f: Any) -> None:
    """Refuse zip archives that are not plain torch checkpoints, before unpickling."""
    try:
        zf = zipfile.ZipFile(f)
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path} is a damaged zip archive (truncated or corrupt)",
            hint="re-copy or re-save the checkpoint",
        ) from None
    names = [i.filename for i in zf.infolist()]
    if len(names) != len(set(names)):
        dup = sorted({n for n in names if names.count(n) > 1})[0]
        raise UnsafeCheckpointError(
            f"{path} holds the member {dup!r} twice; different tools would read different "
            "contents, so optstate refuses it"
        )
    bases = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "constants.pkl" in bases or any(b.startswith("code/") for b in bases):
        raise UnsafeCheckpointError(
            f"{path} is a TorchScript archive (torch.jit.save), not a torch.save checkpoint",
            hint="TorchScript archives hold code; load them with torch.jit.load if you trust them",
        )
    if "data.pkl" not in bases:
        raise CheckpointError(f"{path} is a zip archive but not a torch.save file (no data.pkl)")


def _refusal(path: Path, e: BaseException) -> CheckpointError:
    text = _ANSI.sub("", str(e))
    m = re.search(r"(?:GLOBAL|global)\s+([\w.]+)", text)
    if m:
        return UnsafeCheckpointError(
            f"{path} needs {m.group(1)}, which safe loading does not allow; refused without "
            "running it",
            hint="if you wrote this file yourself and trust it, --unsafe loads it with full "
            "pickle (this can run arbitrary code)",
        )
    return UnsafeCheckpointError(f"{path} was refused by safe loading: {clean_message(e)}")


def _load_failure(path: Path, fmt: str, e: BaseException) -> CheckpointError:
    msg = clean_message(e)
    if isinstance(e, EOFError) or "unexpected end" in msg.lower() or "truncat" in msg.lower():
        return CheckpointError(f"{path} is truncated (the file ends early)")
    if "central directory" in msg or "zip archive" in msg.lower():
        return CheckpointError(f"{path} is a damaged zip archive: {msg}")
    return CheckpointError(f"cannot read {path} as a torch checkpoint ({fmt} format): {msg}")


# --------------------------------------------------------------------------- writing


def check_writable(path: str | Path, force: bool) -> Path:
    """Fail early (before any work) if ``path`` exists and ``force`` is not set."""
    p = Path(path)
    if p.is_dir():
        raise OutputExistsError(f"{p} is a directory; give a file path to write")
    if p.exists() and not force:
        raise OutputExistsError(f"{p} already exists", hint="pass --force to overwrite it")
    if not p.parent.exists():
        raise CheckpointError(f"cannot write {p}: folder {p.parent} does not exist")
    return p


def atomic_write(path: str | Path, write: Any, *, force: bool = False,
                 verify: Any = None) -> Path:
    """Write through ``write(fileobj)`` to a temp file beside ``path``, fsync, optionally
    ``verify(temp_path)``, then rename over ``path`` and fsync the folder. A crash at any
    point leaves either the old file or the new one, never half of one."""
    p = check_writable(path, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".optstate-tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(Path(tmp))
        if p.exists() and not force:  # appeared while we were writing
            raise OutputExistsError(f"{p} already exists", hint="pass --force to overwrite it")
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(p.parent)
    return p


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def save_checkpoint(obj: Any, path: str | Path, *, force: bool = False) -> Path:
    """``torch.save(obj)`` atomically, re-loading the temp file with ``weights_only=True``
    before it replaces anything, so what we write is what a safe load reads back."""
    import torch

    def verify(tmp: Path) -> None:
        try:
            load_torch_file(tmp)
        except CheckpointError as e:
            raise CheckpointError(
                f"refusing to write {path}: the saved data does not load back safely ({e})"
            ) from None

    try:
        return atomic_write(path, lambda f: torch.save(obj, f), force=force, verify=verify)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from None
