"""Atomic writes (issue #5): temp file beside the target, fsync, rename, folder fsync; no
temp left on error; outputs kept unless --force; inputs never modified; a SIGKILL in the
middle of a save leaves the previous file loadable."""

from __future__ import annotations

import datetime
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from optstate.checkpoint import atomic_write, load_torch_file, save_checkpoint
from optstate.errors import CheckpointError, OutputExistsError
from tests import hostile_corpus as hc
from tests.conftest import ROOT

TMP_SUFFIX = ".optstate-tmp"


def _fingerprint(p: Path) -> tuple:
    s = p.stat()
    return hashlib.sha256(p.read_bytes()).hexdigest(), s.st_mtime_ns, s.st_mode, s.st_ino


def _leftovers(folder: Path) -> list[str]:
    return sorted(n.name for n in folder.iterdir() if n.name.endswith(TMP_SUFFIX))


def test_write_goes_through_a_temp_file_beside_the_target(tmp_path):
    target = tmp_path / "out.pt"
    seen = {}

    def write(f):
        seen["name"] = Path(os.readlink(f"/proc/self/fd/{f.fileno()}"))
        seen["target_exists_meanwhile"] = target.exists()
        f.write(b"payload")

    atomic_write(target, write)
    assert seen["name"].parent == tmp_path
    assert seen["name"].name.startswith(".out.pt.") and seen["name"].name.endswith(TMP_SUFFIX)
    assert seen["target_exists_meanwhile"] is False
    assert target.read_bytes() == b"payload"
    assert _leftovers(tmp_path) == []


def test_fsync_file_then_rename_then_fsync_folder(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd):
        kind = "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"
        events.append(("fsync", kind))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", Path(b).name))
        return real_replace(a, b)

    def link(a, b):
        events.append(("link", Path(b).name))
        return real_link(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    atomic_write(tmp_path / "new.pt", lambda f: f.write(b"1"))
    assert events == [("fsync", "file"), ("link", "new.pt"), ("fsync", "dir")]
    events.clear()
    atomic_write(tmp_path / "new.pt", lambda f: f.write(b"2"), force=True)
    assert events == [("fsync", "file"), ("replace", "new.pt"), ("fsync", "dir")]
    assert (tmp_path / "new.pt").read_bytes() == b"2"


def test_a_failing_write_leaves_no_temp_and_the_old_file(tmp_path):
    target = tmp_path / "out.pt"
    target.write_bytes(b"old")

    def crash(f):
        f.write(b"half of it")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, crash, force=True)
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_keyboard_interrupt_mid_write_cleans_up(tmp_path):
    def interrupted(f):
        f.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "out.pt", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_kept_without_force(tmp_path):
    target = tmp_path / "out.pt"
    target.write_bytes(b"old")
    with pytest.raises(OutputExistsError) as e:
        atomic_write(target, lambda f: f.write(b"new"))
    assert (e.value.message, e.value.hint) == (f"{target} already exists",
                                               "pass --force to overwrite it")
    assert target.read_bytes() == b"old"
    atomic_write(target, lambda f: f.write(b"new"), force=True)
    assert target.read_bytes() == b"new"


def test_output_that_appears_during_the_write_is_not_clobbered(tmp_path):
    target = tmp_path / "out.pt"

    def racing(f):
        f.write(b"ours")
        target.write_bytes(b"theirs")  # another process got there first

    with pytest.raises(OutputExistsError):
        atomic_write(target, racing)
    assert target.read_bytes() == b"theirs"
    assert _leftovers(tmp_path) == []


def test_save_reloads_with_weights_only_before_replacing(tmp_path):
    target = tmp_path / "out.pt"
    torch.save(hc.adamw_state(), target)
    before = _fingerprint(target)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint({"when": datetime.date(2024, 1, 1)}, target, force=True)
    assert e.value.message.startswith(f"refusing to write {target}: the saved data does not "
                                      "load back safely (")
    assert "datetime.date" in e.value.message
    assert _fingerprint(target) == before
    assert _leftovers(tmp_path) == []


def test_saved_file_round_trips_and_has_normal_permissions(tmp_path):
    sd = hc.adamw_state()
    p = save_checkpoint(sd, tmp_path / "sd.pt")
    got = load_torch_file(p).obj
    assert got["param_groups"] == sd["param_groups"]
    assert torch.equal(got["state"][1]["exp_avg_sq"], sd["state"][1]["exp_avg_sq"])
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_missing_folder_and_directory_target(tmp_path):
    with pytest.raises(CheckpointError) as e:
        atomic_write(tmp_path / "nope" / "x.pt", lambda f: None)
    assert e.value.message == f"cannot write {tmp_path / 'nope' / 'x.pt'}: folder " \
                              f"{tmp_path / 'nope'} does not exist"
    with pytest.raises(OutputExistsError, match="is a directory"):
        atomic_write(tmp_path, lambda f: None, force=True)


# --------------------------------------------------------------------------- through the CLI


def test_cli_commands_never_modify_their_inputs(cli, tmp_path):
    a, b = hc.save_adamw(tmp_path / "a.pt"), tmp_path / "b.pt"
    sd = hc.adamw_state(steps=3)
    torch.save(sd, b)
    prints = {p: _fingerprint(p) for p in (a, b)}
    assert cli("inspect", a).exit_code == 0
    assert cli("diff", a, b).exit_code == 1
    r = cli("simulate", "-O", "AdamW", "--shape", "3x4", "--shape", "5", "--steps", "1",
            "--resume", a, "--save", tmp_path / "c.pt")
    assert r.exit_code == 0, r.stderr
    assert {p: _fingerprint(p) for p in (a, b)} == prints


def test_cli_save_refuses_to_overwrite_without_force(cli, tmp_path):
    out = hc.save_adamw(tmp_path / "out.pt")
    before = _fingerprint(out)
    r = cli("simulate", "--steps", "1", "--save", out)
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [f"Error: {out} already exists",
                                     "Hint: pass --force to overwrite it"]
    assert _fingerprint(out) == before
    r = cli("simulate", "--steps", "1", "--save", out, "--force")
    assert r.exit_code == 0, r.stderr
    assert _fingerprint(out)[0] != before[0]
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- SIGKILL


_KILLED_WRITER = textwrap.dedent("""
    import io, os, sys, time, torch
    from optstate.checkpoint import atomic_write
    from tests.hostile_corpus import adamw_state

    buf = io.BytesIO()
    torch.save(adamw_state(steps=5), buf)
    data = buf.getvalue()

    def write(f):
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        print("half written", flush=True)
        time.sleep(60)  # killed here
        f.write(data[len(data) // 2:])

    atomic_write(sys.argv[1], write, force=True)
""")


def test_sigkill_mid_save_keeps_the_previous_file(tmp_path):
    target = tmp_path / "optimizer.pt"
    torch.save(hc.adamw_state(steps=2), target)
    before = _fingerprint(target)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "half written"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # the previous file is intact and loads
    assert _fingerprint(target) == before
    got = load_torch_file(target).obj
    assert torch.equal(got["state"][0]["step"], hc.adamw_state(steps=2)["state"][0]["step"])
    # the half-written temp is left (nothing could remove it), but it is hidden, is not
    # named like a checkpoint, is not picked from a folder, and does not load
    (stray,) = _leftovers(tmp_path)
    assert stray.startswith(".optimizer.pt.")
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["optimizer.pt"]
    from optstate.source import open_source

    assert open_source(tmp_path).file == target
    with pytest.raises(CheckpointError, match="damaged zip archive"):
        load_torch_file(tmp_path / stray)

