"""A model's tensor list (names, shapes, dtypes, tied names), read without tensor data
where the format allows.

Naming an optimizer's slots needs the model's tensors, not their values:

- ``.safetensors``: only the header is read (8 bytes of little-endian length N, then N
  bytes of JSON ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``),
  in pure Python; the safetensors package is not needed. Its keys are sorted by name, not
  in model order: ``ordered=False``.
- ``model.safetensors.index.json``: the header of every shard its ``weight_map`` names.
- a torch.save file (``pytorch_model.bin``, ``torch.save(model.state_dict())``, or a
  container holding a model state_dict): read by ``torch_file.load_torch_file`` with
  ``mmap=True`` (weights_only, pre-scanned, walked), so tensor data stays on disk; a
  state_dict keeps the model's order (``ordered=True``). Two names whose tensors share
  storage, offset, shape and stride are one tensor (tied weights, as ``parameters()``
  yields them once): the first name wins, the others are its ``aliases``.
- ``pytorch_model.bin.index.json``: every shard loaded as above, in shard order. The
  Hub's sharding moves a tensor larger than a shard to a shard of its own, ahead of the
  ones before it, so the concatenated order is not certainly the model's: ``ordered=False``.

``find_model_in_container`` finds the model state_dict that sits beside an optimizer
state in one checkpoint (the tutorial's ``model_state_dict``, Lightning's ``state_dict``).

About 510 lines on purpose: every model format ends in the same ``ModelTensors`` and the
same "is not a model file" refusal, and the sharded readers reuse the single-file ones;
most of the length is the safetensors header's checks, each with its own message.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError, OptstateError, option
from optstate.base.paths import Step, display, format_path, join, parse_path, step_into
from optstate.io.native_tensor import is_native, is_tensor
from optstate.io.torch_file import ZIP_MAGIC

Shape = tuple[int, ...]

# The safetensors library refuses larger headers (MAX_HEADER_SIZE); so do we, before
# reading them.
MAX_HEADER = 100_000_000

# safetensors dtype codes -> (torch dtype name, bits per element)
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 64), "F32": ("float32", 32), "F16": ("float16", 16),
    "BF16": ("bfloat16", 16), "F8_E4M3": ("float8_e4m3fn", 8),
    "F8_E5M2": ("float8_e5m2", 8), "F8_E8M0": ("float8_e8m0fnu", 8),
    "C64": ("complex64", 64), "C128": ("complex128", 128),
    "I64": ("int64", 64), "I32": ("int32", 32), "I16": ("int16", 16), "I8": ("int8", 8),
    "U64": ("uint64", 64), "U32": ("uint32", 32), "U16": ("uint16", 16), "U8": ("uint8", 8),
    "BOOL": ("bool", 8),
}

# Last name components that are buffers, never parameters, in the modules that register
# them. Only names no one gives a parameter: a parameter left out of the candidates could
# shift an alignment, while a buffer left in is merely skipped by it.
#   running_mean, running_var, num_batches_tracked: BatchNorm / InstanceNorm statistics
#   inv_freq: rotary position embeddings (transformers' Llama, Mistral, GPT-NeoX, ...)
#   masked_bias: GPT-2's attention mask value (older transformers)
#   position_ids, token_type_ids: BERT-style embeddings' index buffers
#   weight_mask, bias_mask: torch.nn.utils.prune's masks
KNOWN_BUFFERS = frozenset({
    "running_mean", "running_var", "num_batches_tracked", "inv_freq", "masked_bias",
    "position_ids", "token_type_ids", "weight_mask", "bias_mask",
})

# Keys that hold a model state_dict beside an optimizer state, in order of preference.
MODEL_KEYS = ("model_state_dict", "model", "state_dict", "model_state", "module", "net",
              "network", "weights")

# A Hugging Face / accelerate folder's model files, in order of preference: a single
# torch.save file keeps the model's order; safetensors (sorted by name) does not.
MODEL_FILES = ("pytorch_model.bin", "model.safetensors", "model.safetensors.index.json",
               "pytorch_model.bin.index.json")

_SHARD_NAME = re.compile(r"[^/\\\x00]+")


@dataclass(frozen=True)
class ModelTensor:
    """One tensor of a model: its name, shape, dtype (torch's name without "torch."),
    the other names of the same tensor (tied weights), and whether it belongs to an
    nn.LayerNorm (known only from a model skeleton; None otherwise)."""

    name: str
    shape: Shape
    dtype: str
    aliases: tuple[str, ...] = ()
    layernorm: bool | None = None


@dataclass
class ModelTensors:
    """A model's tensors, one entry per distinct tensor (ties merged), and where they
    came from. ``ordered``: the list is in the model's order (a torch.save state_dict, a
    skeleton's named_parameters()); False for safetensors (sorted by name)."""

    tensors: list[ModelTensor]
    ordered: bool
    origin: str
    path: str | None = None
    location: str | None = None
    params_only: bool = False
    # a torch.save file read with torch where the native reader was asked for: why
    reader_note: str | None = None


def could_be_parameter(t: ModelTensor) -> bool:
    """Whether ``t`` may be a parameter: a floating or complex dtype, and a last name
    component that is not a known buffer (``KNOWN_BUFFERS``)."""
    floating = t.dtype.startswith(("float", "bfloat", "complex"))
    return floating and t.name.rsplit(".", 1)[-1] not in KNOWN_BUFFERS


# --------------------------------------------------------------------------- state_dicts


def _holds_tensor(value: Any, depth: int = 0) -> bool:
    if is_tensor(value):
        return True
    if depth > 3:
        return False
    if isinstance(value, Mapping):
        return any(_holds_tensor(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v, depth + 1) for v in value)
    return False


def is_model_state_dict(value: Any) -> bool:
    """A non-empty mapping of str -> tensor, as ``nn.Module.state_dict()`` returns; a few
    non-tensor extras (a '_metadata' entry) are allowed, nested tensors are not (that is
    a container, or an optimizer state_dict)."""
    if not isinstance(value, Mapping) or not value:
        return False
    tensors = extras = 0
    for key, v in value.items():
        if not isinstance(key, str):
            return False
        if is_tensor(v):
            tensors += 1
        elif _holds_tensor(v):
            return False
        else:
            extras += 1
    return tensors > extras and extras <= max(2, tensors // 10)


def _tie_key(t: Any) -> tuple[Any, ...] | None:
    """What makes two tensors one: same storage, offset, shape, stride and dtype. None
    when there is no real storage to compare (lazy, meta, sparse, empty). A NativeTensor's
    storage is its record in the file (tied tensors share it, as in torch)."""
    if is_native(t):
        st = t.storage
        if st.nbytes == 0:
            return None
        return (("native", str(st.file), st.key, id(st) if not st.key else 0),
                t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
    import torch

    from optstate.io.lazy import is_lazy

    if is_lazy(t) or t.device.type == "meta" or t.layout != torch.strided:
        return None
    try:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or storage.nbytes() == 0:
            return None
        return (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def model_tensors_from_state_dict(sd: Mapping[str, Any], *, origin: str,
                                  path: str | None = None,
                                  location: str | None = None) -> ModelTensors:
    """The tensors of a model state_dict, in its order (``ordered=True``); tied names
    (same storage, offset, shape, stride) merged into the first one's ``aliases``.
    Entries that are not tensors under a str key are ignored."""
    names: list[str] = []
    info: dict[str, tuple[Shape, str]] = {}
    aliases: dict[str, list[str]] = {}
    first_of: dict[tuple[Any, ...], str] = {}
    for name, value in sd.items():
        if not isinstance(name, str) or not is_tensor(value):
            continue
        key = _tie_key(value)
        if key is not None and key in first_of:
            aliases[first_of[key]].append(name)
            continue
        if key is not None:
            first_of[key] = name
        names.append(name)
        info[name] = (tuple(int(n) for n in value.shape),
                      str(value.dtype).removeprefix("torch."))
        aliases[name] = []
    tensors = [ModelTensor(n, info[n][0], info[n][1], tuple(aliases[n])) for n in names]
    return ModelTensors(tensors, ordered=True, origin=origin, path=path, location=location)


def find_model_in_container(obj: Any, optimizer_location: str
                            ) -> tuple[str, Mapping[str, Any]] | None:
    """The model state_dict beside the optimizer state at ``optimizer_location`` in
    ``obj``, as (its location, the mapping); None when there is none, or several and
    none under a preferred key (``MODEL_KEYS``).

    It is looked for in the dict that holds the optimizer state (for
    ``optimizer_states[0]``, Lightning's list, the dict holding that list), then at the
    top level."""
    found = _models_near(obj, optimizer_location)
    if found and (len(found) == 1 or found[0][0] in MODEL_KEYS):
        return found[0][1], found[0][2]
    return None


def models_in_container(obj: Any, optimizer_location: str
                        ) -> list[tuple[str, Mapping[str, Any]]]:
    """Every model state_dict where ``find_model_in_container`` looks, preferred keys
    (``MODEL_KEYS``) first, with locations: a container with two models (an actor and a
    critic) gives both, so a caller can see that nothing says which one goes with the
    optimizer."""
    return [(loc, sd) for _, loc, sd in _models_near(obj, optimizer_location)]


def _models_near(obj: Any, optimizer_location: str) -> list[tuple[Any, str, Mapping[str, Any]]]:
    """(key, location, state_dict) of each model state_dict in the nearest dict above the
    optimizer state that holds any, else at the top level; preferred keys first."""
    try:
        steps = parse_path(optimizer_location)
    except OptstateError:
        steps = ()
    # the nearest dict above the optimizer state, and its path
    parent_steps = list(steps[:-1])
    while True:
        node = _follow_steps(obj, parent_steps)
        if isinstance(node, Mapping) or not parent_steps:
            break
        parent_steps.pop()
    places = [(parent_steps, node)] + ([([], obj)] if parent_steps else [])
    rank = {k: i for i, k in enumerate(MODEL_KEYS)}
    for where, holder in places:
        if not isinstance(holder, Mapping):
            continue
        found = [(k, v) for k, v in holder.items() if is_model_state_dict(v)]
        if found:
            found.sort(key=lambda kv: rank.get(kv[0], len(rank)))
            prefix = format_path([s.key for s in where])
            return [(k, join(prefix, k), v) for k, v in found]
    return []


def _follow_steps(obj: Any, steps: list[Step]) -> Any:
    node = obj
    for step in steps:
        try:
            node = step_into(node, step)
        except (KeyError, TypeError):
            return None
    return node


# --------------------------------------------------------------------------- files


def find_model_beside(folder: Path, suffix: str = "") -> Path | None:
    """The model file of a Hugging Face Trainer / accelerate checkpoint folder, by
    ``MODEL_FILES``' preference (a torch.save ``pytorch_model.bin`` first: it keeps the
    model's order); None when there is none. ``suffix`` "_1" finds accelerate's second
    model (``pytorch_model_1.bin``, ``model_1.safetensors``), saved with ``optimizer_1.bin``."""
    names = MODEL_FILES if not suffix else (f"pytorch_model{suffix}.bin",
                                            f"model{suffix}.safetensors")
    for name in names:
        candidate = Path(folder) / name
        try:
            if stat.S_ISREG(os.stat(candidate).st_mode):
                return candidate
        except OSError:
            continue
    return None


def _not_a_model(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a model file: {reason}",
        hint=f"{option('model')} takes a .safetensors file, a sharded checkpoint's "
        "*.index.json, or a torch.save file of model.state_dict() (pytorch_model.bin)")


def _regular_size(path: Path) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _not_a_model(path, "it does not exist") from None
    except PermissionError:
        raise CheckpointError(f"permission denied reading {path}") from None
    except OSError as e:
        raise _not_a_model(path, f"it cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _not_a_model(path, "it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_model(path, "it is not a regular file")
    return st.st_size


def read_model_file(path: str | Path) -> ModelTensors:
    """The tensors of a model file: ``.safetensors`` (its header only), a sharded
    checkpoint's ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``, or
    a torch.save file holding a model state_dict or a container with one.

    Example: ``read_model_file("checkpoint-500/model.safetensors").tensors[0].name``"""
    p = Path(path)
    size = _regular_size(p)
    with open(p, "rb") as f:
        head = f.read(16)
    if p.name.endswith(".index.json"):
        return _read_index(p)
    if head.startswith(ZIP_MAGIC) or head[:1] == b"\x80":
        return _read_torch_file(p)
    if p.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{"):
        tensors = _safetensors_tensors(p)
        return ModelTensors(sorted(tensors, key=lambda t: t.name), ordered=False,
                            origin=p.name, path=str(p))
    if size == 0:
        raise _not_a_model(p, "it is empty (0 bytes)")
    raise _not_a_model(p, "it is neither safetensors nor a torch.save file (it starts "
                          f"with {head[:8].hex(' ')})")


def _model_reader() -> str:
    """The reader for a model file read to name params: native while torch is not
    imported (the checkpoint was read natively: keep it so), else torch as before."""
    from optstate.io.native_tensor import torch_loaded

    return "torch" if torch_loaded() else "auto"


def _read_torch_file(p: Path) -> ModelTensors:
    from optstate.io.torch_file import load_torch_file

    reader = _model_reader()
    loaded = load_torch_file(p, mmap=True, reader=reader)
    obj = loaded.obj
    if is_model_state_dict(obj):
        out = model_tensors_from_state_dict(obj, origin=p.name, path=str(p))
    else:
        found = find_model_in_container(obj, "") if isinstance(obj, Mapping) else None
        if found is None:
            raise _not_a_model(p, _what_instead(obj))
        location, sd = found
        out = model_tensors_from_state_dict(
            sd, origin=f"the model state_dict at '{display(location)}' in {p.name}",
            path=str(p), location=location)
    if reader != "torch" and loaded.reader != "native":
        out.reader_note = f"{p.name} (read for names): read with torch ({loaded.reader_note})"
    return out


def _what_instead(obj: Any) -> str:
    if isinstance(obj, Mapping) and "state" in obj and "param_groups" in obj:
        return "it holds an optimizer state_dict, not a model's"
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:6]) + (", ..." if len(obj) > 6 else "")
        return f"it holds a dict ({keys or 'empty'}) with no model state_dict in it"
    return f"it holds a {type(obj).__name__}, not a model state_dict"


# --------------------------------------------------------------------------- safetensors


def _safetensors_tensors(p: Path) -> list[ModelTensor]:
    """The tensors a safetensors header describes, checked against the file's size."""
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{p} is truncated: a safetensors file starts with an "
                                  f"8-byte header length, it holds {len(raw)} bytes")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER:
            raise CheckpointError(f"{p} is not a valid safetensors file: its header length "
                                  f"{n:,} is over the {MAX_HEADER:,}-byte limit")
        if 8 + n > size:
            raise CheckpointError(f"{p} is truncated: its safetensors header needs {n:,} "
                                  f"bytes, the file holds {size - 8:,} after the length",
                                  hint="re-copy or re-save the model file")
        text = f.read(n)
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{p} is not a valid safetensors file: its header is not "
                              f"JSON ({_first_line(e)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{p} is not a valid safetensors file: its header is a JSON "
                              f"{type(header).__name__}, not an object")
    data_size = size - 8 - n
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors.append(_safetensors_entry(p, name, entry, data_size))
    return tensors


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _safetensors_entry(p: Path, name: str, entry: Any, data_size: int) -> ModelTensor:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{p} is not a valid safetensors file: tensor {name!r} {what}")

    if not isinstance(entry, dict):
        raise bad("is described by a JSON " + type(entry).__name__ + ", not an object")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(code, str):
        raise bad("has no dtype")
    if code not in SAFETENSORS_DTYPES:
        raise bad(f"has the dtype {code!r}, which optstate does not know")
    if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape):
        raise bad("has no valid shape (a list of non-negative integers)")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise bad("has no valid data_offsets ([begin, end])")
    if offsets[1] > data_size:
        raise bad(f"ends at byte {offsets[1]:,} of the data, which holds {data_size:,} "
                  "(the file is truncated?)")
    dtype, bits = SAFETENSORS_DTYPES[code]
    needed = math.prod(shape) * bits // 8
    if offsets[1] - offsets[0] != needed:
        raise bad(f"of shape {shape} ({dtype}) needs {needed:,} bytes, its data_offsets "
                  f"give {offsets[1] - offsets[0]:,}")
    return ModelTensor(name, tuple(shape), dtype)


# --------------------------------------------------------------------------- sharded


def _read_index(p: Path) -> ModelTensors:
    try:
        index = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _not_a_model(p, f"it is not JSON ({_first_line(e)})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _not_a_model(p, "it is JSON without a 'weight_map' of tensor names to files")
    shards: list[str] = []
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not _SHARD_NAME.fullmatch(shard) or shard in (
                ".", ".."):
            raise CheckpointError(f"{p}: the weight_map gives tensor {name!r} the file "
                                  f"{shard!r}, not a file name in the same folder")
        if shard not in shards:
            shards.append(shard)
    shards.sort()  # model-00001-of-00003...: the order they were written in
    folder = p.parent
    if p.name.endswith(".safetensors.index.json"):
        return _safetensors_shards(p, folder, shards, weight_map)
    return _torch_shards(p, folder, shards, weight_map)


def _safetensors_shards(p: Path, folder: Path, shards: list[str],
                        weight_map: dict[str, str]) -> ModelTensors:
    seen: dict[str, str] = {}
    tensors: list[ModelTensor] = []
    for shard in shards:
        shard_path = folder / shard
        _shard_size(p, shard_path)
        for t in _safetensors_tensors(shard_path):
            if t.name in seen:
                raise CheckpointError(f"{p}: tensor {t.name!r} is in both {seen[t.name]} "
                                      f"and {shard}")
            seen[t.name] = shard
            tensors.append(t)
    _check_weight_map(p, weight_map, seen)
    return ModelTensors(sorted(tensors, key=lambda t: t.name), ordered=False,
                        origin=f"{p.name} ({len(shards)} shards)", path=str(p))


def _torch_shards(p: Path, folder: Path, shards: list[str],
                  weight_map: dict[str, str]) -> ModelTensors:
    from optstate.io.torch_file import load_torch_file

    merged: dict[str, Any] = {}
    seen: dict[str, str] = {}
    note = None
    for shard in shards:
        shard_path = folder / shard
        _shard_size(p, shard_path)
        reader = _model_reader()
        loaded = load_torch_file(shard_path, mmap=True, reader=reader)
        obj = loaded.obj
        if reader != "torch" and loaded.reader != "native" and note is None:
            note = f"{shard} (read for names): read with torch ({loaded.reader_note})"
        if not is_model_state_dict(obj):
            raise CheckpointError(f"{p}: its shard {shard} does not hold a model "
                                  "state_dict")
        for name, value in obj.items():
            if name in seen:
                raise CheckpointError(f"{p}: tensor {name!r} is in both {seen[name]} and "
                                      f"{shard}")
            seen[name] = shard
            merged[name] = value
    _check_weight_map(p, weight_map, seen)
    out = model_tensors_from_state_dict(merged, origin=f"{p.name} ({len(shards)} shards)",
                                        path=str(p))
    out.ordered = len(shards) == 1  # see the module docstring
    out.reader_note = note
    return out


def _shard_size(index: Path, shard: Path) -> None:
    try:
        _regular_size(shard)
    except CheckpointError as e:
        raise CheckpointError(f"{index} names the shard {shard.name}, which cannot be "
                              f"read: {e.message}") from None


def _check_weight_map(p: Path, weight_map: dict[str, str], seen: dict[str, str]) -> None:
    for name, shard in weight_map.items():
        if seen.get(name) != shard:
            where = f"it is in {seen[name]}" if name in seen else "no shard holds it"
            raise CheckpointError(f"{p} puts tensor {name!r} in {shard}, but {where}")
