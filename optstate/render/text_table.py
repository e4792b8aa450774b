"""A borderless table drawn as lines of text, for the long tables of ``inspect``.

``inspect``'s structure and statistics tables are rich ``Table``\\ s with ``box.SIMPLE_HEAD``,
no edge: a title, a bold header, one rule, then plain rows. rich measures, wraps and
crops every cell of every row to lay them out, ~0.1 s for the 150 rows of a 50-param
Adam checkpoint, which is half of what ``inspect --no-stats`` may cost beyond
``import torch`` (issue #6). When every cell fits on one line and the table fits the
console, ``TextTable`` writes the same characters itself (column width = widest cell,
justified, separated as rich separates them); otherwise (too wide, a cell with a line
break or a control character) it hands its rows to rich's ``Table`` through ``Fit``
(optstate/render/fit.py), which folds the table into ``header: value`` lines where rich
would have to break a word to fit. ``tests/test_text_table.py`` checks the text against
rich's for the same rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

# what rich would lay out differently from one line of printable text: control characters,
# and whitespace other than the ASCII space (rich wraps and strips at str.isspace()
# characters: a lone no-break space in a right-justified cell is printed as a space)
_SPECIAL = re.compile(r"[\x00-\x1f\x7f-\x9f]|[^\S ]")


class TextTable:
    """``Table(title=..., title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
    padding=(0, padding), pad_edge=False, show_edge=False)`` with columns of a header,
    a justification (``"left"``/``"right"``) and a minimum width; cells are ``str`` or
    one-style ``Text``. ``head`` and ``sub``: how ``Fit`` folds it when it is too wide."""

    def __init__(self, title: str, columns: list[tuple[str, str, int]], padding: int = 1,
                 head: int = 1, sub: int = 0) -> None:
        self.title = title
        self.columns = columns
        self.padding = padding
        self.head = head
        self.sub = sub
        self.rows: list[list[str | Text]] = []

    def add_row(self, *cells: str | Text) -> None:
        self.rows.append(list(cells) + [""] * (len(self.columns) - len(cells)))

    def to_rich(self) -> Table:
        table = Table(title=self.title, title_justify="left", title_style="bold",
                      box=box.SIMPLE_HEAD, padding=(0, self.padding), pad_edge=False,
                      show_edge=False)
        for header, justify, min_width in self.columns:
            table.add_column(header, justify=justify, overflow="fold",
                             min_width=min_width or None)
        for row in self.rows:
            table.add_row(*row)
        return table

    def fit(self) -> Any:
        """The rich table, folded where it does not fit (what is drawn when this is not)."""
        from optstate.render.fit import Fit

        return Fit(self.to_rich(), head=self.head, sub=self.sub)

    def _widths(self) -> list[int] | None:
        """Column widths as rich computes them for cells of one line; None when a cell is
        not one line of printable text."""
        if any(_SPECIAL.search(h) for h, _, _ in self.columns):
            return None
        widths = [max(cell_len(h), m) for h, _, m in self.columns]
        for row in self.rows:
            for i, cell in enumerate(row):
                if isinstance(cell, Text):
                    if cell.spans:  # several styles: rich draws it
                        return None
                    text = cell.plain
                else:
                    text = cell
                if _SPECIAL.search(text):
                    return None
                n = cell_len(text)
                if n > widths[i]:
                    widths[i] = n
        # rich gives a column one cell when it has neither content nor padding (padding
        # 0, or a lone column: pad_edge=False drops the pads at the table's edges)
        no_pads = not self.padding or len(widths) == 1
        return [w or int(no_pads) for w in widths]

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        widths = self._widths()
        gap = " " * (2 * self.padding + 1)  # right pad, SIMPLE_HEAD's blank divider, left pad
        total = sum(widths) + len(gap) * (len(widths) - 1) if widths else 0
        if (widths is None or total > options.max_width or cell_len(self.title) > total
                or _SPECIAL.search(self.title) or "[" in self.title or options.ascii_only):
            yield self.fit()
            return
        bold = console.get_style("bold")
        header_style = console.get_style("table.header")
        line = Segment.line()
        yield Segment(self.title, bold)
        yield Segment(" " * (total - cell_len(self.title)))
        yield line

        def cells(row: list[str | Text], style: Any = None) -> Iterator[Segment]:
            for i, cell in enumerate(row):
                if i:
                    yield Segment(gap)
                text, cell_style = ((cell.plain, console.get_style(cell.style or "none"))
                                    if isinstance(cell, Text) else (cell, style))
                pad = " " * (widths[i] - cell_len(text))
                if self.columns[i][1] == "right":
                    yield Segment(pad)
                    yield Segment(text, cell_style)
                else:
                    yield Segment(text, cell_style)
                    yield Segment(pad)
            yield line

        yield from cells([h for h, _, _ in self.columns], header_style)
        yield Segment("─" * total)  # SIMPLE_HEAD's head rule, edges hidden
        yield line
        for row in self.rows:
            yield from cells(row)

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        from rich.measure import Measurement

        widths = self._widths()
        if widths is None:
            return Measurement.get(console, options, self.to_rich())
        total = sum(widths) + (2 * self.padding + 1) * (len(widths) - 1)
        return Measurement(total, total)
