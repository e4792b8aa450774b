"""FSDP2 state entries: a ``DTensor`` per entry, read as this rank's shard.

``torch.save(optim.state_dict())`` under ``torch.distributed.fsdp.fully_shard`` writes one
file per rank; each moment (``exp_avg``, ...) is a ``DTensor`` whose ``_local_tensor`` is
this rank's shard and whose ``_spec`` says how the whole is laid out. ``io.inert`` decodes
them without torch.distributed (an ``InertTensor`` holding the local tensor and an inert
``DTensorSpec``: ``mesh`` (``DeviceMesh``), ``placements`` (``Shard(dim)``, ``Replicate()``,
...), ``tensor_meta`` (``TensorMeta(shape, stride, dtype)``)).

``unpack_dtensors`` (one of ``state.packed._UNPACKERS``) makes each such entry its local
tensor: statistics, warnings and diff see this rank's shard, never a made-up whole, and
``stored[entry]`` says so: ``{"format": "dtensor", "from": [entry], "dtype",
"global_shape", "local_shape", "placements": ["Shard(0)"], "mesh": [2], "rank": 1}``
(``rank``, ``mesh`` and ``global_shape`` only when the spec gives them). The parameter's
shape for naming is the global one (``state.view.slot_shape``).
"""

from __future__ import annotations

from typing import Any

import torch

from optstate.base.errors import CheckpointError
from optstate.io.inert import Inert, InertTensor

DTENSOR_CLASSES = ("torch.distributed.tensor.DTensor", "torch.distributed._tensor.api.DTensor")


def is_dtensor(value: Any) -> bool:
    return isinstance(value, InertTensor) and value.qualname in DTENSOR_CLASSES


def unpack_dtensors(entries: dict[Any, Any],
                    stored: dict[str, dict[str, Any]]) -> dict[Any, Any]:
    """Each DTensor entry -> its local tensor, described in ``stored`` (module docstring)."""
    if not any(is_dtensor(v) for v in entries.values()):
        return entries
    out: dict[Any, Any] = {}
    for k, v in entries.items():
        if not is_dtensor(v):
            out[k] = v
            continue
        local = v.get("_local_tensor")
        if not isinstance(local, torch.Tensor):
            raise CheckpointError(
                f"state entry {k!r} is a DTensor without its local tensor "
                f"({type(local).__name__} instead): this rank's shard cannot be read")
        out[k] = local
        stored[str(k)] = describe_dtensor(v, str(k))
    return out


def describe_dtensor(v: InertTensor, entry: str) -> dict[str, Any]:
    """The plain-data description of one DTensor (module docstring)."""
    local = v.get("_local_tensor")
    spec = v.get("_spec")
    d: dict[str, Any] = {"format": "dtensor", "from": [entry],
                         "dtype": str(local.dtype).removeprefix("torch.")}
    shape = _global_shape(spec)
    if shape is None and v.shape:
        shape = [int(n) for n in v.shape]  # the wrapper's shape is the global one
    if shape is not None:
        d["global_shape"] = shape
    d["local_shape"] = [int(n) for n in local.shape]
    if isinstance(spec, Inert):
        d["placements"] = [placement_text(p) for p in (spec.get("placements") or ())]
        mesh = mesh_shape(spec.get("mesh"))
        if mesh is not None:
            d["mesh"] = mesh
        rank = spec.get("mesh").get("_rank") if isinstance(spec.get("mesh"), Inert) else None
        if isinstance(rank, int):
            d["rank"] = rank
    return d


def _global_shape(spec: Any) -> list[int] | None:
    meta = spec.get("tensor_meta") if isinstance(spec, Inert) else None
    if not isinstance(meta, Inert):
        return None
    shape = meta.get("shape", meta.args[0] if meta.args else None)
    if isinstance(shape, (tuple, list, torch.Size)) and all(isinstance(n, int) for n in shape):
        return [int(n) for n in shape]
    return None


def placement_text(p: Any) -> str:
    """``Shard(0)``, ``Replicate()``, ``Partial(sum)``, ``_StridedShard(0, split_factor=2)``:
    as torch prints placements; a placement it cannot read as ``?``."""
    if not isinstance(p, Inert):
        return "?"
    f = p.fields()
    if p.name == "Shard":
        return f"Shard({f.get('dim', f.get('args[0]', '?'))})"
    if p.name == "_StridedShard":
        return (f"_StridedShard({f.get('dim', f.get('args[0]', '?'))}, "
                f"split_factor={f.get('split_factor', '?')})")
    if p.name == "Replicate":
        return "Replicate()"
    if p.name == "Partial":
        return f"Partial({f.get('reduce_op', f.get('args[0]', 'sum'))})"
    return p.name


def mesh_shape(mesh: Any) -> list[int] | None:
    """The device mesh's shape: its ``mesh`` tensor (torch < 2.9) or its layout's axes."""
    if not isinstance(mesh, Inert):
        return None
    t = mesh.get("mesh")
    if isinstance(t, torch.Tensor):
        return [int(n) for n in t.shape]
    layout = mesh.get("_layout")
    if isinstance(layout, Inert):
        shape: list[int] = []
        for axis in layout.get("axes") or ():
            s = axis.get("shape") if isinstance(axis, Inert) else None
            if not isinstance(s, (tuple, list)) or not all(isinstance(n, int) for n in s):
                return None
            shape += [int(n) for n in s]
        return shape or None
    return None


def shard_note(stored_by_param: list[dict[str, dict[str, Any]]]) -> str | None:
    """One line for inspect's notes when entries are DTensor shards (None otherwise):
    their statistics are this file's shard only, not the whole parameter's."""
    shards = [d for stored in stored_by_param for d in stored.values()
              if d.get("format") == "dtensor"]
    if not shards:
        return None
    ranks = sorted({d["rank"] for d in shards if "rank" in d})
    meshes = sorted({str(d["mesh"]) for d in shards if "mesh" in d})
    placements = sorted({", ".join(d.get("placements") or ["?"]) for d in shards})
    who = f"rank {', '.join(map(str, ranks))}'s shard" if ranks else "this file's shard"
    mesh = f" of a {' / '.join(meshes)} device mesh" if meshes else ""
    return (f"{len(shards)} state entr{'ies are' if len(shards) != 1 else 'y is'} FSDP2 "
            f"DTensor shards ({'; '.join(placements)}): shapes and statistics cover {who}"
            f"{mesh} only, not the whole parameter; each entry's global shape is in its "
            "storage description")
