"""``inspect`` and ``diff`` across processes: the tensor work split over ranks, merged
exactly, the report built by the same code as on one process.

Two ways in, one computation (``ranked``):

- ``torchrun --nproc-per-node N -m optstate inspect PATH``: every rank runs the command;
  ``init_from_env`` joins the gloo process group torchrun's environment describes
  (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and every rank builds the same report
  (only rank 0's output reaches the terminal: ``_entry.py``).
- ``--workers N``: this process starts N workers (``ranks_worker.py``, through
  ``io/launch.py``: a loopback store, their own sessions, stopped on error), which do the
  tensor work as a process group and hand rank 0's merged results back in a file; this
  process then builds and prints the report.

What ``ranked(build)`` does with ``build`` (a report builder over sources opened once):

1. one pass of ``build`` with ``numeric.precomputed.recording()``: no tensor data is read;
   the record is the list of tensor calls the report needs (each tensor's summary; each
   pair diff compares), in order, the same on every rank (the same code on the same
   files). Every rank opens the sources itself (structure only: LazyTensors, mmap).
2. the calls become work units: a whole tensor (or tensor pair), or, for a tensor of a
   local DCP folder stored in several chunks (one per rank that saved it), each chunk
   (read alone: its byte range of its data file, pre-scanned, ``weights_only=True``).
   Units go by bytes, largest first, to the least loaded rank (ties: the lower rank).
3. each rank computes its units (summaries and comparisons through the one-process
   functions; a chunk's ``kernels.moments``) and ``all_gather_object``s them: every
   rank gets every result, so every rank reaches the same report and exit status without
   a second collective (a rank's error reaches all the same way, and is raised by each:
   rank 0 prints it once).
4. chunked tensors' moments are merged exactly (``kernels.merge_moments``), summaries
   made by ``stats.from_moments``; then ``build`` runs again with
   ``precomputed.using(results)``: the same report code, answered from the results.

Result: the one-process report, except the float sums of chunked tensors (norm, mean,
mean |x|), whose block boundaries differ: within ``numeric.tolerance.sum_rtol(n)`` (the
mean within ``sum_rtol(n) * mean_abs``). Whole-tensor units give the one-process numbers
exactly. (diff with ``--quiet`` stops at the first difference on one process; across
ranks every pair is compared, then the same walk stops at the same place.)

Under torchrun a rank's end is one more exchange (``finish``): exit statuses and ``Error:``
lines reach rank 0, which prints the error, and no rank leaves before rank 0 has printed
(torchrun stops the others as soon as one exits non-zero).

About 440 lines on purpose: the split, the chunk reader, the merge and the ranks'
exchanges (results, errors, the end) are one protocol, read together.

torch is imported only when there is a group to split over (torchrun, ``--workers`` > 1):
one process reads what the native reader can without it (issue #22).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from optstate.base import errors
from optstate.base.errors import (
    CheckpointError,
    ConfigError,
    OptstateError,
    one_line,
    option,
)
from optstate.io.launch import torchrun_rank
from optstate.numeric import precomputed
from optstate.numeric.compare import TensorComparison, compare_tensors
from optstate.numeric.kernels import Moments, merge_moments, moments
from optstate.numeric.stats import TensorSummary, from_moments, splits_into_moments, summarize

T = TypeVar("T")
MAX_WORKERS = 64


@dataclass
class Group:
    """This process's place in the process group the tensor work is split over."""

    rank: int
    world: int
    results_file: Path | None = None  # --workers: rank 0 writes the merged results here


_group: Group | None = None


def init_from_env() -> Group:
    """Join torchrun's process group (gloo, CPU; ``init_method="env://"``)."""
    global _group
    import torch.distributed as dist

    found = torchrun_rank()
    assert found is not None
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=600))
    _group = Group(*found)
    return _group


def init_from_store(store: Any, rank: int, world: int, results_file: Path) -> Group:
    """A ``--workers`` worker joins the parent's store (``io/launch.py``)."""
    global _group
    import torch.distributed as dist

    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))
    _group = Group(rank, world, results_file)
    return _group


def check_workers(workers: int) -> int:
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"{option('workers')} must be between 1 and {MAX_WORKERS}, "
                          f"got {workers}")
    return workers


