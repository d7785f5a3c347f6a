"""Fault injection for your own tests: scripted HTTP faults, a fault-injecting reverse proxy
and a fake SAS signer, all on 127.0.0.1.

Entry points: :class:`FaultScript` (what goes wrong, per path), given as ``faults=`` to a
:class:`cropyield.servers.RangeServer` (COGs), to :class:`FaultProxy` (put in front of a STAC
API, see :func:`cropyield.servers.serve_stac`) or to :func:`cropyield.servers.serve_world`;
:class:`FakeSasSigner` for tests of re-signing expired tokens. Each server's
``.requests`` log (:class:`RequestRecord`) shows what was served and which fault was applied.

>>> from cropyield.servers import serve_world
>>> from cropyield.testing import FaultScript
>>> faults = FaultScript({"*/B04.tif": ["503", "503"], "POST /search": ["429:1"]})

Test and demo tooling: it binds to loopback only and must never face the internet. (The
same names stay importable from :mod:`cropyield.servers`, their earlier home.) Fault actions
understood by :class:`FaultScript`:

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
import http.client
import json
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._http import FaultScript, RequestRecord, _BaseServer, _Exchange

if TYPE_CHECKING:  # pragma: no cover
    from .servers import RangeServer

__all__ = ["FaultScript", "FaultProxy", "FakeSasSigner", "RequestRecord"]




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
