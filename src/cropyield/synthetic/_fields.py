"""The landscape: village blocks, roads, trees, ponds and smallholder parcels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import shapely
from shapely import affinity
from shapely.geometry import Polygon, box

from ._config import WorldConfig, rng_for

__all__ = ["Landscape", "landscape", "BACKGROUND_CLASSES"]

#: Background land-cover classes between fields (label ids used by the renderer).
BACKGROUND_CLASSES = ("margin", "road", "trees", "village", "water", "target")

_MEDIAN_HA = 0.36       # median parcel area (ha), 3rd Agricultural Census: 7.8 mu per household
_SIGMA_LN = 0.62        # log-normal spread of parcel areas
_MIN_HA, _MAX_HA = 0.05, 2.0


@dataclass(frozen=True)
class Landscape:
    """Everything drawn on the ground, in the world's UTM CRS.

    ``parcels`` holds every farmed parcel (registered or not) with its management;
    ``background`` holds polygons of the background classes (roads, trees, villages, water).
    """

    parcels: "pd.DataFrame"      # GeoDataFrame: parcel, geometry, block, farmer, registered...
    seasons: "pd.DataFrame"      # one row per (parcel, season): canopy parameters, true yield
    background: "pd.DataFrame"   # GeoDataFrame: cls (str), geometry
    crs: str


def _strip_block(rng, bx0, by0, bx1, by1, angle):
    """Partition one farmland block into jittered strip parcels (local frame, then rotated)."""
    w, h = bx1 - bx0, by1 - by0
    along_x = rng.random() < 0.5          # strips' long axis direction
    # furlongs across the long axis of the strips
    span_long, span_cross = (w, h) if not along_x else (h, w)
    polys = []
    pos = 0.0
    while pos < span_long - 20:
        L = float(rng.uniform(60, 200))
        if span_long - (pos + L) < 60:
            L = span_long - pos
        # strip boundaries across the furlong
        cuts = [0.0]
        while cuts[-1] < span_cross:
            a = math.exp(rng.normal(math.log(_MEDIAN_HA), _SIGMA_LN))
            a = min(max(a, _MIN_HA * 1.15), _MAX_HA * 0.8)
            width = max(a * 10_000.0 / L, 10.0)
            cuts.append(cuts[-1] + width)
        cuts[-1] = span_cross
        if len(cuts) > 2 and cuts[-1] - cuts[-2] < 8.0:
            del cuts[-2]
        # independent jitter of each boundary at both ends of the furlong -> quadrilaterals
        jit = np.zeros((len(cuts), 2))
        for k in range(1, len(cuts) - 1):
            gap = min(cuts[k] - cuts[k - 1], cuts[k + 1] - cuts[k])
            jit[k] = rng.uniform(-1, 1, 2) * min(4.0, 0.2 * gap)
        a0, a1 = pos, pos + L - 2.5       # 2.5 m path between furlongs
        cu = np.asarray(cuts)
        c0_, c1_ = cu + jit[:, 0], cu + jit[:, 1]     # boundary positions at both ends
        k = np.arange(len(cuts) - 1)
        if along_x:   # long axis = y
            q = np.stack([np.c_[c0_[k], np.full(len(k), a0)],
                          np.c_[c0_[k + 1], np.full(len(k), a0)],
                          np.c_[c1_[k + 1], np.full(len(k), a1)],
                          np.c_[c1_[k], np.full(len(k), a1)]], axis=1)
        else:         # long axis = x
            q = np.stack([np.c_[np.full(len(k), a0), c0_[k]], np.c_[np.full(len(k), a1), c1_[k]],
                          np.c_[np.full(len(k), a1), c1_[k + 1]],
                          np.c_[np.full(len(k), a0), c0_[k + 1]]], axis=1)
        polys.append(q + np.array([bx0, by0]))
        pos += L
    if not polys:
        return []
    arr = shapely.polygons(np.concatenate(polys))
    arr = shapely.buffer(arr, -0.4, join_style="mitre")          # field ridges
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    arr = shapely.transform(arr, lambda c: np.c_[cx + ca * (c[:, 0] - cx) - sa * (c[:, 1] - cy),
                                                 cy + sa * (c[:, 0] - cx) + ca * (c[:, 1] - cy)])
    clip = box(bx0, by0, bx1, by1)
    arr = shapely.intersection(arr, clip)
    return list(arr)


def _ellipse(cx, cy, rx, ry, angle, n=24, rng=None):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1.0 + (rng.uniform(-0.15, 0.15, n) if rng is not None else 0)
    p = Polygon(np.c_[cx + rx * r * np.cos(t), cy + ry * r * np.sin(t)])
    return affinity.rotate(p, angle, origin=(cx, cy))


def _largest_polygon(g):
    if g.is_empty:
        return g
    if g.geom_type == "Polygon":
        return g
    parts = [p for p in getattr(g, "geoms", []) if p.geom_type == "Polygon"]
    return max(parts, key=lambda p: p.area) if parts else shapely.Polygon()


@lru_cache(maxsize=4)
def landscape(config: WorldConfig) -> Landscape:
    """Build (and cache) the landscape of ``config``: parcels, farmers, background."""
    import geopandas as gpd

    from ._canopy import assign_management

    rng = rng_for(config.seed, "fields")
    t = config.world_transform
    H, W = config.world_shape
    wx0, wy1 = t.c, t.f
    wx1, wy0 = wx0 + 10.0 * W, wy1 - 10.0 * H

    # ---- road network: block edges
    def edges(lo, hi):
        xs = [lo]
        while xs[-1] < hi:
            xs.append(xs[-1] + float(rng.uniform(380, 900)))
        xs[-1] = hi
        return xs

    xs, ys = edges(wx0, wx1), edges(wy0, wy1)
    background: list[tuple[str, Polygon]] = []
    polys, blocks = [], []
    bid = 0
    for j in range(len(ys) - 1):
        for i in range(len(xs) - 1):
            road = float(rng.uniform(5, 9))
            trees = rng.random() < 0.4
            m = road / 2 + (5.0 if trees else 0.5)
            bx0, by0, bx1, by1 = xs[i] + m, ys[j] + m, xs[i + 1] - m, ys[j + 1] - m
            if bx1 - bx0 < 60 or by1 - by0 < 60:
                continue
            if trees:
                outer = box(xs[i] + road / 2, ys[j] + road / 2, xs[i + 1] - road / 2,
                            ys[j + 1] - road / 2)
                background.append(("trees", outer.difference(box(bx0, by0, bx1, by1))))
            angle = float(rng.uniform(-6, 6))
            parts = _strip_block(rng, bx0, by0, bx1, by1, angle)
            holes = []
            if rng.random() < 0.22:       # a village in the block
                rx, ry = rng.uniform(70, 220, 2)
                cx, cy = rng.uniform(bx0 + rx, max(bx1 - rx, bx0 + rx + 1)), \
                    rng.uniform(by0 + ry, max(by1 - ry, by0 + ry + 1))
                v = _ellipse(cx, cy, rx, ry, angle, rng=rng).intersection(box(bx0, by0, bx1, by1))
                background.append(("village", v))
                holes.append(v.buffer(3.0))
            if rng.random() < 0.07:       # a pond
                rx, ry = rng.uniform(20, 60, 2)
                # blocks narrower than the pond: centre it anyway (same draws as other seeds)
                cx, cy = rng.uniform(bx0 + rx, max(bx1 - rx, bx0 + rx + 1)), \
                    rng.uniform(by0 + ry, max(by1 - ry, by0 + ry + 1))
                p = _ellipse(cx, cy, rx, ry, angle, rng=rng)
                background.append(("water", p))
                holes.append(p.buffer(2.0))
            if holes:
                hole = shapely.union_all(holes)
                parts = list(shapely.difference(np.asarray(parts, dtype=object), hole))
            for p in parts:
                p = _largest_polygon(p)
                if not p.is_empty and p.area >= 300.0:
                    polys.append(p)
                    blocks.append(bid)
            bid += 1
    # a bright threshing ground (radiometric reference target, 60 m square) in the middle
    cx, cy = (wx0 + wx1) / 2, (wy0 + wy1) / 2
    cx, cy = math.floor(cx / 10) * 10 + 0.0, math.floor(cy / 10) * 10 + 0.0
    target = box(cx - 30, cy - 30, cx + 30, cy + 30)
    background.append(("target", target))
    keep = []
    for p_, b_ in zip(polys, blocks):
        if p_.intersects(target):
            p_ = _largest_polygon(p_.difference(target.buffer(2.0)))
            if p_.is_empty or p_.area < 300.0:
                continue
        keep.append((p_, b_))
    polys, blocks = [k_[0] for k_ in keep], [k_[1] for k_ in keep]
    # roads: the grid lines, buffered
    road_lines = [shapely.LineString([(x, wy0), (x, wy1)]) for x in xs] + \
                 [shapely.LineString([(wx0, y), (wx1, y)]) for y in ys]
    background.append(("road", shapely.union_all([ln.buffer(3.5) for ln in road_lines])))

    parcels = gpd.GeoDataFrame({"block": np.asarray(blocks, dtype=np.int32)},
                               geometry=polys, crs=f"EPSG:{config.epsg}")
    g = shapely.transform(np.asarray(parcels.geometry.values), lambda c: np.round(c, 2))  # cm
    bad = ~shapely.is_valid(g)
    if bad.any():
        g[bad] = [_largest_polygon(x) for x in shapely.make_valid(g[bad])]
    parcels.geometry = g
    parcels["parcel"] = np.arange(len(parcels), dtype=np.int32)
    parcels["area_ha"] = parcels.geometry.area / 10_000.0

    # ---- farmers: each holds 1-10 plots, mostly within one village block
    farmer = np.empty(len(parcels), dtype=np.int64)
    fid = 0
    order = rng.permutation(len(parcels))
    by_block = pd.Series(order).groupby(parcels["block"].to_numpy()[order]).apply(list)
    for plist in by_block:
        k = 0
        while k < len(plist):
            n = 1 + min(int(rng.poisson(2.3)), 9)
            for p in plist[k:k + n]:
                farmer[p] = fid
            k += n
            fid += 1
    parcels["farmer"] = farmer
    parcels["edge_case"] = ""

    # ---- edge cases: a sliver carved out of a big parcel, a sub-pixel garden plot
    fb = box(*config.farm_bounds)
    inside = parcels.geometry.within(fb).to_numpy()
    big = np.flatnonzero(inside & (parcels["area_ha"].to_numpy() > 0.6))
    extra = []
    if len(big):
        k = int(big[rng.integers(len(big))])
        g = parcels.geometry.iloc[k]
        rect = np.asarray(g.minimum_rotated_rectangle.exterior.coords)[:4]
        e = [(np.linalg.norm(rect[(i + 1) % 4] - rect[i]), i) for i in range(4)]
        _, i0 = max(e)
        p0, p1 = rect[i0], rect[(i0 + 1) % 4]
        d = (p1 - p0) / np.linalg.norm(p1 - p0)
        nrm = np.array([-d[1], d[0]])
        if np.dot(rect[(i0 + 2) % 4] - p0, nrm) < 0:
            nrm = -nrm
        strip = Polygon([p0, p1, p1 + 5.0 * nrm, p0 + 5.0 * nrm])
        sliver = _largest_polygon(g.intersection(strip))
        rest = _largest_polygon(g.difference(strip.buffer(0.5)))
        parcels.loc[parcels.index[k], "geometry"] = rest
        extra.append(dict(block=parcels["block"].iloc[k], geometry=sliver,
                          farmer=parcels["farmer"].iloc[k], edge_case="sliver"))
    vil = [g for c, g in background if c == "village" and g.within(fb) and g.area > 2000]
    if vil:
        c = vil[0].representative_point()
        extra.append(dict(block=-1, geometry=box(c.x - 3.5, c.y - 4.5, c.x + 3.5, c.y + 4.5),
                          farmer=int(parcels["farmer"].iloc[0]), edge_case="subpixel"))
    if extra:
        ex = gpd.GeoDataFrame(extra, geometry="geometry", crs=parcels.crs)
        parcels = pd.concat([parcels, ex], ignore_index=True)
        parcels["parcel"] = np.arange(len(parcels), dtype=np.int32)
        parcels["block"] = parcels["block"].astype(np.int32)
    parcels["area_ha"] = parcels.geometry.area / 10_000.0

    # straddling: crosses an internal tile edge
    lines = []
    for tl in config.tiles:
        x0, y0, x1, y1 = tl.bounds
        lines.append(shapely.LinearRing([(x0, y0), (x1, y0), (x1, y1), (x0, y1)]))
    world_ring = box(wx0, wy0, wx1, wy1).exterior
    internal = shapely.union_all(lines).difference(world_ring.buffer(1.0))
    crosses = parcels.geometry.intersects(internal).to_numpy() if not internal.is_empty else \
        np.zeros(len(parcels), bool)

    # ---- registration: whole farmer holdings inside the farmed area
    inside = parcels.geometry.within(fb).to_numpy()
    area = parcels["area_ha"].to_numpy()
    ok_size = (area >= _MIN_HA) & (area <= _MAX_HA)
    eligible = inside & (ok_size | (parcels["edge_case"].to_numpy() != ""))
    registered = np.zeros(len(parcels), bool)
    if config.n_fields is None:
        registered = eligible.copy()
    else:
        shuffled = rng.permutation(np.unique(parcels["farmer"].to_numpy()[eligible]))
        # the farmers of the edge cases and of one straddling parcel come first
        first = list(parcels.loc[parcels["edge_case"] != "", "farmer"].unique())
        st = np.flatnonzero(crosses & eligible)
        if len(st):
            first.append(int(parcels["farmer"].iloc[int(st[rng.integers(len(st))])]))
        farmers = list(dict.fromkeys([*first, *shuffled]))
        count = 0
        farr = parcels["farmer"].to_numpy()
        for f in farmers:
            idx = np.flatnonzero((farr == f) & eligible)
            take = idx[: max(0, config.n_fields - count)]
            registered[take] = True
            count += len(take)
            if count >= config.n_fields:
                break
    parcels["registered"] = registered
    ec = parcels["edge_case"].to_numpy().astype(object)
    ec[crosses & (ec == "")] = "straddle"
    parcels["edge_case"] = ec

    parcels, seasons = assign_management(parcels, config)
    bg = gpd.GeoDataFrame({"cls": [c for c, _ in background]},
                          geometry=[g for _, g in background], crs=parcels.crs)
    return Landscape(parcels=parcels, seasons=seasons, background=bg, crs=f"EPSG:{config.epsg}")
