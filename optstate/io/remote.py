"""Checkpoints behind URLs (``s3://``, ``gs://``, ``az://``, ``hf://``, any fsspec URL).

fsspec and its backends (s3fs, gcsfs, adlfs, huggingface_hub) are optional extras,
imported only when a URL is opened: ``import optstate`` and every local command work
without them, and a missing one is a ``ConfigError`` naming the extra to install.

``RemotePath`` is the URL as a path (``name``, ``parent``, ``/``, ``exists()``, ...);
``RemoteFile`` is a seekable read-only file over HTTP range requests with a small block
cache, so ``torch.load`` and ``zipfile`` read a checkpoint's structure without
downloading its tensors. Every byte fetched is counted in a ``ReadStats``.

One retry policy for every remote read and write (``retrying``): timeouts, connection
errors, HTTP 5xx and 429, S3 ``SlowDown``/``RequestTimeout``/``Throttling`` are retried
with exponential backoff and jitter (0.2 s, x2, at most 5 s, 6 attempts), stopping at
once on Ctrl-C; s3fs's and botocore's own retries are turned down so that these are the
ones that count. 404 and 403 are permanent: one error naming the URL. Messages name the
URL without its userinfo and query string (``display``): credentials are never printed.

About 450 lines on purpose: the URL as a path, the ranged file and the one retry policy are
one contract (every remote read and write goes through it), read top to bottom.
"""

from __future__ import annotations

import errno
import importlib
import io
import os
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from optstate.base import interrupt
from optstate.base.errors import CheckpointError, ConfigError

T = TypeVar("T")

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+)://")
# protocol -> (module it needs, the optstate extra that installs it)
_EXTRAS = {
    "s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"),
    "hf": ("huggingface_hub", "hub"),
}

# The retry policy (module constants: tests shorten BASE_DELAY)
BASE_DELAY = 0.2
FACTOR = 2.0
MAX_DELAY = 5.0
ATTEMPTS = 6
_TRANSIENT_CODES = ("SlowDown", "RequestTimeout", "Throttling", "ThrottlingException",
                    "TooManyRequests", "ServiceUnavailable", "InternalError",
                    "RequestLimitExceeded")
_TRANSIENT_ERRNO = {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
                    errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
                    getattr(errno, "EREMOTEIO", 121)}

BLOCK = 256 << 10
BLOCKS_KEPT = 4


def is_url(text: str | os.PathLike[str]) -> bool:
    """``scheme://...`` with a scheme of 2+ letters (``C:\\x`` is a Windows path)."""
    return isinstance(text, (str, RemotePath)) and _URL.match(str(text)) is not None


def local_path(text: str | os.PathLike[str]) -> Path | None:
    """The local path a ``file://`` URL names (None for any other URL)."""
    s = str(text)
    if not s.lower().startswith("file://"):
        return None
    return Path(unquote(urlsplit(s).path))


