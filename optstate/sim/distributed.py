"""``simulate --world-size N``: the same synthetic run, sharded over N processes with FSDP2.

N worker processes (``python -m optstate.sim.distributed_worker``, one rank each: see that
module) form a gloo process group on this machine (CPU only, loopback only). Each steps
its shards of the run with the one training loop of ``loop.py``, so a sharded run gives
the single-process numbers bit for bit. Every rank writes its shards with ``dcp.save``
(``get_optimizer_state_dict`` layout: state keyed by parameter name), the format
multi-node FSDP training writes; rank 0 also sends the gathered full state back so the
parent can report it like a single-process run.

The parent process owns everything that outlives the workers: the rendezvous store (a
``TCPStore`` listening on 127.0.0.1 only, on a port the OS picks, held open by the parent
so no other program can take it; gloo is pinned to the loopback interface), the temp
folder the checkpoint is written to (renamed to ``--save`` only when every rank
succeeded), and the workers themselves (killed on the first error, on a timeout and on
Ctrl-C; they run in their own session, so a terminal's Ctrl-C reaches the parent, which
stops them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from optstate.base import interrupt
from optstate.base.debug import debug_enabled
from optstate.base.errors import ConfigError, OptstateError, option
from optstate.io import launch
from optstate.io.atomic import Staged
from optstate.io.dcp_write import check_dir_writable, dcp_to_file
from optstate.io.source import open_source
from optstate.io.torch_file import check_writable
from optstate.numeric.trees import verify_copy
from optstate.sim.build import build
from optstate.sim.config import RunSpec, validate
from optstate.sim.distributed_worker import nest_module
from optstate.sim.loop import History, resolve_record_every
from optstate.sim.simulate import (
    SimulationResult,
    check_record_every,
    check_save_every,
    save_targets,
)

MAX_WORLD_SIZE = 16
# Optimizers that cannot run on FSDP2 shards here, and why (checked against torch 2.13:
# every other torch.optim optimizer gives the single-process state bit for bit).
UNSHARDABLE = {
    "lbfgs": "LBFGS flattens all parameters into one vector; FSDP2 does not support it",
    "sparseadam": "SparseAdam needs sparse gradients; FSDP2 shards are dense",
    "adafactor": "Adafactor keeps row and column statistics of whole matrices, which "
                 "DTensor cannot update in place on a shard",
    "muon": "Muon orthogonalizes whole matrices (matrix products across shards), so the "
            "sharded update is not the single-process one bit for bit",
    "rprop": "torch's DTensor cannot run Rprop's masked in-place update on a shard",
}

# A --save name with one of these suffixes gets one consolidated torch.save file (what
# ``optstate convert FOLDER FILE`` makes of the DCP folder); any other name a DCP folder.
FILE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin", ".ckpt")


def saves_file(target: Path) -> bool:
    """Whether ``--world-size --save target`` writes one file (a file suffix, and not an
    existing folder) rather than a DCP folder. A name with another suffix is refused: the
    user may have meant either."""
    if target.suffix.lower() in FILE_SUFFIXES and not target.is_dir():
        return True
    if target.suffix and not target.is_dir() and not _is_series_name(target):
        raise ConfigError(
            f"{option('save', target)}: give a folder name (no suffix) for a DCP checkpoint, "
            "or a "
            f"file name ending in {', '.join(FILE_SUFFIXES)} for one torch.save file")
    return False


def _is_series_name(target: Path) -> bool:
    return target.suffix.startswith(".step") and target.suffix[5:].isdigit()


def simulate_sharded(spec: RunSpec, *, world_size: int, save: str | Path | None = None,
                     force: bool = False, timeout: float = 600.0, resume: Any = None,
                     save_every: int | None = None, with_params: bool = False,
                     record_every: int | str = "auto") -> SimulationResult:
    """Run ``spec`` on ``world_size`` processes (FSDP2, gloo, CPU); save the sharded
    optimizer state to the DCP folder ``save``. Returns the gathered result.
    ``save_every`` also saves every N steps as ``NAME.step00000N`` folders, as the
    single-process run names its series; the history is recorded as ``simulate``'s
    (``record_every``). (``resume`` and ``with_params`` are
    single-process features; they are refused here rather than silently ignored.)"""
    for name, value in (("resume", resume), ("with_params", with_params)):
        if value:
            raise ConfigError(f"{option(name)} does not work with {option('world_size')} yet",
                              hint=f"drop {option(name)}, or run on one process")
    return simulate_sharded_many([spec], world_size=world_size, save=save, force=force,
                                 timeout=timeout, save_every=save_every,
                                 record_every=record_every)[0]


def _check_numpy() -> None:
    """numpy is optional (pyproject's ``plot`` extra), but torch.distributed.checkpoint's
    save gathers the ranks' plans with ``gather_object``, which goes through numpy:
    without it every rank would fail mid-save. Said before any process starts."""
    try:
        import numpy  # noqa: F401 - imported by torch already when it is installed
    except ImportError:
        raise ConfigError("saving a sharded run needs numpy (torch.distributed.checkpoint "
                          "gathers the ranks' save plans through it), which is not "
                          "installed: pip install numpy") from None


def simulate_sharded_many(specs: list[RunSpec], *, world_size: int,
                          save: str | Path | None = None, force: bool = False,
                          timeout: float = 600.0, save_every: int | None = None,
                          record_every: int | str = "auto") -> list[SimulationResult]:
    """Several runs, one after the other, in one set of ``world_size`` processes (the
    processes' start-up is most of a small run's cost). ``save`` (and ``save_every``) are
    for the first run."""
    if not 1 <= world_size <= MAX_WORLD_SIZE:
        raise ConfigError(f"{option('world_size')} must be between 1 and {MAX_WORLD_SIZE}, got "
                          f"{world_size}")
    check_save_every(save, save_every)
    if save is not None:
        _check_numpy()
    specs = [validate(spec) for spec in specs]
    record_every = check_record_every(record_every)
    built = [_check_shardable(spec) for spec in specs]  # config errors before any process
    every = [resolve_record_every(record_every, spec.steps, sum(p.numel() for p in b.params))
             for spec, b in zip(specs, built, strict=True)]
    targets = save_targets(save, save_every, 0, specs[0].steps)  # (after step, path)
    for _, target in targets:
        if saves_file(target):
            check_writable(target, force, kind="torch")
        else:
            check_dir_writable(target, force)

    work: Path | None = None
    temps: list[Path] = []  # one temp folder beside each target, renamed at the end
    procs: list[subprocess.Popen[bytes]] = []
    notes: list[str] = []  # leftovers of interrupted writes found beside the targets
    stages: list[Staged] = []  # the DCP folders, published when every rank succeeded
    try:
        work = Path(tempfile.mkdtemp(prefix="optstate-dist-"))
        for i, (_, target) in enumerate(targets):
            if saves_file(target):  # DCP here first, then one consolidated file
                temps.append(work / f"save.{i}")
            else:
                stages.append(Staged(target, force=force, folder=True, kind="dcp",
                                     notes=notes))
                temps.append(stages[-1].path)
        with launch.rendezvous(world_size) as port:
            job = {"world_size": world_size, "port": port,
                   "specs": [spec.to_dict() for spec in specs], "every": every,
                   "saves": [[k, str(t)] for (k, _), t in zip(targets, temps, strict=True)],
                   "work": str(work), "parent": os.getpid()}
            (work / "job.json").write_text(json.dumps(job))
            procs = [launch.start_worker("optstate.sim.distributed_worker",
                                         [str(work / "job.json"), str(rank)], rank, work)
                     for rank in range(world_size)]
            try:
                launch.wait(procs, work, timeout)
            except OptstateError as e:
                if debug_enabled():  # keep the workers' logs
                    keep = Path(tempfile.mkdtemp(prefix="optstate-dist-logs-"))
                    for log in work.glob("rank*.log"):
                        shutil.copy(log, keep / log.name)
                    e.hint = f"the workers' full output is in {keep}"
                raise
        results = [_result(spec, work / f"result.{i}.pt", b)
                   for i, (spec, b) in enumerate(zip(specs, built, strict=True))]
        for (_, target), tmp in zip(targets, temps, strict=True):
            if saves_file(target):  # written, then read back and compared as convert does
                written = dcp_to_file(tmp, target, force=force, notes=notes)
                verify_copy(written, open_source(target, mmap=True).obj)
        with interrupt.deferred():
            for stage in stages:
                stage.publish()
        results[0].saved = [target for _, target in targets]
        results[0].warnings += notes
        return results
    finally:
        launch.stop(procs)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        for stage in stages:
            stage.discard()


# The launcher's error reading, under the name this module's tests know it by.
_worker_error = launch.worker_error


def _check_shardable(spec: RunSpec) -> Any:
    """Build ``spec`` here (its config errors, before any process starts) and refuse what
    cannot run on FSDP2 shards."""
    if spec.optimizer.lower() in UNSHARDABLE:
        raise ConfigError(
            f"{option('world_size')}: {UNSHARDABLE[spec.optimizer.lower()]}",
            hint=f"drop {option('world_size')}, or pick another optimizer",
        )
    built = build(spec)
    for name, p in zip(built.names, built.params, strict=True):
        if p.dim() == 0:
            raise ConfigError(f"parameter {name} is a scalar; FSDP2 shards along dim 0, so "
                              "sharded runs need parameters with at least one dimension")
    nest_module(built.names, built.params)  # names that cannot be module paths: fail here
    return built


def _result(spec: RunSpec, file: Path, built: Any) -> SimulationResult:
    """The single-process view of a sharded run: rank 0's gathered state, loaded
    (safely) into a freshly built optimizer."""
    from optstate.io.torch_file import load_torch_file

    data = load_torch_file(file).obj
    names = built.names
    positions = {n: i for i, n in enumerate(names)}
    full = data["optimizer"]
    state = {positions[k]: v for k, v in full["state"].items()}
    groups = [{**g, "params": [positions[n] for n in g["params"]]} for g in full["param_groups"]]
    built.optimizer.load_state_dict({"state": state, "param_groups": groups})
    with torch.no_grad():
        for p, value in zip(built.params, data["params"], strict=True):
            p.copy_(value)
    if built.scheduler is not None and data["scheduler"] is not None:
        built.scheduler.load_state_dict(data["scheduler"])
    h = data["history"]
    history = History(step=h["step"], loss=h["loss"], param_norm=h["param_norm"], lr=h["lr"],
                      point=[tuple(x) for x in h["point"]], record_every=h["record_every"])
    return SimulationResult(spec, built.params, names, built.group_of, built.optimizer,
                            built.scheduler, history, 0, spec.steps, [], [])
