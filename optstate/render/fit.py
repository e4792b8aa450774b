"""Tables that never cut or split a number, path or name, at any console width.

rich lays a too-wide table out by shrinking its widest columns, whatever they hold: a
parameter name is folded over lines, a number is split (``0.0007`` / ``5``) or cut with
``…``. ``Fit(table)`` renders the table as rich lays it out only when rich gives every
column at least its longest word (its longest cell, for a ``no_wrap`` column), so cells
wrap between words only; otherwise it prints the table folded, one block per row::

    state
    param 0  group 0  name encoder.layers.0.attn.q_proj.weight
      step
        shape: scalar  dtype: float32  value: 1
      exp_avg
        shape: 3x2  dtype: float32  numel: 6  bytes: 24

(the row's first ``head`` cells on one line, the next ``sub`` cells as a sub-heading,
each other non-empty cell as an indented ``header: value`` pair, as many pairs to a line
as fit whole; a pair longer than a line wraps between words).
Where the table fits, its output is rich's own, unchanged. A word longer than a whole
line (a 60-character path on a 40-column terminal) is the one thing folded: nothing else
keeps it within the width.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rich.cells import cell_len
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

# measuring "unbroken" needs a width no cell reaches
_UNBOUNDED = 1 << 20


def table_fits(table: Table, console: Any, options: Any) -> bool:
    """True when rich lays ``table`` out within ``options.max_width`` without breaking a
    word of any cell (or cropping a ``no_wrap`` cell)."""
    try:
        # rich's own layout (the steps of Table.__rich_console__); these names are
        # private: if a rich release renames them, the public measure below decides
        extra = table._extra_width
        wide = options.update_width(_UNBOUNDED)
        needs = [table._measure_column(console, wide, column) for column in table.columns]
        if sum(n.maximum for n in needs) + extra <= options.max_width:
            return True  # fits with no cell wrapped (the usual case: one measure)
        widths = table._calculate_column_widths(
            console, options.update_width(options.max_width - extra))
        for width, need, column in zip(widths, needs, table.columns, strict=True):
            if width < (need.maximum if column.no_wrap else need.minimum):
                return False
        return sum(widths) + extra <= options.max_width
    except AttributeError:  # another rich: fit only what fits unbroken
        return Measurement.get(console, options.update_width(_UNBOUNDED),
                               table).maximum <= options.max_width


def _plain(cell: Any) -> Text | None:
    """A cell as Text; None when empty (the views' tables hold only str and Text)."""
    if isinstance(cell, Text):
        text = cell.copy()
    elif isinstance(cell, str):
        text = Text(cell)
    else:
        return None
    return text if text.plain.strip() else None


def _header(column: Any) -> str:
    header = column.header
    text = header.plain if isinstance(header, Text) else str(header)
    return " ".join(text.split())  # "loss\n(start)" -> "loss (start)"


class Fit:
    """``table`` as rich draws it when it fits (see ``table_fits``), else folded into
    ``header: value`` lines. ``head``: how many leading columns name a row's block (a row
    whose head cells are all empty continues the block above); ``sub``: how many columns
    after those head a sub-block (a state entry under its parameter); ``head_keys``: False
    to show the head cells without their column headers (a row that names itself)."""

    def __init__(self, table: Table, head: int = 1, sub: int = 0, head_keys: bool = True
                 ) -> None:
        self.table = table
        self.head = head
        self.sub = sub
        self.head_keys = head_keys

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        if table_fits(self.table, console, options):
            yield self.table
        else:
            yield from self.folded(console, options.max_width)

    def __rich_measure__(self, console: Any, options: Any) -> Measurement:
        return Measurement.get(console, options, self.table)

    def folded(self, console: Any, width: int) -> Iterator[Text]:
        """The table as lines of ``header: value`` (see the module's docstring)."""
        table = self.table
        columns = table.columns
        headers = [_header(c) for c in columns]
        cells = [list(c.cells) for c in columns]
        rows = max((len(c) for c in cells), default=0)
        row_styles = [getattr(r, "style", None) or "" for r in table.rows]
        head, sub = self.head, self.sub

        def lines(indent: int, pairs: list[tuple[str, Text]], style: Any) -> Iterator[Text]:
            line = Text(style=style)
            for n, (key, value) in enumerate(pairs):
                if n:
                    line.append("  ")
                if key:
                    line.append(key + " ", style="dim")
                line.append_text(value)
            yield from _wrapped(console, line, width, indent)

        if table.title:
            title = table.title if isinstance(table.title, Text) else Text(
                str(table.title), style=table.title_style or "bold")
            yield from _wrapped(console, title, width)
        for r in range(rows):
            row = [_plain(cells[i][r]) if r < len(cells[i]) else None
                   for i in range(len(columns))]
            style = row_styles[r] if r < len(row_styles) else ""
            lead = [(headers[i] if self.head_keys else "", row[i])
                    for i in range(min(head, len(row))) if row[i]]
            if lead:
                yield from lines(0, lead, style)
            indent = 2 if head else 0
            if sub:
                subs = [row[i] for i in range(head, min(head + sub, len(row))) if row[i]]
                if subs:
                    yield from lines(indent, [("", t) for t in subs], style)
                indent += 2
            pairs = [(headers[i] + ":", row[i]) for i in range(head + sub, len(row))
                     if row[i] is not None]
            # as many pairs to a line as fit whole, two spaces apart
            line: list[tuple[str, Text]] = []
            used = indent
            for key, value in pairs:
                n = cell_len(key) + 1 + cell_len(value.plain)
                if line and used + 2 + n > width:
                    yield from lines(indent, line, style)
                    line, used = [], indent
                used += (2 if line else 0) + n
                line.append((key, value))
            if line:
                yield from lines(indent, line, style)
        if table.caption:
            caption = table.caption if isinstance(table.caption, Text) else Text(
                str(table.caption), style=table.caption_style or "dim")
            yield from _wrapped(console, caption, width)


def _wrapped(console: Any, text: Text, width: int, indent: int = 0) -> Iterator[Text]:
    """``text`` wrapped between words to ``width``, ``indent`` spaces before each line
    (only a word longer than a whole line is folded: nothing else can keep it within
    the width)."""
    for part in text.wrap(console, max(1, width - indent), overflow="fold"):
        part.rstrip()
        if indent:
            part = Text(" " * indent) + part
        part.no_wrap = True
        part.end = "\n"
        yield part
