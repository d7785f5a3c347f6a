"""STAC API search of :func:`cropyield.catalogs.search_scenes`: catalog aliases and signing,
the client with capped retries, AOI and date parsing, paging guards, and the choice among
reprocessed duplicates.

Paging guards (:func:`_fetch_items`): more than ``max_pages`` pages, a page that only
repeats items already received, or a repeated ``next`` link raise
:class:`~cropyield.errors.CatalogError` instead of looping; items returned twice are kept
once. Truncated or malformed responses (:func:`_is_transient`) restart the search once. Entry points: :func:`_resolve_catalog`, :func:`_open_client`,
:func:`_fetch_items`, :func:`_dedupe`.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from .._log import logger, redact
from ..errors import CatalogError, ConfigError, MissingCRSError
from ._items import Scene
from ._offsets import _baseline_float

#: Catalog aliases -> (STAC API root URL, default collection).
CATALOGS: dict[str, tuple[str, str]] = {
    "earth-search": ("https://earth-search.aws.element84.com/v1", "sentinel-2-l2a"),
    "planetary-computer": ("https://planetarycomputer.microsoft.com/api/stac/v1", "sentinel-2-l2a"),
}


# --------------------------------------------------------------------------------------
# Signing (Planetary Computer)
# --------------------------------------------------------------------------------------


class PlanetaryComputerSigner:
    """Signs Planetary Computer asset hrefs with SAS tokens (the ``[pc]`` extra).

    ``signer(href)`` returns a signed URL; ``signer(href, refresh=True)`` drops cached tokens
    first (use after a 403 or when the ``se=`` expiry has passed). The package is imported on
    first use, so searching works without it.
    """

    def __call__(self, href: str, *, refresh: bool = False) -> str:
        from .._extras import require

        pc = require("planetary_computer", "pc", "signing Planetary Computer asset URLs")
        if refresh:
            cache = getattr(getattr(pc, "sas", None), "TOKEN_CACHE", None)
            clear = getattr(cache, "clear", None)
            if callable(clear):
                clear()
        return pc.sign(href)

    def __repr__(self) -> str:
        return "PlanetaryComputerSigner()"


# --------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------


def _retry(total: int, backoff_factor: float, max_retry_after: float,
           deadline: float | None = None):
    """urllib3 retries; ``deadline`` (a ``time.monotonic()`` value) ends them: no retry
    starts after it and no wait (backoff, ``Retry-After``) runs past it."""
    from urllib3.util.retry import Retry

    def left(value: float) -> float:
        if deadline is None:
            return value
        return min(value, max(deadline - time.monotonic(), 0.0))

    class _CappedRetry(Retry):
        """urllib3 Retry whose Retry-After waits are capped (a server cannot stall us)."""

        def get_retry_after(self, response):
            value = super().get_retry_after(response)
            return None if value is None else left(min(value, max_retry_after))

        def get_backoff_time(self) -> float:
            return left(super().get_backoff_time())

        def is_exhausted(self) -> bool:
            return super().is_exhausted() or (deadline is not None
                                              and time.monotonic() >= deadline)

    return _CappedRetry(
        total=total, connect=total, read=total, status=total, backoff_factor=backoff_factor,
        status_forcelist=[429, 500, 502, 503, 504], allowed_methods=None,
        respect_retry_after_header=True, raise_on_status=True,
    )


class _DeadlineExceeded(CatalogError):
    """The whole search ran past its ``deadline`` (seconds, all pages and retries)."""


def _deadline_io_class():
    """A pystac-client ``StacApiIO`` whose requests share one total deadline.

    ``requests``' timeout bounds each socket read only, so a server trickling one byte per
    second never times out, and urllib3 retries each start a full timeout again. This
    class streams each body in small chunks and checks the deadline (``time.monotonic()``
    value in :attr:`deadline`, ``None`` for none) between them; the per-read timeout is
    also cut to the time left, and the retries stop at the deadline (:func:`_retry`).
    The request itself runs in a daemon thread that is waited for until the deadline
    only (:func:`cropyield._deadline.call_with_deadline`), so neither a server that never
    answers nor one that stalls in mid-body holds the search past it. An overrun raises
    :class:`_DeadlineExceeded` (a :class:`~cropyield.errors.CatalogError`).
    """
    import threading

    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO
    from requests import Request

    from .._deadline import call_with_deadline

    class _DeadlineStacApiIO(StacApiIO):
        deadline: float | None = None
        deadline_s: float | None = None

        def _overrun(self, href: str) -> _DeadlineExceeded:
            return _DeadlineExceeded(
                f"the STAC search did not finish within its deadline of {self.deadline_s:g} s "
                f"(while reading {redact(str(href))}); the server is too slow or stalled. "
                "Raise deadline= (seconds for the whole search, None for no limit), narrow "
                "the search (smaller AOI or date range), or try again later"
            )

        def _left(self, href: str, cancel: threading.Event | None = None) -> float | None:
            if self.deadline is None:
                return None
            left = self.deadline - time.monotonic()
            if left <= 0 or (cancel is not None and cancel.is_set()):
                raise self._overrun(href)
            return left

        def request(self, href, method=None, headers=None, parameters=None) -> str:
            left = self._left(href)
            if left is None:
                return self._request(href, method, headers, parameters)
            cancel = threading.Event()
            try:
                return call_with_deadline(
                    lambda: self._request(href, method, headers, parameters, cancel),
                    left, name="cropyield-stac-request", cancel=cancel)
            except TimeoutError:
                raise self._overrun(href) from None

        def _request(self, href, method=None, headers=None, parameters=None,
                     cancel: threading.Event | None = None) -> str:
            method = (method or "GET").upper()
            if method in ("POST", "PUT", "PATCH"):
                req = Request(method=method, url=href, headers=headers, json=parameters)
            else:
                req = Request(method=method, url=href, headers=headers,
                              params=dict(parameters or {}))
            left = self._left(href)
            timeout = self.timeout
            if left is not None:
                per_read: float = (timeout if isinstance(timeout, (int, float)) else
                                   (max(t for t in timeout if t is not None) if timeout
                                    and any(t is not None for t in timeout) else left))
                timeout = max(0.05, min(float(per_read), left))
            try:
                modified = self._req_modifier(req) if self._req_modifier else None
                prepped = self.session.prepare_request(modified or req)
                kw = self.session.merge_environment_settings(prepped.url or href, proxies={},
                                                             stream=True, verify=True, cert=None)
                kw["stream"] = True
                resp = self.session.send(prepped, timeout=timeout, **kw)
            except Exception as err:
                raise APIError(str(err)) from None
            try:
                if not 200 <= resp.status_code < 300:
                    raise APIError.from_response(resp)
                chunks = []
                raw = resp.raw
                try:
                    if hasattr(raw, "read1"):  # urllib3 >= 2: at most one socket read each
                        while True:
                            chunk = raw.read1(1 << 16, decode_content=True)
                            if not chunk:
                                break
                            chunks.append(chunk)
                            self._left(href, cancel)
                    else:  # pragma: no cover - urllib3 1.x
                        for chunk in resp.iter_content(chunk_size=1 << 10):
                            chunks.append(chunk)
                            self._left(href, cancel)
                except CatalogError:
                    raise
                except Exception as err:
                    raise APIError(str(err)) from None
                try:
                    return b"".join(chunks).decode("utf-8")
                except UnicodeDecodeError as err:
                    raise APIError(str(err)) from None
            finally:
                resp.close()

    return _DeadlineStacApiIO


def _open_client(url: str, *, timeout: float, retries: int, backoff_factor: float,
                 max_retry_after: float, headers: Mapping[str, str] | None = None,
                 deadline: float | None = None, deadline_s: float | None = None):
    """A pystac-client Client with capped retries; ``deadline`` is the seconds left of the
    search's total deadline (``deadline_s``, for messages)."""
    from pystac_client import Client

    t_deadline = None if deadline is None else time.monotonic() + float(deadline)
    stac_io = _deadline_io_class()(max_retries=_retry(retries, backoff_factor, max_retry_after,
                                                      t_deadline))
    if deadline is not None and t_deadline is not None:  # both set, or neither
        stac_io.deadline_s = float(deadline if deadline_s is None else deadline_s)
        stac_io.deadline = t_deadline
    # timeout must go to Client.open: it resets the StacApiIO's own timeout (offline-stac.md §5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NoConformsTo etc.: we check conformance ourselves
        return Client.open(url, stac_io=stac_io, timeout=timeout, headers=dict(headers or {}))


