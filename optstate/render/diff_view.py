"""The human view of a diff report (schema ``optstate.diff/1``): rich renderables only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from optstate.base.values import format_shape
from optstate.render.fit import Fit
from optstate.render.human import fmt, fmt_short
from optstate.render.inspect_view import Header, read_line, reader_line
from optstate.render.inspect_view import names_line as inspect_names


def _short(value: Any) -> str:
    """A one-cell rendering of a before/after value, whole (a long one wraps between
    words, or the table folds: optstate/render/fit.py)."""
    if isinstance(value, dict):
        if set(value) == {"shape", "dtype"}:
            text = f"{format_shape(value['shape'])} {value['dtype']}"
        elif "state" in value and "group" in value:  # a parameter on one side only
            entries = ", ".join(value["state"]) or "no state"
            text = f"group {value['group']}: {entries}"
        elif "hyperparams" in value:  # a group on one side only
            n = value["params"]
            text = f"{n} param{'s' * (n != 1)}, " + ", ".join(
                f"{k}={fmt(v)}" for k, v in value["hyperparams"].items())
        else:
            text = "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    elif value is None:
        text = "–"
    else:
        text = fmt(value)
    return text


def _absent(kind: str, side: str) -> bool:
    return (kind == "added" and side == "a") or (kind == "removed" and side == "b")


_KIND_STYLE = {"added": "green", "removed": "red", "values": "yellow", "changed": "yellow",
               "equal": "dim"}


def _path_width(changes: list[dict[str, Any]]) -> int:
    """Paths are what the reader greps for: keep them whole up to 48 characters, so the
    value columns wrap first."""
    return min(48, max((len(c["path"]) for c in changes), default=4))


def _named(changes: list[dict[str, Any]]) -> bool:
    """Whether to add a name column: params matched by position (a path by name shows its
    name already) with a name known for some."""
    return any(c.get("name") is not None and not c["path"].startswith('state["')
               for c in changes)


def _name_cell(c: dict[str, Any]) -> Text:
    return Text(c.get("name") or "")  # a Text: a name is never read as rich markup


def _changes_table(changes: list[dict[str, Any]]) -> Table:
    """Structure and scalars: path, (the param's name), kind, a, b."""
    table = Table(title="changes", title_justify="left", title_style="bold")
    table.add_column("path", no_wrap=True, min_width=_path_width(changes))
    named = _named(changes)
    if named:
        table.add_column("name", overflow="fold")
    table.add_column("change", no_wrap=True)
    table.add_column("a", overflow="fold")
    table.add_column("b", overflow="fold")
    for c in changes:
        kind = c["kind"]
        a = Text("(absent)", style="dim") if _absent(kind, "a") else _short(c["before"])
        b = Text("(absent)", style="dim") if _absent(kind, "b") else _short(c["after"])
        label = {"moved": "moved (group)", "reordered": "reordered (position)"}.get(kind, kind)
        table.add_row(c["path"], *([_name_cell(c)] if named else []),
                      Text(label, style=_KIND_STYLE.get(kind, "magenta")), a, b,
                      style="dim" if kind == "equal" else "")
    return table


_NONFINITE_WORDS = (("nan_a_only", "NaN in a only"), ("nan_b_only", "NaN in b only"),
                    ("inf_a_only", "Inf in a only"), ("inf_b_only", "Inf in b only"),
                    ("nan_both", "NaN on both sides"))


def nonfinite_text(m: dict[str, Any], nan_equal: bool) -> str:
    """Why pairs are outside that max|a−b| (finite pairs) cannot show: ``1 NaN in b only,
    3 Inf in a only``; NaN on both sides only when it counts as a difference. Empty when
    there are none."""
    return ", ".join(f"{m[k]} {words}" for k, words in _NONFINITE_WORDS
                     if m.get(k) and (k != "nan_both" or not nan_equal))


def _tensors_table(changes: list[dict[str, Any]], nan_equal: bool) -> Table:
    """Tensor comparisons: how many elements differ (and how many of them for a NaN or
    Inf) and by how much."""
    table = Table(title="tensor values", title_justify="left", title_style="bold")
    table.add_column("path", overflow="fold", min_width=_path_width(changes))
    named = _named(changes)
    if named:
        table.add_column("name", overflow="fold")
    for col in ("outside", "max|a−b|", "max rel", "‖a‖", "‖b‖"):
        table.add_column(col, justify="right", no_wrap=True)
    for c in changes:
        m = c["metrics"]
        # views repeating stored elements are compared over their storage (numeric/compare.py)
        of = f"{m['stored']} stored" if "stored" in m else m["numel"]
        table.add_row(c["path"], *([_name_cell(c)] if named else []),
                      f"{m['outside']}/{of}" + (f" ({why})" if (why := nonfinite_text(
                          m, nan_equal)) else ""), fmt_short(m["max_abs"]),
                      fmt_short(m["max_rel"]), fmt_short(m["norm_a"]), fmt_short(m["norm_b"]),
                      style="dim" if c["kind"] == "equal" else "")
    return table


def _entries_table(rows: list[dict[str, Any]], nan_equal: bool) -> Table:
    """The overview per state entry name, for when not every difference is listed."""
    table = Table(title="by state entry", title_justify="left", title_style="bold")
    table.add_column("entry", overflow="fold")
    for col in ("params differ", "elements outside", "max|a−b|"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        outside = f"{r['outside']}/{r['numel']}" if r["numel"] else "–"
        if why := nonfinite_text(r, nan_equal):
            outside += f" ({why})"
        table.add_row(r["entry"], f"{r['differ']}/{r['compared']}", outside,
                      fmt_short(r["max_abs"]), style="" if r["differ"] else "dim")
    return table


def _side(name: str, side: dict[str, Any] | None, kind: str, groups: int, params: int
          ) -> Text:
    text = Text.assemble((f"{name}: ", "bold"), side["path"] if side else "(in memory)")
    if side and side["file"] != side["path"]:
        text.append(f" ({Path(side['file']).name})")
    if side and side["location"]:
        text.append(f" [{side['location']}]", style="dim")
    text.append(f" · {kind}" if kind != "unknown" else "", style="dim")
    text.append(f" · {groups} group{'s' * (groups != 1)}, {params} param{'s' * (params != 1)}",
                style="dim")
    return text


def names_line(naming: dict[str, Any]) -> Header | None:
    """Where each side's names came from, worded as ``inspect`` words it
    (``names a, b: 10 of 10 from the model state_dict at ...``, or a line per side when
    they differ), wrapped under its value column; nothing when neither side is named."""
    sides = {k: v for k, v in naming.items() if v is not None}
    if not any(n["named"] for n in sides.values()):
        return None
    if len(sides) == 2 and sides["a"] == sides["b"]:
        rows = [("names a, b:", inspect_names(sides["a"], indent=""))]
    else:
        # A side with no names is just "none" here: the other side's names label the
        # pair, and a note says so (its reason is in --json).
        rows = [(f"names {k}:", inspect_names(n, indent="") if n["named"] else Text("none"))
                for k, n in sides.items()]
    header = Header(key_width=max(len(k) for k, _ in rows) + 1)
    for key, value in rows:
        header.add(key, value)
    return header


def tolerance_text(options: dict[str, Any]) -> str:
    tol = "exact" if options["atol"] == 0 and options["rtol"] == 0 else (
        f"atol {fmt(float(options['atol']))}, rtol {fmt(float(options['rtol']))}")
    nan = "NaN = NaN" if options["nan_equal"] else "NaN ≠ NaN"
    text = f"{tol} · {nan} · params matched by {options['match']}"
    if options.get("params"):
        text += " · only params " + ", ".join(options["params"])
    return text


def summary_line(report: dict[str, Any]) -> Text:
    n = report["counts"]
    equal = f"{n['equal']} item{'s' * (n['equal'] != 1)} equal"
    if report["equal"]:
        text = Text(f"no differences: {equal}", style="green")
    else:
        more = "" if report["complete"] else " (stopped early)"
        text = Text(f"{n['differences']} difference{'s' * (n['differences'] != 1)}{more}: "
                    f"{n['structural']} structural, {n['numeric']} numeric; {equal}",
                    style="bold")
    if n["ignored"]:
        text.append(f"; {n['ignored']} ignored", style="dim")
    return text


def diff_view(report: dict[str, Any]) -> Group:
    """Header, the changes and tensor tables (equal items too with --verbose), notes,
    summary."""
    parts: list[Any] = [
        *(_side(name, report[name], report["optimizer"][i], report["groups"][i],
                report["params"][i]) for i, name in enumerate("ab")),
    ]
    names = names_line(report.get("naming") or {})
    if names is not None:
        parts.append(names)
    parts.append(Text(f"compared: {tolerance_text(report['options'])}", style="dim"))
    items = report["changes"] + report.get("same", [])
    scalars = [c for c in items if c["metrics"] is None]
    tensors = [c for c in items if c["metrics"] is not None]
    if scalars:
        parts.append(Fit(_changes_table(scalars)))
    nan_equal = report["options"]["nan_equal"]
    told = any(nonfinite_text(c["metrics"], nan_equal) for c in tensors)
    if tensors:
        parts.append(Fit(_tensors_table(tensors, nan_equal)))
    if report["omitted"]:
        parts.append(Text(f"… {report['omitted']} more difference"
                          f"{'s' * (report['omitted'] != 1)} not listed (--max-diffs N lists "
                          "more, --json all)", style="dim"))
        if any(r["differ"] for r in report["by_entry"]):
            parts.append(Fit(_entries_table(report["by_entry"], nan_equal)))
            told = told or any(nonfinite_text(r, nan_equal) for r in report["by_entry"])
    if told:  # the maxima cannot show a NaN or Inf: say where it is counted
        parts.append(Text("max|a−b| and max rel are over the finite pairs, ‖a‖ and ‖b‖ over "
                          "the finite elements: a NaN or Inf shows in outside only",
                          style="dim"))
    for note in report["notes"]:
        parts.append(Text(f"note: {note}", style="dim"))
    for name in "ab":  # a remote side: what was read of it; a side torch read: why
        for line in (read_line(report[name] or {}), reader_line(report[name] or {})):
            if line is not None:
                parts.append(Text.assemble((f"{name}: ", "dim"), line))
    parts.append(summary_line(report))
    return Group(*parts)
