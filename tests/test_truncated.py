"""An input truncated while optstate reads it: one ``Error:`` line (and a ``Hint:``) and
exit 2, never a bare SIGBUS (issue #16 item 5, read side; ``optstate/io/readguard.py``).

Real processes read real memory-mapped checkpoints; the test truncates the file from this
process at a stage reached through the test hook: ``check`` (before a tensor's data is
read: the pure-Python guard sees it) and ``read`` (the guard has passed, the next touch
of the data faults: only the SIGBUS handler of ``optstate/io/_sigbus.c`` can report it).
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch

from tests.test_interrupts import Run

pytestmark = pytest.mark.slow  # real processes, 64 MiB files

HINT = "Hint: another program is writing or truncating it; run again once it is complete"


def _big_adam(path: Path, n: int, seed: int) -> Path:
    """A real Adam state of two parameters of ``n`` float32 elements (16 n bytes of
    state in all)."""
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(n)) for _ in range(2)]
    opt = torch.optim.Adam(params)
    for p in params:
        p.grad = torch.randn(n)
    opt.step()
    torch.save(opt.state_dict(), path)
    return path


@pytest.fixture
def big(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("truncated")
    n = 4 << 20  # 64 MiB per file: big enough to be worth mapping, quick to write
    return {"a": _big_adam(d / "a.pt", n, 0), "b": _big_adam(d / "b.pt", n, 1)}


def _sigbus_helper_built() -> bool:
    if os.environ.get("OPTSTATE_NO_C", "").strip() not in ("", "0"):
        return False  # readguard.enable() does not install it then (CI's second run)
    try:
        from optstate.io import _sigbus  # noqa: F401
    except ImportError:
        return False
    return True


def _truncate_at(stage: str, args: list[str], victim: Path, env: dict[str, str] | None = None
                 ) -> tuple[int, list[str]]:
    size = victim.stat().st_size
    # the run waits 5 s at the stage (the truncation takes a millisecond of it)
    run = Run(args, {"OPTSTATE_TEST_PAUSE_AT": f"{stage}=5", **(env or {})})
    assert run.wait_marker() == stage
    os.truncate(victim, 4096)  # the zip's first record stays; every tensor's data is gone
    code, out, err = run.finish()
    lines = err.splitlines()
    assert lines and lines[0].startswith("Error: "), err
    assert lines == [f"Error: {victim} changed (was truncated) while being read; it was "
                     f"{size} bytes when opened", HINT], err
    return code, lines


needs_helper = pytest.mark.skipif(not _sigbus_helper_built(),
                                  reason="optstate.io._sigbus was not built (no C compiler) "
                                         "or is disabled (OPTSTATE_NO_C=1)")


@needs_helper
def test_inspect_truncated_during_a_read(big):
    code, _ = _truncate_at("read", ["inspect", str(big["a"])], big["a"])
    assert code == 2  # not -SIGBUS


@needs_helper
def test_diff_truncated_during_a_read_names_the_file(big):
    code, _ = _truncate_at("read", ["diff", str(big["a"]), str(big["b"])], big["b"])
    assert code == 2


@pytest.mark.parametrize("env", [{}, {"OPTSTATE_NO_C": "1"}], ids=["helper", "no-helper"])
def test_truncated_between_reads_is_a_clean_error(big, env):
    # without the C helper (OPTSTATE_NO_C=1 keeps it and the C kernel unloaded) the check
    # before each tensor's read is the guard
    code, _ = _truncate_at("check", ["inspect", str(big["a"])], big["a"], env)
    assert code == 2


def test_a_sigbus_that_is_not_a_truncation_still_crashes(tmp_path):
    """The handler claims only what it knows: a SIGBUS with no watched file shrunk and
    not a mapping's address error keeps the default action (the crash it would be)."""
    if not _sigbus_helper_built():
        pytest.skip("optstate.io._sigbus was not built (no C compiler)")
    import subprocess
    import sys

    code = ("import os, signal\nfrom optstate.io import readguard\nreadguard.enable()\n"
            "os.kill(os.getpid(), signal.SIGBUS)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == -signal.SIGBUS, r.stderr


@needs_helper
@pytest.mark.parametrize("command", ["set", "convert-dcp"])
def test_truncated_while_the_output_is_written_leaves_the_old_output_alone(big, tmp_path,
                                                                         command):
    # truncated at the atomic writer's "write" stage: its temp exists, the input's data
    # is read next (torch.save of the mapped tensors); the exit also removes the temp
    src = big["a"]
    if command == "convert-dcp":
        out = tmp_path / "out_dcp"
        out.mkdir()
        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():  # "assuming ... a single process": it is
            warnings.simplefilter("ignore")
            dcp.save({"old": torch.zeros(3)}, checkpoint_id=str(out))
        args = ["convert", str(src), str(out), "--force"]
    else:
        out = tmp_path / "out.pt"
        torch.save({"old": torch.zeros(3)}, out)
        args = ["set", str(src), "--set", "lr=0.5", "-o", str(out), "--force"]
    before = sorted((p.name, p.read_bytes()) for p in ([out] if out.is_file() else
                                                        out.iterdir()))
    code, _ = _truncate_at("write", args, src)
    assert code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temp left
    after = sorted((p.name, p.read_bytes()) for p in ([out] if out.is_file() else
                                                       out.iterdir()))
    assert after == before


def _rewrite_in_place(victim: Path, other: Path) -> None:
    data = other.read_bytes()
    assert len(data) == victim.stat().st_size
    with open(victim, "r+b") as f:  # same inode, same size, other bytes
        f.write(data)


@pytest.mark.parametrize("stage", ["check", "inputs_read"])
@pytest.mark.parametrize("env", [{}, {"OPTSTATE_NO_C": "1"}], ids=["helper", "no-helper"])
@pytest.mark.parametrize("command", ["inspect", "diff"])
def test_rewritten_in_place_while_read_is_not_reported_as_if_unchanged(tmp_path, command,
                                                                        env, stage):
    """Another program rewrites the input in place (same size, other bytes) while it is
    read: the mapped tensors show a mix of both. Found from its mtime or ctime, before
    the next tensor is read (``check``) or as the command ends (``finished``): exit 2 and
    an Error line, never exit 0 with the mixed numbers as if nothing happened (``diff a
    b`` said 'no differences' once ``a`` was rewritten as ``b``)."""
    a = _big_adam(tmp_path / "a.pt", 1 << 16, 0)
    b = _big_adam(tmp_path / "b.pt", 1 << 16, 1)
    args = [command, str(a)] + ([str(b)] if command == "diff" else [])
    run = Run(args, {"OPTSTATE_TEST_PAUSE_AT": f"{stage}=5", **env})
    assert run.wait_marker() == stage
    time.sleep(0.01)  # a later timestamp than the one seen at open, on any clock tick
    _rewrite_in_place(a, b)
    code, out, err = run.finish()
    assert code == 2, (out, err)
    assert err.splitlines()[-2:] == [
        f"Error: {a} changed (was modified) while being read; its numbers may mix the old "
        "and the new contents", HINT], err


@pytest.mark.parametrize("change", ["renamed-over", "extended"])
def test_replaced_by_rename_is_read_as_opened_and_extended_is_a_change(tmp_path, change):
    """A file renamed over the input leaves the opened one readable (its own inode): it
    reads as opened, the same numbers as an undisturbed run. Bytes appended move the
    mtime as a rewrite does (a writer is at work): reported as a change, exit 2."""
    import subprocess
    import sys

    a = _big_adam(tmp_path / "a.pt", 1 << 16, 0)
    b = _big_adam(tmp_path / "b.pt", 1 << 16, 1)
    base = {**os.environ, "NO_COLOR": "1"}
    ref = subprocess.run([sys.executable, "-m", "optstate", "inspect", "--json", str(a)],
                         capture_output=True, text=True, env=base, timeout=120)
    run = Run(["inspect", "--json", str(a)], {"OPTSTATE_TEST_PAUSE_AT": "check=5"})
    assert run.wait_marker() == "check"
    time.sleep(0.01)
    if change == "extended":
        with open(a, "ab") as f:
            f.write(b"\0" * 100_000)
    else:
        new = tmp_path / "new.pt"
        new.write_bytes(b.read_bytes())
        os.replace(new, a)
    code, out, err = run.finish()
    if change == "extended":
        assert (code, err.splitlines()[-1]) == (2, HINT), err
        assert "changed (was modified) while being read" in err
    else:
        assert (code, out) == (0, ref.stdout), err
