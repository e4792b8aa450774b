"""Checkpoint sources: what a path on the command line points at, and the one way to read it.

A source is a torch.save file, a checkpoint folder (a Hugging Face Trainer / accelerate
folder with ``optimizer.pt`` or ``optimizer.bin``), a torch.distributed.checkpoint
(DCP) folder, a DeepSpeed ZeRO checkpoint (its run folder, tag folder or a rank file:
``deepspeed.py``) or a folder of one FSDP2 run's ``rank<N>.pt`` files (``dtensor.py``).
``open_source`` is the one entry for all of them, and each goes through the same safety
check: the loaded object tree is ``walk``ed (cycles, depth, size as a tree,
sparse invariants; ``walk.py``), and the ``WalkReport`` is kept on the ``Source``.
Tensors come lazily: a zip-format file's tensors are memory-mapped (opening reads only
the pickled structure; data is paged in when a statistic or comparison touches it), a
DCP folder's are ``LazyTensor``s read one at a time (``dcp.py``).

A URL (``s3://...``, any fsspec URL; ``remote.py``) opens the same way for a torch.save
file (``remote_torch.py``), a DCP folder and a Trainer / accelerate folder, every byte read
by range requests and counted in ``Source.read``; other formats are refused remotely, with a
hint to copy them locally. A ``file://`` URL is a local path.

``reader="auto"`` (inspect, diff, timeline) reads torch.save zip files and DCP folders
without torch where the native reader knows them (``native_pickle``, ``native_dcp``);
``Source.reader`` / ``reader_note`` say which reader read it and why torch did.

About 460 lines on purpose: every kind of source is opened here, side by side, so that
each goes through the same checks and the same choice of reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError, NoOptimizerStateError
from optstate.io.deepspeed import (
    LATEST,
    MODEL_FILE,
    OPTIM_FILE,
    is_deepspeed_file,
    is_deepspeed_folder,
    latest_hint,
)
from optstate.io.remote import ReadStats, RemotePath, display, is_url, local_path
from optstate.io.torch_file import choose_reader, load_torch_file
from optstate.io.walk import WalkReport, check_copyable, walk

# Hugging Face Trainer writes optimizer.pt / scheduler.pt; accelerate writes .bin.
HFOPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin", "optimizer_0.bin", "optimizer.pth")
HF_SCHEDULER_FILES = ("scheduler.pt", "scheduler.bin", "scheduler_0.bin", "scheduler.pth")
# accelerate numbers the second optimizer's files: optimizer_1.bin, scheduler_1.bin.
OPTIMIZER_FILE = re.compile(r"optimizer(_\d+)?\.(pt|bin|pth)")


@dataclass
class Source:
    """A loaded checkpoint: the object tree plus where it came from."""

    path: Path | RemotePath  # what the user named
    file: Path | RemotePath  # the file actually read (inside a folder, for folder checkpoints)
    format: str  # "zip" | "legacy" | ...
    bytes: int
    obj: Any
    # Objects read from files beside the main one, by role (e.g. "scheduler").
    siblings: dict[str, Any] = field(default_factory=dict)
    sibling_files: dict[str, Path] = field(default_factory=dict)
    # Sibling files that exist but could not be read (role -> one-line reason).
    sibling_errors: dict[str, str] = field(default_factory=dict)
    # What the safety check saw of ``obj`` (tensors by kind, the first sparse one, ...);
    # None for an object handed over in memory rather than read by ``open_source``
    walk: WalkReport | None = None
    # One line about a format with more to say than its name (DeepSpeed: stage, world
    # size, dtype, loss scale), and notes about how it was read ({"code", "message",
    # "where"}, as inspect's notes)
    summary: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # the same as plain data
    notes: list[dict[str, Any]] = field(default_factory=list)
    # What was read from remote storage (bytes, requests, retries; bytes_total); None for
    # local files, which are memory-mapped: what the kernel pages in is not counted
    read: ReadStats | None = None
    # A remote Trainer / accelerate folder: a local folder of the same name holding its
    # config.json (fetched) and, empty, the names of the Trainer's own files, so that params
    # are named from the model config.json describes as locally (``state.model_near``);
    # model files are not fetched. Removed with the Source.
    mirror: Path | None = None
    # "native": read without torch (``native_pickle``, ``native_dcp``); "torch": with it,
    # ``reader_note`` saying why when another reader was asked for (None: it was not);
    # "native" with a note: a sibling file (scheduler.pt) was read with torch, and why
    reader: str = "torch"
    reader_note: str | None = None

    @property
    def label(self) -> str:
        where = display(self.path)
        return where if self.file == self.path else f"{where} ({self.file.name})"


def open_source(path: str | Path | RemotePath, *, mmap: bool = True, unsafe: bool = False,
                copying: str | None = None, reader: str = "torch") -> Source:
    """Open a checkpoint file or folder. Raises CheckpointError with a one-line reason.

    ``copying``: the name of the command that will copy every tensor (``set``,
    ``convert``); a file whose views would grow past the ``expand`` limit when copied is
    then refused here, before any copy (reading it for statistics works over its storage).
    ``reader``: "torch" (the default), or "auto" / "native": torch.save zip files
    (alone or in a Trainer / accelerate folder) and DCP folders are read without torch
    when the native reader knows all of them (``torch_file.choose_reader``;
    ``OPTSTATE_READER=torch`` forces torch); everything else with torch, and
    ``Source.reader_note`` says why.
    """
    if isinstance(path, RemotePath) or isinstance(path, str) and is_url(path):
        local = local_path(path)
        if local is None:
            return _torch_because(_open_remote(path, unsafe=unsafe, copying=copying), reader,
                                  "a remote checkpoint (a URL)")
        path = local
    p = Path(path)
    if p.is_dir() and is_deepspeed_folder(p) or p.is_file() and is_deepspeed_file(p):
        return _torch_because(_open_deepspeed(p, unsafe=unsafe, copying=copying), reader,
                              "a DeepSpeed checkpoint")
    if p.is_dir():
        return _open_folder(p, mmap=mmap, unsafe=unsafe, copying=copying, reader=reader)
    if p.is_file():
        _not_a_dcp_part(p.name, str(p), str(p.parent))
    tag = latest_hint(p)
    if tag is not None:
        raise CheckpointError(f"{p} is DeepSpeed's 'latest' file (it names the tag folder "
                              f"{tag}), not a checkpoint", hint=f"give the run folder: {p.parent}")
    loaded = load_torch_file(p, mmap=mmap, unsafe=unsafe, reader=reader)  # walks it too
    if copying and loaded.walk is not None:
        check_copyable(loaded.walk, str(p), copying)
    src = Source(path=p, file=p, format=loaded.format, bytes=loaded.bytes, obj=loaded.obj,
                 walk=loaded.walk, reader=loaded.reader, reader_note=loaded.reader_note)
    if OPTIMIZER_FILE.fullmatch(p.name):  # a Trainer / accelerate file named directly
        _add_scheduler_sibling(src, p, unsafe=unsafe, reader=reader)
    return src


def _torch_because(src: Source, reader: str, why: str) -> Source:
    """A source only torch reads: say so when another reader was asked for."""
    chosen, note = choose_reader(reader)
    if chosen != "torch" or note is not None:
        src.reader_note = note or why
    return src


def _not_a_dcp_part(name: str, shown: str, folder: str) -> None:
    """A DCP folder's ``.metadata`` or ``__R_N.distcp`` named directly: give the folder."""
    if name == ".metadata":
        what = "the .metadata file"
    elif name.endswith(".distcp"):
        what = "a data file"
    else:
        return
    raise CheckpointError(f"{shown} is {what} of a DCP checkpoint folder, not a checkpoint "
                          "by itself", hint=f"give the folder: {folder}")


