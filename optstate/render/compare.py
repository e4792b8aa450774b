"""The human view of ``optstate compare``: one table row per optimizer. Never prints."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .human import fmt


def compare_view(report: dict[str, Any]) -> Group:
    obj = report["objective"]
    head = [(obj["grad"], "bold")]
    if obj["start"] is not None:
        head.append(f" · start {fmt(obj['start'])}")
    if obj["optimum"] is not None:
        head.append(f" · optimum {fmt(obj['optimum'])}")
    head.append(f" · {report['steps']} steps · seed {report['seed']}")
    table = Table(title="final loss after the same steps", title_justify="left",
                  title_style="bold")
    for col in ("run", "optimizer", "settings", "lr", "loss (start)", "loss (final)",
                "distance to optimum", "final params"):
        table.add_column(col, justify="right" if col.startswith(("loss", "dist", "lr")) else
                         "left")
    for r in report["runs"]:
        settings = ", ".join(f"{k}={fmt(v)}" for k, v in r["hyperparams"].items()) or "defaults"
        final = Text("diverged", style="bold red") if r["diverged"] else Text(
            fmt(r["final_loss"]))
        style = "bold green" if r["label"] == report["best"] else ""
        table.add_row(
            Text(r["label"] + (" ★" if style else "")), r["optimizer"], settings, fmt(r["lr"]),
            fmt(r["initial_loss"]), final, fmt(r["distance_to_optimum"]),
            fmt(r["final_params"]) if r["final_params"] is not None else "(large)",
            style=style,
        )
    parts: list[Any] = [Text.assemble(*head), table]
    if report.get("plot"):
        parts.append(Text(f"wrote {report['plot']}", style="green"))
    return Group(*parts)