def _resolve_catalog(catalog, client, collection):
    """(client or None, url, default collection, signer)."""
    from pystac_client import Client

    if client is None and isinstance(catalog, Client):
        client = catalog
    if client is not None:
        url = client.get_self_href() or "<pystac_client.Client>"
        signer = PlanetaryComputerSigner() if "planetarycomputer" in url else None
        return client, url, collection or "sentinel-2-l2a", signer
    if not isinstance(catalog, str):
        raise ConfigError(
            f"catalog must be 'earth-search', 'planetary-computer', a STAC API URL or a "
            f"pystac_client.Client, got {type(catalog).__name__}"
        )
    if catalog in CATALOGS:
        url, default = CATALOGS[catalog]
        signer = PlanetaryComputerSigner() if catalog == "planetary-computer" else None
        return None, url, collection or default, signer
    if re.match(r"^https?://", catalog):
        signer = PlanetaryComputerSigner() if "planetarycomputer" in catalog else None
        return None, catalog, collection or "sentinel-2-l2a", signer
    raise ConfigError(
        f"unknown catalog {catalog!r}; use one of {sorted(CATALOGS)}, a STAC API URL "
        "(http:// or https://) or a pystac_client.Client"
    )


def _aoi_to_query(aoi) -> dict[str, Any]:
    """``{"bbox": [...]}`` or ``{"intersects": geojson}`` in EPSG:4326 lon/lat."""
    import shapely
    import shapely.geometry as sg
    from shapely.geometry.base import BaseGeometry

    try:
        import geopandas as gpd
    except ImportError:  # pragma: no cover - geopandas is a core dependency
        gpd = None
    geom = None
    if gpd is not None and isinstance(aoi, (gpd.GeoDataFrame, gpd.GeoSeries)):
        if aoi.crs is None:
            raise MissingCRSError(
                "the AOI has no CRS; set one with aoi.set_crs('EPSG:4326') (or the CRS its "
                "coordinates are really in)"
            )
        if len(aoi) == 0:
            raise ConfigError("the AOI is empty (no geometries)")
        gs = aoi.geometry if isinstance(aoi, gpd.GeoDataFrame) else aoi
        gs = gs[~(gs.isna() | gs.is_empty)]
        if len(gs) == 0:
            raise ConfigError("the AOI has only empty geometries")
        geom = shapely.union_all(gs.to_crs(4326).values)
        if len(gs) > 1:  # many fields: their convex hull keeps the request small
            geom = geom.convex_hull
    elif isinstance(aoi, BaseGeometry):
        raise MissingCRSError(
            "a bare shapely geometry has no CRS; pass (geometry, crs), e.g. (geom, 'EPSG:4326'), "
            "or a GeoSeries/GeoDataFrame with a CRS"
        )
    elif isinstance(aoi, tuple) and len(aoi) == 2 and isinstance(aoi[0], BaseGeometry):
        g, crs = aoi
        if crs is None:
            raise MissingCRSError("the AOI's CRS is None; pass (geometry, 'EPSG:xxxx')")
        geom = gpd.GeoSeries([g], crs=crs).to_crs(4326).iloc[0]
    elif isinstance(aoi, Sequence) and not isinstance(aoi, str) and len(aoi) == 4:
        try:
            w, s, e, n = (float(v) for v in aoi)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"a bbox AOI must be 4 numbers (lon_min, lat_min, lon_max, lat_max), "
                              f"got {aoi!r}") from exc
        if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
            raise ConfigError(f"bbox {aoi!r} is outside lon [-180, 180] / lat [-90, 90]; a bbox "
                              "is (lon_min, lat_min, lon_max, lat_max) in degrees (EPSG:4326)")
        if w > e or s > n:
            raise ConfigError(f"bbox {aoi!r} has min > max; order is (lon_min, lat_min, lon_max, "
                              "lat_max) (antimeridian-crossing boxes are not supported)")
        return {"bbox": [w, s, e, n]}
    else:
        raise ConfigError(
            f"cannot use a {type(aoi).__name__} as AOI; pass a GeoDataFrame/GeoSeries with a CRS, "
            "(shapely geometry, crs), or a lon/lat bbox (lon_min, lat_min, lon_max, lat_max)"
        )
    if geom is None or geom.is_empty:
        raise ConfigError("the AOI geometry is empty")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    return {"intersects": sg.mapping(geom)}


