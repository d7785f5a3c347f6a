"""Normalised Sentinel-2 L2A items: :func:`normalize_item` turns a STAC item of a supported
collection into a :class:`Scene` (canonical bands, grids, radiometry).

Entry point: :func:`normalize_item`; :class:`Scenes` (what
:func:`cropyield.catalogs.search_scenes` returns) is defined below it. Supported layouts
(collection id -> asset keys):

* Earth Search v1 ``sentinel-2-l2a`` and ``sentinel-2-c1-l2a``: ``blue green red rededge1
  rededge2 rededge3 nir nir08 swir16 swir22 scl`` (``*-jp2``, ``visual``, thumbnails ignored);
* Microsoft Planetary Computer ``sentinel-2-l2a``: ``B02 ... B12 B8A SCL``.

Offsets follow the rules of :mod:`._offsets`.
"""

from __future__ import annotations

import functools
import json
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import pandas as pd
from affine import Affine
from pyproj import CRS

from .._geo import Grid
from .._log import _is_secret, logger, redact
from ..errors import (CatalogError, OffsetInconsistentWarning,
                      UnknownCollectionError)
from ._offsets import _DEFAULT_SCALE, _band_offset, _baseline_of, _offset_rule, _offset_source

#: Canonical band names, whatever the catalog calls them.
CANONICAL_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "SCL")

#: Earth Search v1 asset keys -> canonical names.
_EARTH_SEARCH_KEYS = {
    "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
    "rededge3": "B07", "nir": "B08", "nir08": "B8A", "swir16": "B11", "swir22": "B12",
    "scl": "SCL",
}
#: Planetary Computer asset keys -> canonical names (already canonical).
_PC_KEYS = {b: b for b in CANONICAL_BANDS}

#: Collections whose band layout is known: id -> the asset-key layouts accepted.
SUPPORTED_COLLECTIONS: dict[str, tuple[dict[str, str], ...]] = {
    "sentinel-2-l2a": (_EARTH_SEARCH_KEYS, _PC_KEYS),   # Earth Search v1 and Planetary Computer
    "sentinel-2-c1-l2a": (_EARTH_SEARCH_KEYS,),         # Earth Search v1, collection 1
}

#: Native resolution of each band (m), used when an asset states none.
_NATIVE_RES = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20,
               "B8A": 20, "B11": 20, "B12": 20, "SCL": 20}
_TILE_RE = re.compile(r"(?:^|_)T?(\d{1,2}[C-HJ-NP-X][A-HJ-NP-Z]{2})(?:_|$)")


