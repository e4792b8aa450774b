"""``optstate --help`` without typer or rich: the command table and its plain-text view.

The root help is what a user sees first, and the commands it lists stay unloaded until
one runs (``optstate/cli/__init__.py``): typer's rich help formatter costs ~70 ms of
imports (``rich.markdown``, ``markdown_it``, ``rich.syntax``, ...) and building every
command ~20 ms, more than the whole ``import typer, rich`` this help is measured against
(issue #6). So the names and one-line summaries live in a table here, and the help is
drawn with the same layout as typer's rich help of the other commands (usage, the
description, an Options and a Commands panel) from plain strings; colour only on a
terminal, as rich does. ``tests/test_root_help.py`` checks that every summary is its
command's docstring first line and that, without colour, this text is line for line
what typer's rich formatter prints for the real app.
"""

from __future__ import annotations

import os
import sys

# name -> first line of the command's docstring (tests prove it), in the help's order.
COMMANDS: dict[str, str] = {
    "check": "Check whether a checkpoint loads into the optimizer a config builds.",
    "compare": "Run several optimizers from one start on one objective; compare them.",
    "config": "Write the run config (TOML) that rebuilds a checkpoint's optimizer.",
    "convert": "Convert a torch.save file <-> a DCP folder; DeepSpeed or FSDP2 to either.",
    "diff": "Compare two optimizer checkpoints; exit 0 if equal, 1 if they differ.",
    "inspect": "Show what an optimizer checkpoint holds: kind, groups, per-param stats.",
    "set": "Copy a checkpoint with hyperparameters changed, everything else identical.",
    "simulate": "Step a real torch optimizer on synthetic gradients and save its state.",
    "timeline": "Find where a training run went wrong across its checkpoints.",
}

# The root command's help (the typer callback's, in optstate/cli/__init__.py).
DESCRIPTION = """Inspect, diff, simulate and repair PyTorch optimizer state checkpoints.

Every file is loaded safely (optstate's own unpickler, or torch.load with
weights_only=True): opening a checkpoint never runs code from it. Each
command's --help has examples."""

VERSION_HELP = "Show the version and exit."
HELP_HELP = "Show this message and exit."
USAGE = "Usage: optstate [OPTIONS] COMMAND [ARGS]..."

# typer's completion options (``add_completion=True``), in its words
INSTALL_COMPLETION_HELP = "Install completion for the current shell."
SHOW_COMPLETION_HELP = (
    "Show completion for the current shell, to copy it or customize the installation.")

# (long, short, type, help): the root options, as typer lists them; flags take no value,
# so their type column is empty (optstate/cli: no <bool>)
_OPTIONS = (("--version", "", "", VERSION_HELP),
            ("--install-completion", "", "", INSTALL_COMPLETION_HELP),
            ("--show-completion", "", "", SHOW_COMPLETION_HELP),
            ("--help", "-h", "", HELP_HELP))

_ANSI = {"bold": "1", "dim": "2", "yellow": "33", "cyan": "36", "green": "32"}


def terminal_width() -> int:
    """The width rich would use for typer's help: $TERMINAL_WIDTH (typer's override),
    else $COLUMNS, else the terminal of stdin/stdout/stderr, else 80."""
    for var in ("TERMINAL_WIDTH", "COLUMNS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value):
            return int(value)
    for fd in (0, 1, 2):
        try:
            return os.get_terminal_size(fd).columns or 80
        except (OSError, ValueError):
            continue
    return 80


def use_colour(stream: object = None) -> bool:
    """Colour as rich decides it, simplified: a terminal (or FORCE_COLOR), not NO_COLOR,
    not a dumb terminal."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR") or os.environ.get("PY_COLORS"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") not in ("dumb", "unknown")


def _wrap(text: str, width: int) -> list[str]:
    """Words onto lines of at most ``width`` (rich's rule: break at spaces, fold a word
    longer than a line)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        while len(word) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:width])
            word = word[width:]
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= width:
            line += " " + word
        else:
            lines.append(line)
            line = word
    if line or not lines:
        lines.append(line)
    return lines


