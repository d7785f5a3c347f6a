"""Per-date cloud, cirrus, haze, shadow and swath-edge fields on the world's 20 m grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from ._config import WorldConfig, rng_for

__all__ = ["SkyPlan", "sky_plan", "sky_on_date", "solar_position", "INVALID_SCL"]

#: SCL classes that the library masks by default.
INVALID_SCL = (0, 1, 3, 8, 9, 10, 11)
_SHADOW_MAX_M = 2500.0
_CLOUDY_RANGE = (0.2, 1.0)
_CLEAR_RANGE = (0.0, 0.04)


def solar_position(dt: pd.Timestamp, lat: float, lon: float) -> tuple[float, float]:
    """Sun ``(azimuth, elevation)`` in degrees (NOAA approximation, ~0.1 deg)."""
    dt = pd.Timestamp(dt).tz_convert("UTC") if pd.Timestamp(dt).tzinfo else pd.Timestamp(dt)
    doy = dt.day_of_year
    hour = dt.hour + dt.minute / 60 + dt.second / 3600
    g = 2 * math.pi / 365 * (doy - 1 + (hour - 12) / 24)
    eqt = 229.18 * (0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
                    - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g))
    decl = (0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g)
            - 0.006758 * math.cos(2 * g) + 0.000907 * math.sin(2 * g)
            - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g))
    tst = hour * 60 + eqt + 4 * lon
    ha = math.radians(tst / 4 - 180)
    phi = math.radians(lat)
    cz = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha)
    zen = math.acos(max(-1.0, min(1.0, cz)))
    az = math.degrees(math.atan2(math.sin(ha),
                                 math.cos(ha) * math.sin(phi) - math.tan(decl) * math.cos(phi)))
    return (az + 180.0) % 360.0, 90.0 - math.degrees(zen)


@dataclass(frozen=True)
class SkyPlan:
    """Per-date cloud plan: target cloud cover (fraction of the world), swath edges, sun."""

    cover: np.ndarray          # float, per date: fraction of 20 m world pixels SCL 8/9/10
    cloudy: np.ndarray         # bool, per date: drawn as a cloudy date
    swath: np.ndarray          # (n_dates, 3): has_edge, position (0-1), side (+1 east / -1 west)
    sun_azimuth: np.ndarray
    sun_elevation: np.ndarray
    cloud_height_m: np.ndarray

    def expected_cover(self) -> float:
        return float(self.cover.mean())


@lru_cache(maxsize=8)
def sky_plan(config: WorldConfig) -> SkyPlan:
    """Draw the per-date cloud cover, swath edges and sun angles of a world."""
    rng = rng_for(config.seed, "clouds")
    dates = config.dates
    n = len(dates)
    doy = dates.day_of_year.to_numpy()
    p = np.clip(config.cloud_fraction * (1 + 0.35 * np.cos(2 * np.pi * (doy - 200) / 365.0)), 0, 1)
    cloudy = rng.random(n) < p
    cover = np.where(cloudy, rng.uniform(*_CLOUDY_RANGE, n), rng.uniform(*_CLEAR_RANGE, n))
    swath = np.c_[rng.random(n) < config.swath_edge_fraction, rng.uniform(0.15, 0.7, n),
                  np.where(rng.random(n) < 0.5, 1.0, -1.0)]
    lon, lat = config.center_lonlat
    az, el = zip(*[solar_position((d + pd.Timedelta(hours=2, minutes=40)).tz_localize("UTC"),
                                  lat, lon) for d in dates])
    heights = rng.uniform(800, 2500, n)
    return SkyPlan(cover, cloudy, swath, np.array(az), np.array(el), heights)


def _smooth_noise(rng, shape, cell):
    """Smooth random field: coarse white noise, binomially smoothed, bilinearly upsampled."""
    h, w = shape
    ch, cw = int(math.ceil(h / cell)) + 4, int(math.ceil(w / cell)) + 4
    c = rng.standard_normal((ch, cw))
    for _ in range(2):   # binomial [1, 2, 1] / 4 smoothing along both axes (edges kept)
        c[1:-1, :] = 0.25 * c[:-2, :] + 0.5 * c[1:-1, :] + 0.25 * c[2:, :]
        c[:, 1:-1] = 0.25 * c[:, :-2] + 0.5 * c[:, 1:-1] + 0.25 * c[:, 2:]
    # separable bilinear upsampling (no BLAS: its threads thrash on busy machines)
    y0, fy = _lin(h, cell)
    x0, fx = _lin(w, cell)
    rows = (1 - fy)[:, None] * c[y0] + fy[:, None] * c[y0 + 1]
    out = (1 - fx)[None, :] * rows[:, x0] + fx[None, :] * rows[:, x0 + 1]
    return out / (out.std() + 1e-12)


def _lin(n: int, cell: float) -> tuple[np.ndarray, np.ndarray]:
    x = (np.arange(n) + 0.5) / cell + 1.5
    i0 = np.floor(x).astype(int)
    return i0, x - i0


def sky_on_date(config: WorldConfig, k: int) -> tuple[np.ndarray, np.ndarray]:
    """SCL-like sky classes and haze on the world 20 m grid for date ``k``.

    Returns ``(sky, haze)``: ``sky`` uint8 with 0 clear, 3 cloud shadow, 8 medium cloud,
    9 high cloud, 10 thin cirrus, 255 no data (outside the swath); ``haze`` float32 0-0.35,
    the undetected thin cloud over pixels classed clear (biases indices low).
    """
    plan = sky_plan(config)
    H, W = config.world_shape
    h, w = H // 2, W // 2
    pad = int(math.ceil(_SHADOW_MAX_M / 20.0))
    rng = rng_for(config.seed, "clouds", k + 1)
    ext = (h + 2 * pad, w + 2 * pad)
    v = _smooth_noise(rng, ext, 60) + 0.5 * _smooth_noise(rng, ext, 8)
    inner = v[pad:pad + h, pad:pad + w]
    cover = float(plan.cover[k])
    sky = np.zeros((h, w), dtype=np.uint8)
    haze = np.zeros((h, w), dtype=np.float32)
    if cover > 0:
        thr = np.quantile(inner, 1.0 - cover)
        thr_hi = np.quantile(inner, 1.0 - 0.55 * cover)
        thr_med = np.quantile(inner, 1.0 - 0.85 * cover)
        cl = inner >= thr
        sky[cl] = 10
        sky[inner >= thr_med] = 8
        sky[inner >= thr_hi] = 9
        thr_h = np.quantile(inner, max(0.0, 1.0 - cover - 0.06))
        hz = (inner >= thr_h) & ~cl
        haze[hz] = (0.25 * (inner[hz] - thr_h) / max(thr - thr_h, 1e-9)).astype(np.float32)
        # shadows: ground points whose line to the sun meets a (thick) cloud
        az, el = math.radians(plan.sun_azimuth[k]), math.radians(max(plan.sun_elevation[k], 5))
        d = min(plan.cloud_height_m[k] / math.tan(el), _SHADOW_MAX_M)
        dc = int(round(d * math.sin(az) / 20.0))
        dr = int(round(-d * math.cos(az) / 20.0))
        thick = v >= thr_med
        sh = thick[pad + dr:pad + dr + h, pad + dc:pad + dc + w]
        sky[sh & (sky == 0)] = 3
    has, pos, side = plan.swath[k]
    if has:
        rows, cols = np.mgrid[0:h, 0:w]
        u = (cols - pos * w) * math.cos(math.radians(12)) + (rows - h / 2) * \
            math.sin(math.radians(12))
        sky[(u * side) > 0] = 255
        haze[(u * side) > 0] = 0
    return sky, haze


def swath_nodata_10m(config: WorldConfig, k: int) -> np.ndarray | None:
    """Nodata mask (True beyond the swath edge) on the world 10 m grid, or None."""
    plan = sky_plan(config)
    has, pos, side = plan.swath[k]
    if not has:
        return None
    H, W = config.world_shape
    rows, cols = np.mgrid[0:H, 0:W]
    u = ((cols + 0.5) / 2 - 0.5 - pos * (W // 2)) * math.cos(math.radians(12)) + \
        ((rows + 0.5) / 2 - 0.5 - (H // 2) / 2) * math.sin(math.radians(12))
    return (u * side) > 0
