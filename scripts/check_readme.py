"""Run the README's console examples and compare their output with what it shows.

    python scripts/check_readme.py                 # every example; exit 1 on any drift
    python scripts/check_readme.py --section simulate --section intro
    python scripts/check_readme.py --update        # rewrite drifted outputs from real runs

What is run: every fenced block whose first line starts with ``$ `` (```console,
```text or untagged). Each ``$ COMMAND`` line runs in ``bash`` and the lines after it,
up to the next ``$ `` line, are its expected output (stdout and stderr together, as a
terminal shows them). The blocks run in README order in one temp folder that starts
with a copy of ``sample_checkpoints/`` and nothing else, so every input an example uses
must be made by an earlier example (or be a sample). A fenced block (```toml, ...) right
after a ``<!-- file: NAME -->`` line is written to NAME when it is reached: that is how
the README's config files become real files.

How: ``optstate`` and ``python`` on PATH are this checkout's (the interpreter running
this script, ``-m optstate``); ``COLUMNS`` is the width the README states ("real output,
N columns"), ``NO_COLOR=1``, UTF-8, unbuffered (so stderr and stdout interleave as on a
terminal); stdin is empty. Blocks under ``--section NAME`` (the README's
``<!-- section: NAME -->`` markers; ``intro`` before the first) run alone: pick
sections whose inputs they make themselves.

Normalisations, applied to both sides before comparing (and nothing else):

1. trailing whitespace of each line, and blank lines at the end of an output, ignored;
2. a line that is exactly ``...`` in the README stands for any number of output lines;
3. durations (a number followed by ``s`` or ``ms``: ``1.2 s``, ``35ms``) become ``<T>``;
4. the temp folder's absolute path becomes ``<TMP>``; the versions of optstate and torch
   become ``<VERSION>``.

A mismatch prints a unified diff (README lines marked ``-``, real output ``+``) and the
exit status is 1; 0 when every output matches, 2 on a usage error. ``--update`` rewrites
the drifted blocks in README.md from the real output (one targeted replacement per
block; blocks with ``...`` elisions are only reported, as the elision is an editor's
choice).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SAMPLES = ROOT / "sample_checkpoints"
TIMEOUT = 300  # seconds per command

_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
_SECTION = re.compile(r"<!--\s*section:\s*([\w-]+)\s*-->")
_FILE = re.compile(r"^<!--\s*file:\s*(\S+)\s*-->\s*$")
_WIDTH = re.compile(r"real output, (\d+) columns")
_DURATION = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ms|s)(?![\w])")


@dataclass
class Command:
    line: int  # 1-based README line of the ``$ `` line
    text: str  # the command without ``$ ``
    expected: list[str] = field(default_factory=list)
    blank_after: bool = False  # a blank line separates it from the next command


@dataclass
class Block:
    start: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    section: str
    info: str
    lines: list[str]  # the content between the fences
    file: str | None = None  # <!-- file: NAME -->: write the content there
    commands: list[Command] = field(default_factory=list)


def parse(text: str) -> list[Block]:
    """The README's fenced blocks that run (``$ `` blocks) or make files."""
    blocks: list[Block] = []
    lines = text.splitlines()
    section = "intro"
    i = 0
    while i < len(lines):
        m = _SECTION.search(lines[i])
        if m:
            section = m.group(1)
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence.group(1)):
            j += 1
        content = lines[i + 1:j]
        previous = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        named = _FILE.match(previous)
        block = Block(i + 1, j + 1, section, fence.group(2), content,
                      named.group(1) if named else None)
        if content and content[0].startswith("$ ") and block.file is None:
            block.commands = _commands(content, i + 2)
        if block.commands or block.file:
            blocks.append(block)
        i = j + 1
    return blocks


def _commands(content: list[str], first_line: int) -> list[Command]:
    commands: list[Command] = []
    k = 0
    while k < len(content):
        ln = content[k]
        if ln.startswith("$ "):
            text, start = ln[2:], k
            while text.endswith("\\") and k + 1 < len(content):  # continued command
                k += 1
                text += "\n" + content[k].removeprefix("> ")  # bash joins \ + newline
            commands.append(Command(first_line + start, text))
        else:
            commands[-1].expected.append(ln)
        k += 1
    for cmd in commands:
        while cmd.expected and not cmd.expected[-1].strip():
            cmd.expected.pop()
            cmd.blank_after = True
    return commands


def normalise(lines: list[str], tmp: str) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for package in ("optstate", "torch"):
        try:
            versions.append(version(package))
        except PackageNotFoundError:
            pass
    out = []
    for ln in lines:
        ln = ln.rstrip()
        if tmp:
            ln = ln.replace(tmp, "<TMP>")
        for v in sorted(versions, key=len, reverse=True):
            ln = ln.replace(v, "<VERSION>")
        out.append(_DURATION.sub("<T>", ln))
    while out and not out[-1]:
        out.pop()
    return out


