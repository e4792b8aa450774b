"""Filesystem faults while writing (issue #16 item 5): a full disk, a read-only folder, a
folder that is readable but not searchable. Each gives one ``Error:`` line and exit 2,
leaves the old output as it was and no temp file or folder behind. Real processes
(``python -m optstate``), real filesystems: a small tmpfs mounted for the test (skipped
with the reason where mounting is not allowed)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optstate.edit.convert import convert
from tests.bounded import DEFAULT_MEMORY, run_bounded
from tests.bounded import _limits as bounded_limits
from tests.conftest import ROOT

TMP_MARK = (".optstate-tmp", ".optstate-old")


def _mount_tmpfs(where: Path, size: str) -> None:
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): "
                    "the full-disk and read-only cases need one")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a folder where a 2.4 MB write runs out of space."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    _mount_tmpfs(mnt, "1m")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def read_only(tmp_path):
    """A tmpfs holding an old output, then remounted read-only."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    _mount_tmpfs(mnt, "16m")
    state = _adam_state(1000)
    torch.save(state, mnt / "old.pt")
    (mnt / "old_dcp").mkdir()
    (mnt / "old_dcp" / ".metadata").write_bytes(b"x")
    r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        pytest.skip(f"cannot remount a tmpfs read-only here ({r.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _adam_state(n: int, steps: int = 1) -> dict:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n))
    opt = torch.optim.Adam([p], lr=1e-3)
    for _ in range(steps):
        p.grad = torch.randn(n)
        opt.step()
    return opt.state_dict()


@pytest.fixture
def big_ckpt(tmp_path):
    """An Adam state of 2.4 MB (300,000 parameters: exp_avg + exp_avg_sq in fp32)."""
    path = tmp_path / "big.pt"
    torch.save(_adam_state(300_000), path)
    return path


# root reads and searches every folder whatever its mode: without these two capabilities
# (dropped from the bounding set, so the child never has them) the mode bits apply
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _run(*args, env=None, plain_user=False):
    """The command in a child process under the hostile suite's time and memory bound
    (``tests/bounded.py``), optionally without root's DAC capabilities."""
    if not plain_user:
        r = run_bounded(*args, env=env, timeout=120)
        assert not r.timed_out, f"{args} ran past 120 s"
        return r
    e = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", **(env or {})}
    e.pop("OPTSTATE_DEBUG", None)
    return subprocess.run([*NO_DAC, sys.executable, "-m", "optstate", *map(str, args)],
                          capture_output=True, text=True, env=e, timeout=120,
                          preexec_fn=bounded_limits(DEFAULT_MEMORY))


def _digest(p: Path) -> str:
    if p.is_dir():
        return ",".join(f"{c.name}:{_digest(c)}" for c in sorted(p.iterdir()))
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _no_temps(folder: Path) -> None:
    assert [n for n in os.listdir(folder) if n.endswith(TMP_MARK)] == []


def _one_error_line(r, pattern: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert re.fullmatch(pattern, lines[0]), lines
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert all(ln.startswith("Hint: ") for ln in lines[1:]), lines


NO_SPACE = r"Error: cannot write {out}: no space left on {mnt}, [\d,]+ bytes needed"


def _small_old(folder: Path) -> Path:
    old = folder / "out.pt"
    torch.save(_adam_state(100), old)
    return old


def test_full_disk_convert_to_file(small_disk, big_ckpt, tmp_path):
    dcp = tmp_path / "big_dcp"
    convert(big_ckpt, dcp)  # the input, made in process (what is tested is the next run)
    old = _small_old(small_disk)
    before = _digest(old)
    r = _run("convert", dcp, old, "--force")
    _one_error_line(r, NO_SPACE.format(out=re.escape(str(old)), mnt=re.escape(str(small_disk))))
    # the exact size torch.save writes
    needed = int(re.search(r"([\d,]+) bytes needed", r.stderr).group(1).replace(",", ""))
    assert needed > 2_400_000
    assert _digest(old) == before
    _no_temps(small_disk)


def test_full_disk_convert_to_dcp(small_disk, big_ckpt):
    out = small_disk / "out_dcp"
    r = _run("convert", big_ckpt, out)
    # a DCP folder's size is known only as its tensor data: exp_avg and exp_avg_sq, 300,000
    # float32 each, and the 4-byte step (plus metadata, not counted)
    _one_error_line(r, rf"Error: cannot write {re.escape(str(out))}: no space left on "
                       rf"{re.escape(str(small_disk))}; its tensor data alone is 2,400,004 "
                       r"bytes, and DCP's metadata adds more")
    assert os.listdir(small_disk) == []


def test_full_disk_set(small_disk, big_ckpt):
    old = _small_old(small_disk)
    before = _digest(old)
    r = _run("set", big_ckpt, "-o", old, "--lr", "0.5", "--force")
    _one_error_line(r, NO_SPACE.format(out=re.escape(str(old)), mnt=re.escape(str(small_disk))))
    assert _digest(old) == before
    _no_temps(small_disk)


def test_full_disk_simulate_save(small_disk):
    old = _small_old(small_disk)
    before = _digest(old)
    r = _run("simulate", "-O", "adam", "--shape", "300000", "--steps", "1", "--save", old,
             "--force")
    _one_error_line(r, NO_SPACE.format(out=re.escape(str(old)), mnt=re.escape(str(small_disk))))
    assert _digest(old) == before
    _no_temps(small_disk)


def test_read_only_folder(read_only, big_ckpt, tmp_path):
    before = _digest(read_only)
    ro = re.escape(str(read_only))
    for dst in (read_only / "new.pt", read_only / "old.pt"):
        r = _run("set", big_ckpt, "-o", dst, "--lr", "0.5", "--force")
        _one_error_line(r, rf"Error: cannot write {re.escape(str(dst))}: {ro} is mounted "
                           "read-only")
    for dst in (read_only / "new_dcp", read_only / "old_dcp"):
        r = _run("convert", big_ckpt, dst, "--force")
        _one_error_line(r, rf"Error: cannot write {re.escape(str(dst))}: {ro} is mounted "
                           "read-only")
    dcp = tmp_path / "d"
    convert(big_ckpt, dcp)  # the input, made in process
    r = _run("convert", dcp, read_only / "old.pt", "--force")
    _one_error_line(r, rf"Error: cannot write {re.escape(str(read_only / 'old.pt'))}: {ro} is "
                       "mounted read-only")
    assert _digest(read_only) == before


@pytest.fixture
def unsearchable(tmp_path):
    """A folder whose mode is r--r--r--: it can be listed but not entered. Run as root
    without the capabilities that bypass modes (root searches every folder)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command without CAP_DAC_OVERRIDE")
    torch.save(_adam_state(10), tmp_path / "in.pt")
    locked = tmp_path / "locked"
    locked.mkdir()
    torch.save(_adam_state(10), locked / "old.pt")
    locked.chmod(0o444)
    yield tmp_path, locked
    locked.chmod(0o755)


def test_folder_readable_but_not_searchable(unsearchable):
    base, locked = unsearchable
    before = sorted(os.listdir(locked))
    for args, out in (
            (("set", base / "in.pt", "-o", locked / "old.pt", "--lr", "0.5", "--force"),
             locked / "old.pt"),
            (("convert", base / "in.pt", locked / "new_dcp"), locked / "new_dcp"),
            (("convert", base / "in.pt", locked / "new.pt"), locked / "new.pt"),
            (("simulate", "--steps", "1", "--save", locked / "new.pt"), locked / "new.pt")):
        r = _run(*args, plain_user=True)
        _one_error_line(r, rf"Error: cannot write {re.escape(str(out))}: permission denied "
                           rf"\(the folder {re.escape(str(locked))} is readable but not "
                           r"searchable\)")
    assert sorted(os.listdir(locked)) == before


def test_full_disk_set_folder(small_disk, big_ckpt, tmp_path):
    """set -o DIR on a Hugging Face style folder copies the folder first (shutil.copytree
    collects its errors in a list, with no errno)."""
    hf = tmp_path / "checkpoint-500"
    hf.mkdir()
    shutil.copy(big_ckpt, hf / "optimizer.pt")
    (hf / "trainer_state.json").write_text("{}")
    out = small_disk / "edited"
    r = _run("set", hf, "-o", out, "--lr", "0.5")
    _one_error_line(r, NO_SPACE.format(out=re.escape(str(out)), mnt=re.escape(str(small_disk))))
    assert os.listdir(small_disk) == []


def test_folder_without_write_permission(unsearchable):
    base, locked = unsearchable
    locked.chmod(0o555)  # r-x: can be entered, nothing can be created in it
    before = sorted(os.listdir(locked))
    for args, out in (
            (("set", base / "in.pt", "-o", locked / "old.pt", "--lr", "0.5", "--force"),
             locked / "old.pt"),
            (("convert", base / "in.pt", locked / "new_dcp"), locked / "new_dcp")):
        r = _run(*args, plain_user=True)
        _one_error_line(r, rf"Error: cannot write {re.escape(str(out))}: permission denied "
                           rf"in {re.escape(str(locked))}")
    assert sorted(os.listdir(locked)) == before
