"""``convert``: a torch.save file to a DCP folder and back, verified, atomic.

The direction follows the source: a DCP folder becomes one torch.save file; anything
else ``open_source`` reads (a file, a Hugging Face folder's optimizer file) becomes a DCP
folder. The engine is torch's (``dcp.save`` / ``dcp.load`` with ``no_dist=True``, what
``torch.distributed.checkpoint.format_utils`` calls), but not format_utils' two helpers
themselves: ``torch_save_to_dcp`` loads its input with ``weights_only=False`` and
``dcp_to_torch_save`` unpickles metadata and values with full pickle (see ``dcp.py``).

Every conversion is checked before it is put in place: the written copy is read back
(safely) and compared with the source tensor by tensor, bit for bit, and only then put in
place by ``optstate.io.atomic.staged`` (one rename; an existing folder is swapped out with
``RENAME_EXCHANGE``). Nothing is overwritten without ``force``, and ``force`` replaces
only a checkpoint of the kind written (a DCP folder holds ``.metadata``).
"""

from __future__ import annotations

import errno
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optstate.base.errors import CheckpointError, OutputExistsError
from optstate.base.paths import join
from optstate.base.testhook import pause_at
from optstate.io.atomic import AtLeast, check_target, free_bytes, staged
from optstate.io.dcp import is_dcp_folder, open_dcp_source
from optstate.io.lazy import LazyTensor, materialize
from optstate.io.source import open_source
from optstate.io.torch_file import check_writable, save_checkpoint
from optstate.numeric.leaves import same_leaf


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
    check_writable(dst, force, kind="torch")
    source = open_dcp_source(src)
    obj = materialize(source.obj)
    notes: list[str] = []
    save_checkpoint(obj, dst, force=force, notes=notes)
    written = open_source(dst, mmap=True)
    n, dropped = compare_trees(obj, written.obj)
    return ConvertResult(src, "dcp", dst, "zip", n, dst.stat().st_size,
                         notes + _dropped_note(dropped))


def _file_to_dcp(src: Path, dst: Path, force: bool, unsafe: bool) -> ConvertResult:
    check_dir_writable(dst, force)
    source = open_source(src, mmap=True, unsafe=unsafe, copying="convert")
    if not isinstance(source.obj, dict) or not source.obj:
        raise CheckpointError(
            f"{source.label} holds a {type(source.obj).__name__}; a DCP checkpoint stores a "
            "non-empty dict (a state dict)"
        )
    sparse = _first_sparse(source.obj)
    if sparse is not None:
        raise CheckpointError(
            f"{source.label} holds a sparse tensor at {sparse or '(top level)'}; a DCP "
            "checkpoint stores dense (strided) tensors only",
            hint="keep this checkpoint as a torch.save file")
    notes: list[str] = []
    with staged(dst, force=force, folder=True, kind="dcp", notes=notes,
                needed=lambda: AtLeast(tensor_bytes(source.obj))) as tmp:
        _dcp_save(source.obj, tmp.path)
        pause_at("verify")
        written = open_dcp_source(tmp.path)
        n, dropped = compare_trees(source.obj, written.obj)
        size = sum(f.stat().st_size for f in tmp.path.iterdir() if f.is_file())
    return ConvertResult(src, source.format, dst, "dcp", n, size,
                         notes + _dropped_note(dropped))


def _first_sparse(obj: Any, path: str = "") -> str | None:
    """The path of the first tensor that is not strided (sparse COO/CSR/...), which DCP's
    writer cannot store (it fails inside torch with 'Cannot access storage')."""
    if isinstance(obj, torch.Tensor):
        return path if obj.layout != torch.strided else None
    items = (obj.items() if isinstance(obj, dict)
             else enumerate(obj) if isinstance(obj, (list, tuple)) else ())
    for k, v in items:
        found = _first_sparse(v, join(path, k))
        if found is not None:
            return found
    return None


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensor data in ``obj`` (each storage once): what a DCP folder of
    it needs at least."""
    seen: dict[int, int] = {}

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            if isinstance(x, LazyTensor):
                seen[id(x)] = x.numel() * x.element_size()
                return
            st = x.untyped_storage()
            seen[st.data_ptr() or id(x)] = st.nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(obj)
    return sum(seen.values())


def _dcp_save(obj: dict[str, Any], folder: Path) -> None:
    """``dcp.save`` into ``folder``. torch wraps what went wrong in a
    ``CheckpointException`` (a BaseException); the error inside is raised instead: an
    OSError (``staged`` words it), a KeyboardInterrupt, or one ``CheckpointError``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no process group": single process on purpose
            dcp.save(obj, storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
    except (Exception, CheckpointException) as e:
        inner: BaseException = e
        if isinstance(e, CheckpointException):
            inner = next((pair[0] for pair in e.failures.values()), e)
        if isinstance(inner, (OSError, KeyboardInterrupt)):
            raise inner from None
        free, need = free_bytes(folder), tensor_bytes(obj)
        if free is not None and free < need:  # torch.save's "unexpected pos" on a full disk
            raise OSError(errno.ENOSPC, "No space left on device") from None
        text = str(inner).strip()
        raise CheckpointError(f"torch.distributed.checkpoint could not save this state: "
                              f"{text.splitlines()[0] if text else type(inner).__name__}"
                              ) from None


def check_dir_writable(path: str | Path, force: bool) -> Path:
    """Fail early if folder ``path`` exists (without ``force``), is not a DCP checkpoint
    (``--force`` replaces only one of those), or cannot be made."""
    return check_target(path, force, folder=True, kind="dcp")


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