def root_help(width: int | None = None, colour: bool | None = None) -> str:
    """The root ``--help`` text (lines end with ``\\n``)."""
    width = max(40, terminal_width() if width is None else width)
    colour = use_colour() if colour is None else colour
    ascii_only = "utf" not in (getattr(sys.stdout, "encoding", "") or "utf-8").lower()

    def st(text: str, *styles: str) -> str:
        if not colour or not text or not styles:
            return text
        return f"\x1b[{';'.join(_ANSI[s] for s in styles)}m{text}\x1b[0m"

    usage = _wrap(USAGE, width - 2)
    usage[0] = st("Usage: ", "bold", "yellow") + st(usage[0][len("Usage: "):], "bold")
    out: list[str] = ["", *(" " + st(ln, "bold") if i else " " + ln
                            for i, ln in enumerate(usage)), ""]
    first, rest = DESCRIPTION.split("\n\n", 1)
    out += [" " + ln for ln in _wrap(first, width - 2)]
    out.append("")
    for paragraph in rest.split("\n\n"):
        for source_line in paragraph.splitlines():
            out += [" " + st(ln, "dim") for ln in _wrap(source_line, width - 2)]
        out.append("")
    out.pop()
    out.append("")

    tl, tr, bl, br, h, v = ("+", "+", "+", "+", "-", "|") if ascii_only else (
        "╭", "╮", "╰", "╯", "─", "│")
    inner = width - 4

    def panel(title: str, rows: list[tuple[list[tuple[str, tuple[str, ...]]], list[str]]]
              ) -> list[str]:
        """rows: (fixed cells with their styles, the wrapped last cell's lines)."""
        top = f"{tl}{h} {title} " + h * (width - len(title) - 5) + tr
        lines = [st(top, "dim")]
        for cells, last in rows:
            lead = ""
            blank = ""
            for text, styles in cells:
                lead += st(text, *styles)
                blank += " " * len(text)
            for i, ln in enumerate(last):
                body = (lead if i == 0 else blank) + ln
                pad = " " * (inner - len(blank) - len(ln))
                lines.append(st(v, "dim") + " " + body + pad + " " + st(v, "dim"))
        lines.append(st(bl + h * (width - 2) + br, "dim"))
        return lines

    # Options: typer's six columns (long, short, 2 negative forms, type, help) with one
    # space either side of each, none at the table's edges; empty columns keep their pads.
    long_w = max(len(o[0]) for o in _OPTIONS)
    short_w = max(len(o[1]) for o in _OPTIONS)
    type_w = max(len(o[2]) for o in _OPTIONS)
    help_w = inner - (long_w + 1) - (short_w + 2) - 2 - 2 - (type_w + 2) - 1
    option_rows = []
    for long, short, typ, text in _OPTIONS:
        if help_w < 20:  # a narrow terminal: the help under the name, not split mid-word
            option_rows.append(([(long, ("bold", "cyan")), (" " if short else "", ()),
                                 (short, ("bold", "green"))], [""]))
            option_rows.append(([("    ", ())], _wrap(text, inner - 4)))
            continue
        cells = [(long, ("bold", "cyan")), (" " * (long_w - len(long) + 2), ()),
                 (short, ("bold", "green")), (" " * (short_w - len(short) + 6), ()),
                 (typ, ("bold", "yellow")), (" " * (type_w - len(typ) + 2), ())]
        option_rows.append((cells, _wrap(text, help_w)))
    out += panel("Options", option_rows)

    name_w = max(len(n) for n in COMMANDS)
    command_rows = [([(name, ("bold", "cyan")), (" " * (name_w - len(name) + 2), ())],
                     _wrap(summary, inner - name_w - 2)) for name, summary in COMMANDS.items()]
    out += panel("Commands", command_rows)
    return "\n".join(ln.rstrip(" ") if not colour else ln for ln in out) + "\n"
