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
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from optstate.base import interrupt
from optstate.base.errors import CheckpointError
from optstate.base.testhook import pause_at
from optstate.io.remote import RemotePath, classify, display, retrying
from optstate.io.targets import DCP_OWN, check_remote_target

METADATA_FILE = ".metadata"


class RemoteStaged:
    """``atomic.Staged`` for a URL: the temp file (``fd`` open) or folder (``path``) lives
    in a private local temp folder; ``publish()`` uploads it (module docstring);
    ``discard()`` removes the local temp."""

    def __init__(self, target: RemotePath, *, force: bool, folder: bool = False,
                 kind: str | None = None) -> None:
        self.target = check_remote_target(target, force, folder=folder, kind=kind)
        self.folder, self.force, self.published = folder, force, False
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
            upload_file(self.path, self.target)
        self.published = True
        pause_at("published")

    def discard(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        shutil.rmtree(self._dir, ignore_errors=True)


def upload_file(local: Path, target: RemotePath) -> None:
    """One object from ``local``, whole or not at all, retried."""

    def put() -> None:
        try:
            target.fs.put_file(str(local), target.key)
        except Exception as e:
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
    except BaseException:
        # (staged holds SIGINT; nothing here stops at a pending one)
        for dest in reversed(done):
            _remove(dest)
        raise


def _remove(p: RemotePath, attempts: int = 3) -> None:
    """Delete one uploaded object, a few tries (not ``retrying``: it stops at a pending
    Ctrl-C, and this clean-up must not)."""
    for _ in range(attempts):
        try:
            p.fs.rm_file(p.key)
            return
        except FileNotFoundError:
            return
        except Exception:
            continue