def _parse_when(value, *, end: bool) -> pd.Timestamp:
    import datetime as _dt

    date_only = isinstance(value, _dt.date) and not isinstance(value, _dt.datetime)
    if isinstance(value, str):
        date_only = bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()))
    try:
        t = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot read {value!r} as a date or datetime") from exc
    if pd.isna(t):
        raise ConfigError(f"{'end' if end else 'start'} date is missing")
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    if end and date_only:  # an end date includes the whole day
        t = t + pd.Timedelta(days=1) - pd.Timedelta(milliseconds=1)
    return t


def _iso(t: pd.Timestamp) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _conforms(client, name: str) -> bool:
    from pystac_client.conformance import ConformanceClasses

    try:
        return bool(client.conforms_to(getattr(ConformanceClasses, name)))
    except Exception:  # pragma: no cover - odd landing pages
        return False


def _next_signature(page: Mapping[str, Any]) -> str | None:
    for ln in page.get("links", []) or []:
        if ln.get("rel") == "next":
            return json.dumps({"href": ln.get("href"), "method": ln.get("method", "GET"),
                               "body": ln.get("body")}, sort_keys=True, default=str)
    return None


def _pages(search, deadline: float | None, deadline_s: float | None):
    """The search's result pages as dicts, following ``next`` links through empty pages.

    pystac-client stops at the first page without features even when it has a ``next``
    link, silently losing the items of later pages; this follows the link (the page count
    is bounded by :func:`_fetch_items`'s ``max_pages`` and its repeated-link guard).
    """
    from pystac.link import Link

    stac_io = getattr(search, "_stac_io", None)
    if stac_io is None or not hasattr(stac_io, "read_json"):  # pragma: no cover - old clients
        yield from search.pages_as_dicts()
        return
    modify: Callable[[Any, Any], Any] | None
    try:
        from pystac_client._utils import call_modifier as modify
    except ImportError:  # pragma: no cover
        modify = None
    params = search.get_parameters()
    page = stac_io.read_json(search.url, method=search.method, parameters=params)
    while True:
        if not isinstance(page, Mapping):
            raise CatalogError(f"the STAC search returned a {type(page).__name__} instead of a "
                               "FeatureCollection page; check the catalog URL")
        if modify is not None:
            modify(getattr(search, "modifier", None), page)
        yield page
        nxt = next((ln for ln in page.get("links", []) or []
                    if isinstance(ln, Mapping) and ln.get("rel") == "next"), None)
        if nxt is None:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise _DeadlineExceeded(
                f"the STAC search did not finish within its deadline of {deadline_s:g} s; "
                "raise deadline= (seconds, None for no limit) or narrow the search"
            )
        page = stac_io.read_json(Link.from_dict(dict(nxt)), parameters=params)


