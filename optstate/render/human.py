"""The human view: rich renderables built from report dicts. Never prints."""

from __future__ import annotations

from typing import Any

from rich.console import Group
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


def state_table(params: list[dict[str, Any]], title: str = "state") -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    for col in ("param", "group", "name", "entry", "shape", "dtype", "norm", "min", "max",
                "mean"):
        table.add_column(col, justify="right" if col in ("param", "group") else "left")
    for p in params:
        first = True
        entries = p["state"].items() or [("(no state)", None)]
        for entry, rep in entries:
            lead = [str(p["position"]), str(p["group"]), p.get("name") or ""] if first else [
                "", "", ""]
            first = False
            if rep is None:
                table.add_row(*lead, Text(entry, style="dim"), *[""] * 6)
            elif "value" in rep:
                table.add_row(*lead, entry, "scalar", rep.get("dtype", ""), fmt(rep["value"]),
                              "", "", "")
            elif "shape" in rep:
                table.add_row(*lead, entry, "x".join(map(str, rep["shape"])) or "scalar",
                              rep["dtype"], fmt(rep["norm"]), fmt(rep["min"]), fmt(rep["max"]),
                              fmt(rep["mean"]))
            else:
                table.add_row(*lead, entry, "list", "", f"{len(rep.get('items', []))} items",
                              "", "", "")
    return table


def simulate_view(report: dict[str, Any]) -> Group:
    cfg = report["config"]
    head = Text.assemble(
        (report["optimizer"], "bold"),
        f" · steps {report['start_step']} → {report['final_step']}"
        f" · grad {cfg['grad']} · zero_grad {cfg['zero_grad']} · seed {cfg['seed']}",
    )
    parts: list[Any] = [head, groups_table(report["param_groups"])]
    values = Table(title="parameters (final)", title_justify="left", title_style="bold")
    for col in ("param", "group", "name", "shape", "values"):
        values.add_column(col)
    for p in report["params"]:
        values.add_row(str(p["position"]), str(p["group"]), p["name"],
                       "x".join(map(str, p["shape"])) or "scalar",
                       fmt(p["values"]) if "values" in p else "(large)")
    parts += [values, state_table(report["params"], "optimizer state (final)")]
    h = report["history"]
    if h["loss"] and h["loss"][-1] is not None:
        parts.append(Text(f"loss {fmt(h['loss'][0])} → {fmt(h['loss'][-1])}"))
    if report["scheduler"]:
        s = report["scheduler"]
        parts.append(Text(f"scheduler {s['name']}: last_epoch {s['last_epoch']}, "
                          f"last lr {fmt(s['last_lr'])}"))
    for path in report["saved"]:
        parts.append(Text(f"saved {path}", style="green"))
    return Group(*parts)
