"""``timeline``'s cache: each checkpoint's record, so that a rerun reads only what changed.

One JSON file (never pickle: a cache is data, and loading it runs nothing), by default
``<run folder>/.optstate/timeline-cache.json``, else ``timeline-cache.json`` in the folder
the caller names. An entry is keyed by the checkpoint's absolute path and what the record
depends on besides the file (the state asked for, safe or unsafe loading, the reader), and
holds the file's identity (total bytes, newest mtime and ctime, inode, number of files:
``io.run_dir.identity``): a checkpoint whose identity changed is read again. The file
records the optstate version, the record's version, the torch version and a digest of the
code that makes a record (the layers below ``render``): a cache written by other code is not
used, so a fix to a statistic is never hidden behind numbers cached before it. Rewritten
atomically (``io.atomic.staged``) after each run, without the entries of checkpoints that
no longer exist; a record of a checkpoint that could not be read is not kept (read again
next time: a permission fixed, too many open files).

A checkpoint folder, and so the cache beside it, can come from someone else: the file is
signed with a secret of this user (32 random bytes in ``$XDG_CACHE_HOME/optstate/cache-key``,
default ``~/.cache/optstate/cache-key``, made once, readable by the user only): its first
line holds an HMAC-SHA256 of the rest, checked before the rest is parsed. A cache not
signed with this user's key (another user's, a stranger's, edited by hand) is ignored with
a note and rewritten; so is one larger than ``MAX_BYTES``. A signed cache whose records
are not of the shape this code writes is ignored with a note too. Without a key (no
writable folder for it) there is no cache, and a note says why.

The cache never stops a run: a location that cannot be written leaves a note and no
cache; a cache file that cannot be read or parsed is ignored with a note. The default
location is used only when it is plainly the run's: ``.optstate`` as a symlink is not
followed (a note, no cache), and checkpoints named from several folders have no default
location (a note, unless a cache folder is named).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from optstate.base.version import __version__
from optstate.io.run_dir import Candidate

SCHEMA = "optstate.timeline-cache/1"
FILE_NAME = "timeline-cache.json"
FOLDER = ".optstate"
RECORD_VERSION = 2  # the record's shape (analysis.timeline.read_record); bump when it changes
# A cache larger than this is not read (it would be hashed whole, then parsed: ~6x its size
# in memory); ours hold ~5 KB per checkpoint of a small model, ~1 MB for a large one
MAX_BYTES = 256 << 20
KEY_BYTES = 32
_MAGIC = b"optstate-timeline-cache hmac-sha256 "
_HEADER_MAX = 128  # the first line: _MAGIC + 64 hex digits + newline


# The layers whose code makes a record (io reads, numeric computes, state locates and
# names, sim computes scheduled lrs, analysis builds the record)
_RECORD_CODE = ("base", "io", "numeric", "state", "sim", "analysis")
_code: str | None = None


def key_path() -> Path:
    """Where this user's cache key is kept (module docstring)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    folder = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return folder / "optstate" / "cache-key"


def user_key() -> tuple[bytes | None, str | None]:
    """This user's secret that signs the cache, made on first use (0600 in a 0700 folder,
    atomically: two runs at once agree on one); (None, why) when it cannot be kept."""
    try:
        path = key_path()
    except (RuntimeError, KeyError, OSError) as e:  # no home folder to be found
        return None, f"no cache: no folder for its key ({_why(e)})"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = _read_key(path)
        if key is None:
            tmp = path.parent / f".cache-key.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(KEY_BYTES))
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)  # never replaces a key another run just made
                except FileExistsError:
                    pass
            finally:
                tmp.unlink(missing_ok=True)
            key = _read_key(path)
    except (OSError, ValueError) as e:
        return None, f"no cache: its key could not be kept in {path.parent} ({_why(e)})"
    if key is None:
        return None, f"no cache: its key could not be kept in {path.parent}"
    return key, None


