"""The README's console examples run as shown (scripts/check_readme.py), and the checker
itself notices drift: a changed output, a missing input, an elision that does not fit."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
try:
    import check_readme
finally:
    sys.path.remove(str(ROOT / "scripts"))

HEAD = "Outputs are real output, 88 columns.\n\n"


def _check(tmp_path, text, **kw):
    readme = tmp_path / "README.md"
    readme.write_text(HEAD + text)
    out = io.StringIO()
    return check_readme.check(readme, out=out, **kw), out.getvalue(), readme


def test_matching_output_passes(tmp_path):
    code, out, _ = _check(tmp_path, "```console\n$ echo hi\nhi\n\n$ echo $COLUMNS\n88\n```\n")
    assert code == 0, out
    assert out.endswith("2 commands run, 0 outputs differ from README.md\n")


def test_drift_is_a_unified_diff_and_exit_1(tmp_path):
    code, out, _ = _check(tmp_path, "intro\n\n```text\n$ echo hello\nhi\n```\n")
    assert code == 1
    assert "README.md:6: $ echo hello\n--- README.md:6 (README)\n+++ actual output\n" in out
    assert "\n-hi\n+hello\n" in out
    assert out.endswith("1 commands run, 1 outputs differ from README.md\n")


def test_stderr_shows_where_a_terminal_shows_it(tmp_path):
    code, out, _ = _check(tmp_path, "```console\n$ optstate simulate --steps abc\n"
                                    "Error: wrong\n```\n")
    assert code == 1
    assert "+Error: Invalid value for '--steps'" in out


def test_an_input_must_be_made_by_an_earlier_example(tmp_path):
    text = "```console\n$ cat made.txt\nmade\n```\n"
    assert _check(tmp_path, text)[0] == 1  # nothing made it
    made = "<!-- file: made.txt -->\n```text\nmade\n```\n\n"
    assert _check(tmp_path, made + text)[0] == 0
    assert _check(tmp_path, text + made)[0] == 1  # made too late


def test_samples_are_there_and_nothing_else(tmp_path):
    code, out, _ = _check(tmp_path, "```console\n$ ls\nsample_checkpoints\n```\n")
    assert code == 0, out


def test_elision_and_normalisations():
    tmp = "/tmp/check_readme.x/work"
    actual = [f"saved {tmp}/a.pt   ", "took 1.25 s", "in 35ms", "version 0.1.0", "", ""]
    got = check_readme.normalise(actual, tmp)
    assert got == ["saved <TMP>/a.pt", "took <T>", "in <T>", "version <VERSION>"]
    assert check_readme.normalise(["3 steps", "2x2s"], "") == ["3 steps", "2x2s"]
    assert check_readme.matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert check_readme.matches(["a", "...", "d"], ["a", "d"])
    assert check_readme.matches(["...", "c", "..."], ["a", "b", "c", "d"])
    assert not check_readme.matches(["a", "...", "d"], ["a", "b", "c"])
    assert not check_readme.matches(["a", "c"], ["a", "b", "c"])


def test_sections_select_examples(tmp_path):
    text = ("```console\n$ echo one\none\n```\n<!-- section: two -->\n"
            "```console\n$ echo two\nTWO\n```\n")
    assert _check(tmp_path, text, sections=["intro"])[0] == 0
    assert _check(tmp_path, text, sections=["two"])[0] == 1
    assert _check(tmp_path, text, sections=["nope"])[0] == 2


def test_update_rewrites_a_drifted_block_from_the_real_run(tmp_path):
    text = ("before\n\n```console\n$ printf 'a\\nb  \\n'\nold\n\n$ echo same\nsame\n```\n"
            "\nafter\n")
    code, _, readme = _check(tmp_path, text, write=True)
    assert code == 1
    assert readme.read_text() == HEAD + (
        "before\n\n```console\n$ printf 'a\\nb  \\n'\na\nb\n\n$ echo same\nsame\n```\n"
        "\nafter\n")
    assert check_readme.check(readme, out=io.StringIO()) == 0


def test_update_leaves_elided_blocks_alone(tmp_path):
    text = "```console\n$ printf 'a\\nb\\n'\n...\nc\n```\n"
    code, out, readme = _check(tmp_path, text, write=True)
    assert code == 1
    assert "not updated: README.md:3 has '...' elisions" in out
    assert readme.read_text() == HEAD + text


def test_the_width_must_be_stated(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("```console\n$ echo\n```\n")
    with pytest.raises(SystemExit, match="does not state its width"):
        check_readme.check(readme, out=io.StringIO())



@pytest.mark.slow
def test_readme_examples_run_as_shown():
    """A representative part of README.md's ``$`` examples, run as the script runs them
    (quick start, inspect, diff, pictures: ~12 commands). The whole README, simulate's
    and the sharded runs included, is ``python scripts/check_readme.py`` (in .ci/run)."""
    sections = ["intro", "inspect", "diff", "pictures"]
    argv = [sys.executable, str(ROOT / "scripts" / "check_readme.py")]
    for s in sections:
        argv += ["--section", s]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr
    assert "0 outputs differ" in r.stdout
