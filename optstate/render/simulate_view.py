"""The human view of a simulate report (rich renderables; never prints).

One header line, the param_groups table, then the final state per parameter: for each
parameter its values and every state entry, as values where the tensor is small (the
tutorial's 2x2) and as statistics where it is not.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from optstate.base.values import format_shape
from optstate.render.fit import Fit
from optstate.render.human import fmt, fmt_values, groups_table


def _summary(rep: dict[str, Any]) -> str:
    if "values" in rep:
        return fmt_values(rep["values"])
    if "value" in rep:
        return fmt(rep["value"])
    if "items" in rep:
        return f"list of {len(rep['items'])}"
    if "norm" in rep:
        return (f"norm {fmt(rep['norm'])}  min {fmt(rep['min'])}  max {fmt(rep['max'])}  "
                f"mean {fmt(rep['mean'])}")
    return ""


def state_per_param(params: list[dict[str, Any]]) -> Fit:
    table = Table(title="final state per parameter", title_justify="left",
                  title_style="bold")
    table.add_column("param", no_wrap=True)
    table.add_column("entry", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("values (or statistics)", overflow="fold")
    for p in params:
        lead = f"{p['position']} {p['name']}\ngroup {p['group']}"
        own = fmt_values(p["values"]) if "values" in p else _summary(p.get("summary", {}))
        table.add_row(lead, Text("(value)", style="dim"), format_shape(p["shape"]), own)
        if not p["state"]:
            table.add_row("", Text("(no state)", style="dim"), "", "")
        for name, rep in p["state"].items():
            shape = (format_shape(rep["shape"]) if "shape" in rep
                     else format_shape(()) if "value" in rep else "")
            table.add_row("", name, shape, _summary(rep))
        table.add_section()
    return Fit(table, sub=1)


def simulate_view(report: dict[str, Any]) -> Group:
    cfg = report["config"]
    head = Text.assemble(
        (report["optimizer"], "bold"),
        f" · steps {report['start_step']} → {report['final_step']}"
        f" · grad {cfg['grad']} · zero_grad {cfg['zero_grad']} · seed {cfg['seed']}",
    )
    parts: list[Any] = [head, groups_table(report["param_groups"]),
                        state_per_param(report["params"])]
    h = report["history"]
    if h["loss"] and h["loss"][-1] is not None:
        parts.append(Text(f"loss {fmt(h['loss'][0])} → {fmt(h['loss'][-1])}"))
    if report["scheduler"]:
        s = report["scheduler"]
        parts.append(Text(f"scheduler {s['name']}: last_epoch {s['last_epoch']}, "
                          f"last lr {fmt(s['last_lr'])}"))
    if report.get("world_size"):  # simulate --world-size (optstate/sim/distributed.py)
        parts.append(Text(f"sharded over {report['world_size']} processes (FSDP2 on a CPU "
                          "mesh, gloo); the state above is gathered from the shards"
                          + ("; saved as a DCP folder" if report["saved"] else "")))
    for path in report["saved"]:
        parts.append(Text(f"saved {path}", style="green"))
    return Group(*parts)
