"""``timeline``'s cache: each checkpoint's record, so that a rerun reads only what changed.

One JSON file (never pickle: a cache is data, and loading it runs nothing), by default
``<run folder>/.optstate/timeline-cache.json``, else ``timeline-cache.json`` in the folder
the caller names. An entry is keyed by the checkpoint's absolute path and what the record
depends on besides the file (the optimizer state asked for, safe or unsafe loading), and
holds the file's identity (total bytes, newest mtime, number of files: ``io.run_dir.
identity``): a checkpoint whose identity changed is read again. The file records the
optstate version, the record's version, the torch version and a digest of the code that
makes a record (the layers below ``render``): a cache written by other code is not used, so
a fix to a statistic is never hidden behind numbers cached before it. Rewritten
atomically (``io.atomic.staged``) after each run, without the entries of checkpoints that
no longer exist.

The cache never stops a run: a location that cannot be written leaves a note and no
cache; a cache file that cannot be read or parsed is ignored with a note.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from optstate.base.version import __version__
from optstate.io.run_dir import Candidate

SCHEMA = "optstate.timeline-cache/1"
FILE_NAME = "timeline-cache.json"
FOLDER = ".optstate"
RECORD_VERSION = 1  # the record's shape (analysis.timeline.read_record); bump when it changes
_MAX_BYTES = 1 << 30  # a cache this large is not read whole into memory


# The layers whose code makes a record (io reads, numeric computes, state locates and
# names, sim computes scheduled lrs, analysis builds the record)
_RECORD_CODE = ("base", "io", "numeric", "state", "sim", "analysis")
_code: str | None = None


def code_digest() -> str:
    """A digest of optstate's record-making code and the torch version (module docstring),
    computed once per process (~10 ms)."""
    global _code
    if _code is None:
        import hashlib

        import torch

        root = Path(__file__).resolve().parent.parent
        h = hashlib.sha256(f"{__version__} {torch.__version__}".encode())
        for layer in _RECORD_CODE:
            for f in sorted((root / layer).rglob("*.py")):
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
        _code = h.hexdigest()[:20]
    return _code


class TimelineCache:
    """The cache of one run (module docstring); ``path`` None: no cache."""

    def __init__(self, path: Path | None, *, key: str | None = None, unsafe: bool = False,
                 note: str | None = None) -> None:
        self.path = path
        self.note = note
        self.entries: dict[str, dict[str, Any]] = {}
        self.hits = self.misses = 0
        self.tag = json.dumps([key, bool(unsafe)])
        self.changed = False

    @classmethod
    def open(cls, root: Path, cache_dir: str | Path | None, *, use_cache: bool = True,
             key: str | None = None, unsafe: bool = False) -> TimelineCache:
        """The cache for the run in ``root`` (or in ``cache_dir``), loaded."""
        if not use_cache:
            return cls(None, key=key, unsafe=unsafe)
        folder = Path(cache_dir) if cache_dir is not None else Path(root) / FOLDER
        cache = cls(folder / FILE_NAME, key=key, unsafe=unsafe)
        cache._load()
        return cache

    def _id(self, c: Candidate) -> str:
        return f"{os.path.abspath(c.path)}\n{self.tag}"

    def _load(self) -> None:
        assert self.path is not None
        try:
            if not self.path.is_file():
                return
            if self.path.stat().st_size > _MAX_BYTES:
                self.note = f"{self.path} is over {_MAX_BYTES >> 20} MB: not read, rebuilt"
                return
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            self.note = f"the cache {self.path} could not be read ({_why(e)}): ignored, rebuilt"
            return
        if not isinstance(data, dict) or data.get("schema") != SCHEMA \
                or not isinstance(data.get("entries"), dict):
            self.note = f"the cache {self.path} is not a timeline cache: ignored, rebuilt"
            return
        if data.get("optstate") != __version__ or data.get("record") != RECORD_VERSION \
                or data.get("code") != code_digest():
            return  # written by another version: its records may differ; rebuilt quietly
        self.entries = {k: v for k, v in data["entries"].items() if isinstance(v, dict)}

    def get(self, c: Candidate) -> dict[str, Any] | None:
        """The cached record of ``c`` if its identity is unchanged (its label and path as
        now given), else None."""
        if self.path is None:
            self.misses += 1
            return None
        e = self.entries.get(self._id(c))
        if e is None or e.get("identity") != c.identity or not isinstance(e.get("record"), dict):
            self.misses += 1
            return None
        self.hits += 1
        rec = dict(e["record"])
        rec["label"], rec["path"], rec["name_step"] = c.label, str(c.path), c.name_step
        return rec

    def put(self, c: Candidate, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.entries[self._id(c)] = {"identity": dict(c.identity), "record": record}
        self.changed = True

    def save(self) -> None:
        """Write the cache (only if something changed), without the entries of files
        that are gone; a failure becomes ``note``."""
        if self.path is None:
            return
        live = {k: v for k, v in self.entries.items() if os.path.exists(k.split("\n", 1)[0])}
        if not self.changed and len(live) == len(self.entries):
            return
        data = {"schema": SCHEMA, "optstate": __version__, "record": RECORD_VERSION,
                "code": code_digest(), "entries": live}
        from optstate.base.errors import OptstateError
        from optstate.io.atomic import staged

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with staged(self.path, force=True) as tmp:
                assert tmp.fd is not None
                with os.fdopen(tmp.fd, "w", encoding="utf-8") as f:
                    tmp.fd = None
                    json.dump(data, f, separators=(",", ":"), allow_nan=False)
                    f.flush()
                    os.fsync(f.fileno())
        except (OSError, ValueError, OptstateError) as e:
            self.note = f"no cache written: {_why(e)}"
            self.path = None
            return
        self.entries = live

    def summary(self) -> dict[str, Any]:
        """What the report says about the cache."""
        return {"path": str(self.path) if self.path is not None else None,
                "hits": self.hits, "misses": self.misses, "note": self.note}


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e).splitlines()[0] if str(e) else type(e).__name__
