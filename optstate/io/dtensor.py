"""FSDP2's DTensors in a checkpoint: what each holds, and several ranks' files joined.

``torch.save(optim.state_dict())`` under ``torch.distributed.fsdp.fully_shard`` writes one
file per rank; each moment (``exp_avg``, ...) is a ``DTensor``: ``_local_tensor`` is this
rank's shard, ``_spec`` how the whole is laid out (``mesh``: the ``DeviceMesh``;
``placements``: ``Shard(dim)``, ``Replicate()``, ...; ``tensor_meta``: ``TensorMeta(shape,
stride, dtype)``). ``io.inert`` decodes them without torch.distributed (an ``InertTensor``
and inert objects); ``--unsafe`` gives torch's own classes. Both are read here the same way.

- ``describe_dtensor``: one DTensor as plain data (``state.sharded`` makes each entry its
  local tensor and keeps this as its storage description);
- ``join_ranks``: the trees of one run's ``rank<N>.pt`` files (``rank_files``) as one state:
  each DTensor's shards joined in mesh order (``Shard(d)``: concatenated along ``d``;
  ``Replicate()``: one copy), every other value the same in every file. Anything that does
  not add up (a rank file missing or twice, another placement, shapes that do not make the
  global one, values that differ) is an error naming it, never a guess.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError
from optstate.io.inert import Inert, InertTensor
from optstate.io.native_tensor import as_torch, is_native, is_tensor

DTENSOR_CLASSES = ("torch.distributed.tensor.DTensor", "torch.distributed._tensor.api.DTensor",
                   "torch.distributed.tensor._api.DTensor")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_dtensor(value: Any) -> bool:
    """A DTensor decoded inertly, or torch's own (``--unsafe`` loads the real class, whose
    wrapper holds no data: statistics on it crash, so it is read through its shard too)."""
    if isinstance(value, InertTensor):
        return value.qualname in DTENSOR_CLASSES
    return is_tensor(value) and _qualname(type(value)) in DTENSOR_CLASSES


def field(obj: Any, name: str) -> Any:
    """A field of an inert object (``Inert.get``) or of torch's own (its attribute)."""
    if isinstance(obj, (Inert, InertTensor)):
        return obj.get(name)
    return getattr(obj, name, None) if obj is not None else None


def describe_dtensor(v: Any, entry: str) -> dict[str, Any]:
    """The plain-data description of one DTensor (module docstring)."""
    local = field(v, "_local_tensor")
    spec = field(v, "_spec")
    d: dict[str, Any] = {"format": "dtensor", "from": [entry],
                         "dtype": str(local.dtype).removeprefix("torch.")}
    shape = _ints(_meta_shape(field(spec, "tensor_meta")))
    if shape is None:
        shape = _ints(v.shape)  # the wrapper's shape is the global one
    if shape is not None:
        d["global_shape"] = shape
    d["local_shape"] = [int(n) for n in local.shape]
    if spec is not None:
        placements = field(spec, "placements")
        if not isinstance(placements, (list, tuple)):  # damaged or another layout: unknown
            placements = [placements] if placements is not None else []
        d["placements"] = [placement_text(p) for p in placements]
        mesh = field(spec, "mesh")
        shape = mesh_shape(mesh)
        if shape is not None:
            d["mesh"] = shape
        rank = field(mesh, "_rank")
        if isinstance(rank, int) and not isinstance(rank, bool):
            d["rank"] = rank
    return d


def _meta_shape(meta: Any) -> Any:
    if isinstance(meta, Inert):
        return meta.get("shape", meta.args[0] if meta.args else None)
    return getattr(meta, "shape", None)