def ranked(build: Callable[[], T], *, workers: int = 1,
           job: dict[str, Any] | None = None, sources: tuple[Any, ...] = ()) -> T:
    """``build()``, its tensor work split over the process group this process is in, or
    over ``workers`` new processes that re-open the sources from ``job`` (see the module
    docstring); no group and one worker: ``build()`` as it is. What the other processes
    read of remote ``sources`` (``Source.read``) is added to this process's counts, so a
    report's ``bytes_read`` and ``requests`` are those of every process."""
    if _group is None and check_workers(workers) == 1:
        return build()
    with precomputed.recording() as calls:
        done = build()
    if not calls:  # nothing reads tensor data (--no-stats): the report is made already
        return done
    if _group is not None:
        results, reads = _across(calls, _group, sources)
    else:
        results, reads = _in_workers(calls, workers, job or {})
    for source, read in zip(sources, reads, strict=False):
        if source.read is not None and read is not None:
            source.read.add(read["bytes_read"], read["requests"])
            for _ in range(read["retries"]):
                source.read.retried()
    keyed = {c.key: r for c, r in zip(calls, results, strict=True)}
    with precomputed.using(keyed):
        return build()


# ---------------------------------------------------------------- the split

@dataclass(frozen=True)
class Unit:
    call: int  # index into the recorded calls
    chunk: int | None  # a chunk of a DCP tensor, or None: the whole tensor (pair)
    bytes: int


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size()


def units_of(calls: list[precomputed.Call]) -> list[Unit]:
    """The work units of the recorded calls, in a deterministic order."""
    out: list[Unit] = []
    for i, c in enumerate(calls):
        chunks = _chunks(c.tensors[0]) if c.kind == "summary" else []
        if len(chunks) > 1:
            esize = c.tensors[0].element_size()
            for j, ch in enumerate(chunks):
                n = 1
                for s in ch["sizes"]:
                    n *= s
                out.append(Unit(i, j, n * esize))
        else:
            out.append(Unit(i, None, sum(_nbytes(t) for t in c.tensors)))
    return out


def assign(units: list[Unit], world: int) -> list[list[Unit]]:
    """Units by bytes, largest first, each to the least loaded rank (ties: lower rank)."""
    load = [0] * world
    out: list[list[Unit]] = [[] for _ in range(world)]
    for u in sorted(units, key=lambda u: (-u.bytes, u.call, u.chunk or 0)):
        r = min(range(world), key=lambda k: (load[k], k))
        out[r].append(u)
        load[r] += u.bytes
    return out


def _chunks(t: Any) -> list[dict[str, Any]]:
    """The stored chunks of a tensor of a local DCP folder that can be summarised piece by
    piece; [] for any other tensor (a whole unit)."""
    from optstate.io.lazy import LazyTensor

    if not (isinstance(t, LazyTensor) and "dcp_folder" in t.info
            and isinstance(t.info.get("dcp_key"), str) and splits_into_moments(t)):
        return []
    chunks = t.info.get("chunks") or []
    return chunks if all(c.get("file") for c in chunks) else []


_metadata_cache: dict[str, Any] = {}


def read_chunk(t: Any, j: int) -> Any:
    """Chunk ``j`` of the DCP tensor ``t`` alone (a torch.Tensor): its byte range of its
    data file (inside the folder), pre-scanned, loaded with ``weights_only=True``, checked
    against the metadata's sizes and dtype."""
    import torch
    from torch.distributed.checkpoint.metadata import MetadataIndex

    from optstate.io.dcp_metadata import inside, read_metadata, short_repr
    from optstate.io.torch_file import prescan_bytes

    folder = Path(t.info["dcp_folder"])
    key, chunk = t.info["dcp_key"], t.info["chunks"][j]
    md = _metadata_cache.get(str(folder))
    if md is None:
        md = _metadata_cache[str(folder)] = read_metadata(folder)
    info = md.storage_data.get(MetadataIndex(key, torch.Size(chunk["offsets"])))
    if info is None or getattr(info, "transform_descriptors", None):
        raise CheckpointError(f"{folder}: the chunk of {key} at {chunk['offsets']} has no "
                              "plain stored data")
    label = f"{folder / info.relative_path}: the chunk of {short_repr(key)}"
    with open(inside(folder, info.relative_path), "rb") as f:
        f.seek(info.offset)
        data = f.read(info.length)
    if len(data) != info.length:
        raise CheckpointError(f"{label} is truncated", hint="re-copy the checkpoint folder")
    prescan_bytes(data, label)
    try:
        piece = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch's many load errors: one message
        raise CheckpointError(f"cannot read {label}: {str(e).strip().splitlines()[0]}",
                              hint="the checkpoint's data files are damaged or "
                              "truncated") from None
    if (not isinstance(piece, torch.Tensor) or tuple(piece.shape) != tuple(chunk["sizes"])
            or piece.dtype != t.dtype):
        raise CheckpointError(f"{label} does not hold what the metadata says "
                              f"({t.dtype} {tuple(chunk['sizes'])})")
    return piece


