"""The human view of ``optstate compare``: one table row per optimizer. Never prints."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from optstate.render.fit import Fit
from optstate.render.human import fmt, fmt_short


def _point(values: list[float | None]) -> str:
    return "(" + ", ".join(fmt_short(v) for v in values) + ")"


def compare_view(report: dict[str, Any]) -> Group:
    obj = report["objective"]
    head: list[Any] = [(obj["grad"], "bold")]
    if obj["start"] is not None:
        head.append(f" · start {_point(obj['start'])}")
    if obj["optimum"] is not None:
        head.append(f" · optimum {_point(obj['optimum'])}")
    head.append(f" · {report['steps']} steps · seed {report['seed']}")
    table = Table()
    for col in ("run", "settings", "loss\n(start)", "loss\n(final)", "distance\nto optimum",
                "final params"):
        numeric = col.startswith(("loss", "dist"))
        # numbers and names never fold or get cut; settings and params wrap instead
        table.add_column(col, justify="right" if numeric else "left",
                         no_wrap=numeric or col == "run")
    for r in report["runs"]:
        name = r["label"]
        if r["label"] != r["optimizer"].lower():
            name += f" ({r['optimizer']})"
        settings = Text(", ".join(f"{k}={fmt(v)}" for k, v in r["hyperparams"].items()))
        if "lr" not in r["hyperparams"]:
            settings.append(("" if not settings.plain else ", ") + f"lr={fmt(r['lr'])}",
                            style="dim")
        final = Text("diverged", style="bold red") if r["diverged"] else Text(
            fmt(r["final_loss"]))
        best = r["label"] == report["best"]
        table.add_row(
            Text(name + (" ★" if best else ""), style="bold green" if best else ""), settings,
            fmt(r["initial_loss"]), final, fmt(r["distance_to_optimum"]),
            _point(r["final_params"]) if r["final_params"] is not None else "(large)",
        )
    parts: list[Any] = [Text.assemble(*head), Fit(table)]
    if report.get("plot"):
        parts.append(Text(f"wrote {report['plot']}", style="green"))
    return Group(*parts)
