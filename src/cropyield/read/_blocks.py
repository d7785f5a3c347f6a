"""Field-centric reading of Cloud-Optimized GeoTIFF blocks, and ``load_cube``.

The reader fetches and decodes only the internal COG blocks (tiles) that contain pixels the
fields need, each block once, and returns the values at those pixels as 1-D vectors, so that
the index kernels never see a full raster. It is built on rasterio/GDAL:

* **Plan.** Needed pixels are grouped by block; consecutive needed blocks of the same block
  row are merged into *runs* (one block-aligned window read each, at most ``max_run`` blocks;
  over HTTP GDAL turns a run into one exact range request, ``GDAL_HTTP_MULTIRANGE=SINGLE_GET``,
  because COG tiles of a row are stored contiguously; ``GDAL_MAX_RAW_BLOCK_CACHE_SIZE`` is
  raised so that runs of large tiles are not split into read-ahead reads that overshoot the
  run). A run never spans a block that no needed pixel falls in.
* **Threads.** A bounded :class:`~concurrent.futures.ThreadPoolExecutor` (default 2 threads)
  executes runs; every worker thread keeps its own dataset handles (GDAL handles are not
  thread-safe), in a small per-thread LRU, and enters the GDAL environment
  (:func:`gdal_env`) itself: rasterio config options are thread-local in child threads.
* **Accounting.** GDAL exposes no byte counter, so bytes are counted from the TIFF tile
  byte counts of the blocks read (``dataset.block_size``) plus an estimated header read per
  opened handle (:data:`HEADER_BYTES`); ``requests`` counts handle opens plus run reads
  (retries included). Server-side counts can differ by GDAL's own header/HEAD requests.
* **Faults.** Transient failures (HTTP 5xx, 429, timeouts, truncated bodies, connection
  resets, and decode errors on remote files, which is how truncation surfaces) are retried
  with exponential backoff after closing the handle and clearing GDAL's ``/vsicurl/`` cache
  for that URL (``VSICurlPartialClearCache`` through ctypes on the libgdal rasterio loaded;
  the retry handle is also opened with ``CPL_VSIL_CURL_NON_CACHED`` for the URL so a cached
  failure can never be replayed). 404 is permanent. 403 triggers one re-sign through the
  ``signer`` (if any), then :class:`~cropyield.errors.AuthExpiredError`. A local file that
  cannot be decoded raises :class:`~cropyield.errors.CorruptAssetError` at once. Every href
  in messages is redacted. A failed block never becomes numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._geo import Grid
from .._jit import njit
from .._log import logger, redact
from ..errors import AssetReadError, AuthExpiredError, CorruptAssetError, CropYieldError

__all__ = [
    "DEFAULT_GDAL_ENV",
    "HEADER_BYTES",
    "gdal_env",
    "configure_rio",
    "clear_gdal_cache",
    "classify_error",
    "BlockPlan",
    "plan_blocks",
    "ReadStats",
    "BlockReader",
    "load_cube",
]

#: GDAL configuration used for every read (see reference/reliability.md §1).
DEFAULT_GDAL_ENV: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",   # no sidecar listing (.ovr/.msk probes)
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",   # one request per run of adjacent tiles
    # A run's tiles are one contiguous byte span in a COG: fetch it as one exact GET. The
    # default (PARALLEL) sends the span through /vsicurl/'s 16 KiB chunk cache, whose
    # sequential read-ahead fetches past the run's last tile (bytes another run re-fetches).
    "GDAL_HTTP_MULTIRANGE": "SINGLE_GET",
    # GTiff prefetches a window's tiles in one multi-range read only while their byte counts
    # sum to at most this (GDAL default 10 MB); tiles past it are read one by one through the
    # read-ahead path. 64 MiB holds max_run (8) uncompressed 1024 x 1024 float64 tiles.
    "GDAL_MAX_RAW_BLOCK_CACHE_SIZE": str(64 * 1024 * 1024),
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MAX_RETRY": "2",                    # GDAL-level retries (429/5xx), then ours
    "GDAL_HTTP_RETRY_DELAY": "0.5",                # seconds, doubled with jitter by GDAL
    "GDAL_HTTP_TIMEOUT": "30",                     # seconds per request
    "GDAL_HTTP_CONNECTTIMEOUT": "10",              # seconds
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(8 * 1024 * 1024),        # bytes per handle
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF",
    "GDAL_TIFF_INTERNAL_MASK": "YES",
    "GTIFF_IGNORE_READ_ERRORS": "NO",              # a broken tile must raise, never give zeros
}

#: Upper bound of one tile's stored bytes used to size GDAL's raw block cache per run
#: (an uncompressed 1024 x 1024 float64 tile).
_RAW_BYTES_PER_TILE = 8 * 1024 * 1024

#: Bytes assumed to be read when a handle opens a COG (GDAL's first 16 KiB ingest).
HEADER_BYTES = 16_384

_configured: dict[str, Any] = {}
_configured_lock = threading.Lock()


def gdal_env(**overrides: Any) -> dict[str, Any]:
    """GDAL configuration options for reads: defaults, then :func:`configure_rio`, then overrides.

    Returns a new dict (strings or numbers) suitable for ``rasterio.Env(**gdal_env())``.
    Nothing is written to ``os.environ``.
    """
    with _configured_lock:
        env = {**DEFAULT_GDAL_ENV, **_configured}
    env.update({k: v for k, v in overrides.items() if v is not None})
    return env


def configure_rio(*, client: Any = None, **options: Any) -> dict[str, Any]:
    """Set process-wide GDAL options used by cropyield reads, optionally on dask workers too.

    Parameters
    ----------
    client : distributed.Client, optional
        When given, a :class:`distributed.WorkerPlugin` is registered so that every current
        and future worker of the cluster applies the same options (``[distributed]`` extra).
    **options
        GDAL configuration options (e.g. ``GDAL_HTTP_MAX_RETRY=5``) layered over
        :data:`DEFAULT_GDAL_ENV`.

    Returns
    -------
    dict
        The resulting options (as :func:`gdal_env` now returns them).
    """
    with _configured_lock:
        _configured.update(options)
    if client is not None:
        plugin = make_worker_plugin(**options)
        register = getattr(client, "register_plugin", None) or client.register_worker_plugin
        register(plugin, name="cropyield-gdal-env")
    return gdal_env()


def make_worker_plugin(**options: Any):
    """A ``distributed.WorkerPlugin`` that calls :func:`configure_rio` with ``options`` on workers."""
    from .._extras import require

    distributed = require("distributed", "distributed", "pushing GDAL settings to dask workers")

    class GDALEnvPlugin(distributed.WorkerPlugin):
        """Apply cropyield's GDAL options on a dask worker (see :func:`configure_rio`)."""

        name = "cropyield-gdal-env"

        def __init__(self, opts: Mapping[str, Any]):
            self.opts = dict(opts)

        def setup(self, worker=None):  # noqa: D102
            from cropyield.read import configure_rio as _cfg

            _cfg(**self.opts)

    return GDALEnvPlugin(options)


