"""Before a write: may this target be written or replaced, and how a write's failure reads.

``check_target`` runs before any work (a command fails early, not after minutes of
computing): it refuses an existing target without ``force``, and with ``force`` anything
that is not a checkpoint of the kind being written (``--force`` never replaces a script,
a config or a folder of someone's files). ``write_error`` turns a filesystem failure
(full disk, quota, read-only mount, permissions) into one line. ``atomic.py`` does the
writing itself. A URL target (``as_target``) is checked by ``check_remote_target`` with
the same wording, and uploaded by ``remote_write.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError, OutputExistsError, option


def check_target(path: str | Path, force: bool, *, folder: bool = False,
                 kind: str | None = None) -> Path:
    """Fail early (before any work) if ``path`` cannot be written: it exists and ``force``
    is not given, it is a folder where a file is written or the other way round, it is a
    folder that is not a checkpoint of ``kind`` ("dcp": holds ``.metadata``; a file name:
    a folder holding that file) or, for ``kind="torch"``, a file that is not a torch.save
    file, or its folder is missing or not searchable."""
    target = as_target(path)
    if not isinstance(target, Path):  # a URL: object storage (remote_write uploads it)
        return check_remote_target(target, force, folder=folder, kind=kind)
    p = target
    st = lstat_or_none(p)
    if st is not None and stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(OSError):
            st = os.stat(p)
    if st is not None and not folder and stat.S_ISDIR(st.st_mode):
        raise OutputExistsError(f"{p} is a directory; give a file path to write")
    if st is not None and not force:
        raise OutputExistsError(f"{p} already exists",
                                hint=f"pass {option('force', True)} to overwrite it")
    if st is not None and folder:
        _check_replaceable_folder(p, st, kind)
    elif st is not None and kind == "torch":
        _check_replaceable_file(p, st)
    parent = p.parent
    try:
        pst = os.stat(parent)
    except FileNotFoundError:
        raise CheckpointError(f"cannot write {p}: folder {parent} does not exist") from None
    except OSError as e:
        raise write_error(e, p) from None
    if not stat.S_ISDIR(pst.st_mode):
        raise CheckpointError(f"cannot write {p}: {parent} is not a folder")
    return p


def as_target(path: Any) -> Any:
    """What a command names as a place to read or write: a local ``Path`` (``file://``
    URLs too), or a ``remote.RemotePath`` for any other URL (``s3://...``)."""
    from optstate.io.remote import RemotePath, is_url, local_path

    if isinstance(path, RemotePath):
        return path
    if isinstance(path, str) and is_url(path):
        local = local_path(path)
        return local if local is not None else RemotePath(path)
    return Path(path)


def check_remote_target(target: Any, force: bool, *, folder: bool = False,
                        kind: str | None = None) -> Any:
    """``targets.check_target`` for a URL: before any work, refuse an existing object
    without ``force``, and with it anything but a torch.save file (``kind="torch"``);
    an existing folder (a prefix holding objects) is never replaced."""
    import io

    from optstate.io.remote import display

    where = display(target.url)
    if target.is_file():
        if folder:
            raise OutputExistsError(
                f"{where} is an object; {option('force', True)} replaces only a checkpoint "
                "folder here, not a file", hint="remove it yourself, or give another name")
        if not force:
            raise OutputExistsError(f"{where} already exists",
                                    hint=f"pass {option('force', True)} to overwrite it")
        if kind == "torch":
            with target.open_ranged() as raw, io.BufferedReader(raw) as f:
                ok = is_torch_save_stream(f)
            if not ok:
                raise OutputExistsError(
                    f"{where} is not a torch.save checkpoint; {option('force', True)} "
                    "replaces only a checkpoint file, never another file",
                    hint="remove it yourself, or give another name")
    elif target.is_dir():
        if not folder:
            raise OutputExistsError(f"{where} is a folder; give a file path to write")
        raise OutputExistsError(
            f"{where} already exists; a folder in object storage is not replaced (there is "
            "no rename: readers would see old and new files mixed while it was written)",
            hint="remove it first, or give another name")
    return target


def lstat_or_none(p: Path) -> os.stat_result | None:
    try:
        return os.lstat(p)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:  # EACCES: a folder on the way is not searchable
        raise write_error(e, p) from None


def _check_replaceable_file(p: Path, st: os.stat_result) -> None:
    """``--force`` replaces a torch.save file (a zip archive, or the legacy pickle
    stream), never a script, a config or a file of another format by a slip of -o."""
    if not (stat.S_ISREG(st.st_mode) and _is_torch_save_file(p)):
        raise OutputExistsError(
            f"{p} is not a torch.save checkpoint; {option('force', True)} replaces only a "
            "checkpoint file, "
            "never another file", hint="remove it yourself, or give another name")


def _is_torch_save_file(p: Path) -> bool:
    """A torch.save zip (a ``PREFIX/data.pkl`` record), or the legacy stream (its first
    pickle is torch's magic number). Not any zip archive or any pickle: a user's own."""
    try:
        with open(p, "rb") as f:
            return is_torch_save_stream(f)
    except OSError:
        return False


def is_torch_save_stream(f: Any) -> bool:
    """``_is_torch_save_file`` for an open, seekable binary file (a local file, or an
    object in remote storage read by range requests)."""
    import pickle
    import zipfile

    try:
        head = f.read(64)
        if head.startswith(b"PK\x03\x04"):
            f.seek(0)
            with zipfile.ZipFile(f) as z:
                return any(re.fullmatch(r"[^/]+/data\.pkl", n) for n in z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any(head.startswith(pickle.dumps(_LEGACY_MAGIC, protocol=v)) for v in (2, 3, 4, 5))


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
DCP_OWN = re.compile(r"\.metadata|.+\.distcp")  # what torch's FileSystemWriter writes


def _check_replaceable_folder(p: Path, st: os.stat_result, kind: str | None) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise OutputExistsError(
            f"{p} is a file; {option('force', True)} replaces only a checkpoint folder here, "
            "not a file",
            hint="remove it yourself, or give another name")
    if kind is None:
        return
    marker = ".metadata" if kind == "dcp" else kind
    what = "a DCP checkpoint folder" if kind == "dcp" else "a checkpoint folder"
    try:
        ok = (p / marker).is_file()
    except OSError:
        ok = False
    if not ok:
        raise OutputExistsError(
            f"{p} is not {what} (it holds no {marker}); {option('force', True)} replaces only "
            "a checkpoint "
            "of the kind being written, never a folder of other files",
            hint="remove it yourself, or give another name")
    if kind == "dcp":  # replacing deletes the old folder: only what DCP itself wrote
        try:
            others = sorted(n for n in os.listdir(p) if not (
                DCP_OWN.fullmatch(n) and (p / n).is_file() and not (p / n).is_symlink()))
        except OSError as e:
            raise write_error(e, p) from None
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more"
                                             if len(others) > 5 else "")
            raise OutputExistsError(
                f"{p} holds files that are not part of a DCP checkpoint ({shown}); "
                f"{option('force', True)} replaces only a checkpoint folder, never the files "
                "beside it",
                hint="move them out of the folder, or give another name")



def write_error(e: BaseException, target: Path, needed: int | None = None) -> CheckpointError:
    """One line for a filesystem failure while writing ``target``."""
    if not isinstance(e, OSError):
        return CheckpointError(f"cannot write {target}: {e}")
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        where = mount_point(target)
        what = "no space left" if code == errno.ENOSPC else "disk quota exceeded"
        if isinstance(needed, AtLeast):
            # only a lower bound is known (a DCP folder: its tensor data); say what it
            # counts, since metadata can dwarf it for a small state
            need = (f"; its tensor data alone is {int(needed):,} bytes, and DCP's metadata "
                    "adds more" if needed else "")
        else:
            need = f", {int(needed):,} bytes needed" if needed else ""
        return CheckpointError(f"cannot write {target}: {what} on {where}{need}",
                               hint="free some space or write somewhere else")
    if code == errno.EROFS:
        return CheckpointError(f"cannot write {target}: {mount_point(target)} is mounted "
                               "read-only")
    if code in (errno.EACCES, errno.EPERM):
        folder = target.parent
        if os.access(folder, os.R_OK) and not os.access(folder, os.X_OK):
            return CheckpointError(f"cannot write {target}: permission denied (the folder "
                                   f"{folder} is readable but not searchable)")
        return CheckpointError(f"cannot write {target}: permission denied in {folder}")
    return CheckpointError(f"cannot write {target}: {e.strerror or e}")


class AtLeast(int):
    """A size that is a lower bound (a DCP folder: its tensor data, before metadata)."""


def mount_point(path: Path) -> str:
    """The mount point holding ``path`` (the nearest existing folder's)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        while not os.path.ismount(p):
            p = p.parent
    except OSError:
        pass
    return str(p)


def free_bytes(path: Path) -> int | None:
    try:
        s = os.statvfs(path)
    except OSError:
        return None
    return s.f_bavail * s.f_frsize
