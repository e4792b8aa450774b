"""TextTable (optstate/render/text_table.py) prints what rich's Table prints for the same
rows: it lays out one-line cells itself and hands everything else to rich, through
``Fit`` (optstate/render/fit.py), which folds a table rich could only fit by breaking
words into ``header: value`` lines."""

from __future__ import annotations

import io

from hypothesis import example, given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text

from optstate.render.text_table import TextTable


def _print(renderable, width: int, colour: bool = False) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=colour,
                      color_system="standard" if colour else None, highlight=False)
    console.print(renderable)
    return console.file.getvalue()


def _same(table: TextTable, width: int) -> None:
    assert _print(table, width) == _print(table.fit(), width)


_cell = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
    st.sampled_from(["", "1,979,392", "exp_avg", "1933x1024", "float32", "名前", "–"]),
    st.builds(lambda s, style: Text(s, style=style), st.text(max_size=8),
              st.sampled_from(["", "dim", "bold red"])),
)


@settings(max_examples=150, deadline=None)
@given(
    columns=st.lists(st.tuples(st.text(min_size=0, max_size=8),
                               st.sampled_from(["left", "right"]), st.integers(0, 7)),
                     min_size=1, max_size=6),
    rows=st.lists(st.lists(_cell, max_size=6), max_size=8),
    padding=st.sampled_from([0, 1]),
    width=st.integers(20, 140),
    title=st.sampled_from(["state", "statistics (norm, min, max, mean over finite elements)",
                           "t"]),
)
@example(columns=[("", "left", 0), ("", "left", 0), ("", "right", 0)], rows=[["", "", "\xa0"]],
         padding=0, width=20, title="state")  # rich strips a no-break space (CI)
def test_same_text_as_rich(columns, rows, padding, width, title):
    table = TextTable(title, columns, padding=padding)
    for row in rows:
        table.add_row(*row[:len(columns)])
    _same(table, width)


def test_inspect_like_table_is_drawn_by_itself_and_matches():
    table = TextTable("state", [("param", "right", 0), ("entry", "left", 0),
                                ("numel", "right", 0)])
    table.add_row("0", "exp_avg", "1,979,392")
    table.add_row("", Text("(no state)", style="dim"))
    assert table._widths() == [5, 10, 9]  # laid out here, not by rich
    _same(table, 80)
    assert _print(table, 80).splitlines() == [
        "state                         ",
        "param   entry            numel",
        "──────────────────────────────",
        "    0   exp_avg      1,979,392",
        "        (no state)            ",
    ]
    coloured = _print(table, 80, colour=True)
    assert "\x1b[1m" in coloured and "\x1b[2m(no state)" in coloured


def test_what_rich_must_lay_out_goes_to_rich():
    for cell in ("two\nlines", "esc\x1b[31m", Text.assemble(("a", "bold"), "b")):
        table = TextTable("state", [("a", "left", 0)])
        table.add_row(cell)
        assert table._widths() is None
        _same(table, 80)
    wide = TextTable("state", [("a", "left", 0), ("b", "left", 0)])
    wide.add_row("x" * 50, "y" * 50)
    _same(wide, 80)  # 103 columns > 80: folded, each cell whole on its own line
    assert _print(wide, 80).splitlines() == ["state", "a " + "x" * 50, "  b: " + "y" * 50]


def test_wide_table_wraps_between_words_as_rich_does_when_it_can():
    """Too wide unbroken but every word fits: rich's own layout (cells wrap between
    words), exactly as before."""
    table = TextTable("state", [("param", "right", 0), ("values", "left", 0)])
    table.add_row("0", "[[0.271, 0.271], [0.271, 0.271], [0.271, 0.271]]")
    assert table._widths() is not None
    out = _print(table, 40)
    assert out == _print(table.to_rich(), 40)
    assert [line.rstrip() for line in out.splitlines()][3:] == [
        "    0   [[0.271, 0.271], [0.271, 0.271],",
        "        [0.271, 0.271]]"]
