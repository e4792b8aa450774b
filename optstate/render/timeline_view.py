"""The human view of a timeline report (schema ``optstate.timeline/1``): rich renderables.

A header (the run, how many checkpoints, the order, the cache), one table row per
checkpoint (its step, group 0's lr, the entry nearest a norm spike by that rule's own
measure, NaN/Inf counts, the codes of its findings), the findings one per line, the notes
and a one-line verdict. A long run shows its first and last rows and every row with a
finding, up to ``max_rows``; the gaps say how many rows they hide (``--json`` has all).
Text from checkpoints (labels, param names) is printed through a safe console
(``render.terminal_safe``); nothing here is rich markup.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.console import Group
from rich.text import Text

from optstate.analysis.timeline_record import num as number
from optstate.render.human import fmt, fmt_short
from optstate.render.text_table import TextTable
from optstate.render.wrapped import Hanging, Header

MAX_ROWS = 40  # table rows shown by default; --max-rows 0 shows all
PLACE_MIN = 24  # cells the place of the entry nearest a spike keeps at least
FOLD = 3  # findings of one code at one checkpoint listed one by one up to this many
PLACES_SHOWN = 6  # params named in a folded block's "the same in ..." line


def short(value: Any) -> str:
    """A norm or lr in 4 significant digits; "nan"/"inf" as such; "–" for none."""
    v = number(value)
    if v is None:
        return "–"
    if not math.isfinite(v):
        return str(v)
    return fmt_short(v)


def place(param: int | None, name: str | None, entry: str | None) -> str:
    """``hidden.weight.exp_avg`` where the name is known, else ``state[3].exp_avg``."""
    who = name if name else (f"state[{param}]" if param is not None else "")
    if entry:
        return f"{who}.{entry}" if who else entry
    return who


def nonfinite_counts(report: dict[str, Any]) -> list[tuple[int, int]]:
    """Per checkpoint, (NaN elements, Inf elements) summed over every series."""
    n = len(report["checkpoints"])
    nan, inf = [0] * n, [0] * n
    for s in report["series"]:
        for i in range(n):
            nan[i] += int(s["nan"][i] or 0)
            inf[i] += int(s["inf"][i] or 0)
    return list(zip(nan, inf, strict=True))


def shown_rows(report: dict[str, Any], max_rows: int) -> list[int]:
    """The indices of the checkpoints the table shows: all when they fit ``max_rows``
    (0: no limit); else the first and the last, every one with a finding (the earliest
    first, while they fit), then more from both ends inwards up to ``max_rows``."""
    n = len(report["checkpoints"])
    if max_rows <= 0 or n <= max_rows:
        return list(range(n))
    order = [0, n - 1]
    order += [c["index"] for c in report["checkpoints"] if c.get("findings")]
    for k in range(1, n):  # 1, n-2, 2, n-3, ...
        order += [k, n - 1 - k]
    keep: list[int] = []
    for i in order:
        if len(keep) >= max(max_rows, 2):
            break
        if i not in keep:
            keep.append(i)
    return sorted(keep)


def _lr_columns(report: dict[str, Any]) -> tuple[list[Any], list[Any] | None]:
    """Group 0's lr per checkpoint, and its scheduled lr where it differs (None when it
    never does, so the column is left out)."""
    n = len(report["checkpoints"])
    if not report["lr"]:
        return [None] * n, None
    g0 = report["lr"][0]
    scheduled = g0.get("scheduled_lr") or [None] * n
    differs = [None] * n
    for i, (lr, sch) in enumerate(zip(g0["lr"], scheduled, strict=True)):
        a, b = number(lr), number(sch)
        if b is not None and (a is None or short(a) != short(b)):  # printed differently
            differs[i] = sch
    return g0["lr"], differs if any(d is not None for d in differs) else None


class CheckpointTable:
    """``checkpoint_table`` drawn at the width it is given (the console's)."""

    def __init__(self, report: dict[str, Any], max_rows: int = MAX_ROWS) -> None:
        self.report, self.max_rows = report, max_rows

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield checkpoint_table(self.report, self.max_rows, width=options.max_width)


def checkpoint_table(report: dict[str, Any], max_rows: int = MAX_ROWS,
                     width: int | None = None) -> TextTable:
    """One row per checkpoint shown (``shown_rows``): its findings (a count), label,
    step, group 0's lr (and the lr its scheduler gives, where that differs), NaN and Inf
    elements over every entry, and the entry nearest a norm spike by that rule's measure
    (its norm, the factor, its place, last: the widest). Within ``width``, a
    place too long for what the other columns leave is cut at its start (``…layer.11.
    mlp.weight.exp_avg``: the end tells entries apart), down to ``PLACE_MIN`` cells; the
    findings below and ``--json`` name it whole."""
    lrs, scheduled = _lr_columns(report)
    counts = nonfinite_counts(report)
    cols: list[tuple[str, str, int]] = [
        ("!", "right", 1), ("checkpoint", "left", 0), ("step", "right", 0),
        ("lr", "right", 0)]
    if scheduled is not None:
        cols.append(("scheduled", "right", 0))
    cols += [("NaN", "right", 0), ("Inf", "right", 0), ("norm", "right", 0),
             ("growth", "right", 0), ("nearest a spike", "left", 0)]
    table = TextTable("checkpoints", cols, padding=0, head=2)
    rows: list[list[Any]] = []
    before = -1
    for i in shown_rows(report, max_rows):
        if i > before + 1:
            rows.append(["", Text(f"… {i - before - 1} more", style="dim")])
        before = i
        c = report["checkpoints"][i]
        k = c.get("findings") or 0
        row: list[Any] = [Text(str(k), style="bold red") if k else "", c["label"],
                          fmt(c.get("step")), short(lrs[i])]
        if scheduled is not None:
            row.append(Text(short(scheduled[i]), style="dim") if scheduled[i] is not None
                       else "")
        nan, inf = counts[i]
        worst = c.get("worst")
        if c.get("error"):  # nothing known: no counts, no norms
            row += ["", "", "", "", Text("unreadable", style="bold red")]
            rows.append(row)
            continue
        row += [Text(str(nan), style="bold red") if nan else "0",
                Text(str(inf), style="bold red") if inf else "0"]
        if worst:
            row += [short(worst.get("norm")), _factor(report, i, worst),
                    place(worst.get("param"), worst.get("name"), worst.get("entry"))]
        rows.append(row)
    n = len(report["checkpoints"])
    if before < n - 1:
        rows.append(["", Text(f"… {n - 1 - before} more", style="dim")])
    if width is not None:
        _cut_places(rows, cols, width)
    for row in rows:
        table.add_row(*row)
    return table


def _factor(report: dict[str, Any], i: int, worst: dict[str, Any]) -> str:
    """The growth cell: the factor norm_spike compares with the spike (``worst`` in
    docs/timeline.md; ``×inf`` where it overflows: a norm from a subnormal one); ``from 0``
    where the norm before was 0, which no factor can say; nothing at the first checkpoint
    or where none is known."""
    ratio = number(worst.get("ratio"))
    if ratio is not None:
        return f"×{short(ratio)}" if math.isfinite(ratio) else f"×{ratio}"
    if i == 0:
        return ""
    for s in report["series"]:
        if (s["param"], s["entry"]) == (worst.get("param"), worst.get("entry")):
            return "from 0" if number(s["norm"][i - 1]) == 0 else ""
    return ""


def _cut_places(rows: list[list[Any]], cols: list[tuple[str, str, int]],
                width: int) -> None:
    """Cut the place cells (the last column, str) to what ``width`` leaves them."""
    last = len(cols) - 1
    widths = [max(cell_len(h), m) for h, _, m in cols[:last]]
    for row in rows:
        for j, cell in enumerate(row[:last]):
            text = cell.plain if isinstance(cell, Text) else cell
            widths[j] = max(widths[j], cell_len(text))
    room = max(width - sum(widths) - last, PLACE_MIN)  # one space between columns
    for row in rows:
        if len(row) > last and isinstance(row[last], str) and cell_len(row[last]) > room:
            row[last] = "…" + row[last][len(row[last]) - room + 1:]


def run_paths(paths: list[str], most: int = 3) -> str:
    """The paths a run was given as: all of a few; of many (a shell glob of 100 files),
    the first two, the last and how many."""
    if len(paths) <= most:
        return ", ".join(map(str, paths))
    return f"{paths[0]}, {paths[1]}, …, {paths[-1]} ({len(paths)} paths)"


def header(report: dict[str, Any]) -> Header:
    run = report["run"]
    head = Header()
    head.add("run", Text(run_paths(run["paths"])))
    found = f"{run['found']} checkpoint{'s' * (run['found'] != 1)}, {run['read']} read"
    if run["skipped"]:
        found += f", {len(run['skipped'])} skipped"
    head.add("found", Text(found))
    order = report["order"]
    head.add("order", Text(f"by {order['source']}"))
    cache = report.get("cache") or {}
    said = Text()
    if cache.get("path") or cache.get("hits"):  # a cache read but not written: no path
        said.append(f"{cache['hits']} from the cache, {cache['misses']} read")
        if cache.get("path"):
            said.append(f" ({_near(cache['path'])})")
    if cache.get("note"):  # ignored and rebuilt, or not written
        said.append(("\n" if said else "") + cache["note"], style="dim")
    if said:
        head.add("cache", said)
    return head


def _near(path: str) -> str:
    """A path under the working folder relative to it (as the user named the run); any
    other as it is."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except (ValueError, OSError):
        return path


def _lr_note(report: dict[str, Any]) -> Text | None:
    groups = len(report["lr"])
    if groups <= 1:
        return None
    return Text(f"lr: group 0's; +{groups - 1} group{'s' * (groups > 2)} "
                "in --json and --plot", style="dim")


def finding_blocks(findings: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Findings as the view lists them: those of one code at one checkpoint in one block
    when there are more than ``FOLD`` (one fault shows in many entries at once: a NaN
    spreads to every param in a step, an lr x1000 makes every norm jump); the first is
    said whole, the others by place. Order kept: a block stands where its first was."""
    keyed: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for f in findings:
        keyed.setdefault((f["code"], f.get("checkpoint")), []).append(f)
    blocks: list[list[dict[str, Any]]] = []
    folded: set[tuple[Any, Any]] = set()
    for f in findings:
        key = (f["code"], f.get("checkpoint"))
        group = keyed[key]
        if len(group) <= FOLD or any(g.get("param") is None for g in group):
            blocks.append([f])
        elif key not in folded:
            folded.add(key)
            blocks.append(group)
    return blocks


def also_line(rest: list[dict[str, Any]]) -> str:
    """``the same in 9 more entries: embed.weight (exp_avg, exp_avg_sq), head.bias ...``"""
    by_param: dict[str, list[str]] = {}
    for f in rest:
        who = place(f.get("param"), f.get("name"), None)
        by_param.setdefault(who, []).append(str(f.get("entry") or ""))
    items = [f"{who} ({', '.join(e for e in entries if e)})" if any(entries) else who
             for who, entries in by_param.items()]
    shown = items[:PLACES_SHOWN]
    more = len(items) - len(shown)
    tail = f" and {more} more param{'s' * (more != 1)}" if more else ""
    first = rest[0].get("param")
    if rest[0]["code"] in ("nan", "inf") and any(f.get("param") != first for f in rest):
        # NaN reaches every param within one step (through the loss): the first named is
        # first by position, not in time
        tail += "; all between two checkpoints: which came first cannot be told from them"
    return (f"the same in {len(rest)} more entr{'ies' if len(rest) != 1 else 'y'}: "
            + ", ".join(shown) + tail)


def spike_factor(spike: Any) -> str:
    """``--spike`` as given: 10, 2.5, 1.0000001 (not rounded to 1)."""
    v = number(spike)
    return fmt(spike) if v is None or not math.isfinite(v) else f"{v:.15g}"


def unreadable_lines(report: dict[str, Any], max_rows: int) -> list[Any]:
    """Every unreadable checkpoint's label and reason (the first ``max_rows``, the rest
    counted), when the findings do not say each one: the unreadable finding is one, at
    the first, with "and at N later checkpoints"."""
    bad = [c for c in report["checkpoints"] if c.get("error")]
    said = sum(1 for f in report["findings"] if f["code"] == "unreadable")
    if len(bad) <= said:
        return []
    shown = bad if max_rows <= 0 else bad[:max_rows]
    lines: list[Any] = [Text(f"unreadable checkpoints: {len(bad)}", style="bold")]
    lines += [Hanging(Text.assemble("  ", (f"{c['label']}: ", "bold"), c["error"]), 4)
              for c in shown]
    if len(shown) < len(bad):
        lines.append(Text(f"  … {len(bad) - len(shown)} more (--max-rows 0 shows all; "
                          "--json has all)", style="dim"))
    return lines


def reader_summary(report: dict[str, Any]) -> Text | None:
    """'read with torch: 2 of 5 checkpoints (legacy format)' when torch read any that
    another reader was asked for (each checkpoint's ``reader_note``: why); None when all
    were read without torch."""
    cps = report["checkpoints"]
    notes = [c["reader_note"] for c in cps if c.get("reader") == "torch" and c.get("reader_note")]
    # read natively, a sibling file with torch: "scheduler.pt: read with torch (why)"
    sibs = [c["reader_note"] for c in cps if c.get("reader") != "torch" and c.get("reader_note")]
    of = f" of {len(cps)} checkpoint{'s' * (len(cps) != 1)}"
    parts = [f"read with torch: {len(notes)}{of} ({'; '.join(dict.fromkeys(notes))})"] * bool(notes)
    parts += [f"{note} ({sibs.count(note)}{of})" for note in dict.fromkeys(sibs)]
    return Text("; ".join(parts), style="dim") if parts else None


def verdict(report: dict[str, Any]) -> Text:
    findings = report["findings"]
    n = len(report["checkpoints"])
    if not findings:
        return Text(f"no findings: {n} checkpoint{'s look' if n != 1 else ' looks'} clean "
                    f"(norm spikes over {spike_factor(report['spike'])}x)",
                    style="bold green")
    first = findings[0]
    k = len(findings)
    at = len({f.get("checkpoint") for f in findings})
    return Text(f"{k} finding{'s' * (k != 1)} at {at} of {n} checkpoint{'s' * (n != 1)}; the "
                f"first at {first.get('label')} ({first['code']})", style="bold red")


def timeline_view(report: dict[str, Any], max_rows: int = MAX_ROWS) -> Group:
    """The whole report: header, the table (``max_rows`` rows at most, 0: all), the
    findings (the first ``max_rows``), skipped files, notes, verdict."""
    parts: list[Any] = [header(report)]
    if report["checkpoints"]:
        parts.append(CheckpointTable(report, max_rows))
        note = _lr_note(report)
        if note is not None:
            parts.append(note)
    findings = report["findings"]
    if findings:
        parts.append(Text("findings", style="bold"))
        blocks = finding_blocks(findings)
        shown = blocks if max_rows <= 0 else blocks[:max_rows]  # the first matter most
        for block in shown:
            f = block[0]
            label = f.get("label") or ""
            message = f["message"]
            if label and not message.startswith(label):  # say where, once
                message = f"{label}: {message}"
            parts.append(Hanging(Text.assemble((f"{f['code']} ", "bold red"), message), 2))
            if len(block) > 1:
                parts.append(Hanging(Text("  " + also_line(block[1:]), style="dim"), 4))
        if len(shown) < len(blocks):
            more = sum(len(b) for b in blocks[len(shown):])
            parts.append(Text(f"… {more} more finding{'s' * (more != 1)} (--max-rows 0 "
                              "shows all; --json has all)", style="dim"))
    parts += unreadable_lines(report, max_rows)
    for s in report["run"]["skipped"]:
        parts.append(Hanging(Text.assemble(("skipped ", "bold"), f"{s['path']}: ",
                                           s["reason"]), 8))
    for n in report["notes"]:
        parts.append(Hanging(Text.assemble(("note ", "bold"), (f"[{n['code']}] ", "dim"),
                                           n["message"]), 5))
    read = reader_summary(report)
    if read is not None:
        parts.append(read)
    parts.append(verdict(report))
    return Group(*parts)
