"""DeepSpeed ZeRO checkpoints (stages 1, 2, 3): the rank files put back together per parameter.

``engine.save_checkpoint(folder, tag)`` writes ``folder/latest`` (the tag's name) and
``folder/<tag>/``: the model states (``mp_rank_00_model_states.pt``; with ZeRO 3 one
``zero_pp_rank_<r>_mp_rank_00_model_states.pt`` per rank) and one optimizer file per
data-parallel rank (``[bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt``). Each rank's
file holds its slice of one flat fp32 vector per param group (master weights, and the
base optimizer's state over the same slice); the model states' ``param_shapes`` name
what lies in those vectors, in order. ``read_deepspeed`` reads every file (safely:
``load_torch_file``; DeepSpeed's ``LossScaler``, ``ZeroStageEnum`` and
``fragment_address`` arrive as ``io.inert`` stand-ins) and returns a plain tree::

    {"optimizer": a torch.optim state_dict (state by param index, param_groups with the
                  base optimizer's hyperparameters, params and param_names),
     "fp32_master_weights": {name: float32 tensor},
     "deepspeed": plain facts (stage, world size, tag, dtype of the run, loss scale, ...)}

The layout is DeepSpeed's own (``deepspeed/utils/zero_to_fp32.py``, ``runtime/zero/
stage_1_and_2.py`` ``state_dict``, ``stage3.py`` ``_rigid_state_dict``):

- ZeRO 1/2: per group, the ranks' lean partitions concatenated (``single_partition_of_
  fp32_groups``: DeepSpeed already cut the trailing ``group_paddings``; the optimizer state
  is saved with them, so they are cut here) are the group's params one after the other,
  each followed by its ``param_alignment_paddings`` entry.
- ZeRO 3: per sub-group (``fp32_flat_groups``), each rank holds ``ceil(numel / world)``
  elements of every param in turn; a param is the ranks' pieces concatenated and cut to
  its size.

Every count is checked against the files (elements consumed = elements stored, one file
per rank); what does not add up is refused, never guessed. Not read: tensor / pipeline
parallel checkpoints (``mp_rank_01``, ``layer_*``), MoE expert files, elastic ZeRO 1/2
checkpoints (their param groups are not saved). Two byte-identical rank files are one
rank's file twice and are refused; ZeRO 1/2 rank files are checked to hold their own
partition (``deepspeed_zero._check_slices``).

About 450 lines on purpose: finding the files, checking them against each other and
saying what they hold is one read sequence, kept in one place.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError
from optstate.io.inert import Inert
from optstate.io.torch_file import load_torch_file

LATEST = "latest"
OPTIM_FILE = re.compile(r"(?:(bf16|fp16)_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt")
MODEL_FILE = re.compile(r"(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt")
_TAG = re.compile(r"[\w.+-]+")  # what ``latest`` may name: one folder beside it


@dataclass
class DeepSpeedCheckpoint:
    """What ``read_deepspeed`` read: the tag folder, the tree, and what to tell the user."""

    folder: Path  # the tag folder (global_stepN/)
    obj: dict[str, Any]
    bytes: int  # of every file read
    summary: str  # one line: stage, world size, dtype, loss scale
    notes: list[dict[str, Any]] = field(default_factory=list)  # {"code", "message", "where"}


def is_deepspeed_file(p: Path) -> bool:
    """A rank's optimizer file or a model states file, by DeepSpeed's names."""
    return bool(OPTIM_FILE.fullmatch(p.name) or MODEL_FILE.fullmatch(p.name))


def is_deepspeed_folder(p: Path) -> bool:
    """A run folder (``latest`` beside its tag folders) or a tag folder (rank files)."""
    if (p / ".metadata").is_file():  # a DCP folder
        return False
    if (p / LATEST).is_file():
        return True
    try:
        return any(OPTIM_FILE.fullmatch(n.name) or MODEL_FILE.fullmatch(n.name)
                   for n in p.iterdir())
    except OSError:  # unreadable: the folder reader words it
        return False


def tag_folder(p: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The tag folder that ``p`` (run folder, tag folder or one rank file) names, and a note
    when it is not what ``p`` literally is."""
    if p.is_file():
        folder = p.parent
        return folder, [_note("deepspeed_whole_tag", f"{p.name} is one file of a DeepSpeed "
                              f"checkpoint; the whole tag folder {folder} was read (one rank's "
                              "file is not the whole state)", [str(folder)])]
    latest = p / LATEST
    if latest.is_file() and not any(OPTIM_FILE.fullmatch(n.name) or MODEL_FILE.fullmatch(n.name)
                                    for n in p.iterdir()):
        with latest.open("rb") as f:  # a tag name: never read a big file whole
            raw = f.read(4097)
        tag = raw.decode("utf-8", "replace").strip()
        if len(raw) > 4096 or not _TAG.fullmatch(tag) or tag in (".", ".."):
            raise CheckpointError(f"{latest} does not hold a tag folder's name "
                                  f"(it holds {raw[:60]!r})")
        folder = p / tag
        if not folder.is_dir():
            raise CheckpointError(f"{latest} names the tag {tag!r}, but {folder} does not exist",
                                  hint="give the tag folder itself, e.g. "
                                  f"{_some_tag(p) or p / 'global_stepN'}")
        return folder, []
    return p, []


