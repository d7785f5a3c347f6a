"""Rendering scenes: sub-pixel mixing, texture, blur, clouds, SCL, DN with BOA offset, COGs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._canopy import (BANDS, CLOUD, CROP_IDS, CROPS, ROAD, VILLAGE, WATER, canopy_state,
                      reflectance_from_state, weather_wetness)
from ._clouds import _smooth_noise
from ._config import SceneSpec, TileSpec, WorldConfig, rng_for
from ._fields import BACKGROUND_CLASSES, Landscape

__all__ = ["TileMixer", "render_scene", "BAND_RES", "TARGET", "write_cog"]

#: Native resolution (m) of each band written.
BAND_RES = {"B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
            "B8A": 20, "B11": 20, "B12": 20}
#: Reflectance of the bright threshing-ground reference target (60 m square).
TARGET = np.array([0.20, 0.22, 0.24, 0.26, 0.27, 0.28, 0.29, 0.30, 0.33, 0.30])
_SUPER = 5            # 2 m sub-pixels per 10 m pixel side
_NBG = len(BACKGROUND_CLASSES)


@dataclass
class TileMixer:
    """Exact sub-pixel (2 m) composition of every 10 m pixel of a tile.

    ``pix``/``lab``/``frac``: for each (pixel, label) pair, the area fraction of the label in
    the pixel; labels ``< n_bg`` are background classes, others index ``parcels``.
    """

    tile: TileSpec
    pix: np.ndarray
    lab: np.ndarray
    frac: np.ndarray
    parcels: np.ndarray      # landscape parcel ids of labels n_bg..
    texture: np.ndarray      # (H, W) 0-1 within-field vigour texture
    noise_bank: np.ndarray   # standard normal float32, 2 x pixels
    pure_pix: np.ndarray
    pure_lab: np.ndarray
    mix_pix: np.ndarray
    mix_lab: np.ndarray
    mix_frac: np.ndarray
    mix_starts: np.ndarray
    mix_target: np.ndarray

    @classmethod
    def build(cls, config: WorldConfig, ls: Landscape, tile: TileSpec) -> "TileMixer":
        import shapely
        from affine import Affine
        from rasterio.features import rasterize

        n = tile.size_px
        t = tile.transform10
        fine = Affine(10.0 / _SUPER, 0, t.c, 0, -10.0 / _SUPER, t.f)
        shape = (n * _SUPER, n * _SUPER)
        bbox = shapely.box(*tile.bounds)
        shapes = []
        for c, g in zip(ls.background["cls"], ls.background.geometry):
            if c != "margin" and g.intersects(bbox):
                shapes.append((g, BACKGROUND_CLASSES.index(c)))
        pk = ls.parcels
        hit = pk.geometry.intersects(bbox).to_numpy()
        pids = pk["parcel"].to_numpy()[hit]
        shapes += [(g, _NBG + i) for i, g in enumerate(pk.geometry.to_numpy()[hit])]
        lab2 = rasterize(shapes, out_shape=shape, transform=fine, fill=0, dtype="int32")
        nl = _NBG + len(pids)
        c = (np.arange(shape[1]) // _SUPER).astype(np.int64)[None, :]
        uks, cnts = [], []
        step = 64 * _SUPER      # strips of 64 output rows bound the memory on large tiles
        for r0 in range(0, shape[0], step):
            r = (np.arange(r0, min(r0 + step, shape[0])) // _SUPER).astype(np.int64)[:, None]
            key = ((r * n + c) * nl + lab2[r0:r0 + step]).reshape(-1)
            uk, cnt = np.unique(key, return_counts=True)
            uks.append(uk)
            cnts.append(cnt)
        del lab2
        uk, cnt = np.concatenate(uks), np.concatenate(cnts)
        pix, lab = uk // nl, (uk % nl).astype(np.int32)
        frac = cnt / float(_SUPER * _SUPER)
        # pure pixels (one label) are gathered directly; mixed ones are summed per pixel
        per_pix = np.bincount(pix, minlength=n * n)
        pure = per_pix[pix] == 1
        # within-field texture on the world grid (same in overlapping tiles)
        H, W = config.world_shape
        tex = _smooth_noise(rng_for(config.seed, "texture"), (H, W), 4)
        tex = 1.0 / (1.0 + np.exp(-1.5 * tex))
        tex = tex[tile.row0:tile.row0 + n, tile.col0:tile.col0 + n]
        mp = pix[~pure]
        starts = np.flatnonzero(np.r_[True, mp[1:] != mp[:-1]]) if len(mp) else np.zeros(0, int)
        bank = rng_for(config.seed, "noise", 10**6, config.tiles.index(tile)).standard_normal(
            2 * n * n, dtype=np.float32)
        return cls(tile, pix, lab, frac, pids, np.ascontiguousarray(tex, dtype=np.float32), bank,
                   pix[pure], lab[pure], mp, lab[~pure], frac[~pure].astype(np.float32),
                   starts, mp[starts] if len(mp) else mp)


def background_reflectance(config: WorldConfig, t: np.ndarray) -> np.ndarray:
    """Reflectance of the background classes on days ``t``: (n_bg, len(t), 10)."""
    t = np.asarray(t, dtype=float)
    start = np.datetime64(str(np.datetime64(config.start, "D")))
    doy = ((start + t.astype("timedelta64[D]")).astype("datetime64[D]")
           - (start + t.astype("timedelta64[D]")).astype("datetime64[Y]")).astype(int) + 1
    wet = weather_wetness(config)[np.clip(t.astype(int), 0, len(config.days) - 1)]
    lg_grass = 0.25 + 0.9 / (1 + np.exp(-(doy - 100) / 8.0)) / (1 + np.exp((doy - 300) / 8.0))
    lg_tree = 0.3 + 3.0 / (1 + np.exp(-(doy - 105) / 5.0)) / (1 + np.exp((doy - 310) / 6.0))
    z = np.zeros((2, len(t)))
    st = dict(lai_green=np.vstack([lg_grass, lg_tree]),
              lai_brown=np.vstack([0.3 + 0 * t, 1.0 + 0 * t]),
              residue=np.vstack([0.2 + 0 * t, 0.5 + 0 * t]), flood=z)
    veg, _ = reflectance_from_state(st, k=0.5, soil_brightness=np.ones(2), wetness=wet)
    out = np.empty((_NBG, len(t), len(BANDS)))
    out[BACKGROUND_CLASSES.index("margin")] = veg[0]
    out[BACKGROUND_CLASSES.index("trees")] = veg[1]
    out[BACKGROUND_CLASSES.index("road")] = ROAD
    out[BACKGROUND_CLASSES.index("village")] = 0.75 * VILLAGE + 0.25 * veg[1]
    out[BACKGROUND_CLASSES.index("water")] = WATER
    out[BACKGROUND_CLASSES.index("target")] = TARGET
    return out


def parcel_reflectance(config: WorldConfig, ls: Landscape, parcels: np.ndarray, t: np.ndarray,
                       lai_scale: float) -> np.ndarray:
    """Reflectance of parcels on days ``t``: (n, len(t), 10)."""
    st = canopy_state(ls.seasons, parcels, t, lai_scale=lai_scale)
    kk = np.array([CROPS[c]["k"] for c in CROP_IDS])
    k = np.where(st["crop_idx"] >= 0, kk[np.maximum(st["crop_idx"], 0)], 0.5)
    wet = weather_wetness(config)[np.clip(np.asarray(t, dtype=int), 0, len(config.days) - 1)]
    sb = ls.parcels["soil_brightness"].to_numpy()[parcels]
    refl, _ = reflectance_from_state(st, k=k, soil_brightness=sb, wetness=wet)
    return refl


def _blur(a: np.ndarray, w: float | np.floating = 0.12) -> np.ndarray:
    """Separable 3-tap sensor PSF over the last two axes (edge pixels replicate)."""
    w = np.float32(w)
    c = np.float32(1) - 2 * w
    out = a * c
    out[..., 1:, :] += w * a[..., :-1, :]
    out[..., 0, :] += w * a[..., 0, :]
    out[..., :-1, :] += w * a[..., 1:, :]
    out[..., -1, :] += w * a[..., -1, :]
    a = out
    out = a * c
    out[..., :, 1:] += w * a[..., :, :-1]
    out[..., :, 0] += w * a[..., :, 0]
    out[..., :, :-1] += w * a[..., :, 1:]
    out[..., :, -1] += w * a[..., :, -1]
    return out


def render_scene(config: WorldConfig, mixer: TileMixer, scene: SceneSpec, refl_lo: np.ndarray,
                 refl_hi: np.ndarray, sky: np.ndarray, haze: np.ndarray,
                 nodata10: np.ndarray | None) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Render one scene: DN arrays per band (native resolution), SCL (20 m), statistics.

    ``refl_lo``/``refl_hi`` are label reflectance tables (n_labels, 10) at low/high vigour;
    ``sky``/``haze`` are the world 20 m sky classes and haze; ``nodata10`` the world 10 m
    swath mask or None.
    """
    tile = mixer.tile
    n = tile.size_px
    npx = n * n
    u = mixer.texture.reshape(-1)
    rng = rng_for(config.seed, "noise", scene.date_index, config.tiles.index(tile))
    t_lo = np.asarray(refl_lo, dtype=np.float32)
    t_d = np.asarray(refl_hi, dtype=np.float32) - t_lo
    flat = np.empty((npx, len(BANDS)), dtype=np.float32)
    pp, pl = mixer.pure_pix, mixer.pure_lab
    flat[pp] = t_lo[pl] + u[pp, None] * t_d[pl]
    if len(mixer.mix_pix):
        mp, ml = mixer.mix_pix, mixer.mix_lab
        contrib = mixer.mix_frac[:, None] * (t_lo[ml] + u[mp, None] * t_d[ml])
        flat[mixer.mix_target] = np.add.reduceat(contrib, mixer.mix_starts, axis=0)
    r10 = _blur(np.ascontiguousarray(flat.T).reshape(len(BANDS), n, n))
    r0, c0, s = tile.row0 // 2, tile.col0 // 2, n // 2
    sk = sky[r0:r0 + s, c0:c0 + s]
    hz = haze[r0:r0 + s, c0:c0 + s]
    sk10 = np.repeat(np.repeat(sk, 2, 0), 2, 1)
    # atmosphere: undetected haze, clouds, cirrus and shadows (only where present)
    cl = CLOUD.astype(np.float32)[:, None]
    hzm = hz > 0
    if hzm.any():
        h10 = np.repeat(np.repeat(hz, 2, 0), 2, 1)
        m = h10 > 0
        hv = h10[m][None, :]
        r10[:, m] = (1 - hv) * r10[:, m] + hv * cl
    if (sk > 0).any():
        bright = (1.0 + 0.25 * rng.random((s, s))).astype(np.float32)
        bright10 = np.repeat(np.repeat(bright, 2, 0), 2, 1)
        for cls_, a_surf, a_cloud in ((9, 0.0, 1.0), (8, 0.25, 0.75), (10, 0.65, 0.35)):
            m = sk10 == cls_
            if m.any():
                bv = bright10[m][None, :] if cls_ != 10 else 1.0
                r10[:, m] = a_surf * r10[:, m] + a_cloud * cl * bv
        m = sk10 == 3
        if m.any():
            shade = np.array([0.35, 0.35, 0.35, 0.38, 0.42, 0.45, 0.45, 0.45, 0.45, 0.45],
                             dtype=np.float32)[:, None]
            r10[:, m] = r10[:, m] * shade
    # sensor noise at each band's native resolution: windows of a per-tile noise bank at
    # random offsets (independent enough, and far cheaper than fresh normals)
    bank = mixer.noise_bank
    offs = rng.integers(0, npx, size=len(BANDS))
    # SCL at 20 m
    r20 = np.float32(0.25) * (r10[:, 0::2, 0::2] + r10[:, 1::2, 0::2] + r10[:, 0::2, 1::2]
                              + r10[:, 1::2, 1::2])
    sd = np.float32(0.004)
    for b, name in enumerate(BANDS):
        if BAND_RES[name] == 10:
            r10[b] += bank[offs[b]:offs[b] + npx].reshape(n, n) * sd * (1 + 2 * r10[b])
        else:
            r20[b] += bank[offs[b]:offs[b] + s * s].reshape(s, s) * sd * (1 + 2 * r20[b])
    red, nir = r20[2], r20[6]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    scl = np.where(ndvi > 0.35, 4, 5).astype(np.uint8)
    scl[(ndvi < 0.05) & (nir < 0.08)] = 6
    scl = np.where(sk > 0, sk, scl).astype(np.uint8)
    nod20 = sk == 255
    scl[nod20] = 0
    if nodata10 is not None:
        nod10 = nodata10[tile.row0:tile.row0 + n, tile.col0:tile.col0 + n]
    else:
        nod10 = np.zeros((n, n), bool)
    off = scene.boa_offset_dn
    out = {}
    for b, name in enumerate(BANDS):
        if BAND_RES[name] == 10:
            arr, nod = r10[b], nod10
        else:
            arr, nod = r20[b], nod20
        dn = np.clip(np.round(arr * 10000.0) + off, 1, 65535).astype(np.uint16)
        dn[nod] = 0
        out[name] = dn
    valid = ~nod20
    nv = max(int(valid.sum()), 1)
    stats = {
        "cloud_cover": 100.0 * float(np.isin(sk[valid], (8, 9, 10)).sum()) / nv,
        "nodata": 100.0 * float(nod20.mean()),
        "classes": {int(c): 100.0 * float((scl[valid] == c).sum()) / nv
                    for c in (3, 4, 5, 6, 8, 9, 10)},
    }
    return out, scl, stats


def write_cog(path, arr: np.ndarray, transform, crs: str, *, blocksize: int = 256,
              nodata: int = 0) -> None:
    """Write one band as a tiled DEFLATE COG (predictor 2, no overviews)."""
    import rasterio

    with rasterio.open(path, "w", driver="COG", width=arr.shape[1], height=arr.shape[0],
                       count=1, dtype=arr.dtype.name, crs=crs, transform=transform,
                       nodata=nodata, blocksize=blocksize, compress="DEFLATE", predictor=2,
                       overviews="NONE", num_threads=1) as dst:
        dst.write(arr, 1)
