"""One rank of ``simulate --world-size N`` (``python -m optstate.sim.distributed_worker
JOB RANK``), started by ``distributed.py``.

Each rank builds the run of the spec exactly as the single-process ``simulate`` does
(same seeded initial weights), hands the parameters to FSDP2 (``fully_shard`` on a CPU
``DeviceMesh``: every parameter split along dim 0), builds the optimizer on the sharded
parameters and steps it with the one training loop (``loop.run_loop``). What a rank
supplies to that loop: the whole parameters (``full_tensor()``, gathered), the synthetic
gradient computed from the whole parameter (so it is the single-process gradient) and
split to this rank's shard, and ``dcp.save`` of its shards after the steps asked for
(``get_optimizer_state_dict`` layout: state keyed by parameter name). Rank 0 also writes
the gathered full state and the history for the parent to report.
"""

from __future__ import annotations

import io
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from optstate.base.errors import ConfigError
from optstate.io import launch
from optstate.sim.build import build, build_scheduler
from optstate.sim.config import RunSpec, spec_from_dict
from optstate.sim.gradients import GradientSource, accumulate
from optstate.sim.loop import run_loop


def nest_module(names: list[str], params: list[torch.Tensor]) -> torch.nn.Module:
    """A module whose parameters have exactly ``names`` as fully qualified names."""
    root = torch.nn.Module()
    for name, p in zip(names, params, strict=True):
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not part or not part.isidentifier():
                raise ConfigError(f"parameter name {name!r} cannot be a module path")
            child = getattr(mod, part, None)
            if child is None:
                child = torch.nn.Module()
                mod.add_module(part, child)
            elif not isinstance(child, torch.nn.Module):
                raise ConfigError(f"parameter names clash at {name!r}")
            mod = child
        if not leaf or hasattr(mod, leaf):
            raise ConfigError(f"parameter name {name!r} clashes with another")
        mod.register_parameter(leaf, torch.nn.Parameter(p.detach().clone()))
    return root


def run_worker(job: dict[str, Any], rank: int) -> None:
    """One rank of the sharded runs (see the module docstring)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    world = job["world_size"]
    specs = [spec_from_dict(d, "the sharded run's config") for d in job["specs"]]
    built = [build(spec) for spec in specs]  # the single-process run's seeded weights
    torch.set_num_threads(1)  # N workers share this machine's cores
    store = launch.join_store(job["port"], world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        mesh = init_device_mesh("cpu", (world,))
        for i, (spec, b, every) in enumerate(zip(specs, built, job["every"], strict=True)):
            saves = [(int(k), str(t)) for k, t in job["saves"]] if i == 0 else []
            _run_one(spec, b, mesh, rank, saves, every, Path(job["work"]) / f"result.{i}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_one(spec: RunSpec, built: Any, mesh: Any, rank: int, saves: list[tuple[int, str]],
             every: int, result_file: Path) -> None:
    """One sharded run on an initialised process group: ``dcp.save`` into each folder of
    ``saves`` after its step; rank 0 writes ``result_file``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    model = nest_module(built.names, built.params)
    fully_shard(model, mesh=mesh)
    params = [model.get_parameter(n) for n in built.names]
    groups = []
    for gi, g in enumerate(built.optimizer.param_groups):
        hyper = {k: v for k, v in g.items() if k not in ("params", "param_names")}
        groups.append({**hyper, "params": [p for p, gj in zip(params, built.group_of,
                                                                strict=True) if gj == gi]})
    opt = type(built.optimizer)(groups)
    sched = build_scheduler(spec.scheduler, opt) if spec.scheduler else None

    def full() -> list[torch.Tensor]:
        with torch.no_grad():
            return [p.detach().full_tensor() for p in params]

    def fill_grads(source: GradientSource, step: int) -> None:
        # The whole parameters as leaves of a fresh graph: the source differentiates
        # its objective with autograd, exactly as on one process.
        whole = [t.requires_grad_(True) for t in full()]
        grads = source.gradients(whole, step)
        if grads is not None:
            grads = [distribute_tensor(g.detach(), p.device_mesh, p.placements,
                                       src_data_rank=None)
                     for g, p in zip(grads, params, strict=True)]
        accumulate(params, grads)

    def save_due(done: int) -> None:
        for k, folder in saves:
            if k == done:  # a collective: every rank writes its shards
                dcp.save(get_optimizer_state_dict(model, opt), checkpoint_id=folder)

    # refusals=(): what torch raises at step() reaches the parent as this rank's error
    history = run_loop(spec, params, opt, sched, start=0, every=every, whole=full,
                       fill_grads=fill_grads, save_due=save_due, refusals=())
    gathered = get_optimizer_state_dict(
        model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    whole = full()
    if rank == 0:
        buf = io.BytesIO()
        torch.save({
            "optimizer": gathered, "params": whole,
            "scheduler": sched.state_dict() if sched is not None else None,
            "history": {"step": history.step, "loss": history.loss,
                        "param_norm": history.param_norm, "lr": history.lr,
                        "point": [list(x) for x in history.point],
                        "record_every": history.record_every},
        }, buf)
        result_file.write_bytes(buf.getvalue())


# The launcher's guard, under the name this module's tests know it by.
_die_with_parent = launch.die_with_parent


def _main(argv: list[str]) -> int:
    return launch.worker_main(argv, run_worker)


if __name__ == "__main__":
    launch.exit_now(_main(sys.argv[1:]))  # see launch.exit_now
