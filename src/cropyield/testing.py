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

Test and demo tooling: it binds to loopback only and must never face the internet. Nothing
in the library imports this module. The same names stay importable from
:mod:`cropyield.servers`, their earlier home. Fault actions understood by
:class:`FaultScript`:

``"503"``, ``"500"``, ``"404"``, ``"403"``, ... (any 4xx/5xx)
    answer that status with a short body and no payload.
``"429:1"`` (any ``NNN:seconds``)
    that status with ``Retry-After: seconds``.
``"sleep:2.0"``
    stall that many seconds, then serve normally (clients with shorter timeouts give up);
    stopping the server ends the stall at once, closing the connection unanswered.
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

import threading
from datetime import timedelta

# FaultScript and FaultProxy are implemented in cropyield._http because the library's own
# servers use them (RangeServer(faults=...), serve_stac's proxy); this is their public home
from ._http import FaultProxy, FaultScript, RequestRecord
from .servers import RangeServer

__all__ = ["FaultScript", "FaultProxy", "FakeSasSigner", "RequestRecord"]


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
