"""Per-field, coverage-weighted index statistics: ``zonal_stats`` and its kernels.

Public entry points
-------------------
:func:`zonal_stats`
    Per-field index statistics from in-memory band arrays (2-D, or 3-D time stacks) and
    field polygons: exact coverage weighting, SCL masking, flags for every NaN.
:func:`coverage_stats`
    The row builder behind :func:`zonal_stats` and
    :func:`cropyield.observations.field_observations`: statistics from reflectances
    already gathered at a :class:`~cropyield.coverage.Coverage`'s pixels.
:func:`weighted_field_stats` / :func:`weighted_field_stats_reference`
    Weighted mean, population std and weight sum over CSR-ordered pixel values (numba
    kernel and its NumPy twin).

The numba kernels (``_multi_field_stats``, ``_multi_field_stats_sel``, ``_weighted_stats``,
``_weighted_stats_idx``, ``_reflectance_valid``) sit at the end of the module; each has a
NumPy reference twin or an equivalent kernel that ``tests/test_kernel_twins.py`` and
``tests/test_indices.py`` compare it with.

Units: reflectances are dimensionless; ``coverage`` and weight sums are in pixels of the
grid; ``valid_fraction`` is in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ._jit import njit
from .coverage import Coverage, bits_to_flags, coverage_fractions
from .errors import MissingBandError
from .indices import (INDICES, IndexSpec, _apply, _canon_mapping, canonical_band, get_index,
                      reflectance)
from .masks import _scl_lookup, _scl_lut, invalid_mask

__all__ = [
    "zonal_stats",
    "coverage_stats",
    "weighted_field_stats",
    "weighted_field_stats_reference",
]

_nan = np.nan

#: Physical range of surface reflectance accepted (dimensionless); pixels outside it are
#: masked like no-data: saturated DN 65535 (reflectance 6.45), corrupt tiles (random DN).
#: Generous on both sides: L2A reflectance is slightly negative over dark water and reaches
#: ~1.2-1.5 over fresh snow and bright clouds. (The same rule as the streaming kernels of
#: :mod:`cropyield.observations`.)
_REFL_MIN, _REFL_MAX = -0.2, 2.0
#: DN of a saturated pixel (uint16 products)
_DN_SATURATED = 65535


# =============================================================================================
# zonal_stats from in-memory arrays
# =============================================================================================
def zonal_stats(bands: Mapping[str, np.ndarray], grid, fields, *,
                indices: Iterable[str] = ("ndvi",), scl=None, scales=None, offsets=None,
                nodata=0, scl_classes: Iterable[int] | None = None, dilate: int = 0,
                min_valid_fraction: float = 0.0, min_coverage_frac: float = 0.0,
                id_col: str = "field_id", include_empty: bool = False,
                coverage: Coverage | None = None, times=None):
    """Coverage-weighted per-field index statistics from in-memory band arrays.

    Parameters
    ----------
    bands : mapping
        Band name or alias -> 2-D DN array. 10 m bands on ``grid``; 20 m bands may be given
        on their own grid at half the shape (same origin) and are up-mapped by the exact
        2 x 2 nesting (10 m pixel ``(r, c)`` reads 20 m pixel ``(r // 2, c // 2)``).
        3-D arrays ``(time, y, x)`` (all bands and ``scl`` with the same length) give one
        row per (field, time) with a ``time`` column; coverage is computed once.
    grid : Grid
        The 10 m grid (CRS, transform, shape).
    fields : geopandas.GeoDataFrame
        Field polygons with a CRS and unique ``id_col``.
    indices : iterable of str
        Registered index names or formulas.
    scl : 2-D array, optional
        Scene Classification Layer, on ``grid`` or at half its shape.
    scales, offsets : float or mapping band -> float, optional
        Radiometric scale (default 1e-4) and offset (default 0; -0.1 for baseline >= 04.00).
    nodata : number
        DN meaning no data (default 0); such pixels are invalid and outside the footprint.
    scl_classes : iterable of int, optional
        Invalid SCL classes (default :data:`DEFAULT_SCL_INVALID`).
    dilate : int
        Dilation of cloud/shadow classes in SCL pixels (see :func:`invalid_mask`).
    min_valid_fraction : float
        Minimum ``valid_fraction``; rows below get NaN values and ``LOW_VALID_FRACTION``.
    min_coverage_frac : float
        Ignore pixels covered by less than this fraction in the index statistics (see
        :func:`coverage_stats`); default 0 = exact area weighting (exactextract ``mean``).
    id_col : str
    include_empty : bool
        Also return rows (``NO_OVERLAP``) for fields that do not touch the grid.
    coverage : Coverage, optional
        Precomputed coverage on ``grid`` (else computed and cached).
    times : sequence, optional
        Labels of the time axis of 3-D inputs (default ``0..T-1``).

    Returns
    -------
    pandas.DataFrame
        One row per field that touches the grid: ``field_id, coverage`` (sum of fractions,
        pixels), ``valid_fraction`` (valid weight / coverage), ``<index>`` (weighted mean),
        ``<index>_std`` (weighted population std), ``n_pixels``, ``n_pure``, ``flags``
        (``NO_OVERLAP``, ``ALL_MASKED``, ``LOW_VALID_FRACTION``, ``INVALID_INDEX``,
        ``SUBPIXEL_FIELD``, ``FIELD_TOO_SMALL``, ``INVALID_GEOMETRY``). Weights are coverage
        fraction x validity; a NaN always comes with a flag.

    Examples
    --------
    One field over 2 x 2 pixels of a 4 x 4 grid (DN with the L2A scale and +1000 offset):

    >>> import geopandas as gpd
    >>> import numpy as np
    >>> from affine import Affine
    >>> from shapely.geometry import box
    >>> import cropyield as cy
    >>> grid = cy.Grid("EPSG:32650", Affine(10, 0, 500000, 0, -10, 3800000), (4, 4))
    >>> fields = gpd.GeoDataFrame({"field_id": ["F1"]},
    ...                           geometry=[box(500000, 3799960, 500020, 3799980)],
    ...                           crs="EPSG:32650")
    >>> bands = {"B04": np.full((4, 4), 1500, np.uint16),
    ...          "B08": np.full((4, 4), 4500, np.uint16)}
    >>> z = cy.zonal_stats(bands, grid, fields, scales=0.0001, offsets=-0.1)
    >>> float(z["ndvi"].iloc[0]), int(z["n_pixels"].iloc[0])
    (0.75, 4)
    """
    indices = list(indices)
    specs = [get_index(i) for i in indices]
    need = sorted({b for s in specs for b in s.bands})
    given = {}
    for k, v in bands.items():
        given[canonical_band(k)] = v
    missing = [b for b in need if b not in given]
    if missing:
        raise MissingBandError(f"indices {indices} need bands {need}; missing {missing}")
    cov = coverage if coverage is not None else coverage_fractions(fields, grid, id_col=id_col)
    if cov.grid != grid:
        raise ValueError("coverage was computed on a different grid")
    ndims = {np.ndim(given[b]) for b in need} | ({np.ndim(scl)} if scl is not None else set())
    if 3 in ndims:
        return _zonal_stack(given, need, grid, fields, cov, times, indices=indices, scl=scl,
                            scales=scales, offsets=offsets, nodata=nodata,
                            scl_classes=scl_classes, dilate=dilate,
                            min_valid_fraction=min_valid_fraction,
                            min_coverage_frac=min_coverage_frac, id_col=id_col,
                            include_empty=include_empty)
    refl = {}
    foot = np.ones(cov.nnz, dtype=bool)
    # saturated DN / reflectance outside the physical range: masked like no-data, counted
    sat = np.zeros(cov.nnz, dtype=bool)
    oor = np.zeros(cov.nnz, dtype=bool)
    for b in need:
        arr = np.asarray(given[b])
        if arr.ndim != 2:
            raise ValueError(f"band {b} must be a 2-D array, got shape {arr.shape}")
        f = _nest_factor(arr.shape, grid.shape, f"band {b}")
        dn = np.take(np.ascontiguousarray(arr).reshape(-1), cov.flat_index(f, arr.shape[1]))
        r = reflectance(dn, _per_band(scales, b, 1e-4, "scales"),
                        _per_band(offsets, b, 0.0, "offsets"), nodata)
        foot &= ~np.isnan(r)
        with np.errstate(invalid="ignore"):
            out = ~np.isnan(r) & ~((r >= _REFL_MIN) & (r <= _REFL_MAX))
        if out.any():
            s_b = out & (dn == _DN_SATURATED)
            sat |= s_b
            oor |= out & ~s_b
        refl[b] = r
    valid = foot.copy()
    masked_dn = sat | oor
    valid &= ~masked_dn
    if scl is not None:
        s = np.asarray(scl)
        if s.ndim != 2:
            raise ValueError(f"scl must be a 2-D array, got shape {s.shape}")
        f = _nest_factor(s.shape, grid.shape, "scl")
        idx = cov.flat_index(f, s.shape[1])
        sg = np.take(np.ascontiguousarray(s).reshape(-1), idx)
        foot &= sg != 0
        d = int(dilate)
        if d < 0:
            raise ValueError(f"dilate must be >= 0 pixels, got {dilate!r}")
        win = cov.window()
        if d == 0 or win is None:
            bad = _scl_lookup(sg, _scl_lut(scl_classes))
        else:
            r0, c0 = max(win[0] // f - d, 0), max(win[1] // f - d, 0)
            r1 = min(-(-win[2] // f) + d, s.shape[0])
            c1 = min(-(-win[3] // f) + d, s.shape[1])
            m = invalid_mask(s[r0:r1, c0:c1], scl_classes, d)
            rr, cc = cov.coarse_pixels(f)
            bad = m[rr - r0, cc - c0]
        valid &= ~bad
        valid &= foot
        clear = foot & ~bad
    else:
        clear = foot
    df = coverage_stats(cov, refl, valid, indices=indices, footprint=foot,
                        min_valid_fraction=min_valid_fraction,
                        min_coverage_frac=min_coverage_frac, include_empty=include_empty,
                        id_col=id_col)
    if masked_dn.any():
        df = _masked_dn_flags(df, cov, sat & clear, oor & clear, id_col)
    return df


def _masked_dn_flags(df, cov: Coverage, sat: np.ndarray, oor: np.ndarray, id_col: str):
    """``SATURATED`` / ``REFLECTANCE_OUT_OF_RANGE`` on the rows of fields with such
    (masked) entries among their clear pixels."""
    from .errors import join_flags

    ids = np.asarray(cov.field_ids)
    pf = np.asarray(cov.pixel_field)
    add: dict[Any, list[str]] = {}
    for mask, code in ((sat, "SATURATED"), (oor, "REFLECTANCE_OUT_OF_RANGE")):
        for f in np.unique(pf[mask]):
            add.setdefault(ids[f], []).append(code)
    if add:
        df = df.copy()
        df["flags"] = [join_flags(c, add.get(k, ())) for k, c in
                       zip(df[id_col], df["flags"])]
    return df


def _zonal_stack(given, need, grid, fields, cov, times, *, scl, **kw):
    """zonal_stats over a time stack: one 2-D call per time step, coverage reused."""
    import pandas as pd

    lengths = {len(given[b]) for b in need if np.ndim(given[b]) == 3}
    if scl is not None and np.ndim(scl) == 3:
        lengths.add(len(scl))
    bad = [b for b in need if np.ndim(given[b]) != 3] + \
        (["scl"] if scl is not None and np.ndim(scl) != 3 else [])
    if bad or len(lengths) != 1:
        raise ValueError("time stacks: every band (and scl) must be a 3-D (time, y, x) array "
                         f"of the same length; got 2-D {bad} and lengths {sorted(lengths)}")
    nt = lengths.pop()
    labels = list(range(nt)) if times is None else list(times)
    if len(labels) != nt:
        raise ValueError(f"times has {len(labels)} labels for {nt} time steps")
    frames = []
    for t in range(nt):
        df = zonal_stats({b: given[b][t] for b in need}, grid, fields,
                         scl=None if scl is None else scl[t], coverage=cov, **kw)
        df.insert(1, "time", [labels[t]] * len(df))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _nest_factor(shape, grid_shape, what: str) -> int:
    h, w = grid_shape
    sh = tuple(int(s) for s in shape)
    for f in (1, 2, 6):
        if sh == (-(-h // f), -(-w // f)):
            return f
    raise ValueError(
        f"{what} has shape {sh}, which does not nest in the grid {grid_shape}: give 10 m "
        "bands on the grid and 20 m / 60 m bands on the nested grid of shape "
        f"{(-(-h // 2), -(-w // 2))} / {(-(-h // 6), -(-w // 6))} (same origin)"
    )


def _per_band(value, band: str, default: float, what: str) -> float:
    if value is None:
        return default
    if isinstance(value, Mapping):
        canon = _canon_mapping(value)
        return float(canon.get(band, default))
    return float(value)


# =============================================================================================
# Row builder shared by zonal_stats and observations.field_observations
# =============================================================================================
def coverage_stats(cov: Coverage, refl: Mapping[str, np.ndarray], valid, *,
                   indices: Iterable[str] = ("ndvi",), footprint=None,
                   min_valid_fraction: float = 0.0, min_coverage_frac: float = 0.0,
                   include_empty: bool = False, id_col: str = "field_id"):
    """Per-field statistics from reflectances gathered at a coverage's pixels.

    Parameters
    ----------
    cov : Coverage
        Coverage fractions on the grid the reflectances were read on.
    refl : mapping
        Band -> float64 reflectance of shape ``(cov.nnz,)`` aligned with ``cov.rows/cols``
        (NaN for nodata).
    valid : array_like of bool, shape (cov.nnz,)
        Pixel validity (not masked by SCL, not nodata).
    indices : iterable of str
        Registered names or formulas.
    footprint : array_like of bool, shape (cov.nnz,), optional
        Pixels inside the scene's data footprint (not nodata). A field without any such
        pixel is flagged ``NO_OVERLAP`` rather than ``ALL_MASKED``. Default: all True.
    min_valid_fraction : float
        Rows whose ``valid_fraction`` is below this get NaN statistics and the flag
        ``LOW_VALID_FRACTION``.
    min_coverage_frac : float
        Pixels covered by less than this fraction get no weight in the index statistics
        (exactextract's ``min_coverage_frac``; ``coverage`` and ``valid_fraction`` still use
        every pixel). 0 (default) gives exact area weighting; 0.5 or 1.0 drop mixed edge
        pixels, which is closer to a field's own signal on small fields (docs/method.md).
        A field left without weight is flagged ``FIELD_TOO_SMALL``.
    include_empty : bool
        Also return rows for fields without any pixel on the grid (flag ``NO_OVERLAP``).
        Fields with invalid geometry always get a row (NaN, ``INVALID_GEOMETRY``).

    Returns
    -------
    pandas.DataFrame
        ``field_id, coverage, valid_fraction, <index>, <index>_std, n_pixels, n_pure,
        flags``; ``coverage`` in pixels, ``valid_fraction`` in [0, 1].
    """
    import pandas as pd

    indices = list(indices)
    specs = [get_index(i) for i in indices]
    names = [_column_name(i, sp) for i, sp in zip(indices, specs)]
    n = cov.nnz
    valid = np.asarray(valid, dtype=bool).reshape(-1)
    if valid.size != n:
        raise ValueError(f"valid has {valid.size} entries, coverage has {n}")
    nf = cov.n_fields
    covsum = cov.coverage
    foot = valid if footprint is None else np.asarray(footprint, dtype=bool).reshape(-1)
    if foot.size != n:
        raise ValueError(f"footprint has {foot.size} entries, coverage has {n}")
    mcf = float(min_coverage_frac)
    nidx = len(specs)
    vals = np.empty((nidx, n))
    for j, spec in enumerate(specs):
        if n:
            vals[j] = _apply(spec, refl).reshape(-1)
    vsum, fsum, isum = np.empty(nf), np.empty(nf), np.empty(nf)
    mean, std, wsum = np.empty((nidx, nf)), np.empty((nidx, nf)), np.empty((nidx, nf))
    _multi_field_stats(vals, cov.fractions, valid, foot, cov.offsets, _min_frac_threshold(mcf),
                       vsum, fsum, isum, mean, std, wsum)
    if footprint is None:
        fsum = covsum
    vfrac, bits, codes = _stat_bits(cov, None, vsum, fsum, isum, wsum, mean, std,
                                    min_valid_fraction, mcf)
    cols: dict[str, Any] = {
        id_col: cov.field_ids, "coverage": covsum, "valid_fraction": vfrac,
    }
    for j, name in enumerate(names):
        cols[name] = mean[j]
        cols[f"{name}_std"] = std[j]
    cols["n_pixels"] = cov.n_pixels
    cols["n_pure"] = cov.n_pure
    cols["flags"] = bits_to_flags(bits, codes)
    df = pd.DataFrame(cols)
    if not include_empty:
        invalid_geometry = np.int64(1) << codes.index("INVALID_GEOMETRY")
        keep = (cov.n_pixels > 0) | ((bits & invalid_geometry) != 0)
        if not keep.all():
            df = df.loc[keep].reset_index(drop=True)
    return df


def _min_frac_threshold(min_coverage_frac: float) -> float:
    """Kernel threshold for ``min_coverage_frac`` (inclusive up to float noise; -1: off)."""
    mcf = float(min_coverage_frac)
    return mcf - 1e-12 if mcf > 0 else -1.0


def _stat_bits(cov: Coverage, fsel: np.ndarray | None, vsum, fsum, isum, wsum, mean, std,
               min_valid_fraction: float = 0.0, min_coverage_frac: float = 0.0):
    """Valid fraction and flag bits of per-field sums (the rules of :func:`coverage_stats`).

    Parameters
    ----------
    cov : Coverage
    fsel : int array or None
        Field positions (rows of ``cov``) the sums are for; None: every field.
    vsum, fsum, isum : float arrays
        Per field: valid coverage, coverage inside the data footprint, and valid coverage
        of pixels passing ``min_coverage_frac`` (pixels).
    wsum, mean, std : float arrays, shape (n_indices, n)
        Per index: weight of finite values, weighted mean and std. Rows whose valid
        fraction is below ``min_valid_fraction`` get NaN ``mean``/``std`` (in place).

    Returns
    -------
    (valid_fraction, bits, codes)
        ``bits`` as in :meth:`Coverage.flag_bits` with ``codes``.
    """
    covsum = np.asarray(cov.coverage)
    npx = np.asarray(cov.n_pixels)
    codes, bits = _base_bits(cov)
    if fsel is not None:
        covsum, npx, bits = covsum[fsel], npx[fsel], bits[fsel]
    with np.errstate(invalid="ignore", divide="ignore"):
        vfrac = np.where(covsum > 0, vsum / np.where(covsum > 0, covsum, 1.0), np.nan)
    bit = {c: np.int64(1) << j for j, c in enumerate(codes)}
    has_px = npx > 0
    bits |= np.where(has_px & (fsum <= 0), bit["NO_OVERLAP"], 0)
    # part of the field outside the grid (tile edge): the numbers describe the part inside
    area = np.asarray(cov.area_px, float)
    area = area[fsel] if fsel is not None else area
    with np.errstate(invalid="ignore"):
        bits |= np.where(has_px & (covsum < area * _FULL_COVER), bit["PARTIAL_COVERAGE"], 0)
    bits |= np.where(has_px & (fsum > 0) & (vsum <= 0), bit["ALL_MASKED"], 0)
    low = has_px & (vsum > 0) & (vfrac < float(min_valid_fraction))
    bits |= np.where(low, bit["LOW_VALID_FRACTION"], 0)
    if min_coverage_frac > 0:
        bits |= np.where(has_px & (vsum > 0) & (isum <= 0), bit["FIELD_TOO_SMALL"], 0)
    for j in range(wsum.shape[0]):
        bits |= np.where(has_px & (isum > 0) & (wsum[j] <= 0), bit["INVALID_INDEX"], 0)
        mean[j, low] = np.nan
        std[j, low] = np.nan
    return vfrac, bits, codes


_STAT_CODES = ("ALL_MASKED", "FIELD_TOO_SMALL", "INVALID_GEOMETRY", "INVALID_INDEX",
               "LOW_VALID_FRACTION", "NO_OVERLAP", "PARTIAL_COVERAGE", "SUBPIXEL_FIELD")
#: coverage below this share of the field's area is flagged ``PARTIAL_COVERAGE``
_FULL_COVER = 1.0 - 1e-6


def _base_bits(cov: Coverage) -> tuple[list[str], np.ndarray]:
    """Flag codes and a fresh copy of the coverage's per-field flag bits (cached)."""
    key = "stat_bits"
    if key not in cov._derived:
        present = {c for cell in set(cov.flags) for c in cell.split(",") if c}
        codes = sorted(set(_STAT_CODES) | present)
        cov._derived[key] = (codes, cov.flag_bits(codes))
    codes, bits = cov._derived[key]
    return codes, bits.copy()


def _column_name(requested: str, spec: IndexSpec) -> str:
    if isinstance(requested, IndexSpec):
        return requested.name
    key = str(requested).strip().lower()
    return key if key in INDICES else spec.name


# =============================================================================================
# Per-field weighted statistics on CSR-ordered values
# =============================================================================================
def weighted_field_stats(values, weights, offsets, *, index=None):
    """Per-field weighted mean, weighted population standard deviation and weight sum.

    Parameters
    ----------
    values : array_like of float64, shape (n,) or (m,) with ``index``
        Pixel values in CSR order (e.g. an index gathered at ``Coverage.rows/cols``).
        NaN values are skipped. With ``index``, entry ``k`` reads ``values[index[k]]``
        (e.g. values computed once per unique pixel), without materialising the gather.
    weights : array_like of float64, shape (n,)
        Weights, usually coverage fraction x validity (0 or 1). Weights <= 0 or NaN are
        skipped.
    offsets : array_like of int64, shape (n_fields + 1,)
        CSR offsets (``Coverage.offsets``).

    Returns
    -------
    mean, std, weight_sum : numpy.ndarray of float64, shape (n_fields,)
        ``mean = Σ w x / Σ w``; ``std = sqrt(Σ w (x - mean)² / Σ w)`` (population, same
        definition as exactextract's ``stdev`` with coverage weights); both NaN where
        ``weight_sum == 0``. ``weight_sum`` is in the units of ``weights`` (pixels).
    """
    v = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    w = np.ascontiguousarray(weights, dtype=np.float64).reshape(-1)
    o = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
    if index is not None:
        idx = np.ascontiguousarray(index, dtype=np.int64).reshape(-1)
        if idx.shape != w.shape:
            raise ValueError(f"index and weights differ in length ({idx.size} vs {w.size})")
        if idx.size and (idx.min() < 0 or idx.max() >= v.size):
            raise ValueError(f"index out of range for {v.size} values")
    elif v.shape != w.shape:
        raise ValueError(f"values and weights differ in length ({v.size} vs {w.size})")
    if o.size < 1 or o[0] != 0 or o[-1] != w.size or np.any(np.diff(o) < 0):
        raise ValueError("offsets must start at 0, be non-decreasing and end at len(weights)")
    nf = o.size - 1
    mean = np.empty(nf)
    std = np.empty(nf)
    wsum = np.empty(nf)
    if index is None:
        _weighted_stats(v, w, o, mean, std, wsum)
    else:
        _weighted_stats_idx(v, idx, w, o, mean, std, wsum)
    return mean, std, wsum


def weighted_field_stats_reference(values, weights, offsets):
    """Plain NumPy twin of :func:`weighted_field_stats` (for tests)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    o = np.asarray(offsets, dtype=np.int64)
    nf = len(o) - 1
    mean, std, wsum = np.full(nf, np.nan), np.full(nf, np.nan), np.zeros(nf)
    for f in range(nf):
        vv, ww = v[o[f]:o[f + 1]], w[o[f]:o[f + 1]]
        ok = (ww > 0) & ~np.isnan(vv)
        if ok.any():
            m = np.average(vv[ok], weights=ww[ok])
            mean[f] = m
            std[f] = np.sqrt(np.average((vv[ok] - m) ** 2, weights=ww[ok]))
            wsum[f] = ww[ok].sum()
    return mean, std, wsum


# =============================================================================================
# numba kernels (twins: weighted_field_stats_reference, _reflectance_valid_ref, and
# _multi_field_stats == _multi_field_stats_sel over every field)
# =============================================================================================
@njit(nogil=True)
def _multi_field_stats(vals, fractions, valid, foot, offsets, min_frac, vsum, fsum, isum,
                       mean, std, wsum):
    """One pass over the CSR entries of every field for all indices at once.

    Weights are ``fraction`` where ``valid`` (and ``fraction >= min_frac``), per index also
    requiring a non-NaN value. Per field: valid weight ``vsum``, footprint weight ``fsum``,
    thresholded weight ``isum``; per index and field: weighted mean, population std and
    weight sum (NaN mean/std when the weight sum is 0). This is
    :func:`_multi_field_stats_sel` over every field with entries read directly (one kernel,
    so the in-memory and the reader paths share their arithmetic).
    """
    _multi_field_stats_sel(vals, np.arange(fractions.shape[0]), fractions, valid, foot, offsets,
                           np.arange(offsets.shape[0] - 1), min_frac, vsum, fsum, isum, mean,
                           std, wsum)


@njit(nogil=True)
def _multi_field_stats_sel(vals_u, inv, fractions, valid_u, foot_u, offsets, fsel, min_frac,
                           vsum, fsum, isum, mean, std, wsum):
    """:func:`_multi_field_stats` for the fields ``fsel`` only, reading every CSR entry's
    value, validity and footprint through ``inv`` (entry -> unique pixel), so no per-entry
    arrays are built. Same arithmetic in the same order (identical results); output ``i``
    is field ``fsel[i]``.
    """
    nidx = vals_u.shape[0]
    swa = np.zeros(nidx)
    swxa = np.zeros(nidx)
    for i in range(fsel.shape[0]):
        f = fsel[i]
        s = offsets[f]
        e = offsets[f + 1]
        vs = 0.0
        fs = 0.0
        ws = 0.0
        for j in range(nidx):
            swa[j] = 0.0
            swxa[j] = 0.0
        # one pass for the weights and the weighted sums: every accumulator still adds
        # the same terms in the same order as _multi_field_stats
        for k in range(s, e):
            fr = fractions[k]
            u = np.uintp(inv[k])    # unsigned: numba emits no negative-index wraparound
            if foot_u[u]:
                fs += fr
            if valid_u[u]:
                vs += fr
                if fr >= min_frac:
                    ws += fr
                    for j in range(nidx):
                        x = vals_u[j, u]
                        if x == x:
                            swa[j] += fr
                            swxa[j] += fr * x
        vsum[i] = vs
        fsum[i] = fs
        isum[i] = ws
        for j in range(nidx):
            sw = swa[j]
            swx = swxa[j]
            if sw > 0.0:
                m = swx / sw
                ss = 0.0
                for k in range(s, e):
                    fr = fractions[k]
                    u = np.uintp(inv[k])
                    x = vals_u[j, u]
                    if valid_u[u] and fr >= min_frac and x == x:
                        d = x - m
                        ss += fr * d * d
                mean[j, i] = m
                std[j, i] = np.sqrt(ss / sw)
                wsum[j, i] = sw
            else:
                mean[j, i] = _nan
                std[j, i] = _nan
                wsum[j, i] = 0.0


@njit(nogil=True)
def _weighted_stats(values, weights, offsets, mean, std, wsum):
    nf = offsets.shape[0] - 1
    for f in range(nf):
        s = offsets[f]
        e = offsets[f + 1]
        sw = 0.0
        swx = 0.0
        for k in range(s, e):
            w = weights[k]
            x = values[k]
            if w > 0.0 and x == x:
                sw += w
                swx += w * x
        if sw > 0.0:
            m = swx / sw
            ss = 0.0
            for k in range(s, e):
                w = weights[k]
                x = values[k]
                if w > 0.0 and x == x:
                    d = x - m
                    ss += w * d * d
            mean[f] = m
            std[f] = np.sqrt(ss / sw)
            wsum[f] = sw
        else:
            mean[f] = _nan
            std[f] = _nan
            wsum[f] = 0.0


@njit(nogil=True)
def _weighted_stats_idx(values, index, weights, offsets, mean, std, wsum):
    nf = offsets.shape[0] - 1
    for f in range(nf):
        s = offsets[f]
        e = offsets[f + 1]
        sw = 0.0
        swx = 0.0
        for k in range(s, e):
            w = weights[k]
            x = values[np.uintp(index[k])]
            if w > 0.0 and x == x:
                sw += w
                swx += w * x
        if sw > 0.0:
            m = swx / sw
            ss = 0.0
            for k in range(s, e):
                w = weights[k]
                x = values[np.uintp(index[k])]
                if w > 0.0 and x == x:
                    d = x - m
                    ss += w * d * d
            mean[f] = m
            std[f] = np.sqrt(ss / sw)
            wsum[f] = sw
        else:
            mean[f] = _nan
            std[f] = _nan
            wsum[f] = 0.0


@njit(nogil=True)
def _reflectance_valid(dn, inv, scale, offset, nodata, has_nodata, valid, out):
    """``out[i] = reflectance(dn[inv[i]])`` (``dn`` itself when ``inv`` is empty) with the
    arithmetic of :func:`reflectance` (float64 ``dn * scale + offset``, NaN where
    ``dn == nodata``), and ``valid[i] &= isfinite(out[i])``, in one pass."""
    n = out.shape[0]
    direct = inv.shape[0] == 0
    for i in range(n):
        d = dn[i] if direct else dn[np.uintp(inv[i])]   # unsigned: no wraparound code
        if has_nodata and d == nodata:
            v = _nan
        else:
            v = np.float64(d) * scale + offset
        out[i] = v
        if not np.isfinite(v):
            valid[i] = False


def _reflectance_valid_ref(dn, inv, scale, offset, nodata, valid):
    """NumPy twin of :func:`_reflectance_valid` (returns the reflectance, updates valid)."""
    d = dn if len(inv) == 0 else dn[inv]
    r = reflectance(d, scale, offset, nodata=nodata)
    valid &= np.isfinite(r)
    return r
