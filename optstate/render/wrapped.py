"""Text that wraps between words with a hanging indent, never back to column 0: the
``key  value`` header lines of inspect, diff and check (``Header``) and warnings and notes
(``Hanging``)."""

from __future__ import annotations

import re

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

KEY_WIDTH = 10  # header values start at this column; wrapped lines hang under it


class Header:
    """``key  value`` lines; a value too long for the console wraps with a hanging indent
    under the value column (``KEY_WIDTH``), never back to column 0. A word that fits a line
    but not the value column (a 35-character name at 40 columns) is kept whole: that
    value's lines hang less deep; a word wider than the console folds."""

    def __init__(self, key_width: int = KEY_WIDTH) -> None:
        self.rows: list[tuple[str, Text]] = []
        self.key_width = key_width

    def add(self, key: str, value: Text) -> None:
        self.rows.append((key, value))

    def lines(self, width: int) -> list[Text]:
        out = []
        kw = self.key_width
        first = max(width - kw, 1)
        for key, value in self.rows:
            fits = [len(w) for w in value.plain.split() if len(w) <= width]
            longest = max(fits, default=0)
            indent = kw if longest <= first else max(width - longest, 0)
            for i, line in enumerate(_wrap(value, first, max(width - indent, 1))):
                lead = key.ljust(kw) if i == 0 else " " * indent
                out.append(Text(lead if line.plain else lead.rstrip(), style="dim") + line)
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        out = Text("\n").join(self.lines(options.max_width))
        out.no_wrap, out.overflow = True, "ignore"
        yield out


class Hanging:
    """A warning or note: wrapped between words with a hanging indent (under the word
    after ``warning ``), never back to column 0, no trailing spaces."""

    def __init__(self, text: Text, indent: int) -> None:
        self.text, self.indent = text, indent

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        indent = self.indent if width > 2 * self.indent else 0
        lines = _wrap(self.text, width, max(width - indent, 1))
        out = Text("\n").join([line if i == 0 else Text(" " * indent) + line
                               for i, line in enumerate(lines)])
        out.no_wrap, out.overflow = True, "ignore"
        yield out


def _wrap(value: Text, first: int, rest: int) -> list[Text]:
    """``value`` in lines of at most ``first`` cells (the first line) and ``rest`` (the
    others), broken between words; its newlines kept. A word too long for the first line
    starts the second when it fits there; one too long for any line folds."""
    lines: list[Text] = []
    for para in value.split("\n", allow_blank=True):
        plain, cuts = para.plain, []
        start, cap, empty = 0, first if not lines else rest, True
        for word in re.finditer(r"\S+", plain):
            a, b = word.span()
            if b - start > cap and (not empty or (not lines and not cuts and b - a <= rest)):
                cuts.append(a)
                start, cap = a, rest
            while b - start > cap:  # longer than a whole line: fold it
                start += cap
                cuts.append(start)
                cap = rest
            empty = False
        for piece in para.divide(cuts):
            piece.rstrip()
            lines.append(piece)
    return lines