def has_zero_files(folder: Path) -> bool:
    """Whether the tag folder holds ZeRO's per-rank optimizer files. Without ZeRO (stage 0)
    DeepSpeed writes none: ``mp_rank_00_model_states.pt`` holds the client optimizer's own
    state_dict (under ``optimizer``), an ordinary checkpoint to read as one."""
    try:
        return any(OPTIM_FILE.fullmatch(n.name) for n in folder.iterdir())
    except OSError:
        return False


def _some_tag(p: Path) -> Path | None:
    return next((d for d in sorted(p.iterdir()) if d.is_dir()
                 and any(OPTIM_FILE.fullmatch(n.name) for n in d.iterdir())), None)


def _note(code: str, message: str, where: list[str]) -> dict[str, Any]:
    return {"code": code, "message": message, "where": where}


def read_deepspeed(path: str | Path, *, unsafe: bool = False) -> DeepSpeedCheckpoint:
    """Read the DeepSpeed checkpoint ``path`` names (see the module docstring)."""
    folder, notes = tag_folder(Path(path))
    ranks, model_files = _rank_files(folder)
    size = 0

    def load(f: Path) -> Any:
        nonlocal size
        loaded = load_torch_file(f, mmap=True, unsafe=unsafe)
        size += loaded.bytes
        return loaded.obj

    first = load(ranks[min(ranks)])
    osd = _get(first, "optimizer_state_dict", ranks[min(ranks)])
    stage = _stage(osd, ranks[min(ranks)])
    counts = osd.get("partition_count")
    # ZeRO 1/2: one per group (MoE groups may differ: the largest is the world size)
    ints = counts if isinstance(counts, list) else [counts]
    if not ints or not all(type(c) is int and c >= 1 for c in ints):
        raise CheckpointError(f"{ranks[min(ranks)]} has no valid partition_count "
                              f"({str(counts)[:60]})")
    world = max(ints)
    _check_ranks(folder, ranks, world, ranks[min(ranks)].name)
    optims = [first if r == min(ranks) else load(ranks[r]) for r in range(world)]
    _check_distinct([ranks[r] for r in range(world)])
    model_name = ("zero_pp_rank_0_mp_rank_00_model_states.pt" if stage == 3
                  else "mp_rank_00_model_states.pt")
    model_file = folder / model_name
    if not model_file.is_file():
        raise CheckpointError(f"{folder} has no {model_name}: the parameter names and shapes "
                              "of a DeepSpeed checkpoint are in it",
                              hint=f"files there: {_listing(folder)}")
    model = load(model_file)
    if not isinstance(model, dict) or not isinstance(model.get("param_shapes"), list):
        raise CheckpointError(f"{model_file} has no param_shapes list")
    states = [_get(o, "optimizer_state_dict", ranks[r]) for r, o in enumerate(optims)]
    from optstate.io.deepspeed_zero import reassemble

    params, groups = reassemble(stage, world, states, model["param_shapes"],
                                [ranks[r].name for r in range(world)])
    facts = _facts(folder, stage, world, states[0], model, ranks, model_file)
    obj = _tree(params, groups, facts)
    if isinstance(model.get("lr_scheduler"), dict):  # DeepSpeed's own scheduler's state
        obj["lr_scheduler"] = model["lr_scheduler"]
    if facts["client_state_keys"]:
        keys = facts["client_state_keys"]
        notes.append(_note("deepspeed_client_state", f"{model_file.name} also holds the run's "
                           f"client_state (save_checkpoint(client_state=...)): "
                           f"{', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}; not "
                           "optimizer state: listed by key only, and not copied by convert",
                           [str(model_file)]))
    frozen = facts["frozen_params"]
    if frozen:
        notes.append(_note("deepspeed_frozen", f"{len(frozen)} frozen param(s) have no "
                           f"optimizer state (DeepSpeed keeps them apart): "
                           f"{', '.join(frozen[:8])}{' ...' if len(frozen) > 8 else ''}",
                           [str(model_file)]))
    return DeepSpeedCheckpoint(folder, obj, size, summary_line(facts), notes)


