"""In-process HTTP servers on 127.0.0.1 with scripted faults: the machinery under
:mod:`cropyield.servers` (RangeServer, serve_stac) and :mod:`cropyield.testing`.

:class:`_BaseServer` gives a server its life cycle (``start``/``stop``, context manager), its
request log (:class:`RequestRecord`) and the scripted faults of a :class:`FaultScript`
applied before each request is served (statuses, ``sleep``, ``reset``, ``expire_token``;
the body faults ``truncate``/``short``/``corrupt``/``ignore_range`` are applied by the
server's own ``_serve`` through :meth:`_Exchange.send`). Subclasses implement ``_serve``:
:class:`cropyield.servers.RangeServer` (files) and :class:`FaultProxy` (a reverse proxy,
below). The public names here are documented and exported by :mod:`cropyield.testing` (the
fault actions are listed there) and re-exported by :mod:`cropyield.servers`, which uses them;
they live here because the library's servers need them and ``testing`` sits above
``servers`` (``docs/architecture.md``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import http.client
import json
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ._log import logger, redact
from .errors import ConfigError

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_STATUS_RE = re.compile(r"^([1-5]\d\d)(?::(\d+(?:\.\d+)?))?$")
_SLEEP_RE = re.compile(r"^sleep:(\d+(?:\.\d+)?)$")
_NAMED = {"truncate", "short", "reset", "ignore_range", "corrupt", "expire_token", "repeat_next", "ok"}
_CHUNK = 1 << 20


def _check_host(host: str) -> str:
    if host not in _LOOPBACK:
        raise ConfigError(
            f"cropyield test servers bind to loopback only (127.0.0.1), got host={host!r}"
        )
    return host


# --------------------------------------------------------------------------------------
# Fault scripts
# --------------------------------------------------------------------------------------


def _validate_action(action: str) -> str:
    a = str(action).strip()
    if a in _NAMED or _STATUS_RE.match(a) or _SLEEP_RE.match(a):
        return a
    raise ConfigError(
        f"unknown fault action {action!r}; use an HTTP status ('503', '429:1'), 'sleep:SECONDS', "
        f"or one of {sorted(_NAMED)}"
    )


class FaultScript:
    """Scripted faults: ``fnmatch`` path patterns mapped to queues of actions.

    Each request whose URL path (without query) matches a pattern consumes the next action
    of the first matching pattern that still has actions left; requests that match nothing
    (or whose queues are empty) are served normally. A pattern without ``/`` is also matched
    against the last path component, so ``"B04.tif"`` and ``"*/B04.tif"`` both work. A pattern
    may start with a method, e.g. ``"POST /search"``.

    Parameters
    ----------
    script : mapping of str to sequence of str, optional
        E.g. ``{"*/B04.tif": ["503", "503"], "/search": ["429:1"]}``.

    Examples
    --------
    >>> faults = FaultScript({"*/B04.tif": ["503", "503"]})
    >>> faults.next("/s1/B04.tif"), faults.next("/s1/B04.tif"), faults.next("/s1/B04.tif")
    ('503', '503', None)
    """

    def __init__(self, script: Mapping[str, Iterable[str]] | None = None):
        self._lock = threading.Lock()
        self._rules: list[tuple[str | None, str, deque[str]]] = []
        self.applied: list[tuple[str, str]] = []  #: (path, action) in the order applied
        for pattern, actions in (script or {}).items():
            self.add(pattern, *actions)

    def add(self, pattern: str, *actions: str) -> "FaultScript":
        """Append actions for ``pattern`` (a new rule after the existing ones)."""
        if isinstance(actions, str):  # pragma: no cover - defensive
            actions = (actions,)
        method, pat = None, pattern
        parts = pattern.split(None, 1)
        if len(parts) == 2 and parts[0].isupper():
            method, pat = parts
        queue = deque(_validate_action(a) for a in actions)
        with self._lock:
            self._rules.append((method, pat, queue))
        return self

    @staticmethod
    def _matches(pat: str, path: str) -> bool:
        if fnmatch.fnmatchcase(path, pat):
            return True
        if "/" not in pat:
            return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pat)
        return False

    def next(self, path: str, method: str = "GET") -> str | None:
        """Consume and return the next action for a request to ``path`` (or None)."""
        with self._lock:
            for m, pat, queue in self._rules:
                if queue and (m is None or m == method) and self._matches(pat, path):
                    action = queue.popleft()
                    self.applied.append((path, action))
                    return action
        return None

    def remaining(self) -> dict[str, list[str]]:
        """Actions not consumed yet, per pattern."""
        with self._lock:
            out: dict[str, list[str]] = {}
            for m, pat, queue in self._rules:
                if queue:
                    out.setdefault(f"{m} {pat}" if m else pat, []).extend(queue)
            return out

    @property
    def exhausted(self) -> bool:
        """True once every scripted action has been consumed."""
        return not self.remaining()

    def __repr__(self) -> str:
        return f"FaultScript({self.remaining()!r})"


def _as_script(faults) -> FaultScript:
    if faults is None:
        return FaultScript()
    if isinstance(faults, FaultScript):
        return faults
    return FaultScript(faults)


# --------------------------------------------------------------------------------------
# Shared HTTP machinery
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request seen by a test server.

    ``bytes_sent`` counts body bytes written to the socket (headers excluded); ``status`` is
    0 for a reset connection. ``query`` is the raw query string (test servers only: never log
    it). ``action`` is the fault applied (None when served normally). ``body`` is the request
    body as forwarded by a :class:`FaultProxy` (first 64 KiB; empty for the RangeServer).
    """

    method: str
    path: str
    query: str
    range: str | None
    status: int
    bytes_sent: int
    action: str | None
    started: float
    duration_s: float
    body: bytes = b""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: Any = None

    def handle_error(self, request, client_address):  # pragma: no cover - noise control
        logger.debug("test server: error while handling a request", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cropyield-test/1"
    timeout = 60  # idle keep-alive connections close after this many seconds
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        logger.debug("test server %s: %s", self.server.server_address[1],
                     redact(format % args))

    def do_GET(self):  # noqa: N802
        self.server.owner._dispatch(self)

    do_HEAD = do_GET
    do_POST = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET
    do_OPTIONS = do_GET


class _Exchange:
    """State of one request/response, shared by the servers' dispatch code."""

    def __init__(self, h: _Handler, owner: "_BaseServer"):
        self.h = h
        self.owner = owner
        parts = urlsplit(h.path)
        self.method = h.command
        self.path = parts.path or "/"
        self.query = parts.query
        self.range = h.headers.get("Range")
        self.t0 = time.monotonic()
        self.sent = 0
        self.status = 0
        self.action: str | None = None
        # always consume the request body, also when a fault answers: on a keep-alive
        # connection unread bytes would be taken for the next request
        n = int(h.headers.get("Content-Length") or 0)
        self.body = h.rfile.read(n) if n > 0 else b""
        self.req_body = self.body[:65536]

    def send(self, status: int, headers: Mapping[str, str], body: "list[Any]", *,
             truncate: bool = False, corrupt: bool = False, short: bool = False,
             length: int | None = None) -> None:
        """Send status, headers and a body made of bytes and ``(path, start, length)`` parts."""
        h = self.h
        total = length if length is not None else sum(_part_len(p) for p in body)
        if short:
            total //= 2
        self.status = status
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(total))
        if truncate:
            h.send_header("Connection", "close")
        h.end_headers()
        if self.method == "HEAD":
            return
        budget = total // 2 if truncate else total
        try:
            for chunk in _iter_parts(body):
                if budget <= 0:
                    break
                chunk = chunk[:budget]
                if corrupt:
                    chunk = bytes(b ^ 0xFF for b in chunk)
                h.wfile.write(chunk)
                self.sent += len(chunk)
                budget -= len(chunk)
            h.wfile.flush()
        except (ConnectionError, socket.timeout):
            h.close_connection = True
            return
        if truncate:
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)

    def simple(self, status: int, text: str, extra: Mapping[str, str] | None = None) -> None:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        headers.update(extra or {})
        self.send(status, headers, [text.encode()])

    def reset(self) -> None:
        """Close the connection with a TCP RST and no response."""
        self.status = 0
        h = self.h
        with contextlib.suppress(OSError):
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.close()

    def record(self) -> None:
        self.owner._record(RequestRecord(
            method=self.method, path=self.path, query=self.query, range=self.range,
            status=self.status, bytes_sent=self.sent, action=self.action,
            started=self.t0, duration_s=time.monotonic() - self.t0, body=self.req_body,
        ))


