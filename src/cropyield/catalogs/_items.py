"""Search STAC catalogs for Sentinel-2 L2A scenes and normalise their items.

Owner of: :func:`search_scenes`, :func:`normalize_item`, :class:`Scene`, :class:`Scenes`.

Supported layouts (collection id -> asset keys):

* Earth Search v1 ``sentinel-2-l2a`` and ``sentinel-2-c1-l2a``: ``blue green red rededge1
  rededge2 rededge3 nir nir08 swir16 swir22 scl`` (``*-jp2``, ``visual``, thumbnails ignored);
* Microsoft Planetary Computer ``sentinel-2-l2a``: ``B02 ... B12 B8A SCL``.

Radiometry: ``reflectance = DN * scale + offset``. The offset comes from ``raster:bands``
when the item states it, else from the processing baseline (>= 04.00: -0.1, earlier: 0),
else it is 0 with ``offset_source="none"``; an explicit override wins over both.
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
from pyproj import CRS

from ._geo import Grid
from ._log import SECRET_PARAMS, logger, redact, redact_url
from .errors import (
    CatalogError,
    ConfigError,
    MissingCRSError,
    NoScenesError,
    OffsetInconsistentWarning,
    UnknownCollectionError,
)

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

#: Canonical band names, whatever the catalog calls them.
CANONICAL_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "SCL")

#: Catalog aliases -> (STAC API root URL, default collection).
CATALOGS: dict[str, tuple[str, str]] = {
    "earth-search": ("https://earth-search.aws.element84.com/v1", "sentinel-2-l2a"),
    "planetary-computer": ("https://planetarycomputer.microsoft.com/api/stac/v1", "sentinel-2-l2a"),
}

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
_DEFAULT_SCALE = 1e-4
_OFFSET_TOL = 1e-9
_TILE_RE = re.compile(r"(?:^|_)T?(\d{1,2}[C-HJ-NP-X][A-HJ-NP-Z]{2})(?:_|$)")
_BASELINE_RE = re.compile(r"_N(\d{2})\.?(\d{2})(?:_|\.|$)")


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
# Item normalisation
# --------------------------------------------------------------------------------------


def baseline_offset(baseline: str | float | None) -> float | None:
    """BOA offset in reflectance units implied by a processing baseline.

    ``>= 04.00`` (products from 25 January 2022, and reprocessed older ones) gives -0.1
    (BOA_ADD_OFFSET = -1000 DN at scale 1e-4); earlier baselines give 0; None gives None.
    """
    b = _baseline_float(baseline)
    if b is None:
        return None
    return -0.1 if b >= 4.0 - 1e-9 else 0.0


def _baseline_float(baseline) -> float | None:
    if baseline is None:
        return None
    try:
        return float(baseline)
    except (TypeError, ValueError):
        return None


def _strip_secrets(href: str) -> str:
    """Remove signing query parameters (SAS tokens, pre-signed AWS) from an href."""
    parts = urlsplit(href)
    if not parts.query or not parts.scheme:
        return href
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not (k.lower() in SECRET_PARAMS or k.lower().startswith("x-amz-"))]
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


def _crs_of(*sources: Mapping[str, Any]) -> CRS | None:
    for src in sources:
        if not src:
            continue
        code = src.get("proj:code")
        if code:
            return _crs_from(str(code))
        epsg = src.get("proj:epsg")
        if epsg:
            return _crs_from(int(epsg))
        if src.get("proj:wkt2"):
            return _crs_from(str(src["proj:wkt2"]))
        if src.get("proj:projjson"):
            return CRS.from_user_input(src["proj:projjson"])
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


def _grid_of(asset: Mapping[str, Any], props: Mapping[str, Any], band: str,
             resolution: float | None, href: str) -> Grid:
    crs = _crs_of(asset, props)
    transform = asset.get("proj:transform")
    shape = asset.get("proj:shape")
    if crs is not None and transform is not None and shape is not None:
        return Grid(crs, list(transform)[:6], tuple(shape))
    res = resolution or asset.get("gsd") or _NATIVE_RES.get(band)
    bbox = asset.get("proj:bbox") or props.get("proj:bbox")
    if crs is not None and bbox is not None and res:
        left, bottom, right, top = (float(v) for v in bbox[:4])
        h, w = round((top - bottom) / res), round((right - left) / res)
        return Grid(crs, [res, 0.0, left, 0.0, -res, top], (h, w))
    item_t, item_s = props.get("proj:transform"), props.get("proj:shape")
    if crs is not None and item_t is not None and item_s is not None and res:
        t = list(item_t)[:6]
        k = float(res) / float(t[0])
        return Grid(crs, [t[0] * k, 0.0, t[2], 0.0, t[4] * k, t[5]],
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


def _baseline_of(d: Mapping[str, Any], props: Mapping[str, Any]) -> str | None:
    b = props.get("s2:processing_baseline")
    if b is not None and _baseline_float(b) is not None:
        return f"{float(b):05.2f}"
    for key in ("s2:product_uri", "s2:tile_id", "s2:granule_id", "s2:datatake_id"):
        m = _BASELINE_RE.search(str(props.get(key, "")))
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def _datetime_of(d: Mapping[str, Any], props: Mapping[str, Any]) -> pd.Timestamp:
    value = props.get("datetime") or props.get("start_datetime")
    if not value:
        raise CatalogError(f"item {d.get('id')!r} has no datetime")
    t = pd.Timestamp(value)
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


def normalize_item(item, *, offset_override: float | Mapping[str, float] | None = None,
                   warn: bool = True) -> Scene:
    """Normalise one Sentinel-2 L2A STAC item into a :class:`Scene`.

    Parameters
    ----------
    item : pystac.Item or dict
        An item of a supported collection (see :data:`SUPPORTED_COLLECTIONS`). Relative asset
        hrefs are resolved against the item's ``self`` link; signing query parameters
        (``sig``, ``se``, ``X-Amz-*``...) are removed, so hrefs are always unsigned.
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
        ``{"raster:bands", "baseline", "none", "override"}``.

    Raises
    ------
    UnknownCollectionError
        Collection not supported (e.g. ``sentinel-2-l1c``, ``landsat-c2-l2``), or no known
        band asset.
    CatalogError
        Malformed item (no datetime, no tile, no projection metadata).
    """
    d, pyitem = _as_dict(item)
    props: dict[str, Any] = dict(d.get("properties") or {})
    item_id = str(d.get("id"))
    collection = d.get("collection")
    assets: Mapping[str, Any] = d.get("assets") or {}
    layout = _layout_for(collection, assets, item_id)
    baseline = _baseline_of(d, props)
    rule = baseline_offset(baseline)
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
        grid = _grid_of(asset, props, name, float(res_hint) if res_hint else None, href)
        nodata = info.get("nodata", 0)
        dtype = str(info.get("dtype") or ("uint8" if name == "SCL" else "uint16"))
        if name == "SCL":
            scale, offset = 1.0, 0.0
        else:
            scale = float(info.get("scale", _DEFAULT_SCALE))
            meta_offset = info.get("offset")
            override = (offset_override.get(name) if isinstance(offset_override, Mapping)
                        else offset_override)
            if override is not None:
                offset = float(override)
                sources.add("override")
            elif meta_offset is not None:
                offset = float(meta_offset)
                sources.add("raster:bands")
            elif rule is not None:
                offset = rule
                sources.add("baseline")
            else:
                offset = 0.0
                sources.add("none")
            if meta_offset is not None and rule is not None and \
                    abs(float(meta_offset) - rule) > _OFFSET_TOL:
                disagreements.append(f"{name}: raster:bands {float(meta_offset):g}")
        bands[name] = Band(name=name, href=href, resolution=float(grid.resolution), grid=grid,
                           nodata=None if nodata is None else float(nodata), scale=scale,
                           offset=offset, dtype=dtype, asset_key=key)
    if not bands:
        raise UnknownCollectionError(f"item {item_id!r} has no usable band asset")
    if "override" in sources:
        offset_source = "override"
    elif len(sources) == 1:
        offset_source = sources.pop()
    elif not sources:  # only SCL
        offset_source = "none"
    else:  # some bands from raster:bands, others from the rule: report the weakest
        offset_source = "baseline" if "baseline" in sources else "none"
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
    if pyitem is None:
        pyitem = _to_pystac(d)
    return Scene(
        id=item_id,
        datetime=_datetime_of(d, props),
        collection=str(collection) if collection else "",
        tile=_tile_of(d, props),
        platform=str(props.get("platform", "")).lower().replace(" ", "-"),
        processing_baseline=baseline,
        cloud_cover=None if cloud is None else float(cloud),
        bands=bands,
        offset_source=offset_source,
        flags=tuple(sorted(flags)),
        properties=props,
        item=pyitem,
    )


def _to_pystac(d: Mapping[str, Any]):
    import pystac

    try:
        # a JSON round trip is a faster deep copy than pystac's copy.deepcopy
        return pystac.Item.from_dict(json.loads(json.dumps(d)), preserve_dict=False,
                                     migrate=False)
    except Exception:  # a dict pystac cannot parse is still a usable item for us
        logger.debug("item %s kept as a dict: pystac could not parse it", d.get("id"))
        return dict(d)


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
        from ._extras import require

        pc = require("planetary_computer", "pc", "signing Planetary Computer asset URLs")
        if refresh:
            cache = getattr(getattr(pc, "sas", None), "TOKEN_CACHE", None)
            if hasattr(cache, "clear"):
                cache.clear()
        return pc.sign(href)

    def __repr__(self) -> str:
        return "PlanetaryComputerSigner()"


# --------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------


def _retry(total: int, backoff_factor: float, max_retry_after: float):
    from urllib3.util.retry import Retry

    class _CappedRetry(Retry):
        """urllib3 Retry whose Retry-After waits are capped (a server cannot stall us)."""

        def get_retry_after(self, response):
            value = super().get_retry_after(response)
            return None if value is None else min(value, max_retry_after)

    return _CappedRetry(
        total=total, connect=total, read=total, status=total, backoff_factor=backoff_factor,
        status_forcelist=[429, 500, 502, 503, 504], allowed_methods=None,
        respect_retry_after_header=True, raise_on_status=True,
    )


def _open_client(url: str, *, timeout: float, retries: int, backoff_factor: float,
                 max_retry_after: float, headers: Mapping[str, str] | None = None):
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    stac_io = StacApiIO(max_retries=_retry(retries, backoff_factor, max_retry_after))
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


def _fetch_items(search, *, max_items: int | None, max_pages: int, where: str
                 ) -> list[dict[str, Any]]:
    """All item dicts of a search, page by page, with pagination guards."""
    items: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    seen_next: set[str] = set()
    n_pages = 0
    for page in search.pages_as_dicts():
        n_pages += 1
        if n_pages > max_pages:
            raise CatalogError(f"{where}: more than {max_pages} result pages; narrow the search "
                               "(smaller AOI or date range) or raise max_pages")
        feats = page.get("features", []) or []
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


def search_scenes(aoi, start, end, *, catalog="earth-search", collection: str | None = None,
                  max_cloud: float | None = None, max_items: int | None = None, client=None,
                  timeout: float = 30.0, retries: int = 5, backoff_factor: float = 0.5,
                  max_retry_after: float = 60.0, limit: int = 100, max_pages: int = 1000,
                  offset_override: float | Mapping[str, float] | None = None,
                  dedupe: bool = True, headers: Mapping[str, str] | None = None) -> Scenes:
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
        Seconds per HTTP request (connect and read).
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

    Returns
    -------
    Scenes
        Sorted by time; ``.lineage`` records the catalog (redacted), collection, query,
        ``n_matched``, the cloud filter and the duplicates; ``.signer`` signs hrefs for
        catalogs that need it.

    Raises
    ------
    CatalogError
        The catalog failed after retries, timed out, returned malformed JSON or looping
        pagination. URLs in the message are redacted.
    NoScenesError
        Nothing matched; the message lists the query.
    MissingCRSError
        The AOI has no CRS.
    UnknownCollectionError
        The collection's band layout is not supported.
    ConfigError
        Invalid arguments (bbox out of range, start after end, unknown catalog name).
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
                                      max_retry_after=max_retry_after, headers=headers)
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
                                     where=where)
            break
        except CatalogError:
            raise
        except errors as exc:
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


def _bounds_of(geojson: Mapping[str, Any]) -> list[float]:
    import shapely.geometry as sg

    return [round(v, 6) for v in sg.shape(geojson).bounds]