# --------------------------------------------------------------------------------------------
# GDAL cache clearing


_gdal_lib: Any = None
_gdal_lib_tried = False


def _load_gdal() -> Any:
    """The libgdal that rasterio loaded (for ``VSICurlPartialClearCache``), or None."""
    global _gdal_lib, _gdal_lib_tried
    if _gdal_lib_tried:
        return _gdal_lib
    _gdal_lib_tried = True
    import rasterio  # noqa: F401  (make sure its libgdal is loaded)

    candidates: list[str] = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.rsplit(" ", 1)[-1].strip()
                if "libgdal" in path.rsplit("/", 1)[-1] and path not in candidates:
                    candidates.append(path)
    except OSError:
        pass
    found = ctypes.util.find_library("gdal")
    if found:
        candidates.append(found)
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            fn = lib.VSICurlPartialClearCache
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_char_p]
        fn.restype = None
        lib.VSICurlClearCache.argtypes = []
        lib.VSICurlClearCache.restype = None
        _gdal_lib = lib
        return lib
    return None


def _is_remote(href: str) -> bool:
    """Whether ``href`` is read over HTTP (``http(s)://`` or a ``/vsicurl/`` path)."""
    return href.startswith(("http://", "https://", "/vsicurl/"))


def _vsi_path(href: str) -> str:
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    return href


def clear_gdal_cache(href: str | None = None) -> bool:
    """Clear GDAL's ``/vsicurl/`` caches (file size, existence, data regions) for ``href``.

    Query strings are ignored, so every signed variant of the URL is cleared; ``None``
    clears the caches of every URL (``VSICurlClearCache``). Returns True when GDAL could be
    called, False otherwise (local paths, or a GDAL build not reachable through ctypes).
    """
    if href is None:
        lib = _load_gdal()
        if lib is None:
            return False
        lib.VSICurlClearCache()
        return True
    if not _is_remote(href):
        return False
    lib = _load_gdal()
    if lib is None:
        return False
    prefix = _vsi_path(href.split("?", 1)[0]) if not href.startswith("/vsicurl/") else \
        href.split("?", 1)[0]
    lib.VSICurlPartialClearCache(prefix.encode())
    return True


