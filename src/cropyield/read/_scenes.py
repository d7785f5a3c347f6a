"""Scene helpers shared by :func:`~cropyield.read.load_cube` and
:func:`cropyield.observations.field_observations`: normalising what callers pass as scenes,
and the acquisition key (local solar day at the scene centre) that groups the tiles of one
overpass.
"""

from __future__ import annotations

from typing import Any

from .._geo import Grid

__all__: list[str] = []


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
