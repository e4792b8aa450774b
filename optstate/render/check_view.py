"""The human view of ``optstate check``: the verdict, each finding, and torch's trial."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text

from optstate.render.inspect_view import Header, names_line

_STYLE = {"fail": "bold red", "warn": "yellow", "info": "dim"}
_MARK = {"fail": "FAIL", "warn": "WARN", "info": "info"}
_VERDICT = {
    "ok": ("OK: load_state_dict works and the state matches the config", "bold green"),
    "differs": ("DIFFERS: load_state_dict works, with differences worth knowing",
                "bold yellow"),
    "fails": ("FAILS: torch would refuse this state or fail at the first step", "bold red"),
}
_STAGES = (("load_state_dict", "optimizer.load_state_dict"), ("step", "optimizer.step"),
           ("scheduler_load_state_dict", "scheduler.load_state_dict"),
           ("scheduler_step", "scheduler.step"))


def check_view(report: dict[str, Any]) -> Group:
    where = report["location"] or "the top level"  # as config's header says it
    per_group = report["groups"]["config"]
    n_groups, n_params = len(per_group), sum(per_group)
    params = (" + ".join(map(str, per_group)) + " params" if n_groups > 1
              else f"{n_params} param{'s' * (n_params != 1)}")
    parts: list[Any] = [
        Text(f"{report['source']} (optimizer state at {where}) against {report['config']} "
             f"({report['optimizer']}, {n_groups} group{'s' * (n_groups != 1)}, {params})"),
    ]
    parts += _names(report)
    text, style = _VERDICT[report["verdict"]]
    parts.append(Text(text, style=style))
    for f in report["findings"]:
        line = Text()
        line.append(f"{_MARK[f['level']]:>4} ", style=_STYLE[f["level"]])
        line.append(f["message"])
        parts.append(line)
        if f["code"] in ("group-count", "group-size") and f["detail"].get("shapes") and (
                f is _first_structural(report)):
            parts.append(ShapeRows(f["detail"]))
    trial = report["trial"]
    if trial:
        steps = []
        for key, label in _STAGES:
            value = trial.get(key)
            if value is not None:
                steps.append(f"{label}: {value}")
        parts.append(Text("torch trial: " + "; ".join(steps), style="dim"))
    if report.get("fixes"):
        parts.append(Text("To resume with the config's hyperparameters, write them into a copy:"))
        parts.extend(Text(f"  {line}", style="bold") for line in report["fixes"])
    elif report.get("no_fix_reason"):
        parts.append(Text(report["no_fix_reason"], style="dim"))
    return Group(*parts)


def _names(report: dict[str, Any]) -> list[Text]:
    """Where the checkpoint's names came from (as inspect says it), when it has some; when
    the config lists names and the checkpoint has none, that they were not compared."""
    naming = report.get("naming")
    if report.get("names_compared") is False:
        line = Text("names not compared: the checkpoint has none")
        if naming is None or naming["model"] is None:  # nothing to name them from
            line.append(" (--model FILE names them)")
        if naming is not None and naming["reason"]:
            line.append(f"; {naming['reason']}", style="dim")
        return [line]
    if naming is not None and naming["named"]:
        header = Header()  # wrapped under its value column, as inspect's header is
        header.add("names", names_line(naming, indent=""))
        return [header]
    return []


def _first_structural(report: dict[str, Any]) -> dict[str, Any] | None:
    """The shapes are the same for every group-size finding: shown once, under the first."""
    return next((f for f in report["findings"] if f["code"] in ("group-count", "group-size")),
                None)


class ShapeRows:
    """Both sides' shapes, group by group, in aligned columns, with a caret under the first
    position that differs; fitted to the width it is drawn at: a long group shows a window
    of positions with "…" and a count for those left out, and where even that does not fit,
    one line per position. A shape is never cut or split."""

    def __init__(self, detail: dict[str, Any]) -> None:
        self.detail = detail

    def __rich_console__(self, console: Any, options: Any) -> Any:
        for row in shape_rows(self.detail, options.max_width):
            yield Text(row)


_HEAD = "     group {gi}  "
_SIDES = ("checkpoint  ", "config      ")


def shape_rows(detail: dict[str, Any], width: int = 100) -> list[str]:
    theirs, ours = detail["shapes"]["checkpoint"], detail["shapes"]["config"]
    first = detail.get("first_difference")
    rows: list[str] = []
    for gi in range(max(len(theirs), len(ours))):
        a = theirs[gi] if gi < len(theirs) else []
        b = ours[gi] if gi < len(ours) else []
        here = first["position"] if first and first["group"] == gi else None
        rows += (_columns(gi, a, b, here, width) or _one_per_line(gi, a, b, here))
    return rows


def _columns(gi: int, a: list[str], b: list[str], here: int | None,
             width: int) -> list[str] | None:
    """The two sides as aligned rows, or None when not even the first differing position
    fits in ``width``."""
    n = max(len(a), len(b))
    head = _HEAD.format(gi=gi)
    indent = len(head) + len(_SIDES[0])
    start = 0 if here is None or here < 3 else here - 2
    lead = "…  " if start else ""
    tail = len(f"  … {n} more")
    widths: list[int] = []
    used = indent + len(lead)
    for i in range(start, n):
        w = max(len(a[i]) if i < len(a) else 0, len(b[i]) if i < len(b) else 0)
        room = 0 if i == n - 1 else tail
        if used + w + room > width:
            if here is not None and i <= here:
                return None
            break
        widths.append(w)
        used += w + 2

    def cells(side: list[str]) -> str:
        shown = [side[start + j].ljust(w) for j, w in enumerate(widths) if start + j < len(side)]
        if not side:
            return "(no group)"
        more = len(side) - start - len(shown)
        return (lead + "  ".join(shown) + (f"  … {more} more" if more > 0 else "")).rstrip()

    rows = [head + _SIDES[0] + cells(a), " " * len(head) + _SIDES[1] + cells(b)]
    if here is not None:
        col = indent + len(lead) + sum(w + 2 for w in widths[:here - start])
        note = f"^ first difference: group {gi}, position {here}"
        if col + len(note) <= width:
            rows.append(" " * col + note)
        else:
            rows += [" " * col + "^", f"     first difference: group {gi}, position {here}"]
    return rows


def _one_per_line(gi: int, a: list[str], b: list[str], here: int | None) -> list[str]:
    """Narrow terminals: positions around the difference, one per line."""
    if here is None:
        return [f"  group {gi}: {len(a)} shapes in the checkpoint, {len(b)} in the config"]
    lo, hi = max(0, here - 2), min(max(len(a), len(b)), here + 3)
    rows = [f"  group {gi}, checkpoint / config, positions {lo} to {hi - 1} of {len(a)} / "
            f"{len(b)}:"]
    cells = [(str(i), a[i] if i < len(a) else "-", b[i] if i < len(b) else "-")
             for i in range(lo, hi)]
    wi, wx = (max(len(c[k]) for c in cells) for k in (0, 1))
    for (i, x, y), pos in zip(cells, range(lo, hi), strict=True):
        line = f"    {i.rjust(wi)}  {x.ljust(wx)}  {y}"
        rows.append(line + (" < first difference" if pos == here else ""))
    return rows