# --------------------------------------------------------------------------------------------
# error classification

_TRANSIENT = ("response code: 5", "response code: 429", "timed out", "timeout", "connection reset",
              "reset by peer", "transfer closed", "recv failure", "empty reply", "couldn't connect",
              "could not connect", "failed to connect", "broken pipe", "partial file",
              "connection refused", "ssl", "range downloading not supported",
              "does not exist in the file system", "not recognized as being in a supported",
              "not recognized as a supported", "curl error")
_DECODE = ("tiffreadencodedtile", "ireadblock", "decod", "inflate", "zipdecode", "read error",
           "read failed", "tiffreaddirectory", "tifffetchnormaltag", "not a tiff", "cannot read",
           "short read", "unexpected end", "incorrect", "failed to read", "lzw", "deflate")


def classify_error(exc: BaseException, *, remote: bool) -> str:
    """Sort a read failure into ``"not_found"``, ``"auth"``, ``"transient"`` or ``"corrupt"``.

    GDAL reports failures as text only, so this matches the messages GDAL/rasterio emit
    (HTTP response codes, curl errors, libtiff decode errors).
    """
    msg = str(exc).lower()
    if "response code: 404" in msg or "response code: 410" in msg:
        return "not_found"
    if "response code: 403" in msg or "response code: 401" in msg:
        return "auth"
    if remote and any(s in msg for s in _TRANSIENT):
        return "transient"
    if any(s in msg for s in _DECODE):
        return "transient" if remote else "corrupt"
    if not remote and ("no such file" in msg or "does not exist" in msg):
        return "not_found"
    return "transient" if remote else "corrupt"


# --------------------------------------------------------------------------------------------
# block plans


@dataclass(frozen=True)
class BlockPlan:
    """Which blocks to read for a set of pixels, grouped into runs.

    ``order`` lists the indices (into the caller's pixel vectors) of the wanted pixels sorted
    by block; run ``k`` covers block row ``run_row[k]``, block columns
    ``run_col0[k] .. run_col1[k]`` (inclusive) and pixels ``order[run_start[k]:run_end[k]]``.
    """

    block_shape: tuple[int, int]
    order: np.ndarray
    run_row: np.ndarray
    run_col0: np.ndarray
    run_col1: np.ndarray
    run_start: np.ndarray
    run_end: np.ndarray

    @property
    def n_runs(self) -> int:
        return len(self.run_row)

    @property
    def n_blocks(self) -> int:
        return int(np.sum(self.run_col1 - self.run_col0 + 1))

    def blocks(self) -> list[tuple[int, int]]:
        """All ``(block_row, block_col)`` pairs in the plan."""
        return [(int(r), int(c)) for r, c0, c1 in zip(self.run_row, self.run_col0, self.run_col1)
                for c in range(c0, c1 + 1)]


