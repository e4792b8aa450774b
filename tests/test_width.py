"""Human output at any terminal width (issue #15 item 8): no number, path or name is cut
or split over two lines at any width >= 40, and no line is wider than the terminal.

Every command runs in a real pseudo-terminal whose size is set with TIOCSWINSZ (rich
reads it from the tty, as it does for a user); the output at 200 columns is the wide view.
Checked, per command and width: each number, path and name that the wide view shows (and
each name and path the ``--json`` view reports) is one whole token on one line of the
narrow view, and no line exceeds the width. The exception: a word longer than a whole
(indented) line, as a 55-character diff path at 40 columns, which cannot stay whole.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from optstate.render.fit import Fit

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"
WIDTHS = (40, 60, 80)
WIDE = 200

# Names of parameters as real models have them (up to 35 characters: each must fit a
# 40-column line whole), and numbers with more digits than a short format keeps.
NAMES = ("encoder.layers.0.attn.q_proj.weight", "encoder.layers.0.attn.q_proj.bias",
         "decoder.output_head.w")
AWKWARD = (0.00075, 41234.5678, -1.234567e-12)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][0-9A-Za-z]")
_SPLIT = re.compile(r"[\s│┃┏┓┗┛┡┩┠┨┣┫╇╈┳┻╋━─┼├┤┬┴┌┐└┘╭╮╰╯═║]+")
_STRIP = ",;:()[]{}\"'"


def run_in_pty(args: list[str], width: int, cwd: Path, env: dict | None = None,
               stderr: str = "devnull") -> tuple[int, str]:
    """Run ``python -m optstate *args`` with stdin and stdout on a pseudo-terminal
    ``width`` columns wide; stderr to ``"devnull"``, the same ``"pty"``, or a ``"pipe"``.
    Returns (exit status, the terminal's text without escape codes), and with a pipe
    (exit status, terminal text, stderr text)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, width, 0, 0))
    e = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES",
                                                            "FORCE_COLOR", "OPTSTATE_DEBUG")}
    e.update({"PYTHONPATH": str(ROOT), "TERM": "xterm-256color", **(env or {})})
    err = {"devnull": subprocess.DEVNULL, "pty": slave, "pipe": subprocess.PIPE}[stderr]
    proc = subprocess.Popen([sys.executable, "-m", "optstate", *args], stdin=slave,
                            stdout=slave, stderr=err, cwd=cwd, env=e)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output for 120 s from {args}")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    piped = proc.stderr.read().decode() if proc.stderr is not None else None
    code = proc.wait(timeout=120)
    text = _ANSI.sub("", b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n"))
    return (code, text) if piped is None else (code, text, piped)


def tokens(text: str) -> set[str]:
    out = set()
    for word in _SPLIT.split(text):
        word = word.strip(_STRIP)
        if word:
            out.add(word)
    return out


def worth_keeping(token: str) -> bool:
    """A number, path or name (not a word of prose or a table rule)."""
    return any(c.isdigit() for c in token) or any(c in token for c in "._/")


def check_widths(args: list[str], cwd: Path, must_show: set[str] = frozenset(),
                 codes: tuple[int, ...] = (0,)) -> dict[int, str]:
    outputs = {}
    for width in (WIDE, *WIDTHS):
        code, text = run_in_pty(args, width, cwd)
        assert code in codes, f"{args} at {width} columns exit {code}:\n{text}"
        outputs[width] = text
    wide = tokens(outputs[WIDE])
    missing = {t for t in must_show if t not in wide}
    assert not missing, f"{args} at {WIDE} columns lacks {sorted(missing)}:\n{outputs[WIDE]}"
    keep = {t for t in wide if worth_keeping(t)} | set(must_show)
    for width in WIDTHS:
        text = outputs[width]
        too_wide = [line for line in text.splitlines() if _cells(line) > width]
        assert not too_wide, f"{args} at {width} columns: lines wider:\n" + "\n".join(too_wide)
        # a word longer than a whole (indented) line is the one thing that must fold
        lost = sorted(t for t in keep - tokens(text) if _cells(t) <= width - 4)
        assert not lost, (f"{args} at {width} columns: cut or split: {lost}\n{text}")
    return outputs


def _cells(line: str) -> int:
    from rich.cells import cell_len

    return cell_len(line)


def _json(args: list[str], cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "optstate", *args, "--json"], cwd=cwd,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with an AdamW checkpoint of long parameter names and awkward numbers
    (and a second one differing in one buffer), plus copies of the sample checkpoints."""
    d = tmp_path_factory.mktemp("width")
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2)),
              torch.nn.Parameter(torch.randn(2, 2))]
    opt = torch.optim.AdamW([
        {"params": list(zip(NAMES[:2], params[:2], strict=True)), "lr": AWKWARD[0],
         "weight_decay": AWKWARD[1]},
        {"params": [(NAMES[2], params[2])], "lr": 1e-3}])
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state[params[0]]
    state["exp_avg"].fill_(AWKWARD[2])
    state["exp_avg_sq"].fill_(AWKWARD[1])
    model = {n: p.detach() for n, p in zip(NAMES, params, strict=True)}
    torch.save({"model": model, "optimizer": opt.state_dict()}, d / "awkward.pt")
    state["exp_avg_sq"].add_(0.3)
    opt.state[params[2]]["exp_avg"].mul_(1.0001)
    torch.save({"model": model, "optimizer": opt.state_dict()}, d / "awkward_b.pt")
    for name in ("adam_two_groups.pt", "adamw_scheduler.pt"):
        shutil.copy(SAMPLES / name, d / name)
    (d / "run.toml").write_text(
        'optimizer = "AdamW"\n[hyperparams]\nlr = 0.00075\nweight_decay = 41234.5678\n'
        '[[groups]]\nshapes = ["3x2", "2"]\n[[groups]]\nshapes = ["2x2"]\n')
    return d


def _names_in(report: dict) -> set[str]:
    return {p["name"] for p in report["params"] if p.get("name")} | {
        e for p in report["params"] for e in p["state"]}


def test_inspect_awkward(work):
    """Structure, statistics and histograms of long names and awkward numbers; the
    statistics keep the wide view's six significant digits at every width (not 4.12e4)."""
    report = _json(["inspect", "awkward.pt"], work)
    assert _names_in(report) >= set(NAMES)
    must = _names_in(report) | {"awkward.pt", "0.00075", "41234.6", "-1.23457e-12", "101004"}
    out = check_widths(["inspect", "awkward.pt", "--hist"], work, must)
    for width in WIDTHS:
        assert "4.12e4" not in out[width]


def test_inspect_sample(work):
    """A sample checkpoint with a scheduler (its line, two groups, names)."""
    report = _json(["inspect", "adamw_scheduler.pt"], work)
    check_widths(["inspect", "adamw_scheduler.pt"], work, _names_in(report))


def test_diff(work):
    report = _json(["diff", "awkward.pt", "awkward_b.pt"], work)
    paths = {c["path"] for c in report["changes"]}
    assert paths
    check_widths(["diff", "awkward.pt", "awkward_b.pt"], work,
                 paths | {"awkward.pt", "awkward_b.pt"}, codes=(1,))


def test_diff_groups_differ(work):
    check_widths(["diff", "awkward.pt", "adam_two_groups.pt"], work, codes=(1, 2))


def test_simulate(work):
    args = ["simulate", "-O", "adamw", "--lr", "0.00075", "--set", "weight_decay=41234.5678",
            "--shape", "3x2", "--shape", "2", "--steps", "3"]
    check_widths(args, work, {"0.00075", "41234.6"})


def test_check_set_convert_layout(work):
    check_widths(["check", "awkward.pt", "--config", "run.toml"], work, {"awkward.pt"},
                 codes=(0, 1))
    check_widths(["set", "awkward.pt", "-o", "awkward_lr.pt", "--lr", "0.00075123",
                  "--dry-run"], work, {"0.00075123", "0.00075"})
    check_widths(["convert", "awkward.pt", "awk_dcp", "--force"], work, {"awk_dcp"})
    check_widths(["inspect", "awk_dcp", "--layout"], work)


def test_compare(work):
    check_widths(["compare", "--optimizers", "sgd,adam", "--steps", "5",
                  "--set", "sgd.lr=0.00075"], work, {"lr=0.00075"})


# -- Fit itself, in process: any table, any width ----------------------------------------

_word = st.text(alphabet="abcxyz0123456789._-", min_size=1, max_size=30)
_cell = st.lists(_word, min_size=0, max_size=4).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(_cell, min_size=4, max_size=4), min_size=1, max_size=6),
       width=st.integers(40, 140),
       no_wrap=st.lists(st.booleans(), min_size=4, max_size=4),
       overflow=st.sampled_from(["fold", "ellipsis", "crop"]),
       head=st.integers(0, 2), sub=st.integers(0, 1))
