"""``convert``: a torch.save file to a DCP folder and back, verified, atomic.

The direction follows the source: a DCP folder becomes one torch.save file; anything
else ``open_source`` reads (a file, a Hugging Face folder's optimizer file) becomes a DCP
folder. The engine is torch's (``dcp.save`` / ``dcp.load`` with ``no_dist=True``, what
``torch.distributed.checkpoint.format_utils`` calls), but not format_utils' two helpers
themselves: ``torch_save_to_dcp`` loads its input with ``weights_only=False`` and
``dcp_to_torch_save`` unpickles metadata and values with full pickle (see ``dcp.py``).

Every conversion is checked before it is put in place: the written copy is read back
(safely) and compared with the source tensor by tensor, bit for bit. A DCP folder is
written to a temp folder beside DST and renamed into place; a file goes through
``save_checkpoint`` (temp file + rename). Nothing is overwritten without ``force``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import check_writable, save_checkpoint
from .dcp import is_dcp_folder, open_dcp_source
from .errors import CheckpointError, OutputExistsError
from .lazy import materialize
from .leaves import same_leaf
from .paths import join
from .source import open_source


@dataclass
class ConvertResult:
    source: Path
    source_format: str
    destination: Path
    destination_format: str  # "dcp" | "zip"
    tensors: int  # tensors compared bit for bit after writing
    bytes: int  # size of what was written
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "optstate.convert/1",
            "source": str(self.source),
            "source_format": self.source_format,
            "destination": str(self.destination),
            "destination_format": self.destination_format,
            "tensors_verified": self.tensors,
            "bytes": self.bytes,
            "warnings": list(self.warnings),
        }


def convert(src: str | Path, dst: str | Path, *, force: bool = False,
            unsafe: bool = False) -> ConvertResult:
    """Convert ``src`` (DCP folder <-> torch.save file) to ``dst``; see module docstring."""
    src_p, dst_p = Path(src), Path(dst)
    if src_p.resolve() == dst_p.resolve():
        raise OutputExistsError(f"{dst_p} is the source itself; give another destination")
    if is_dcp_folder(src_p):
        return _dcp_to_file(src_p, dst_p, force)
    return _file_to_dcp(src_p, dst_p, force, unsafe)


def _dcp_to_file(src: Path, dst: Path, force: bool) -> ConvertResult:
    check_writable(dst, force)
    source = open_dcp_source(src)
    obj = materialize(source.obj)
    save_checkpoint(obj, dst, force=force)
    written = open_source(dst, mmap=True)
    n, dropped = compare_trees(obj, written.obj)
    return ConvertResult(src, "dcp", dst, "zip", n, dst.stat().st_size, _dropped_note(dropped))


def _file_to_dcp(src: Path, dst: Path, force: bool, unsafe: bool) -> ConvertResult:
    check_dir_writable(dst, force)
    source = open_source(src, mmap=True, unsafe=unsafe)
    if not isinstance(source.obj, dict) or not source.obj:
        raise CheckpointError(
            f"{source.label} holds a {type(source.obj).__name__}; a DCP checkpoint stores a "
            "non-empty dict (a state dict)"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".optstate-tmp", dir=dst.parent))
    try:
        _dcp_save(source.obj, tmp)
        written = open_dcp_source(tmp)
        n, dropped = compare_trees(source.obj, written.obj)
        size = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        replace_dir(tmp, dst, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConvertResult(src, source.format, dst, "dcp", n, size, _dropped_note(dropped))


def _dcp_save(obj: dict[str, Any], folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no process group": single process on purpose
            dcp.save(obj, storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
    except OSError as e:
        raise CheckpointError(f"cannot write {folder}: {e.strerror or e}") from None
    except Exception as e:  # CheckpointException wraps what went wrong
        raise CheckpointError(f"torch.distributed.checkpoint could not save this state: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else e}"
                              ) from None


def check_dir_writable(path: str | Path, force: bool) -> Path:
    """Fail early if folder ``path`` exists (without ``force``) or cannot be made."""
    p = Path(path)
    if p.exists() and not force:
        raise OutputExistsError(f"{p} already exists", hint="pass --force to overwrite it")
    if p.exists() and not p.is_dir() and not p.is_file():
        raise OutputExistsError(f"{p} exists and is neither a file nor a folder")
    if not p.parent.is_dir():
        raise CheckpointError(f"cannot write {p}: folder {p.parent} does not exist")
    return p


def replace_dir(tmp: Path, dst: Path, force: bool) -> None:
    """Rename the finished folder ``tmp`` to ``dst``. An existing ``dst`` (with ``force``)
    is first renamed aside and removed after: at every moment ``dst`` is absent, the old
    one or the new one, never a mix."""
    old: Path | None = None
    if dst.exists() or dst.is_symlink():
        if not force:
            raise OutputExistsError(f"{dst} already exists", hint="pass --force to overwrite it")
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".optstate-old",
                                    dir=dst.parent))
        old.rmdir()
        os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except OSError as e:
        if old is not None:
            os.rename(old, dst)
        raise CheckpointError(f"cannot write {dst}: {e.strerror or e}") from None
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                old.unlink()
    with contextlib.suppress(OSError):
        fd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- verifying


def compare_trees(a: Any, b: Any, where: str = "") -> tuple[int, list[str]]:
    """Check that ``b`` (a written copy) holds what ``a`` does. Returns the number of
    tensors compared and the empty containers of ``a`` that ``b`` lacks (DCP does not
    store those); raises CheckpointError at the first real difference."""
    def fail(what: str) -> CheckpointError:
        return CheckpointError(
            f"the converted checkpoint differs from the source at {where or '(top level)'}: "
            f"{what}; nothing was written",
            hint="this is a bug in optstate or torch.distributed.checkpoint; please report it",
        )

    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            raise fail(f"a tensor became a {type(b).__name__}")
        if not same_leaf(a, b, strides=False):  # DCP writes tensors contiguous
            raise fail("tensor values, shape or dtype changed")
        return 1, []
    if isinstance(a, dict):
        if not isinstance(b, dict):
            raise fail(f"a dict became a {type(b).__name__}")
        count, dropped = 0, []
        for k, v in a.items():
            sub = join(where, k)
            if k not in b:
                if _is_empty_container(v):
                    dropped.append(sub)
                    continue
                raise fail(f"key {k!r} is missing")
            n, d = compare_trees(v, b[k], sub)
            count += n
            dropped += d
        extra = [k for k in b if k not in a]
        if extra:
            raise fail(f"unexpected key {extra[0]!r}")
        return count, dropped
    if isinstance(a, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            raise fail(f"a {type(a).__name__} of {len(a)} became {type(b).__name__} "
                       f"{b!r}"[:200])
        count, dropped = 0, []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            n, d = compare_trees(x, y, join(where, i))
            count += n
            dropped += d
        return count, dropped
    if not same_leaf(a, b, strides=False):
        raise fail(f"{a!r} became {b!r}")
    return 0, []


def _is_empty_container(v: Any) -> bool:
    if isinstance(v, (dict, list, tuple)):
        return all(_is_empty_container(x) for x in (v.values() if isinstance(v, dict) else v))
    return False


def _dropped_note(dropped: list[str]) -> list[str]:
    if not dropped:
        return []
    names = ", ".join(dropped[:5]) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
    return [f"DCP does not store empty containers; dropped {names}"]
