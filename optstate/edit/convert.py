"""``convert``: a torch.save file to a DCP folder and back, verified, atomic.

The direction follows the source: a DCP folder becomes one torch.save file; anything
else ``open_source`` reads (a file, a Hugging Face folder's optimizer file) becomes a DCP
folder. A DeepSpeed ZeRO checkpoint (``io/deepspeed.py``) can become either, and the
destination's name chooses (``deepspeed_to_file``): a name ending in one of
``FILE_SUFFIXES`` is a torch.save file, anything else a DCP folder. Both hold the tree
DeepSpeed's rank files are read as: ``optimizer`` (a torch.optim state_dict with
``param_names``: ``opt.load_state_dict(torch.load(f)["optimizer"])``),
``fp32_master_weights`` and ``deepspeed`` (the run's facts).

The engine is torch's (``dcp.save`` / ``dcp.load`` with ``no_dist=True``, what
``torch.distributed.checkpoint.format_utils`` calls), but not format_utils' two helpers
themselves: ``torch_save_to_dcp`` loads its input with ``weights_only=False`` and
``dcp_to_torch_save`` unpickles metadata and values with full pickle (see
``io/dcp_metadata.py``, ``io/dcp.py``). Writing either format is the io layer's
(``io/dcp_write.py``, ``io/torch_file.py``); both are read back through ``open_source``.

Every conversion is checked: the written copy is read back (safely) and compared with
the source tensor by tensor, bit for bit. A DCP folder is compared before
``optstate.io.atomic.staged`` puts it in place (one rename; an existing folder is swapped
out with ``RENAME_EXCHANGE``); a file is loaded back safely before it is put in place,
and compared after. Nothing is overwritten without ``force``, and ``force`` replaces
only a checkpoint of the kind written (a DCP folder holds ``.metadata``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError, OutputExistsError
from optstate.base.testhook import pause_at
from optstate.io.atomic import staged
from optstate.io.dcp_metadata import is_dcp_folder
from optstate.io.dcp_write import check_dir_writable, dcp_save, dcp_to_file, tensor_bytes
from optstate.io.deepspeed import is_deepspeed_file, is_deepspeed_folder
from optstate.io.source import open_source
from optstate.io.targets import AtLeast
from optstate.io.torch_file import check_writable, save_checkpoint
from optstate.numeric.trees import verify_copy


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
    """Convert ``src`` (DCP folder <-> torch.save file; DeepSpeed -> either) to ``dst``; see
    the module docstring."""
    src_p, dst_p = Path(src), Path(dst)
    if src_p.resolve() == dst_p.resolve():
        raise OutputExistsError(f"{dst_p} is the source itself; give another destination")
    if is_dcp_folder(src_p):
        return _dcp_to_file(src_p, dst_p, force)
    if deepspeed_to_file(src_p, dst_p):
        return _deepspeed_to_file(src_p, dst_p, force, unsafe)
    return _file_to_dcp(src_p, dst_p, force, unsafe)


# A DeepSpeed checkpoint converted to a destination named like this is one torch.save file.
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def deepspeed_to_file(src: Path, dst: Path) -> bool:
    """Whether ``src`` is a DeepSpeed checkpoint to write as one torch.save file (``dst``
    ends in one of ``FILE_SUFFIXES``); any other destination of it is a DCP folder."""
    is_ds = (is_deepspeed_folder(src) if src.is_dir()
             else src.is_file() and is_deepspeed_file(src))
    return is_ds and dst.suffix.lower() in FILE_SUFFIXES


def _deepspeed_to_file(src: Path, dst: Path, force: bool, unsafe: bool) -> ConvertResult:
    check_writable(dst, force, kind="torch")
    source = open_source(src, mmap=True, unsafe=unsafe, copying="convert")
    notes: list[str] = []
    save_checkpoint(source.obj, dst, force=force, notes=notes)
    written = open_source(dst, mmap=True)
    n, dropped = verify_copy(source.obj, written.obj)
    return ConvertResult(src, source.format, dst, "zip", n, dst.stat().st_size,
                         _said(source) + notes + _dropped_note(dropped))


def _dcp_to_file(src: Path, dst: Path, force: bool) -> ConvertResult:
    notes: list[str] = []
    obj = dcp_to_file(src, dst, force=force, notes=notes)
    written = open_source(dst, mmap=True)
    n, dropped = verify_copy(obj, written.obj)
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
    # DCP's writer fails inside torch on sparse tensors; open_source's walk found them
    sparse = source.walk.first_sparse if source.walk is not None else None
    if sparse is not None:
        raise CheckpointError(
            f"{source.label} holds a sparse tensor at {sparse}; a DCP "
            "checkpoint stores dense (strided) tensors only",
            hint="keep this checkpoint as a torch.save file")
    notes: list[str] = []
    with staged(dst, force=force, folder=True, kind="dcp", notes=notes,
                needed=lambda: AtLeast(tensor_bytes(source.obj))) as tmp:
        dcp_save(source.obj, tmp.path)
        pause_at("verify")
        written = open_source(tmp.path)
        n, dropped = verify_copy(source.obj, written.obj)
        size = sum(f.stat().st_size for f in tmp.path.iterdir() if f.is_file())
    return ConvertResult(src, source.format, dst, "dcp", n, size,
                         _said(source) + notes + _dropped_note(dropped))


def _said(source: Any) -> list[str]:
    """What reading the source said (a DeepSpeed rank file stands for its whole tag folder;
    its frozen params have no state): the copy holds the same, so the user hears it too."""
    return [n["message"] for n in source.notes]


def _dropped_note(dropped: list[str]) -> list[str]:
    if not dropped:
        return []
    names = ", ".join(dropped[:5]) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
    return [f"DCP does not store empty containers; dropped {names}"]