def _part_len(p) -> int:
    return len(p) if isinstance(p, (bytes, bytearray)) else int(p[2])


def _iter_parts(parts) -> Iterator[bytes]:
    for p in parts:
        if isinstance(p, (bytes, bytearray)):
            yield bytes(p)
            continue
        path, start, length = p
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk


class _BaseServer:
    """Common life cycle, log and fault handling of the in-process servers."""

    def __init__(self, *, host: str, port: int, faults):
        self.host = _check_host(host)
        self._port = int(port)
        self.faults = _as_script(faults)
        self._log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._inflight = 0
        self._idle = threading.Condition(self._log_lock)
        self._stopping = threading.Event()      # set by stop(): ends "sleep:" stalls

    # life cycle ------------------------------------------------------------------
    def start(self):
        """Start serving (idempotent); returns self."""
        if self._httpd is not None:
            return self
        httpd = _Server((self.host, self._port), _Handler)
        httpd.owner = self
        self._stopping.clear()
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}-{self.port}", daemon=True)
        self._thread.start()
        logger.debug("%s listening on %s", type(self).__name__, self.url)
        return self

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()                    # stalled requests end now, unanswered
        self.wait_idle(1.0)
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not running; use it as a context manager")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is being handled (their log records are then complete)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # request log -----------------------------------------------------------------
    def _record(self, rec: RequestRecord) -> None:
        with self._log_lock:
            self._log.append(rec)

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log, oldest first (by arrival: a handler thread records its
        request when it has answered, so records can be appended out of arrival order)."""
        with self._log_lock:
            return sorted(self._log, key=lambda r: r.started)

    @property
    def n_requests(self) -> int:
        with self._log_lock:
            return len(self._log)

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent over all logged requests."""
        with self._log_lock:
            return sum(r.bytes_sent for r in self._log)

    def reset_log(self) -> None:
        with self._log_lock:
            self._log.clear()

    # dispatch ----------------------------------------------------------------------
    def _dispatch(self, h: _Handler) -> None:
        ex = _Exchange(h, self)
        with self._idle:
            self._inflight += 1
        try:
            action = self.faults.next(ex.path, ex.method)
            ex.action = action
            if action is not None and _SLEEP_RE.match(action):
                if self._stopping.wait(float(action.split(":", 1)[1])):
                    h.close_connection = True   # stopped while stalling: no answer
                    return
                action = None
            if action == "ok":
                action = None
            m = _STATUS_RE.match(action or "")
            if m:
                extra = {"Retry-After": m.group(2)} if m.group(2) else None
                ex.simple(int(m.group(1)), f"injected fault {action}\n", extra)
            elif action == "reset":
                ex.reset()
            elif action == "expire_token":
                ex.simple(403, "AuthenticationFailed: Signed expiry time has passed\n")
            else:
                self._serve(ex, action)
        except (ConnectionError, socket.timeout):
            h.close_connection = True
        finally:
            ex.record()
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _serve(self, ex: _Exchange, action: str | None) -> None:  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# Range file server


