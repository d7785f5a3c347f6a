"""make_world: write the synthetic world (COGs, STAC, truth) and reopen it as a World."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .._log import logger
from .._version import __version__
from ..errors import ConfigError
from ._canopy import BANDS
from ._clouds import sky_on_date, sky_plan, swath_nodata_10m
from ._config import WorldConfig
from ._fields import landscape
from ._raster import (BAND_RES, TARGET, TileMixer, background_reflectance, parcel_reflectance,
                      render_scene, write_cog)
from ._stac import make_collection, make_item
from ._truth import make_fields, true_canopy, true_seasons

__all__ = ["World", "make_world"]

_CHUNK_DATES = 8


@dataclass
class World:
    """A synthetic world on disk: COGs, STAC collection and items, truth tables.

    Attributes
    ----------
    root : Path
        Folder holding ``world.json``, ``collection.json``, ``items.ndjson``, ``items.json``,
        ``cogs/<item_id>/<band>.tif`` and ``truth/*.parquet``.
    config : WorldConfig
    """

    root: Path
    config: WorldConfig
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def collection_path(self) -> Path:
        return self.root / "collection.json"

    @property
    def items_path(self) -> Path:
        """NDJSON of the items (one per line), absolute local hrefs."""
        return self.root / "items.ndjson"

    @property
    def items_json_path(self) -> Path:
        """The same items as a GeoJSON FeatureCollection."""
        return self.root / "items.json"

    @property
    def summary(self) -> dict:
        """Contents of ``world.json`` (config, key, version, per-scene statistics)."""
        if "summary" not in self._cache:
            self._cache["summary"] = json.loads((self.root / "world.json").read_text())
        return self._cache["summary"]

    @property
    def fields(self):
        """Fields GeoDataFrame (``truth/fields.parquet``), read lazily."""
        if "fields" not in self._cache:
            import geopandas as gpd

            self._cache["fields"] = gpd.read_parquet(self.root / "truth" / "fields.parquet")
        return self._cache["fields"]

    @property
    def seasons(self) -> pd.DataFrame:
        """True seasons and yields (``truth/seasons.parquet``)."""
        if "seasons" not in self._cache:
            self._cache["seasons"] = pd.read_parquet(self.root / "truth" / "seasons.parquet")
        return self._cache["seasons"]

    @property
    def weather(self) -> pd.DataFrame:
        """Daily weather of the crop-model seasons per field on the world's calendar
        (:func:`cropyield.synthetic.field_weather`; derived from the config, not stored)."""
        if "weather" not in self._cache:
            from ._truth import field_weather

            self._cache["weather"] = field_weather(self.fields, self.config)
        return self._cache["weather"]

    @property
    def canopy(self) -> pd.DataFrame:
        """Daily true canopy (``truth/canopy.parquet``)."""
        if "canopy" not in self._cache:
            self._cache["canopy"] = pd.read_parquet(self.root / "truth" / "canopy.parquet")
        return self._cache["canopy"]

    @property
    def scenes(self) -> pd.DataFrame:
        """One row per scene: id, tile, datetime (UTC), baseline, BOA offset (DN), sequence,
        cloud cover (% of valid SCL pixels), planned cloud cover (%), nodata (%)."""
        df = pd.DataFrame(self.summary["scenes"])
        df["datetime"] = pd.to_datetime(df["datetime"], utc=True)
        return df

    def items(self, href_base: str | None = None) -> list[dict]:
        """Item dicts; hrefs are absolute paths under ``root`` or ``href_base + relpath``."""
        out = []
        for line in self.items_path.read_text().splitlines():
            if line.strip():
                out.append(self._rebase(json.loads(line), href_base))
        return out

    def _rebase(self, item: dict, href_base: str | None) -> dict:
        for a in item["assets"].values():
            h = a["href"]
            rel = "cogs/" + h.rsplit("/cogs/", 1)[1] if "/cogs/" in h else h
            if href_base is None:
                a["href"] = str((self.root / rel).resolve())
            else:
                a["href"] = href_base.rstrip("/") + "/" + rel
        return item

    def write_items(self, path, href_base: str | None = None) -> Path:
        """Write the items with hrefs rewritten to ``href_base + relative path``.

        ``path`` ending in ``.ndjson`` gives one item per line, otherwise a FeatureCollection.
        E.g. ``world.write_items(tmp / "items.ndjson", "http://127.0.0.1:8123")`` gives
        hrefs like ``http://127.0.0.1:8123/cogs/S2B_50SLD_20220510_0_L2A/B04.tif``.
        """
        path = Path(path)
        items = self.items(href_base)
        if path.suffix == ".ndjson":
            path.write_text("".join(json.dumps(it, sort_keys=True) + "\n" for it in items))
        else:
            path.write_text(json.dumps({"type": "FeatureCollection", "features": items},
                                       sort_keys=True))
        return path

    @classmethod
    def open(cls, root) -> "World":
        """Reopen a world written by :func:`make_world`."""
        root = Path(root)
        meta = root / "world.json"
        if not meta.exists():
            raise ConfigError(f"{root} holds no synthetic world (no world.json); build one with "
                              "cropyield.synthetic.make_world(root)")
        d = json.loads(meta.read_text())
        if not d.get("complete"):
            raise ConfigError(f"the world in {root} is incomplete; rebuild it with make_world")
        return cls(root.resolve(), WorldConfig.from_dict(d["config"]))


def _report(progress, done, total):
    if progress is None:
        return
    if hasattr(progress, "update"):
        progress.update(1)
    else:
        progress(done, total)


def make_world(out_dir, config: WorldConfig | None = None, *,
               progress: Callable[[int, int], Any] | None = None, overwrite: bool = False,
               workers: int = 2) -> World:
    """Write a synthetic Sentinel-2 L2A world with known truth to ``out_dir``.

    Writes one tiled DEFLATE COG per band per scene (``cogs/<item_id>/<band>.tif``; B02 B03
    B04 B08 at 10 m, B05 B06 B07 B8A B11 B12 and SCL at 20 m; DN = reflectance x 10000, plus
    1000 for processing baseline >= 04.00; 0 is nodata), a STAC ``collection.json``,
    ``items.ndjson`` and ``items.json`` mirroring Earth Search v1 (absolute local hrefs),
    ``truth/fields.parquet`` (GeoParquet), ``truth/seasons.parquet``, ``truth/canopy.parquet``
    and ``world.json`` (config, key, per-scene statistics, timings).

    Parameters
    ----------
    out_dir : path
        Target folder. If it already holds a complete world with the same ``config.key()``,
        it is reused (a cache hit) unless ``overwrite``; another world there (its ``cogs/``,
        ``truth/`` and JSON files) is replaced.
    config : WorldConfig, optional
        Default: the demo world (2 overlapping tiles of 3.2 km, 80 dates, 400 fields).
    progress : callable ``(done, total)`` or an object with ``update(n)`` (tqdm), optional
        Called after each scene.
    overwrite : bool
        Rebuild even if a complete world with the same key is there.
    workers : int
        Threads compressing COGs (GDAL releases the GIL). Output does not depend on it.

    Returns
    -------
    World
    """
    config = WorldConfig() if config is None else config
    root = Path(out_dir).resolve()
    meta = root / "world.json"
    if meta.exists() and not overwrite:
        try:
            d = json.loads(meta.read_text())
            if d.get("complete") and d.get("key") == config.key():
                logger.info("synthetic world %s reused from %s", config.key(), root)
                return World(root, config)
        except (OSError, ValueError):
            pass
    for sub in ("cogs", "truth"):
        if (root / sub).exists():
            shutil.rmtree(root / sub)
    if meta.exists():
        meta.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / "cogs").mkdir()
    (root / "truth").mkdir()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ls = landscape(config)
    fields = make_fields(config)
    timings["fields"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    mixers = {tl.name: TileMixer.build(config, ls, tl) for tl in config.tiles}
    used = np.unique(np.concatenate([m.parcels for m in mixers.values()]))
    pos = np.full(len(ls.parcels), -1, dtype=np.int64)
    pos[used] = np.arange(len(used))
    timings["mixing"] = time.perf_counter() - t1

    scenes_by_date: dict[int, list] = {}
    for s in config.scenes:
        scenes_by_date.setdefault(s.date_index, []).append(s)
    plan = sky_plan(config)
    crs = f"EPSG:{config.epsg}"
    total = len(config.scenes)
    done = 0
    items, scene_stats = [], []
    t_render = t_write = 0.0
    dates = config.dates
    tdays = np.asarray((dates - pd.Timestamp(config.start)).days, dtype=float)
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for c0 in range(0, len(dates), _CHUNK_DATES):
            ks = list(range(c0, min(c0 + _CHUNK_DATES, len(dates))))
            tr = time.perf_counter()
            lo = parcel_reflectance(config, ls, used, tdays[ks], 0.85)
            hi = parcel_reflectance(config, ls, used, tdays[ks], 1.15)
            bg = background_reflectance(config, tdays[ks])
            t_render += time.perf_counter() - tr
            for j, k in enumerate(ks):
                tr = time.perf_counter()
                sky, haze = sky_on_date(config, k)
                nod10 = swath_nodata_10m(config, k)
                t_render += time.perf_counter() - tr
                for scene in scenes_by_date.get(k, []):
                    tr = time.perf_counter()
                    mx = mixers[scene.tile.name]
                    tab_lo = np.concatenate([bg[:, j, :], lo[pos[mx.parcels], j, :]])
                    tab_hi = np.concatenate([bg[:, j, :], hi[pos[mx.parcels], j, :]])
                    dn, scl, stats = render_scene(config, mx, scene, tab_lo, tab_hi, sky, haze,
                                                  nod10)
                    t_render += time.perf_counter() - tr
                    tw = time.perf_counter()
                    d = root / "cogs" / scene.id
                    d.mkdir(parents=True, exist_ok=True)
                    hrefs = {}
                    jobs = [(b, dn[b], BAND_RES[b]) for b in BANDS] + [("SCL", scl, 20)]
                    futs = [pool.submit(write_cog, d / f"{b}.tif", arr, scene.tile.transform(res),
                                        crs, blocksize=config.blocksize) for b, arr, res in jobs]
                    for (b, _, _), fu in zip(jobs, futs):
                        fu.result()
                        hrefs[b] = str(d / f"{b}.tif")
                    t_write += time.perf_counter() - tw
                    fp = _footprint(scene, scl)
                    items.append(make_item(config, scene, hrefs, stats, fp,
                                           (plan.sun_azimuth[k], plan.sun_elevation[k])))
                    scene_stats.append({"id": scene.id, "tile": scene.tile.name,
                                        "datetime": items[-1]["properties"]["datetime"],
                                        "processing_baseline": scene.processing_baseline,
                                        "boa_offset_dn": scene.boa_offset_dn,
                                        "sequence": scene.sequence,
                                        "cloud_cover": stats["cloud_cover"],
                                        "planned_cloud_cover": 100.0 * float(plan.cover[k]),
                                        "nodata_percentage": stats["nodata"]})
                    done += 1
                    _report(progress, done, total)
    timings["render"] = t_render
    timings["write_cogs"] = t_write

    t2 = time.perf_counter()
    with open(root / "items.ndjson", "w") as f:
        for it in items:
            f.write(json.dumps(it, sort_keys=True) + "\n")
    (root / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items},
                                                sort_keys=True))
    (root / "collection.json").write_text(json.dumps(make_collection(config, items), indent=1,
                                                     sort_keys=True))
    fields.to_parquet(root / "truth" / "fields.parquet", index=False)
    true_seasons(fields, config).to_parquet(root / "truth" / "seasons.parquet", index=False)
    true_canopy(fields, config).to_parquet(root / "truth" / "canopy.parquet", index=False)
    timings["truth_and_stac"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0

    tgt = ls.background[ls.background["cls"] == "target"].geometry
    summary = {
        "complete": True,
        "key": config.key(),
        "version": __version__,
        "config": config.to_dict(),
        "crs": crs,
        "n_fields": int(len(fields)),
        "n_parcels": int(len(ls.parcels)),
        "n_scenes": len(items),
        "tiles": [{"name": t.name, "bounds": list(t.bounds)} for t in config.tiles],
        "mean_cloud_cover": float(np.mean([s["cloud_cover"] for s in scene_stats])),
        "expected_cloud_cover": 100.0 * plan.expected_cover(),
        "reference_targets": [{"name": "threshing_ground", "center": [g.centroid.x, g.centroid.y],
                               "half_size_m": 30.0,
                               "reflectance": dict(zip(BANDS, map(float, TARGET)))}
                              for g in tgt],
        "scenes": scene_stats,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    meta.write_text(json.dumps(summary, indent=1))
    logger.info("synthetic world %s written to %s in %.1f s", config.key(), root, timings["total"])
    return World(root, config)


def _footprint(scene, scl):
    """Valid-data footprint (UTM polygon) of a scene from its SCL (0 = no data)."""
    import shapely
    from rasterio.features import shapes

    tile = scene.tile
    valid = scl != 0
    if valid.all():
        return shapely.box(*tile.bounds)
    polys = [shapely.geometry.shape(g) for g, v in
             shapes(valid.astype(np.uint8), mask=valid, transform=tile.transform(20)) if v == 1]
    if not polys:
        return shapely.box(*tile.bounds)
    g = max(polys, key=lambda p: p.area).simplify(20.0)
    return shapely.Polygon(g.exterior)
