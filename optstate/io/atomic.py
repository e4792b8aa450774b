"""One way to put a checkpoint in place, file or folder: whole or not at all.

Everything optstate writes (``save_checkpoint``, ``set``, ``convert``, ``simulate
--save``, a ``--world-size`` DCP folder) goes through ``staged``: a temp file or folder
beside the target, named ``.NAME.p<pid>.<random>.optstate-tmp``, is written, checked by
the caller, then published by one rename:

- a file: ``os.replace`` (with ``--force``), or a hard link that fails if the name was
  taken meanwhile (without);
- a folder: ``renameat2(RENAME_EXCHANGE)`` swaps the new folder with the old one in one
  step (Linux >= 3.15, on filesystems that support it), then the old one, now under the
  temp name, is removed; a new name uses ``RENAME_NOREPLACE``. Where the kernel or the
  filesystem has neither, the old folder is renamed aside to ``.NAME.p<pid>.<random>
  .optstate-old`` and the new one renamed in: two steps, so a crash between them leaves
  the target absent with the whole old copy beside it, which the next write restores.

So a crash (SIGKILL, power loss after the fsyncs) at any instant leaves the complete old
or the complete new checkpoint under its name. A temp or old copy left by a process that
is no longer running is found by the next write to the same name (``recover``): a lone
old copy is renamed back, anything else is removed, and each is reported.

A folder is replaced only if it is a checkpoint of the kind being written (``kind``):
``--force`` never deletes a folder of someone's own files. Two processes replacing the
same folder at once: the first to publish wins; the other sees that the folder it would
replace is not the one it checked, swaps back, removes its copy and says so.

What may be replaced, checked before any work, and the one-line wording of a failed write
are ``targets.py``. This module stays whole (about 480 lines) on purpose: staging,
publishing and recovering what an interrupted write left are one protocol, and its
crash-safety is reviewed by reading them together (a URL target is handed to
``remote_write``, which stages it locally and uploads it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from optstate.base import interrupt
from optstate.base.errors import CheckpointError, OptstateError, OutputExistsError, option
from optstate.base.testhook import pause_at
from optstate.io import readguard
from optstate.io.targets import (
    as_target,
    check_target,
    free_bytes,
    lstat_or_none,
    write_error,
)

TMP_SUFFIX = ".optstate-tmp"
OLD_SUFFIX = ".optstate-old"

class GuardedWriter:
    """A file object for ``torch.save`` that keeps the exception its ``write`` raised.
    torch's zip writer turns any failure of the Python write (ENOSPC, a KeyboardInterrupt
    raised there) into ``RuntimeError: ... unexpected pos``; ``torch_save`` re-raises the
    real one instead. No ``fileno``: torch then writes through ``write`` only."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: BaseException | None = None
        self.written = 0

    def write(self, data: Any) -> int:
        try:
            interrupt.check()  # a safe point: Ctrl-C stops a long save here
            n = self._f.write(data)
        except BaseException as e:
            self.error = e
            raise
        self.written += len(memoryview(data))
        return n if n is not None else len(memoryview(data))

    def flush(self) -> None:
        self._f.flush()


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def write(self, data: Any) -> int:
        k = len(memoryview(data))
        self.n += k
        return k

    def flush(self) -> None:
        pass


def torch_save(obj: Any, f: Any, **kwargs: Any) -> None:
    """``torch.save(obj, f)`` that raises the write's own error (OSError,
    KeyboardInterrupt), not torch's RuntimeError around it."""
    import torch

    guard = GuardedWriter(f)
    try:
        torch.save(obj, guard, **kwargs)
    except Exception:
        if guard.error is not None:
            raise guard.error from None
        raise


def saved_size(obj: Any, **kwargs: Any) -> int | None:
    """How many bytes ``torch.save(obj)`` writes (serialised into a counter; only on the
    error path, to say how much space a write needed)."""
    import torch

    counter = _Counter()
    try:
        torch.save(obj, counter, **kwargs)
    except Exception:
        return None
    return counter.n


# --------------------------------------------------------------------------- leftovers