def _open_folder(p: Path, *, mmap: bool, unsafe: bool, copying: str | None,
                 reader: str) -> Source:
    if (p / ".metadata").is_file():
        return _open_dcp(p, reader)
    found = sorted(n.name for n in p.iterdir() if OPTIMIZER_FILE.fullmatch(n.name)
                   and n.is_file())
    if len(found) > 1:  # accelerate with several optimizers: optimizer.bin, optimizer_1.bin
        raise NoOptimizerStateError(
            f"{p} holds {len(found)} optimizer files: {', '.join(found)}",
            hint=f"give one of them, e.g. {p / found[0]}",
        )
    opt_file = next((p / n for n in HFOPTIMIZER_FILES if (p / n).is_file()),
                    p / found[0] if found else None)
    if opt_file is None:
        from optstate.io.dtensor import rank_files  # imports torch: only FSDP2 needs it

        if ranks := rank_files(p):  # FSDP2: one torch.save per rank
            return _torch_because(
                _open_ranks(p, ranks, mmap=mmap, unsafe=unsafe, copying=copying), reader,
                "a folder of FSDP2 rank files (DTensors)")
    if opt_file is None:
        raise CheckpointError(
            f"{p} is a folder with no optimizer.pt or optimizer.bin in it",
            hint="give the checkpoint file itself, or a Hugging Face Trainer / accelerate "
            "checkpoint folder",
        )
    loaded = load_torch_file(opt_file, mmap=mmap, unsafe=unsafe, reader=reader)
    if copying and loaded.walk is not None:
        check_copyable(loaded.walk, str(opt_file), copying)
    src = Source(path=p, file=opt_file, format=loaded.format, bytes=loaded.bytes, obj=loaded.obj,
                 walk=loaded.walk, reader=loaded.reader, reader_note=loaded.reader_note)
    _add_scheduler_sibling(src, opt_file, unsafe=unsafe, reader=reader)
    return src


