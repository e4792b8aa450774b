"""Keep text from a checkpoint from driving the terminal.

Keys, parameter names and string values come from untrusted files. Printed raw, an ESC
in one clears the screen, moves the cursor, sets the window title or plants an OSC 8
hyperlink. ``protect(console)`` installs a render hook that escapes control characters
in the text of every segment rich prints (``\\x1b`` is shown as ``\\x1b``), leaving
rich's own styling, which travels as styles and control segments, untouched.

The consoles that print such text are made with ``markup=False, emoji=False``: rich
otherwise parses every str (a table cell, a title) as markup and emoji codes, so a key
``[bold]x[/bold]`` showed as a bold ``x`` (or ``[link=...]`` as a hyperlink, ``:warning:``
as an emoji) where a table fits, and as stored where ``Fit`` folds it. optstate's own
styles travel as ``Text`` styles, never as markup.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls except tab and newline (rich lays those out itself), DEL, and C1.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    return _UNSAFE.sub(lambda m: repr(m.group(0))[1:-1], text)


def protect(console: Any) -> Any:
    """Install the escaping hook on a rich Console; returns the console."""
    from rich.console import RenderHook
    from rich.segment import Segment

    class _Escaped:
        def __init__(self, renderable: Any) -> None:
            self.renderable = renderable

        def __rich_console__(self, console: Any, options: Any) -> Any:
            for seg in console.render(self.renderable, options):
                if seg.control or not _UNSAFE.search(seg.text):
                    yield seg
                else:
                    yield Segment(escape_controls(seg.text), seg.style)

    class _Hook(RenderHook):
        def process_renderables(self, renderables: list) -> list:
            return [_Escaped(r) for r in renderables]

    console.push_render_hook(_Hook())
    return console


def safe_console(*, stderr: bool = False, file: Any = None) -> Any:
    """The one way a rich Console for a person is made (stdout's answer, stderr's notes,
    the progress bar): markup and emoji codes off, so names from a file print as stored
    (``[bold]x``, ``:warning:``), control characters escaped (``protect``). ``file``:
    where it writes (the CLI's answer stream, ``cli.stdout_guard``), else stdout/stderr."""
    from rich.console import Console

    return protect(Console(stderr=stderr, file=file, highlight=False, soft_wrap=False,
                           markup=False, emoji=False))
