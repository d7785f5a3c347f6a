"""Exact pixel-coverage fractions of field polygons on a raster grid.

For every field and every pixel it touches, :func:`coverage_fractions` returns the exact
fraction of the pixel's area that lies inside the polygon (holes and multipolygons included),
computed in a numba kernel after the fields are reprojected to the grid's CRS.

Method
------
The kernel works in pixel coordinates ``(u, v) = (column, row)`` (continuous; pixel
``(r, c)`` is the square ``[c, c+1] x [r, r+1]``). By Green's theorem, for a closed
polygon ``P`` and a cell column ``c``::

    area(P ∩ row r ∩ column c) = ∮_{∂P ∩ strip r} clamp(u - c, 0, 1) dv

because the strip's horizontal boundaries have ``dv = 0``. Each polygon edge is therefore
clipped to the row strips it crosses and split at the column boundaries; a piece inside
column ``c`` contributes ``(mean u - c) dv`` to that cell and ``dv`` to every cell on its
left (accumulated with a reverse cumulative sum). This is the edge-walking decomposition
used by exactextract (Baston 2022), costs O(edge-cell crossings + bounding-box cells) per
polygon and is exact up to floating-point rounding. Ring orientation is normalised
(exteriors add, holes subtract) whatever the input winding.

The result is cached per ``(grid, geometries)`` so that every date observed on the same
Sentinel-2 tile grid reuses it (see :class:`CoverageCache`).

Public entry points
-------------------
:func:`coverage_fractions`
    Fields (GeoDataFrame) + :class:`~cropyield._geo.Grid` -> :class:`Coverage` (CSR rows,
    columns and fractions per field, with purity and flags), cached in
    :data:`COVERAGE_CACHE`.
:class:`Coverage`, :class:`CoverageCache`, :func:`flags_to_bits`, :func:`bits_to_flags`
    The result type, its cache, and the flag-string <-> bit-mask helpers.

The numba kernels live in :mod:`cropyield._coverage_kernels`; the batching and threading
around them (:func:`_kernel_batches`) stay here.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._coverage_kernels import _coverage_kernel
from ._geo import Grid, validate_fields
from ._log import logger
from .errors import MissingCRSError, split_flags

__all__ = [
    "Coverage",
    "CoverageCache",
    "COVERAGE_CACHE",
    "coverage_fractions",
    "PURE_TOLERANCE",
    "MIN_PURE_PIXELS",
    "flags_to_bits",
    "bits_to_flags",
]

#: A pixel is "pure" (fully inside its field) when its fraction is >= 1 - PURE_TOLERANCE.
PURE_TOLERANCE = 1e-9
#: Below this many pure pixels a field is flagged ``FIELD_TOO_SMALL`` (~10 pure
#: pixels = 0.1 ha = 1.5 mu).
MIN_PURE_PIXELS = 10
#: Cells whose computed coverage is below this (in pixels) are dropped as rounding noise.
_EPS = 1e-12
#: Upper bound on bounding-box cells handled by one kernel call (memory guard).
_BATCH_CELLS = 4_000_000
#: Above this many bounding-box cells the kernel runs as two halves in two threads.
_SPLIT_CELLS = 100_000


# ---------------------------------------------------------------------------------------------
# Coverage result
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Coverage:
    """Exact coverage fractions of fields on one grid, in CSR layout.

    Attributes
    ----------
    grid : Grid
        The grid the pixel indices refer to.
    field_ids : numpy.ndarray
        Field identifiers, in input order.
    offsets : numpy.ndarray of int64, shape (n_fields + 1,)
        Pixels of field ``i`` are ``offsets[i]:offsets[i + 1]``.
    rows, cols : numpy.ndarray of int32, shape (n,)
        Pixel indices on ``grid`` (only pixels inside the grid), raster order per field.
    fractions : numpy.ndarray of float64, shape (n,)
        Fraction of the pixel's area inside the polygon, in (0, 1].
    area_px : numpy.ndarray of float64, shape (n_fields,)
        Polygon area / pixel area (unclipped by the grid; NaN for invalid geometry).
    flags : list of str
        Per-field geometric flags: ``INVALID_GEOMETRY``, ``NO_OVERLAP`` (no pixel in the
        grid), ``SUBPIXEL_FIELD`` (area < 1 pixel), ``FIELD_TOO_SMALL`` (fewer than
        ``min_pure_pixels`` pure pixels in the grid).

    Notes
    -----
    Sentinel-2 10 m, 20 m and 60 m grids of a tile share their origin, so a 20 m pixel is
    exactly 2 x 2 10 m pixels: the 10 m pixel ``(r, c)`` lies in the 20 m pixel
    ``(r // 2, c // 2)`` (see :meth:`coarse_pixels`, :meth:`to_coarser`).
    """

    grid: Grid
    field_ids: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    fractions: np.ndarray
    area_px: np.ndarray
    flags: list[str]
    min_pure_pixels: int = MIN_PURE_PIXELS
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def n_fields(self) -> int:
        """Number of fields (including those without pixels)."""
        return int(len(self.offsets) - 1)

    def __len__(self) -> int:
        return self.n_fields

    @property
    def nnz(self) -> int:
        """Total number of (field, pixel) entries."""
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (including cached derived arrays), in bytes."""
        arrays = [self.offsets, self.rows, self.cols, self.fractions, self.area_px]
        for v in list(self._derived.values()):
            arrays.extend(x for x in (v if isinstance(v, tuple) else (v,))
                          if isinstance(x, np.ndarray))
        return int(sum(a.nbytes for a in arrays)) + 64 * self.n_fields

    @property
    def pixel_field(self) -> np.ndarray:
        """Field index (0..n_fields-1) of every entry, int64 array of shape (nnz,)."""
        if "pixel_field" not in self._derived:
            pf = np.repeat(np.arange(self.n_fields, dtype=np.int64), np.diff(self.offsets))
            pf.setflags(write=False)
            self._derived["pixel_field"] = pf
        return self._derived["pixel_field"]

    @property
    def n_pixels(self) -> np.ndarray:
        """Number of grid pixels touched by each field (int64, shape (n_fields,))."""
        return np.diff(self.offsets)

    @property
    def n_pure(self) -> np.ndarray:
        """Number of pure pixels per field (fraction >= 1 - PURE_TOLERANCE), int64."""
        if "n_pure" not in self._derived:
            pure = self.fractions >= 1.0 - PURE_TOLERANCE
            npure = np.bincount(self.pixel_field[pure], minlength=self.n_fields).astype(np.int64)
            npure.setflags(write=False)
            self._derived["n_pure"] = npure
        return self._derived["n_pure"]

    @property
    def purity(self) -> np.ndarray:
        """Share of each field's pixels that are pure; NaN for fields without pixels
        (flagged ``NO_OVERLAP`` or ``INVALID_GEOMETRY``)."""
        n = self.n_pixels
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.n_pure / np.maximum(n, 1), np.nan)

    @property
    def coverage(self) -> np.ndarray:
        """Sum of fractions per field, in pixels (clipped to the grid), float64."""
        if "coverage" not in self._derived:
            c = np.bincount(self.pixel_field, weights=self.fractions, minlength=self.n_fields)
            c.setflags(write=False)
            self._derived["coverage"] = c
        return self._derived["coverage"]

    def flat_index(self, factor: int = 1, width: int | None = None) -> np.ndarray:
        """Flat (row-major) index of every entry into a raster on this grid (``factor=1``)
        or on a nested grid ``factor`` times coarser of ``width`` columns (default
        ``ceil(W / factor)``). Use with ``np.take(array.ravel(), idx)``; cached."""
        factor = _check_factor(factor)
        if width is None:
            width = -(-self.grid.shape[1] // factor)
        key = ("flat", factor, int(width))
        if key not in self._derived:
            if factor == 1:
                idx = self.rows.astype(np.int64) * int(width) + self.cols
            else:
                idx = (self.rows // factor).astype(np.int64) * int(width) + self.cols // factor
            idx.setflags(write=False)
            self._derived[key] = idx
        return self._derived[key]

    def flag_bits(self, codes: list[str]) -> np.ndarray:
        """Per-field flags as bit masks over ``codes`` (see :func:`flags_to_bits`)."""
        return flags_to_bits(self.flags, codes)

    # -- windows ---------------------------------------------------------------------------------
    def window(self) -> tuple[int, int, int, int] | None:
        """Bounding pixel window ``(row0, col0, row1, col1)`` (end-exclusive) of all pixels,
        or None when no field touches the grid."""
        if self.nnz == 0:
            return None
        return (int(self.rows.min()), int(self.cols.min()),
                int(self.rows.max()) + 1, int(self.cols.max()) + 1)

    def field_windows(self) -> np.ndarray:
        """Per-field pixel windows, int64 array ``(n_fields, 4)`` of ``(row0, col0, row1,
        col1)`` end-exclusive; ``(0, 0, 0, 0)`` for fields without pixels."""
        out = np.zeros((self.n_fields, 4), dtype=np.int64)
        has = self.n_pixels > 0
        if has.any():
            starts = self.offsets[:-1][has]
            out[has, 0] = np.minimum.reduceat(self.rows, starts)
            out[has, 1] = np.minimum.reduceat(self.cols, starts)
            out[has, 2] = np.maximum.reduceat(self.rows, starts) + 1
            out[has, 3] = np.maximum.reduceat(self.cols, starts) + 1
        return out

    # -- coarser grids ----------------------------------------------------------------------------
    def coarse_pixels(self, factor: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Indices on a nested grid ``factor`` times coarser (same origin) of every entry.

        For Sentinel-2, ``factor=2`` maps the 10 m pixel ``(r, c)`` to the 20 m pixel
        ``(r // 2, c // 2)`` (and ``factor=6`` to 60 m). Use these to gather 20 m bands
        at 10 m entries (nearest-neighbour up-mapping, exact because the grids nest).
        """
        factor = _check_factor(factor)
        return self.rows // factor, self.cols // factor

    def to_coarser(self, factor: int = 2) -> Coverage:
        """Exact coverage on a nested grid ``factor`` times coarser (same origin).

        A coarse pixel is the union of ``factor**2`` fine pixels, so its fraction is the sum
        of the fine fractions divided by ``factor**2`` (exact, no recomputation).
        """
        factor = _check_factor(factor)
        g = self.grid
        t = g.transform
        cgrid = Grid(g.crs, type(t)(t.a * factor, t.b, t.c, t.d, t.e * factor, t.f),
                     (-(-g.shape[0] // factor), -(-g.shape[1] // factor)))
        cr, cc = self.coarse_pixels(factor)
        wc = np.int64(cgrid.shape[1])
        hc = np.int64(cgrid.shape[0])
        key = (self.pixel_field * hc + cr.astype(np.int64)) * wc + cc.astype(np.int64)
        uniq, inv = np.unique(key, return_inverse=True)
        frac = np.bincount(inv, weights=self.fractions, minlength=len(uniq)) / factor**2
        fidx = uniq // (hc * wc)
        rem = uniq % (hc * wc)
        offsets = np.zeros(self.n_fields + 1, dtype=np.int64)
        np.cumsum(np.bincount(fidx, minlength=self.n_fields), out=offsets[1:])
        return Coverage(
            grid=cgrid, field_ids=self.field_ids, offsets=offsets,
            rows=(rem // wc).astype(np.int32), cols=(rem % wc).astype(np.int32),
            fractions=np.minimum(frac, 1.0), area_px=self.area_px / factor**2,
            flags=list(self.flags), min_pure_pixels=self.min_pure_pixels,
        )

    def to_frame(self):
        """Long table ``field_id, row, col, fraction`` (pandas DataFrame)."""
        import pandas as pd

        return pd.DataFrame({
            "field_id": np.asarray(self.field_ids)[self.pixel_field],
            "row": self.rows, "col": self.cols, "fraction": self.fractions,
        })

    def summary(self):
        """Per-field table ``field_id, coverage, area_px, n_pixels, n_pure, purity, flags``."""
        import pandas as pd

        return pd.DataFrame({
            "field_id": self.field_ids, "coverage": self.coverage, "area_px": self.area_px,
            "n_pixels": self.n_pixels, "n_pure": self.n_pure, "purity": self.purity,
            "flags": self.flags,
        })


def flags_to_bits(flags, codes: list[str]) -> np.ndarray:
    """Encode flags cells as int64 bit masks: bit ``j`` set when ``codes[j]`` is present.

    Codes in a cell that are not in ``codes`` raise ``ValueError``.
    """
    cells = np.asarray(list(flags), dtype=object)
    if cells.size == 0:
        return np.zeros(0, dtype=np.int64)
    uniq, inv = np.unique(cells.astype(str), return_inverse=True)
    pos = {c: j for j, c in enumerate(codes)}
    vals = np.zeros(len(uniq), dtype=np.int64)
    for k, cell in enumerate(uniq):
        for c in split_flags(cell):
            if c not in pos:
                raise ValueError(f"flag {c!r} not among {codes}")
            vals[k] |= np.int64(1) << pos[c]
    return vals[inv.reshape(-1)]


def bits_to_flags(bits, codes: list[str]) -> list[str]:
    """Decode bit masks (see :func:`flags_to_bits`) into canonical flags cells
    (codes sorted, comma-separated, '' when none)."""
    bits = np.asarray(bits, dtype=np.int64)
    order = sorted(range(len(codes)), key=lambda j: codes[j])
    uniq, inv = np.unique(bits, return_inverse=True)
    strings = np.array([",".join(codes[j] for j in order if (int(u) >> j) & 1) for u in uniq],
                       dtype=object)
    return strings[inv.reshape(-1)].tolist()


def _check_factor(factor) -> int:
    f = int(factor)
    if f != factor or f < 1:
        raise ValueError(f"factor must be a positive integer (2 for 10 m -> 20 m), got {factor!r}")
    return f


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------
class CoverageCache:
    """A small thread-safe LRU cache of :class:`Coverage` keyed by (grid, geometries).

    The key is ``(grid.key(), blake2b hash of the fields' CRS, ids and geometry WKB,
    options)``, so a cached result is reused for every date observed on the same grid and
    recomputed as soon as any geometry, id or the grid changes. At most ``maxsize`` entries
    and about ``maxbytes`` bytes (checked on insertion, derived arrays included) are kept;
    the most recent entry is always kept.
    """

    def __init__(self, maxsize: int = 32, maxbytes: int = 1 << 30):
        self.maxsize = int(maxsize)
        self.maxbytes = int(maxbytes)
        self._data: OrderedDict[Any, Coverage] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key):
        with self._lock:
            cov = self._data.get(key)
            if cov is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return cov

    def put(self, key, cov: Coverage) -> None:
        with self._lock:
            self._data[key] = cov
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize or (
                    len(self._data) > 1
                    and sum(c.nbytes for c in self._data.values()) > self.maxbytes):
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)


#: Process-wide default cache used by :func:`coverage_fractions` (``cache=True``).
COVERAGE_CACHE = CoverageCache()


def fields_key(fields, *, id_col: str = "field_id") -> str:
    """A stable hash of a fields table's CRS, ids and geometries (hex string)."""
    import pandas as pd
    import shapely

    h = hashlib.blake2b(digest_size=20)
    h.update(fields.crs.to_wkt().encode() if fields.crs is not None else b"nocrs")
    h.update(pd.util.hash_pandas_object(fields[id_col], index=False).to_numpy().tobytes())
    geoms = np.asarray(fields.geometry.values)
    types = shapely.get_type_id(geoms)
    if len(geoms) and bool(np.all(types == 3)) and not np.any(
            shapely.get_num_interior_rings(geoms)):
        # single polygons without holes (most fields): the x, y of the vertices and the
        # vertex count of each ring define them exactly, at a fifth of the cost of WKB
        # (one Python bytes object per geometry)
        h.update(b"rings")
        h.update(shapely.get_num_coordinates(geoms).astype(np.int64).tobytes())
        h.update(shapely.get_coordinates(geoms).tobytes())
    else:
        wkb = shapely.to_wkb(geoms, output_dimension=2)
        h.update(b"wkb")
        h.update(np.fromiter((len(w) for w in wkb), dtype=np.int64, count=len(wkb)).tobytes())
        h.update(b"".join(wkb))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------------
def coverage_fractions(fields, grid: Grid, *, id_col: str = "field_id", make_valid: bool = False,
                       min_pure_pixels: int = MIN_PURE_PIXELS,
                       cache: bool | CoverageCache = True) -> Coverage:
    """Exact fraction of every touched pixel's area inside each field polygon.

    Parameters
    ----------
    fields : geopandas.GeoDataFrame
        Field polygons (Polygon / MultiPolygon, holes allowed) with a CRS and a unique
        ``id_col``. Reprojected to ``grid.crs`` first.
    grid : Grid
        Target north-up grid (CRS, affine transform, shape).
    id_col : str
        Name of the field identifier column.
    make_valid : bool
        If True, invalid geometries are repaired with :func:`shapely.make_valid` (keeping
        their polygonal parts) instead of being flagged. Default False: invalid geometries
        are never repaired silently; they get no pixels and the ``INVALID_GEOMETRY`` flag.
    min_pure_pixels : int
        Fields with fewer pure pixels (fully inside the field) in the grid are flagged
        ``FIELD_TOO_SMALL``.
    cache : bool or CoverageCache
        True uses the process-wide :data:`COVERAGE_CACHE`, False disables caching, or
        pass a cache instance.

    Returns
    -------
    Coverage
        CSR layout (see :class:`Coverage`); fractions are dimensionless in (0, 1],
        ``area_px`` is in pixels. For fields inside the grid, the sum of fractions equals
        polygon area / pixel area to ~1e-12 relative.

    Raises
    ------
    MissingCRSError
        If ``fields`` has no CRS.
    InvalidFieldsError
        If ``id_col`` is missing or not unique, or a geometry is missing.
    """
    fields = validate_fields(fields, id_col=id_col)
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a cropyield Grid, got {type(grid).__name__}")
    if grid.crs is None:  # pragma: no cover - Grid always parses a CRS
        raise MissingCRSError("grid has no CRS")
    if cache is True:
        store = COVERAGE_CACHE
    elif isinstance(cache, CoverageCache):
        store = cache
    elif cache in (False, None):
        store = None
    else:
        raise TypeError(f"cache must be True, False or a CoverageCache, got {cache!r}")
    key = None
    if store is not None:
        key = (grid.key(), fields_key(fields, id_col=id_col), bool(make_valid),
               int(min_pure_pixels))
        hit = store.get(key)
        if hit is not None:
            return hit
    cov = _compute(fields, grid, id_col=id_col, make_valid=make_valid,
                   min_pure_pixels=min_pure_pixels)
    if store is not None:
        store.put(key, cov)
    return cov


def _compute(fields, grid: Grid, *, id_col, make_valid, min_pure_pixels) -> Coverage:
    import shapely

    if not fields.crs.equals(grid.crs):
        fields = fields.to_crs(grid.crs)
    geoms = np.asarray(fields.geometry.values, dtype=object)
    n = len(geoms)
    field_ids = np.asarray(fields[id_col].to_numpy())

    polygonal = np.isin(shapely.get_type_id(geoms), (3, 6))  # Polygon, MultiPolygon
    empty = shapely.is_empty(geoms)
    if make_valid:
        valid = shapely.is_valid(geoms)
        fix = ~valid & ~empty
        if fix.any():
            repaired = shapely.make_valid(geoms[fix])
            polys = [_polygonal_part(g) for g in repaired]
            geoms = geoms.copy()
            geoms[np.flatnonzero(fix)] = polys
            logger.info("make_valid repaired %d field geometries", int(fix.sum()))
            polygonal = np.isin(shapely.get_type_id(geoms), (3, 6))
            empty = shapely.is_empty(geoms)
    cand_idx = np.flatnonzero(polygonal & ~empty)
    offsets = np.zeros(n + 1, dtype=np.int64)
    area_px = np.full(n, np.nan)
    with ThreadPoolExecutor(2, thread_name_prefix="cropyield-cov") as pool:
        # GEOS validity (GIL released) runs beside the preparation and the kernel; the
        # kernel covers every candidate (it is safe on any finite ring) and the entries of
        # invalid ones are dropped afterwards
        valid_fut = pool.submit(shapely.is_valid, geoms[cand_idx])
        with np.errstate(invalid="ignore"):     # NaN vertices: NaN area (invalid, dropped)
            area_px[cand_idx] = shapely.area(geoms[cand_idx]) / grid.pixel_area
        counts = np.zeros(len(cand_idx), dtype=np.int64)
        sums, pure = np.zeros(len(cand_idx)), np.zeros(len(cand_idx), np.int64)
        rows, cols, fractions = (np.empty(0, np.int32), np.empty(0, np.int32),
                                 np.empty(0, np.float64))
        if len(cand_idx):
            rows, cols, fractions, counts, sums, pure = _kernel_batches(
                _prepare(geoms[cand_idx], grid), pool)
        valid = np.zeros(n, dtype=bool)
        valid[cand_idx] = valid_fut.result()
    bad = ~valid
    if bad.any():
        logger.warning("%d field geometries are empty, invalid or not polygons; they get no "
                       "pixels (flag INVALID_GEOMETRY); pass make_valid=True to repair them",
                       int(bad.sum()))
        area_px[bad] = np.nan
        drop = ~valid[cand_idx]
        if drop.any():
            keep = np.repeat(~drop, counts)
            rows, cols, fractions = rows[keep], cols[keep], fractions[keep]
            counts[drop] = sums[drop] = pure[drop] = 0
    per_field = np.zeros(n, dtype=np.int64)
    per_field[cand_idx] = counts
    np.cumsum(per_field, out=offsets[1:])
    coverage = np.zeros(n)
    coverage[cand_idx] = sums
    n_pure = np.zeros(n, dtype=np.int64)
    n_pure[cand_idx] = pure

    npx = np.diff(offsets)
    codes = ["FIELD_TOO_SMALL", "INVALID_GEOMETRY", "NO_OVERLAP", "SUBPIXEL_FIELD"]
    nover = ~bad & (npx == 0)
    has = ~bad & (npx > 0)
    bits = (((has & (n_pure < min_pure_pixels)) << 0) | (bad << 1) | (nover << 2)
            | ((has & (area_px < 1.0)) << 3)).astype(np.int64)
    for a in (offsets, rows, cols, fractions, area_px, field_ids, coverage, n_pure):
        a.setflags(write=False)
    # the kernel's per-field sums are what Coverage.coverage / .n_pure would compute
    return Coverage(grid=grid, field_ids=field_ids, offsets=offsets, rows=rows, cols=cols,
                    fractions=fractions, area_px=area_px, flags=bits_to_flags(bits, codes),
                    min_pure_pixels=int(min_pure_pixels),
                    _derived={"coverage": coverage, "n_pure": n_pure})


def _kernel_batches(prepared, pool: ThreadPoolExecutor):
    """Run :func:`_coverage_kernel` over consecutive field batches, split in two halves
    when there is enough work for two threads: the calling thread computes the first
    batch, ``pool`` the others.

    The output buffers hold one slot per bounding-box cell. Up to :data:`_BATCH_CELLS`
    cells in all, the batches share one buffer (each its own region), are moved together
    and the buffer is shrunk in place: no copy into fresh memory. Above it, each batch has
    its own buffer of at most :data:`_BATCH_CELLS` cells (the memory guard) and the
    entries are concatenated. Returns ``rows, cols, fractions`` and per field the entry
    count, the sum of fractions and the number of pure pixels.
    """
    u, v, ring_off, ring_sign, field_ring_off, windows = prepared
    nf = len(windows)
    cells = np.maximum(windows[:, 2] - windows[:, 0], 0) * \
        np.maximum(windows[:, 3] - windows[:, 1] + 1, 0)
    cell_end = np.cumsum(cells)
    total = int(cell_end[-1]) if nf else 0
    cap = min(_BATCH_CELLS, -(-total // 2) if total > _SPLIT_CELLS else max(total, 1))
    bounds = [0]                                 # greedy batches of at most `cap` cells
    while bounds[-1] < nf:                       # (or one larger field)
        start = bounds[-1]
        base = cell_end[start - 1] if start else 0
        bounds.append(max(int(np.searchsorted(cell_end, base + cap, side="right")), start + 1))
    shared = total <= _BATCH_CELLS
    if shared:
        buf = (np.empty(total, np.int32), np.empty(total, np.int32), np.empty(total))
    sums, pure = np.empty(nf), np.empty(nf, np.int64)

    def run(k):
        start, stop = bounds[k], bounds[k + 1]
        lo = int(cell_end[start - 1]) if start else 0
        hi = int(cell_end[stop - 1])
        o_r, o_c, o_f = (a[lo:hi] for a in buf) if shared else (
            np.empty(hi - lo, np.int32), np.empty(hi - lo, np.int32), np.empty(hi - lo))
        o_off = np.empty(stop - start + 1, np.int64)
        nnz = _coverage_kernel(u, v, ring_off, ring_sign, field_ring_off[start:stop + 1],
                               windows[start:stop], o_r, o_c, o_f, o_off, sums[start:stop],
                               pure[start:stop], _EPS, 1.0 - PURE_TOLERANCE)
        # no view of the shared buffer may outlive its resize below; a batch's own buffer
        # is freed once its entries are copied out
        own = None if shared else (o_r[:nnz].copy(), o_c[:nnz].copy(), o_f[:nnz].copy())
        return lo, nnz, own, np.diff(o_off)

    later = [pool.submit(run, k) for k in range(1, len(bounds) - 1)]
    parts = [run(0)] + [f.result() for f in later]
    counts = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.int64)
    if not shared:
        rows, cols, fractions = (np.concatenate(c) for c in zip(*(p[2] for p in parts)))
        return rows, cols, fractions, counts, sums, pure
    n = 0
    for lo, nnz, _, _ in parts:                  # move each region down behind the last
        if lo != n:
            for a in buf:
                a[n:n + nnz] = a[lo:lo + nnz]
        n += nnz
    for a in buf:                                # realloc to the entries (shrinks in place)
        a.resize(n, refcheck=False)
    return buf + (counts, sums, pure)


def _polygonal_part(g):
    """Polygonal part of a make_valid result (drops lines/points)."""
    import shapely

    if shapely.get_type_id(g) in (3, 6):
        return g
    parts = [p for p in shapely.get_parts(g) if shapely.get_type_id(p) in (3, 6)]
    if not parts:
        return shapely.Polygon()
    return shapely.union_all(parts)


def _prepare(geoms, grid: Grid):
    """Rings in pixel coordinates, grouped per field, with orientation signs and windows."""
    import shapely

    t = grid.transform
    if len(geoms) and bool(np.all(shapely.get_type_id(geoms) == 3)) and not np.any(
            shapely.get_num_interior_rings(geoms)):
        # single polygons without holes (most fields): each is one ring; no Python object
        # per part or ring (creating tens of thousands sets off full garbage collections)
        coords, vert_ring = shapely.get_coordinates(geoms, return_index=True)
        nring = len(geoms)
        ring_part = part_field = np.arange(nring)
    else:
        parts, part_field = shapely.get_parts(geoms, return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        coords, vert_ring = shapely.get_coordinates(rings, return_index=True)
        nring = len(rings)
    ring_off = np.zeros(nring + 1, dtype=np.int64)
    np.cumsum(np.bincount(vert_ring, minlength=nring), out=ring_off[1:])
    # pixel coordinates (u = column, v = row), continuous
    u = (coords[:, 0] - t.c) / t.a
    v = (coords[:, 1] - t.f) / t.e
    # exterior = first ring of each part
    is_ext = np.ones(nring, dtype=bool)
    is_ext[1:] = ring_part[1:] != ring_part[:-1]
    # signed area (∮ u dv) per ring, relative to the ring's first vertex for precision
    first = ring_off[:-1]
    uu = u - np.repeat(u[first], np.diff(ring_off))
    vv = v - np.repeat(v[first], np.diff(ring_off))
    contrib = np.zeros(len(u))
    contrib[:-1] = 0.5 * (uu[:-1] + uu[1:]) * (vv[1:] - vv[:-1])
    last = ring_off[1:] - 1
    contrib[last] = 0.0  # no edge between rings
    with np.errstate(invalid="ignore"):     # NaN/inf vertices: invalid geometry, dropped
        signed = np.add.reduceat(contrib, first) if nring else np.zeros(0)
    orient = np.where(signed >= 0, 1.0, -1.0)
    ring_sign = np.where(is_ext, orient, -orient)
    ring_field = part_field[ring_part]
    nfield = len(geoms)
    field_ring_off = np.zeros(nfield + 1, dtype=np.int64)
    np.cumsum(np.bincount(ring_field, minlength=nfield), out=field_ring_off[1:])
    # windows from per-field bounds, clipped to the grid
    vert_field = ring_field[vert_ring]
    vstart = np.zeros(nfield + 1, dtype=np.int64)
    np.cumsum(np.bincount(vert_field, minlength=nfield), out=vstart[1:])
    h, w = grid.shape
    windows = np.zeros((nfield, 4), dtype=np.int64)
    has = np.diff(vstart) > 0
    st = vstart[:-1][has]
    lo_v, lo_u = np.minimum.reduceat(v, st), np.minimum.reduceat(u, st)
    hi_v, hi_u = np.maximum.reduceat(v, st), np.maximum.reduceat(u, st)
    # a field with a NaN or infinite vertex (invalid, flagged by the caller) gets an empty
    # window: the kernel never sees it
    fin = np.isfinite(lo_v) & np.isfinite(lo_u) & np.isfinite(hi_v) & np.isfinite(hi_u)
    has[has] = fin
    windows[has, 0] = np.clip(np.floor(lo_v[fin]), 0, h)
    windows[has, 1] = np.clip(np.floor(lo_u[fin]), 0, w)
    windows[has, 2] = np.clip(np.ceil(hi_v[fin]), 0, h)
    windows[has, 3] = np.clip(np.ceil(hi_u[fin]), 0, w)
    return (np.ascontiguousarray(u), np.ascontiguousarray(v), ring_off,
            np.ascontiguousarray(ring_sign, dtype=np.float64), field_ring_off, windows)