def _read_key(path: Path) -> bytes | None:
    """The key in ``path``, None when there is none; ValueError when the file is not one
    (another size, a link, another owner's, readable by others)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != KEY_BYTES \
                or (hasattr(os, "getuid") and st.st_uid != os.getuid()) \
                or st.st_mode & 0o077:
            raise ValueError(f"{path} is not a {KEY_BYTES}-byte file only you can read; "
                             "delete it and a new one is made")
        return f.read()


def sign(payload: bytes, key: bytes) -> bytes:
    """The cache file's bytes: the signature line, then ``payload``."""
    return _MAGIC + hmac.new(key, payload, hashlib.sha256).hexdigest().encode() + b"\n" + payload


def verified(blob: bytes, key: bytes) -> bytes | None:
    """The payload of a cache file's bytes if ``key`` signed it, else None."""
    head, sep, payload = blob[:_HEADER_MAX].partition(b"\n")
    if not sep or not head.startswith(_MAGIC):
        return None
    payload = blob[len(head) + 1:]
    mac = hmac.new(key, payload, hashlib.sha256).hexdigest().encode()
    return payload if hmac.compare_digest(head[len(_MAGIC):], mac) else None


def code_digest() -> str:
    """A digest of optstate's record-making code and the torch version (module docstring),
    computed once per process (~10 ms)."""
    global _code
    if _code is None:
        from importlib import metadata

        try:  # from its package's metadata: torch is not imported (issue #22)
            torch_version = metadata.version("torch")
        except metadata.PackageNotFoundError:  # a build without metadata: torch says it
            torch_version = __import__("torch").__version__
        root = Path(__file__).resolve().parent.parent
        h = hashlib.sha256(f"{__version__} {torch_version}".encode())
        for layer in _RECORD_CODE:
            for f in sorted((root / layer).rglob("*.py")):
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
        _code = h.hexdigest()[:20]
    return _code