def _ints(shape: Any) -> list[int] | None:
    if isinstance(shape, (tuple, list)) and all(  # torch.Size is a tuple
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
    if is_tensor(t):
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


# rank0.pt, rank_1.pt, optim_rank2.pth, ...: one run's files share the name around the number
RANK_FILE = re.compile(r"(?P<stem>.*?)rank[_-]?(?P<n>\d+)\.(?P<ext>pt|pth|bin)")


def rank_files(folder: Path) -> list[tuple[int, Path]]:
    """The ``rank<N>.pt`` files in ``folder``, by N (empty when there are none)."""
    kinds: dict[tuple[str, str], list[tuple[int, Path]]] = {}
    for f in folder.iterdir():
        m = RANK_FILE.fullmatch(f.name)
        if m and f.is_file():
            kinds.setdefault((m["stem"], m["ext"]), []).append((int(m["n"]), f))
    if len(kinds) > 1:
        names = ", ".join(sorted(f"{s}rank<N>.{e}" for s, e in kinds))
        raise CheckpointError(f"{folder} holds rank files named in {len(kinds)} ways ({names}): "
                              "which belong to one run is unknown",
                              hint="give one rank file, or a folder with one run's files")
    return sorted(next(iter(kinds.values()))) if kinds else []


class Joined:
    """What ``join_ranks`` did: DTensor entries joined, and how they were laid out."""

    def __init__(self) -> None:
        self.entries = 0
        self.layouts: dict[str, None] = {}  # "Shard(0) on a [2] device mesh", in order seen


def join_ranks(objs: list[Any], names: list[str]) -> tuple[Any, Joined]:
    """One object tree from the trees of all ranks of a run (``objs[i]`` from file
    ``names[i]``): DTensors joined from their shards, everything else the same in every
    file (module docstring)."""
    done = Joined()
    return _join(objs, "", names, done), done


def _differ(path: str, names: list[str], what: str) -> CheckpointError:
    where = path or "the top level"
    return CheckpointError(
        f"the rank files differ at {where} ({what}): they are not the shards of one "
        f"state ({', '.join(names)})",
        hint="give each rank file on its own")


def _join(values: list[Any], path: str, names: list[str], done: Joined) -> Any:
    from optstate.base.paths import join

    first = values[0]
    if is_dtensor(first):
        if not all(is_dtensor(v) for v in values):
            raise _differ(path, names, "a DTensor in some files only")
        return _join_dtensor(values, path, names, done)
    if isinstance(first, dict):
        if not all(isinstance(v, dict) and list(v) == list(first) for v in values):
            raise _differ(path, names, "different keys")
        return {k: _join([v[k] for v in values], join(path, k), names, done) for k in first}
    if isinstance(first, (list, tuple)) and type(first) in (list, tuple):
        if not all(type(v) is type(first) and len(v) == len(first) for v in values):
            raise _differ(path, names, "different lengths")
        out = [_join([v[i] for v in values], join(path, i), names, done)
               for i in range(len(first))]
        return out if isinstance(first, list) else tuple(out)
    if is_tensor(first):
        if not all(is_tensor(v) and _same_tensor(first, v) for v in values):
            raise _differ(path, names, "a tensor with other values")
        return first
    if isinstance(first, (Inert, InertTensor)):
        if not all(type(v) is type(first) for v in values):
            raise _differ(path, names, "objects of other classes")
        _join([v.state for v in values], path, names, done)  # the same fields everywhere
        return first
    if not all(type(v) is type(first) and _same_value(v, first) for v in values):
        raise _differ(path, names, "other values")
    return first


def _same_value(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) or (a != a and b != b)  # NaN == NaN here
    except Exception:  # noqa: BLE001 - a value that cannot compare: not known to be the same
        return False


def _same_tensor(a: Any, b: Any) -> bool:
    """The same values (NaN equal to NaN): torch's comparison, so a NativeTensor is read
    through torch here (joining rank files is the torch reader's work)."""
    import torch

    a, b = as_torch(a), as_torch(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return False


def _coordinate(v: Any) -> int | None:
    """Which shard of a 1-D mesh this rank's DTensor holds."""
    mesh = field(field(v, "_spec"), "mesh")
    coord = field(mesh, "_coordinate_on_dim")
    if isinstance(coord, (tuple, list)) and len(coord) == 1 and isinstance(coord[0], int):
        return int(coord[0])
    rank = field(mesh, "_rank")
    ranks = field(mesh, "_rank_map")
    if ranks is None:
        ranks = field(mesh, "mesh")
    if isinstance(rank, int) and is_tensor(ranks):
        if is_native(ranks):
            flat = _flat(ranks.tolist())
            hits = [i for i, r in enumerate(flat) if r == rank]
            return hits[0] if len(hits) == 1 else None
        hits = (ranks.flatten() == rank).nonzero().flatten().tolist()
        return int(hits[0]) if len(hits) == 1 else None
    return None


def _flat(v: Any) -> list[Any]:
    return [x for item in v for x in _flat(item)] if isinstance(v, list) else [v]


def _join_dtensor(values: list[Any], path: str, names: list[str], done: Joined) -> Any:
    where = path or "the top level"
    descs = [describe_dtensor(v, where) for v in values]
    d = descs[0]
    for key, words in (("global_shape", "global shapes"), ("placements", "placements"),
                       ("mesh", "device meshes"), ("dtype", "dtypes")):
        if any(x.get(key) != d.get(key) for x in descs):
            raise _differ(path, names, f"DTensors with other {words}")
    placements, mesh, shape = d.get("placements") or [], d.get("mesh"), d.get("global_shape")
    if mesh is None or len(mesh) != 1 or len(placements) != 1 or shape is None:
        raise CheckpointError(
            f"{where} is a DTensor laid out as {' '.join(placements) or '?'} on a {mesh} "
            "device mesh: optstate joins Shard(dim) or Replicate() shards over a 1-D mesh",
            hint="give each rank file on its own: it is read as that rank's shard")
    coords = [_coordinate(v) for v in values]
    if sorted(c for c in coords if c is not None) != list(range(mesh[0])):
        missing = sorted(set(range(mesh[0])) - set(coords))
        twice = sorted({c for c in coords if c is not None and coords.count(c) > 1})
        parts = []
        if missing:
            parts.append(f"no file holds shard{'s' * (len(missing) != 1)} "
                         f"{', '.join(map(str, missing))}")
        if twice:
            parts.append(f"shard{'s' * (len(twice) != 1)} {', '.join(map(str, twice))} "
                         f"in more than one file")
        if None in coords:
            parts.append(f"{coords.count(None)} file(s) do not say which shard they hold")
        raise CheckpointError(
            f"{where}: the rank files ({', '.join(names)}) do not hold each shard of the "
            f"{mesh[0]}-way mesh once: {'; '.join(parts)}",
            hint="give a folder with one file per rank of one run, or each rank file on "
            "its own")
    local = [field(v, "_local_tensor") for _, v in sorted(zip(coords, values, strict=True),
                                                         key=lambda cv: cv[0])]
    m = re.fullmatch(r"Shard\((\d+)\)", placements[0])
    if m is not None and int(m.group(1)) < len(shape):
        import torch

        whole = torch.cat([as_torch(t).detach() for t in local], dim=int(m.group(1)))
    elif placements[0] == "Replicate()":
        if not all(_same_tensor(local[0], t) for t in local):
            raise _differ(path, names, "replicas with other values")
        whole = local[0]
    else:
        raise CheckpointError(
            f"{where} is a DTensor laid out as {placements[0]}: optstate joins Shard(dim) or "
            "Replicate() shards", hint="give each rank file on its own")
    if list(whole.shape) != shape:
        raise CheckpointError(
            f"{where}: the shards join to {list(whole.shape)}, not the global shape {shape} "
            "the DTensor states", hint="give each rank file on its own")
    done.entries += 1
    done.layouts[f"{placements[0]} on a {mesh} device mesh"] = None
    return whole
