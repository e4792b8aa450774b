"""The plain-data report of a simulation (schema ``optstate.simulate/1``)."""

from __future__ import annotations

from typing import Any

from optstate.sim.simulate import SimulationResult
from optstate.state.report import entry_report, groups_report, params_report, plain
from optstate.state.view import OptimizerStateView

# Parameters up to this many elements have their values in the report (a 2x2 or 3x3
# like the tutorial); bigger ones only their statistics.
VALUES_UP_TO = 16


def simulate_report(result: SimulationResult) -> dict[str, Any]:
    view = OptimizerStateView.from_state_dict(result.optimizer_state)
    params = params_report(view)
    for entry, p in zip(params, result.params, strict=True):
        entry["name"] = entry["name"] or result.names[entry["position"]]
        entry["shape"] = list(p.shape)
        if p.numel() <= VALUES_UP_TO:
            entry["values"] = plain(p.detach().tolist())
        else:
            entry["summary"] = entry_report(p.detach())
        for name, value in list(view.params[entry["position"]].state.items()):
            if hasattr(value, "numel") and 0 < value.numel() <= VALUES_UP_TO and value.dim() > 0:
                entry["state"][str(name)]["values"] = plain(value.tolist())
    h = result.history
    sched = result.scheduler_state
    return {
        "schema": "optstate.simulate/1",
        "optimizer": type(result.optimizer).__name__,
        "config": result.spec.to_dict(),
        "start_step": result.start_step,
        "final_step": result.final_step,
        "param_groups": groups_report(view),
        "params": params,
        "scheduler": None if sched is None else {
            "name": type(result.scheduler).__name__,
            "last_epoch": plain(sched.get("last_epoch")),
            "last_lr": plain(sched.get("_last_lr")),
        },
        "history": {
            # recorded at the start, every record_every-th step and the last (--record-every)
            "record_every": h.record_every,
            "step": h.step,
            "loss": [plain(x) for x in h.loss],
            "param_norm": [plain(x) for x in h.param_norm],
            "lr": [[plain(x) for x in row] for row in h.lr],
            # the (x, y) trajectory of a run with two parameter elements, else []
            "point": [[plain(x), plain(y)] for x, y in h.point],
        },
        "saved": [str(p) for p in result.saved],
        "warnings": list(result.warnings),
    }
