"""Writing a checkpoint to object storage (``-o s3://bucket/new.pt``): whole or not at all.

``atomic.staged`` hands a URL target here. The checkpoint is written and checked exactly
as a local one, in a private temp folder on this machine (``RemoteStaged.path``), and only
then published by uploading it, under ``remote.retrying`` (the one retry policy):

- a file: one object, by one PUT (or, for a large one, a multipart upload that s3fs
  aborts on failure): object stores make either visible whole, or nothing;
- a DCP folder: its data files first, ``.metadata`` last, so that no reader sees a
  checkpoint before all its data is there; if any upload fails (or Ctrl-C stops it),
  everything uploaded so far is deleted again.

The local temp is removed in every case. An existing target is refused without
``--force`` with the local wording; ``--force`` replaces an object only if it is a
torch.save file. An existing DCP folder is never replaced: object storage has no rename,
so replacing one would leave a mix of old and new files visible while it ran; remove it
first. A Ctrl-C pending when the write is ready publishes nothing.

Rewriting an object in place (``set --in-place s3://...``) takes its version (ETag) before
reading it (``object_version``) and passes it as ``if_match``: the upload is refused, one
line, nothing written, if another writer replaced the object since. S3 gets a conditional
PUT (If-Match: the store itself refuses a replaced object); a multipart upload and other
stores get a re-check of the ETag right before the upload, which is a check, not a lock (a
write landing between the check and the upload is not seen). A store that gives no ETag
cannot be checked.

A DCP folder whose upload failed and whose clean-up failed too: the error's hint names the
objects left behind, to be deleted by hand.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from optstate.base import interrupt
from optstate.base.errors import CheckpointError, OptstateError
from optstate.base.testhook import pause_at
from optstate.io.remote import RemotePath, classify, display, retrying
from optstate.io.targets import DCP_OWN, check_remote_target

METADATA_FILE = ".metadata"


class RemoteStaged:
    """``atomic.Staged`` for a URL: the temp file (``fd`` open) or folder (``path``) lives
    in a private local temp folder; ``publish()`` uploads it (module docstring);
    ``discard()`` removes the local temp."""

    def __init__(self, target: RemotePath, *, force: bool, folder: bool = False,
                 kind: str | None = None, if_match: str | None = None) -> None:
        self.target = check_remote_target(target, force, folder=folder, kind=kind)
        self.folder, self.force, self.published = folder, force, False
        self.if_match = if_match
        self._dir = Path(tempfile.mkdtemp(prefix="optstate-upload-"))
        self.path = self._dir / (target.name or "checkpoint")
        self.fd: int | None = None
        if folder:
            os.mkdir(self.path)
        else:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def publish(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        interrupt.check()  # a Ctrl-C pending now: nothing is published
        pause_at("publish")
        interrupt.check()
        if self.folder:
            upload_folder(self.path, self.target)
        else:
            if not self.force:  # taken meanwhile? (a narrow window remains: no rename)
                check_remote_target(self.target, False)
            upload_file(self.path, self.target, if_match=self.if_match)
        self.published = True
        pause_at("published")

    def discard(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        shutil.rmtree(self._dir, ignore_errors=True)


def object_version(p: RemotePath) -> str | None:
    """The object's ETag now (a fresh HEAD, not fsspec's cached listing), or None when the
    store gives none."""
    with contextlib.suppress(Exception):
        p.fs.invalidate_cache(p.key)
    info = retrying(lambda: p.fs.info(p.key), p.url)
    etag = info.get("ETag") or info.get("etag")
    return str(etag) if etag else None


def changed_while_edited(p: RemotePath) -> CheckpointError:
    return CheckpointError(f"{display(p.url)} changed while being edited (another writer "
                           "replaced it after it was read); nothing was written",
                           hint="run the command again once the other writer has finished: "
                           "it reads the new object")


def check_version(p: RemotePath, expected: str | None) -> None:
    """Refuse (``changed_while_edited``) if ``p`` is no longer the version ``expected``
    (None: nothing to compare)."""
    if expected is not None and object_version(p) != expected:
        raise changed_while_edited(p)


def _single_put(local: Path, target: RemotePath) -> bool:
    """Will s3fs upload ``local`` by one PUT (which takes If-Match), not a multipart?"""
    size = local.stat().st_size
    try:
        from s3fs.core import calculate_chunksize

        chunk = calculate_chunksize(size)
    except Exception:
        chunk = 50 * 2**20
    return size < min(5 * 2**30, 2 * chunk)


def _precondition_failed(e: BaseException | None) -> bool:
    """Did S3 answer 412 PreconditionFailed (s3fs wraps botocore's error in an OSError)?"""
    seen = 0
    while e is not None and seen < 5:
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            err, meta = resp.get("Error") or {}, resp.get("ResponseMetadata") or {}
            if err.get("Code") == "PreconditionFailed" or meta.get("HTTPStatusCode") == 412:
                return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def upload_file(local: Path, target: RemotePath, *, if_match: str | None = None) -> None:
    """One object from ``local``, whole or not at all, retried. ``if_match``: the ETag the
    object must still have (module docstring), else ``changed_while_edited``."""
    extra: dict[str, str] = {}
    if if_match is not None:
        if target.protocol in ("s3", "s3a") and _single_put(local, target):
            extra = {"IfMatch": if_match}  # the store refuses a replaced object (412)
        else:
            check_version(target, if_match)  # a check, not a lock

    def put() -> None:
        try:
            target.fs.put_file(str(local), target.key, **extra)
        except Exception as e:
            if extra and (classify(e) == "changed" or _precondition_failed(e)):
                raise changed_while_edited(target) from None
            if classify(e) == "missing" and extra:  # deleted meanwhile: changed too
                raise changed_while_edited(target) from None
            if classify(e) != "missing":
                raise
            # a write's 404 is the bucket: "s3://b/new.pt does not exist" would mislead
            what = "container" if target.protocol in ("az", "abfs", "abfss") else "bucket"
            raise CheckpointError(f"cannot write {display(target.url)}: its {what} does "
                                  "not exist") from None

    retrying(put, target.url, action="write")


def upload_folder(local: Path, target: RemotePath) -> None:
    """A DCP folder: data files first, ``.metadata`` last; on any failure (or Ctrl-C)
    what was uploaded is deleted again."""
    names = sorted(n for n in os.listdir(local) if (local / n).is_file())
    names.sort(key=lambda n: n == METADATA_FILE)  # stable: .metadata last
    done: list[RemotePath] = []
    try:
        for name in names:
            if not DCP_OWN.fullmatch(name):
                raise CheckpointError(f"cannot write {display(target.url)}: unexpected file "
                                      f"{name} in the folder written")
            dest = target / name
            done.append(dest)  # before: a PUT that timed out may still have landed
            upload_file(local / name, dest)
            pause_at("uploaded")
    except BaseException as e:
        # (staged holds SIGINT; nothing here stops at a pending one)
        left = [dest for dest in reversed(done) if not _remove(dest)]
        if left and isinstance(e, OptstateError):
            e.hint = _left_hint(left, target)
        elif left:  # an interrupt or an unexpected error: say it on stderr, then go on
            sys.stderr.write(f"optstate: {_left_hint(left, target)}\n")
        raise


def _left_hint(left: list[RemotePath], target: RemotePath) -> str:
    shown = ", ".join(display(p.url) for p in sorted(left, key=lambda p: p.url))
    return (f"the clean-up failed too: {shown} could not be removed; delete "
            f"{'it' if len(left) == 1 else 'them'} (everything under "
            f"{display(target.url)}/) before writing {display(target.url)} again")


def _remove(p: RemotePath, attempts: int = 3) -> bool:
    """Delete one uploaded object, a few tries (not ``retrying``: it stops at a pending
    Ctrl-C, and this clean-up must not). False: it may still be there."""
    for _ in range(attempts):
        try:
            p.fs.rm_file(p.key)
            return True
        except FileNotFoundError:
            return True
        except Exception:
            continue
    return False
