"""The checkpoints of one training run: what ``timeline`` reads, found without reading them.

``find_checkpoints(paths)`` takes the paths a user named. A file is taken as given. A
folder that is itself one checkpoint (a Hugging Face Trainer / accelerate folder with
``optimizer.pt``/``.bin``, a DCP folder with ``.metadata``, a DeepSpeed tag folder, an
FSDP2 folder of ``rank<N>.pt`` files) is one candidate; a DeepSpeed run folder (``latest``
beside its tag folders) gives each tag folder; any other folder gives its direct children
that are checkpoints (one level): torch.save files by extension, and folders of the kinds
above. How a folder is recognised is ``io.source``'s own knowledge (the names it opens),
not a second copy of it. Files that hold a model's weights or a run's bookkeeping but no
optimizer state by the names frameworks give them (``model.safetensors``,
``pytorch_model.bin``, ``scheduler.pt``, ``rng_state.pth``, ``training_args.bin``, ...) are
not candidates; they are listed in ``skipped`` with the reason.

The number in a name (``Candidate.name_step``) is only the fallback order, when the
checkpoints record no step. The rules, first match wins, on the last path component:
``step`` followed by an optional ``=``, ``_`` or ``-`` and digits (``step_1000.pt``,
``step-5``, ``global_step2000``, ``epoch=3-step=900.ckpt`` -> 900: the step, not the
epoch); ``checkpoint-N``; ``iter_N`` / ``iterN`` / ``iteration_N``; else the last number
in the name (``model_00040.pt`` -> 40), not counting Lightning's version suffix
(``last-v1.ckpt``: no number).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError
from optstate.io.deepspeed import LATEST, MODEL_FILE, OPTIM_FILE, is_deepspeed_folder
from optstate.io.dtensor import rank_files
from optstate.io.source import OPTIMIZER_FILE

# torch.save files by extension (Lightning's .ckpt, a tarball-era .tar, pickles .pkl)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pkl", ".bin", ".ckpt", ".tar")

# Files frameworks write beside a checkpoint that hold no optimizer state: name -> what
# they are (Trainer, accelerate, Lightning, DeepSpeed)
NOT_OPTIMIZER = {
    "model.safetensors": "a model's weights",
    "pytorch_model.bin": "a model's weights",
    "model.bin": "a model's weights",
    "scheduler.pt": "an LR scheduler's state (read beside optimizer.pt)",
    "scheduler.bin": "an LR scheduler's state (read beside optimizer.bin)",
    "scaler.pt": "a gradient scaler's state",
    "training_args.bin": "the Trainer's arguments",
    "rng_state.pth": "random number generator states",
}
_NOT_OPTIMIZER_PATTERNS = (
    (re.compile(r"rng_state_\d+\.pth"), "random number generator states"),
    (re.compile(r"random_states_\d+\.pkl"), "random number generator states"),
    (re.compile(r"scheduler_\d+\.(bin|pt)"), "an LR scheduler's state"),
    (re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin"), "a model's weights"),
    (re.compile(r"model(_\d+)?\.safetensors"), "a model's weights"),
)

# The number in a name, first match wins (module docstring)
_NAME_STEP = (
    re.compile(r"step[=_-]?(\d+)", re.IGNORECASE),
    re.compile(r"checkpoint-(\d+)", re.IGNORECASE),
    re.compile(r"iter(?:ation)?[=_-]?(\d+)", re.IGNORECASE),
)
# A Hugging Face Trainer's checkpoint folder
_HF_FOLDER = re.compile(r"checkpoint-\d+")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
# Lightning's version suffix when a name is taken (last-v1.ckpt): not a step
_VERSION_SUFFIX = re.compile(r"-v\d+(?=\.[^.]*$|$)")

# Bounds on the stat()s that make a folder's identity (a DCP or DeepSpeed folder holds
# a few files per rank; a runaway folder is cut short rather than walked for minutes)
_IDENTITY_DEPTH = 3
_IDENTITY_FILES = 20_000

_LOOKED_FOR = ("torch.save files (" + ", ".join(CHECKPOINT_SUFFIXES) + "), Hugging Face / "
               "accelerate folders (optimizer.pt or .bin), DCP folders (.metadata), DeepSpeed "
               "folders (global_stepN/, latest), FSDP2 folders (rank<N>.pt)")


@dataclass
class Candidate:
    """One checkpoint of the run, not yet read."""

    path: Path  # the file or the checkpoint folder, as given or as found
    label: str  # the path relative to the run folder: step_10.pt, checkpoint-500
    name_step: int | None  # the number in the name (module docstring)
    identity: dict[str, int]  # {"bytes", "mtime_ns", "ctime_ns", "ino", "files"}: the cache's key
    mtime_ns: int


@dataclass
class Discovery:
    """What ``find_checkpoints`` found: candidates in name order, what it passed over
    ({"path", "reason"}), notes ({"code", "message"}) and the run folder (labels are
    relative to it; the cache goes beside it; None: the checkpoints named are in several
    folders, their labels are the paths as given)."""

    items: list[Candidate]
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)
    root: Path | None = None


def name_step(name: str) -> int | None:
    """The number in a checkpoint's name (module docstring), or None."""
    for rx in _NAME_STEP:
        found = rx.findall(name)
        if found:
            return int(found[-1])
    m = _LAST_NUMBER.search(_VERSION_SUFFIX.sub("", name))
    return int(m.group(1)) if m else None