def display(url: str | os.PathLike[str]) -> str:
    """``url`` without userinfo, query string and fragment: what every message shows."""
    s = str(url)
    if not is_url(s):
        return s
    parts = urlsplit(s)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class ReadStats:
    """What was read from remote storage: bytes, requests, retries (thread-safe).
    ``bytes_total``: the size of everything the checkpoint consists of (set by the reader)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.requests = 0
        self.retries = 0
        self.bytes_total = 0

    def add(self, nbytes: int, requests: int = 1) -> None:
        with self._lock:
            self.bytes_read += nbytes
            self.requests += requests

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def to_dict(self) -> dict[str, int]:
        with self._lock:
            return {"bytes_read": self.bytes_read, "bytes_total": self.bytes_total,
                    "requests": self.requests, "retries": self.retries}


# --------------------------------------------------------------------------- retries


def _status(e: BaseException) -> tuple[int | None, str]:
    """The HTTP status and error code behind ``e`` (or its causes), when known."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 8:
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return (int(status) if status else None), code
        for attr in ("status", "status_code"):
            value = getattr(cur, attr, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value, ""
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None, ""


def _reason(e: BaseException) -> str:
    status, code = _status(e)
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > 160:
        text = text[:160] + "…"
    if status is not None and str(status) not in text:
        return f"HTTP {status}{' ' + code if code else ''} ({text})"
    return text


def classify(e: BaseException) -> str:
    """'missing' (404), 'denied' (403), 'transient' (worth retrying) or 'permanent'."""
    status, code = _status(e)
    if isinstance(e, FileNotFoundError) or status == 404:
        return "missing"
    if isinstance(e, PermissionError) or status == 403:
        return "denied"
    if status is not None and (status >= 500 or status == 429):
        return "transient"
    if code in _TRANSIENT_CODES or any(c in str(e) for c in _TRANSIENT_CODES):
        return "transient"
    if isinstance(e, (TimeoutError, ConnectionError)):
        return "transient"
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNO:
        return "transient"
    name = type(e).__name__
    module = type(e).__module__ or ""
    # botocore's EndpointConnectionError / ReadTimeoutError, aiohttp's ClientConnectionError
    if module.startswith(("botocore", "aiohttp", "urllib3", "requests")) and any(
            w in name for w in ("Connection", "Timeout", "Disconnected", "IncompleteRead",
                                "ResponseStreaming", "Payload")):
        return "transient"
    return "permanent"


def _sleep(seconds: float) -> None:
    """Sleep, waking at once for Ctrl-C (``base.interrupt``)."""
    end = time.monotonic() + seconds
    while True:
        interrupt.check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def retrying(fn: Callable[[], T], url: str | os.PathLike[str], *,
             stats: ReadStats | None = None, action: str = "read") -> T:
    """``fn()`` under the retry policy; permanent failures as one-line CheckpointErrors."""
    delay = BASE_DELAY
    last = ""
    for attempt in range(1, ATTEMPTS + 1):
        interrupt.check()
        try:
            return fn()
        except (KeyboardInterrupt, CheckpointError, ConfigError):
            raise
        except Exception as e:
            kind = classify(e)
            if kind == "missing":
                raise CheckpointError(f"{display(url)} does not exist") from None
            if kind == "denied":
                raise CheckpointError(
                    f"access denied to {display(url)} (HTTP 403)",
                    hint="check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, ... or the "
                    "backend's own configuration) and the bucket's permissions") from None
            if kind == "permanent":
                raise CheckpointError(f"cannot {action} {display(url)}: {_reason(e)}") from None
            last = _reason(e)
        if attempt < ATTEMPTS:
            if stats is not None:
                stats.retried()
            _sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * FACTOR, MAX_DELAY)
    raise CheckpointError(f"cannot {action} {display(url)}: {last} after {ATTEMPTS} attempts")


# --------------------------------------------------------------------------- filesystems

def _filesystem(protocol: str, url: str) -> Any:
    """The fsspec filesystem for ``protocol`` (fsspec keeps one instance per arguments), or
    the ConfigError that names the extra to install."""
    needed = _EXTRAS.get(protocol)
    try:
        import fsspec
    except ImportError:
        extra = needed[1] if needed else "s3"
        raise ConfigError(f"reading {protocol}:// URLs needs fsspec, which is not installed",
                          hint=f"pip install 'optstate[{extra}]'") from None
    if needed is not None:
        try:
            importlib.import_module(needed[0])
        except ImportError:
            raise ConfigError(
                f"reading {protocol}:// URLs needs {needed[0]}, which is not installed",
                hint=f"pip install 'optstate[{needed[1]}]'") from None
    kwargs: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        # one attempt each in s3fs and botocore: our retries are the ones that count
        kwargs = {"config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"}}}
    try:
        fs = fsspec.filesystem(protocol, **kwargs)
        if protocol in ("s3", "s3a"):
            fs.retries = 1  # s3fs's own retry loop (a class attribute, not an argument)
        return fs
    except (ImportError, ValueError, TypeError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"cannot read {display(url)}: {text}") from None