def normalize_item(item, *, offset_override: float | Mapping[str, float] | None = None,
                   warn: bool = True) -> Scene:
    """Normalise one Sentinel-2 L2A STAC item into a :class:`Scene`.

    Parameters
    ----------
    item : pystac.Item or dict
        An item of a supported collection (see :data:`SUPPORTED_COLLECTIONS`). Relative asset
        hrefs are resolved against the item's ``self`` link; signing query parameters
        (``sig``, ``se``, ``X-Amz-*``, ``X-Goog-*``...) are removed, so hrefs are always unsigned.
    offset_override : float or mapping of band -> float, optional
        Reflectance offset to use instead of the metadata (``offset_source="override"``); a
        mapping overrides the bands it names only.
    warn : bool
        Emit :class:`~cropyield.errors.OffsetInconsistentWarning` when the ``raster:bands``
        offset disagrees with the baseline rule (the flag ``OFFSET_INCONSISTENT`` is set
        either way).

    Returns
    -------
    Scene
        Canonical bands ``B02 ... B12, B8A, SCL`` (those present), each with unsigned href,
        resolution (m), grid, nodata (DN, default 0), ``scale`` and ``offset`` such that
        reflectance = DN x scale + offset (SCL: 1 and 0), and ``offset_source`` in
        ``{"raster:bands", "baseline", "acquisition_date", "none", "override"}``
        (``acquisition_date``: no baseline stated anywhere, the baseline-04.00 rule applied
        by date, see :data:`cropyield.catalogs._offsets.OFFSET_START`).

    Raises
    ------
    UnknownCollectionError
        Collection not supported (e.g. ``sentinel-2-l1c``, ``landsat-c2-l2``), or no known
        band asset.
    CatalogError
        Malformed item (no datetime, no tile, no projection metadata).
    """
    d, pyitem = _as_dict(item)
    raw_id = d.get("id")
    if raw_id is None or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
        raise CatalogError(
            f"a STAC item has no usable 'id' ({raw_id!r}); items must have a unique string id "
            "(without one two items cannot be told apart). Fix the item"
        )
    item_id = str(raw_id)
    if not isinstance(d.get("properties") or {}, Mapping):
        raise CatalogError(f"item {item_id!r}: 'properties' is a "
                           f"{type(d.get('properties')).__name__}, not an object; fix the item")
    props: dict[str, Any] = dict(d.get("properties") or {})
    collection = d.get("collection")
    assets: Mapping[str, Any] = d.get("assets") or {}
    layout = _layout_for(collection, assets, item_id)
    baseline = _baseline_of(d, props)
    rule, rule_source = _offset_rule(baseline, props)    # baseline, else acquisition date
    base_href = _self_href(d)

    flags: set[str] = set()
    bands: dict[str, Band] = {}
    sources: set[str] = set()
    disagreements: list[str] = []
    for key, name in layout.items():
        asset = assets.get(key)
        if not asset or not asset.get("href"):
            continue
        href = _strip_secrets(_absolute_href(str(asset["href"]), base_href))
        info = _raster_info(asset)
        res_hint = info.get("resolution") or asset.get("gsd")
        grid = _grid_of(asset, props, name, _num(res_hint, item_id, f"{key} resolution")
                        if res_hint else None, href, item_id=item_id)
        nodata = info.get("nodata", 0)
        dtype = str(info.get("dtype") or ("uint8" if name == "SCL" else "uint16"))
        if name == "SCL":
            scale, offset = 1.0, 0.0
        else:
            scale = float(info.get("scale", _DEFAULT_SCALE))
            offset, source, disagreement = _band_offset(name, info.get("offset"),
                                                        offset_override, rule, rule_source)
            sources.add(source)
            if disagreement is not None:
                disagreements.append(disagreement)
        bands[name] = Band(name=name, href=href, resolution=float(grid.resolution), grid=grid,
                           nodata=None if nodata is None else float(nodata), scale=scale,
                           offset=offset, dtype=dtype, asset_key=key)
    if not bands:
        raise UnknownCollectionError(f"item {item_id!r} has no usable band asset")
    offset_source = _offset_source(sources)
    if disagreements:
        flags.add("OFFSET_INCONSISTENT")
        used = "the override" if offset_source == "override" else "the raster:bands value"
        msg = (f"item {item_id}: processing baseline {baseline} implies offset {rule:g} but "
               f"{', '.join(disagreements[:3])}; using {used}. Check the pixels, or pass "
               "offset_override=")
        logger.warning("%s", msg)
        if warn:
            warnings.warn(msg, OffsetInconsistentWarning, stacklevel=2)

    cloud = props.get("eo:cloud_cover")
    if cloud is not None:
        cloud = _num(cloud, item_id, "eo:cloud_cover")
        if not 0 <= cloud <= 100:
            raise CatalogError(f"item {item_id!r}: eo:cloud_cover {cloud!r} is outside [0, 100] "
                               "(percent); fix the item or drop it")
    # the item kept on the Scene carries unsigned hrefs only: signed URLs (SAS tokens,
    # pre-signed AWS) would leak wherever users save or log items; readers sign at read time
    d = _unsigned_item(d)
    if pyitem is None or _has_signed_href(pyitem):
        pyitem = _to_pystac(d)
    return Scene(
        id=item_id,
        datetime=_datetime_of(d, props),
        collection=str(collection) if collection else "",
        tile=_tile_of(d, props),
        platform=str(props.get("platform", "")).lower().replace(" ", "-"),
        processing_baseline=baseline,
        cloud_cover=cloud,
        bands=bands,
        offset_source=offset_source,
        flags=tuple(sorted(flags)),
        properties=props,
        item=pyitem,
    )


@dataclass(frozen=True)
class Band:
    """One band asset of a scene, ready to read.

    ``reflectance = DN * scale + offset`` for reflectance bands; SCL has scale 1, offset 0.
    """

    name: str                 # canonical name, e.g. "B04"
    href: str                 # unsigned href (local path or URL)
    resolution: float         # metres
    grid: Grid                # the asset's own grid
    nodata: float | None      # DN nodata value (0 for L2A)
    scale: float
    offset: float
    dtype: str = "uint16"
    asset_key: str | None = None   # the catalog's own asset key, e.g. "red"


