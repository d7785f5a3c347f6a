"""Local servers for the offline demo and the tests: a STAC API, a Range-capable file server
and a fault-injecting reverse proxy, all bound to 127.0.0.1.

* :class:`StacApiServer` runs ``rustac serve`` (the ``[demo]`` extra) over a collection and
  an NDJSON file of items, as a subprocess that is always stopped.
* :class:`RangeServer` serves the files under a folder in-process (threads) with HEAD,
  single and multi ``Range`` requests (206, ``multipart/byteranges``, 416), a request log and
  byte counters, scripted faults and an expiring-token mode.
* :class:`FaultProxy` is a reverse proxy (e.g. in front of the STAC API) applying the same
  scripted faults, plus ``"repeat_next"`` which makes a search page's ``next`` link point
  at the page itself.
* :class:`FaultScript` maps ``fnmatch`` path patterns to queues of actions, consumed one per
  matching request.
* :func:`serve_world` serves a synthetic world folder: COGs over a RangeServer, items over a
  StacApiServer with hrefs rewritten to the RangeServer's URL.

Everything here is test and demo tooling: it binds to loopback only and must never face
the internet. Fault actions understood by :class:`FaultScript`:

``"503"``, ``"500"``, ``"404"``, ``"403"``, ... (any 4xx/5xx)
    answer that status with a short body and no payload.
``"429:1"`` (any ``NNN:seconds``)
    that status with ``Retry-After: seconds``.
``"sleep:2.0"``
    stall that many seconds, then serve normally (clients with shorter timeouts give up).
``"truncate"``
    announce the full ``Content-Length`` but send only half of the body, then close.
``"short"``
    a well-framed response whose body is cut in half (``Content-Length`` says so too): for a
    JSON API, a 200 with invalid JSON.
``"reset"``
    close the connection (TCP RST) without any response.
``"ignore_range"``
    answer 200 with the whole file even though a ``Range`` was asked (RangeServer).
``"corrupt"``
    serve the right length but with the bytes of the body inverted.
``"expire_token"``
    answer 403 as a storage service does for an expired SAS token.
``"repeat_next"``
    (FaultProxy) rewrite the page's ``next`` link to fetch the same page again.
``"ok"``
    serve normally (lets a script skip a request).
"""

from __future__ import annotations

import contextlib
import fnmatch
import http.client
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ._log import SECRET_PARAMS, logger, redact
from .errors import ConfigError

__all__ = [
    "FaultScript",
    "RequestRecord",
    "RangeServer",
    "FaultProxy",
    "StacApiServer",
    "ServedWorld",
    "serve_world",
    "serve_stac",
    "find_rustac",
    "rewrite_hrefs",
    "FakeSasSigner",
]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_STATUS_RE = re.compile(r"^([1-5]\d\d)(?::(\d+(?:\.\d+)?))?$")
_SLEEP_RE = re.compile(r"^sleep:(\d+(?:\.\d+)?)$")
_NAMED = {"truncate", "short", "reset", "ignore_range", "corrupt", "expire_token", "repeat_next", "ok"}
_CHUNK = 1 << 20
_SECRET_QS_RE = re.compile(
    r"(?i)([?&](?:" + "|".join(re.escape(k) for k in sorted(SECRET_PARAMS)) +
    r"|x-amz-[a-z-]+)=)[^&\s'\"<>)]*"
)


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
                     _SECRET_QS_RE.sub(r"\1REDACTED", redact(format % args)))

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

    # life cycle ------------------------------------------------------------------
    def start(self):
        """Start serving (idempotent); returns self."""
        if self._httpd is not None:
            return self
        httpd = _Server((self.host, self._port), _Handler)
        httpd.owner = self
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
        """A copy of the request log, oldest first."""
        with self._log_lock:
            return list(self._log)

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
                time.sleep(float(action.split(":", 1)[1]))
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