def matches(expected: list[str], actual: list[str]) -> bool:
    """``expected`` equals ``actual``, a line ``...`` in it matching any run of lines."""
    n, m = len(expected), len(actual)
    # ok[i][j]: expected[i:] matches actual[j:]
    ok = [[False] * (m + 1) for _ in range(n + 1)]
    ok[n][m] = True
    for i in range(n - 1, -1, -1):
        for j in range(m, -1, -1):
            if expected[i] == "...":
                ok[i][j] = ok[i + 1][j] or (j < m and ok[i][j + 1])
            else:
                ok[i][j] = j < m and expected[i] == actual[j] and ok[i + 1][j + 1]
    return ok[0][0]


def width(text: str) -> int:
    m = _WIDTH.search(text)
    if not m:
        raise SystemExit("Error: README.md does not state its width ('real output, N columns')")
    return int(m.group(1))


def environment(tmp: Path, columns: int) -> dict[str, str]:
    """Shims so that ``optstate`` and ``python`` are this checkout's, and a quiet,
    colourless, fixed-width terminal-like environment."""
    bindir = tmp.parent / "bin"
    bindir.mkdir(exist_ok=True)
    for name, target in (("optstate", f'"{sys.executable}" -m optstate'),
                         ("python", f'"{sys.executable}"'), ("python3", f'"{sys.executable}"')):
        shim = bindir / name
        shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_COLOR", "PY_COLORS", "CLICOLOR_FORCE", "TERMINAL_WIDTH",
                        "LINES", "OPTSTATE_DEBUG", "PYTHONSTARTUP")}
    pythonpath = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", COLUMNS=str(columns),
               NO_COLOR="1", TERM="dumb", PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8",
               LC_ALL="C.UTF-8", PYTHONPATH=os.pathsep.join(pythonpath))
    return env


def run(command: str, cwd: Path, env: dict[str, str]) -> list[str]:
    try:
        r = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return [f"(timed out after {TIMEOUT} s)"]
    return r.stdout.decode("utf-8", "replace").splitlines()


def update(readme: Path, block: Block, outputs: list[list[str]]) -> bool:
    """Replace ``block``'s content in ``readme`` by its commands with their real
    outputs; the README is re-read first and the old block must still be there once."""
    old = "\n".join(block.lines)
    new: list[str] = []
    for cmd, output in zip(block.commands, outputs, strict=True):
        new += ("$ " + cmd.text).split("\n")
        new += [ln.rstrip() for ln in output]
        while len(new) > 1 and not new[-1]:
            new.pop()
        if cmd.blank_after:
            new.append("")
    while new and not new[-1]:
        new.pop()
    text = readme.read_text()
    fence_old = f"\n{old}\n```"
    if text.count(fence_old) != 1:
        return False
    readme.write_text(text.replace(fence_old, "\n" + "\n".join(new) + "\n```"))
    return True


def check(readme: Path = README, sections: list[str] | None = None, write: bool = False,
          out=sys.stdout) -> int:
    """Run the README's examples; print a diff per mismatch. Returns the exit status."""
    text = readme.read_text()
    columns = width(text)
    blocks = [b for b in parse(text) if not sections or b.section in sections]
    if sections and not blocks:
        print(f"Error: no examples in section(s) {', '.join(sections)}", file=sys.stderr)
        return 2
    failed = ran = 0
    with tempfile.TemporaryDirectory(prefix="check_readme.") as top:
        work = Path(top) / "work"
        if SAMPLES.is_dir():
            shutil.copytree(SAMPLES, work / SAMPLES.name)
        work.mkdir(exist_ok=True)
        env = environment(work, columns)
        tmp = str(work)
        for block in blocks:
            if block.file:
                (work / block.file).write_text("\n".join(block.lines) + "\n")
                continue
            outputs = []
            drifted = False
            for cmd in block.commands:
                actual = run(cmd.text, work, env)
                outputs.append(actual)
                ran += 1
                want, got = normalise(cmd.expected, tmp), normalise(actual, tmp)
                if matches(want, got):
                    continue
                drifted = True
                failed += 1
                where = f"{readme.name}:{cmd.line}"
                out.write(f"{where}: $ {cmd.text}\n")
                out.writelines(ln + "\n" for ln in difflib.unified_diff(
                    want, got, f"{where} (README)", "actual output", lineterm="", n=2))
                out.write("\n")
            if drifted and write:
                if any(ln == "..." for c in block.commands for ln in c.expected):
                    out.write(f"not updated: {readme.name}:{block.start} has '...' "
                              "elisions; edit it from the real output above\n")
                elif update(readme, block, outputs):
                    out.write(f"updated {readme.name}:{block.start}\n")
                else:
                    out.write(f"not updated: {readme.name}:{block.start} changed meanwhile\n")
    out.write(f"{ran} commands run, {failed} outputs differ from {readme.name}\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("readme", nargs="?", type=Path, default=README)
    parser.add_argument("--section", action="append", help="run only this section's examples")
    parser.add_argument("--update", action="store_true",
                        help="rewrite drifted outputs in the README from the real runs")
    args = parser.parse_args(argv)
    return check(args.readme, args.section, args.update)


if __name__ == "__main__":
    sys.exit(main())
