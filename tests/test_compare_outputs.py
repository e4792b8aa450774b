"""scripts/compare_outputs.py: its normalisations replace only what varies between runs,
``compare`` finds every difference, and ``record`` writes one stable file per invocation
(run here with a stand-in shell script for optstate, so it takes no torch start-ups)."""

from __future__ import annotations

import io
import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
try:
    import compare_outputs
finally:
    sys.path.remove(str(ROOT / "scripts"))


def test_normalise_text_replaces_only_what_varies():
    tmp = "/tmp/compare_outputs.ab12cd34"
    text = (f"wrote {tmp}/convert/x_dcp in 1.25 s (35ms load)\n"
            "left .x_dcp.p0012345.1a2b3c4d.optstate-tmp\n"
            "lr 0.1 · 10 steps · 16,043 bytes · 2x2 · loss -0.3 → 1e-3s\n")
    assert compare_outputs.normalise_text(text, tmp) == (
        "wrote <TMP>/convert/x_dcp in <T> (<T> load)\n"
        "left .x_dcp.p<PID>.<RAND>.optstate-tmp\n"
        "lr 0.1 · 10 steps · 16,043 bytes · 2x2 · loss -0.3 → 1e-3s\n")


def test_dcp_metadata_hash_ignores_temp_name_and_save_id(tmp_path):
    one, two = tmp_path / "a", tmp_path / "b"
    one.mkdir()
    two.mkdir()
    (one / ".metadata").write_bytes(
        b"\x80.x_dcp.p0010344.da2c24f0.optstate-tmp\x94"
        b"$3870d6a9-0c6e-4be5-a221-920dc305e63d\x94state.0.exp_avg")
    (two / ".metadata").write_bytes(
        b"\x80.x_dcp.p0000099.7b6f3c70.optstate-tmp\x94"
        b"$4aece4e9-d058-4fe3-aa48-6471b661c74e\x94state.0.exp_avg")
    da, db = (compare_outputs.file_digest(d / ".metadata", "/nowhere") for d in (one, two))
    assert da == db and da[2] is True
    (two / ".metadata").write_bytes((two / ".metadata").read_bytes().replace(b"exp_avg",
                                                                             b"exp_avh"))
    assert compare_outputs.file_digest(two / ".metadata", "/nowhere")[0] != da[0]
    # any other file is hashed as it is, uuid and all
    (one / "x.pt").write_bytes(b"3870d6a9-0c6e-4be5-a221-920dc305e63d")
    (two / "x.pt").write_bytes(b"4aece4e9-d058-4fe3-aa48-6471b661c74e")
    assert (compare_outputs.file_digest(one / "x.pt", "/nowhere")[0]
            != compare_outputs.file_digest(two / "x.pt", "/nowhere")[0])


def _compare(a, b):
    out = io.StringIO()
    return compare_outputs.compare(a, b, out=out), out.getvalue()


def test_compare_counts_differences_and_missing_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "_inputs.txt").write_text("x.pt  00\n")
        (d / "001-top-bare.txt").write_text("$ optstate\nexit: 2\n")
        (d / "002-top-version.txt").write_text("$ optstate --version\nexit: 0\n")
    assert _compare(a, b) == (0, "2 invocations compared, 0 differ\n")

    (b / "002-top-version.txt").write_text("$ optstate --version\nexit: 1\n")
    (a / "003-top-help.txt").write_text("$ optstate --help\n")
    status, out = _compare(a, b)
    assert status == 1
    assert "-exit: 0\n+exit: 1\n" in out
    assert f"003-top-help.txt: only in {a}\n" in out
    assert out.endswith("3 invocations compared, 2 differ\n")

    (b / "002-top-version.txt").write_text("$ optstate --version\nexit: 0\n")
    (a / "003-top-help.txt").unlink()
    (b / "_inputs.txt").write_text("x.pt  01\n")
    status, out = _compare(a, b)
    assert status == 1
    assert out.endswith("the recordings' inputs differ (_inputs.txt above)\n"
                        "2 invocations compared, 0 differ\n")
    assert compare_outputs.compare(a, tmp_path / "nope") == 2


def test_record_writes_every_invocation_and_is_stable(tmp_path, capsys):
    fake = tmp_path / "bin" / "optstate"
    fake.parent.mkdir()
    # prints its arguments, cwd and a duration; "simulate" writes a file, "set" changes it
    fake.write_text('#!/bin/sh\necho "$@"; echo "in $(pwd) after 0.25 s" >&2\n'
                    'case "$1" in simulate) echo one > out.bin;; set) echo two > out.bin;; '
                    'convert) rm -f out.bin;; esac\nexit 3\n')
    fake.chmod(0o755)
    total = sum(len(v) for v in compare_outputs.SCENARIOS.values())
    for name in ("one", "two"):
        assert compare_outputs.record(tmp_path / name, str(fake), jobs=2) == 0
    assert f"{total} invocations recorded" in capsys.readouterr().out
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(files) == total + 1 and files[0] == "001-top-bare.txt"
    assert files[-1] == "_inputs.txt"
    assert _compare(tmp_path / "one", tmp_path / "two") == (
        0, f"{total} invocations compared, 0 differ\n")
    simulate = next((tmp_path / "one").glob("*-simulate-simulate.txt")).read_text()
    assert simulate.startswith("$ optstate simulate\nexit: 3\n--- stdout\nsimulate\n"
                               "--- stderr\nin <TMP>/simulate after <T>\n--- files written\n")
    assert "new      out.bin  4 bytes  sha256 " in simulate
