"""``convert``: a torch.save file to a DCP folder and back, verified, atomic.

One rule for the destination (``writes_file``): a name ending in one of ``FILE_SUFFIXES``
is one torch.save file, any other name a DCP folder. A DCP folder source becomes a file;
a torch.save file (or a Hugging Face folder's optimizer file) a DCP folder (to a file name:
one ``Error``, it is one already), unless it holds torchao low-bit entries. A source the
reader assembles from several files (``ASSEMBLED``: a DeepSpeed ZeRO checkpoint,
``io/deepspeed.py``; a folder of one FSDP2 run's rank files, ``io/dtensor.py``) becomes
either. DeepSpeed's copy holds the tree its rank files are read as: ``optimizer`` (a
torch.optim state_dict with ``param_names``:
``opt.load_state_dict(torch.load(f)["optimizer"])``), ``fp32_master_weights`` and
``deepspeed`` (the run's facts); FSDP2's the whole state, each DTensor joined.

What optstate reads but cannot write as it is (``writable``): torchao's low-bit entries
are written dequantized (float32, what ``ParamView.state`` holds: a plain torch.optim
state, with a warning that torchao's optimizer will not load them as low-bit); a DTensor
left in the tree (one FSDP2 rank's file) is refused: a shard is not the param.

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
from optstate.io.dcp_metadata import is_dcp_folder, is_index
from optstate.io.dcp_write import check_dir_writable, dcp_save, dcp_to_file, tensor_bytes
from optstate.io.deepspeed import is_deepspeed_file, is_deepspeed_folder
from optstate.io.dtensor import is_dtensor
from optstate.io.remote import display
from optstate.io.source import open_source
from optstate.io.targets import AtLeast, as_target
from optstate.io.torch_file import check_writable, save_checkpoint
from optstate.numeric.trees import verify_copy

# A destination named like this is one torch.save file; any other name a DCP folder.
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Sources read from several files and put together: either kind of destination.
ASSEMBLED = ("deepspeed", "fsdp2-ranks")
# What reading a source says that is a plain fact of it, not a warning (JSON "notes").
FACTS = ("fsdp2_joined",)


@dataclass
class ConvertResult:
    source: Path
    source_format: str
    destination: Path
    destination_format: str  # "dcp" | "zip"
    tensors: int  # tensors compared bit for bit after writing
    bytes: int  # size of what was written
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts of reading (FACTS), not warnings
    source_words: str | None = None  # the source's format for people ("FSDP2 rank files (2)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "optstate.convert/1",
            "source": display(self.source),
            "source_format": self.source_format,
            "destination": display(self.destination),
            "destination_format": self.destination_format,
            "tensors_verified": self.tensors,
            "bytes": self.bytes,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }


def convert(src: str | Path, dst: str | Path, *, force: bool = False,
            unsafe: bool = False) -> ConvertResult:
    """Convert ``src`` to ``dst``, a torch.save file or a DCP folder as ``dst`` is named;
    see the module docstring."""
    src_p, dst_p = as_target(src), as_target(dst)  # a Path, or a RemotePath for a URL
    if (src_p.resolve() == dst_p.resolve() if isinstance(src_p, Path) and isinstance(dst_p, Path)
            else src_p == dst_p):
        raise OutputExistsError(f"{display(dst_p)} is the source itself; give another "
                                "destination")
    if _is_dcp(src_p):
        return _dcp_to_file(src_p, dst_p, force)
    if writes_file(dst_p):
        return _to_file(src_p, dst_p, force, unsafe)
    return _file_to_dcp(src_p, dst_p, force, unsafe)


def writes_file(dst: Path) -> bool:
    """Whether ``dst`` is written as one torch.save file (its name ends in one of
    ``FILE_SUFFIXES``); any other destination is a DCP folder."""
    return dst.suffix.lower() in FILE_SUFFIXES


def _is_dcp(src: Any) -> bool:
    if isinstance(src, Path):
        return is_dcp_folder(src)
    return (src / ".metadata").is_file()  # a folder in object storage


def _is_deepspeed(src: Any) -> bool:
    if not isinstance(src, Path):  # not read from object storage (open_source says so)
        return False
    return (is_deepspeed_folder(src) if src.is_dir()
            else src.is_file() and is_deepspeed_file(src))


def _to_file(src: Path, dst: Path, force: bool, unsafe: bool) -> ConvertResult:
    check_writable(dst, force, kind="torch")
    source = open_source(src, mmap=True, unsafe=unsafe, copying="convert")
    obj, changed = writable(source.obj, source.label)
    if source.format not in ASSEMBLED and not _is_deepspeed(src) and not changed:
        raise CheckpointError(
            f"{source.label} is a torch.save file already; convert writes it as a DCP folder "
            f"(DST {dst.name} ends in {dst.suffix}: one torch.save file)",
            hint=f"give DST a folder name without {', '.join(FILE_SUFFIXES)}, e.g. "
            f"{display(dst)[:-len(dst.suffix)]}")
    notes: list[str] = []
    save_checkpoint(obj, dst, force=force, notes=notes)
    written = open_source(dst, mmap=True)  # an uploaded object is read back from storage
    n, dropped = verify_copy(obj, written.obj)
    warnings, facts = _said(source)
    return ConvertResult(src, source.format, dst, "zip", n, written.bytes,
                         warnings + changed + notes + _dropped_note(dropped), facts,
                         _words(source))


def _dcp_to_file(src: Path, dst: Path, force: bool) -> ConvertResult:
    notes: list[str] = []
    obj = dcp_to_file(src, dst, force=force, notes=notes)
    written = open_source(dst, mmap=True)  # an uploaded object is read back from storage
    n, dropped = verify_copy(obj, written.obj)
    return ConvertResult(src, "dcp", dst, "zip", n, written.bytes,
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
    _refuse_unstorable_keys(source.obj, source.label)
    obj, changed = writable(source.obj, source.label)
    notes: list[str] = []
    with staged(dst, force=force, folder=True, kind="dcp", notes=notes,
                needed=lambda: AtLeast(tensor_bytes(obj))) as tmp:
        dcp_save(obj, tmp.path)
        pause_at("verify")
        written = open_source(tmp.path)
        n, dropped = verify_copy(obj, written.obj)
        size = sum(f.stat().st_size for f in tmp.path.iterdir() if f.is_file())
    warnings, facts = _said(source)
    return ConvertResult(src, source.format, dst, "dcp", n, size,
                         warnings + changed + notes + _dropped_note(dropped), facts,
                         _words(source))


def _refuse_unstorable_keys(obj: Any, label: str) -> None:
    """DCP flattening keeps every dict key as a string (``planner_data`` holds
    ``('state', '0', '0', ...)``): only an optimizer's positional ``state`` keys are given
    back as ints (``io.dcp``). Any other non-string key (heavyball's per-view ``{0: ...}``,
    a Lookahead's ``(group, index)`` tuples) would read back as another key: refused, with
    the first such key, before anything is written."""
    from collections import deque

    from optstate.base.paths import join
    from optstate.state.locate import is_optimizer_state

    stack: deque[tuple[Any, str, bool]] = deque([(obj, "", False)])
    seen = 0
    while stack and seen < 1_000_000:
        x, path, positional = stack.popleft()
        seen += 1
        if isinstance(x, dict):
            opt = is_optimizer_state(x)
            for k, v in x.items():
                if not isinstance(k, str) and not (positional and is_index(k)):
                    where = path or "the top level"
                    raise CheckpointError(
                        f"{label}: a DCP checkpoint cannot store the key {k!r} "
                        f"({type(k).__name__}) at {where}: torch.distributed.checkpoint keeps "
                        f"every key as a string, so it would read back as {str(k)!r}; nothing "
                        "was written",
                        hint="keep this checkpoint as a torch.save file")
                stack.append((v, join(path, k), opt and k == "state"))
        elif type(x) in (list, tuple):
            stack.extend((v, join(path, i), False) for i, v in enumerate(x))


def writable(obj: Any, label: str) -> tuple[Any, list[str]]:
    """``obj`` as it can be written (module docstring): torchao's low-bit entries
    dequantized to float32 tensors; and a warning per change (none: ``obj`` itself). One
    FSDP2 rank's DTensors are refused (a shard is not the param)."""
    from optstate.base.paths import join
    from optstate.io.lazy import materialize
    from optstate.state.lowbit import torchao

    classes: dict[str, int] = {}

    def go(x: Any, path: str) -> Any:
        if is_dtensor(x):
            raise CheckpointError(
                f"{label} holds DTensors (at {path or 'the top level'}): it is one rank's "
                "file of an FSDP2 run, each entry that rank's shard, not the param",
                hint="give the folder of all rank files: it is converted as the whole state")
        if isinstance(x, dict):
            stored: dict[str, dict[str, Any]] = {}
            out = torchao(x, stored)
            for key, desc in stored.items():
                if "error" in desc:
                    raise CheckpointError(
                        f"{label}: {join(path, key)} ({desc['class']}) could not be "
                        f"dequantized: {desc['error'].removeprefix('not dequantized: ')}",
                        hint="convert it with torchao installed: "
                        "torch.save(optimizer.state_dict()) after dequantizing")
                name = desc["class"].rsplit(".", 1)[-1]
                classes[name] = classes.get(name, 0) + 1
            return {k: materialize(v) if str(k) in stored else go(v, join(path, k))
                    for k, v in out.items()}
        if type(x) in (list, tuple):
            items = [go(v, join(path, i)) for i, v in enumerate(x)]
            return items if isinstance(x, list) else tuple(items)
        return x

    out = go(obj, "")
    if not classes:
        return obj, []
    n = sum(classes.values())
    kinds = ", ".join(f"{c} {k}" for k, c in classes.items())
    return out, [f"{n} torchao low-bit entr{'ies' if n != 1 else 'y'} ({kinds}) written "
                 "dequantized as float32: the copy is a plain torch.optim state (torch.optim.Adam "
                 "/ AdamW load it); torchao's low-bit optimizer will not load it as low-bit"]


def _said(source: Any) -> tuple[list[str], list[str]]:
    """What reading the source said, as (warnings, facts): a DeepSpeed rank file stands for
    its whole tag folder, its frozen params have no state (the copy holds the same, so the
    user hears it too); FSDP2's shards were joined (a fact of reading, ``FACTS``)."""
    warnings = [n["message"] for n in source.notes if n.get("code") not in FACTS]
    facts = [n["message"] for n in source.notes if n.get("code") in FACTS]
    return warnings, facts


def _words(source: Any) -> str | None:
    ranks = source.details.get("ranks") if source.format == "fsdp2-ranks" else None
    return f"FSDP2 rank files ({len(ranks)})" if isinstance(ranks, list) else None


def _dropped_note(dropped: list[str]) -> list[str]:
    if not dropped:
        return []
    names = ", ".join(dropped[:5]) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
    return [f"DCP does not store empty containers; dropped {names}"]
