"""The human view: rich renderables built from report dicts. Never prints."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text


def fmt(value: Any) -> str:
    """Numbers short and exact enough to read; everything else as written."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        if value and isinstance(value[0], list):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        return "(" + ", ".join(fmt(v) for v in value) + ")"
    return str(value)


def groups_table(groups: list[dict[str, Any]], title: str = "param_groups") -> Table:
    """One column per group, one row per hyperparameter (optimizers have a dozen: a row
    per group would not fit a terminal). Values that differ between groups are bold."""
    names: list[str] = []
    for g in groups:
        for k in g["hyperparams"]:
            if k not in names:
                names.append(k)
    table = Table(title=title, title_justify="left", title_style="bold")
    table.add_column("hyperparameter")
    for g in groups:
        table.add_column(f"group {g['index']}")
    table.add_row("(params)", *[str(len(g["params"])) for g in groups], style="dim")
    for n in names:
        values = [g["hyperparams"].get(n, "(absent)") for g in groups]
        differs = len({repr(v) for v in values}) > 1
        style = "bold yellow" if differs else ""
        table.add_row(Text(n, style=style), *[Text(fmt(v), style=style) for v in values])
    return table
