"""Field-centric reading of Cloud-Optimized GeoTIFF blocks, and ``load_cube``.

Public entry points
-------------------
:class:`BlockReader`
    ``with BlockReader(threads=2) as rd: values = rd.read(href, rows, cols)``: values of
    band 1 at the given pixels, reading only the blocks that hold them.
:func:`load_cube`
    Scenes over an area warped into an ``xarray.Dataset`` (time, y, x).
:func:`gdal_env`, :func:`configure_rio`, :func:`clear_gdal_cache`, :func:`classify_error`, :func:`plan_blocks`, :class:`BlockPlan`, :class:`ReadStats`
    GDAL options, cache clearing and failure classification; block plans; counters.

Modules: ``_blocks`` (the reader, its thread pool and per-thread handle cache), ``_plan``
(block plans and gather kernels with their NumPy twins), ``_gdal`` (GDAL options, ctypes
libgdal lookup for ``/vsicurl/`` cache clearing, error classification), ``_cube``
(``load_cube``), ``_scenes`` (scene normalisation and solar-day keys, shared with
:mod:`cropyield.observations`).

How it works
------------

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
* **Deadline.** With ``deadline`` (``read_deadline=`` of ``field_observations`` and
  ``load_cube``) no read starts or retries after it, handles opened near it get GDAL HTTP
  timeouts cut to the time left (GDAL keeps a handle's options from its open), and callers
  stop waiting for the reader threads ``DEADLINE_SLACK`` (1 s) after it: a stalled request
  cannot hold a call longer, and its late values are dropped.
"""

from ._blocks import BlockReader, ReadStats
from ._cube import load_cube
from ._gdal import (DEFAULT_GDAL_ENV, HEADER_BYTES, classify_error, clear_gdal_cache,
                    configure_rio, gdal_env)
from ._checksum import verify_checksum
from ._plan import BlockPlan, plan_blocks

# public in the single-file module although not in __all__: still importable from here
from ._cube import pd_times  # noqa: F401
from ._gdal import make_worker_plugin  # noqa: F401

# Private helpers that cropyield.observations imports from ``cropyield.read`` (kept here so
# that import keeps working; new code imports them from the submodule that defines them).
from ._plan import _counting_order, _runs_of  # noqa: F401
from ._scenes import _as_scene_list, _solar_day  # noqa: F401

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
    "verify_checksum",
]
