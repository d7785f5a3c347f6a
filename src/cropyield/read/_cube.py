"""``load_cube``: scenes over an area of interest warped into one ``xarray.Dataset``
(time, y, x) of reflectance, SCL and a validity mask, mosaicking the tiles of each solar day.

Public entry points
-------------------
:func:`load_cube`
    The dense-cube path (rasterio warp of each band window onto one output grid), for
    notebooks and plots; per-field statistics use the block reader instead.
:func:`pd_times`
    tz-aware timestamps -> tz-naive UTC ``datetime64[ns]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CropYieldError
from ..zonal import _REFL_MAX, _REFL_MIN
from ._blocks import BlockReader, deadline_seconds
from ._gdal import DEFAULT_GDAL_ENV, gdal_env
from ._scenes import _as_scene_list, _solar_day

__all__ = ["load_cube", "pd_times"]


def load_cube(scenes, aoi, *, bands, resolution: float = 10, crs=None,
              resampling: str = "nearest", scl_classes=None, dilate: int = 0,
              groupby: str = "solar_day", threads: int = 2, env: Mapping[str, Any] | None = None,
              dtype: str = "float32", chunks: Mapping[str, int] | None = None,
              read_deadline: float | str | None = "auto") -> Any:
    """Load scenes over ``aoi`` into an ``xarray.Dataset`` (time, y, x) of reflectance.

    Every band is warped (``rasterio.warp.reproject``, reading only the source window that
    covers the output) onto one output grid: the CRS of the most frequent scene CRS (or
    ``crs``), pixel size ``resolution`` metres, aligned to multiples of the resolution so that
    Sentinel-2 grids map 1:1 with ``nearest``. Scenes of several tiles/UTM zones of the same
    acquisition (``groupby="solar_day"``) are mosaicked, first valid pixel wins (scenes sorted
    by tile). Values are float32 reflectance ``DN * scale + offset`` with each band's own
    scale/offset; DN nodata becomes NaN, and so do saturated DN (65535) and reflectance
    outside the physical range [-0.2, 2.0] (``cropyield.zonal._REFL_MIN``/``_REFL_MAX``). ``valid`` (uint8, 1 = clear) is derived from SCL
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
    chunks : dict, optional
        ``{"time": nt, "y": ny, "x": nx}`` (pixels; -1 or absent = the whole dimension):
        return a lazy, dask-backed Dataset, as ``odc.stac.load(chunks=)`` and
        ``stackstac.stack(chunksize=)`` do. Nothing is read until a chunk is computed; each
        chunk reads only its window (plus ``dilate`` pixels of halo, so that ``valid`` is
        identical to the eager result) of its acquisitions. Read counters are then not in
        ``attrs`` (they happen at compute time). Default: load eagerly.
    read_deadline : float, "auto" or None
        Total seconds for the reads (per chunk with ``chunks=``), as in
        :func:`cropyield.observations.field_observations`: after it no read is started or
        retried and :class:`~cropyield.errors.AssetReadError` (``reason="deadline"``) is
        raised, at most 1 s (:data:`cropyield.read._blocks.DEADLINE_SLACK`) after it even
        when a server stalls a request (see :class:`~cropyield.read.BlockReader`).
        ``"auto"`` (default): 600 s + 120 s per scene. None: no deadline.

    Returns
    -------
    xarray.Dataset
        One float32 variable per reflectance band (``SCL`` stays uint8), ``valid`` (uint8),
        coordinates ``time`` (UTC, tz-naive), ``y``, ``x`` (pixel centres) and ``spatial_ref``.

    Examples
    --------
    ``scenes`` from :func:`cropyield.search_scenes`; the reads need the internet.

    >>> import cropyield as cy
    >>> cube = cy.load_cube(scenes, fields, bands=["B04", "B08", "SCL"],
    ...                     resolution=10)  # doctest: +SKIP
    >>> ndvi = (cube["B08"] - cube["B04"]) / (cube["B08"] + cube["B04"])  # doctest: +SKIP
    >>> ndvi.where(cube["valid"] == 1).median("time")  # doctest: +SKIP
    """
    import rioxarray  # noqa: F401,I001  (registers the .rio accessor)
    from pyproj import CRS
    from rasterio.transform import from_origin
    from rasterio.warp import transform_geom

    scene_list = _as_scene_list(scenes)
    if not scene_list:
        raise CropYieldError("load_cube got no scenes; search again with a wider date range")
    deadline = deadline_seconds(read_deadline, len(scene_list))
    bands = list(bands)
    geom, aoi_crs = _aoi_geometry(aoi)
    if crs is None:
        counts: dict[str, int] = {}
        for s in scene_list:
            counts[s.crs.to_wkt()] = counts.get(s.crs.to_wkt(), 0) + 1
        crs = CRS.from_wkt(max(counts, key=lambda wkt: counts[wkt]))
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
        from ..masks import DEFAULT_SCL_INVALID as scl_classes  # noqa: N811
    if chunks is not None:
        return _lazy_cube(chunks, keys, groups, bands, height, width, x0, y1, res, crs,
                          resampling, scl_classes, dilate, threads, env_d, dtype, deadline)
    data, scl_out, valid, stats = _load_window(
        keys, groups, bands, 0, height, 0, width, height, width, x0, y1, res, crs, resampling,
        scl_classes, dilate, threads, env_d, dtype, deadline)
    return _assemble(data, scl_out, valid, keys, groups, bands, height, width, x0, y1, res,
                     crs, resampling, stats, dst_transform)


def _assemble(data, scl_out, valid, keys, groups, bands, height, width, x0, y1, res, crs,
              resampling, stats, dst_transform):
    import rioxarray  # noqa: F401,I001  (registers the .rio accessor)
    import xarray as xr

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
    ds.attrs.update((stats or {}) | {"resampling": resampling, "resolution": res})
    ds.attrs.pop("read_failures", None)
    return ds


def _load_window(keys, groups, bands, r0, r1, c0, c1, height, width, x0, y1, res, crs,
                 resampling, scl_classes, dilate, threads, env_d, dtype, deadline=None):
    """Read and mosaic output rows ``r0:r1``, columns ``c0:c1`` of the acquisitions ``keys``
    (plus a halo of ``dilate`` pixels for the SCL dilation, cropped again)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.warp import reproject

    from ..masks import invalid_mask

    halo = int(dilate)
    rr0, rr1 = max(0, r0 - halo), min(height, r1 + halo)
    cc0, cc1 = max(0, c0 - halo), min(width, c1 + halo)
    h, w = rr1 - rr0, cc1 - cc0
    win_transform = from_origin(x0 + cc0 * res, y1 - rr0 * res, res, res)
    reader = BlockReader(threads=threads, env=env_d, deadline=deadline)

    def warp(scene, bname):
        band = scene.bands.get(bname)
        if band is None:
            raise CropYieldError(f"scene {scene.id} has no band {bname!r}; "
                                 f"available: {sorted(scene.bands)}")
        is_scl = bname == "SCL"
        dst = np.zeros((h, w), dtype=np.uint16 if not is_scl else np.uint8)
        nod = band.nodata if band.nodata is not None else 0

        def fn(ds):
            reproject(rasterio.band(ds, 1), dst, src_nodata=nod, dst_nodata=0,
                      dst_transform=win_transform, dst_crs=crs,
                      resampling=Resampling.nearest if is_scl else Resampling[resampling])
            return dst

        return reader._attempt(band.href, fn), band

    try:
        data = {b: np.full((len(keys), h, w), np.nan, dtype=dtype) for b in bands
                if b != "SCL"}
        scl_out = np.zeros((len(keys), h, w), np.uint8)
        # the warps run in the reader's threads, waited for until its deadline (+ slack)
        for t, k in enumerate(keys):
            for s in sorted(groups[k], key=lambda s: (s.tile, s.id)):
                names = [b for b in bands if b != "SCL"] + (["SCL"] if "SCL" in s.bands
                                                             else [])
                hrefs = {b: s.bands[b].href if b in s.bands else "" for b in names}
                futs = {b: reader._submit(hrefs[b], warp, s, b) for b in names}
                for b, f in futs.items():
                    arr, band = reader._wait([f], hrefs[b])[0].result()
                    if b == "SCL":
                        sel = (scl_out[t] == 0) & (arr != 0)
                        scl_out[t][sel] = arr[sel]
                        continue
                    refl = arr.astype(np.float64) * band.scale + band.offset
                    # saturated DN / outside the physical range: NaN, like no-data
                    phys = (refl >= _REFL_MIN) & (refl <= _REFL_MAX)
                    hole = np.isnan(data[b][t]) & (arr != 0) & phys
                    data[b][t][hole] = refl[hole].astype(dtype)
    finally:
        reader.close()
    valid = np.stack([~np.asarray(invalid_mask(scl_out[t], scl_classes, dilate)) for t in
                      range(len(keys))]).astype(np.uint8) if len(keys) else scl_out
    crop = (slice(None), slice(r0 - rr0, r0 - rr0 + (r1 - r0)),
            slice(c0 - cc0, c0 - cc0 + (c1 - c0)))
    data = {b: v[crop] for b, v in data.items()}
    return data, scl_out[crop], valid[crop], reader.stats.as_dict()