def _rank_files(folder: Path) -> tuple[dict[int, Path], list[str]]:
    optim: dict[int, Path] = {}
    models: list[str] = []
    for f in folder.iterdir():
        if f.name.startswith("layer_") and f.name.endswith("-model_states.pt"):
            raise CheckpointError(f"{folder} is a pipeline-parallel DeepSpeed checkpoint "
                                  f"({f.name}); optstate reads data-parallel ZeRO checkpoints "
                                  "only")
        if "expert_" in f.name and f.name.endswith("_optim_states.pt"):
            raise CheckpointError(f"{folder} holds MoE expert files ({f.name}); optstate does "
                                  "not read DeepSpeed MoE checkpoints")
        m = OPTIM_FILE.fullmatch(f.name)
        if m:
            if int(m.group(3)) != 0:
                raise CheckpointError(f"{folder} is a tensor-parallel DeepSpeed checkpoint "
                                      f"({f.name}); optstate reads data-parallel ZeRO "
                                      "checkpoints only (mp_rank_00)")
            rank = int(m.group(2))
            if rank in optim:
                raise CheckpointError(f"{folder} holds two optimizer files for rank {rank}: "
                                      f"{optim[rank].name} and {f.name}")
            optim[rank] = f
        elif MODEL_FILE.fullmatch(f.name):
            models.append(f.name)
    if not optim:
        raise CheckpointError(f"{folder} holds no DeepSpeed optimizer files "
                              "(*_optim_states.pt)",
                              hint="give a DeepSpeed run folder (with 'latest') or a tag "
                              "folder such as global_step100/")
    return optim, models


def _check_ranks(folder: Path, ranks: dict[int, Path], world: int, seen: str) -> None:
    # counted, not listed: partition_count comes from the file and may be anything
    n_missing = world - sum(1 for r in ranks if r < world)
    if n_missing:
        first = next(r for r in range(world) if r not in ranks)
        example = re.sub(r"zero_pp_rank_\d+", f"zero_pp_rank_{first}", seen)
        raise CheckpointError(f"{folder} is missing the optimizer file of rank {first} "
                              f"({example}){f' and {n_missing - 1:,} more' * (n_missing > 1)}"
                              f": the checkpoint was written by {world:,} ranks and every "
                              "rank's file is needed")
    extra = sorted(r for r in ranks if r >= world)
    if extra:
        raise CheckpointError(f"{folder} holds {len(ranks)} optimizer files but its "
                              f"partition_count says {world} ranks ({ranks[extra[0]].name} "
                              "is one too many): files of another run mixed in?")


def _get(obj: Any, key: str, f: Path) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), dict):
        raise CheckpointError(f"{f} is not a DeepSpeed ZeRO optimizer file (no {key!r})")
    return obj[key]


def _stage(osd: dict[str, Any], f: Path) -> int:
    z = osd.get("zero_stage")
    value = z.args[0] if isinstance(z, Inert) and z.args else z
    if value not in (1, 2, 3):
        raise CheckpointError(f"{f} has no ZeRO stage 1, 2 or 3 (zero_stage = {value!r})")
    return int(value)


