"""Writing torch.distributed.checkpoint (DCP) folders, and a DCP folder as one file.

The engine is torch's (``dcp.save`` with ``no_dist=True``: one process, no process
group). These are the pieces ``convert`` (edit layer) and ``simulate --world-size`` (sim
layer) both use; putting a written folder or file in place is ``atomic.staged``'s job,
and checking that a copy holds what its source does is the caller's.
"""

from __future__ import annotations

import errno
import warnings
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError
from optstate.io.lazy import LazyTensor, materialize
from optstate.io.source import open_source
from optstate.io.targets import check_target, free_bytes
from optstate.io.torch_file import check_writable, clean_message, save_checkpoint


def check_dir_writable(path: str | Path, force: bool) -> Path:
    """Fail early if folder ``path`` exists (without ``force``), is not a DCP checkpoint
    (``force`` replaces only one of those), or cannot be made."""
    return check_target(path, force, folder=True, kind="dcp")


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensor data in ``obj`` (each storage once): what a DCP folder of
    it needs at least."""
    import torch

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


def dcp_save(obj: dict[str, Any], folder: Path) -> None:
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
        if isinstance(inner, CheckpointError):  # optstate's own refusal (io.inert), not DCP's
            raise inner from None
        free, need = free_bytes(folder), tensor_bytes(obj)
        if free is not None and free < need:  # torch.save's "unexpected pos" on a full disk
            raise OSError(errno.ENOSPC, "No space left on device") from None
        raise CheckpointError(f"torch.distributed.checkpoint could not save this state: "
                              f"{clean_message(inner)}") from None


def dcp_to_file(folder: Path, dst: Path, *, force: bool, notes: list[str]) -> Any:
    """Write the DCP folder ``folder`` as one torch.save file ``dst`` (atomic, loaded back
    safely before it replaces anything: ``save_checkpoint``). Returns the object written;
    ``notes`` receives what was left over from an interrupted write."""
    check_writable(dst, force, kind="torch")
    source = open_source(folder)
    obj = materialize(source.obj)
    save_checkpoint(obj, dst, force=force, notes=notes)
    return obj
