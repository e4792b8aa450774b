"""The human view: rich renderables built from report dicts. Never prints."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from optstate.render.fit import Fit


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


def fmt_short(value: float | None) -> str:
    """A measure to 4 significant digits, '–' for none: cells of tables that must fit 80
    columns (diff's metrics, histogram ends, compare's points; --json has every digit)."""
    return "–" if value is None else f"{value:.4g}"


def fmt_values(values: Any) -> str:
    """Tensor values (nested lists) as numpy-like rows: [[1, 2], [3, 4]]; unlike ``fmt``,
    which writes a hyperparameter's list as the tuple it was (betas)."""
    if isinstance(values, list):
        return "[" + ", ".join(fmt_values(v) for v in values) + "]"
    return fmt(values)


def groups_table(groups: list[dict[str, Any]], title: str = "param_groups",
                 max_columns: int = 4) -> Fit | Group:
    """One column per group, one row per hyperparameter (optimizers have a dozen: a row
    per group would not fit a terminal). Values that differ between groups are bold and
    marked ``*`` (the mark survives NO_COLOR and pipes). Past ``max_columns`` groups: one
    row per group with only the hyperparameters that differ, the rest listed once."""
    names: list[str] = []
    for g in groups:
        for k in g["hyperparams"]:
            if k not in names:
                names.append(k)
    differ = {n for n in names
              if len({repr(g["hyperparams"].get(n, "(absent)")) for g in groups}) > 1}
    if len(groups) > max_columns:
        return _groups_by_row(groups, names, differ, title)
    table = Table(title=title, title_justify="left", title_style="bold",
                  caption="* differs between groups" if differ else None,
                  caption_justify="left")
    table.add_column("hyperparameter")
    for g in groups:
        table.add_column(f"group {g['index']}")
    table.add_row("(params)", *[str(len(g["params"])) for g in groups], style="dim")
    for n in names:
        values = [g["hyperparams"].get(n, "(absent)") for g in groups]
        style = "bold yellow" if n in differ else ""
        label = f"{n} *" if n in differ else n
        table.add_row(Text(label, style=style), *[Text(fmt(v), style=style) for v in values])
    return Fit(table, head_keys=False)


def _groups_by_row(groups: list[dict[str, Any]], names: list[str], differ: set[str],
                   title: str) -> Group:
    table = Table(title=title, title_justify="left", title_style="bold")
    cols = [n for n in names if n in differ]
    for col in ["group", "params", *cols]:
        table.add_column(col, justify="right" if col in ("group", "params") else "left")
    for g in groups:
        table.add_row(str(g["index"]), str(len(g["params"])),
                      *[fmt(g["hyperparams"].get(n, "(absent)")) for n in cols])
    same = [f"{n}={fmt(groups[0]['hyperparams'].get(n))}" for n in names if n not in differ]
    note = (f"{len(groups)} groups: columns show the hyperparameters that differ; same in "
            f"every group: {', '.join(same) or '(none)'}")
    return Group(Fit(table), Text(note, style="dim"))