def _facts(folder: Path, stage: int, world: int, osd: dict[str, Any], model: dict[str, Any],
           ranks: dict[int, Path], model_file: Path) -> dict[str, Any]:
    scaler = osd.get("loss_scaler")
    # decoded inertly, or DeepSpeed's own object when loaded with unsafe=True
    scale = (scaler.get("cur_scale") if isinstance(scaler, Inert)
             else getattr(scaler, "cur_scale", None))
    dynamic = osd.get("dynamic_loss_scale")
    trainable = {n for g in model["param_shapes"] if isinstance(g, dict) for n in g}
    frozen_shapes = model.get("frozen_param_shapes")
    if isinstance(frozen_shapes, dict):
        frozen = [str(n) for n in frozen_shapes]
    else:  # ZeRO 1 saves none: a param of the module that is neither trained nor a buffer
        skip = trainable | set(model.get("buffer_names") or []) | set(model.get("shared_params")
                                                                       or {})
        module = model.get("module")
        frozen = [str(n) for n in (module if isinstance(module, dict) else {}) if n not in skip]
    files = [ranks[r].name for r in range(world)] + [model_file.name]
    # ZeRO 3 writes one model states file per rank: rank 0's names every param; the others
    # (the ranks' pieces of the model's own 16-bit params) are not needed, and said so
    unread = sorted((f.name for f in folder.iterdir() if f.name != model_file.name
                     and MODEL_FILE.fullmatch(f.name)), key=_rank_key)
    return {
        "zero_stage": stage,
        "world_size": world,
        "tag": folder.name,
        "ds_version": str(model.get("ds_version") or osd.get("ds_version") or "unknown"),
        "dtype": _run_dtype(model, ranks[0]),
        "loss_scale": float(scale) if isinstance(scale, (int, float)) else None,
        "dynamic_loss_scale": bool(dynamic) if isinstance(dynamic, bool) else None,
        "global_steps": _int_or_none(model.get("global_steps")),
        "skipped_steps": _int_or_none(model.get("skipped_steps")),
        "frozen_params": frozen,
        "files": files,
        "files_not_read": unread,
        "scheduler": _scheduler(model),
        "client_state_keys": sorted(str(k) for k in model if k not in _DS_KEYS),
    }


# What DeepSpeed itself writes into a model states file (engine.py _common_checkpoint_state,
# _checkpoint_parallel_metadata, older versions' keys); the rest is the client_state
_DS_KEYS = frozenset({
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes",
    "shared_params", "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd",
    "sparse_tensor_module_names", "skipped_steps", "global_steps", "global_samples",
    "dp_world_size", "mp_world_size", "ds_config", "ds_version",
    "checkpoint_parallel_dimensions", "universal_checkpoint_info", "num_experts",
    "ds_autoep_layers", "folding"})


def _scheduler(model: dict[str, Any]) -> dict[str, Any] | None:
    """DeepSpeed's own LR scheduler: its type and params from the saved ds_config (None
    when the run passed its own scheduler object: the config does not name it) and its
    state (``last_batch_iteration``); None when the checkpoint holds no scheduler state."""
    state = model.get("lr_scheduler")
    if not isinstance(state, dict):
        return None
    cfg = model.get("ds_config")
    sub = cfg.get("scheduler") if isinstance(cfg, dict) else None
    sub = sub if isinstance(sub, dict) else {}
    kind = sub.get("type")
    params = sub.get("params")
    return {"type": kind if isinstance(kind, str) else None,
            "params": {str(k): v for k, v in params.items()
                       if isinstance(v, (bool, int, float, str))}
            if isinstance(params, dict) else {},
            "last_batch_iteration": _int_or_none(state.get("last_batch_iteration"))}


def _rank_key(name: str) -> tuple[int, str]:
    m = re.search(r"zero_pp_rank_(\d+)", name)
    return (int(m.group(1)) if m else -1, name)


def _listing(folder: Path, most: int = 8) -> str:
    """What a folder holds, for a hint: its first few names and how many more."""
    try:
        names = sorted(f.name for f in folder.iterdir())
    except OSError:
        return "(unreadable)"
    shown = ", ".join(names[:most]) or "none"
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


_HEAD = 1 << 20  # bytes compared first; rank files of one run differ within them