def _splits(n: int, size) -> list[tuple[int, int]]:
    size = n if size in (None, -1) or int(size) <= 0 else int(size)
    return [(a, min(a + size, n)) for a in range(0, n, max(size, 1))] or [(0, 0)]


def _lazy_cube(chunks, keys, groups, bands, height, width, x0, y1, res, crs, resampling,
               scl_classes, dilate, threads, env_d, dtype, deadline=None):
    """The same Dataset as the eager path, each (time, y, x) chunk a dask task."""
    import dask
    import dask.array as da
    from rasterio.transform import from_origin

    unknown = set(chunks) - {"time", "y", "x"}
    if unknown:
        raise ValueError(f"chunks keys must be 'time', 'y', 'x'; got {sorted(unknown)}")
    ts = _splits(len(keys), chunks.get("time"))
    ys = _splits(height, chunks.get("y"))
    xs = _splits(width, chunks.get("x"))
    refl = [b for b in bands if b != "SCL"]
    names = refl + ["SCL", "valid"]
    grid: dict[str, list] = {n: [] for n in names}
    for t0, t1 in ts:
        tk = keys[t0:t1]
        rows = {n: [] for n in names}
        for r0, r1 in ys:
            cols = {n: [] for n in names}
            for c0, c1 in xs:
                piece = dask.delayed(_load_window, pure=True, nout=4)(
                    tk, {k: groups[k] for k in tk}, bands, r0, r1, c0, c1, height, width, x0,
                    y1, res, crs, resampling, scl_classes, dilate, threads, env_d, dtype,
                    deadline)
                shape = (t1 - t0, r1 - r0, c1 - c0)
                for b in refl:
                    cols[b].append(da.from_delayed(piece[0][b], shape, dtype=dtype))
                cols["SCL"].append(da.from_delayed(piece[1], shape, dtype=np.uint8))
                cols["valid"].append(da.from_delayed(piece[2], shape, dtype=np.uint8))
            for n in names:
                rows[n].append(cols[n])
        for n in names:
            grid[n].append(rows[n])
    data = {b: da.block(grid[b]) for b in refl}
    return _assemble(data, da.block(grid["SCL"]), da.block(grid["valid"]), keys, groups,
                     bands, height, width, x0, y1, res, crs, resampling, None,
                     from_origin(x0, y1, res, res))


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


def pd_times(ts):
    """tz-aware UTC timestamps -> tz-naive UTC ``datetime64[ns]`` array (xarray-friendly)."""
    import pandas as pd

    idx = pd.DatetimeIndex([pd.Timestamp(t) for t in ts])
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx.values.astype("datetime64[ns]")
