"""World configuration, tile layout (MGRS-like names) and the scene plan."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from affine import Affine

from ..errors import ConfigError
from .._version import __version__

__all__ = ["WorldConfig", "TileSpec", "SceneSpec", "rng_for", "mgrs_100k_name", "BOA_OFFSET_DN"]

#: DN added to reflectance*10000 by products of processing baseline >= 04.00.
BOA_OFFSET_DN = 1000
#: First day of products generated with processing baseline 04.00.
BASELINE_04_START = pd.Timestamp("2022-01-25")

_COMPONENTS = {
    "fields": 1, "crops": 2, "seasons": 3, "clouds": 4, "obs": 5, "scenes": 6, "texture": 7,
    "background": 8, "weather": 9, "noise": 10, "weather_years": 11,
}


def rng_for(seed: int, component: str, *extra: int) -> np.random.Generator:
    """An independent, reproducible random generator for one component of the world."""
    return np.random.default_rng([int(seed), _COMPONENTS[component], *[int(e) for e in extra]])


def _col_letters(zone: int) -> str:
    return ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")[zone % 3]


_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
_LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"


def mgrs_100k_name(zone: int, lat: float, easting: float, northing: float,
                   dcol: int = 0, drow: int = 0) -> tuple[str, str, str]:
    """MGRS (zone, latitude band, 100 km square) of a UTM point, optionally shifted.

    Returns ``(utm_zone, latitude_band, grid_square)``, e.g. ``("50", "S", "LD")``.
    ``dcol``/``drow`` shift the square east/north, used to name neighbouring synthetic tiles.
    """
    band = _LAT_BANDS[min(max(int((lat + 80) // 8), 0), len(_LAT_BANDS) - 1)]
    col = int(easting // 100_000) - 1 + dcol
    letters = _col_letters(zone)
    c = letters[col % len(letters)]
    row = int(northing // 100_000) + drow
    r = _ROW_LETTERS[(row + (5 if zone % 2 == 0 else 0)) % 20]
    return str(zone), band, c + r


@dataclass(frozen=True)
class TileSpec:
    """One synthetic MGRS-like tile: name and 10 m grid (origin on the 60 m lattice)."""

    name: str            # e.g. "50SLD"
    utm_zone: int
    latitude_band: str
    grid_square: str
    col0: int            # first 10 m column of the tile in the world grid
    row0: int            # first 10 m row of the tile in the world grid
    size_px: int         # 10 m pixels per side
    transform10: Affine  # 10 m transform

    def transform(self, res: int) -> Affine:
        """Affine transform of the tile at ``res`` metres (10, 20 or 60)."""
        t = self.transform10
        return Affine(float(res), 0.0, t.c, 0.0, -float(res), t.f)

    def shape(self, res: int) -> tuple[int, int]:
        n = self.size_px * 10 // res
        return (n, n)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform10
        return (t.c, t.f - 10.0 * self.size_px, t.c + 10.0 * self.size_px, t.f)


@dataclass(frozen=True)
class SceneSpec:
    """One planned scene (item): a tile on an acquisition date, possibly a reprocessing."""

    id: str
    date_index: int
    datetime: pd.Timestamp        # tz-aware UTC
    tile: TileSpec
    platform: str                 # sentinel-2a / sentinel-2b
    processing_baseline: str      # "03.01", "04.00", "05.09"...
    sequence: int                 # 0, or 1 for a reprocessed duplicate
    generation_time: pd.Timestamp  # tz-aware UTC

    @property
    def boa_offset_dn(self) -> int:
        """DN offset of this product: 1000 for baseline >= 04.00, else 0."""
        return BOA_OFFSET_DN if float(self.processing_baseline) >= 4.0 else 0


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of a synthetic Sentinel-2 L2A world (all defaults give the demo world).

    Attributes
    ----------
    seed : master seed; every random step derives its generator from it.
    center_lonlat : centre of the area (degrees). Default Shangqiu, Henan (UTM 50N).
    size_m : side of the farmed area in metres, a number (square) or ``(width, height)``.
        Tiles are laid out to cover it. A county is ~30-40 km.
    tile_size_px : 10 m pixels per tile side (even).
    tile_overlap_px : overlap of neighbouring tiles in 10 m pixels (even), like MGRS tiles.
    start, end : first and last acquisition dates (inclusive), ISO dates.
    revisit_days : days between acquisitions (S2A/S2B alternate).
    n_fields : number of fields registered with the lender (returned by ``make_fields``);
        ``None`` returns every parcel of the landscape. Other parcels are still farmed and
        appear in the imagery.
    cloud_fraction : probability that a date is cloudy (a cloudy date covers 20-100 % of
        the area); clear dates still carry a few percent of scattered clouds.
    swath_edge_fraction : share of dates with a nodata swath edge crossing the area.
    n_reprocessed : number of (tile, date) products that also exist as a reprocessed
        duplicate (sequence 1, newer baseline, later generation time).
    wrong_crop_fraction : share of fields whose declared crop is wrong.
    blocksize : internal tile size of the COGs (256 or 512).
    """

    seed: int = 0
    center_lonlat: tuple[float, float] = (115.65, 34.45)
    size_m: float | tuple[float, float] = (5600.0, 3200.0)
    tile_size_px: int = 320
    tile_overlap_px: int = 80
    start: str = "2021-10-01"
    end: str = "2022-10-31"
    revisit_days: int = 5
    n_fields: int | None = 400
    cloud_fraction: float = 0.5
    swath_edge_fraction: float = 0.1
    n_reprocessed: int = 3
    wrong_crop_fraction: float = 0.05
    blocksize: int = 256

    def __post_init__(self) -> None:
        size = self.size_m
        if isinstance(size, (int, float)):
            size = (float(size), float(size))
        else:
            size = (float(size[0]), float(size[1]))
        object.__setattr__(self, "size_m", size)
        object.__setattr__(self, "center_lonlat",
                           (float(self.center_lonlat[0]), float(self.center_lonlat[1])))
        if min(size) < 500:
            raise ConfigError(f"size_m must be at least 500 m per side, got {size}")
        t, ov = int(self.tile_size_px), int(self.tile_overlap_px)
        if t < 64:
            raise ConfigError(f"tile_size_px must be >= 64, got {t}")
        if t % 2 or ov % 2 or not 0 <= ov < t // 2:
            raise ConfigError(
                f"tile_size_px ({t}) and tile_overlap_px ({ov}) must be even with "
                f"0 <= overlap < tile_size_px/2")
        if self.revisit_days < 1:
            raise ConfigError("revisit_days must be >= 1")
        if not 0.0 <= self.cloud_fraction <= 1.0:
            raise ConfigError(f"cloud_fraction must be within [0, 1], got {self.cloud_fraction}")
        if pd.Timestamp(self.end) < pd.Timestamp(self.start):
            raise ConfigError(f"end ({self.end}) is before start ({self.start})")
        if self.n_fields is not None and self.n_fields < 1:
            raise ConfigError("n_fields must be >= 1 or None")
        if self.blocksize not in (128, 256, 512):
            raise ConfigError("blocksize must be 128, 256 or 512")

    # ------------------------------------------------------------------ presets
    @classmethod
    def small(cls, **overrides) -> "WorldConfig":
        """A full-season world small enough for end-to-end tests (2 tiles of 1.92 km,
        60 fields, 80 dates; ~5 s to render on 2 cores)."""
        kw = dict(size_m=(3300.0, 1900.0), tile_size_px=192, tile_overlap_px=48, n_fields=60,
                  blocksize=128)
        return cls(**{**kw, **overrides})

    @classmethod
    def county(cls, **overrides) -> "WorldConfig":
        """A county-sized world (~30 km, 9 tiles of 10.98 km like MGRS tiles, every parcel
        registered). Tables take minutes; rendering all 80 dates takes long: restrict
        ``start``/``end`` for rasters."""
        kw = dict(size_m=30000.0, tile_size_px=1098, tile_overlap_px=98, n_fields=None,
                  blocksize=512)
        return cls(**{**kw, **overrides})

    @property
    def _size_wh(self) -> tuple[float, float]:
        """``size_m`` as ``(width, height)``, the form ``__post_init__`` stores."""
        return typing.cast(tuple[float, float], self.size_m)

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict:
        """Plain-JSON view of the configuration."""
        d = dataclasses.asdict(self)
        d["size_m"] = list(self._size_wh)
        d["center_lonlat"] = list(self.center_lonlat)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        d = dict(d)
        for k in ("size_m", "center_lonlat"):
            if k in d and isinstance(d[k], list):
                d[k] = tuple(d[k])
        return cls(**d)

    def key(self) -> str:
        """Stable hash of the configuration, library version and crop-model library (its
        content digest), for caching worlds."""
        from ..cropmodel import library_digest

        payload = json.dumps({"config": self.to_dict(), "version": __version__,
                              "generator": "cropyield.synthetic/2",
                              "crop_library": library_digest()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ geometry
    @property
    def epsg(self) -> int:
        lon, lat = self.center_lonlat
        zone = int((lon + 180) // 6) + 1
        return (32600 if lat >= 0 else 32700) + zone

    @property
    def utm_zone(self) -> int:
        return self.epsg % 100

    @cached_property
    def _layout(self):
        from pyproj import Transformer

        lon, lat = self.center_lonlat
        x, y = Transformer.from_crs(4326, self.epsg, always_xy=True).transform(lon, lat)
        w, h = self.size_m
        t, ov = self.tile_size_px, self.tile_overlap_px
        stride = t - ov
        wpx, hpx = int(math.ceil(w / 10.0)), int(math.ceil(h / 10.0))
        nx = max(1, int(math.ceil((wpx - ov) / stride)))
        ny = max(1, int(math.ceil((hpx - ov) / stride)))
        world_w, world_h = (nx - 1) * stride + t, (ny - 1) * stride + t
        # world origin (top-left) on the 60 m lattice, the farmed area centred in it
        x0 = math.floor((x - world_w * 5.0) / 60.0) * 60.0
        y0 = math.ceil((y + world_h * 5.0) / 60.0) * 60.0
        return x0, y0, world_w, world_h, nx, ny

    @property
    def world_transform(self) -> Affine:
        """10 m transform of the world grid (union of all tiles)."""
        x0, y0, *_ = self._layout
        return Affine(10.0, 0.0, x0, 0.0, -10.0, y0)

    @property
    def world_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the world grid at 10 m."""
        _, _, w, h, _, _ = self._layout
        return (h, w)

    @property
    def farm_bounds(self) -> tuple[float, float, float, float]:
        """Bounds of the farmed area (inside the world grid), UTM metres."""
        x0, y0, w, h, _, _ = self._layout
        cx, cy = x0 + w * 5.0, y0 - h * 5.0
        fw, fh = self._size_wh
        return (cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2)

    @cached_property
    def tiles(self) -> tuple[TileSpec, ...]:
        """Tiles, west to east then south to north, named like MGRS tiles."""
        x0, y0, w, h, nx, ny = self._layout
        t, ov = self.tile_size_px, self.tile_overlap_px
        stride = t - ov
        lat = self.center_lonlat[1]
        # the real 100 km square of the world's south-west corner names the first tile
        sw_x, sw_y = x0, y0 - 10.0 * h
        out = []
        for j in range(ny):          # south to north
            for i in range(nx):      # west to east
                col0 = i * stride
                row0 = h - t - j * stride
                zone, band, sq = mgrs_100k_name(self.utm_zone, lat, sw_x, sw_y, dcol=i, drow=j)
                tr = Affine(10.0, 0.0, x0 + 10.0 * col0, 0.0, -10.0, y0 - 10.0 * row0)
                out.append(TileSpec(f"{zone}{band}{sq}", int(zone), band, sq, col0, row0, t, tr))
        return tuple(out)

    # ------------------------------------------------------------------ time
    @cached_property
    def dates(self) -> pd.DatetimeIndex:
        """Acquisition dates (tz-naive midnight)."""
        return pd.date_range(pd.Timestamp(self.start).normalize(), pd.Timestamp(self.end),
                             freq=f"{self.revisit_days}D").as_unit("ns")

    @cached_property
    def days(self) -> pd.DatetimeIndex:
        """Every day of the simulated period (tz-naive midnight)."""
        return pd.date_range(pd.Timestamp(self.start).normalize(),
                             pd.Timestamp(self.end).normalize(), freq="D").as_unit("ns")

    @cached_property
    def scenes(self) -> tuple[SceneSpec, ...]:
        """The planned scenes: every tile on every date, plus reprocessed duplicates."""
        rng = rng_for(self.seed, "scenes")
        out = []
        for k, d in enumerate(self.dates):
            platform = "sentinel-2a" if k % 2 == 0 else "sentinel-2b"
            # 10:40 local solar time, around 02:40 UTC in Henan
            secs = int(rng.integers(0, 60))
            dt = (d + pd.Timedelta(hours=2, minutes=40, seconds=secs)).tz_localize("UTC")
            baseline = "04.00" if d >= BASELINE_04_START else "03.01"
            gen = dt + pd.Timedelta(hours=int(rng.integers(2, 8)), minutes=int(rng.integers(0, 60)))
            for tile in self.tiles:
                out.append(self._scene(k, dt, tile, platform, baseline, 0, gen))
        n_dup = min(self.n_reprocessed, len(self.dates))
        if n_dup:
            picks = sorted(rng.choice(len(out), size=min(n_dup, len(out)), replace=False))
            # make sure at least one duplicate crosses the 04.00 boundary (old date, new baseline)
            for p in picks:
                s = out[p]
                gen = pd.Timestamp("2023-03-01T10:00:00Z") + pd.Timedelta(days=s.date_index)
                out.append(self._scene(s.date_index, s.datetime, s.tile, s.platform, "05.09", 1,
                                       gen))
        out.sort(key=lambda s: (s.datetime, s.tile.name, s.sequence))
        return tuple(out)

    @staticmethod
    def _scene(k, dt, tile, platform, baseline, seq, gen) -> SceneSpec:
        p = "S2A" if platform.endswith("a") else "S2B"
        sid = f"{p}_{tile.name}_{dt.strftime('%Y%m%d')}_{seq}_L2A"
        return SceneSpec(sid, k, dt, tile, platform, baseline, seq, gen)