def _compute(calls: list[precomputed.Call], mine: list[Unit]) -> list[tuple[int, Any, Any]]:
    """This rank's units: (call, chunk, plain result)."""
    out = []
    for u in mine:
        c = calls[u.call]
        if u.chunk is not None:
            value: Any = asdict(moments(read_chunk(c.tensors[0], u.chunk)))
        elif c.kind == "summary":
            value = asdict(summarize(c.tensors[0]))
        else:
            value = asdict(compare_tensors(*c.tensors, **c.options))
        out.append((u.call, u.chunk, value))
    return out


def _merge(calls: list[precomputed.Call], parts: list[tuple[int, Any, Any]]) -> list[Any]:
    """Every call's result object from the ranks' plain results (chunks merged)."""
    whole: dict[int, Any] = {}
    pieces: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for call, chunk, value in parts:
        if chunk is None:
            whole[call] = value
        else:
            pieces.setdefault(call, []).append((chunk, value))
    out: list[Any] = []
    for i, c in enumerate(calls):
        if i in pieces:
            ms = [Moments(**v) for _, v in sorted(pieces[i], key=lambda p: p[0])]
            out.append(from_moments(c.tensors[0], merge_moments(ms)))
        elif c.kind == "summary":
            out.append(TensorSummary(**{**whole[i], "shape": tuple(whole[i]["shape"])}))
        else:
            out.append(TensorComparison(**whole[i]))
    return out


def _signature(calls: list[precomputed.Call]) -> list[list[Any]]:
    return [[c.kind, *([list(t.shape), str(t.dtype)] for t in c.tensors)] for c in calls]


def _reads(sources: tuple[Any, ...]) -> list[dict[str, int] | None]:
    return [s.read.to_dict() if s.read is not None else None for s in sources]


def _sum_reads(per_rank: list[list[dict[str, int] | None]]) -> list[dict[str, int] | None]:
    out: list[dict[str, int] | None] = []
    for reads in zip(*per_rank, strict=True):
        have = [r for r in reads if r is not None]
        out.append({k: sum(r[k] for r in have) for k in ("bytes_read", "requests",
                                                        "retries")} if have else None)
    return out


def _across(calls: list[precomputed.Call], group: Group, sources: tuple[Any, ...] = ()
            ) -> tuple[list[Any], list[dict[str, int] | None]]:
    """This rank's share, all-gathered, merged, and what the other ranks read of the
    ``sources``; an error on any rank raised on every one."""
    try:
        units = assign(units_of(calls), group.world)[group.rank]
        payload: Any = ("ok", _compute(calls, units), _reads(sources))
    except OptstateError as e:
        payload = ("error", type(e).__name__, e.message, e.hint)
    except Exception as e:  # noqa: BLE001 - reported by every rank, as one line
        payload = ("error", "OptstateError", f"rank {group.rank} failed: "
                   f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}",
                   None)
    gathered = _gather(group, payload)
    for r, p in enumerate(gathered):
        if p[0] == "final":  # that rank ended before the gather (finish): its error here
            raise _peer_error(r, p)
    for p in gathered:
        if p[0] == "error":
            cls = getattr(errors, p[1], OptstateError)
            raise cls(p[2], p[3])
    results = _merge(calls, [x for p in gathered for x in p[1]])
    if group.results_file is not None and group.rank == 0:  # for the parent: all ranks'
        group.results_file.write_text(json.dumps(
            {"signature": _signature(calls), "results": [asdict(r) for r in results],
             "reads": _sum_reads([p[2] for p in gathered])}))
    return results, _sum_reads([p[2] for r, p in enumerate(gathered) if r != group.rank])


def _gather(group: Group, payload: Any) -> list[Any]:
    import torch.distributed as dist

    gathered: list[Any] = [None] * group.world
    try:
        dist.all_gather_object(gathered, payload)
    except Exception as e:  # noqa: BLE001 - gloo's words for a rank that died or hung
        raise OptstateError(f"rank {group.rank} lost the other ranks: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}",
                            hint="another rank was killed or stopped; its own output "
                            "says why") from None
    return gathered