def _open_ranks(p: Path, ranks: list[tuple[int, Path]], *, mmap: bool, unsafe: bool,
                copying: str | None) -> Source:
    """A folder of one FSDP2 run's ``rank<N>.pt`` files: one state, each DTensor joined
    from its shards (``io.dtensor``); ``file`` is the folder."""
    from optstate.io.dtensor import join_ranks

    names = [f.name for _, f in ranks]
    loaded = [load_torch_file(f, mmap=mmap, unsafe=unsafe) for _, f in ranks]
    obj, joined = join_ranks([x.obj for x in loaded], names)
    if not joined.entries:
        raise CheckpointError(
            f"{p} holds {len(ranks)} rank files ({', '.join(names)}) without DTensors: "
            "they are not the shards of one FSDP2 state", hint="give one of them")
    report = walk(obj, label=str(p))
    if copying:
        check_copyable(report, str(p), copying)
    layout = "; ".join(joined.layouts)
    message = (f"{joined.entries} DTensor entr{'ies' if joined.entries != 1 else 'y'} joined "
               f"from {len(ranks)} rank files ({', '.join(names)}; {layout}): the whole "
               "state, as DTensor.full_tensor() gives it")
    return Source(path=p, file=p, format="fsdp2-ranks", bytes=sum(x.bytes for x in loaded),
                  obj=obj, walk=report, summary=f"FSDP2, {len(ranks)} ranks, {layout}",
                  details={"ranks": names},
                  notes=[{"code": "fsdp2_joined", "message": message, "where": []}])


def _open_deepspeed(p: Path, *, unsafe: bool, copying: str | None) -> Source:
    """A DeepSpeed ZeRO run folder, tag folder or rank file: every rank's file read and put
    back together per parameter (``io.deepspeed``); ``file`` is the tag folder."""
    from optstate.io.deepspeed import has_zero_files, read_deepspeed, tag_folder

    folder, _ = tag_folder(p)
    model = p if p.is_file() else folder / "mp_rank_00_model_states.pt"
    if not has_zero_files(folder) and model.is_file():  # no ZeRO: one ordinary file
        loaded = load_torch_file(model, mmap=True, unsafe=unsafe)
        if copying and loaded.walk is not None:
            check_copyable(loaded.walk, str(model), copying)
        return Source(path=p, file=model, format=loaded.format, bytes=loaded.bytes,
                      obj=loaded.obj, walk=loaded.walk,
                      summary="DeepSpeed without ZeRO (no *_optim_states.pt): the optimizer's "
                      "own state_dict, in the model states file")
    ck = read_deepspeed(p, unsafe=unsafe)
    if copying:  # each param's pieces joined once, not at every look (io.deepspeed_zero)
        from optstate.io.lazy import materialize

        ck.obj = materialize(ck.obj)
    report = walk(ck.obj, label=str(ck.folder))
    if copying:
        check_copyable(report, str(ck.folder), copying)
    src = Source(path=p, file=ck.folder, format="deepspeed", bytes=ck.bytes, obj=ck.obj,
                 walk=report, summary=ck.summary, details=dict(ck.obj["deepspeed"]),
                 notes=ck.notes)
    # a Hugging Face Trainer run with DeepSpeed keeps scheduler.pt beside 'latest'
    _add_scheduler_sibling(src, ck.folder.parent / "optimizer.pt", unsafe=unsafe)
    return src


def _open_dcp(p: Path, reader: str = "torch") -> Source:
    """A DCP folder: the object tree holds ``LazyTensor``s; no tensor data is read. With
    the native reader (``native_dcp``) when asked for and it knows the folder."""
    chosen, note = choose_reader(reader)
    if chosen == "native":
        try:
            from optstate.io.native_dcp import read_dcp_native
        except ImportError:  # not built yet
            note = "a DCP folder (the native DCP reader is missing)"
        else:
            from optstate.io.native_tensor import NativeUnsupported

            try:
                got = read_dcp_native(p)
            except NativeUnsupported as e:
                note = str(e)
            else:
                return Source(path=p, file=p, format="dcp", bytes=got.bytes, obj=got.obj,
                              walk=got.walk, reader="native")
    src = _open_dcp_torch(p)
    src.reader_note = note
    return src