def plan_blocks(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
                block_shape: tuple[int, int], want: np.ndarray | None = None,
                max_run: int = 8, presorted: tuple[np.ndarray, np.ndarray] | None = None
                ) -> BlockPlan:
    """Group pixels by the raster block they fall in and merge adjacent blocks into runs.

    Parameters
    ----------
    rows, cols : int arrays
        Pixel indices on the raster (must be inside ``shape``).
    shape : (height, width)
        Raster shape in pixels.
    block_shape : (block_height, block_width)
        Internal tile shape in pixels.
    want : bool array, optional
        Only pixels where ``want`` is True are planned (others are not read).
    max_run : int
        Maximum number of blocks in one run (window read).
    presorted : (order, keys), optional
        :func:`_block_sort` of ``rows, cols`` (cached by callers that plan the same pixels
        many times with different ``want``); computed here when None.
    """
    bh, bw = int(block_shape[0]), int(block_shape[1])
    if presorted is None:
        presorted = _block_sort(rows, cols, shape, block_shape)
    order_all, key_all = presorted
    nbc = -(-int(shape[1]) // bw)
    if want is None:
        sel, key = order_all, key_all
    else:
        # filtering the stable sort of all pixels == stable sort of the wanted ones
        want = np.ascontiguousarray(want, dtype=np.bool_).reshape(-1)
        if want.shape[0] != order_all.shape[0]:
            raise ValueError(f"want has {want.shape[0]} entries for {order_all.shape[0]} "
                             f"pixels")
        sel, key = _filter_sorted(order_all, key_all, want)
    if len(sel) == 0:
        e = np.zeros(0, np.int64)
        return BlockPlan((bh, bw), sel.astype(np.int64), e, e, e, e, e)
    ublocks, starts, ends = _block_bounds(key)
    # runs of adjacent blocks, capped at max_run blocks
    rr, rc0, rc1, s, e = _runs_of(ublocks, nbc, max_run)
    return BlockPlan((bh, bw), sel.astype(np.int64), rr, rc0, rc1, starts[s], ends[e])


def _as_int64(a) -> np.ndarray:
    """``a`` as an int64 array, the same object when it already is one.

    :meth:`BlockReader.read` caches its block sort by array identity. ``np.asarray(a,
    np.int64)`` returns a new view when ``a``'s dtype equals int64 but is not NumPy's own
    instance of it, which is the case for arrays made by numba's on-disk cached kernels,
    so every call would miss the cache and sort again.
    """
    if isinstance(a, np.ndarray) and a.dtype == np.int64:
        return a
    return np.asarray(a, np.int64)


def _block_sort(rows, cols, shape, block_shape) -> tuple[np.ndarray, np.ndarray]:
    """Stable order of all pixels by block key and the sorted keys (block row-major)."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    bh, bw = int(block_shape[0]), int(block_shape[1])
    nbc = -(-int(shape[1]) // bw)
    key = (rows // bh) * nbc + cols // bw
    nbr = -(-int(shape[0]) // bh)
    if len(key) and nbr * nbc <= 1 << 22:
        # counting sort by block: the same permutation as a stable argsort, in O(n)
        order = _counting_order(key, nbr * nbc)
    else:
        order = np.argsort(key, kind="stable").astype(np.int64, copy=False)
    return order, key[order]


def _counting_order_ref(key, nkeys):
    """NumPy twin of :func:`_counting_order` (a stable argsort)."""
    return np.argsort(key, kind="stable").astype(np.int64)


@njit(nogil=True)
def _counting_order(key, nkeys):  # pragma: no cover - compiled
    """Stable sort permutation of small non-negative integer keys (< nkeys)."""
    cnt = np.zeros(nkeys + 1, np.int64)
    for i in range(key.shape[0]):
        cnt[key[i] + 1] += 1
    for b in range(nkeys):
        cnt[b + 1] += cnt[b]
    order = np.empty(key.shape[0], np.int64)
    for i in range(key.shape[0]):
        k = key[i]
        order[cnt[k]] = i
        cnt[k] += 1
    return order


def _block_bounds(keys_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct block keys of a sorted key vector and each block's [start, end) in it."""
    if len(keys_sorted) == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    newb = np.empty(len(keys_sorted), bool)
    newb[0] = True
    np.not_equal(keys_sorted[1:], keys_sorted[:-1], out=newb[1:])
    starts = np.flatnonzero(newb)
    return keys_sorted[starts], starts, np.append(starts[1:], len(keys_sorted))


def _runs_of(ublocks, nbc: int, max_run: int):
    """Split sorted block keys into runs of adjacent blocks of one block row (as
    :func:`plan_blocks`): (run_row, run_col0, run_col1, first block, last block)."""
    if len(ublocks) == 0:
        e = np.zeros(0, np.int64)
        return e, e, e, e, e
    br, bc = ublocks // nbc, ublocks % nbc
    brk = np.ones(len(ublocks), bool)
    brk[1:] = (br[1:] != br[:-1]) | (bc[1:] != bc[:-1] + 1)
    run_id = np.cumsum(brk) - 1
    first = np.flatnonzero(brk)
    pos = np.arange(len(ublocks)) - first[run_id]
    brk |= (pos % max(int(max_run), 1)) == 0
    s = np.flatnonzero(brk)
    e = np.append(s[1:], len(ublocks)) - 1
    return br[s], bc[s], bc[e], s, e


# --------------------------------------------------------------------------------------------
# gather kernel


def _gather_into_ref(arr, rows, cols, idx, r0, c0, out):
    """NumPy twin of :func:`_gather_into`: ``out[idx] = arr[rows[idx] - r0, cols[idx] - c0]``."""
    out[idx] = arr[rows[idx] - r0, cols[idx] - c0]


@njit(nogil=True)
def _gather_into(arr, rows, cols, idx, r0, c0, out):  # pragma: no cover - compiled
    """Scatter window values to the output vector: out[i] = arr[rows[i]-r0, cols[i]-c0]
    for every i in idx (disjoint idx per thread, so threads never write the same slot)."""
    for k in range(idx.shape[0]):
        i = np.uintp(idx[k])          # unsigned indices: no negative-index wraparound code
        out[i] = arr[np.uintp(rows[i] - r0), np.uintp(cols[i] - c0)]


def _filter_sorted_ref(order, keys, want):
    """NumPy twin of :func:`_filter_sorted`: ``order[m], keys[m]`` with ``m = want[order]``."""
    m = np.asarray(want, bool)[order]
    return order[m], keys[m]


@njit(nogil=True)
def _filter_sorted(order, keys, want):  # pragma: no cover - compiled
    """Entries of the block-sorted pixel order whose pixel is wanted (one pass)."""
    n = 0
    for i in range(order.shape[0]):
        if want[order[i]]:
            n += 1
    sel = np.empty(n, np.int64)
    key = np.empty(n, np.int64)
    j = 0
    for i in range(order.shape[0]):
        o = order[i]
        if want[o]:
            sel[j] = o
            key[j] = keys[i]
            j += 1
    return sel, key


def _gather_masked_ref(arr, rows, cols, idx, want, r0, c0, out):
    """NumPy twin of :func:`_gather_masked`: like :func:`_gather_into_ref` for the
    ``idx`` with ``want[idx]`` only."""
    i = idx[want[idx]]
    out[i] = arr[rows[i] - r0, cols[i] - c0]


def _blocks_wanted_ref(order, want, starts, ends):
    """NumPy twin of :func:`_blocks_wanted`."""
    w = np.asarray(want, bool)[order]
    return np.array([bool(w[a:b].any()) for a, b in zip(starts, ends)], dtype=bool)


@njit(nogil=True)
def _gather_masked(arr, rows, cols, idx, want, r0, c0, out):  # pragma: no cover
    """out[i] = arr[rows[i]-r0, cols[i]-c0] for i in idx where want[i]."""
    for k in range(idx.shape[0]):
        i = np.uintp(idx[k])          # unsigned indices: no negative-index wraparound code
        if want[i]:
            out[i] = arr[np.uintp(rows[i] - r0), np.uintp(cols[i] - c0)]

@njit(nogil=True)
def _blocks_wanted(order, want, starts, ends):  # pragma: no cover - compiled
    """Per block (pixels order[starts[b]:ends[b]]): does it hold a wanted pixel?
    Stops at the first wanted pixel of each block."""
    nb = starts.shape[0]
    hit = np.zeros(nb, np.bool_)
    for b in range(nb):
        for k in range(starts[b], ends[b]):
            if want[order[k]]:
                hit[b] = True
                break
    return hit


# --------------------------------------------------------------------------------------------
# the reader


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


_RIO_LOGGERS = ("rasterio", "rasterio._env", "rasterio._base", "rasterio._io",
                "rasterio._filepath", "rasterio.env", "rasterio._err")


def _redact_rasterio_logs() -> None:
    """Install cropyield's redacting filter on rasterio's loggers (they log GDAL errors with
    full URLs, signed query strings included). Idempotent."""
    import logging

    from .._log import RedactingFilter

    for name in _RIO_LOGGERS:
        lg = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in lg.filters):
            lg.addFilter(RedactingFilter())


