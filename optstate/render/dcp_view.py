"""Rich view of a DCP folder's storage layout (``inspect --layout``)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from optstate.base.values import format_shape
from optstate.render.fit import Fit


def chunk_text(chunk: dict[str, Any]) -> str:
    """``rank 1 [2:3, 0:2]``: which rank holds which slice of the whole tensor."""
    who = f"rank {chunk['rank']}" if chunk["rank"] is not None else (chunk["file"] or "?")
    if not chunk["sizes"]:
        return f"{who} (scalar)"
    spans = ", ".join(f"{o}:{o + s}" for o, s in zip(chunk["offsets"], chunk["sizes"],
                                                       strict=True))
    return f"{who} [{spans}]"


def layout_table(layout: dict[str, Any]) -> Fit:
    files = ", ".join(f"{name} ({size:,} B)" for name, size in layout["files"].items())
    table = Table(title=f"storage layout: {len(layout['ranks'])} rank(s); {files}",
                  title_justify="left", title_style="bold")
    for col in ("key", "shape", "dtype", "chunks"):
        table.add_column(col, overflow="fold")
    for t in layout["tensors"]:
        table.add_row(t["key"], format_shape(t["shape"]), t["dtype"],
                      " · ".join(chunk_text(c) for c in t["chunks"]))
    return Fit(table)