def test_fit_never_cuts_or_splits_a_word(rows, width, no_wrap, overflow, head, sub):
    table = Table(title="state", title_justify="left")
    for i, header in enumerate(("param", "entry", "norm", "values (or statistics)")):
        table.add_column(header, no_wrap=no_wrap[i], overflow=overflow)
    for row in rows:
        table.add_row(*row)
    console = Console(file=io.StringIO(), width=width, highlight=False)
    console.print(Fit(table, head=head, sub=sub))
    out = console.file.getvalue()
    assert all(_cells(line) <= width for line in out.splitlines()), out
    words = {w for row in rows for cell in row for w in cell.split()}
    lost = {w for w in words - tokens(out) if len(w) <= width - 4}
    assert not lost, out
    if Measurement.get(console, console.options.update_width(1 << 20), table).maximum <= width:
        plain = Console(file=io.StringIO(), width=width, highlight=False)
        plain.print(table)
        assert out == plain.file.getvalue()  # fits unbroken: rich's own output


# -- keys that look like rich markup ------------------------------------------------------

HOSTILE = ("[bold]x[/bold]", "[link=http://e.example]y[/link]", "enc.[red]z")


def test_markup_like_names_are_shown_literally(tmp_path):
    """A name or entry holding rich markup is text from a file: the table (wide) and the
    folded form (narrow) both show it exactly as stored, never as styling or a link."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)) for _ in HOSTILE]
    opt = torch.optim.AdamW([{"params": list(zip(HOSTILE, params, strict=True))}])
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["[i]ent[/i]"] = torch.ones(2)
    sd["param_groups"][0]["[u]hp[/u]"] = 1
    torch.save({"optimizer": sd}, tmp_path / "hostile.pt")
    # 80: too narrow for the literal names in one line of text, wide enough for rich's
    # table once it has taken the markup out
    for width in (WIDE, 80, 40):
        code, text = run_in_pty(["inspect", "hostile.pt"], width, tmp_path)
        assert code == 0, text
        for name in (*HOSTILE, "[i]ent[/i]", "[u]hp[/u]"):
            assert name in text, f"{name!r} not shown literally at {width} columns:\n{text}"


def test_emoji_codes_and_markup_in_titles_are_shown_literally(tmp_path):
    """rich also turns ':warning:' into an emoji in a str cell, and parses a table title
    as markup: a key ':thumbs_up:' in diff's table and a DCP data file named
    '[i]x.distcp' in --layout's title are shown as stored."""
    import dataclasses
    import pickle

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([{"params": [(":thumbs_up:", p)]}])
    p.grad = torch.ones_like(p)
    opt.step()
    sd = opt.state_dict()
    torch.save({"optimizer": sd}, tmp_path / "a.pt")
    sd["param_groups"][0][":warning:"] = 1
    torch.save({"optimizer": sd}, tmp_path / "b.pt")
    code, text = run_in_pty(["diff", "a.pt", "b.pt"], WIDE, tmp_path)
    assert code == 1, text
    assert ":warning:" in text and "\u26a0" not in text, text
    code, text = run_in_pty(["convert", "a.pt", "a_dcp"], WIDE, tmp_path)
    assert code == 0, text
    folder = tmp_path / "a_dcp"
    meta = pickle.loads((folder / ".metadata").read_bytes())  # our own file
    (old,) = {v.relative_path for v in meta.storage_data.values()}
    for key, value in meta.storage_data.items():
        meta.storage_data[key] = dataclasses.replace(value, relative_path="[i]x.distcp")
    (folder / old).rename(folder / "[i]x.distcp")
    (folder / ".metadata").write_bytes(pickle.dumps(meta))
    for width in (WIDE, 40):
        code, text = run_in_pty(["inspect", "a_dcp", "--layout"], width, tmp_path)
        assert code == 0, text
        assert "[i]x.distcp" in text, f"at {width} columns:\n{text}"
