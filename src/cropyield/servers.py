"""Local servers for the offline demo and the tests, all bound to 127.0.0.1: a STAC API and a
Range-capable file server, and :func:`serve_world` which puts a synthetic world behind both.

* :func:`serve_world` serves a synthetic world folder: COGs over a RangeServer, items over a
  StacApiServer with hrefs rewritten to the RangeServer's URL (what the demo runs).
* :class:`StacApiServer` runs ``rustac serve`` (the ``[demo]`` extra) over a collection and
  an NDJSON file of items, as a subprocess that is always stopped; :func:`serve_stac`
  starts one, optionally behind a fault proxy.
* :class:`RangeServer` serves the files under a folder in-process (threads) with HEAD,
  single and multi ``Range`` requests (206, ``multipart/byteranges``, 416), a request log and
  byte counters, scripted faults and an expiring-token mode.

The fault machinery for tests (:class:`~cropyield.testing.FaultScript`,
:class:`~cropyield.testing.FaultProxy`, :class:`~cropyield.testing.FakeSasSigner`) is
documented in :mod:`cropyield.testing` (the fault actions are listed there); those names stay
importable from here, their earlier home. Everything here is test and demo tooling: it binds to loopback only
and must never face the internet.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, unquote

# FaultScript, FaultProxy and RequestRecord are re-exported here, their earlier home; their
# public home is cropyield.testing. FaultProxy is what serve_stac puts in front of the API.
from ._http import FaultProxy, FaultScript, RequestRecord, _BaseServer, _check_host, _Exchange
from ._log import logger
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
    "FakeSasSigner",  # noqa: F822  (resolved by __getattr__ below: moved to cropyield.testing)
]


def __getattr__(name: str) -> Any:
    # FakeSasSigner moved to cropyield.testing, which imports this module (it sits above it in
    # docs/architecture.md): a lazy import keeps ``cropyield.servers.FakeSasSigner`` working
    # without an import cycle or an upward import at load time.
    if name == "FakeSasSigner":
        from .testing import FakeSasSigner

        return FakeSasSigner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------
# Serving a world folder (the demo's entry point)
# --------------------------------------------------------------------------------------


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
        if isinstance(ranges, str):  # "unsatisfiable"
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
        self._logfile: IO[bytes] | None = None
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