def not_optimizer(name: str) -> str | None:
    """What a file named ``name`` holds when frameworks name it so and it is not an
    optimizer state, else None."""
    if name in NOT_OPTIMIZER:
        return NOT_OPTIMIZER[name]
    return next((why for rx, why in _NOT_OPTIMIZER_PATTERNS if rx.fullmatch(name)), None)


def single_checkpoint_folder(p: Path) -> bool:
    """Whether the folder ``p`` is one checkpoint as ``io.source.open_source`` reads it."""
    try:
        if (p / ".metadata").is_file():
            return True
        names = [n.name for n in p.iterdir()]
        if any(OPTIMIZER_FILE.fullmatch(n) and (p / n).is_file() for n in names):
            return True
        # a DeepSpeed tag folder (rank files), or a run folder whose 'latest' names one
        # (not any file called 'latest': a link to the newest checkpoint is common)
        if any(OPTIM_FILE.fullmatch(n) or MODEL_FILE.fullmatch(n) for n in names):
            return True
        if _deepspeed_tags(p):
            return True
        return bool(rank_files(p))
    except (OSError, CheckpointError):
        return False


def _deepspeed_tags(p: Path) -> list[Path]:
    """The tag folders of a DeepSpeed run folder (``latest`` beside them, no rank files of
    its own); empty for any other folder (a ``latest`` symlink to a file is not one)."""
    if not (p / LATEST).is_file() or any(OPTIM_FILE.fullmatch(n.name) or
                                         MODEL_FILE.fullmatch(n.name) for n in p.iterdir()):
        return []
    return sorted(d for d in p.iterdir() if d.is_dir() and is_deepspeed_folder(d))


def identity(p: Path) -> dict[str, int]:
    """Total bytes, newest mtime and ctime (ns), inode and number of files of ``p`` (a
    file, or a folder's files, a few levels down, and the folder's inode); for an
    ``optimizer.pt`` named directly, its folder's (its scheduler and trainer_state.json are
    read with it). The ctime (the last change of a file or its metadata) cannot be set back
    by a user as the mtime can (``cp -p``, ``tar x``, ``touch -d``): a file rewritten with
    its size and mtime kept is still seen as changed."""
    if p.is_file() and OPTIMIZER_FILE.fullmatch(p.name):
        p = p.parent
    if p.is_file():
        st = p.stat()
        return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                "ino": st.st_ino, "files": 1}
    total = newest = newest_c = files = 0
    stack = [(p, 0)]
    while stack and files < _IDENTITY_FILES:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if depth < _IDENTITY_DEPTH and e.name != ".optstate":
                        stack.append((Path(e.path), depth + 1))
                    continue
                st = e.stat()
            except OSError:
                continue
            total += st.st_size
            newest = max(newest, st.st_mtime_ns)
            newest_c = max(newest_c, st.st_ctime_ns)
            files += 1
    try:
        ino = p.stat().st_ino
    except OSError:
        ino = 0
    return {"bytes": total, "mtime_ns": newest, "ctime_ns": newest_c, "ino": ino,
            "files": files}