def _fetch_items(search, *, max_items: int | None, max_pages: int, where: str,
                 deadline: float | None = None, deadline_s: float | None = None
                 ) -> list[dict[str, Any]]:
    """All item dicts of a search, page by page, with pagination guards.

    Pages without features are followed when they have a ``next`` link (bounded by
    ``max_pages``); a feature that is not an object or has no ``id`` raises
    :class:`~cropyield.errors.CatalogError` (two id-less items must not collapse into one).
    ``deadline`` is a ``time.monotonic()`` value checked between pages.
    """
    items: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    seen_next: set[str] = set()
    n_pages = 0
    n_empty = 0
    for page in _pages(search, deadline, deadline_s):
        n_pages += 1
        if n_pages > max_pages:
            raise CatalogError(f"{where}: more than {max_pages} result pages; narrow the search "
                               "(smaller AOI or date range) or raise max_pages")
        feats = page.get("features", []) or []
        if not isinstance(feats, list):
            raise CatalogError(f"{where}: page {n_pages} has 'features' of type "
                               f"{type(feats).__name__}, not a list; the server is not a STAC API")
        for k, f in enumerate(feats):
            if not isinstance(f, Mapping):
                raise CatalogError(
                    f"{where}: feature {k} of page {n_pages} is a {type(f).__name__}, not a "
                    "STAC item object; the catalog answered malformed JSON. Report it to the "
                    "catalog's maintainers or use another catalog"
                )
            fid = f.get("id")
            if fid is None or (isinstance(fid, str) and not fid.strip()) or \
                    not isinstance(fid, (str, int)):
                raise CatalogError(
                    f"{where}: feature {k} of page {n_pages} has no usable 'id' ({fid!r}); "
                    "STAC items must have a unique string id, and items without one cannot be "
                    "told apart (they would collapse into one). Fix the catalog's items"
                )
        if not feats:
            n_empty += 1
            if _next_signature(page) is not None:
                logger.debug("%s: page %d has no features but a 'next' link; following it",
                             where, n_pages)
        ids = [str(f.get("id")) for f in feats]
        if ids and all(i in seen_ids for i in ids):
            raise CatalogError(f"{where}: page {n_pages} repeats items already received "
                               f"({ids[:3]}...); the server's pagination is broken")
        for f, i in zip(feats, ids):
            if i in seen_ids:
                logger.debug("%s: item %s returned twice; kept once", where, i)
                continue
            seen_ids.add(i)
            items.append(f)
            if max_items is not None and len(items) >= max_items:
                return items
        sig = _next_signature(page)
        if sig is not None:
            if sig in seen_next:
                raise CatalogError(f"{where}: the server repeated a 'next' link on page "
                                   f"{n_pages}; its pagination loops")
            seen_next.add(sig)
    if n_empty and items:
        logger.info("%s: followed %d empty page(s) with a 'next' link", where, n_empty)
    return items