def _open_dcp_torch(p: Path) -> Source:
    # imported here: torch.distributed.checkpoint is heavy, and only DCP folders need it
    from optstate.io.dcp import DcpCheckpoint

    ckpt = DcpCheckpoint(p)
    size = ckpt.total_bytes
    obj = ckpt.rebuild()
    report = walk(obj, label=str(p))  # built from the folder's metadata: untrusted too
    return Source(path=p, file=p, format="dcp", bytes=size, obj=obj, walk=report)


def _scheduler_file(opt_file: Path) -> Path | None:
    """The scheduler file written with ``opt_file``: optimizer_1.bin pairs with
    scheduler_1.bin (accelerate); optimizer.pt with scheduler.pt (Trainer)."""
    folder = opt_file.parent
    name = _scheduler_name(opt_file.name, lambda n: (folder / n).is_file())
    return None if name is None else folder / name


def _scheduler_name(opt_name: str, is_file: Any) -> str | None:
    """The scheduler file's name beside ``opt_name``, given which names are files."""
    m = OPTIMIZER_FILE.fullmatch(opt_name)
    if m is not None:
        twin = f"scheduler{m.group(1) or ''}.{m.group(2)}"
        if is_file(twin):
            return twin
        if m.group(1) not in (None, "_0"):
            return None
    return next((n for n in HF_SCHEDULER_FILES if is_file(n)), None)


def _add_scheduler_sibling(src: Source, opt_file: Path, *, unsafe: bool,
                           reader: str = "torch") -> None:
    """Load the scheduler file that Trainer / accelerate write beside the optimizer's
    (natively when the optimizer's file was: ``reader``)."""
    sched_file = _scheduler_file(opt_file)
    if sched_file is None:
        return
    src.sibling_files["scheduler"] = sched_file
    if src.reader != "native":
        reader = "torch"
    try:  # the optimizer state is still worth showing when its scheduler file is broken
        loaded = load_torch_file(sched_file, unsafe=unsafe, reader=reader)
    except CheckpointError as e:
        src.sibling_errors["scheduler"] = str(e)
        return
    src.siblings["scheduler"] = loaded.obj
    if reader != "torch" and loaded.reader != "native":  # torch was imported for it: say so
        src.reader_note = f"{sched_file.name}: read with torch ({loaded.reader_note})"


# --------------------------------------------------------------------------- remote


def _open_remote(path: str | RemotePath, *, unsafe: bool, copying: str | None) -> Source:
    """A URL: a torch.save file, a DCP folder or a Trainer / accelerate folder, read by
    range requests (every byte counted in ``Source.read``)."""
    from optstate.io.remote import missing_error
    from optstate.io.remote_torch import not_remote_yet

    rp = path if isinstance(path, RemotePath) else RemotePath(path)
    stats = ReadStats()
    if rp.is_file():
        _not_a_dcp_part(rp.name, display(rp.url), display(rp.parent.url))
        if rp.name == LATEST or OPTIM_FILE.fullmatch(rp.name) or MODEL_FILE.fullmatch(rp.name):
            raise not_remote_yet(rp.url, "a DeepSpeed checkpoint file")
        return _remote_file(rp, rp, stats, unsafe=unsafe, copying=copying)
    if not rp.is_dir():
        raise missing_error(path if isinstance(path, str) else rp.url, rp.fs)  # as typed
    names = {child.name: child for child in rp.iterdir()}
    if ".metadata" in names:
        from optstate.io.dcp import DcpCheckpoint

        ckpt = DcpCheckpoint(rp, read=stats)
        size = ckpt.total_bytes
        stats.bytes_total = stats.bytes_total or size
        obj = ckpt.rebuild()
        report = walk(obj, label=display(rp.url))
        return Source(path=rp, file=rp, format="dcp", bytes=size, obj=obj, walk=report,
                      read=stats)
    found = sorted(n for n in names if OPTIMIZER_FILE.fullmatch(n))
    if len(found) > 1:
        raise NoOptimizerStateError(
            f"{display(rp.url)} holds {len(found)} optimizer files: {', '.join(found)}",
            hint=f"give one of them, e.g. {display((rp / found[0]).url)}")
    opt = next((n for n in HFOPTIMIZER_FILES if n in names), found[0] if found else None)
    if opt is not None:
        return _remote_file(rp, names[opt], stats, unsafe=unsafe, copying=copying,
                            siblings=set(names))
    if LATEST in names or any(OPTIM_FILE.fullmatch(n) or MODEL_FILE.fullmatch(n)
                              for n in names):
        raise not_remote_yet(rp.url, "a DeepSpeed checkpoint folder")
    from optstate.io.dtensor import RANK_FILE

    if any(RANK_FILE.fullmatch(n) for n in names):
        raise not_remote_yet(rp.url, "a folder of FSDP2 rank files")
    raise CheckpointError(
        f"{display(rp.url)} is a folder with no optimizer.pt or optimizer.bin in it",
        hint="give the checkpoint file itself, or a Hugging Face Trainer / accelerate "
        "checkpoint folder")


