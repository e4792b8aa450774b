"""A real HTTP reverse proxy on loopback, in front of the moto server, that injects faults.

``FaultProxy(upstream)`` listens on 127.0.0.1 (port 0) in a thread (``ThreadingHTTPServer``,
HTTP/1.1 keep-alive) and forwards every request as it came (method, path, headers, Range, body
streamed in 64 KiB pieces) to ``upstream``, and the answer back the same way, unless a rule
matches first. Rules (checked in the order added; a rule with ``times`` stops after that many):

- ``slow_down(n, method="GET", key=".*")``: 503 ``SlowDown`` to the first ``n`` matching requests
- ``unavailable(n, ...)``: 503 ``ServiceUnavailable``
- ``deny(method=None, key=...)``: 403 ``AccessDenied`` (every time)
- ``fail_puts(key=..., times=None)``: 500 ``InternalError`` to PUTs (objects and multipart
  parts) and to the POST that completes a multipart upload
- ``stall(n, ...)``: the first ``n`` matching GETs get a 206's headers and then no body at all
  (the proxy holds the connection for ``STALL`` seconds)
- ``ignore_range(n, ...)``: the first ``n`` matching GETs are forwarded without their Range
  header (the whole object comes back, as from a server that ignores ranges)

``key`` is a regex searched in the request path (``/bucket/key``, unquoted, no query string).
Every request lands in ``log`` as ``Entry(method, path, query, range, status, bytes_sent)``, with
``bytes_sent`` the response body bytes written to the client; ``get_bytes()`` sums the
successful GETs' bodies, ``requests()`` counts.
"""

from __future__ import annotations

import http.client
import re
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

PIECE = 64 * 1024
STALL = 5.0
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade",
}


@dataclass(frozen=True)
class Entry:
    method: str
    path: str
    query: str
    range: str | None
    status: int
    bytes_sent: int
    injected: bool


@dataclass
class Rule:
    methods: frozenset[str] | None
    key: re.Pattern
    status: int
    code: str
    times: int | None  # None: every time
    query: re.Pattern | None = None
    hits: int = 0

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.methods is not None and method not in self.methods:
            return False
        if self.query is not None and not self.query.search(query):
            return False
        return bool(self.key.search(path))