_PID_NAME = re.compile(r"p(\d+)\.[0-9a-f]{8}")
# what tempfile.mkstemp / mkdtemp named them before (optstate <= 0.x): owner unknown
_LEGACY_NAME = re.compile(r"(?:old\.)?[a-z0-9_]{8}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover(target: Path) -> list[str]:
    """Find what an interrupted write to ``target`` left beside it (a process that is no
    longer running): restore a lone old copy to ``target``, remove the rest. Returns one
    note per leftover. Another running process's temp is left alone."""
    notes: list[str] = []
    parent, prefix = target.parent, f".{target.name}."
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return notes
    for name in names:
        suffix = next((s for s in (TMP_SUFFIX, OLD_SUFFIX) if name.endswith(s)), None)
        if not name.startswith(prefix) or suffix is None:
            continue
        middle = name[len(prefix):-len(suffix)]
        m = _PID_NAME.fullmatch(middle)
        if m is None and not _LEGACY_NAME.fullmatch(middle):
            continue  # another target's (``a.b``'s temp starts with ``.a.`` too)
        if m is not None and (int(m.group(1)) == os.getpid() or _alive(int(m.group(1)))):
            continue  # being written right now
        path = parent / name
        if suffix == OLD_SUFFIX and lstat_or_none(target) is None:
            try:
                os.rename(path, target)
            except OSError:
                continue
            notes.append(f"restored {target} from {name}, the old copy an interrupted "
                         "replace had moved aside")
        elif m is not None:
            _remove(path)
            notes.append(f"removed {name}, left beside {target.name} by an interrupted "
                         "write")
        else:
            notes.append(f"{path} was left by an interrupted write of an older optstate; "
                         "remove it if no optstate is running")
    return notes


# --------------------------------------------------------------------------- writing


def _stage_name(target: Path, suffix: str) -> Path:
    # The pid padded to Linux's largest (pid_max <= 4194304), so the name has one length:
    # torch's DCP writer records the folder it wrote into in .metadata, and a name whose
    # length followed the pid made the same checkpoint a byte longer or shorter.
    return target.parent / f".{target.name}.p{os.getpid():07d}.{secrets.token_hex(4)}{suffix}"


def target_mode(p: Path) -> int:
    """The mode a new file gets: the replaced file's, else what a plain open() gives."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(p).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _make_temp(target: Path, folder: bool) -> tuple[Path, int | None]:
    while True:
        tmp = _stage_name(target, TMP_SUFFIX)
        try:
            if folder:
                os.mkdir(tmp, 0o777)  # the umask applies, as to mkdir(1)
                return tmp, None
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         0o600)
            return tmp, fd
        except FileExistsError:
            continue


def _remove(p: Path) -> None:
    try:
        st = os.lstat(p)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(p)


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class Staged:
    """A write in progress: the temp file (``fd`` open for writing) or folder beside
    ``target``. ``publish()`` puts it in place in one rename; ``discard()`` removes it.
    ``staged`` is the usual way to use one; a caller whose writing outlives one block
    (``simulate --world-size``: workers write the folders) calls the two itself."""

    def __init__(self, target: str | Path, *, force: bool, folder: bool = False,
                 kind: str | None = None, notes: list[str] | None = None) -> None:
        p = check_target(target, force, folder=folder, kind=kind)
        found = recover(p)
        if notes is not None:
            notes += found
        self.target, self.folder, self.published = p, folder, False
        self.prior = lstat_or_none(p)
        if self.prior is not None and not force:
            restored = [n for n in found if n.startswith("restored ")]
            raise OutputExistsError(f"{p} already exists", hint="; ".join(
                [*restored, f"pass {option('force', True)} to overwrite it"]))
        try:
            self.path, self.fd = _make_temp(p, folder)
            self._on_fault = readguard.remove_on_fault(self.path)  # a truncated input's exit
            if self.fd is not None:
                os.fchmod(self.fd, target_mode(p))
        except OSError as e:
            raise write_error(e, p) from None

    def publish(self) -> None:
        """Rename the finished temp into place (call it with SIGINT held:
        ``interrupt.deferred()``), remove the replaced copy, fsync the folder."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        interrupt.check()
        pause_at("publish")
        interrupt.check()
        if self.folder:
            fsync_dir(self.path)  # its entries, before the name points at it
        try:
            old = _publish(self.path, self.target, self.folder, self.prior)
        except OSError as e:
            raise write_error(e, self.target) from None
        self.published = True
        readguard.forget(self._on_fault)
        pause_at("published")
        if old is not None:
            _remove(old)
        fsync_dir(self.target.parent)

    def discard(self) -> None:
        """Remove the temp (unless published)."""
        if self.fd is not None:  # (None once the body handed it to a file object)
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        if not self.published:
            _remove(self.path)
        readguard.forget(self._on_fault)


@contextlib.contextmanager
def staged(target: str | Path, *, force: bool, folder: bool = False, kind: str | None = None,
           notes: list[str] | None = None,
           needed: Callable[[], int | None] | None = None,
           if_match: str | None = None) -> Iterator[Staged]:
    """Write ``target`` whole or not at all. Yields the temp file (open, mode as a plain
    open() would give or the replaced file's) or the temp folder (mode from the umask)
    beside it; the body writes and checks it; on a normal exit it is published by one
    rename (module docstring) and the folder fsynced. On any error or interrupt the temp
    is removed and the old target is untouched. Filesystem errors become one-line
    ``CheckpointError``s; ``needed()`` (called only then) gives the size the write needed.
    ``notes`` receives what ``recover`` found. ``if_match`` (a URL target rewritten in
    place): the ETag it was read at; a replaced object is not overwritten
    (``remote_write``)."""
    # Ctrl-C is held for the whole write: the body stops at its next safe point
    # (``interrupt.check()``: each write of ``torch_save``, before publishing), the temp
    # is removed and KeyboardInterrupt raised; once the rename has begun it completes,
    # with the replaced copy removed, and the interrupt is raised as the block ends.
    remote = as_target(target)
    if not isinstance(remote, Path):  # a URL: staged here, uploaded (remote_write)
        with _staged_remote(remote, force=force, folder=folder, kind=kind,
                            if_match=if_match) as stage:
            yield stage  # type: ignore[misc]
        return
    with interrupt.deferred():
        stage = Staged(target, force=force, folder=folder, kind=kind, notes=notes)
        p = stage.target
        try:
            pause_at("write")
            yield stage
            stage.publish()
        except BaseException as e:
            published = stage.published
            stage.discard()
            if isinstance(e, OSError) and not published and e.errno is not None:
                raise write_error(e, p, needed() if needed and _is_full(e) else None) \
                    from None
            if (needed is not None and not published and not interrupt.pending()
                    and not isinstance(e, (OptstateError, KeyboardInterrupt, SystemExit))):
                # torch wrapped the write's error out of sight (DCP's writer): a disk too
                # small for the write is still one line
                need, free = needed(), free_bytes(p.parent)
                if need is not None and free is not None and free < need:
                    raise write_error(OSError(errno.ENOSPC, "No space left on device"), p,
                                      need) from None
            if isinstance(e, OSError) and not published:  # shutil.Error: a list, no errno
                first = e.args[0][0][-1] if e.args and isinstance(e.args[0], list) and \
                    e.args[0] else e
                raise CheckpointError(f"cannot write {p}: {first}") from None
            raise


@contextlib.contextmanager
def _staged_remote(target: Any, *, force: bool, folder: bool, kind: str | None,
                   if_match: str | None = None) -> Iterator[Any]:
    """``staged`` for a URL: the same protocol (written and checked first, Ctrl-C held,
    nothing published on an error or interrupt), with a local temp that is uploaded
    (``remote_write.RemoteStaged``) and always removed."""
    from optstate.io.remote import display
    from optstate.io.remote_write import RemoteStaged

    with interrupt.deferred():
        stage = RemoteStaged(target, force=force, folder=folder, kind=kind, if_match=if_match)
        try:
            pause_at("write")
            yield stage
            stage.publish()
        except OSError as e:
            if stage.published:
                raise
            hint = None
            if _is_full(e):  # the whole copy is staged locally before it is uploaded
                hint = (f"the copy is written to {stage.path.parent.parent} first; point "
                        "TMPDIR at a disk with room for it")
            raise CheckpointError(f"cannot write {display(target.url)}: "
                                  f"{e.strerror or e}", hint=hint) from None
        finally:
            stage.discard()


def _is_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def concurrent_error(target: Path) -> CheckpointError:
    return CheckpointError(
        f"cannot write {target}: another process replaced it at the same time; its "
        "result was kept and nothing of this run was written",
        hint="run one write to a name at a time")


def _publish(tmp: Path, p: Path, folder: bool, prior: os.stat_result | None) -> Path | None:
    """Put ``tmp`` at ``p`` in one step. Returns where the replaced copy now is (to be
    removed), or None."""
    if not folder:
        if prior is not None:
            os.replace(tmp, p)
        else:
            _link_no_clobber(tmp, p)
        return None
    if prior is None:
        try:
            if not _renameat2(tmp, p, _RENAME_NOREPLACE):
                os.rename(tmp, p)  # replaces an empty folder only; fails on a full one
        except (FileExistsError, OSError) as e:
            if isinstance(e, FileExistsError) or e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise concurrent_error(p) from None
            raise
        return None
    try:
        exchanged = _renameat2(tmp, p, _RENAME_EXCHANGE)
    except FileNotFoundError:
        raise concurrent_error(p) from None
    if exchanged:
        now = os.lstat(tmp)  # what was at p a moment ago
        if (now.st_dev, now.st_ino) != (prior.st_dev, prior.st_ino):
            _renameat2(tmp, p, _RENAME_EXCHANGE)  # give the other process's result back
            raise concurrent_error(p)
        return tmp
    old = _stage_name(p, OLD_SUFFIX)
    try:
        os.rename(p, old)
    except FileNotFoundError:
        raise concurrent_error(p) from None
    pause_at("between")
    try:
        os.rename(tmp, p)
    except OSError:
        os.rename(old, p)
        raise
    return old


def _link_no_clobber(tmp: Path, p: Path) -> None:
    """A hard link fails atomically when the name is taken (a file that appeared while we
    were writing), where exists-then-rename would race."""
    try:
        os.link(tmp, p)
    except FileExistsError:
        raise OutputExistsError(f"{p} already exists",
                                hint=f"pass {option('force', True)} to overwrite it") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise
        if os.path.lexists(p):  # a filesystem without hard links: best effort
            raise OutputExistsError(f"{p} already exists",
                                    hint=f"pass {option('force', True)} to overwrite it") from None
        os.replace(tmp, p)
        return
    os.unlink(tmp)


# --------------------------------------------------------------------------- renameat2

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SYSCALL_NUMBERS = {"x86_64": 316, "aarch64": 276}
_renameat2_fn: Any = None


def _load_renameat2() -> Any:
    global _renameat2_fn
    if _renameat2_fn is None:
        _renameat2_fn = False
        # OPTSTATE_TEST_NO_RENAMEAT2=1: the two-rename path other systems take (tests)
        if platform.system() == "Linux" and not os.environ.get("OPTSTATE_TEST_NO_RENAMEAT2"):
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                if hasattr(libc, "renameat2"):
                    _renameat2_fn = libc.renameat2
                elif platform.machine() in _SYSCALL_NUMBERS:
                    nr = _SYSCALL_NUMBERS[platform.machine()]
                    syscall = libc.syscall
                    _renameat2_fn = lambda *a: syscall(nr, *a)  # noqa: E731
    return _renameat2_fn


def _renameat2(a: Path, b: Path, flags: int) -> bool:
    """``renameat2(a, b, flags)``; False where the kernel or filesystem lacks it (the
    caller falls back), an OSError for any other failure."""
    fn = _load_renameat2()
    if not fn:
        return False
    r = fn(ctypes.c_int(_AT_FDCWD), os.fsencode(a), ctypes.c_int(_AT_FDCWD), os.fsencode(b),
           ctypes.c_uint(flags))
    if r == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))