def _check_distinct(files: list[Path]) -> None:
    """Two byte-identical rank files are one rank's file twice (a copy over another rank's
    file), never two ranks: refused, naming both. Compared by size, then the first MiB,
    then (only when that too is equal) the whole files."""
    import hashlib

    seen: dict[tuple[int, str], Path] = {}
    for f in files:
        with f.open("rb") as fh:
            key = (f.stat().st_size, hashlib.sha256(fh.read(_HEAD)).hexdigest())
        other = seen.get(key)
        if other is not None and _same_bytes(other, f):
            raise CheckpointError(f"{other.name} and {f.name} in {f.parent} are byte-identical: "
                                  "two ranks' files never are (one rank's file copied over "
                                  "another's?); every rank's own file is needed")
        seen.setdefault(key, f)


def _same_bytes(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 22), fb.read(1 << 22)
            if x != y:
                return False
            if not x:
                return True


def latest_hint(p: Path) -> str | None:
    """When ``p`` is DeepSpeed's ``latest`` file (a tag's name, with that tag folder beside
    it): what to give instead; else None."""
    if p.name != LATEST or not p.is_file():
        return None
    try:
        with p.open("rb") as f:
            raw = f.read(4097)
    except OSError:
        return None
    tag = raw.decode("utf-8", "replace").strip()
    if len(raw) > 4096 or not _TAG.fullmatch(tag) or tag in (".", "..") \
            or not (p.parent / tag).is_dir():
        return None
    return tag


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _run_dtype(model: dict[str, Any], optim_file: Path) -> str:
    """bf16 / fp16 / fp32: what the model trained in (master weights are fp32 always)."""
    cfg = model.get("ds_config")
    if isinstance(cfg, dict):
        for key, name in (("bf16", "bf16"), ("bfloat16", "bf16"), ("fp16", "fp16")):
            sub = cfg.get(key)
            if isinstance(sub, dict) and sub.get("enabled") is True:
                return name
    m = OPTIM_FILE.fullmatch(optim_file.name)
    if m and m.group(1):
        return m.group(1)
    module = model.get("module")
    from optstate.io.native_tensor import dtype_name, is_tensor

    for t in (module.values() if isinstance(module, dict) else ()):
        if is_tensor(t) and t.is_floating_point():
            return {"bfloat16": "bf16", "float16": "fp16"}.get(dtype_name(t.dtype), "fp32")
    return "fp32"


def summary_line(facts: dict[str, Any]) -> str:
    """``DeepSpeed ZeRO stage 2, world size 2, bf16 run (fp32 master weights), loss scale 1
    (static), global step 3``."""
    parts = [f"DeepSpeed ZeRO stage {facts['zero_stage']}", f"world size {facts['world_size']}",
             f"{facts['dtype']} run (fp32 master weights and optimizer state)"]
    if facts["loss_scale"] is not None:
        kind = {True: "dynamic", False: "static"}.get(facts["dynamic_loss_scale"], "")
        parts.append(f"loss scale {facts['loss_scale']:g}" + (f" ({kind})" if kind else ""))
    if facts["global_steps"] is not None:
        skipped = facts["skipped_steps"]
        parts.append(f"global step {facts['global_steps']}"
                     + (f" ({skipped} skipped)" if skipped else ""))
    if facts["frozen_params"]:
        parts.append(f"{len(facts['frozen_params'])} frozen params")
    sched = facts.get("scheduler")
    if sched is not None:
        at = sched["last_batch_iteration"]
        parts.append(f"scheduler {sched['type'] or '(not named in ds_config)'}"
                     + (f" at batch {at}" if at is not None else ""))
    return ", ".join(parts) + f", tag {facts['tag']}, DeepSpeed {facts['ds_version']}"


def _tree(params: list[dict[str, Any]], groups: list[dict[str, Any]],
          facts: dict[str, Any]) -> dict[str, Any]:
    # as torch.optim: a param without state yet (no step taken) has no entry
    state = {i: p["state"] for i, p in enumerate(params) if p["state"]}
    param_groups = []
    for g, hyper in enumerate(groups):
        members = [i for i, p in enumerate(params) if p["group"] == g]
        param_groups.append({**hyper, "params": members,
                             "param_names": [params[i]["name"] for i in members]})
    return {
        "optimizer": {"state": state, "param_groups": param_groups},
        "fp32_master_weights": {p["name"]: p["fp32"] for p in params},
        "deepspeed": facts,
    }


def rank_partition(numel: int, world: int) -> int:
    """ZeRO 3: how many elements of a ``numel``-element param each rank holds."""
    return math.ceil(numel / world)