def _remote_file(named: RemotePath, rp: RemotePath, stats: ReadStats, *, unsafe: bool,
                 copying: str | None, siblings: set[str] | None = None) -> Source:
    """A remote torch.save file (``remote_torch``), with its scheduler file when it is a
    Trainer / accelerate optimizer file."""
    from optstate.io.remote_torch import load_remote_torch

    loaded = load_remote_torch(rp, stats, unsafe=unsafe)
    stats.bytes_total = loaded.bytes
    if copying and loaded.walk is not None:
        check_copyable(loaded.walk, display(rp.url), copying)
    src = Source(path=named, file=rp, format=loaded.format, bytes=loaded.bytes,
                 obj=loaded.obj, walk=loaded.walk, read=stats)
    if not OPTIMIZER_FILE.fullmatch(rp.name):
        return src
    folder = rp.parent
    if siblings is None:
        siblings = {child.name for child in folder.iterdir()}
    _mirror(src, folder, siblings, stats)
    name = _scheduler_name(rp.name, siblings.__contains__)
    if name is None:
        return src
    sched = folder / name
    src.sibling_files["scheduler"] = sched
    part = ReadStats()
    try:  # the optimizer state is still worth showing when its scheduler file is broken
        src.siblings["scheduler"] = load_remote_torch(sched, part, unsafe=unsafe).obj
    except CheckpointError as e:
        src.sibling_errors["scheduler"] = str(e)
    stats.bytes_total += sched.size()
    stats.add(part.bytes_read, part.requests)
    for _ in range(part.retries):
        stats.retried()
    return src


# config.json above this size is not fetched (real ones are a few kB)
CONFIG_BYTES = 1 << 20
TRAINER_FILES = ("trainer_state.json", "training_args.bin")
SAFETENSORS = "model.safetensors"


def _safetensors_header(folder: RemotePath, names: set[str], stats: ReadStats
                        ) -> tuple[bytes, int] | None:
    """(the first 8 + N bytes, the file's size) of the folder's model.safetensors, or None
    (none there, or not a safetensors header: the local checks then say nothing about it)."""
    from optstate.io.model_tensors import MAX_HEADER

    if SAFETENSORS not in names:
        return None
    rp = folder / SAFETENSORS
    size = rp.size()
    if size < 10:
        return None
    head = rp.read_range(0, 8, stats)
    n = int.from_bytes(head, "little")
    if not 0 < n <= min(MAX_HEADER, size - 8):
        return None
    return head + rp.read_range(8, 8 + n, stats), size


def _mirror(src: Source, folder: RemotePath, names: set[str], stats: ReadStats) -> None:
    """``src.mirror``: config.json fetched into a local folder named as ``folder``, beside
    empty stand-ins of the Trainer's files that are there (only their presence is looked at)
    and model.safetensors as a sparse file holding only its header (by two range reads: the
    8-byte length, then the JSON), which is all that names the params. Their bytes count in
    ``stats.bytes_read`` (they went over the wire) but not in ``bytes_total`` (the
    checkpoint's own files, as for a local folder), so a small folder can show over 100%."""
    import shutil
    import tempfile
    import weakref

    config = folder / "config.json"
    data = None
    if "config.json" in names and config.size() <= CONFIG_BYTES:
        data = config.read_bytes(stats)
    header = _safetensors_header(folder, names, stats)
    if data is None and header is None:
        return
    root = Path(tempfile.mkdtemp(prefix="optstate-remote-"))
    weakref.finalize(src, shutil.rmtree, root, True)
    mirror = root / (folder.name or "folder")
    mirror.mkdir()
    if data is not None:
        (mirror / "config.json").write_bytes(data)
    if header is not None:
        with open(mirror / SAFETENSORS, "wb") as f:
            f.write(header[0])
            f.truncate(header[1])  # sparse: the tensor data is never fetched
    for name in TRAINER_FILES:
        if name in names:
            (mirror / name).touch()
    src.mirror = mirror