def _error_body(code: str, status: int, path: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>injected {status} by the test proxy</Message>"
        f"<Resource>{path}</Resource><RequestId>{uuid.uuid4().hex}</RequestId></Error>"
    ).encode()


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        u = urlsplit(upstream)
        self.upstream_host, self.upstream_port = u.hostname, u.port
        self.log: list[Entry] = []
        self.rules: list[Rule] = []
        self._lock = threading.Lock()
        # requests being answered: the log is read once they are all recorded (a client can
        # have every byte of a response before the handler thread logs it)
        self._busy = 0
        self._idle = threading.Condition(self._lock)
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # -- rules ---------------------------------------------------------------------------
    def add_rule(self, status: int, code: str, *, method: str | tuple[str, ...] | None = None,
                 key: str = ".*", times: int | None = None, query: str | None = None) -> Rule:
        methods = None if method is None else frozenset(
            (method,) if isinstance(method, str) else method)
        rule = Rule(methods, re.compile(key), status, code, times,
                    None if query is None else re.compile(query))
        with self._lock:
            self.rules.append(rule)
        return rule

    def slow_down(self, n: int, method: str | tuple[str, ...] | None = "GET",
                  key: str = ".*") -> Rule:
        return self.add_rule(503, "SlowDown", method=method, key=key, times=n)

    def unavailable(self, n: int, method: str | tuple[str, ...] | None = "GET",
                    key: str = ".*") -> Rule:
        return self.add_rule(503, "ServiceUnavailable", method=method, key=key, times=n)

    def deny(self, method: str | tuple[str, ...] | None = None, key: str = ".*") -> Rule:
        return self.add_rule(403, "AccessDenied", method=method, key=key)

    def fail_puts(self, key: str = ".*", times: int | None = None) -> list[Rule]:
        """500 to object PUTs and multipart part PUTs, and to CompleteMultipartUpload."""
        return [
            self.add_rule(500, "InternalError", method="PUT", key=key, times=times),
            self.add_rule(500, "InternalError", method="POST", key=key, times=times,
                          query=r"(^|&)uploadId="),
        ]

    def stall(self, n: int, method: str | tuple[str, ...] | None = "GET",
              key: str = ".*") -> Rule:
        return self.add_rule(0, "stall", method=method, key=key, times=n)

    def ignore_range(self, n: int, method: str | tuple[str, ...] | None = "GET",
                     key: str = ".*") -> Rule:
        return self.add_rule(0, "ignore_range", method=method, key=key, times=n)

    def clear_rules(self) -> None:
        with self._lock:
            self.rules.clear()

    def _match(self, method: str, path: str, query: str) -> Rule | None:
        with self._lock:
            for r in self.rules:
                if r.matches(method, path, query):
                    r.hits += 1
                    return r
        return None

    # -- log -----------------------------------------------------------------------------
    def _record(self, entry: Entry) -> None:
        with self._lock:
            self.log.append(entry)

    def _begin(self) -> None:
        with self._lock:
            self._busy += 1

    def _end(self) -> None:
        with self._lock:
            self._busy -= 1
            self._idle.notify_all()

    def entries(self, method: str | None = None, key: str = ".*") -> list[Entry]:
        k = re.compile(key)
        with self._lock:
            self._idle.wait_for(lambda: self._busy == 0, timeout=10)
            return [e for e in self.log
                    if (method is None or e.method == method) and k.search(e.path)]

    def requests(self, method: str | None = None, key: str = ".*") -> int:
        return len(self.entries(method, key))

    def get_bytes(self, key: str = ".*") -> int:
        """Object bytes sent to the client: the bodies of the successful (200/206) GETs whose
        path matches ``key`` (injected error bodies are not data)."""
        return sum(e.bytes_sent for e in self.entries("GET", key) if e.status in (200, 206))

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format, *args):  # noqa: A002 - quiet; the proxy keeps its own log
        pass

    def _read_body(self):
        """Yield the request body in pieces (Content-Length or chunked)."""
        te = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            piece = self.rfile.read(min(PIECE, n))
            if not piece:
                return
            n -= len(piece)
            yield piece

    def _handle(self) -> None:
        owner = self.owner
        method = self.command
        u = urlsplit(self.path)
        path, query = unquote(u.path), u.query
        rng = self.headers.get("Range")
        rule = owner._match(method, path, query)
        if rule is not None and rule.code == "stall":
            self.send_response(206)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            owner._record(Entry(method, path, query, rng, 206, 0, True))
            threading.Event().wait(STALL)
            self.close_connection = True
            return
        ignore_range = rule is not None and rule.code == "ignore_range"
        if ignore_range:
            rule = None
        if rule is not None:
            for _ in self._read_body():  # drain it: the connection stays usable
                pass
            body = b"" if method == "HEAD" else _error_body(rule.code, rule.status, path)
            self.send_response(rule.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            owner._record(Entry(method, path, query, rng, rule.status, len(body), True))
            return
        conn = http.client.HTTPConnection(owner.upstream_host, owner.upstream_port, timeout=60)
        try:
            conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            chunked_in = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            for k, v in self.headers.items():
                if k.lower() not in HOP_BY_HOP and not (ignore_range and k.lower() == "range"):
                    conn.putheader(k, v)
            if chunked_in:
                body = b"".join(self._read_body())
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders()
                conn.send(body)
            else:
                conn.endheaders()
                for piece in self._read_body():
                    conn.send(piece)
            resp = conn.getresponse()
            length = resp.getheader("Content-Length")
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            sent = 0
            if method == "HEAD" or resp.status in (204, 304):
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
            elif length is not None:
                self.send_header("Content-Length", length)
                self.end_headers()
                while piece := resp.read(PIECE):
                    self.wfile.write(piece)
                    sent += len(piece)
            else:
                body = resp.read()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                sent = len(body)
            owner._record(Entry(method, path, query, rng, resp.status, sent, False))
        finally:
            conn.close()

    def _safe(self) -> None:
        self.owner._begin()
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError):  # the client hung up: its business
            self.close_connection = True
        finally:
            self.owner._end()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _safe
