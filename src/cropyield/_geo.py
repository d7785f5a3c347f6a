"""Grids, field tables and areas: the geometric vocabulary shared by all stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from affine import Affine
from pyproj import CRS

from .errors import InvalidFieldsError, MissingCRSError

__all__ = ["Grid", "validate_fields", "field_areas", "MU_PER_HA"]

#: 1 ha = 15 mu (1 mu = 666.67 m2).
MU_PER_HA = 15.0


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform and shape ``(height, width)``.

    Sentinel-2 tiles keep their grids across dates, so a grid is a cache key for
    coverage fractions. Equality compares CRS, transform and shape exactly.
    """

    crs: CRS
    transform: Affine
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        crs = CRS.from_user_input(self.crs)
        # CRSs read from GeoTIFF keys and from "EPSG:32650" have different WKT; normalise to
        # the EPSG definition when there is one so that equal grids compare (and hash) equal.
        epsg = crs.to_epsg()
        object.__setattr__(self, "crs", CRS.from_epsg(epsg) if epsg is not None else crs)
        t = self.transform
        if not isinstance(t, Affine):
            t = Affine(*list(t)[:6])
            object.__setattr__(self, "transform", t)
        if t.b != 0 or t.d != 0 or t.e >= 0 or t.a <= 0:
            raise ValueError(f"Grid must be north-up with square-ish pixels, got transform {t!r}")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    @property
    def resolution(self) -> float:
        """Pixel size in CRS units (x)."""
        return float(self.transform.a)

    @property
    def pixel_area(self) -> float:
        """Pixel area in squared CRS units."""
        return float(abs(self.transform.a * self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in CRS units."""
        t, (h, w) = self.transform, self.shape
        return (t.c, t.f + t.e * h, t.c + t.a * w, t.f)

    @property
    def epsg(self) -> int | None:
        return self.crs.to_epsg()

    def key(self) -> tuple[Any, ...]:
        """A hashable identity usable as a cache key."""
        return (self.crs.to_wkt(), tuple(self.transform)[:6], self.shape)

    def __hash__(self) -> int:
        return hash(self.key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grid) and self.key() == other.key()

    def window_of(self, bounds: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """Pixel window ``(row0, col0, row1, col1)`` (end-exclusive, clipped) covering ``bounds``."""
        inv = ~self.transform
        left, bottom, right, top = bounds
        c0, r0 = inv @ (left, top)
        c1, r1 = inv @ (right, bottom)
        h, w = self.shape
        r0, c0 = max(int(np.floor(r0)), 0), max(int(np.floor(c0)), 0)
        r1, c1 = min(int(np.ceil(r1)), h), min(int(np.ceil(c1)), w)
        return r0, c0, max(r1, r0), max(c1, c0)


def validate_fields(fields, *, id_col: str = "field_id"):
    """Check a fields GeoDataFrame and return it (unchanged).

    Raises
    ------
    MissingCRSError
        If the frame has no CRS.
    InvalidFieldsError
        If ``id_col`` is missing or not unique, or a geometry is missing.
    """
    import geopandas as gpd

    if isinstance(fields, gpd.GeoSeries):
        fields = gpd.GeoDataFrame({id_col: np.arange(len(fields))}, geometry=fields)
    if not isinstance(fields, gpd.GeoDataFrame):
        raise InvalidFieldsError(
            f"fields must be a GeoDataFrame with a '{id_col}' column, got {type(fields).__name__}"
        )
    if fields.crs is None:
        raise MissingCRSError(
            "fields have no CRS; set one with fields.set_crs('EPSG:4326') (or the CRS the "
            "coordinates are really in) before calling cropyield"
        )
    if id_col not in fields.columns:
        raise InvalidFieldsError(f"fields have no '{id_col}' column; pass id_col= to name it")
    dup = fields[id_col][fields[id_col].duplicated()]
    if len(dup):
        raise InvalidFieldsError(f"'{id_col}' must be unique; duplicated: {list(dup[:5])}")
    if fields.geometry.isna().any():
        bad = list(fields.loc[fields.geometry.isna(), id_col][:5])
        raise InvalidFieldsError(f"fields without geometry: {bad}")
    return fields


def _utm_crs(fields):
    """The fields' local UTM zone (``estimate_utm_crs``); EPSG:6933 when none can be
    estimated."""
    try:
        return fields.estimate_utm_crs()
    except Exception:
        return CRS.from_epsg(6933)


def field_areas(fields) -> np.ndarray:
    """Area of each field in hectares, computed in an equal-area projection.

    Uses the local UTM zone for projected accuracy when the fields span one zone, and a
    global equal-area CRS (EPSG:6933) otherwise. Geographic CRSs are never used for area.
    """
    if fields.crs is None:
        raise MissingCRSError("fields have no CRS; cannot compute areas")
    crs = _utm_crs(fields)
    try:
        # one UTM zone only when the lon/lat bounds stay inside it; else a global equal-area CRS
        west, _, east, _ = fields.to_crs(4326).total_bounds
        if np.floor((west + 180.0) / 6.0) != np.floor((east + 180.0) / 6.0):
            crs = CRS.from_epsg(6933)
    except Exception:
        crs = CRS.from_epsg(6933)
    return np.asarray(fields.to_crs(crs).geometry.area, dtype=float) / 10_000.0


def field_perimeters(fields) -> np.ndarray:
    """Perimeter of each field in metres, in the fields' local UTM zone (lengths there are
    true to ~0.1 %; a global equal-area CRS would distort them), EPSG:6933 only when no UTM
    zone can be estimated."""
    if fields.crs is None:
        raise MissingCRSError("fields have no CRS; cannot compute perimeters")
    return np.asarray(fields.to_crs(_utm_crs(fields)).geometry.length, dtype=float)


def field_shapes(fields) -> pd.DataFrame:
    """Per field: ``field_id``, ``area_ha`` (:func:`field_areas`, ha), ``perimeter_m``
    (:func:`field_perimeters`, m) and ``lat`` (degrees, of a point inside the polygon, for
    radiation) - what :func:`cropyield.estimate_yield` gives the yield models."""
    return pd.DataFrame({
        "field_id": fields["field_id"].to_numpy(), "area_ha": field_areas(fields),
        "perimeter_m": field_perimeters(fields),
        "lat": np.asarray(fields.to_crs(4326).geometry.representative_point().y, dtype=float)})
