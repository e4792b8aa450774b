"""FSDP2 state entries: a ``DTensor`` per entry, read as this rank's shard.

``torch.save(optim.state_dict())`` under ``torch.distributed.fsdp.fully_shard`` writes one
file per rank; each moment (``exp_avg``, ...) is a ``DTensor`` (``io.dtensor`` reads them,
decoded inertly or, with ``--unsafe``, torch's own). A folder of all the ranks' files is
read as one whole state by ``io.dtensor.join_ranks``; one file is read here.

``unpack_dtensors`` (one of ``state.packed._UNPACKERS``) makes each such entry its local
tensor: statistics, warnings and diff see this rank's shard, never a made-up whole, and
``stored[entry]`` says so: ``{"format": "dtensor", "from": [entry], "dtype",
"global_shape", "local_shape", "placements": ["Shard(0)"], "mesh": [2], "rank": 1}``
(``rank``, ``mesh`` and ``global_shape`` only when the spec gives them). The parameter's
shape for naming is the global one (``state.view.slot_shape``).
"""

from __future__ import annotations

from typing import Any

from optstate.base.errors import CheckpointError
from optstate.io.dtensor import describe_dtensor, field, is_dtensor
from optstate.io.native_tensor import is_tensor


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
        local = field(v, "_local_tensor")
        if not is_tensor(local) or is_dtensor(local):
            raise CheckpointError(
                f"state entry {k!r} is a DTensor without its local tensor "
                f"({type(local).__name__} instead): this rank's shard cannot be read")
        out[k] = local
        stored[str(k)] = describe_dtensor(v, str(k))
    return out


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
