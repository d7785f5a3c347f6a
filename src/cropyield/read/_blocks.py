"""The block reader: :class:`BlockReader`, a bounded thread pool whose threads each keep
their own GDAL dataset handles, reading only the COG blocks that hold needed pixels, with
retries, re-signing and byte accounting (:class:`ReadStats`).

Public entry points
-------------------
:class:`BlockReader`
    ``with BlockReader(threads=2) as rd: values = rd.read(href, rows, cols)``; also
    :meth:`~BlockReader.read_windows` (runs of whole windows handed to a callback),
    :meth:`~BlockReader.meta` / :meth:`~BlockReader.prefetch_meta` and
    :meth:`~BlockReader.release`.
:class:`ReadStats`
    Requests, bytes, blocks, runs, opens, retries and failures of one reader.

How the plans, threads, accounting and faults work is described in :mod:`cropyield.read`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._log import logger, redact
from ..errors import (AssetReadError, AuthExpiredError, ConfigError, CorruptAssetError,
                      CropYieldError)
from ._gdal import (_RAW_BYTES_PER_TILE, HEADER_BYTES, _configured_options, _is_remote,
                    _open_plain, _redact_rasterio_logs, _vsi_path, classify_error,
                    clear_gdal_cache, gdal_env)
from ._plan import (BlockPlan, _as_int64, _block_bounds, _block_sort, _blocks_wanted,
                    _gather_into, _gather_masked, _runs_of, plan_blocks)

__all__ = ["ReadStats", "BlockReader"]

#: Seconds past its deadline that a :class:`BlockReader` call still waits for requests in
#: flight (their GDAL timeouts are cut to the time left, so they normally end by then);
#: after it the call raises ``reason="deadline"`` and abandons them (see ``deadline``).
DEADLINE_SLACK = 1.0

#: Sequential HTTP requests GDAL 3.10 makes for one failing window read of a handle (it
#: tries the range again through its other read paths): the per-request timeout set near a
#: deadline is the time left divided by this, so the whole read ends by the deadline.
_REQUESTS_PER_READ = 3

#: Shortest per-request GDAL timeout set near a deadline (seconds).
_MIN_REQUEST_TIMEOUT = 0.25

#: read_deadline="auto" (field_observations, load_cube): this many seconds plus
#: _AUTO_DEADLINE_PER_SCENE per scene
_AUTO_DEADLINE_BASE, _AUTO_DEADLINE_PER_SCENE = 600.0, 120.0


def deadline_seconds(read_deadline: float | str | None, n_scenes: int) -> float | None:
    """Seconds of a ``read_deadline`` argument ("auto", seconds > 0 or None)."""
    if read_deadline is None:
        return None
    if isinstance(read_deadline, str) and read_deadline == "auto":
        return _AUTO_DEADLINE_BASE + _AUTO_DEADLINE_PER_SCENE * n_scenes
    try:
        value = float(read_deadline)
    except (TypeError, ValueError):
        raise ConfigError(f"read_deadline must be seconds, 'auto' or None, got "
                          f"{read_deadline!r}") from None
    if not value > 0:
        raise ConfigError(f"read_deadline must be > 0 seconds, got {read_deadline!r}")
    return value


@dataclass
class ReadStats:
    """Counters of one reader (thread-safe updates through :meth:`add`)."""

    requests: int = 0      # handle opens + run reads issued (retries included)
    bytes_read: int = 0    # tile byte counts of blocks read + HEADER_BYTES per open
    blocks_read: int = 0   # internal COG blocks decoded
    runs: int = 0          # window reads issued
    opens: int = 0
    retries: int = 0
    resigns: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "bytes_read": self.bytes_read,
                "blocks_read": self.blocks_read, "runs": self.runs, "opens": self.opens,
                "retries": self.retries, "resigns": self.resigns,
                "read_failures": [dict(f) for f in self.failures]}


@dataclass(frozen=True)
class _Meta:
    shape: tuple[int, int]
    block_shape: tuple[int, int]
    dtype: str
    nodata: float | None
    transform: Any
    crs: Any


class BlockReader:
    """Thread pool + per-thread dataset handles reading only the COG blocks that are needed.

    Use as a context manager (the pool is shut down and every handle closed on exit)::

        with BlockReader(threads=2) as rd:
            values = rd.read(href, rows, cols, fill=0)

    Parameters
    ----------
    threads : int
        Worker threads (each keeps its own GDAL handles). 2–4 is right for local DEFLATE COGs.
    env : dict, optional
        GDAL options layered over :func:`gdal_env`.
    max_attempts : int
        Attempts per run for transient failures (first try included).
    backoff : float
        First retry delay in seconds, doubled at every attempt.
    signer : callable, optional
        ``signer(href) -> signed_href`` applied to remote hrefs before opening and once more
        on HTTP 403 (URL signing, e.g. ``planetary_computer.sign``).
    max_run : int
        Maximum number of adjacent blocks merged into one window read. Unless ``env`` sets
        ``GDAL_MAX_RAW_BLOCK_CACHE_SIZE``, it is raised to at least ``max_run`` x 8 MiB so
        that GDAL fetches every tile of a run in its one range request.
    max_handles : int
        Handles kept open per thread (LRU).
    deadline : float, optional
        Total seconds, counted from the reader's creation, after which no read is started
        or retried: every later attempt fails at once with an
        :class:`~cropyield.errors.AssetReadError` of reason ``"deadline"`` (a stalled
        server cannot hold the reader longer). The deadline is strict within
        :data:`DEADLINE_SLACK` (1 s): once the time left is shorter than a request's GDAL
        timeouts (``GDAL_HTTP_TIMEOUT`` x (``GDAL_HTTP_MAX_RETRY`` + 1) per request),
        handles are (re)opened with ``GDAL_HTTP_TIMEOUT`` / ``GDAL_HTTP_CONNECTTIMEOUT``
        cut to the time left and no GDAL-level retries, so requests in flight end by the
        deadline; and every call (:meth:`read`, :meth:`read_windows`, :meth:`meta`...)
        stops waiting for its reader threads :data:`DEADLINE_SLACK` after the deadline,
        raising ``reason="deadline"``. A read still in flight then is abandoned: it ends
        in the background by its cut timeouts, and its values are dropped (never written
        to an output nor handed to a ``consume`` callback after the call gave up).
        :meth:`close` does not wait for such reads; their threads close their own handles
        when they end. None: no deadline.
    """

    def __init__(self, *, threads: int = 2, env: Mapping[str, Any] | None = None,
                 max_attempts: int = 4, backoff: float = 0.25,
                 signer: Callable[[str], str] | None = None, max_run: int = 8,
                 max_handles: int = 16, deadline: float | None = None):
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.threads = int(threads)
        self.env = gdal_env(**dict(env or {}))
        self.max_attempts = max(1, int(max_attempts))
        self.backoff = float(backoff)
        self.signer = signer
        self.max_run = int(max_run)
        if "GDAL_MAX_RAW_BLOCK_CACHE_SIZE" not in dict(env or {}):
            cap = int(self.env.get("GDAL_MAX_RAW_BLOCK_CACHE_SIZE") or 0)
            self.env["GDAL_MAX_RAW_BLOCK_CACHE_SIZE"] = str(max(cap, max(self.max_run, 1)
                                                                * _RAW_BYTES_PER_TILE))
        self.max_handles = int(max_handles)
        if deadline is not None and not float(deadline) > 0:
            raise ValueError(f"deadline must be > 0 seconds or None, got {deadline!r}")
        self.deadline = None if deadline is None else float(deadline)
        self._deadline_at = (None if deadline is None or deadline == float("inf")
                             else time.monotonic() + float(deadline))
        explicit = {**_configured_options(), **dict(env or {})}
        # VSI_CACHE wraps every handle opened while it is on in a per-handle copy layer:
        # useful for remote reads, pure overhead on local files (about 5 % more CPU for
        # decoding local DEFLATE COGs, docs/benchmarks.md), so local files are opened
        # without it unless it was configured explicitly
        self._local_vsi_cache = str(self.env.get("VSI_CACHE", "FALSE")) \
            if "VSI_CACHE" in explicit else "FALSE"
        self.stats = ReadStats()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cropyield-read",
                                        initializer=self._init_thread)
        self._local = threading.local()
        self._all: dict[Any, int] = {}          # open handle -> ident of its thread
        self._reading: dict[int, str] = {}      # thread ident -> href of its read in flight
        self._by_href: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._meta: dict[str, _Meta] = {}
        self._meta_ahead: dict[str, Future] = {}     # prefetch_meta() tasks not yet taken
        self._sort_cache: dict[tuple, tuple] = {}
        self._sort_lock = threading.Lock()
        self._signed: dict[str, tuple[int, str]] = {}
        self._resigned: dict[str, int] = {}
        self._closed = False
        _redact_rasterio_logs()

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "BlockReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Shut the pool down and close every dataset handle.

        Reads abandoned at the deadline (still in flight) are not waited for: their
        threads close their own handles when the reads end."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            busy = set(self._reading)
            ahead, self._meta_ahead = list(self._meta_ahead.values()), {}
        for f in ahead:
            f.cancel()
        self._pool.shutdown(wait=not busy, cancel_futures=True)
        with self._lock:
            handles = [ds for ds, owner in self._all.items() if owner not in busy]
            for ds in handles:
                del self._all[ds]
            self._by_href = {}
            self._sort_cache.clear()
        for ds in handles:
            try:
                ds.close()
            except Exception:  # pragma: no cover - closing a broken handle
                pass

    def _close_own_handles(self) -> None:
        """Close the calling thread's handles (a read that ended after :meth:`close`)."""
        handles = self._handles()
        while handles:
            _, (ds, *_rest) = handles.popitem()
            self._close_one(ds)

    # -- deadline ----------------------------------------------------------------------------
    def _left(self) -> float | None:
        """Seconds left to the deadline (None: no deadline)."""
        if self._deadline_at is None:
            return None
        return self._deadline_at - time.monotonic()

    def _request_budget(self) -> float:
        """Longest a read of a handle opened with this reader's GDAL options can take."""
        def num(key: str, default: float) -> float:
            try:
                return float(self.env.get(key, default))
            except (TypeError, ValueError):
                return default
        timeout = num("GDAL_HTTP_TIMEOUT", 30.0)
        if timeout <= 0:                  # GDAL: 0 means no timeout
            return float("inf")
        retries = max(num("GDAL_HTTP_MAX_RETRY", 0.0), 0.0)
        delay = max(num("GDAL_HTTP_RETRY_DELAY", 0.0), 0.0)
        per_read = (timeout + max(num("GDAL_HTTP_CONNECTTIMEOUT", 0.0), 0.0)) * (retries + 1)
        return _REQUESTS_PER_READ * per_read + delay * (2 ** retries - 1)

    def _capped_options(self, left: float) -> tuple[dict[str, str], float]:
        """GDAL options for a handle opened ``left`` seconds before the deadline, and the
        longest a read of it then takes (the configured options when they fit)."""
        budget = self._request_budget()
        if left >= budget:
            return {}, budget
        t = max(left / _REQUESTS_PER_READ, _MIN_REQUEST_TIMEOUT)
        return ({"GDAL_HTTP_TIMEOUT": f"{t:.3f}", "GDAL_HTTP_CONNECTTIMEOUT": f"{t:.3f}",
                 "GDAL_HTTP_MAX_RETRY": "0"}, t * _REQUESTS_PER_READ)

    def _submit(self, href: str, fn: Callable[..., Any], *args: Any) -> Future:
        """Submit a task (reading ``href``) to the reader threads; past the deadline, raise
        ``reason="deadline"`` instead."""
        left = self._left()
        if left is not None and left <= 0:
            raise self._deadline_error(href, 0, None)
        return self._pool.submit(fn, *args)

    def _wait(self, futs: Sequence[Future], href: str) -> list[Future]:
        """Wait for ``futs`` until :data:`DEADLINE_SLACK` past the deadline; then cancel
        the rest, abandon those in flight and raise ``reason="deadline"``."""
        if self._deadline_at is None:
            futures_wait(futs)
            return list(futs)
        timeout = max(self._deadline_at + DEADLINE_SLACK - time.monotonic(), 0.0)
        done, pending = futures_wait(futs, timeout=timeout)
        if pending:
            running = sum(not f.cancel() for f in pending)
            logger.warning("read of %s not finished %.1f s past the read deadline; %d "
                           "request(s) in flight abandoned", redact(href), DEADLINE_SLACK,
                           running)
            raise self._deadline_error(href, 0, None, in_flight=running > 0)
        return list(futs)

    def _late(self) -> bool:
        """Whether the callers have stopped waiting (past deadline + slack)."""
        return (self._deadline_at is not None
                and time.monotonic() >= self._deadline_at + DEADLINE_SLACK)

    def _init_thread(self) -> None:
        """Enter the GDAL environment once per worker thread, for the thread's lifetime.

        rasterio keeps config options thread-local in child threads; entering an ``Env``
        per read costs milliseconds (it re-creates the GDAL environment), which adds up
        over thousands of block runs.
        """
        import rasterio

        env = rasterio.Env(**self.env)
        env.__enter__()
        self._local.env = env

    def _env_ctx(self, extra: Mapping[str, Any] | None = None):
        """Context for GDAL calls: nothing in a worker thread (already entered), else Env."""
        import contextlib

        import rasterio

        if getattr(self._local, "env", None) is not None and not extra:
            return contextlib.nullcontext()
        return rasterio.Env(**{**self.env, **(extra or {})})

    # -- signing -----------------------------------------------------------------------------
    def _path(self, href: str) -> tuple[int, str]:
        if self.signer is None or not href.startswith(("http://", "https://")):
            return 0, _vsi_path(href)
        with self._lock:
            cur = self._signed.get(href)
            if cur is None:
                cur = (0, _vsi_path(self.signer(href)))
                self._signed[href] = cur
            return cur

    def _resign(self, href: str, generation: int) -> bool:
        """Re-sign ``href`` once. False when the single allowed re-sign was already used."""
        if self.signer is None:
            return False
        with self._lock:
            cur = self._signed.get(href, (0, ""))
            if cur[0] > generation:      # another thread already re-signed
                return True
            if self._resigned.get(href, 0) >= 1:
                return False
            self._resigned[href] = self._resigned.get(href, 0) + 1
            self._signed[href] = (cur[0] + 1, _vsi_path(self.signer(href)))
        self.stats.add(resigns=1)
        return True

    # -- handles -----------------------------------------------------------------------------
    def _handles(self) -> OrderedDict:
        h = getattr(self._local, "h", None)
        if h is None:
            h = self._local.h = OrderedDict()
        return h

    def _open(self, href: str, *, fresh: bool = False, georef: bool = True):
        import rasterio

        handles = self._handles()
        gen, path = self._path(href)
        left = self._left() if path.startswith("/vsicurl/") else None
        if not fresh and href in handles:
            ds, g, has_georef, budget = handles[href]
            # near the deadline a remote handle whose reads could outlast it is reopened
            if (g == gen and not ds.closed and (has_georef or not georef)
                    and (left is None or budget <= left + DEADLINE_SLACK)):
                handles.move_to_end(href)
                return ds, gen
        self._drop(href)
        # Block reads need no georeferencing. For a local GeoTIFF, skipping it cuts an
        # open from about 1 ms to 0.15 ms of mostly GIL-held time: GDAL's GTiff driver
        # turns the GeoTIFF keys into a CRS through PROJ together with the transform.
        # (Remote opens are latency-bound; they keep it, as do metadata and load_cube.)
        plain = (not georef and not _is_remote(href)
                 and href.lower().endswith((".tif", ".tiff")))   # GTiff's open option
        extra = {}
        if fresh and path.startswith("/vsicurl/"):
            extra["CPL_VSIL_CURL_NON_CACHED"] = path.split("?", 1)[0]
        # near the deadline: GDAL keeps a handle's HTTP options from its open, so the
        # handle is opened with timeouts that end its reads by the deadline
        capped, budget = self._capped_options(left) if left is not None else ({}, 0.0)
        extra.update(capped)
        # GDAL reads VSI_CACHE when it opens the file
        vsi_cache = str(self.env.get("VSI_CACHE", "FALSE")) if path.startswith("/vsi") \
            else self._local_vsi_cache
        if extra or getattr(self._local, "env", None) is None:
            extra["VSI_CACHE"] = vsi_cache      # a new Env is entered for this open
            self._local.vsi_cache = None        # (and its exit restores the thread's)
        elif getattr(self._local, "vsi_cache", None) != vsi_cache:
            rasterio.env.setenv(VSI_CACHE=vsi_cache)    # the worker thread's Env, in place
            self._local.vsi_cache = vsi_cache
        with self._env_ctx(extra):
            self.stats.add(requests=1, opens=1, bytes_read=HEADER_BYTES)
            ds = _open_plain(path) if plain else rasterio.open(path, sharing=False)
        handles[href] = (ds, gen, not plain, budget)
        with self._lock:
            self._all[ds] = threading.get_ident()
            self._by_href.setdefault(href, []).append(ds)
        while len(handles) > self.max_handles:
            _, (old, *_rest) = handles.popitem(last=False)
            self._close_one(old)
        return ds, gen

    def release(self, href: str) -> None:
        """Close every thread's handle on ``href`` (call once no read of it is in flight).

        Closing frees the blocks GDAL cached for the dataset at once; keeping finished
        files open would fill GDAL's block cache (``GDAL_CACHEMAX``) and make every later
        block pay for LRU eviction.
        """
        with self._lock:
            ahead = self._meta_ahead.pop(href, None)
        if ahead is not None:                   # a prefetch still opening it: let it finish
            try:
                self._wait([ahead], href)
            except AssetReadError:
                pass                            # abandoned at the deadline
        with self._lock:
            items = self._by_href.pop(href, [])
            # a read abandoned at the deadline may still use its handle: its thread
            # closes it (LRU, close()) once the read ends
            busy = {t for t, h in self._reading.items() if h == href}
            keep = [ds for ds in items if self._all.get(ds) in busy]
        for ds in items:
            if not any(ds is k for k in keep):
                self._close_one(ds)

    def _close_one(self, ds) -> None:
        with self._lock:
            self._all.pop(ds, None)
        try:
            ds.close()
        except Exception:  # pragma: no cover
            pass

    def _drop(self, href: str) -> None:
        handles = self._handles()
        if href in handles:
            ds = handles.pop(href)[0]
            self._close_one(ds)

    # -- retries -----------------------------------------------------------------------------
    def _attempt(self, href: str, fn: Callable[[Any], Any], *, georef: bool = True) -> Any:
        """Run ``fn(dataset)`` with retries; raise a cropyield error when it keeps failing.
        ``georef=False``: ``fn`` reads pixels only (no transform, CRS or georeferenced
        metadata), so a local file may be opened without georeferencing."""
        from rasterio.errors import RasterioError

        remote = _is_remote(href)
        fresh = False
        last: BaseException | None = None
        kind = "transient"
        attempt, limit = 0, self.max_attempts
        me = threading.get_ident()
        while attempt < limit:
            if self._deadline_at is not None and time.monotonic() >= self._deadline_at:
                raise self._deadline_error(href, attempt, last)
            attempt += 1
            gen = self._path(href)[0]
            with self._lock:
                if self._closed:         # the reader gave up on this read (deadline)
                    raise self._deadline_error(href, attempt - 1, last)
                self._reading[me] = href
            try:
                ds, gen = self._open(href, fresh=fresh, georef=georef)
                with self._env_ctx():
                    result = fn(ds)
                if self._late():         # the caller stopped waiting: drop the values
                    raise self._deadline_error(href, attempt, None, in_flight=True)
                return result
            except (RasterioError, OSError, RuntimeError, ValueError) as exc:
                if isinstance(exc, CropYieldError):
                    raise
                last = exc
                kind = classify_error(exc, remote=remote)
                self._drop(href)
                clear_gdal_cache(href)
                fresh = True
                if kind == "auth":
                    if self._resign(href, gen):
                        limit += 1          # the re-signed try is an extra attempt
                        self.stats.add(retries=1)
                        logger.warning("HTTP 403 reading %s; re-signed, retrying", redact(href))
                        continue
                    break
                if kind in ("not_found", "corrupt"):
                    break
                if attempt < limit:
                    delay = self.backoff * (2 ** (attempt - 1))
                    self.stats.add(retries=1)
                    logger.warning("transient failure reading %s (attempt %d/%d): %s; retrying "
                                   "in %.2fs", redact(href), attempt, limit,
                                   redact(str(exc)), delay)
                    if self._deadline_at is not None:
                        delay = min(delay, max(self._deadline_at - time.monotonic(), 0.0))
                    time.sleep(delay)
            finally:
                with self._lock:
                    self._reading.pop(me, None)
                    closed = self._closed
                if closed:               # close() left this thread's handles to it
                    self._close_own_handles()
        raise self._error(href, kind, last, attempt)

    def _deadline_error(self, href: str, attempts: int, last: BaseException | None, *,
                        in_flight: bool = False):
        safe = redact(href)
        detail = f" Last error: {redact(str(last))}" if last is not None else ""
        if in_flight:
            how = (f" (a request was still in flight {DEADLINE_SLACK:g} s after it and was "
                   "abandoned)")
        elif attempts:
            how = f" (after {attempts} attempts)"
        else:
            how = " (not started: earlier reads used the time)"
        limit = f"{self.deadline:g} s" if self.deadline is not None else "(none: closed)"
        err = AssetReadError(
            f"reading {safe} was not finished within the read deadline of "
            f"{limit}" + how
            + "; the server is stalled or too slow. Retry later, or raise the deadline "
            f"(read_deadline=).{detail}",
            href=safe, reason="deadline", attempts=attempts)
        err.record = {"href": safe, "error": type(err).__name__, "reason": err.reason,
                      "attempts": attempts}
        if not getattr(self._local, "defer_failures", False):
            self.stats.failures.append(err.record)
        return err

    def _error(self, href: str, kind: str, exc: BaseException | None, attempts: int):
        safe = redact(href)
        detail = redact(str(exc)) if exc is not None else ""
        if kind == "auth":
            err: AssetReadError = AuthExpiredError(
                f"access to {safe} was refused (HTTP 403) even after re-signing; sign the "
                f"hrefs again (fresh token) or check the credentials. GDAL said: {detail}",
                href=safe, reason="auth_expired", attempts=attempts)
        elif kind == "corrupt":
            err = CorruptAssetError(
                f"{safe} could not be decoded (corrupt or truncated tile/header); re-download "
                f"the asset or exclude the scene. GDAL said: {detail}",
                href=safe, reason="corrupt", attempts=attempts)
        elif kind == "not_found":
            err = AssetReadError(
                f"{safe} does not exist (HTTP 404 / missing file); the item is stale or the "
                f"href is wrong. Search again or exclude the scene. GDAL said: {detail}",
                href=safe, reason="not_found", attempts=attempts)
        else:
            err = AssetReadError(
                f"reading {safe} failed after {attempts} attempts; the server may be down or "
                f"rate-limiting: retry later or raise GDAL_HTTP_TIMEOUT/max_attempts. GDAL said: "
                f"{detail}", href=safe, reason="transient", attempts=attempts)
        err.record = {"href": safe, "error": type(err).__name__, "reason": err.reason,
                      "attempts": attempts}
        if not getattr(self._local, "defer_failures", False):
            self.stats.failures.append(err.record)
        return err

    # -- metadata ----------------------------------------------------------------------------
    def meta(self, href: str) -> _Meta:
        """Shape, block shape, dtype, nodata, transform and CRS of band 1 of ``href``."""
        m = self._meta.get(href)
        if m is None:
            with self._lock:
                ahead = fut = self._meta_ahead.pop(href, None)
            if fut is None:
                fut = self._submit(href, self._meta_task, href)
            try:
                m = self._wait([fut], href)[0].result()
            except AssetReadError as exc:
                record = getattr(exc, "record", None)
                if ahead is not None and record is not None:   # a prefetch's failure counts
                    self.stats.failures.append(record)         # once it is used
                raise
            with self._lock:
                self._meta[href] = m
        return m

    def prefetch_meta(self, hrefs: Sequence[str]) -> None:
        """Open ``hrefs`` and read their metadata in the reader threads, in this order, and
        return at once: the next :meth:`meta` of each takes the result (or raises its
        error). For the first files of a run, while the caller prepares what to read."""
        with self._lock:
            for href in hrefs:
                if href not in self._meta and href not in self._meta_ahead:
                    self._meta_ahead[href] = self._pool.submit(self._meta_ahead_task, href)

    def _meta_ahead_task(self, href: str) -> _Meta:
        self._local.defer_failures = True      # recorded by meta(), if it is ever asked
        try:
            return self._meta_task(href)
        finally:
            self._local.defer_failures = False

    def _meta_task(self, href: str) -> _Meta:
        def fn(ds):
            return _Meta((ds.height, ds.width), tuple(ds.block_shapes[0]), ds.dtypes[0],
                         ds.nodata, ds.transform, ds.crs)
        return self._attempt(href, fn)

    # -- reading -----------------------------------------------------------------------------
    def read(self, href: str, rows: np.ndarray, cols: np.ndarray, *,
             want: np.ndarray | None = None, fill: Any = 0, dtype: Any = None, pad: int = 0,
             window_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Values of band 1 of ``href`` at pixels ``(rows, cols)``, reading only needed blocks.

        Parameters
        ----------
        href : str
            Local path or http(s) URL (read through ``/vsicurl/``), unsigned.
        rows, cols : int arrays
            Pixel indices on the asset's grid (inside its shape).
        want : bool array, optional
            Only these pixels are needed; blocks without any wanted pixel are not read and
            unwanted pixels get ``fill``.
        fill : scalar
            Value of pixels not read.
        dtype : numpy dtype, optional
            Output dtype (default: the asset's, or ``window_fn``'s output dtype).
        pad : int
            Extra pixels read around each run window (clipped to the raster), e.g. for
            dilation in ``window_fn``.
        window_fn : callable, optional
            ``window_fn(array2d) -> array2d`` applied to each (padded) window before the
            values are gathered (e.g. an SCL mask with dilation).

        Returns
        -------
        numpy.ndarray
            1-D array of ``len(rows)`` values.
        """
        rows, cols = _as_int64(rows), _as_int64(cols)
        m = self.meta(href)
        presorted = self._presorted(rows, cols, m, href)
        mask = None
        if want is not None and len(presorted) == 5:
            # pixel set seen before: plan whole blocks (a block is read when it holds a
            # wanted pixel, exactly as plan_blocks), and skip unwanted pixels while gathering
            order_all, _, ub, bst, ben = presorted
            mask = np.ascontiguousarray(want, dtype=np.bool_).reshape(-1)
            if mask.shape[0] != order_all.shape[0]:
                raise ValueError(f"want has {mask.shape[0]} entries for "
                                 f"{order_all.shape[0]} pixels")
            need = _blocks_wanted(order_all, mask, bst, ben)
            nbc = -(-int(m.shape[1]) // int(m.block_shape[1]))
            rr, rc0, rc1, s_, e_ = _runs_of(ub[need], nbc, self.max_run)
            plan = BlockPlan((int(m.block_shape[0]), int(m.block_shape[1])), order_all, rr,
                             rc0, rc1, bst[need][s_], ben[need][e_])
        else:
            plan = plan_blocks(rows, cols, m.shape, m.block_shape, want, self.max_run,
                               presorted=presorted[:2])
        out_dtype = np.dtype(dtype) if dtype is not None else (
            np.dtype(m.dtype) if window_fn is None else None)
        out = None if out_dtype is None else np.full(len(rows), fill, dtype=out_dtype)
        if plan.n_runs == 0:
            return out if out is not None else np.full(len(rows), fill)
        chunks = self._chunks(plan.run_col1 - plan.run_col0 + 1)
        futs = [self._submit(href, self._read_runs, href, plan, runs, rows, cols, m, pad,
                             window_fn, out, mask) for runs in chunks]
        error = None
        for f in self._wait(futs, href):
            try:
                for idx, vals in f.result():     # only when out could not be preallocated
                    if out is None:
                        out = np.full(len(rows), fill, dtype=vals.dtype)
                    out[idx] = vals
            except AssetReadError as exc:
                error = error or exc
        if error is not None:
            raise error
        return out if out is not None else np.full(len(rows), fill)

    def _chunks(self, n_blocks: np.ndarray) -> list[list[int]]:
        """Consecutive runs grouped into tasks of about ``1 / (4 x threads)`` of the blocks:
        enough tasks to keep every thread busy, few enough to keep the overhead small."""
        target = max(1, int(np.ceil(n_blocks.sum() / (self.threads * 4))))
        chunks, cur, acc = [], [], 0
        for k in range(len(n_blocks)):
            cur.append(k)
            acc += int(n_blocks[k])
            if acc >= target:
                chunks.append(cur)
                cur, acc = [], 0
        if cur:
            chunks.append(cur)
        return chunks

    def _presorted(self, rows: np.ndarray, cols: np.ndarray, m: _Meta, href: str):
        """Bounds check + block sort of ``rows, cols``, cached while the same arrays are
        passed again (callers reuse one pixel set for every date of a grid)."""
        key = (id(rows), id(cols), tuple(m.shape), tuple(m.block_shape))
        with self._lock:
            hit = self._sort_cache.get(key)
        if hit is not None and hit[0] is rows and hit[1] is cols:
            return hit[2]
        if len(rows) and (rows.min() < 0 or cols.min() < 0 or rows.max() >= m.shape[0]
                          or cols.max() >= m.shape[1]):
            raise ValueError(f"pixel indices outside the raster {m.shape} of {redact(href)}")
        if len(rows) < 4096:           # small reads are cheaper to re-sort than to cache
            small = _block_sort(rows, cols, m.shape, m.block_shape)
            return small + _block_bounds(small[1])
        with self._sort_lock:          # one thread sorts, the others wait for its result
            with self._lock:
                hit = self._sort_cache.get(key)
            if hit is not None and hit[0] is rows and hit[1] is cols:
                return hit[2]
            srt = _block_sort(rows, cols, m.shape, m.block_shape)
            res = srt + _block_bounds(srt[1])
            with self._lock:
                self._sort_cache[key] = (rows, cols, res)
                while len(self._sort_cache) > 8:
                    self._sort_cache.pop(next(iter(self._sort_cache)))
        return res

    def _read_runs(self, href, plan: BlockPlan, runs, rows, cols, m: _Meta, pad, window_fn,
                   out=None, mask=None):
        from rasterio.windows import Window

        bh, bw = plan.block_shape
        H, W = m.shape
        results = []
        for k in runs:
            br, c0b, c1b = int(plan.run_row[k]), int(plan.run_col0[k]), int(plan.run_col1[k])
            r0, r1 = br * bh, min((br + 1) * bh, H)
            c0, c1 = c0b * bw, min((c1b + 1) * bw, W)
            pr0, pr1 = max(r0 - pad, 0), min(r1 + pad, H)
            pc0, pc1 = max(c0 - pad, 0), min(c1 + pad, W)
            idx = plan.order[plan.run_start[k]:plan.run_end[k]]

            def fn(ds, pr0=pr0, pr1=pr1, pc0=pc0, pc1=pc1, br=br, c0b=c0b, c1b=c1b):
                # one window per block row: each is one contiguous byte span of the COG,
                # fetched exactly (GDAL_HTTP_MULTIRANGE=SINGLE_GET); a padded window spanning
                # rows read at once would also fetch the tiles between its columns
                cuts = [pr0, *range((pr0 // bh + 1) * bh, pr1, bh), pr1]
                parts = [ds.read(1, window=Window(pc0, a, pc1 - pc0, b - a))
                         for a, b in zip(cuts[:-1], cuts[1:])]
                arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
                if arr.shape != (pr1 - pr0, pc1 - pc0):  # pragma: no cover - GDAL contract
                    raise OSError(f"short read: got {arr.shape}")
                nbytes = sum(int(ds.block_size(1, br, c)) for c in range(c0b, c1b + 1))
                return arr, nbytes

            arr, nbytes = self._attempt(href, fn, georef=False)
            nb = c1b - c0b + 1
            if pad:
                # blocks touched by the padding are decoded too
                nb = (-(-pr1 // bh) - pr0 // bh) * (-(-pc1 // bw) - pc0 // bw)
            self.stats.add(requests=1, runs=1, blocks_read=nb, bytes_read=nbytes)
            if window_fn is not None:
                arr = window_fn(arr)
            if out is not None and arr.dtype == out.dtype:
                if mask is None:
                    _gather_into(np.ascontiguousarray(arr), rows, cols, idx, pr0, pc0, out)
                else:
                    _gather_masked(np.ascontiguousarray(arr), rows, cols, idx, mask, pr0,
                                   pc0, out)
            else:
                if mask is not None:
                    idx = idx[mask[idx]]
                results.append((idx, arr[rows[idx] - pr0, cols[idx] - pc0]))
        return results

    def read_windows(self, hrefs: Sequence[str], run_row: np.ndarray, run_col0: np.ndarray,
                     run_col1: np.ndarray,
                     consume: Callable[[int, int, int, np.ndarray], None]) -> None:
        """Decode runs of blocks of several same-grid files and hand each run to ``consume``.

        Run ``k`` covers block row ``run_row[k]``, block columns ``run_col0[k] ..
        run_col1[k]`` (as :class:`BlockPlan`). A reader thread reads that window from every
        href into one ``(len(hrefs), h, w)`` array and calls ``consume(k, row0, col0,
        window)`` itself, so the caller's per-run work runs in parallel with the decoding
        and no full-size array is built. ``window`` is a per-thread buffer, valid only
        during the call; runs never overlap, so calls for different runs may write
        disjoint outputs without locks.

        Parameters
        ----------
        hrefs : sequence of str
            Files with the same shape, block shape and dtype (e.g. the 10 m bands of one
            Sentinel-2 scene).
        run_row, run_col0, run_col1 : int arrays
            The runs.
        consume : callable
            Called once per run, in a reader thread.

        Raises
        ------
        AssetReadError
            When a read fails after retries (the other runs are still finished first).
        ValueError
            When the files' grids, block shapes or dtypes differ.
        """
        metas = [self.meta(h) for h in hrefs]
        m = metas[0]
        for h, mm in zip(hrefs, metas):
            if (tuple(mm.shape), tuple(mm.block_shape), np.dtype(mm.dtype)) != (
                    tuple(m.shape), tuple(m.block_shape), np.dtype(m.dtype)):
                raise ValueError(f"{redact(h)} differs from {redact(hrefs[0])} in shape, "
                                 f"block shape or dtype; read them separately")
        n_runs = len(run_row)
        if n_runs == 0:
            return
        chunks = self._chunks(np.asarray(run_col1) - np.asarray(run_col0) + 1)
        futs = [self._submit(hrefs[0], self._window_task, list(hrefs), m, runs, run_row,
                             run_col0, run_col1, consume) for runs in chunks]
        error = None
        for f in self._wait(futs, hrefs[0]):
            try:
                f.result()
            except AssetReadError as exc:
                error = error or exc
        if error is not None:
            raise error

    def _window_task(self, hrefs, m: _Meta, runs, run_row, run_col0, run_col1, consume):
        from rasterio.windows import Window

        bh, bw = m.block_shape
        H, W = m.shape
        dtype = np.dtype(m.dtype)
        for k in runs:
            br, c0b, c1b = int(run_row[k]), int(run_col0[k]), int(run_col1[k])
            r0, r1 = br * bh, min((br + 1) * bh, H)
            c0, c1 = c0b * bw, min((c1b + 1) * bw, W)
            h, w = r1 - r0, c1 - c0
            size = len(hrefs) * h * w
            buf = getattr(self._local, "window_buf", None)
            if buf is None or buf.dtype != dtype or buf.size < size:
                buf = self._local.window_buf = np.empty(size, dtype)
            win = buf[:size].reshape(len(hrefs), h, w)
            for j, href in enumerate(hrefs):
                def fn(ds, out=win[j], window=Window(c0, r0, w, h), br=br, c0b=c0b, c1b=c1b):
                    ds.read(1, window=window, out=out)
                    return sum(int(ds.block_size(1, br, c)) for c in range(c0b, c1b + 1))

                nbytes = self._attempt(href, fn, georef=False)
                self.stats.add(requests=1, runs=1, blocks_read=c1b - c0b + 1, bytes_read=nbytes)
            if self._late():      # read_windows gave up on this run: never consume it
                raise self._deadline_error(hrefs[0], 1, None, in_flight=True)
            consume(k, r0, c0, win)

    def block_bytes(self, href: str, blocks: list[tuple[int, int]]) -> int:
        """Sum of the TIFF tile byte counts of ``blocks`` (``(row, col)``) of band 1."""
        def fn(ds):
            return sum(int(ds.block_size(1, r, c)) for r, c in blocks)
        return self._wait([self._submit(href, self._attempt, href, fn)], href)[0].result()
