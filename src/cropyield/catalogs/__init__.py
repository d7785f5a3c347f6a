"""Search STAC catalogs for Sentinel-2 L2A scenes and normalise their items.

Entry point: :func:`search_scenes` (below), which returns :class:`Scenes`;
:func:`normalize_item` turns one item into a :class:`Scene`. Modules: ``_search`` (client,
retries, paging guards, duplicates), ``_items`` (the Scene model and item normalisation),
``_offsets`` (processing baseline -> BOA offset rules).

Supported layouts (collection id -> asset keys):

* Earth Search v1 ``sentinel-2-l2a`` and ``sentinel-2-c1-l2a``: ``blue green red rededge1
  rededge2 rededge3 nir nir08 swir16 swir22 scl`` (``*-jp2``, ``visual``, thumbnails ignored);
* Microsoft Planetary Computer ``sentinel-2-l2a``: ``B02 ... B12 B8A SCL``.

Radiometry: ``reflectance = DN * scale + offset``. The offset comes from ``raster:bands``
when the item states it, else from the processing baseline (>= 04.00: -0.1, earlier: 0),
else it is 0 with ``offset_source="none"``; an explicit override wins over both.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from typing import Any

from .._log import logger, redact, redact_url
from ..errors import CatalogError, ConfigError, NoScenesError, UnknownCollectionError
from ._items import CANONICAL_BANDS, SUPPORTED_COLLECTIONS, Band, Scene, Scenes, normalize_item
from ._offsets import baseline_offset
from ._search import (CATALOGS, PlanetaryComputerSigner, _aoi_to_query, _bounds_of,
                      _DeadlineExceeded,
                      _conforms, _dedupe, _fetch_items, _is_transient, _iso, _open_client,
                      _parse_when, _resolve_catalog)

__all__ = [
    "Band",
    "Scene",
    "Scenes",
    "search_scenes",
    "normalize_item",
    "CANONICAL_BANDS",
    "CATALOGS",
    "SUPPORTED_COLLECTIONS",
    "baseline_offset",
    "PlanetaryComputerSigner",
]


def search_scenes(aoi, start, end, *, catalog="earth-search", collection: str | None = None,
                  max_cloud: float | None = None, max_items: int | None = None, client=None,
                  timeout: float = 30.0, retries: int = 5, backoff_factor: float = 0.5,
                  max_retry_after: float = 60.0, limit: int = 100, max_pages: int = 1000,
                  offset_override: float | Mapping[str, float] | None = None,
                  dedupe: bool = True, headers: Mapping[str, str] | None = None,
                  deadline: float | None = 300.0) -> Scenes:
    """Find Sentinel-2 L2A scenes over an area and period in a STAC API.

    Parameters
    ----------
    aoi : GeoDataFrame, GeoSeries, (shapely geometry, crs) or tuple of 4 floats
        Area of interest in any CRS (reprojected to EPSG:4326; several geometries are sent as
        their convex hull), or a lon/lat bbox ``(lon_min, lat_min, lon_max, lat_max)`` in
        degrees. A bare shapely geometry is refused (its CRS would be a guess).
    start, end : str, date, datetime or Timestamp
        Period, inclusive; naive values are UTC, and a date-only ``end`` includes that day.
    catalog : str or pystac_client.Client
        ``"earth-search"`` (Earth Search v1, default collection ``sentinel-2-l2a``;
        ``sentinel-2-c1-l2a`` also supported), ``"planetary-computer"`` (assets need signing:
        :attr:`Scenes.signer`, ``[pc]`` extra), any STAC API URL, or an open Client.
    collection : str, optional
        Collection id (default ``sentinel-2-l2a``).
    max_cloud : float, optional
        Keep scenes with tile-level ``eo:cloud_cover`` <= this (percent). Sent to the server
        (``filter`` or ``query``) only when it advertises the conformance class, and always
        re-checked here; scenes without ``eo:cloud_cover`` are kept.
    max_items : int, optional
        Stop after this many items (before de-duplication).
    client : pystac_client.Client, optional
        Use this client (its own timeouts/retries) instead of opening one.
    timeout : float
        Seconds per socket operation (connect, and each read), not per request: a server
        trickling a byte at a time never trips it. ``deadline`` bounds the whole search.
    retries, backoff_factor, max_retry_after : int, float, float
        Retries on connection errors, timeouts and 429/5xx with exponential backoff; a
        ``Retry-After`` header is honoured up to ``max_retry_after`` seconds.
    limit : int
        Page size asked of the server.
    max_pages : int
        Pagination guard.
    offset_override : float or mapping, optional
        Passed to :func:`normalize_item`.
    dedupe : bool
        Drop reprocessed duplicates (same tile and acquisition time), keeping the newest
        processing (highest baseline, then latest ``s2:generation_time``/``created``, then
        highest sequence). Dropped ids go to ``lineage["duplicates"]``.
    headers : mapping, optional
        Extra HTTP headers (e.g. an API key); never logged.
    deadline : float or None
        Seconds for the whole search -- landing page, every result page, retries and the
        restart -- after which it fails with :class:`~cropyield.errors.CatalogError` (no
        partial result). Strict: each request runs in a daemon thread that is waited for
        until the deadline only, and retries stop at it, so a server that never answers or
        stalls in mid-body ends the search by the deadline (+ about 0.1 s); the abandoned
        request ends in the background by its socket timeout. Default 300 s; ``None`` for
        no limit. With a user ``client=`` it is checked between pages only (that client's
        own timeouts bound each request).

    Returns
    -------
    Scenes
        Sorted by time; ``.lineage`` records the catalog (redacted), collection, query,
        ``n_matched``, the cloud filter and the duplicates; ``.signer`` signs hrefs for
        catalogs that need it.

    Raises
    ------
    CatalogError
        The catalog failed after retries, timed out, ran past ``deadline``, returned
        malformed JSON or items (a feature that is not an object or has no ``id``) or looping
        pagination. URLs in the message are redacted. Pages without features but with a
        ``next`` link are followed (up to ``max_pages``).
    NoScenesError
        Nothing matched; the message lists the query.
    MissingCRSError
        The AOI has no CRS.
    UnknownCollectionError
        The collection's band layout is not supported.
    ConfigError
        Invalid arguments (bbox out of range, start after end, unknown catalog name).

    Examples
    --------
    Needs the internet (Earth Search); ``cropyield serve`` gives an offline catalog.

    >>> import cropyield as cy
    >>> scenes = cy.search_scenes((115.5, 34.3, 115.8, 34.6), "2024-10-01", "2025-06-30",
    ...                           max_cloud=60)  # doctest: +SKIP
    >>> len(scenes), scenes.lineage["n_matched"]  # doctest: +SKIP
    """
    from pystac_client.exceptions import APIError

    spatial = _aoi_to_query(aoi)
    t0, t1 = _parse_when(start, end=False), _parse_when(end, end=True)
    if t0 > t1:
        raise ConfigError(f"start {t0} is after end {t1}")
    if max_cloud is not None and not (0 <= float(max_cloud) <= 100):
        raise ConfigError(f"max_cloud is a percentage in [0, 100], got {max_cloud!r}")
    if max_items is not None and int(max_items) < 1:
        raise ConfigError(f"max_items must be >= 1, got {max_items!r}")
    client, url, collection, signer = _resolve_catalog(catalog, client, collection)
    if collection not in SUPPORTED_COLLECTIONS:
        raise UnknownCollectionError(
            f"collection {collection!r} is not supported; use one of "
            f"{sorted(SUPPORTED_COLLECTIONS)}"
        )
    if deadline is not None and not (float(deadline) > 0):
        raise ConfigError(f"deadline is seconds > 0 (or None for no limit), got {deadline!r}")
    t_deadline = None if deadline is None else time.monotonic() + float(deadline)
    user_client = client is not None
    safe_url = redact_url(url)
    where = f"STAC search at {safe_url}"
    query_desc: dict[str, Any] = {
        **({"bbox": spatial["bbox"]} if "bbox" in spatial else
           {"intersects_bounds": _bounds_of(spatial["intersects"])}),
        "datetime": f"{_iso(t0)}/{_iso(t1)}", "collection": collection,
        "max_cloud": max_cloud, "max_items": max_items,
    }
    errors = (APIError, ValueError, OSError)
    attempts = 2  # one restart for truncated/malformed responses
    items: list[dict[str, Any]] = []
    server_filter = None
    for attempt in range(1, attempts + 1):
        try:
            if not user_client:  # a fresh client (and connection pool) per attempt
                client = _open_client(url, timeout=timeout, retries=retries,
                                      backoff_factor=backoff_factor,
                                      max_retry_after=max_retry_after, headers=headers,
                                      deadline=None if t_deadline is None
                                      else max(t_deadline - time.monotonic(), 1e-3),
                                      deadline_s=deadline)
            kwargs: dict[str, Any] = dict(
                collections=[collection], datetime=f"{_iso(t0)}/{_iso(t1)}",
                limit=int(min(limit, max_items) if max_items else limit), max_items=max_items,
                **spatial,
            )
            server_filter = None
            if max_cloud is not None:
                if _conforms(client, "FILTER"):
                    kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"},
                                                             float(max_cloud)]}
                    kwargs["filter_lang"] = "cql2-json"
                    server_filter = "filter"
                elif _conforms(client, "QUERY"):
                    kwargs["query"] = {"eo:cloud_cover": {"lte": float(max_cloud)}}
                    server_filter = "query"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                search = client.search(**kwargs)
                items = _fetch_items(search, max_items=max_items, max_pages=max_pages,
                                     where=where, deadline=t_deadline, deadline_s=deadline)
            break
        except CatalogError as exc:
            if isinstance(exc, _DeadlineExceeded):
                raise CatalogError(f"{where}: {exc}") from None
            raise
        except errors as exc:
            if t_deadline is not None and time.monotonic() >= t_deadline:
                raise CatalogError(
                    f"{where} did not finish within its deadline of {deadline:g} s (last error "
                    f"{type(exc).__name__}: {redact(str(exc))[:200]}). Raise deadline= (seconds "
                    "for the whole search, None for no limit), narrow the search, or try again "
                    "later"
                ) from None
            if attempt < attempts and _is_transient(exc):
                logger.warning("%s failed (%s); retrying the search once", where,
                               type(exc).__name__)
                continue
            raise CatalogError(
                f"{where} failed ({type(exc).__name__}): {redact(str(exc))[:500]}. Check the "
                "URL and your connection, raise timeout=/retries=, or try again later"
            ) from None
    n_matched = len(items)
    logger.info("%s: %d items for %s", where, n_matched, query_desc)

    scenes = [normalize_item(it, offset_override=offset_override) for it in items]
    for s in scenes:
        if s.collection and s.collection != collection:
            raise CatalogError(f"{where} returned item {s.id} of collection {s.collection!r} "
                               f"for a search of {collection!r}")
    n_before = len(scenes)
    if max_cloud is not None:
        scenes = [s for s in scenes if s.cloud_cover is None or s.cloud_cover <= float(max_cloud)]
    n_cloud = n_before - len(scenes)
    dropped: dict[str, str] = {}
    if dedupe:
        scenes, dropped = _dedupe(scenes)
        if dropped:
            logger.info("%s: dropped %d reprocessed duplicates", where, len(dropped))
    lineage = {
        "catalog": safe_url, "collection": collection, "query": query_desc,
        "server_filter": server_filter, "n_matched": n_matched, "n_cloud_filtered": n_cloud,
        "duplicates": sorted(dropped), "duplicate_of": dict(sorted(dropped.items())),
        "n_scenes": len(scenes),
    }
    if not scenes:
        where_aoi = (f"bbox {spatial['bbox']}" if "bbox" in spatial
                     else f"AOI bounds {query_desc['intersects_bounds']}")
        raise NoScenesError(
            f"no Sentinel-2 scene found: catalog {safe_url}, collection {collection}, "
            f"datetime {query_desc['datetime']}, {where_aoi}, max_cloud {max_cloud}; "
            f"{n_matched} items matched before the cloud filter. Widen the dates, the area or "
            "max_cloud"
        )
    return Scenes(scenes, lineage=lineage, signer=signer)
