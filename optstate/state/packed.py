"""Per-parameter state as the optimizer means it, when it is not stored as plain tensors.

``Optimizer.state_dict()`` of torch.optim holds one tensor per entry. Other optimizers
store an entry packed or wrapped, and every view (statistics, warnings, diff, names)
must see the moment the optimizer means, not its storage:

- bitsandbytes' 8-bit optimizers: ``state1`` as uint8 codes with ``qmap1`` and
  ``absmax1`` (blockwise quantization), under ``__bnb_optimizer_quant_state__``
  (``state.lowbit``);
- torchao's low-bit optimizers: ``exp_avg`` as an ``OptimState8bit`` / ``OptimState4bit`` /
  ``OptimStateFp8`` tensor subclass, decoded inertly (``io.inert``; ``state.lowbit``);
- FSDP2: a ``DTensor`` per entry, this rank's shard of the whole (``state.sharded``);
- nested state: heavyball keeps each param's state in a dict per inner group, pytorch-
  optimizer's ScalableShampoo in objects (``state.nested``).

``unpack_state(raw)`` returns the logical entries (name -> torch.Tensor or plain value;
what ``ParamView.state`` holds) and, for each entry not stored as itself, a plain-data
description of its storage (``ParamView.stored``; JSON ``params[].stored``):

    {"format": str,            # "bitsandbytes-8bit" | "torchao-8bit" | "torchao-4bit" |
                               # "torchao-fp8" | "dtensor" | "nested"
     "from": [str, ...],       # the raw keys (paths) it was read from
     "dtype": str,             # the stored element type ("uint8", "float8_e4m3fn", ...)
     "block_size": int,        # quantized formats
     "bytes_stored": int, "bytes_float32": int,   # quantized formats
     "global_shape": [int], "local_shape": [int], "placements": [str], "mesh": [int],
     "rank": int,              # dtensor (only the keys that apply are present)
     "object": str}            # nested: the class of the object the entry is a field of

``describe_stored(d)`` is the one line a human view shows for it. The raw state stays in
``ParamView.raw_state`` (what ``set`` and ``convert`` write back).
"""

from __future__ import annotations

from typing import Any

from optstate.state import lowbit
from optstate.state.nested import unpack_nested
from optstate.state.sharded import unpack_dtensors


def unpack_state(raw: dict[Any, Any]) -> tuple[dict[Any, Any], dict[str, dict[str, Any]]]:
    """(logical entries, storage descriptions) of one param's raw state; see the module
    docstring. A raw state of plain tensors comes back as it is, with no descriptions."""
    entries: dict[Any, Any] = dict(raw)
    stored: dict[str, dict[str, Any]] = {}
    for unpack in _UNPACKERS:
        entries = unpack(entries, stored)
    return entries, stored


# How a format is named to people (``describe_stored``).
FORMAT_WORDS = {
    "wrapper": "the wrapper optimizer's own per-param state",
    "bitsandbytes-8bit": "8-bit blockwise (bitsandbytes)",
    "bitsandbytes-32bit": "not quantized (bitsandbytes keeps small params in 32 bits)",
    "torchao-8bit": "8-bit blockwise (torchao)",
    "torchao-4bit": "4-bit blockwise (torchao)",
    "torchao-fp8": "fp8 blockwise (torchao)",
    "dtensor": "DTensor shard (FSDP2)",
    "nested": "nested",
}


def describe_stored(d: dict[str, Any]) -> str:
    """One line for a human view: how an entry is stored ("8-bit blockwise (bitsandbytes):
    uint8, blocks of 256, 30% of float32 bytes")."""
    fmt = str(d.get("format", "?"))
    words = FORMAT_WORDS.get(fmt, fmt)
    parts = []
    if "dtype" in d:
        parts.append(f"{d['dtype']}, 2 codes a byte" if fmt == "torchao-4bit"
                     else str(d["dtype"]))
    if d.get("stacked"):
        parts.append(f"{d['stacked']} moments stacked on the first dimension")
    if "stacked_in" in d:  # state.lowbit: one of k moments stacked in one stored entry
        parts.append(f"{d['stacked_in']}[{d['moment']}] of {d['of']} stacked moments"
                     + (f" (bitsandbytes' {d['name']})" if d.get("name") else ""))
    if d.get("block_size") is not None:
        parts.append(f"blocks of {d['block_size']}")
    elif "blocks" in d:
        parts.append(f"{d['blocks']} block{'s' * (d['blocks'] != 1)}")
    if d.get("bytes_stored") is not None and d.get("bytes_float32"):
        parts.append(f"{d['bytes_stored'] / d['bytes_float32']:.0%} of float32 bytes")
    if "global_shape" in d:
        parts.append(f"local {d.get('local_shape')} of {d['global_shape']}")
    if d.get("placements"):  # dtensor
        parts.append(" ".join(map(str, d["placements"]))
                     + (f" on a {d['mesh']} device mesh" if "mesh" in d else ""))
    if "rank" in d:
        parts.append(f"rank {d['rank']}'s shard")
    if fmt == "wrapper" and d.get("from"):
        parts.append(f"at {d['from'][0]}")
    if fmt == "nested" and "object" in d:  # a field of an object, decoded without its code
        parts.append(f"a field of a {d['object']} object")
    if d.get("error"):
        parts.append(str(d["error"]))
    return words + (": " + ", ".join(parts) if parts else "")


# Each takes the entries so far and the descriptions, and returns the new entries.
_UNPACKERS = [unpack_dtensors, lowbit.bnb, lowbit.torchao, unpack_nested]