class RemotePath:
    """A file or folder in remote storage, named by its URL (immutable)."""

    __slots__ = ("_url", "_protocol", "_fs", "_key")

    def __init__(self, url: str | RemotePath) -> None:
        s = str(url)
        m = _URL.match(s)
        if m is None:
            raise ValueError(f"not a URL: {display(s)}")
        rest = s[m.end():].rstrip("/")
        self._protocol = m.group(1).lower()
        self._url = f"{m.group(1)}://{rest}"
        self._fs = _filesystem(self._protocol, self._url)
        self._key = self._fs._strip_protocol(self._url)

    # path-like
    def __str__(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"RemotePath({display(self._url)!r})"

    def __fspath__(self) -> str:  # never a local path: fail loudly if used as one
        raise TypeError(f"{display(self._url)} is a URL, not a local path")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __truediv__(self, child: str) -> RemotePath:
        return RemotePath(f"{self._url}/{str(child).strip('/')}")

    @property
    def url(self) -> str:
        return self._url

    @property
    def protocol(self) -> str:
        return self._protocol

    @property
    def name(self) -> str:
        return self._url.rsplit("/", 1)[-1] if "/" in self._key else ""

    @property
    def suffix(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[i:] if 0 < i < len(name) - 1 else ""

    @property
    def parent(self) -> RemotePath:
        head = self._url[: self._url.find("://") + 3]
        rest = self._url[len(head):]
        return RemotePath(head + rest.rsplit("/", 1)[0]) if "/" in rest else self

    @property
    def fs(self) -> Any:
        return self._fs

    @property
    def key(self) -> str:
        return self._key

    # queries (retried)
    def _info(self) -> dict[str, Any] | None:
        def info() -> dict[str, Any] | None:
            try:
                return self._fs.info(self._key)
            except FileNotFoundError:
                return None
        return retrying(info, self._url)

    def exists(self) -> bool:
        return self._info() is not None

    def is_file(self) -> bool:
        info = self._info()
        return info is not None and info.get("type") == "file"

    def is_dir(self) -> bool:
        """A folder: a prefix with objects under it."""
        info = self._info()
        return info is not None and info.get("type") == "directory"

    def size(self) -> int:
        info = self._info()
        if info is None:
            raise CheckpointError(f"{display(self._url)} does not exist")
        return int(info.get("size") or 0)

    def iterdir(self) -> Iterator[RemotePath]:
        head = self._url[: self._url.find("://") + 3]
        names = retrying(lambda: self._fs.ls(self._key, detail=False), self._url)
        for name in sorted(names):
            name = str(name).rstrip("/")
            if name != self._key:
                yield RemotePath(head + self._fs._strip_protocol(name))

    def read_range(self, start: int, end: int, stats: ReadStats | None = None) -> bytes:
        """Bytes ``[start, end)`` in one range request (retried), counted in ``stats``."""
        if end <= start:
            return b""
        data = retrying(lambda: self._fs.cat_file(self._key, start=start, end=end),
                        self._url, stats=stats)
        if len(data) != end - start:
            raise CheckpointError(f"{display(self._url)} is shorter than expected (asked for "
                                  f"bytes {start}-{end}, got {len(data)}): it changed while "
                                  "being read?")
        if stats is not None:
            stats.add(len(data))
        return data

    def read_bytes(self, stats: ReadStats | None = None) -> bytes:
        """The whole object, in one request."""
        data = retrying(lambda: self._fs.cat_file(self._key), self._url, stats=stats)
        if stats is not None:
            stats.add(len(data))
        return data

    def open_ranged(self, stats: ReadStats | None = None) -> RemoteFile:
        return RemoteFile(self, stats if stats is not None else ReadStats())


class RemoteFile(io.RawIOBase):
    """A seekable read-only file over range requests. Reads up to a block go through a
    cache of ``BLOCKS_KEPT`` blocks of ``block`` bytes; a bigger read is one exact range
    request. Not thread-safe: one reader at a time."""

    def __init__(self, path: RemotePath, stats: ReadStats, *, block: int = BLOCK,
                 size: int | None = None) -> None:
        super().__init__()
        self.path = path
        self.stats = stats
        self.block = block
        self.length = path.size() if size is None else size
        self._pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()

    @property
    def name(self) -> str:
        return display(self.path.url)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.length + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = pos
        return pos

    def _block(self, index: int) -> bytes:
        data = self._blocks.get(index)
        if data is not None:
            self._blocks.move_to_end(index)
            return data
        start = index * self.block
        data = self.path.read_range(start, min(start + self.block, self.length), self.stats)
        self._blocks[index] = data
        while len(self._blocks) > BLOCKS_KEPT:
            self._blocks.popitem(last=False)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        start = self._pos
        end = min(start + len(view), self.length)
        if end <= start:
            return 0
        n = end - start
        if n > self.block:
            view[:n] = self.path.read_range(start, end, self.stats)
        else:
            done = 0
            while done < n:
                pos = start + done
                data = self._block(pos // self.block)
                off = pos % self.block
                take = min(n - done, len(data) - off)
                view[done:done + take] = data[off:off + take]
                done += take
        self._pos = end
        return n


def cli_path(text: str) -> Path | str:
    """A command-line checkpoint argument: a URL stays text (``open_source`` reads it
    remotely); anything else, and a ``file://`` URL, is the ``Path`` it always was."""
    if is_url(text):
        return local_path(text) or text
    return Path(text)


def local_only(text: str | None, option: str) -> Path | None:
    """An option that names a local file (``--model``): a URL is refused in one line."""
    if text is None:
        return None
    if is_url(text):
        local = local_path(text)
        if local is not None:
            return local
        raise ConfigError(f"{option} takes a local file, not a URL: {display(text)}",
                          hint="copy it to a local file first")
    return Path(text)