@dataclass(frozen=True)
class Scene:
    """A normalised Sentinel-2 L2A item."""

    id: str
    datetime: pd.Timestamp            # tz-aware UTC
    collection: str
    tile: str                         # MGRS tile, e.g. "50SKE"
    platform: str                     # "sentinel-2a" / "sentinel-2b"
    processing_baseline: str | None   # "04.00"
    cloud_cover: float | None         # tile-level eo:cloud_cover, percent
    bands: dict[str, Band]
    offset_source: str                # "raster:bands" | "baseline" | "none" | "override"
    flags: tuple[str, ...] = ()       # e.g. ("OFFSET_INCONSISTENT",)
    properties: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    item: Any = field(default=None, compare=False, repr=False)   # the pystac.Item

    @property
    def crs(self):
        return next(iter(self.bands.values())).grid.crs

    def grid(self, resolution: float = 10) -> Grid:
        """The scene's grid at ``resolution`` metres (from the first band that has it)."""
        for b in self.bands.values():
            if math.isclose(b.resolution, resolution):
                return b.grid
        raise KeyError(f"scene {self.id} has no band at {resolution} m "
                       f"(has {sorted({b.resolution for b in self.bands.values()})})")


class Scenes(Sequence[Scene]):
    """An ordered collection of :class:`Scene` plus the lineage of how it was found.

    Attributes
    ----------
    lineage : dict
        How the scenes were found: ``catalog`` (redacted URL), ``collection``, ``query``,
        ``n_matched`` (items the server returned), ``n_cloud_filtered``, ``duplicates``
        (ids of reprocessed duplicates dropped) and ``duplicate_of`` (dropped id -> kept id).
    signer : callable or None
        ``signer(href) -> signed href`` for catalogs whose assets need signing (the Planetary
        Computer); hrefs in the scenes stay unsigned. Readers call it right before opening
        and again (``signer(href, refresh=True)`` when supported) after a 403.
    """

    def __init__(self, scenes: Iterable[Scene], lineage: dict[str, Any] | None = None,
                 signer: Callable[..., str] | None = None):
        self._scenes = sorted(scenes, key=lambda s: (s.datetime, s.tile, s.id))
        self.lineage: dict[str, Any] = dict(lineage or {})
        self.signer = signer

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Scenes(self._scenes[i], self.lineage, self.signer)
        return self._scenes[i]

    def __len__(self) -> int:
        return len(self._scenes)

    def __iter__(self) -> Iterator[Scene]:
        return iter(self._scenes)

    def __repr__(self) -> str:
        return f"<Scenes n={len(self)} tiles={sorted({s.tile for s in self})}>"

    @classmethod
    def from_items(cls, items: Iterable[Any], *, signer: Callable[..., str] | None = None,
                   lineage: dict[str, Any] | None = None, **kwargs) -> "Scenes":
        """Normalise pystac Items or item dicts (local hrefs allowed).

        ``items`` may also be a ``pystac.ItemCollection`` or a FeatureCollection dict.
        Keyword arguments go to :func:`normalize_item`.
        """
        if isinstance(items, Mapping) and items.get("type") == "FeatureCollection":
            items = items.get("features", [])
        return cls([normalize_item(it, **kwargs) for it in items], lineage=lineage, signer=signer)

    def filter(self, predicate: Callable[[Scene], bool]) -> "Scenes":
        """The scenes for which ``predicate(scene)`` is true (lineage and signer kept)."""
        return Scenes([s for s in self if predicate(s)], self.lineage, self.signer)

    def sign(self, href: str) -> str:
        """``href`` signed with :attr:`signer` (unchanged when there is none)."""
        return self.signer(href) if self.signer is not None else href

    def to_dataframe(self) -> pd.DataFrame:
        """One row per scene: id, datetime, tile, platform, baseline, cloud cover, offset source."""
        return pd.DataFrame(
            [
                {"scene_id": s.id, "time": s.datetime, "tile": s.tile, "platform": s.platform,
                 "processing_baseline": s.processing_baseline, "cloud_cover": s.cloud_cover,
                 "offset_source": s.offset_source, "flags": ",".join(s.flags)}
                for s in self
            ],
            columns=["scene_id", "time", "tile", "platform", "processing_baseline",
                     "cloud_cover", "offset_source", "flags"],
        )