_plain_open_lock = threading.Lock()


def _open_plain(path: str):
    """``rasterio.open`` of a local raster without its georeferencing (open option
    ``GEOREF_SOURCES=NONE``), for pixel reads. rasterio warns that such a dataset is not
    georeferenced; the warning is silenced for this open only. ``warnings.catch_warnings``
    is process-wide, so these opens (0.15 ms each) are serialised."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with _plain_open_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path, sharing=False, GEOREF_SOURCES="NONE")


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
    """

    def __init__(self, *, threads: int = 2, env: Mapping[str, Any] | None = None,
                 max_attempts: int = 4, backoff: float = 0.25,
                 signer: Callable[[str], str] | None = None, max_run: int = 8,
                 max_handles: int = 16):
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
        with _configured_lock:
            explicit = {**_configured, **dict(env or {})}
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
        self._all: set[Any] = set()
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
        """Shut the pool down and close every dataset handle."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            ahead, self._meta_ahead = list(self._meta_ahead.values()), {}
        for f in ahead:
            f.cancel()
        self._pool.shutdown(wait=True)
        with self._lock:
            handles, self._all = list(self._all), set()
            self._by_href = {}
            self._sort_cache.clear()
        for ds in handles:
            try:
                ds.close()
            except Exception:  # pragma: no cover - closing a broken handle
                pass

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
        if not fresh and href in handles:
            ds, g, has_georef = handles[href]
            if g == gen and not ds.closed and (has_georef or not georef):
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
        handles[href] = (ds, gen, not plain)
        with self._lock:
            self._all.add(ds)
            self._by_href.setdefault(href, []).append(ds)
        while len(handles) > self.max_handles:
            _, (old, _, _) = handles.popitem(last=False)
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
            futures_wait([ahead])
        with self._lock:
            items = self._by_href.pop(href, [])
        for ds in items:
            self._close_one(ds)

    def _close_one(self, ds) -> None:
        with self._lock:
            self._all.discard(ds)
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
        while attempt < limit:
            attempt += 1
            gen = self._path(href)[0]
            try:
                ds, gen = self._open(href, fresh=fresh, georef=georef)
                with self._env_ctx():
                    return fn(ds)
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
                    time.sleep(delay)
        raise self._error(href, kind, last, attempt)

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
                fut = self._pool.submit(self._meta_task, href)
            try:
                m = fut.result()
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
        futs = [self._pool.submit(self._read_runs, href, plan, runs, rows, cols, m, pad,
                                  window_fn, out, mask) for runs in chunks]
        error = None
        for f in futs:
            try:
                for idx, vals in f.result():     # only when out could not be preallocated
                    if out is None:
                        out = np.full(len(rows), fill, dtype=vals.dtype)
                    out[idx] = vals
            except AssetReadError as exc:
                error = error or exc
        if error is not None:
            raise error
        return out

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
            res = _block_sort(rows, cols, m.shape, m.block_shape)
            return res + _block_bounds(res[1])
        with self._sort_lock:          # one thread sorts, the others wait for its result
            with self._lock:
                hit = self._sort_cache.get(key)
            if hit is not None and hit[0] is rows and hit[1] is cols:
                return hit[2]
            res = _block_sort(rows, cols, m.shape, m.block_shape)
            res = res + _block_bounds(res[1])
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
        futs = [self._pool.submit(self._window_task, list(hrefs), m, runs, run_row, run_col0,
                                  run_col1, consume) for runs in chunks]
        error = None
        for f in futs:
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
            consume(k, r0, c0, win)

    def block_bytes(self, href: str, blocks: list[tuple[int, int]]) -> int:
        """Sum of the TIFF tile byte counts of ``blocks`` (``(row, col)``) of band 1."""
        def fn(ds):
            return sum(int(ds.block_size(1, r, c)) for r, c in blocks)
        return self._pool.submit(self._attempt, href, fn).result()


# --------------------------------------------------------------------------------------------
# scenes: normalisation and acquisition (solar day) keys, shared with observations


def _as_scene_list(scenes) -> list:
    """Scenes / iterable of Scene, pystac Item or item dict -> list of Scene."""
    from ..catalogs import Scene, Scenes, normalize_item

    if isinstance(scenes, Scenes):
        return list(scenes)
    if isinstance(scenes, (Scene, dict)) or hasattr(scenes, "to_dict") and hasattr(scenes,
                                                                                 "assets"):
        scenes = [scenes]
    out = []
    for s in scenes:
        out.append(s if isinstance(s, Scene) else normalize_item(s))
    return sorted(out, key=lambda s: (s.datetime, s.tile, s.id))


_lon_cache: dict[str, Any] = {}


def _grid_center_lon(grid: Grid) -> float:
    from pyproj import Transformer

    key = grid.crs.to_wkt()
    tr = _lon_cache.get(key)
    if tr is None:
        tr = _lon_cache[key] = Transformer.from_crs(grid.crs, 4326, always_xy=True)
    left, bottom, right, top = grid.bounds
    lon, _ = tr.transform((left + right) / 2, (bottom + top) / 2)
    return float(lon)


def _solar_day(scene):
    """Local solar date (tz-naive midnight ``pandas.Timestamp``) of a scene at its centre."""
    import pandas as pd

    band = next(iter(scene.bands.values()))
    lon = _grid_center_lon(band.grid)
    t = pd.Timestamp(scene.datetime)
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return (t + pd.Timedelta(hours=lon / 15.0)).normalize()


# --------------------------------------------------------------------------------------------
# load_cube


def _aoi_geometry(aoi):
    """Return (shapely geometry, pyproj CRS) for a GeoDataFrame/GeoSeries/geometry/bbox."""
    import geopandas as gpd
    import shapely
    from pyproj import CRS

    from ..errors import MissingCRSError

    if isinstance(aoi, (gpd.GeoDataFrame, gpd.GeoSeries)):
        if aoi.crs is None:
            raise MissingCRSError("aoi has no CRS; call aoi.set_crs(...) first")
        return shapely.union_all(np.asarray(aoi.geometry.values)), CRS.from_user_input(aoi.crs)
    if isinstance(aoi, (tuple, list)) and len(aoi) == 4:
        return shapely.box(*map(float, aoi)), CRS.from_epsg(4326)
    if hasattr(aoi, "geom_type"):
        crs = getattr(aoi, "crs", None)
        if crs is None:
            raise MissingCRSError(
                "a bare shapely geometry has no CRS; pass a GeoSeries with a CRS or a lon/lat "
                "bbox tuple (minx, miny, maxx, maxy)")
        return aoi, CRS.from_user_input(crs)
    raise TypeError(f"aoi must be a GeoDataFrame/GeoSeries or a lon/lat bbox, got {type(aoi)}")


def load_cube(scenes, aoi, *, bands, resolution: float = 10, crs=None,
              resampling: str = "nearest", scl_classes=None, dilate: int = 0,
              groupby: str = "solar_day", threads: int = 2, env: Mapping[str, Any] | None = None,
              dtype: str = "float32") -> Any:
    """Load scenes over ``aoi`` into an ``xarray.Dataset`` (time, y, x) of reflectance.

    Every band is warped (``rasterio.warp.reproject``, reading only the source window that
    covers the output) onto one output grid: the CRS of the most frequent scene CRS (or
    ``crs``), pixel size ``resolution`` metres, aligned to multiples of the resolution so that
    Sentinel-2 grids map 1:1 with ``nearest``. Scenes of several tiles/UTM zones of the same
    acquisition (``groupby="solar_day"``) are mosaicked, first valid pixel wins (scenes sorted
    by tile). Values are float32 reflectance ``DN * scale + offset`` with each band's own
    scale/offset; DN nodata becomes NaN. ``valid`` (uint8, 1 = clear) is derived from SCL
    with ``scl_classes`` (default ``indices.DEFAULT_SCL_INVALID``) and ``dilate`` pixels;
    reflectance is *not* masked by it. ``spatial_ref`` carries the CRS (rioxarray).

    Parameters
    ----------
    scenes : Scenes or iterable of Scene / pystac.Item / item dict
    aoi : GeoDataFrame, GeoSeries, or lon/lat bbox ``(minx, miny, maxx, maxy)``
    bands : sequence of str
        Canonical band names (``"B04"``, ``"B08"``, ``"SCL"``...).
    resolution : float
        Output pixel size in metres.
    crs : CRS-like, optional
        Output CRS (default: the most common scene CRS).
    resampling : str
        ``rasterio.enums.Resampling`` name for reflectance bands (SCL is always nearest).
    groupby : {"solar_day", "time"}
        Merge same-acquisition scenes (``solar_day``) or keep one slice per scene datetime.

    Returns
    -------
    xarray.Dataset
        One float32 variable per reflectance band (``SCL`` stays uint8), ``valid`` (uint8),
        coordinates ``time`` (UTC, tz-naive), ``y``, ``x`` (pixel centres) and ``spatial_ref``.
    """
    import rasterio
    import rioxarray  # noqa: F401,I001  (registers the .rio accessor)
    import xarray as xr
    from pyproj import CRS
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.warp import reproject, transform_geom

    scene_list = _as_scene_list(scenes)
    if not scene_list:
        raise CropYieldError("load_cube got no scenes; search again with a wider date range")
    bands = list(bands)
    geom, aoi_crs = _aoi_geometry(aoi)
    if crs is None:
        counts: dict[str, int] = {}
        for s in scene_list:
            counts[s.crs.to_wkt()] = counts.get(s.crs.to_wkt(), 0) + 1
        crs = CRS.from_wkt(max(counts, key=counts.get))
    crs = CRS.from_user_input(crs)
    import shapely

    g = shapely.geometry.shape(transform_geom(aoi_crs.to_wkt(), crs.to_wkt(),
                                              shapely.geometry.mapping(geom)))
    minx, miny, maxx, maxy = g.bounds
    res = float(resolution)
    x0, x1 = np.floor(minx / res) * res, np.ceil(maxx / res) * res
    y0, y1 = np.floor(miny / res) * res, np.ceil(maxy / res) * res
    width, height = max(int(round((x1 - x0) / res)), 1), max(int(round((y1 - y0) / res)), 1)
    dst_transform = from_origin(x0, y1, res, res)

    groups: dict[Any, list] = {}
    for s in scene_list:
        key = _solar_day(s) if groupby == "solar_day" else s.datetime
        groups.setdefault(key, []).append(s)
    keys = sorted(groups, key=lambda k: min(s.datetime for s in groups[k]))
    env_d = gdal_env(**dict(env or {}))
    if ("GDAL_HTTP_MULTIRANGE" not in dict(env or {})
            and env_d.get("GDAL_HTTP_MULTIRANGE") == DEFAULT_GDAL_ENV["GDAL_HTTP_MULTIRANGE"]):
        # warped windows span several block rows and only some columns: one GET from the
        # first to the last tile (SINGLE_GET) would also fetch the columns in between
        env_d["GDAL_HTTP_MULTIRANGE"] = "PARALLEL"
    if scl_classes is None:
        from ..indices import DEFAULT_SCL_INVALID as scl_classes  # noqa: N811
    reader = BlockReader(threads=threads, env=env_d)

    def warp(scene, bname):
        band = scene.bands.get(bname)
        if band is None:
            raise CropYieldError(f"scene {scene.id} has no band {bname!r}; "
                                 f"available: {sorted(scene.bands)}")
        is_scl = bname == "SCL"
        dst = np.zeros((height, width), dtype=np.uint16 if not is_scl else np.uint8)
        nod = band.nodata if band.nodata is not None else 0

        def fn(ds):
            reproject(rasterio.band(ds, 1), dst, src_nodata=nod, dst_nodata=0,
                      dst_transform=dst_transform, dst_crs=crs,
                      resampling=Resampling.nearest if is_scl else Resampling[resampling])
            return dst

        arr = reader._attempt(band.href, fn)
        if is_scl:
            return arr, band
        return arr, band

    try:
        data = {b: np.full((len(keys), height, width), np.nan, dtype=dtype) for b in bands
                if b != "SCL"}
        scl_out = np.zeros((len(keys), height, width), np.uint8)
        need_scl = True
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for t, k in enumerate(keys):
                for s in sorted(groups[k], key=lambda s: (s.tile, s.id)):
                    names = [b for b in bands if b != "SCL"] + (["SCL"] if need_scl and
                                                                 "SCL" in s.bands else [])
                    futs = {b: pool.submit(warp, s, b) for b in names}
                    for b, f in futs.items():
                        arr, band = f.result()
                        if b == "SCL":
                            sel = (scl_out[t] == 0) & (arr != 0)
                            scl_out[t][sel] = arr[sel]
                            continue
                        refl = arr.astype(np.float64) * band.scale + band.offset
                        hole = np.isnan(data[b][t]) & (arr != 0)
                        data[b][t][hole] = refl[hole].astype(dtype)
    finally:
        reader.close()
    from ..indices import invalid_mask

    valid = np.stack([~np.asarray(invalid_mask(scl_out[t], scl_classes, dilate)) for t in
                      range(len(keys))]).astype(np.uint8) if len(keys) else scl_out
    xs = x0 + (np.arange(width) + 0.5) * res
    ys = y1 - (np.arange(height) + 0.5) * res
    times = pd_times([min(s.datetime for s in groups[k]) for k in keys])
    ds = xr.Dataset({b: (("time", "y", "x"), v) for b, v in data.items()},
                    coords={"time": times, "y": ys, "x": xs})
    if "SCL" in bands:
        ds["SCL"] = (("time", "y", "x"), scl_out)
    ds["valid"] = (("time", "y", "x"), valid)
    ds["scene_ids"] = (("time",), np.array([",".join(sorted(s.id for s in groups[k]))
                                            for k in keys], dtype=object))
    for b in data:
        ds[b].attrs.update(units="1", long_name=f"{b} surface reflectance")
    ds["valid"].attrs.update(long_name="1 = clear pixel (SCL not in the invalid classes)")
    ds = ds.rio.write_crs(crs.to_wkt()).rio.write_transform(dst_transform)
    ds.attrs.update(reader.stats.as_dict() | {"resampling": resampling, "resolution": res})
    ds.attrs.pop("read_failures", None)
    return ds


def pd_times(ts):
    """tz-aware UTC timestamps -> tz-naive UTC ``datetime64[ns]`` array (xarray-friendly)."""
    import pandas as pd

    idx = pd.DatetimeIndex([pd.Timestamp(t) for t in ts])
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx.values.astype("datetime64[ns]")
