"""GDAL layer of the reader: configuration options, ``/vsicurl/`` cache clearing through the
libgdal that rasterio loaded (ctypes), failure classification, and plain local opens.

Public entry points
-------------------
:func:`gdal_env`, :func:`configure_rio`, :func:`make_worker_plugin`, :data:`DEFAULT_GDAL_ENV`
    The GDAL options every read uses: defaults, process-wide settings (optionally pushed to
    dask workers), per-call overrides. Nothing is written to ``os.environ``.
:func:`clear_gdal_cache`
    Forget GDAL's cached size/existence/data of a URL (``VSICurlPartialClearCache``) before
    a retry, so a cached failure is never replayed.
:func:`classify_error`
    Sort a GDAL/rasterio failure into not found / auth / transient / corrupt.
:data:`HEADER_BYTES`
    Bytes counted per handle open (GDAL's first header read).

The per-thread handle cache itself (open, LRU, release) is part of
:class:`~cropyield.read.BlockReader` (:mod:`cropyield.read._blocks`), which owns the threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_GDAL_ENV",
    "HEADER_BYTES",
    "gdal_env",
    "configure_rio",
    "make_worker_plugin",
    "clear_gdal_cache",
    "classify_error",
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

    plugin_base: Any = distributed.WorkerPlugin

    class GDALEnvPlugin(plugin_base):
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


def _configured_options() -> dict[str, Any]:
    """A copy of the options set through :func:`configure_rio` (process-wide)."""
    with _configured_lock:
        return dict(_configured)


# --------------------------------------------------------------------------------------------
# rasterio logs and plain local opens


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