def find_checkpoints(paths: list[Path] | list[str]) -> Discovery:
    """The checkpoints that ``paths`` (folders or files) name, in name order (module
    docstring). Raises CheckpointError for a path that does not exist or a folder with
    no checkpoint in it.

    The run folder (``Discovery.root``: labels are relative to it, the cache goes beside
    it) is the folder named, or the one folder that the checkpoints named directly are in;
    None when they are in several. Never where a symlink leads: a link in the run keeps its
    own name."""
    if not paths:
        raise CheckpointError("no checkpoint given: give a run folder or checkpoint files")
    found: list[Path] = []
    skipped: list[dict[str, str]] = []
    notes: list[dict[str, str]] = []
    homes: list[str] = []  # the folder each path named belongs to (absolute, not resolved)
    for raw in paths:
        if str(raw) == "":
            raise CheckpointError("an empty path was given: name a run folder or checkpoint "
                                  "files ('.' for the current folder)")
        p = Path(raw)
        why = _broken_link(p)
        if why is not None:
            raise CheckpointError(f"{p} is {why}")
        if not p.exists():
            raise CheckpointError(f"{p} does not exist")
        if p.is_file():
            found.append(p)
            homes.append(os.path.dirname(os.path.abspath(p)))
        elif p.is_dir() and (tags := _deepspeed_tags(p)):
            found += tags
            homes.append(os.path.abspath(p))
        elif p.is_dir() and single_checkpoint_folder(p):
            found.append(p)
            homes.append(os.path.dirname(os.path.abspath(p)))
        elif p.is_dir():
            children = _children(p, skipped)
            if not children:
                model_only = sorted((s["path"] for s in skipped if s.get("model_only")),
                                    key=lambda m: name_step(Path(m).name) or 0)
                if model_only:
                    names = ", ".join(Path(m).name for m in model_only[:2])
                    raise CheckpointError(
                        f"{p}: {len(model_only)} checkpoint folder"
                        f"{'s' * (len(model_only) != 1)} ({names}"
                        f"{', ...' if len(model_only) > 2 else ''}) hold"
                        f"{'s' * (len(model_only) == 1)} no optimizer state (model weights "
                        "only: the Trainer's save_only_model?)")
                raise CheckpointError(f"{p} holds no checkpoint: looked for {_LOOKED_FOR}, "
                                      "in it and one level down")
            found += children
            homes.append(os.path.abspath(p))
        else:
            raise CheckpointError(f"{p} is neither a file nor a folder")
    for s in skipped:
        s.pop("model_only", None)
    unique: dict[Path, Path] = {}
    for p in found:  # a symlink (latest.pt -> step_50.pt) gives way to the file it names
        if p.resolve() not in unique or unique[p.resolve()].is_symlink():
            unique[p.resolve()] = p
    if len(unique) < len(found):
        notes.append({"code": "same_path", "message": f"{len(found) - len(unique)} path"
                      f"{'s' * (len(found) - len(unique) != 1)} named twice, read once"})
    home = homes[0] if len(set(homes)) == 1 else None
    root = Path(home).resolve() if home is not None else None
    items = []
    for p in unique.values():
        ident = identity(p)
        label = os.path.relpath(os.path.abspath(p), home) if home is not None else str(p)
        items.append(Candidate(path=p, label=label, name_step=name_step(Path(label).name),
                               identity=ident, mtime_ns=ident["mtime_ns"]))
    items.sort(key=lambda c: (c.name_step is None, c.name_step or 0, c.label))
    return Discovery(items=items, skipped=skipped, notes=notes, root=root)


def _broken_link(p: Path) -> str | None:
    """What is wrong with ``p`` when it is a symlink that leads nowhere, else None."""
    if not p.is_symlink():
        return None
    try:
        p.resolve(strict=True)
    except FileNotFoundError:
        return f"a symbolic link to {os.readlink(p)}, which does not exist"
    except (OSError, RuntimeError):  # ELOOP; Python < 3.13 raises RuntimeError
        return "a symbolic link that leads back to itself (a loop)"
    return None


def _children(folder: Path, skipped: list[dict[str, Any]]) -> list[Path]:
    """The checkpoints directly in ``folder``; what looks like one but is not, skipped."""
    out = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):  # the cache, temp files of a write in progress
            continue
        broken = _broken_link(child)
        if broken is not None:
            if child.suffix.lower() in CHECKPOINT_SUFFIXES or _HF_FOLDER.fullmatch(child.name):
                skipped.append({"path": str(child), "reason": broken})
            continue
        if child.is_file() and child.suffix.lower() not in CHECKPOINT_SUFFIXES:
            continue
        if child.is_dir() and child.name.startswith("tmp-checkpoint-"):
            skipped.append({"path": str(child), "reason": "the Trainer's folder for a "
                            "checkpoint being written (renamed to checkpoint-N when complete)"})
            continue
        if child.is_symlink() and child.resolve().parent == folder.resolve():
            skipped.append({"path": str(child), "reason": f"a link to {child.resolve().name}, "
                            "read under that name"})
            continue
        if child.is_file():
            why = not_optimizer(child.name)
            if why is not None:
                skipped.append({"path": str(child), "reason": f"{why}, no optimizer state"})
                continue
            out.append(child)
        elif child.is_dir():
            if single_checkpoint_folder(child):
                out.append(child)
            elif _HF_FOLDER.fullmatch(child.name) and _model_only(child):
                skipped.append({"path": str(child), "reason": "model weights only, no "
                                "optimizer state (the Trainer's save_only_model?)",
                                "model_only": True})
            elif any(n.suffix.lower() in CHECKPOINT_SUFFIXES for n in _files(child)):
                skipped.append({"path": str(child), "reason": "a folder with no optimizer.pt, "
                                ".metadata, DeepSpeed or FSDP2 rank files (only one level "
                                "down is searched)"})
    return out


def _model_only(folder: Path) -> bool:
    """Whether a Trainer checkpoint folder holds a model's weights (and no optimizer)."""
    return any(not_optimizer(n.name) == "a model's weights" for n in _files(folder))


def _files(folder: Path) -> list[Path]:
    try:
        return [n for n in folder.iterdir() if n.is_file()]
    except OSError:
        return []


def describe(c: Candidate) -> dict[str, Any]:
    """A candidate as plain data."""
    return {"path": str(c.path), "label": c.label, "name_step": c.name_step,
            "identity": dict(c.identity)}
