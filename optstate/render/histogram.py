"""Terminal histograms: one row per state buffer, its values as a bar of block glyphs.

Draws the plain data of ``optstate.analysis.histogram`` (in ``inspect --hist`` reports under each
tensor entry's ``"histogram"`` key). Each bin is one glyph whose height is its count
relative to the fullest bin; a bin with any element at all shows at least the lowest
block, an empty bin is blank, so a lone outlier stays visible. Never prints.
"""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from optstate.render.fit import Fit
from optstate.render.human import fmt_short

BLOCKS = " ▁▂▃▄▅▆▇█"


def bar_levels(counts: list[int]) -> list[int]:
    """0 for an empty bin, else 1..8 in proportion to the fullest bin (rounded up)."""
    top = max(counts, default=0)
    if top == 0:
        return [0] * len(counts)
    return [0 if c == 0 else max(1, math.ceil(8 * c / top)) for c in counts]


def sparkline(counts: list[int]) -> str:
    return "".join(BLOCKS[level] for level in bar_levels(counts))


def histogram_cells(h: dict[str, Any]) -> tuple[Text, ...]:
    """(min, bars, max, zeros, NaN, ±Inf) cells for one histogram."""
    numel = h["numel"]
    bad = h["nan"] + h["posinf"] + h["neginf"]
    if h["counts"] is None:
        bars = Text("(no finite value)" if numel else "(empty)", style="red" if bad else "dim")
    elif h["min"] == h["max"]:
        bars = Text(f"all {fmt_short(h['min'])}", style="bold yellow" if h["min"] == 0 else "")
    else:
        bars = Text.assemble(("▕", "dim"), (sparkline(h["counts"]), "cyan"), ("▏", "dim"))
    zeros = Text("–" if not numel else f"{100 * h['zeros'] / numel:.3g}%",
                 style="yellow" if numel and h["zeros"] == numel else "")
    inf = h["posinf"] + h["neginf"]
    return (Text(fmt_short(h["min"])), bars, Text(fmt_short(h["max"])), zeros,
            Text(str(h["nan"]), style="bold red" if h["nan"] else ""),
            Text(str(inf), style="bold red" if inf else ""))


def _entries(state: dict[str, Any], prefix: str = ""):  # noqa: ANN202
    for name, rep in state.items():
        if isinstance(rep, dict) and "histogram" in rep:
            yield prefix + name, rep["histogram"]
        elif isinstance(rep, dict) and "items" in rep:
            for i, item in enumerate(rep["items"]):
                yield from _entries({f"{name}[{i}]": item}, prefix)


def histogram_table(report: dict[str, Any]) -> Fit | None:
    """One row per tensor entry that has a histogram; None when none has."""
    rows = [(p, name, h) for p in report["params"] for name, h in _entries(p["state"])]
    if not rows:
        return None
    bins = rows[0][2]["bins"]
    of = "|values|" if any(h["of"] == "abs" for _, _, h in rows) else "values"
    table = Table(title=f"histograms ({bins} bins from min to max of the finite {of})",
                  title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  padding=(0, 0), pad_edge=False, show_edge=False)
    for col, justify in (("param", "right"), ("entry", "left"), ("min", "right"),
                         ("histogram", "left"), ("max", "left"), ("zeros", "right"),
                         ("NaN", "right"), ("±Inf", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    last = None
    for p, name, h in rows:
        lead = "" if p["position"] == last else str(p["position"])
        if p.get("name") and lead:
            lead += f" {p['name']}"
        last = p["position"]
        table.add_row(lead, name, *histogram_cells(h))
    return Fit(table, sub=1)