class TimelineCache:
    """The cache of one run (module docstring); ``path`` None: no cache."""

    def __init__(self, path: Path | None, *, key: str | None = None, unsafe: bool = False,
                 note: str | None = None, secret: bytes | None = None) -> None:
        self.path = path
        self.note = note
        self.entries: dict[str, dict[str, Any]] = {}
        self.hits = self.misses = 0
        from optstate.io.torch_file import choose_reader  # a record is kept per reader

        self.tag = json.dumps([key, bool(unsafe), choose_reader("auto")[0]])
        self.changed = False
        self.secret = secret
        self.made: Path | None = None  # the cache folder, made on save when it is missing

    @classmethod
    def open(cls, root: Path | None, cache_dir: str | Path | None, *, use_cache: bool = True,
             key: str | None = None, unsafe: bool = False) -> TimelineCache:
        """The cache for the run in ``root`` (or in ``cache_dir``), loaded. ``root`` None:
        checkpoints from several folders, no default location."""
        if not use_cache:
            return cls(None, key=key, unsafe=unsafe)
        if cache_dir is not None:
            folder = Path(cache_dir)
            if str(cache_dir) == "":
                return cls(None, key=key, unsafe=unsafe,
                           note="no cache: the cache folder named is empty")
        elif root is None:
            return cls(None, key=key, unsafe=unsafe, note="no cache: the checkpoints are in "
                       "several folders (name a cache folder to keep one)")
        else:
            folder = Path(root) / FOLDER
            if folder.is_symlink():
                return cls(None, key=key, unsafe=unsafe, note=f"no cache: {folder} is a "
                           "symbolic link, not followed")
        if folder.exists() and not folder.is_dir():
            return cls(None, key=key, unsafe=unsafe,
                       note=f"no cache: {folder} is a file, not a folder")
        if not folder.exists() and folder.parent.exists() and not folder.parent.is_dir():
            return cls(None, key=key, unsafe=unsafe,
                       note=f"no cache: {folder.parent} is a file, not a folder")
        if not folder.exists() and not folder.parent.is_dir():
            return cls(None, key=key, unsafe=unsafe, note=f"no cache: {folder.parent} does "
                       "not exist (only the cache folder itself is made)")
        secret, why = user_key()
        if secret is None:
            return cls(None, key=key, unsafe=unsafe, note=why)
        cache = cls(folder / FILE_NAME, key=key, unsafe=unsafe, secret=secret)
        cache._load()
        return cache

    def _id(self, c: Candidate) -> str:
        return f"{os.path.abspath(c.path)}\n{self.tag}"

    def _load(self) -> None:
        assert self.path is not None and self.secret is not None
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return
        except OSError as e:
            self.note = (f"the cache {self.path} is a symbolic link, not followed: ignored, "
                         "replaced" if self.path.is_symlink() else
                         f"the cache {self.path} could not be read ({_why(e)}): ignored, rebuilt")
            return
        try:
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    self.note = f"the cache {self.path} is not a file: ignored, rebuilt"
                    return
                if st.st_size > MAX_BYTES:
                    self.note = (f"the cache {self.path} is over {MAX_BYTES >> 20} MB: not "
                                 "read, rebuilt")
                    return
                blob = f.read(MAX_BYTES + 1)
        except OSError as e:
            self.note = f"the cache {self.path} could not be read ({_why(e)}): ignored, rebuilt"
            return
        payload = verified(blob, self.secret)
        if payload is None:
            self.note = f"the cache {self.path} was not written by you here: ignored and rebuilt"
            return
        try:
            data = json.loads(payload.decode("utf-8"))
        except (ValueError, RecursionError) as e:
            self.note = f"the cache {self.path} could not be read ({_why(e)}): ignored, rebuilt"
            return
        if not isinstance(data, dict) or data.get("schema") != SCHEMA \
                or not isinstance(data.get("entries"), dict):
            self.note = f"the cache {self.path} is not a timeline cache: ignored, rebuilt"
            return
        if data.get("optstate") != __version__ or data.get("record") != RECORD_VERSION \
                or data.get("code") != code_digest():
            return  # written by another version: its records may differ; rebuilt quietly
        if not all(_valid_entry(k, v) for k, v in data["entries"].items()):
            self.note = (f"the cache {self.path} holds records not of the shape this version "
                         "writes: ignored, rebuilt")
            return
        self.entries = data["entries"]

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
        """Keep ``record`` for ``c``; not one of a checkpoint that could not be read (read
        again next time)."""
        if self.path is None:
            return
        if record.get("error") is not None:
            if self.entries.pop(self._id(c), None) is not None:
                self.changed = True
            return
        self.entries[self._id(c)] = {"identity": dict(c.identity), "record": record}
        self.changed = True

    def save(self) -> None:
        """Write the cache (only if something changed), without the entries of files
        that are gone; a failure becomes ``note``."""
        if self.path is None:
            return
        assert self.secret is not None
        live = {k: v for k, v in self.entries.items() if os.path.exists(k.split("\n", 1)[0])}
        if not self.changed and len(live) == len(self.entries) and self.note is None:
            return
        data = {"schema": SCHEMA, "optstate": __version__, "record": RECORD_VERSION,
                "code": code_digest(), "entries": live}
        from optstate.base.errors import OptstateError
        from optstate.io.atomic import staged

        try:
            folder = self.path.parent
            if folder.is_symlink() and folder.name == FOLDER:
                raise OSError(f"{folder} is a symbolic link, not followed")
            folder.mkdir(exist_ok=True)  # only the last component: its parent must exist
            blob = sign(json.dumps(data, separators=(",", ":"), allow_nan=False).encode(),
                        self.secret)
            with staged(self.path, force=True) as tmp:
                assert tmp.fd is not None
                with os.fdopen(tmp.fd, "wb") as f:
                    tmp.fd = None
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
        except (OSError, ValueError, OptstateError) as e:
            self.note = f"no cache written: {_why(e)}"
            self.path = None
            return
        self.entries = live
        self.changed = False  # saved: a later save writes again only after a put

    def summary(self) -> dict[str, Any]:
        """What the report says about the cache."""
        return {"path": str(self.path) if self.path is not None else None,
                "hits": self.hits, "misses": self.misses, "note": self.note}


