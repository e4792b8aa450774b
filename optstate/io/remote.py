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

One version per read: ``RemotePath`` keeps the ETag (and VersionId) its first HEAD or
listing saw, and every later range request asks for it (S3: ``If-Match``; other backends
re-check the ETag first): a replaced object is "changed while being read". Every request
has one read timeout (``OPTSTATE_READ_TIMEOUT``, 60 s); listings stop at ``limits.items``;
reasons pasted from backends are scrubbed of userinfo and query strings (``scrub``).

About 720 lines on purpose: the URL as a path, the ranged file, the version pin and the one
retry policy are one contract (every remote read and write goes through it), read top to
bottom.
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
    "http": ("aiohttp", "http"), "https": ("aiohttp", "http"),
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

# One read timeout for every request: a server that sends nothing for this long is given
# up on (and the request retried). OPTSTATE_READ_TIMEOUT overrides it (seconds).
TIMEOUT_ENV = "OPTSTATE_READ_TIMEOUT"
READ_TIMEOUT = 60.0


def read_timeout() -> float:
    """Seconds a request may go without data (``OPTSTATE_READ_TIMEOUT``, default 60)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return READ_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{TIMEOUT_ENV} is {text!r}; expected a number of seconds > 0",
                          hint=f"e.g. {TIMEOUT_ENV}=120")
    return value


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


# userinfo anywhere ("s3://KEY:SECRET@bucket", 'bucket name "KEY:SECRET@bkt"', "user@host"
# after ://) and query strings of URLs (presigned signatures)
_USERINFO = re.compile(r"(?<![\w.+-])[^\s/\\\"'@:<>()\[\]]+:[^\s/\"'@<>]*@|(?<=://)[^\s/\"'@:]+@")
_QUERY = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]+://[^\s?#\"'<>]*)[?#][^\s\"'<>]*")
_ERRNO = re.compile(r"^\[Errno -?\d+\]\s*")


def scrub(text: str) -> str:
    """``text`` (an exception's, a backend's) without userinfo and URL query strings."""
    return _USERINFO.sub("", _QUERY.sub(r"\1", text))


def _stalled(e: BaseException) -> bool:
    cur: BaseException | None = e
    for _ in range(8):
        if cur is None:
            return False
        name = type(cur).__name__
        if isinstance(cur, TimeoutError) or "Timeout" in name or "timed out" in str(cur):
            return "Connect" not in name
        cur = cur.__cause__ or cur.__context__
    return False


def _cannot_connect(e: BaseException) -> bool:
    cur: BaseException | None = e
    for _ in range(8):
        if cur is None:
            return False
        name = type(cur).__name__
        if (isinstance(cur, ConnectionRefusedError) or "ConnectorError" in name
                or "EndpointConnectionError" in name or "ConnectTimeout" in name):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _reason(e: BaseException) -> str:
    status, code = _status(e)
    if status is None and _stalled(e):
        return f"the server stopped sending (no data for {read_timeout():g} s)"
    if status is None and _cannot_connect(e):
        return "cannot connect to the server"
    if isinstance(e, FileNotFoundError) and e.__cause__ is not None:
        e = e.__cause__  # fsspec's HTTP filesystem: its text is only the URL
    message = getattr(e, "message", None)  # aiohttp's ClientResponseError: the reason
    raw = message if isinstance(message, str) and status is not None else str(e)
    text = _ERRNO.sub("", scrub(" ".join(raw.split()))) or type(e).__name__
    if len(text) > 160:
        text = text[:160] + "…"
    if code.isdigit():
        code = ""
    if status is not None:
        head = f"HTTP {status}{' ' + code if code else ''}"
        if text in (str(status), code, head) or text.startswith(head):
            return head
        return f"{head} ({text})"
    return text


def classify(e: BaseException) -> str:
    """'missing' (404), 'denied' (403), 'transient' (worth retrying) or 'permanent'."""
    status, code = _status(e)
    cause = e.__cause__
    if isinstance(e, FileNotFoundError) and cause is not None and status not in (404, 410):
        # fsspec's HTTP filesystem turns every failure of its HEAD/GET into a
        # FileNotFoundError: what it wraps tells (a 500, a refused connection, ...)
        kind = classify(cause)
        return kind if kind != "permanent" or status is not None else "missing"
    if status == 412 or code == "PreconditionFailed":
        return "changed"
    if isinstance(e, FileNotFoundError) or status in (404, 410):
        return "missing"
    if isinstance(e, PermissionError) or status in (401, 403):
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


def changed_error(url: str | os.PathLike[str]) -> CheckpointError:
    """The object was replaced after its first HEAD (another ETag / version)."""
    return CheckpointError(f"{display(url)} changed while being read (it is no longer the "
                           "version first seen)",
                           hint="read it again once the writer has finished")


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
            if kind == "changed" and action == "read":
                raise changed_error(url) from None
            if kind == "denied":
                status = _status(e)[0] or 403
                raise CheckpointError(
                    f"access denied to {display(url)} (HTTP {status})",
                    hint="check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, ... or the "
                    "backend's own configuration) and the bucket's permissions") from None
            if kind in ("permanent", "changed"):
                raise CheckpointError(f"cannot {action} {display(url)}: {_reason(e)}",
                                      hint=_CREDENTIALS_HINT if _no_credentials(e)
                                      else None) from None
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
        raise ConfigError(f"reading {protocol}:// URLs needs fsspec, which is not installed",
                          hint=f"pip install 'optstate[{needed[1]}]'" if needed else
                          f"pip install fsspec and fsspec's backend for {protocol}:// URLs"
                          ) from None
    if needed is not None:
        try:
            importlib.import_module(needed[0])
        except ImportError:
            raise ConfigError(
                f"reading {protocol}:// URLs needs {needed[0]}, which is not installed",
                hint=f"pip install 'optstate[{needed[1]}]'") from None
    kwargs: dict[str, Any] = {}
    timeout = read_timeout()
    if protocol in ("s3", "s3a"):
        # one attempt each in s3fs and botocore: our retries are the ones that count
        kwargs = {"config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"},
                                    "read_timeout": timeout, "connect_timeout": timeout}}
    elif protocol in ("http", "https"):
        import aiohttp

        kwargs = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(
            total=None, sock_read=timeout, sock_connect=timeout)}}
    try:
        fs = fsspec.filesystem(protocol, **kwargs)
        if protocol in ("s3", "s3a"):
            fs.retries = 1  # s3fs's own retry loop (a class attribute, not an argument)
        return fs
    except (ImportError, ValueError, TypeError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"cannot read {display(url)}: {text}") from None


# object stores: the first part of the path is the bucket / container
_BUCKETED = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
_CREDENTIALS_HINT = ("check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, ... or the "
                     "backend's own configuration) and the bucket's permissions")


def _check_url(protocol: str, url: str, rest: str) -> None:
    """One-line ConfigErrors for URLs no object store reads as meant: credentials in them
    (never echoed), a query string or fragment (http(s) keeps its query: presigned URLs),
    no bucket."""
    host = rest.split("/", 1)[0]
    if protocol not in ("http", "https") and "@" in host and (
            ":" in host.rsplit("@", 1)[0] or protocol in ("s3", "s3a", "gs", "gcs")):
        raise ConfigError(f"{display(url)}: credentials cannot be given in the URL",
                          hint="use the usual AWS_* variables / profile (or the backend's "
                          "own configuration)")
    if protocol not in ("http", "https") and ("?" in rest or "#" in rest):
        raise ConfigError(f"{display(url)}: a query string or fragment is not supported in "
                          f"{protocol}:// URLs", hint="remove it (presigned http(s) URLs keep "
                          "theirs)")
    if protocol in _BUCKETED and not host.rsplit("@", 1)[-1]:
        shown = f"{protocol}://{re.split('[?#]', rest, maxsplit=1)[0]}"
        raise ConfigError(f"{shown}: the URL names no bucket",
                          hint=f"e.g. {protocol}://BUCKET/path/to/checkpoint")


def missing_error(url: str | os.PathLike[str], fs: Any = None) -> CheckpointError:
    """``URL does not exist``; for an object store, the bucket checked once: when the bucket
    itself is missing, the message says so."""
    text = display(url)
    m = _URL.match(text)
    if fs is not None and m is not None and m.group(1).lower() in _BUCKETED:
        bucket = text[m.end():].split("/", 1)[0]
        try:
            there = fs.exists(bucket)
        except Exception:  # no permission to look at the bucket: say only what is known
            there = True
        if bucket and there is False:
            return CheckpointError(f"{text} does not exist: the bucket {bucket} does not exist",
                                   hint="check the bucket's name")
    return CheckpointError(f"{text} does not exist")


def _no_credentials(e: BaseException) -> bool:
    cur: BaseException | None = e
    for _ in range(8):
        if cur is None:
            return False
        if "NoCredentials" in type(cur).__name__ or "Unable to locate credentials" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


class RemotePath:
    """A file or folder in remote storage, named by its URL (immutable)."""

    __slots__ = ("_url", "_protocol", "_fs", "_key", "_pin")

    def __init__(self, url: str | RemotePath) -> None:
        s = str(url)
        m = _URL.match(s)
        if m is None:
            raise ValueError(f"not a URL: {display(s)}")
        rest = s[m.end():].rstrip("/")
        _check_url(m.group(1).lower(), s, rest)
        self._protocol = m.group(1).lower()
        self._url = f"{m.group(1)}://{rest}"
        self._fs = _filesystem(self._protocol, self._url)
        self._key = self._fs._strip_protocol(self._url)
        # (ETag, VersionId) of the object as first seen (``_info``, or a listing:
        # ``pinned``); every later range read asks for that version
        self._pin: tuple[str, str | None] | None = None

    def pinned(self, info: dict[str, Any]) -> RemotePath:
        """This path, tied to the version ``info`` (a listing's entry) describes."""
        out = RemotePath.__new__(RemotePath)
        out._url, out._protocol, out._fs, out._key = (self._url, self._protocol, self._fs,
                                                      self._key)
        out._pin = _pin_of(info)
        return out

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
            except FileNotFoundError as e:
                if e.__cause__ is not None and classify(e) != "missing":
                    raise  # fsspec's HTTP filesystem: a 500, a refused connection, ...
                return None
        found = retrying(info, self._url)
        if found is not None and found.get("type") == "file" and self._pin is None:
            self._pin = _pin_of(found)  # (a later HEAD does not move it: reads ask for it)
        return found

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

    def listing(self) -> list[dict[str, Any]]:
        """The entries directly under this folder (fsspec info dicts), at most
        ``limits.items`` of them: S3 is listed page by page and a longer listing is a
        LimitError before it is all in memory (other backends list in one call)."""
        from optstate.base.limits import LimitError
        from optstate.base.limits import current as current_limits

        limit = current_limits().items
        if self._protocol in ("s3", "s3a") and hasattr(self._fs, "_iterdir"):
            from fsspec.asyn import sync

            bucket, _, prefix = self._key.partition("/")

            async def pages() -> list[dict[str, Any]]:
                out: list[dict[str, Any]] = []
                async for entry in self._fs._iterdir(
                        bucket, prefix=prefix.rstrip("/") + "/" if prefix else "",
                        delimiter="/"):
                    out.append(entry)
                    if len(out) > limit:
                        break
                return out

            entries = retrying(lambda: sync(self._fs.loop, pages), self._url)
        else:
            entries = retrying(lambda: self._fs.ls(self._key, detail=True, refresh=True),
                               self._url)
        if len(entries) > limit:
            raise LimitError(display(self._url), f"lists more than {limit:,} entries",
                             "items", limit)
        return [e for e in entries if isinstance(e, dict)
                and str(e.get("name", "")).rstrip("/") != self._key]

    def iterdir(self) -> Iterator[RemotePath]:
        head = self._url[: self._url.find("://") + 3]
        entries = self.listing()
        for entry in sorted(entries, key=lambda e: str(e.get("name", ""))):
            name = str(entry.get("name", "")).rstrip("/")
            path = RemotePath(head + self._fs._strip_protocol(name))
            yield path.pinned(entry) if entry.get("type") == "file" else path

    def read_range(self, start: int, end: int, stats: ReadStats | None = None) -> bytes:
        """Bytes ``[start, end)`` in one range request (retried), counted in ``stats``."""
        if end <= start:
            return b""
        data = retrying(lambda: self._get(start, end), self._url, stats=stats)
        if len(data) > end - start:
            raise CheckpointError(
                f"{display(self._url)}: the server sent {len(data):,} bytes for a range of "
                f"{end - start:,}: it does not honour range requests",
                hint="optstate reads remote checkpoints by range requests; copy the file "
                "locally first")
        if len(data) != end - start:
            raise CheckpointError(f"{display(self._url)} is shorter than expected (asked for "
                                  f"bytes {start}-{end}, got {len(data)}): it changed while "
                                  "being read?")
        if stats is not None:
            stats.add(len(data))
        return data

    def _get(self, start: int, end: int) -> bytes:
        """One range request for the pinned version: S3 asks with If-Match (and the
        VersionId when the bucket has versions): a replaced object answers 412; other
        backends re-check the ETag by a HEAD first."""
        pin = self._pin
        if pin is None:
            return self._fs.cat_file(self._key, start=start, end=end)
        etag, version = pin
        if self._protocol in ("s3", "s3a") and hasattr(self._fs, "_call_s3"):
            from fsspec.asyn import sync

            bucket, _, key = self._key.partition("/")
            extra = {"VersionId": version} if version else {}

            async def get() -> bytes:
                resp = await self._fs._call_s3(
                    "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}",
                    IfMatch=etag, **extra)
                try:
                    return await resp["Body"].read()
                finally:
                    resp["Body"].close()

            return sync(self._fs.loop, get)
        now = _pin_of(self._fs.info(self._key))
        if now is not None and now[0] != etag:
            raise changed_error(self._url)
        return self._fs.cat_file(self._key, start=start, end=end)

    def read_bytes(self, stats: ReadStats | None = None) -> bytes:
        """The whole object, in one request."""
        data = retrying(lambda: self._fs.cat_file(self._key), self._url, stats=stats)
        if stats is not None:
            stats.add(len(data))
        return data

    def open_ranged(self, stats: ReadStats | None = None) -> RemoteFile:
        return RemoteFile(self, stats if stats is not None else ReadStats())


def _pin_of(info: dict[str, Any]) -> tuple[str, str | None] | None:
    etag = info.get("ETag") or info.get("etag")
    if not etag:
        return None
    version = info.get("VersionId") or info.get("version_id")
    return str(etag), (str(version) if version and version != "null" else None)


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


# What --model as a URL is told: what names a remote folder's params instead.
MODEL_HINT = ("copy it to a local file first (a remote Trainer folder's own config.json / "
              "model.safetensors name its params by themselves)")


def local_only(text: str | Path | None, option: str, hint: str | None = None) -> Path | None:
    """An option that names a local file (``--model``, ``--config``, ``--save``): a URL is
    refused in one line, with ``hint`` (by default: copy it to a local file first)."""
    if text is None:
        return None
    if is_url(text):
        local = local_path(text)
        if local is not None:
            return local
        raise ConfigError(f"{option} takes a local file, not a URL: {display(text)}",
                          hint=hint or "copy it to a local file first")
    return Path(text)
