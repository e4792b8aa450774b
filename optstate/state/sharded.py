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

DTENSOR_CLASSES = ("torch.distributed.tensor.DTensor", "torch.distributed._tensor.api.DTensor",
                   "torch.distributed.tensor._api.DTensor")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_dtensor(value: Any) -> bool:
    """A DTensor decoded inertly, or torch's own (``--unsafe`` loads the real class, whose
    wrapper holds no data: statistics on it crash, so it is read through its shard too)."""
    if isinstance(value, InertTensor):
        return value.qualname in DTENSOR_CLASSES
    return isinstance(value, torch.Tensor) and _qualname(type(value)) in DTENSOR_CLASSES


def _field(obj: Any, name: str) -> Any:
    """A field of an inert object (``Inert.get``) or of torch's own (its attribute)."""
    if isinstance(obj, (Inert, InertTensor)):
        return obj.get(name)
    return getattr(obj, name, None) if obj is not None else None


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
        local = _field(v, "_local_tensor")
        if not isinstance(local, torch.Tensor) or is_dtensor(local):
            raise CheckpointError(
                f"state entry {k!r} is a DTensor without its local tensor "
                f"({type(local).__name__} instead): this rank's shard cannot be read")
        out[k] = local
        stored[str(k)] = describe_dtensor(v, str(k))
    return out


def describe_dtensor(v: Any, entry: str) -> dict[str, Any]:
    """The plain-data description of one DTensor (module docstring)."""
    local = _field(v, "_local_tensor")
    spec = _field(v, "_spec")
    d: dict[str, Any] = {"format": "dtensor", "from": [entry],
                         "dtype": str(local.dtype).removeprefix("torch.")}
    shape = _ints(_meta_shape(_field(spec, "tensor_meta")))
    if shape is None:
        shape = _ints(v.shape)  # the wrapper's shape is the global one
    if shape is not None:
        d["global_shape"] = shape
    d["local_shape"] = [int(n) for n in local.shape]
    if spec is not None:
        d["placements"] = [placement_text(p) for p in (_field(spec, "placements") or ())]
        mesh = _field(spec, "mesh")
        shape = mesh_shape(mesh)
        if shape is not None:
            d["mesh"] = shape
        rank = _field(mesh, "_rank")
        if isinstance(rank, int) and not isinstance(rank, bool):
            d["rank"] = rank
    return d


def _meta_shape(meta: Any) -> Any:
    if isinstance(meta, Inert):
        return meta.get("shape", meta.args[0] if meta.args else None)
    return getattr(meta, "shape", None)


def _ints(shape: Any) -> list[int] | None:
    if isinstance(shape, (tuple, list, torch.Size)) and all(
            isinstance(n, int) and not isinstance(n, bool) for n in shape):
        return [int(n) for n in shape]
    return None


def placement_text(p: Any) -> str:
    """``Shard(0)``, ``Replicate()``, ``Partial(sum)``, ``_StridedShard(0, split_factor=2)``:
    as torch prints placements; a placement it cannot read as ``?``."""
    if isinstance(p, Inert):
        name, f = p.name, p.fields()
    elif p is not None and _qualname(type(p)).startswith("torch.distributed."):
        name, f = type(p).__name__, {k: getattr(p, k, None)
                                     for k in ("dim", "split_factor", "reduce_op")}
    else:
        return "?"
    if name == "Shard":
        return f"Shard({f.get('dim', f.get('args[0]', '?'))})"
    if name == "_StridedShard":
        return (f"_StridedShard({f.get('dim', f.get('args[0]', '?'))}, "
                f"split_factor={f.get('split_factor', '?')})")
    if name == "Replicate":
        return "Replicate()"
    if name == "Partial":
        return f"Partial({f.get('reduce_op') or f.get('args[0]') or 'sum'})"
    return name


def mesh_shape(mesh: Any) -> list[int] | None:
    """The device mesh's shape: its ``mesh`` tensor (torch < 2.9), its layout's axes, or
    (torch's own DeviceMesh) its ``shape``."""
    if mesh is None:
        return None
    if not isinstance(mesh, Inert):
        return _ints(getattr(mesh, "shape", None))
    t = mesh.get("mesh")
    if isinstance(t, torch.Tensor):
        return [int(n) for n in t.shape]
    layout = mesh.get("_layout")
    if isinstance(layout, Inert):
        shape: list[int] = []
        for axis in layout.get("axes") or ():
            s = _ints(axis.get("shape")) if isinstance(axis, Inert) else None
            if s is None:
                return None
            shape += s
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