def _is_transient(exc: BaseException) -> bool:
    """Worth restarting the whole search: truncated or malformed bodies, dropped connections."""
    from pystac_client.exceptions import APIError

    if isinstance(exc, ValueError):  # json.JSONDecodeError
        return True
    if isinstance(exc, APIError) and getattr(exc, "status_code", None) is None:
        text = str(exc).lower()
        if "timed out" in text or "max retries exceeded" in text:
            return False  # already retried by urllib3 / a stall: do not multiply the wait
        return any(s in text for s in ("incompleteread", "connection broken", "chunked",
                                       "connection aborted", "remotedisconnected",
                                       "connection reset", "protocolerror"))
    return False


def _rank(scene: Scene) -> tuple:
    """Newest processing first: baseline, then generation/created time, then sequence."""
    p = scene.properties
    baseline = _baseline_float(scene.processing_baseline) or -1.0
    gen = p.get("s2:generation_time") or p.get("created") or p.get("updated")
    try:
        gen_t = pd.Timestamp(gen).value if gen else -1
    except (TypeError, ValueError):
        gen_t = -1
    seq = p.get("s2:sequence")
    if seq is None:
        m = re.search(r"_(\d+)_L2A$", scene.id)
        seq = m.group(1) if m else -1
    try:
        seq_i = int(seq)
    except (TypeError, ValueError):
        seq_i = -1
    return (baseline, gen_t, seq_i, scene.id)


def _dedupe(scenes: list[Scene], tolerance_s: float = 60.0
            ) -> tuple[list[Scene], dict[str, str]]:
    """Drop reprocessed duplicates: same tile and acquisition time (within ``tolerance_s``)."""
    by_tile: dict[tuple[str, str], list[Scene]] = {}
    for s in scenes:
        by_tile.setdefault((s.collection, s.tile), []).append(s)
    kept: list[Scene] = []
    dropped: dict[str, str] = {}
    for group in by_tile.values():
        group.sort(key=lambda s: s.datetime)
        clusters: list[list[Scene]] = []
        for s in group:
            if clusters and (s.datetime - clusters[-1][0].datetime).total_seconds() <= tolerance_s:
                clusters[-1].append(s)
            else:
                clusters.append([s])
        for c in clusters:
            best = max(c, key=_rank)
            kept.append(best)
            for s in c:
                if s is not best:
                    dropped[s.id] = best.id
    return kept, dropped


def _bounds_of(geojson: Mapping[str, Any]) -> list[float]:
    import shapely.geometry as sg

    return [round(v, 6) for v in sg.shape(geojson).bounds]