def _parse_ranges(header: str | None, size: int) -> list[tuple[int, int]] | None | str:
    """Parse a ``Range`` header into inclusive ``(start, end)`` pairs.

    Returns None when there is no usable header (serve the whole file), ``"unsatisfiable"``
    when no range overlaps the file.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    out: list[tuple[int, int]] = []
    for item in spec.split(","):
        item = item.strip()
        if "-" not in item:
            return None
        a, _, b = item.partition("-")
        try:
            if a == "":
                n = int(b)
                if n <= 0:
                    continue
                start, end = max(size - n, 0), size - 1
            else:
                start = int(a)
                end = int(b) if b else max(size - 1, start)
                if end < start:
                    return None
                end = min(end, size - 1)
        except ValueError:
            return None
        if start < size and end >= start:
            out.append((start, end))
    return out or "unsatisfiable"


def _parse_time(value: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


class RangeServer(_BaseServer):
    """An in-process HTTP file server honouring ``Range``, for COGs, on 127.0.0.1.

    Parameters
    ----------
    root : path
        Folder whose files are served (``GET /a/b.tif`` serves ``root/a/b.tif``). Paths that
        resolve outside it (``..``, symlinks) are refused with 403.
    host : str
        Loopback address only.
    port : int
        0 picks a free port.
    faults : FaultScript or mapping, optional
        Scripted faults (see the module docstring).
    token_expiry : bool
        If true, every request must carry an ``se=`` query parameter (ISO 8601 expiry, as in
        an Azure SAS) later than the server's clock, else it gets 403 -- the way an expired
        signed URL fails. Set the fake clock with :meth:`set_clock` / :meth:`advance`.

    Attributes
    ----------
    requests : list of RequestRecord
        Method, path, range, status and body bytes of every request.
    bytes_sent, n_requests : int
        Totals over the log; :meth:`reset_log` clears it.
    """

    def __init__(self, root, *, host: str = "127.0.0.1", port: int = 0, faults=None,
                 token_expiry: bool = False, clock: datetime | None = None):
        super().__init__(host=host, port=port, faults=faults)
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ConfigError(f"RangeServer root {str(self.root)!r} is not a folder")
        self.token_expiry = bool(token_expiry)
        self._clock_offset = timedelta(0)
        if clock is not None:
            self.set_clock(clock)

    # fake clock ------------------------------------------------------------------
    @property
    def now(self) -> datetime:
        """The server's clock (UTC), real time plus the offset set by :meth:`set_clock`."""
        return datetime.now(timezone.utc) + self._clock_offset

    def set_clock(self, when: datetime) -> None:
        """Make the server's clock read ``when`` now (it then advances in real time)."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        self._clock_offset = when - datetime.now(timezone.utc)

    def advance(self, seconds: float) -> None:
        """Move the server's clock forward by ``seconds``."""
        self._clock_offset += timedelta(seconds=seconds)

    def url_for(self, relpath: str | os.PathLike) -> str:
        """URL of a file under ``root`` (relative path, or absolute path inside root)."""
        p = Path(relpath)
        if p.is_absolute():
            p = p.resolve().relative_to(self.root)
        return f"{self.url}/{p.as_posix()}"

    def _resolve(self, urlpath: str) -> Path | None:
        rel = unquote(urlpath).lstrip("/")
        target = (self.root / rel).resolve()
        if target != self.root and self.root not in target.parents:
            return None
        return target

    def _serve(self, ex: _Exchange, action: str | None) -> None:
        if ex.method not in ("GET", "HEAD"):
            ex.simple(405, "only GET and HEAD\n", {"Allow": "GET, HEAD"})
            return
        if self.token_expiry:
            se = dict(parse_qsl(ex.query)).get("se")
            expiry = _parse_time(se) if se else None
            if expiry is None or expiry <= self.now:
                ex.action = ex.action or "token_expired"
                ex.simple(403, "AuthenticationFailed: Signed expiry time has passed\n")
                return
        target = self._resolve(ex.path)
        if target is None:
            ex.simple(403, "path outside the served folder\n")
            return
        if not target.is_file():
            ex.simple(404, "not found\n")
            return
        size = target.stat().st_size
        ctype = "image/tiff" if target.suffix.lower() in (".tif", ".tiff") else (
            "application/json" if target.suffix.lower() in (".json", ".geojson") else
            "application/octet-stream")
        base = {
            "Accept-Ranges": "bytes",
            "Last-Modified": formatdate(target.stat().st_mtime, usegmt=True),
            "ETag": f'"{target.stat().st_mtime_ns:x}-{size:x}"',
        }
        flags = dict(truncate=action == "truncate", corrupt=action == "corrupt",
                     short=action == "short")
        ranges = None if action == "ignore_range" else _parse_ranges(ex.range, size)
        if ranges == "unsatisfiable":
            ex.send(416, {**base, "Content-Range": f"bytes */{size}",
                          "Content-Type": "text/plain"}, [b"range not satisfiable\n"])
            return
        if not ranges:
            ex.send(200, {**base, "Content-Type": ctype}, [(target, 0, size)],
                    **flags)
            return
        if len(ranges) == 1:
            a, b = ranges[0]
            ex.send(206, {**base, "Content-Type": ctype, "Content-Range": f"bytes {a}-{b}/{size}"},
                    [(target, a, b - a + 1)], **flags)
            return
        boundary = f"cropyield{os.urandom(8).hex()}"
        parts: list[Any] = []
        for a, b in ranges:
            parts.append((f"\r\n--{boundary}\r\nContent-Type: {ctype}\r\n"
                          f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n").encode())
            parts.append((target, a, b - a + 1))
        parts.append(f"\r\n--{boundary}--\r\n".encode())
        ex.send(206, {**base, "Content-Type": f"multipart/byteranges; boundary={boundary}"},
                parts, **flags)


class FakeSasSigner:
    """A stand-in for a SAS signer, for tests of re-signing against a RangeServer with
    ``token_expiry=True``: ``signer(href)`` appends ``se=<server clock + ttl_s>&sig=<n>``.

    Parameters
    ----------
    server : RangeServer
        Whose (fake) clock sets the expiry.
    ttl_s : float
        Token lifetime in seconds.

    Attributes
    ----------
    calls : list of str
        Unsigned hrefs signed so far (one entry per call).
    """

    def __init__(self, server: RangeServer, ttl_s: float = 3600.0):
        self.server = server
        self.ttl_s = float(ttl_s)
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, href: str, *, refresh: bool = False) -> str:
        with self._lock:
            self.calls.append(href)
            n = len(self.calls)
        se = (self.server.now + timedelta(seconds=self.ttl_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        sep = "&" if "?" in href else "?"
        return f"{href}{sep}se={se.replace(':', '%3A')}&sp=r&sig=fake{n}"


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


def find_rustac() -> str:
    """Path of the ``rustac`` executable (next to the interpreter, else on PATH).

    Raises
    ------
    ImportError
        If rustac is not installed; names the ``[demo]`` extra.
    """
    names = ["rustac.exe", "rustac"] if os.name == "nt" else ["rustac"]
    here = Path(sys.executable).parent
    for n in names:
        cand = here / n
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("rustac")
    if found:
        return found
    raise ImportError(
        "the 'rustac' executable is needed to serve a local STAC API; install it with: "
        "pip install 'cropyield[demo]'"
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: have the kernel send SIGTERM to rustac if this Python process dies (a killed
    test run must not leave servers behind)."""
    import ctypes
    import signal

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def _deathsig_ok() -> bool:
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits: only use it from the main
    # thread, whose end is the end of the process
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class StacApiServer:
    """A real STAC API (``rustac serve``, memory backend) over local files, on 127.0.0.1.

    Parameters
    ----------
    collection_path : path
        A STAC Collection JSON file.
    items_path : path or list of paths
        Item files: NDJSON (one item per line), a FeatureCollection JSON, or item JSONs.
    host : str
        Loopback address to bind.
    port : int
        Port to bind; 0 picks a free one.
    advertised_url : str, optional
        Base URL written into the API's links (``--addr``); use a :class:`FaultProxy`'s URL to
        put the proxy in front. Defaults to the bound address.
    startup_timeout : float
        Seconds to wait for the first successful answer.

    Notes
    -----
    rustac's memory backend silently returns **no items** when a search carries ``query`` or
    ``filter`` (it does not advertise them); :func:`cropyield.search_scenes` only sends them
    when the server advertises the conformance class.

    The process is terminated (then killed after ``stop_timeout`` seconds) on :meth:`stop`, on
    leaving the ``with`` block (also on exceptions) and at garbage collection.
    """

    def __init__(self, collection_path, items_path, *, host: str = "127.0.0.1", port: int = 0,
                 advertised_url: str | None = None, startup_timeout: float = 30.0,
                 stop_timeout: float = 5.0):
        self.host = _check_host(host)
        self.collection_path = Path(collection_path)
        paths = [items_path] if isinstance(items_path, (str, os.PathLike)) else list(items_path)
        self.items_paths = [Path(p) for p in paths]
        for p in [self.collection_path, *self.items_paths]:
            if not p.is_file():
                raise ConfigError(f"StacApiServer: {str(p)!r} does not exist")
        self._port = int(port)
        self.advertised_url = advertised_url.rstrip("/") if advertised_url else None
        self.startup_timeout = float(startup_timeout)
        self.stop_timeout = float(stop_timeout)
        self.proc: subprocess.Popen | None = None
        self._logfile = None
        self.bind_port: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def bind_url(self) -> str:
        """Where the server really listens."""
        if self.bind_port is None:
            raise RuntimeError("StacApiServer is not running; use it as a context manager")
        return f"http://{self.host}:{self.bind_port}"

    @property
    def url(self) -> str:
        """The API's root URL as it advertises itself (the proxy's URL when one is in front)."""
        return self.advertised_url or self.bind_url

    def _log_tail(self) -> str:
        if self._logfile is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._logfile.flush()
            self._logfile.seek(0)
            return self._logfile.read().decode("utf-8", "replace")[-2000:]
        return ""

    def start(self) -> "StacApiServer":
        """Start rustac and wait until it answers (idempotent)."""
        if self.proc is not None:
            return self
        exe = find_rustac()
        attempts = 1 if self._port else 3
        last = ""
        for _ in range(attempts):
            port = self._port or _free_port(self.host)
            bind = f"{self.host}:{port}"
            cmd = [exe, "serve"]
            if self.advertised_url:
                cmd += ["--addr", self.advertised_url, "--bind", bind]
            else:
                cmd += ["--addr", bind]
            cmd += [str(self.collection_path), *map(str, self.items_paths)]
            self._logfile = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(cmd, stdout=self._logfile, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent if _deathsig_ok() else None)
            self.bind_port = port
            try:
                self._wait_ready()
                logger.debug("rustac serve pid %s at %s (advertised %s)", self.proc.pid,
                             self.bind_url, self.url)
                return self
            except RuntimeError as exc:
                last = str(exc)
                self.stop()
        raise RuntimeError(last)

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        url = self.bind_url + "/"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"rustac serve exited with code {self.proc.returncode} before answering; "
                    f"output:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback only
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"rustac serve did not answer on {url} within {self.startup_timeout:.0f} s; "
            f"output:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        """Terminate the process (kill after ``stop_timeout`` s). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(self.stop_timeout)
        if self._logfile is not None:
            with contextlib.suppress(OSError):
                self._logfile.close()
            self._logfile = None

    def __enter__(self) -> "StacApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # pragma: no cover - last-resort cleanup
        with contextlib.suppress(Exception):
            self.stop()


@contextlib.contextmanager
def serve_stac(collection_path, items_path, *, faults=None, proxy: bool = True,
               timeout: float = 30.0) -> Iterator[tuple[StacApiServer, FaultProxy | None]]:
    """Start a STAC API, optionally behind a :class:`FaultProxy` whose URL it advertises.

    Yields ``(stac, proxy)``; search ``proxy.url`` (== ``stac.url``) to go through the faults.
    Both are stopped on exit.
    """
    with contextlib.ExitStack() as stack:
        px = None
        if proxy:
            px = stack.enter_context(FaultProxy(None, faults, timeout=timeout))
        stac = stack.enter_context(
            StacApiServer(collection_path, items_path, advertised_url=px.url if px else None)
        )
        if px is not None:
            px.upstream_url = stac.bind_url
        yield stac, px


# --------------------------------------------------------------------------------------
# Serving a world folder
# --------------------------------------------------------------------------------------


def rewrite_hrefs(item: dict[str, Any], root, base_url: str) -> dict[str, Any]:
    """Return a copy of an item dict whose local asset hrefs under ``root`` become URLs.

    Relative hrefs are taken relative to ``root``; absolute paths must lie inside it;
    hrefs that are already URLs are left alone.
    """
    root = Path(root).resolve()
    out = json.loads(json.dumps(item))
    for asset in out.get("assets", {}).values():
        href = asset.get("href", "")
        if re.match(r"^[a-z][a-z0-9+.-]*://", href) and not href.startswith("file://"):
            continue
        p = Path(href[7:] if href.startswith("file://") else href)
        p = (p if p.is_absolute() else root / p).resolve()
        try:
            rel = p.relative_to(root)
        except ValueError as exc:
            raise ConfigError(f"asset href {href!r} is outside the served folder {root}") from exc
        asset["href"] = f"{base_url.rstrip('/')}/{rel.as_posix()}"
    return out


def _read_items(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if path.suffix in (".ndjson", ".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if data.get("type") == "FeatureCollection":
        return list(data["features"])
    return [data]


@dataclass
class ServedWorld:
    """What :func:`serve_world` yields: the URLs and the running servers."""

    stac_url: str
    cog_url: str
    root: Path
    stac: StacApiServer
    cogs: RangeServer
    proxy: FaultProxy | None = None
    collection_id: str | None = None


def _world_root(world) -> Path:
    for attr in ("root", "path", "directory", "folder"):
        value = getattr(world, attr, None)
        if value is not None:
            return Path(value)
    raise ConfigError(f"cannot find the folder of {type(world).__name__}; pass a path")


@contextlib.contextmanager
def serve_world(root_or_world, *, cog_faults=None, stac_faults=None,
                proxy: bool = False, token_expiry: bool = False) -> Iterator[ServedWorld]:
    """Serve a synthetic world: COGs over a :class:`RangeServer`, items over a STAC API.

    Parameters
    ----------
    root_or_world : path or World
        A folder holding the COGs plus ``collection.json`` and ``items.ndjson`` (or
        ``items.json``) whose asset hrefs are relative to it or absolute paths inside it; or a
        ``cropyield.synthetic.World`` (anything with ``write_items(path, href_base)``).
    cog_faults, stac_faults : FaultScript or mapping, optional
        Faults for the COG server and (with ``proxy=True`` or when given) a proxy in front of
        the STAC API.
    token_expiry : bool
        Passed to the RangeServer.

    Yields
    ------
    ServedWorld
        ``.stac_url`` (search here), ``.cog_url``, and the servers (for logs and faults).
    """
    with contextlib.ExitStack() as stack:
        world = None if isinstance(root_or_world, (str, os.PathLike)) else root_or_world
        root = Path(root_or_world) if world is None else _world_root(world)
        cogs = stack.enter_context(RangeServer(root, faults=cog_faults, token_expiry=token_expiry))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cropyield-stac-")))
        items_out = tmp / "items.ndjson"
        collection = root / "collection.json"
        if world is not None and hasattr(world, "write_items"):
            written = world.write_items(items_out, cogs.url)
            if written is not None and Path(written).is_file() and Path(written) != items_out:
                items_out = Path(written)
            cand = tmp / "collection.json"
            collection = cand if cand.is_file() else collection
        else:
            src = root / "items.ndjson"
            if not src.is_file():
                src = root / "items.json"
            if not src.is_file():
                raise ConfigError(f"{root} has no items.ndjson or items.json to serve")
            items = [rewrite_hrefs(it, root, cogs.url) for it in _read_items(src)]
            items_out.write_text("".join(json.dumps(it) + "\n" for it in items))
        if not collection.is_file():
            raise ConfigError(f"no collection.json found in {root} (or written by write_items)")
        use_proxy = proxy or stac_faults is not None
        stac, px = stack.enter_context(
            serve_stac(collection, items_out, faults=stac_faults, proxy=use_proxy))
        cid = json.loads(collection.read_text()).get("id")
        yield ServedWorld(stac_url=stac.url, cog_url=cogs.url, root=root, stac=stac, cogs=cogs,
                          proxy=px, collection_id=cid)