# --------------------------------------------------------------------------------------
# Fault-injecting reverse proxy
# --------------------------------------------------------------------------------------


_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "content-length", "host", "accept-encoding"}


class FaultProxy(_BaseServer):
    """A reverse proxy on 127.0.0.1 that forwards to ``upstream_url`` and injects faults.

    Start the STAC API with ``advertised_url=proxy.url`` so that every link it emits
    points at the proxy (see :func:`serve_stac`). ``upstream_url`` may be set after
    construction (``proxy.upstream_url = ...``) since the proxy's port is needed first.

    Parameters
    ----------
    upstream_url : str or None
        Base URL requests are forwarded to (path and query appended).
    faults : FaultScript or mapping, optional
        Scripted faults; ``"repeat_next"`` rewrites the JSON page's ``next`` link so that it
        requests the same page again (same URL, same POST body).
    timeout : float
        Seconds to wait for the upstream server.
    """

    def __init__(self, upstream_url: str | None = None, faults=None, *, host: str = "127.0.0.1",
                 port: int = 0, timeout: float = 30.0):
        super().__init__(host=host, port=port, faults=faults)
        self.upstream_url = upstream_url.rstrip("/") if upstream_url else None
        self.timeout = float(timeout)

    def _serve(self, ex: _Exchange, action: str | None) -> None:
        h = ex.h
        req_body = ex.body
        if not self.upstream_url:
            ex.simple(502, "FaultProxy has no upstream_url\n")
            return
        up = urlsplit(self.upstream_url)
        if not up.hostname:
            ex.simple(502, "FaultProxy upstream_url has no host\n")
            return
        target = (up.path.rstrip("/") + ex.path) + (f"?{ex.query}" if ex.query else "")
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        conn = http.client.HTTPConnection(up.hostname, up.port or 80, timeout=self.timeout)
        try:
            conn.request(ex.method, target, body=req_body or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            status = resp.status
            out_headers = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP}
        except OSError as exc:
            ex.simple(502, f"upstream error: {type(exc).__name__}\n")
            return
        finally:
            conn.close()
        if action == "repeat_next" and status == 200:
            body = self._repeat_next(ex, body, req_body)
        if ex.method == "HEAD":
            ex.send(status, out_headers, [], length=int(resp.getheader("Content-Length") or 0))
            return
        ex.send(status, out_headers, [body], truncate=action == "truncate",
                corrupt=action == "corrupt", short=action == "short")

    def _repeat_next(self, ex: _Exchange, body: bytes, req_body: bytes) -> bytes:
        try:
            page = json.loads(body)
        except ValueError:
            return body
        self_url = f"{self.url}{ex.path}" + (f"?{ex.query}" if ex.query else "")
        links = [ln for ln in page.get("links", []) if ln.get("rel") != "next"]
        nxt: dict[str, Any] = {"rel": "next", "href": self_url, "type": "application/geo+json",
                               "method": ex.method}
        if ex.method == "POST" and req_body:
            with contextlib.suppress(ValueError):
                nxt["body"] = json.loads(req_body)
                nxt["merge"] = False
        links.append(nxt)
        page["links"] = links
        return json.dumps(page).encode()


# --------------------------------------------------------------------------------------
# rustac STAC API
# --------------------------------------------------------------------------------------