# --------------------------------------------------------------------------------------
# helpers of normalize_item
# --------------------------------------------------------------------------------------


def _num(value, item_id, what: str) -> float:
    """``float(value)`` or a CatalogError naming the item and the field."""
    if isinstance(value, bool):
        value = "bool"
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise CatalogError(f"item {item_id!r}: {what} is {value!r}, not a number; fix the item "
                           "or drop it from the search results") from None
    if not math.isfinite(out):
        raise CatalogError(f"item {item_id!r}: {what} is {value!r}, not a finite number; fix "
                           "the item or drop it")
    return out


def _is_signed(href: object) -> bool:
    return isinstance(href, str) and _strip_secrets(href) != href


def _has_signed_href(pyitem) -> bool:
    assets = getattr(pyitem, "assets", None)
    if assets is None and isinstance(pyitem, Mapping):
        assets = pyitem.get("assets")
    for a in (assets or {}).values():
        href = getattr(a, "href", None) if not isinstance(a, Mapping) else a.get("href")
        if _is_signed(href):
            return True
    return False


def _unsigned_item(d: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of item dict ``d`` whose asset and link hrefs carry no signing parameters."""
    out = dict(d)
    assets = d.get("assets")
    if isinstance(assets, Mapping):
        out["assets"] = {k: ({**a, "href": _strip_secrets(a["href"])}
                             if isinstance(a, Mapping) and isinstance(a.get("href"), str) else a)
                         for k, a in assets.items()}
    links = d.get("links")
    if isinstance(links, list):
        out["links"] = [({**ln, "href": _strip_secrets(ln["href"])}
                         if isinstance(ln, Mapping) and isinstance(ln.get("href"), str) else ln)
                        for ln in links]
    return out


def _strip_secrets(href: str) -> str:
    """Remove signing query parameters (SAS tokens, pre-signed AWS) from an href."""
    parts = urlsplit(href)
    if not parts.query or not parts.scheme:
        return href
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not _is_secret(k)]
    return urlunsplit(parts._replace(query=urlencode(kept, safe="/:")))


def _as_dict(item) -> tuple[dict[str, Any], Any]:
    """(item dict, pystac.Item or None)."""
    import pystac

    if isinstance(item, pystac.Item):
        return item.to_dict(include_self_link=True, transform_hrefs=True), item
    if isinstance(item, Mapping):
        d = dict(item)
        if d.get("type") != "Feature" or "assets" not in d:
            raise CatalogError(
                f"not a STAC item (type={d.get('type')!r}, has assets: {'assets' in d}); pass "
                "pystac.Item objects or STAC item dicts"
            )
        return d, None
    raise CatalogError(f"cannot normalise a {type(item).__name__}; pass a pystac.Item or a dict")


def _self_href(d: Mapping[str, Any]) -> str | None:
    for ln in d.get("links", []) or []:
        if ln.get("rel") == "self" and ln.get("href"):
            return str(ln["href"])
    return None


def _absolute_href(href: str, base: str | None) -> str:
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", href) or href.startswith("/"):
        return href
    if re.match(r"^[a-zA-Z]:[\\/]", href):  # windows drive path
        return href
    if base:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", base):
            return urljoin(base, href)
        return str((Path(base).parent / href).resolve())
    return href


@functools.lru_cache(maxsize=256)
def _crs_from(value: str | int) -> CRS:
    return CRS.from_epsg(value) if isinstance(value, int) else CRS.from_user_input(value)


_EPSG_RE = re.compile(r"(?i)^\s*(?:epsg:)?\s*(\d{1,6})\s*$")


def _epsg_int(epsg, item_id) -> int:
    """``proj:epsg`` as an int: 32650, 32650.0 and ``"EPSG:32650"`` are accepted."""
    if isinstance(epsg, bool):
        pass
    elif isinstance(epsg, int):
        return epsg
    elif isinstance(epsg, float) and math.isfinite(epsg) and epsg.is_integer():
        return int(epsg)
    elif isinstance(epsg, str) and (m := _EPSG_RE.match(epsg)):
        return int(m.group(1))
    raise CatalogError(
        f"item {item_id!r}: proj:epsg is {epsg!r}, not an EPSG code (an integer such as 32650); "
        "fix the item's projection metadata (proj:epsg or proj:code 'EPSG:32650')"
    )


def _crs_of(*sources: Mapping[str, Any], item_id=None) -> CRS | None:
    from pyproj.exceptions import CRSError

    for src in sources:
        if not src:
            continue
        for key in ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson"):
            value = src.get(key)
            if value is None or value == "":
                continue
            try:
                if key == "proj:epsg":
                    return _crs_from(_epsg_int(value, item_id))
                if key == "proj:projjson":
                    return CRS.from_user_input(value)
                if key == "proj:code" and not isinstance(value, str):
                    raise CRSError("proj:code must be a string such as 'EPSG:32650'")
                return _crs_from(str(value))
            except (CRSError, TypeError, ValueError, OverflowError) as exc:
                if isinstance(exc, CatalogError):
                    raise
                shown = value if len(str(value)) <= 80 else str(value)[:80] + "..."
                raise CatalogError(
                    f"item {item_id!r}: {key} {shown!r} is not a CRS that PROJ knows "
                    f"({type(exc).__name__}); fix the item's projection metadata (e.g. proj:code "
                    "'EPSG:32650' for UTM zone 50N)"
                ) from None
    return None


def _raster_info(asset: Mapping[str, Any]) -> dict[str, Any]:
    """nodata, dtype, scale, offset, resolution from raster:bands (STAC 1.0) or bands (1.1)."""
    out: dict[str, Any] = {}
    rb = asset.get("raster:bands") or asset.get("bands") or []
    first = rb[0] if rb and isinstance(rb[0], Mapping) else {}
    for src in (first, asset):
        for key, name in (("scale", "scale"), ("raster:scale", "scale"), ("offset", "offset"),
                          ("raster:offset", "offset"), ("nodata", "nodata"),
                          ("data_type", "dtype"), ("spatial_resolution", "resolution"),
                          ("raster:spatial_resolution", "resolution")):
            if key in src and src[key] is not None and name not in out:
                out[name] = src[key]
    return out


def _numbers(value, n: int, item_id, what: str, *, ints: bool = False) -> list:
    """The first ``n`` entries of list ``value`` as floats (ints), or a clear CatalogError."""
    if not isinstance(value, (list, tuple)) or len(value) < n:
        raise CatalogError(f"item {item_id!r}: {what} is {str(value)[:80]!r}, not a list of at "
                           f"least {n} numbers; fix the item's projection metadata")
    out = [_num(v, item_id, what) for v in value[:n]]
    if ints:
        if not all(v.is_integer() and v > 0 for v in out):
            raise CatalogError(f"item {item_id!r}: {what} {list(value)[:n]!r} is not positive "
                               "integers; fix the item's projection metadata")
        return [int(v) for v in out]
    return out


def _grid_of(asset: Mapping[str, Any], props: Mapping[str, Any], band: str,
             resolution: float | None, href: str, *, item_id=None) -> Grid:
    crs = _crs_of(asset, props, item_id=item_id)
    transform = asset.get("proj:transform")
    shape = asset.get("proj:shape")
    if crs is not None and transform is not None and shape is not None:
        return Grid(crs, Affine(*_numbers(transform, 6, item_id, f"{band} proj:transform")),
                    tuple(_numbers(shape, 2, item_id, f"{band} proj:shape", ints=True)))
    res = resolution or asset.get("gsd") or _NATIVE_RES.get(band)
    bbox = asset.get("proj:bbox") or props.get("proj:bbox")
    if crs is not None and bbox is not None and res:
        left, bottom, right, top = _numbers(bbox, 4, item_id, f"{band} proj:bbox")
        h, w = round((top - bottom) / res), round((right - left) / res)
        return Grid(crs, Affine(res, 0.0, left, 0.0, -res, top), (h, w))
    item_t, item_s = props.get("proj:transform"), props.get("proj:shape")
    if crs is not None and item_t is not None and item_s is not None and res:
        t = _numbers(item_t, 6, item_id, "proj:transform")
        item_s = _numbers(item_s, 2, item_id, "proj:shape", ints=True)
        if t[0] == 0:
            raise CatalogError(f"item {item_id!r}: proj:transform has a zero pixel size")
        k = float(res) / float(t[0])
        return Grid(crs, Affine(t[0] * k, 0.0, t[2], 0.0, t[4] * k, t[5]),
                    (round(item_s[0] / k), round(item_s[1] / k)))
    if Path(href).is_file():  # a local file states its own grid
        import rasterio

        with rasterio.open(href) as ds:
            if ds.crs is None:
                raise CatalogError(f"asset {band} ({href}) has no CRS in its metadata or file")
            # Grid normalises CRSs to their EPSG definition, so this grid equals the one of an
            # item stating proj:epsg
            return Grid(ds.crs.to_wkt(), ds.transform, (ds.height, ds.width))
    raise CatalogError(
        f"asset {band} ({redact(href)}) has no projection metadata (proj:transform/proj:shape, "
        "proj:bbox or item-level proj:* with proj:code/proj:epsg); add the projection extension "
        "fields to the item"
    )


def _tile_of(d: Mapping[str, Any], props: Mapping[str, Any]) -> str:
    t = props.get("s2:mgrs_tile")
    if t:
        t = str(t).upper().lstrip("T")
        return t.zfill(5) if len(t) == 4 else t
    if props.get("mgrs:utm_zone") is not None and props.get("mgrs:latitude_band") and \
            props.get("mgrs:grid_square"):
        return f"{int(props['mgrs:utm_zone']):02d}{props['mgrs:latitude_band']}" \
               f"{props['mgrs:grid_square']}".upper()
    code = props.get("grid:code")
    if code and str(code).upper().startswith("MGRS-"):
        t = str(code)[5:].upper()
        return t.zfill(5) if len(t) == 4 else t
    m = _TILE_RE.search(str(d.get("id", "")))
    if m:
        return m.group(1).zfill(5)
    raise CatalogError(
        f"item {d.get('id')!r} states no MGRS tile (s2:mgrs_tile, mgrs:*, grid:code) and its id "
        "has none"
    )


def _datetime_of(d: Mapping[str, Any], props: Mapping[str, Any]) -> pd.Timestamp:
    value = props.get("datetime") or props.get("start_datetime")
    if not value:
        raise CatalogError(f"item {d.get('id')!r} has no datetime")
    try:
        if not isinstance(value, str):
            raise TypeError(type(value).__name__)
        t = pd.Timestamp(value)
        if pd.isna(t):
            raise ValueError("NaT")
    except (TypeError, ValueError, OverflowError) as exc:
        raise CatalogError(
            f"item {d.get('id')!r}: datetime {str(value)[:60]!r} is not an RFC 3339 date-time "
            f"({type(exc).__name__}); STAC items need e.g. '2024-05-01T03:05:59Z'. Fix the item"
        ) from None
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _layout_for(collection: str | None, assets: Mapping[str, Any], item_id) -> dict[str, str]:
    if collection is not None and collection not in SUPPORTED_COLLECTIONS:
        raise UnknownCollectionError(
            f"item {item_id!r} belongs to collection {collection!r}, whose band layout cropyield "
            f"does not know; supported: {sorted(SUPPORTED_COLLECTIONS)} (Earth Search v1 and "
            "Planetary Computer Sentinel-2 L2A). Search one of those with collection=..."
        )
    layouts = SUPPORTED_COLLECTIONS[collection] if collection else (_EARTH_SEARCH_KEYS, _PC_KEYS)
    best = max(layouts, key=lambda lay: sum(k in assets for k in lay))
    if not any(k in assets for k in best):
        raise UnknownCollectionError(
            f"item {item_id!r} (collection {collection!r}) has none of the Sentinel-2 L2A asset "
            f"keys cropyield knows (Earth Search: {sorted(_EARTH_SEARCH_KEYS)}, Planetary "
            f"Computer: {sorted(_PC_KEYS)}); it has {sorted(assets)[:20]}"
        )
    return best


def _to_pystac(d: Mapping[str, Any]):
    import pystac

    try:
        # a JSON round trip is a faster deep copy than pystac's copy.deepcopy
        return pystac.Item.from_dict(json.loads(json.dumps(d)), preserve_dict=False,
                                     migrate=False)
    except Exception:  # a dict pystac cannot parse is still a usable item for us
        logger.debug("item %s kept as a dict: pystac could not parse it", d.get("id"))
        return dict(d)