def _peer_error(rank: int, final: Any) -> OptstateError:
    """The error of a rank that ended (a ``("final", status, lines)`` payload), as the
    ``Error:``/``Hint:`` lines it printed."""
    _, code, lines = final
    error = next((ln[len("Error: "):] for ln in lines if ln.startswith("Error: ")), None)
    hint = next((ln[len("Hint: "):] for ln in lines if ln.startswith("Hint: ")), None)
    if code in (0, 1):  # it finished without the tensor work this rank recorded
        e = OptstateError(f"rank {rank} found no tensor data to read where rank 0 did: "
                          "do the ranks see the same checkpoint?")
    elif error is None:
        e = OptstateError(f"rank {rank} exited with status {code}")
    else:
        e = OptstateError(error, hint)
    e.exit_code = code if code not in (0, 1) else 2
    return e


def error_lines(text: str) -> list[str]:
    """The last ``Error:`` line of a rank's stderr and the ``Hint:`` line after it."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Error: ")]
    if not starts:
        return []
    i = starts[-1]
    return lines[i:i + 2] if i + 1 < len(lines) and lines[i + 1].startswith("Hint: ") \
        else lines[i:i + 1]


def finish(code: int, stderr_text: Callable[[], str]) -> int:
    """A torchrun rank's last step (``_entry.py``): every rank's exit status and error
    lines reach every rank (``stderr_text``: what this rank printed there); rank 0 prints
    another rank's error when it has none of its own; every rank waits until rank 0 has
    printed (a barrier, 60 s at most), and all return the same status. A rank that ends
    while others wait in ``_across``'s gather meets them there (its payload is
    ``"final"``, raised by them as its error), and gathers again until every rank's
    payload is final: the same number of collectives on every rank."""
    import torch.distributed as dist

    group = _group
    if group is None or not dist.is_initialized():
        return code
    mine = ("final", code, error_lines(stderr_text()) if code not in (0, 1) else [])
    try:
        while True:
            gathered = _gather(group, mine)
            if all(p[0] == "final" for p in gathered):
                break
    except OptstateError as e:  # a rank died: nothing to wait for
        if group.rank == 0 and code in (0, 1):
            print(f"Error: {e.message}", file=sys.stderr)
            code = e.exit_code
        return code
    codes = [p[1] for p in gathered]
    status = codes[0]
    if status in (0, 1):
        bad = next((r for r, c in enumerate(codes) if c not in (0, 1)), None)
        if bad is not None:
            status = codes[bad]
            if group.rank == 0:
                e = _peer_error(bad, gathered[bad])
                print(f"Error: {one_line(e.message)}", file=sys.stderr)
                if e.hint:
                    print(f"Hint: {one_line(e.hint)}", file=sys.stderr)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    with contextlib.suppress(Exception):  # rank 0 has printed: the others may leave
        dist.monitored_barrier(timeout=timedelta(seconds=60))
    return status


def _in_workers(calls: list[precomputed.Call], workers: int, job: dict[str, Any]
                ) -> tuple[list[Any], list[dict[str, int] | None]]:
    """Start ``workers`` processes on ``job`` (they open the sources again and record the
    same calls), wait, read rank 0's merged results."""
    from optstate.io import launch

    work = Path(tempfile.mkdtemp(prefix="optstate-ranks-"))
    procs: list[Any] = []
    try:
        with launch.rendezvous(workers) as port:
            (work / "job.json").write_text(json.dumps(
                {**job, "world_size": workers, "port": port, "work": str(work),
                 "parent": os.getpid()}))
            procs = [launch.start_worker("optstate.analysis.ranks_worker",
                                         [str(work / "job.json"), str(r)], r, work)
                     for r in range(workers)]
            launch.wait(procs, work, timeout=24 * 3600.0, what="the workers")
        data = json.loads((work / "results.json").read_text())
    finally:
        launch.stop(procs)
        shutil.rmtree(work, ignore_errors=True)
    if data["signature"] != json.loads(json.dumps(_signature(calls))):
        raise CheckpointError("the workers found other tensors than this process: was the "
                              "checkpoint changed while it was read?")
    return _from_plain(calls, data["results"]), data["reads"]


def _from_plain(calls: list[precomputed.Call], values: list[dict[str, Any]]) -> list[Any]:
    return [TensorSummary(**{**v, "shape": tuple(v["shape"])}) if c.kind == "summary"
            else TensorComparison(**v) for c, v in zip(calls, values, strict=True)]