# The record's shape (analysis.timeline_record), checked on a verified cache's records
_INT = (int,)
_NUM = (int, float, str, type(None))  # non-finite floats are stored as "nan", "inf"
_OPT_INT = (int, type(None))
_OPT_STR = (str, type(None))


def _is(x: Any, types: tuple[type, ...]) -> bool:
    if isinstance(x, str) and types is _NUM:
        return x in ("nan", "inf", "-inf")
    return isinstance(x, types) and not (isinstance(x, bool) and bool not in types)


def _nums(x: Any) -> bool:
    return x is None or isinstance(x, list) and all(_is(v, _NUM) for v in x)


def _valid_entry(k: Any, v: Any) -> bool:
    """Whether a cache entry has the shape this code writes (a guard against records of an
    older bug, not against a forger: the signature is that)."""
    if not (isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("identity"), dict)
            and all(_is(x, _INT) for x in v["identity"].values())):
        return False
    r = v.get("record")
    try:
        return isinstance(r, dict) and _valid_record(r)
    except (KeyError, TypeError, AttributeError):
        return False


def _valid_record(r: dict[str, Any]) -> bool:
    steps, sch = r["steps"], r["scheduler"]
    if not (_is(r["label"], (str,)) and _is(r["path"], (str,)) and _is(r["format"], _OPT_STR)
            and _is(r["reader"], _OPT_STR) and _is(r["reader_note"], _OPT_STR)
            and _is(r["kind"], _OPT_STR) and _is(r["name_step"], _OPT_INT)
            and _is(r["error"], _OPT_STR) and _is(r["error_code"], _OPT_STR)
            and isinstance(r["identity"], dict) and isinstance(steps, dict)
            and all(_is(steps[n], _OPT_INT) for n in ("run", "optimizer", "scheduler"))
            and _is(steps["run_source"], _OPT_STR)
            and (sch is None or isinstance(sch, dict) and _is(sch["kind"], _OPT_STR)
                 and _is(sch["last_epoch"], _NUM) and isinstance(sch["settings"], dict)
                 and all(isinstance(sch[n], (list, type(None))) for n in ("last_lr", "base_lrs"))
                 and _nums(sch["scheduled_lr"])
                 and _is(sch["scheduled_reason"], _OPT_STR))
            and isinstance(r["groups"], list) and isinstance(r["params"], list)
            and isinstance(r["warnings"], list)):
        return False
    for g in r["groups"]:
        if not (_is(g["index"], _INT) and _is(g["lr"], _NUM)
                and isinstance(g["hyperparams"], dict) and isinstance(g["params"], list)
                and all(_is(i, _INT) for i in g["params"])):
            return False
    for w in r["warnings"]:
        if not (_is(w["code"], (str,)) and _is(w["message"], (str,))):
            return False
    for prm in r["params"]:
        if not (_is(prm["position"], _INT) and _is(prm["name"], _OPT_STR)
                and _is(prm["group"], _OPT_INT) and isinstance(prm["entries"], dict)):
            return False
        for name, e in prm["entries"].items():
            if not (isinstance(name, str) and isinstance(e["shape"], list)
                    and all(_is(n, _INT) for n in e["shape"]) and _is(e["dtype"], _OPT_STR)
                    and _is(e["numel"], _OPT_INT) and _is(e["nan"], _OPT_INT)
                    and _is(e["inf"], _OPT_INT)
                    and all(_is(e[n], _NUM) for n in ("norm", "max_abs", "zeros"))):
                return False
    return True


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e).splitlines()[0] if str(e) else type(e).__name__
