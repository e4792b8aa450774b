"""The human view of ``optstate set``: the changes table and what was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from optstate.render.fit import Fit
from optstate.render.human import fmt


def set_view(report: dict[str, Any]) -> Group:
    parts: list[Any] = []
    where = report["location"] or "(top level)"
    head = f"{report['source']} · optimizer state at {where}"
    if report["scheduler_location"]:
        head += f" · scheduler at {report['scheduler_location']}"
    parts.append(Text(head))
    if report["changes"]:
        table = Table(title="changes" + (" (dry run: nothing written)" if report["dry_run"]
                                         else ""), title_justify="left", title_style="bold")
        for col in ("in", "group", "key", "old", "new"):
            table.add_column(col, justify="right" if col == "group" else "left")
        files = {c["file"] for c in report["changes"]}
        order = sorted(report["changes"], key=lambda c: (
            c["file"], c["target"], -1 if c["group"] is None else c["group"]))
        for c in order:
            where = c["target"] if len(files) == 1 else f"{c['file']} ({c['target']})"
            group = "" if c["group"] is None else str(c["group"])
            table.add_row(where, group, c["key"], _exact(c["old"]),
                          Text(_exact(c["new"]), style="bold green"))
        parts.append(Fit(table))
    for out in report["outputs"]:
        n = len(report["changes"]) if len(report["outputs"]) == 1 else sum(
            Path(out).name == c["file"] for c in report["changes"])
        count = report["verified"].get(out)
        proof = (f" (re-read and compared: {count} values, only the {n} change"
                 f"{'s' * (n != 1)} above differ)" if count is not None else "")
        parts.append(Text(f"wrote {out}{proof}", style="green"))
    trial = report.get("trial")
    if trial == "ok":
        parts.append(Text("torch trial: a fresh optimizer loads the new state and steps: ok",
                          style="dim"))
    elif trial is not None:
        parts.append(Text(f"torch trial: a fresh optimizer loads the new state and its step() "
                          f"fails: {trial}", style="bold red"))
    for note in report["notes"]:
        parts.append(Text(f"note: {note}", style="yellow"))
    return Group(*parts)


def _exact(value: Any) -> str:
    """Floats in full (0.010000000000000002 is not 0.01: the table must show why a value
    that looks unchanged was changed)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "(" + ", ".join(_exact(v) for v in value) + ")"
    return fmt(value)
