"""Per-field observations: one row per (field, acquisition) with coverage-weighted index stats.

:func:`field_observations` glues the stages together for a list of scenes:

1. **Coverage once per grid.** Exact coverage fractions (:func:`cropyield.coverage_fractions`)
   are computed once per (fields, tile grid) on the scene's finest needed grid (10 m for
   NDVI) and reused for every date on that grid. 20 m bands are gathered through the exact
   2 x 2 nesting of Sentinel-2 grids (10 m pixel ``(r, c)`` lies in 20 m pixel
   ``(r // 2, c // 2)``).
2. **SCL first.** For every scene the SCL blocks under the fields are read (with
   ``dilate`` pixels of padding when cloud/shadow dilation is asked) and turned into a
   per-pixel code: outside the valid swath (SCL 0), masked, or clear.
3. **One grid per field and acquisition.** Scenes are grouped by acquisition (solar day at
   the scene centre). A field seen by several scenes of the same acquisition (overlapping
   MGRS tiles, neighbouring UTM zones, reprocessed duplicates) is assigned to the single
   scene that covers it best: largest share of the field inside the valid swath, then
   largest share inside the grid, then most clear coverage (shares rounded to 0.1 % so
   that the same field measured in two UTM projections ties), then the newest processing
   baseline (reprocessed duplicates), then the first scene in (tile, id) order. It is never
   counted twice.
4. **Bands, streamed.** The reflectance bands of each scene are read only for the blocks
   where a field assigned to it has a clear pixel. Each run of blocks is reduced by the
   reader thread that decoded it: reflectance with each band's own scale/offset (so pre-
   and post-04.00 products agree), the index (numba), and weighted sums per (block, field)
   slot with weights ``coverage fraction x validity``; slots are merged per field at the
   end of the scene (``docs/method.md``, "streaming").

Memory: one decoded run window per reader thread, SCL codes of the pixels under the fields
and small per-slot accumulators for at most ``threads + 2`` acquisitions in flight; rows are
accumulated as NumPy arrays and one DataFrame is built at the end.
"""

from __future__ import annotations

import threading
import time as _time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import pandas as pd

from ._geo import Grid
from ._jit import njit
from ._log import logger, redact
from .read import _as_scene_list, _solar_day  # noqa: F401  (re-exported helpers)
from .errors import AssetReadError, AuthExpiredError, ConfigError, CropYieldError

__all__ = ["field_observations", "observations_to_xarray", "OBSERVATION_COLUMNS"]

#: Leading columns of the observations table (then ``<index>``, ``<index>_std``, ``flags``).
OBSERVATION_COLUMNS = ("field_id", "time", "scene_id", "tile", "coverage", "valid_fraction")

# per-pixel codes after the SCL pass
_OUTSIDE, _MASKED, _CLEAR = 0, 1, 2

# row flag bits
_B_NO_OVERLAP, _B_ALL_MASKED, _B_LOW_VALID, _B_READ_FAILED, _B_AUTH = 1, 2, 4, 8, 16
_BIT_CODES = {_B_NO_OVERLAP: "NO_OVERLAP", _B_ALL_MASKED: "ALL_MASKED",
              _B_LOW_VALID: "LOW_VALID_FRACTION", _B_READ_FAILED: "READ_FAILED",
              _B_AUTH: "AUTH_EXPIRED"}


# --------------------------------------------------------------------------------------------
# scene helpers


def _baseline(scene) -> float:
    try:
        return float(scene.processing_baseline)
    except (TypeError, ValueError):
        return -1.0


def _factor(band_grid: Grid, ref: Grid, what: str) -> int:
    """Integer nesting factor of ``band_grid`` into ``ref`` (same CRS and origin)."""
    k = band_grid.resolution / ref.resolution
    ki = int(round(k))
    if (ki < 1 or abs(k - ki) > 1e-9 or not band_grid.crs.equals(ref.crs)
            or abs(band_grid.transform.c - ref.transform.c) > 1e-6
            or abs(band_grid.transform.f - ref.transform.f) > 1e-6):
        raise CropYieldError(
            f"band {what} does not nest into the {ref.resolution:g} m grid of its scene (CRS, "
            f"origin or resolution ratio differ); Sentinel-2 grids must share their origin. "
            f"Check the item's proj:transform metadata")
    return ki


def _crs_name(crs) -> str:
    """``EPSG:<code>`` when the CRS has one, else its WKT (for messages)."""
    if crs is None:
        return "none"
    code = crs.to_epsg()
    return f"EPSG:{code}" if code is not None else crs.to_wkt()


def _same_crs(file_crs, grid_crs) -> bool:
    """Whether a file's CRS (rasterio, read from the file) is the item's (pyproj). A file
    without a CRS passes: there is nothing to compare, and the item's CRS is the one used.
    EPSG codes are compared when both have one (cheap: 0.01-0.02 ms each, cached by
    rasterio and pyproj), else the definitions."""
    if file_crs is None or not file_crs:
        return True
    a, b = file_crs.to_epsg(), grid_crs.to_epsg()
    if a is not None and b is not None:
        return a == b
    from pyproj import CRS

    return CRS.from_user_input(file_crs.to_wkt()).equals(grid_crs, ignore_axis_order=True)


# --------------------------------------------------------------------------------------------
# per-grid context (coverage computed once, unique pixels, coarse maps)


@dataclass
class _GridCtx:
    cov: Any
    pf: np.ndarray          # field index of every CSR entry
    inv: np.ndarray         # CSR entry -> unique pixel index
    urows: np.ndarray
    ucols: np.ndarray
    cov_sum: np.ndarray     # per field, in pixels
    area_px: np.ndarray
    coarse: dict
    want_cand: np.ndarray = None    # unique pixels under fields with coverage > 0
    lock: Any = field(default_factory=threading.Lock)          # coarse pixel maps
    stream_lock: Any = field(default_factory=threading.Lock)   # streaming orders
    order: np.ndarray = None        # CSR entries in row-major pixel order (stable)
    order_u: np.ndarray = None      # their unique pixel (inv[order], non-decreasing)

    def stream(self, shape: tuple[int, int], block_shape: tuple[int, int]) -> "_Stream":
        """Entries sorted by block for this block shape (built once, then cached)."""
        key = ("stream", tuple(block_shape))
        hit = self.coarse.get(key)
        if hit is None:
            # (its own lock: the first acquisitions map their SCL pixels meanwhile)
            with self.stream_lock:
                hit = self.coarse.get(key)
                if hit is None:
                    hit = self.coarse[key] = _build_stream(self, shape, block_shape)
        return hit

    def pixels(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unique pixels on a grid ``k`` times coarser and the map unique fine -> coarse."""
        hit = self.coarse.get(k)
        if hit is not None:
            return hit
        with self.lock:
            return self._pixels(k)

    def want_on(self, k: int, want_u: np.ndarray) -> np.ndarray:
        """Pixels of the ``k`` times coarser grid holding a pixel of ``want_u`` (cached for
        ``want_cand``, the same for every date)."""
        if k == 1:
            return want_u
        if want_u is self.want_cand:
            hit = self.coarse.get(("want", k))
            if hit is not None:
                return hit
        brow, _, inv_k = self.pixels(k)
        want_b = np.zeros(len(brow), bool)
        want_b[inv_k[want_u]] = True
        if want_u is self.want_cand:
            self.coarse[("want", k)] = want_b
        return want_b

    def _pixels(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hit = self.coarse.get(k)
        if hit is None:
            if k == 1:
                hit = (self.urows, self.ucols, np.arange(len(self.urows)))
            else:
                w = int(self.ucols.max()) // k + 1 if len(self.ucols) else 1
                if len(self.urows) and np.all(self.urows[1:] >= self.urows[:-1]):
                    # urows/ucols come from a sorted unique flat index (row-major): one
                    # linear pass gives what np.unique of the coarse flat index gives
                    hit = _coarse_unique(self.urows, self.ucols, k, w)
                else:
                    flat = (self.urows // k) * w + self.ucols // k
                    u, inv = np.unique(flat, return_inverse=True)
                    hit = (u // w, u % w, inv.ravel())
            self.coarse[k] = hit
        return hit


def _coarse_unique_ref(urows, ucols, k, w):
    """NumPy twin of :func:`_coarse_unique`."""
    flat = (np.asarray(urows) // k) * w + np.asarray(ucols) // k
    u, inv = np.unique(flat, return_inverse=True)
    return u // w, u % w, inv.ravel()


@njit(nogil=True)
def _coarse_unique(urows, ucols, k, w):  # pragma: no cover - compiled
    """Unique pixels of the ``k`` times coarser grid (``w`` columns) of fine pixels
    sorted by (row, col), in (row, col) order, and the map fine -> coarse index."""
    n = urows.shape[0]
    slot = np.full(w, -1, np.int64)
    out_r = np.empty(n, np.int64)
    out_c = np.empty(n, np.int64)
    inv = np.empty(n, np.int64)
    # coarse column of every fine column from a table: an integer division by a run-time
    # k per pixel cost more than the rest of the loop
    cdiv = np.empty(w * k, np.int64)
    for c in range(w * k):
        cdiv[c] = c // k
    nu = 0
    i = 0
    while i < n:
        cr = urows[i] // k
        rlim = (cr + 1) * k
        j = i
        cmin = w
        cmax = -1
        while j < n and urows[j] < rlim:
            cc = cdiv[np.uintp(ucols[j])]      # unsigned: no wraparound code (see _fused)
            slot[np.uintp(cc)] = 0
            cmin = min(cmin, cc)
            cmax = max(cmax, cc)
            j += 1
        for cc in range(cmin, cmax + 1):
            if slot[cc] == 0:
                slot[cc] = nu + 1
                out_r[nu] = cr
                out_c[nu] = cc
                nu += 1
        for t in range(i, j):
            inv[t] = slot[np.uintp(cdiv[np.uintp(ucols[t])])] - 1
        for cc in range(cmin, cmax + 1):
            slot[cc] = -1
        i = j
    return out_r[:nu].copy(), out_c[:nu].copy(), inv


def _codes_at_ref(raw, lut, inv):
    """NumPy twin of :func:`_codes_at`."""
    return np.asarray(lut)[np.asarray(raw)][np.asarray(inv)]


@njit(nogil=True)
def _codes_at(raw, lut, inv):  # pragma: no cover - compiled
    """``lut[raw[inv]]`` in one pass without the GIL: the SCL code of every fine unique
    pixel from the classes read at the coarse pixels (``inv``: fine -> coarse)."""
    out = np.empty(inv.shape[0], np.uint8)
    for i in range(inv.shape[0]):
        out[i] = lut[raw[np.uintp(inv[i])]]     # unsigned: no wraparound code (see _fused)
    return out


# --------------------------------------------------------------------------------------------
# streamed statistics: every decoded block run goes straight to per-(block, field) sums
#
# The CSR entries of a grid are put in row-major pixel order once, and each gets a slot per
# (block, field) pair. For each block run read, the reader thread that decoded it walks the
# run's entries row by row (the window in memory order), keeps clear pixels of assigned
# fields, computes the index and adds the weights and values to the entry's slot -- so
# threads never write the same slot and no per-date vector of all pixels is built.
# A slot keeps weighted sums shifted by its first value (no division per value); at the
# end of the scene each field turns its slots into (weight, mean, M2) and merges them in a
# fixed order with Chan, Golub & LeVeque's (1979) pairwise update, so results do not
# depend on the thread timing.

#: accumulator columns per slot: valid weight, index weight, then per index ``_ACC_WIDTH``
#: columns (weight, shift, sum of w (x - shift), sum of w (x - shift)^2), see :func:`_add_value`
_ACC_VALID, _ACC_INDEX, _ACC_FIRST, _ACC_WIDTH = 0, 1, 2, 4


def _assign_slots_ref(ekey, ef, n_fields):
    """NumPy twin of :func:`_assign_slots`."""
    ekey = np.asarray(ekey)
    ef = np.asarray(ef)
    eslot = np.empty(len(ef), np.int64)
    slot_field: list[int] = []
    seen: dict[tuple[int, int], int] = {}
    for p, (k, f) in enumerate(zip(ekey.tolist(), ef.tolist())):
        s = seen.get((k, f))
        if s is None:
            s = seen[(k, f)] = len(slot_field)
            slot_field.append(f)
        eslot[p] = s
    return eslot, np.asarray(slot_field, np.int64)


def _entry_arrays_ref(order, order_u, pf, fractions, urows, ucols, bh, bw, nbc, n_rows):
    """NumPy twin of :func:`_entry_arrays`."""
    r, c = urows[order_u], ucols[order_u]
    row_start = np.r_[0, np.cumsum(np.bincount(r, minlength=n_rows))].astype(np.int64)
    return (c.astype(np.int64), pf[order].astype(np.int64), fractions[order].astype(float),
            ((r // bh) * nbc + c // bw).astype(np.int64), row_start)


def _blocks_needed_ref(ekey, eu, ef, code_u, assigned, n_blocks):
    """NumPy twin of :func:`_blocks_needed`."""
    need = np.zeros(n_blocks, bool)
    hit = (np.asarray(code_u)[eu] == _CLEAR) & np.asarray(assigned)[ef]
    need[np.asarray(ekey)[hit]] = True
    return need


def _footprint_sum_ref(offsets, inv, fractions, code_u, fields):
    """NumPy twin of :func:`_footprint_sum`."""
    fields = np.asarray(fields, np.int64)
    out = np.zeros(len(fields))
    for k, f in enumerate(fields):
        j = np.arange(offsets[f], offsets[f + 1])
        out[k] = np.sum(fractions[j] * (np.asarray(code_u)[inv[j]] > _OUTSIDE))
    return out


def _gather_valid_ref(win, r0, c0, row_start, ec, eu, ef, assigned, code_u, scale, offset,
                      nodata, coarse_r, refl, pos):
    """NumPy twin of :func:`_gather_valid`."""
    h, w = win.shape[1], win.shape[2]
    p = np.arange(row_start[r0], row_start[r0 + h])
    p = p[(ec[p] >= c0) & (ec[p] < c0 + w)]
    p = p[(np.asarray(code_u)[eu[p]] == _CLEAR) & np.asarray(assigned)[ef[p]]]
    rows = np.searchsorted(row_start, p, side="right") - 1
    nf = win.shape[0]
    r = np.empty((nf + coarse_r.shape[0], len(p)))
    ok = np.ones(len(p), bool)
    with np.errstate(invalid="ignore", over="ignore"):
        for j in range(nf):
            d = win[j][rows - r0, ec[p] - c0]
            v = d.astype(np.float64) * scale[j] + offset[j]
            ok &= (d != nodata[j]) & np.isfinite(v)
            r[j] = v
        for j in range(coarse_r.shape[0]):
            r[nf + j] = coarse_r[j][eu[p]]
            ok &= np.isfinite(r[nf + j])
    m = int(ok.sum())
    refl[:, :m] = r[:, ok]
    pos[:m] = p[ok]
    return m


def _add_value_ref(acc, s, col, fr, x):
    """NumPy twin of :func:`_add_value`."""
    if acc[s, col] == 0.0:
        acc[s, col + 1] = x
    d = x - acc[s, col + 1]
    acc[s, col] += fr
    acc[s, col + 2] += fr * d
    acc[s, col + 3] += fr * d * d


def _accumulate_ref(vals, pos, m, efr, eslot, min_frac, acc):
    """NumPy twin of :func:`_accumulate` (same updates, one entry at a time)."""
    for q in range(m):
        p = pos[q]
        fr = efr[p]
        if not fr > 0.0:
            continue
        s = eslot[p]
        acc[s, _ACC_VALID] += fr
        if fr >= min_frac:
            acc[s, _ACC_INDEX] += fr
            for j in range(vals.shape[0]):
                x = vals[j, q]
                if x == x:
                    _add_value_ref(acc, s, _ACC_FIRST + _ACC_WIDTH * j, fr, x)


def _merge_slots_ref(acc, fslot_off, fslot, fsel, vsum, isum, mean, std, wsum):
    """NumPy twin of :func:`_merge_slots` (two-pass weighted statistics of the slots'
    pooled values are equal up to rounding; this twin merges in the same order)."""
    nidx = (acc.shape[1] - _ACC_FIRST) // _ACC_WIDTH
    for i, f in enumerate(fsel):
        sl = fslot[fslot_off[f]:fslot_off[f + 1]]
        vsum[i] = isum[i] = 0.0
        for s in sl:                     # sequential sums, in the kernel's order
            vsum[i] += acc[s, _ACC_VALID]
            isum[i] += acc[s, _ACC_INDEX]
        for j in range(nidx):
            b = _ACC_FIRST + _ACC_WIDTH * j
            sw = mu = m2 = 0.0
            for s in sl:
                wb = acc[s, b]
                if wb > 0.0:
                    s1 = acc[s, b + 2]
                    mb = acc[s, b + 1] + s1 / wb
                    qb = max(acc[s, b + 3] - s1 * (s1 / wb), 0.0)
                    n = sw + wb
                    d = mb - mu
                    mu += d * (wb / n)
                    m2 += qb + d * d * (sw * wb / n)
                    sw = n
            if sw > 0.0:
                mean[j, i], std[j, i], wsum[j, i] = mu, np.sqrt(max(m2, 0.0) / sw), sw
            else:
                mean[j, i], std[j, i], wsum[j, i] = np.nan, np.nan, 0.0


@njit(nogil=True, inline="always")
def _first_at_or_after(ec, lo, hi, c0):  # pragma: no cover - compiled
    """First position in ``lo .. hi`` (columns ``ec`` ascending there) with column >= c0."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ec[mid] < c0:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(nogil=True, inline="always")
def _band_values(win, rr, cc, u, nf, nc, scale, offset, nodata, coarse_r, out,
                 m):  # pragma: no cover - compiled
    """Reflectance of every band at one pixel into ``out[:, m]``: the ``nf`` window bands at
    ``(rr, cc)`` as float64(DN) * scale + offset (the arithmetic of
    :func:`cropyield.indices.reflectance`), then the ``nc`` pre-gathered bands at unique
    pixel ``u``. False as soon as one is invalid (DN == nodata, or not finite)."""
    for j in range(nf):
        d = win[j, rr, cc]
        x = np.float64(d) * scale[j] + offset[j]
        if d == nodata[j] or not np.isfinite(x):
            return False
        out[j, m] = x
    for j in range(nc):
        x = coarse_r[j, u]
        if not np.isfinite(x):
            return False
        out[nf + j, m] = x
    return True


@njit(nogil=True, inline="always")
def _add_value(acc, s, col, fr, x):  # pragma: no cover - compiled
    """Add value ``x`` with weight ``fr`` to slot ``s``'s columns ``col .. col + 3``:
    (weight, shift, sum of w (x - shift), sum of w (x - shift)^2). The shift is the slot's
    first value: the sums are then exact for a constant slot and free of the cancellation
    of raw moments, and adding a value costs no division (the slot's mean and M2 are
    formed once, in :func:`_merge_slots`)."""
    if acc[s, col] == 0.0:
        acc[s, col + 1] = x
    d = x - acc[s, col + 1]
    acc[s, col] += fr
    acc[s, col + 2] += fr * d
    acc[s, col + 3] += fr * d * d


@njit(nogil=True)
def _assign_slots_range(ekey, ef, p0, p1, n_fields, eslot,
                        slot_field):  # pragma: no cover - compiled
    """One slot per (block ``ekey``, field ``ef``) pair of the entries ``p0:p1``,
    numbered from 0 in order of first appearance into ``eslot[p0:p1]``; the field of
    every slot goes to ``slot_field[p0:]``. Returns the number of slots."""
    n = p1 - p0
    slot_key = np.empty(n, np.int64)
    slot_next = np.empty(n, np.int64)
    head = np.full(n_fields, -1, np.int64)    # newest slot of each field
    ns = 0
    for p in range(p0, p1):
        f = np.uintp(ef[p])             # unsigned indices: no wraparound code (see _fused)
        k = ekey[p]
        s = head[f]
        while s >= 0 and slot_key[np.uintp(s)] != k:  # a field has slots in few blocks
            s = slot_next[np.uintp(s)]
        if s < 0:
            s = ns
            ns += 1
            slot_field[p0 + s] = f
            slot_key[s] = k
            slot_next[s] = head[f]
            head[f] = s
        eslot[p] = s
    return ns


def _assign_slots(ekey, ef, n_fields):
    """One slot per (block ``ekey``, field ``ef``) pair, numbered in order of first
    appearance: (slot of every entry, field of every slot)."""
    eslot, slot_field = np.empty(len(ekey), np.int64), np.empty(len(ekey), np.int64)
    ns = _assign_slots_range(ekey, ef, 0, len(ekey), n_fields, eslot, slot_field)
    return eslot, slot_field[:ns].copy()


@njit(nogil=True)
def _entry_arrays_range(order, order_u, pf, fractions, urows, ucols, bh, bw, nbc, p0, p1,
                        ec, ef, efr, ekey, row_count):  # pragma: no cover - compiled
    """For the row-major entries ``p0:p1``: column, field, fraction and block key into
    ``ec/ef/efr/ekey[p0:p1]``, and their count per grid row added to ``row_count[r + 1]``."""
    # block column from a table and block row per grid row: no integer division per entry
    w = nbc * bw
    cblock = np.empty(w, np.int64)
    for c in range(w):
        cblock[c] = c // bw
    r_prev = -1
    rbase = 0
    for p in range(p0, p1):
        e = np.uintp(order[p])          # unsigned indices: no wraparound code (see _fused)
        u = np.uintp(order_u[p])
        r = urows[u]
        c = ucols[u]
        if r != r_prev:
            r_prev = r
            rbase = (r // bh) * nbc
        ec[p] = c
        ef[p] = pf[e]
        efr[p] = fractions[e]
        ekey[p] = rbase + cblock[np.uintp(c)]
        row_count[np.uintp(r + 1)] += 1


def _entry_arrays(order, order_u, pf, fractions, urows, ucols, bh, bw, nbc, n_rows):
    """Per row-major entry: column, field, fraction and block key; and the start of every
    grid row in them (:func:`_entry_arrays_range` over all entries)."""
    n = len(order)
    ec, ef, ekey = (np.empty(n, np.int64) for _ in range(3))
    efr, row_start = np.empty(n), np.zeros(n_rows + 1, np.int64)
    _entry_arrays_range(order, order_u, pf, fractions, urows, ucols, bh, bw, nbc, 0, n,
                        ec, ef, efr, ekey, row_start)
    np.cumsum(row_start, out=row_start)
    return ec, ef, efr, ekey, row_start


@njit(nogil=True)
def _blocks_needed(ekey, eu, ef, code_u, assigned, n_blocks):  # pragma: no cover
    """Blocks (by key) holding a clear pixel of an assigned field."""
    need = np.zeros(n_blocks, np.bool_)
    for p in range(ekey.shape[0]):
        k = np.uintp(ekey[p])          # unsigned indices: no wraparound code (see _fused)
        if not need[k] and code_u[np.uintp(eu[p])] == _CLEAR and assigned[np.uintp(ef[p])]:
            need[k] = True
    return need

@njit(nogil=True)
def _footprint_sum(offsets, inv, fractions, code_u, fields):  # pragma: no cover
    """Sum of the fractions of each of ``fields``' pixels inside the data footprint
    (SCL code above ``_OUTSIDE``), over the coverage's per-field (CSR) entries: only the
    listed fields' entries are visited."""
    out = np.zeros(fields.shape[0])
    for k in range(fields.shape[0]):
        f = fields[k]
        total = 0.0
        for j in range(offsets[f], offsets[f + 1]):
            if code_u[np.uintp(inv[j])] > _OUTSIDE:
                total += fractions[j]
        out[k] = total
    return out

@njit(nogil=True)
def _gather_valid(win, r0, c0, row_start, ec, eu, ef, assigned, code_u, scale, offset,
                  nodata, coarse_r, refl, pos):  # pragma: no cover - compiled
    """Reflectances of the entries inside the window ``win`` (n_fine, h, w) with
    origin ``(r0, c0)`` at clear pixels of assigned fields: fine bands from the
    window, then ``coarse_r[:, eu]``. Entries are row-major (row ``r``:
    ``row_start[r]:row_start[r + 1]``, columns ascending), so the window is read in
    memory order. Entries whose every band is valid (DN not nodata, finite) are packed
    into ``refl[:, :m]`` and ``pos[:m]``; returns ``m``. Reflectance = float64(DN) *
    scale + offset, the arithmetic of :func:`cropyield.indices.reflectance`."""
    nf = win.shape[0]
    nc = coarse_r.shape[0]
    h = win.shape[1]
    c1 = c0 + win.shape[2]
    m = 0
    for rr in range(h):
        p = _first_at_or_after(ec, row_start[r0 + rr], row_start[r0 + rr + 1], c0)
        end = row_start[r0 + rr + 1]
        while p < end and ec[p] < c1:
            u = eu[p]
            if code_u[u] == _CLEAR and assigned[ef[p]] and _band_values(
                    win, rr, ec[p] - c0, u, nf, nc, scale, offset, nodata, coarse_r, refl, m):
                pos[m] = p
                m += 1
            p += 1
    return m

@njit(nogil=True)
def _accumulate(vals, pos, m, efr, eslot, min_frac, acc):  # pragma: no cover - compiled
    """Add packed entries to their slots: valid weight, index weight (fraction >=
    ``min_frac``) and per index the shifted weighted sums of finite values
    (:func:`_add_value`)."""
    nidx = vals.shape[0]
    for q in range(m):
        p = pos[q]
        fr = efr[p]
        if not fr > 0.0:
            continue
        s = eslot[p]
        acc[s, _ACC_VALID] += fr
        if fr >= min_frac:
            acc[s, _ACC_INDEX] += fr
            for j in range(nidx):
                x = vals[j, q]
                if x == x:
                    _add_value(acc, s, _ACC_FIRST + _ACC_WIDTH * j, fr, x)


@njit(nogil=True)
def _merge_slots(acc, fslot_off, fslot, fsel, vsum, isum, mean, std,
                 wsum):  # pragma: no cover - compiled
    """Per selected field: summed weights and Chan's merge of its slots (slot order)
    into the weighted mean and population standard deviation (NaN without weight)."""
    nidx = (acc.shape[1] - _ACC_FIRST) // _ACC_WIDTH
    for i in range(fsel.shape[0]):
        f = fsel[i]
        vs = 0.0
        ws = 0.0
        for t in range(fslot_off[f], fslot_off[f + 1]):
            s = np.uintp(fslot[t])       # unsigned indices: no wraparound code (see _fused)
            vs += acc[s, _ACC_VALID]
            ws += acc[s, _ACC_INDEX]
        vsum[i] = vs
        isum[i] = ws
        for j in range(nidx):
            b = _ACC_FIRST + _ACC_WIDTH * j
            b0, b1, b2, b3 = np.uintp(b), np.uintp(b + 1), np.uintp(b + 2), np.uintp(b + 3)
            sw = 0.0
            mu = 0.0
            m2 = 0.0
            for t in range(fslot_off[f], fslot_off[f + 1]):
                s = np.uintp(fslot[t])
                wb = acc[s, b0]
                if wb > 0.0:
                    # the slot's mean and M2 from its shifted sums, then Chan's update
                    s1 = acc[s, b2]
                    mb = acc[s, b1] + s1 / wb
                    qb = max(acc[s, b3] - s1 * (s1 / wb), 0.0)
                    n = sw + wb
                    d = mb - mu
                    mu += d * (wb / n)
                    m2 += qb + d * d * (sw * wb / n)
                    sw = n
            if sw > 0.0:
                mean[j, i] = mu
                std[j, i] = np.sqrt(max(m2, 0.0) / sw)
                wsum[j, i] = sw
            else:
                mean[j, i] = np.nan
                std[j, i] = np.nan
                wsum[j, i] = 0.0


_FUSED: dict[tuple[Any, ...], Any] = {}
_FUSED_LOCK = threading.Lock()
#: the fused kernels unroll the band checks for at most this many window bands and as many
#: pre-gathered bands (their body has 4 of each, x0..x3 and g0..g3); requests with more
#: bands take the generic path
_FUSED_MAX_BANDS = 4


def _fused_kernel(f, args: Sequence[int], n_fine: int, n_coarse: int):
    """Streaming kernel with the scalar index function ``f`` inlined, reading its bands
    ``args`` (positions among the ``n_fine`` window bands, then the ``n_coarse``
    pre-gathered ones). Positions and counts are compile-time constants, so the band
    checks unroll into straight-line code: compiled once per combination."""
    key = (f, tuple(int(a) for a in args), int(n_fine), int(n_coarse))
    k = _FUSED.get(key)
    if k is None:
        with _FUSED_LOCK:
            k = _FUSED.get(key)
            if k is None:
                k = _FUSED[key] = _make_fused(*key)
    return k


def _make_fused(f, args: tuple[int, ...], nf: int, nc: int):
    if not 1 <= len(args) <= 3 or nf > _FUSED_MAX_BANDS or nc > _FUSED_MAX_BANDS:
        raise ValueError(f"no fused kernel for {len(args)} arguments, {nf} + {nc} bands")
    clear = _CLEAR
    nargs = len(args)
    a0, a1, a2 = (tuple(args) + (0, 0))[:3]

    @numba.njit(inline="always")
    def pick(j, x0, x1, x2, x3, g0, g1, g2, g3):  # pragma: no cover - compiled
        """Reflectance of band position ``j`` (a constant): window band, then gathered."""
        k = j if j < nf else 4 + j - nf          # g0 is the fifth slot
        if k == 0:
            return x0
        if k == 1:
            return x1
        if k == 2:
            return x2
        if k == 3:
            return x3
        if k == 4:
            return g0
        if k == 5:
            return g1
        if k == 6:
            return g2
        return g3

    # The per-entry body is written out (constant band counts, no loops, no helper taking
    # an array): numba keeps a reference-count increment and decrement per array argument
    # of an inlined call, atomic operations that made each entry 5-10x slower.
    @numba.njit(nogil=True)
    def _fused(win, r0, c0, row_start, ec, eu, ef, efr, eslot, assigned, all_assigned,
               code_u, scale, offset, nodata, coarse_r, lo, hi, min_frac, col, count_valid,
               acc):  # pragma: no cover - compiled
        """:func:`_gather_valid`, the index and :func:`_accumulate` in one pass over the
        entries of a window (same arithmetic, same order: identical sums). Adds the
        index's sums at columns ``col .. col + 3`` (:func:`_add_value`) and, when
        ``count_valid``, the valid and index weights."""
        sc = np.zeros(4)
        of = np.zeros(4)
        nd = np.zeros(4)
        for j in range(nf):
            sc[j], of[j], nd[j] = scale[j], offset[j], nodata[j]
        sc0, sc1, sc2, sc3 = sc[0], sc[1], sc[2], sc[3]
        of0, of1, of2, of3 = of[0], of[1], of[2], of[3]
        nd0, nd1, nd2, nd3 = nd[0], nd[1], nd[2], nd[3]
        h = win.shape[1]
        c1 = c0 + win.shape[2]
        # Every index is cast to an unsigned integer (all are >= 0 by construction): numba
        # then emits no negative-index wraparound (a compare and select per array access),
        # which made this loop 20-37 % faster. Same arithmetic: identical sums.
        k0, k1, k2, k3 = np.uintp(col), np.uintp(col + 1), np.uintp(col + 2), np.uintp(col + 3)
        for rr in range(h):
            p = np.uintp(_first_at_or_after(ec, row_start[r0 + rr], row_start[r0 + rr + 1], c0))
            end = np.uintp(row_start[r0 + rr + 1])
            ru = np.uintp(rr)
            while p < end and ec[p] < c1:
                u = np.uintp(eu[p])
                fr = efr[p]
                if code_u[u] == clear and fr > 0.0 and (all_assigned
                                                         or assigned[np.uintp(ef[p])]):
                    cc = np.uintp(ec[p] - c0)
                    ok = True
                    x0 = x1 = x2 = x3 = g0 = g1 = g2 = g3 = 0.0
                    if nf > 0:
                        d = win[0, ru, cc]
                        x0 = np.float64(d) * sc0 + of0
                        ok = d != nd0 and np.isfinite(x0)
                    if nf > 1 and ok:
                        d = win[1, ru, cc]
                        x1 = np.float64(d) * sc1 + of1
                        ok = d != nd1 and np.isfinite(x1)
                    if nf > 2 and ok:
                        d = win[2, ru, cc]
                        x2 = np.float64(d) * sc2 + of2
                        ok = d != nd2 and np.isfinite(x2)
                    if nf > 3 and ok:
                        d = win[3, ru, cc]
                        x3 = np.float64(d) * sc3 + of3
                        ok = d != nd3 and np.isfinite(x3)
                    if nc > 0 and ok:
                        g0 = coarse_r[0, u]
                        ok = np.isfinite(g0)
                    if nc > 1 and ok:
                        g1 = coarse_r[1, u]
                        ok = np.isfinite(g1)
                    if nc > 2 and ok:
                        g2 = coarse_r[2, u]
                        ok = np.isfinite(g2)
                    if nc > 3 and ok:
                        g3 = coarse_r[3, u]
                        ok = np.isfinite(g3)
                    if ok:
                        s = np.uintp(eslot[p])
                        if count_valid:
                            acc[s, _ACC_VALID] += fr
                        if fr >= min_frac:
                            if count_valid:
                                acc[s, _ACC_INDEX] += fr
                            v0 = pick(a0, x0, x1, x2, x3, g0, g1, g2, g3)
                            if nargs == 1:
                                x = f(v0)
                            elif nargs == 2:
                                x = f(v0, pick(a1, x0, x1, x2, x3, g0, g1, g2, g3))
                            else:
                                x = f(v0, pick(a1, x0, x1, x2, x3, g0, g1, g2, g3),
                                      pick(a2, x0, x1, x2, x3, g0, g1, g2, g3))
                            if x >= lo and x <= hi:     # _add_value, written out
                                if acc[s, k0] == 0.0:
                                    acc[s, k1] = x
                                dx = x - acc[s, k1]
                                acc[s, k0] += fr
                                acc[s, k2] += fr * dx
                                acc[s, k3] += fr * dx * dx
                p += np.uintp(1)

    return _fused


_SCRATCH = threading.local()


def _scratch(n_bands: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-thread reusable (reflectance, position) buffers for one block run: fresh
    multi-MiB arrays per run would pay their page faults on every run."""
    refl = getattr(_SCRATCH, "refl", None)
    if refl is None or refl.size < n_bands * n:
        refl = _SCRATCH.refl = np.empty(max(n_bands * n, 1 << 16))
    pos = getattr(_SCRATCH, "pos", None)
    if pos is None or pos.size < n:
        pos = _SCRATCH.pos = np.empty(max(n, 1 << 16), np.int64)
    return refl[:n_bands * n].reshape(n_bands, n), pos[:n]


@dataclass
class _Stream:
    """CSR entries of a grid in row-major pixel order, with their (block, field) slots."""

    shape: tuple[int, int]  # grid (rows, columns)
    block_shape: tuple[int, int]
    nbc: int                # blocks per block row
    n_blocks: int
    row_start: np.ndarray   # entries of grid row r: row_start[r]:row_start[r + 1]
    ec: np.ndarray          # column of each entry
    eu: np.ndarray          # unique pixel index (non-decreasing)
    ef: np.ndarray          # field index
    efr: np.ndarray         # coverage fraction
    ekey: np.ndarray        # block key
    eslot: np.ndarray       # slot
    ublocks: np.ndarray     # block keys holding entries, ascending
    n_slots: int
    fslot_off: np.ndarray   # slots of field f: fslot[fslot_off[f]:fslot_off[f + 1]]
    fslot: np.ndarray


def _build_stream(ctx: "_GridCtx", shape: tuple[int, int],
                  block_shape: tuple[int, int]) -> _Stream:
    from .read import _counting_order

    bh, bw = int(block_shape[0]), int(block_shape[1])
    H, W = int(shape[0]), int(shape[1])
    nbc = -(-W // bw)
    n_blocks = -(-H // bh) * nbc
    n_fields = len(ctx.cov_sum)
    n = len(ctx.order)
    # the kernels stream these per date: 32-bit where it fits halves the memory traffic
    dt = np.int32 if max(n, len(ctx.urows), n_fields, W, n_blocks) < 2**31 else np.int64
    ec, ef, ekey, eslot = (np.empty(n, dt) for _ in range(4))
    efr, row_start, slot_field = np.empty(n), np.zeros(H + 1, np.int64), np.empty(n, np.int64)

    def part(p0, p1):
        _entry_arrays_range(ctx.order, ctx.order_u, ctx.pf, ctx.cov.fractions, ctx.urows,
                            ctx.ucols, bh, bw, nbc, p0, p1, ec, ef, efr, ekey, row_start)
        return _assign_slots_range(ekey, ef, p0, p1, n_fields, eslot, slot_field)

    # Above _SPLIT_ENTRIES two threads build the two halves, cut at the block-row boundary
    # nearest the middle entry: no (block, field) slot spans it, so the second half's
    # slots simply follow the first half's (the same numbering as one pass).
    cut = n
    if n >= _SPLIT_ENTRIES and H > bh:
        r_cut = int(np.clip(round(int(ctx.urows[ctx.order_u[n // 2]]) / bh), 1,
                            -(-H // bh) - 1)) * bh
        cut = int(np.searchsorted(ctx.order_u, np.searchsorted(ctx.urows, r_cut)))
    if 0 < cut < n:
        ns0, ns1 = _in_two_threads(lambda: part(0, cut), lambda: part(cut, n))
        eslot[cut:] += ns0
        slot_field = np.concatenate([slot_field[:ns0], slot_field[cut:cut + ns1]])
    else:
        slot_field = slot_field[:part(0, n)].copy()
    np.cumsum(row_start, out=row_start)
    fslot = _counting_order(slot_field, max(n_fields, 1)) if len(slot_field) else \
        np.zeros(0, np.int64)
    fslot_off = np.zeros(n_fields + 1, np.int64)
    np.cumsum(np.bincount(slot_field, minlength=n_fields), out=fslot_off[1:])
    return _Stream((H, W), (bh, bw), nbc, n_blocks, row_start, ec,
                   ctx.order_u.astype(dt, copy=False), ef, efr, ekey, eslot,
                   np.flatnonzero(np.bincount(ekey, minlength=n_blocks)), len(slot_field),
                   fslot_off, fslot)


def _grid_ctx(fields, grid: Grid, id_col: str) -> _GridCtx:
    from .coverage import coverage_fractions

    cov = coverage_fractions(fields, grid, id_col=id_col)
    # entries in row-major pixel order (stable), their unique pixels and the inverse map
    rows, cols = np.asarray(cov.rows), np.asarray(cov.cols)
    order, urows, ucols, eu, inv = _order_unique(rows, cols, int(grid.shape[0]),
                                                 int(grid.shape[1]))
    pf, cov_sum = cov.pixel_field, cov.coverage     # cached on the (cached) coverage
    # every entry has a fraction > 0, so every field with a pixel has coverage > 0 and
    # every unique pixel lies under such a field
    want_cand = np.ones(len(urows), bool)
    return _GridCtx(cov, pf, inv, urows, ucols, cov_sum, np.asarray(cov.area_px, float), {},
                    want_cand=want_cand, order=order, order_u=eu)


def _order_unique_ref(rows, cols, n_rows, n_cols):
    """NumPy twin of :func:`_order_unique`: ``order`` (stable row-major), the distinct
    pixels ``urows, ucols``, the unique index of each entry in ``order`` (``eu``) and in
    input order (``inv``)."""
    flat = np.asarray(rows, np.int64) * n_cols + np.asarray(cols, np.int64)
    order = np.argsort(flat, kind="stable")
    r, c = np.asarray(rows, np.int64)[order], np.asarray(cols, np.int64)[order]
    _, first, eu = np.unique(flat[order], return_index=True, return_inverse=True)
    inv = np.empty(len(r), np.int64)
    inv[order] = eu.ravel()
    return order, r[first], c[first], eu.ravel().astype(np.int64), inv


@njit(nogil=True)
def _order_unique_rows(rows, cols, n_cols, r_lo, r_hi, start, order, eu, inv, urows,
                       ucols):  # pragma: no cover - compiled
    """:func:`_order_unique` for the entries on grid rows ``r_lo <= r < r_hi``.

    Their stable row-major order goes to ``order[start:start + m]`` (a least-significant-
    digit radix sort: a stable counting pass by column, then one by row, O(n)), and, in
    that order, their distinct pixels to ``urows/ucols[start:start + k]`` with the local
    unique index (from 0) of each entry in ``eu[start:start + m]`` and ``inv``. Returns
    ``k``. Entries of different row ranges never share a pixel, so ranges can be done
    by different threads and numbered on by the caller."""
    n = rows.shape[0]
    nr = r_hi - r_lo
    by_c = np.zeros(n_cols + 1, np.int64)
    by_r = np.zeros(nr + 1, np.int64)
    m = 0
    for i in range(n):
        r = rows[i]
        if r_lo <= r < r_hi:
            # unsigned indices (all >= 0): no negative-index wraparound code (see _fused)
            by_c[np.uintp(cols[i] + 1)] += 1
            by_r[np.uintp(r - r_lo + 1)] += 1
            m += 1
    for b in range(n_cols):
        by_c[b + 1] += by_c[b]
    for b in range(nr):
        by_r[b + 1] += by_r[b]
    by_col = np.empty(m, np.int64)
    for i in range(n):
        r = rows[i]
        if r_lo <= r < r_hi:
            c = np.uintp(cols[i])
            by_col[np.uintp(by_c[c])] = i
            by_c[c] += 1
    for t in range(m):
        i = np.uintp(by_col[t])
        r = np.uintp(rows[i] - r_lo)
        order[np.uintp(start + by_r[r])] = i
        by_r[r] += 1
    k = -1
    pr = -1
    pc = -1
    for t in range(start, start + m):
        i = np.uintp(order[t])
        r = rows[i]
        c = cols[i]
        if r != pr or c != pc:
            k += 1
            urows[start + k] = r
            ucols[start + k] = c
            pr = r
            pc = c
        eu[t] = k
        inv[i] = k
    return k + 1


def _in_two_threads(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """``(first(), second())``, the second run by a helper thread meanwhile: for the two
    halves of a GIL-free set-up step, which would leave one core idle otherwise."""
    with ThreadPoolExecutor(1, thread_name_prefix="cropyield-setup") as pool:
        later = pool.submit(second)
        return first(), later.result()


#: Entries above which :func:`_order_unique` and :func:`_build_stream` split their work between two threads.
_SPLIT_ENTRIES = 200_000


def _order_unique(rows, cols, n_rows: int, n_cols: int):
    """Stable row-major order of the entries ``(rows, cols)`` on an ``n_rows x n_cols``
    grid, their distinct pixels and the maps to them (see :func:`_order_unique_ref`).

    Above :data:`_SPLIT_ENTRIES` entries the rows are cut where half of the entries lie
    above, and the two parts are sorted by two threads (the set-up before the first read
    is serial otherwise); the second part's unique indices are then shifted behind the
    first's."""
    n = len(rows)
    order, eu, inv = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    urows, ucols = np.empty(n, np.int64), np.empty(n, np.int64)
    args = (order, eu, inv, urows, ucols)
    if n < _SPLIT_ENTRIES or n_rows < 2:
        k = _order_unique_rows(rows, cols, n_cols, 0, n_rows, 0, *args)
        return order, urows[:k].copy(), ucols[:k].copy(), eu, inv
    per_row = np.cumsum(np.bincount(rows, minlength=n_rows))
    mid = int(np.clip(np.searchsorted(per_row, n // 2), 1, n_rows - 1))
    start = int(per_row[mid - 1])                 # entries on rows < mid
    k0, k1 = _in_two_threads(
        lambda: _order_unique_rows(rows, cols, n_cols, 0, mid, 0, *args),
        lambda: _order_unique_rows(rows, cols, n_cols, mid, n_rows, start, *args))
    eu[start:] += k0
    inv[order[start:]] += k0
    return (order, np.concatenate([urows[:k0], urows[start:start + k1]]),
            np.concatenate([ucols[:k0], ucols[start:start + k1]]), eu, inv)


# --------------------------------------------------------------------------------------------
# the entry point


def field_observations(scenes, fields, *, indices: Sequence[str] = ("ndvi",),
                       scl_classes: Iterable[int] | None = None, dilate: int = 0,
                       min_valid_fraction: float = 0.0, id_col: str = "field_id",
                       on_error: str = "raise", progress: Any = None, threads: int = 2,
                       min_coverage_frac: float = 0.0,
                       env: Mapping[str, Any] | None = None,
                       signer: Callable[[str], str] | None = None,
                       max_attempts: int = 4) -> pd.DataFrame:
    """Coverage-weighted vegetation-index statistics per (field, acquisition).

    Parameters
    ----------
    scenes : Scenes, or iterable of Scene / pystac.Item / STAC item dict
        Sentinel-2 L2A scenes (hrefs may be local paths or http(s) URLs). Items are
        normalised with :func:`cropyield.normalize_item`.
    fields : geopandas.GeoDataFrame
        Field polygons with a CRS and a unique ``id_col`` (any CRS; reprojected per grid).
    indices : sequence of str
        Index names from :data:`cropyield.INDICES` (``"ndvi"``, ``"evi"``, ``"ndre"``...).
    scl_classes : iterable of int, optional
        SCL classes treated as invalid (default 0, 1, 3, 8, 9, 10, 11).
    dilate : int
        Dilate cloud and shadow masks by this many SCL pixels (20 m each).
    min_valid_fraction : float
        Rows whose valid fraction is below this get NaN values and ``LOW_VALID_FRACTION``.
    min_coverage_frac : float
        Pixels covered by less than this fraction of their area are left out of the index
        means and stds (exactextract's ``min_coverage_frac``); ``coverage`` and
        ``valid_fraction`` still count every pixel. Mixed edge pixels bias small fields
        towards their neighbours (``docs/method.md``), so ~0.5 suits yield work; a field with
        no such pixel gets NaN and ``FIELD_TOO_SMALL``. Default 0: exact area weighting.
    id_col : str
        Field identifier column.
    on_error : {"raise", "flag"}
        ``"raise"``: a failed read raises :class:`~cropyield.errors.AssetReadError` (or
        ``CorruptAssetError`` / ``AuthExpiredError``) with a redacted href. ``"flag"``: the
        affected rows get NaN values and ``READ_FAILED`` / ``AUTH_EXPIRED`` and the failure
        is listed in ``df.attrs["read_failures"]``.
    progress : None, True, callable or tqdm-like
        ``True`` logs progress at INFO on the ``cropyield`` logger; a tqdm-like object
        gets ``.update(1)`` per acquisition; a callable is called as ``progress(done, total)``.
    threads : int
        Reader threads (each with its own GDAL handles). Default 2.
    env : dict, optional
        Extra GDAL configuration options (see :func:`cropyield.read.gdal_env`).
    signer : callable, optional
        ``signer(href) -> signed href`` for remote assets (e.g. ``planetary_computer.sign``);
        a scene attribute ``signer`` is used when this is None. Re-called once on HTTP 403.
    max_attempts : int
        Attempts per block read for transient failures.

    Returns
    -------
    pandas.DataFrame
        One row per (field, acquisition) where the field has pixels in a scene's grid,
        sorted by field (input order) then time. Columns: ``field_id``, ``time``
        (``datetime64[ns, UTC]``), ``scene_id``, ``tile``, ``coverage`` (sum of coverage
        fractions in the grid, pixels of the finest band), ``valid_fraction`` (clear
        coverage / coverage, 0..1), per index ``<index>`` (weighted mean, dimensionless)
        and ``<index>_std`` (weighted population standard deviation), ``flags``.
        ``attrs``: ``requests``, ``bytes_read``, ``blocks_read``, ``retries``,
        ``read_failures`` (list of dicts with redacted href), ``scene_ids``, ``indices``.

    Raises
    ------
    MissingCRSError, InvalidFieldsError
        Bad fields table.
    AssetReadError
        With ``on_error="raise"``, when a read fails after retries, or when a file's shape,
        transform or CRS differs from its item's ``proj:`` metadata (reason
        ``grid_mismatch``: the fields would land on the wrong pixels).
    """
    from . import indices as ix
    from ._geo import validate_fields
    from .read import BlockReader

    if on_error not in ("raise", "flag"):
        raise ConfigError(f"on_error must be 'raise' or 'flag', got {on_error!r}")
    if isinstance(indices, str):
        indices = (indices,)
    indices = tuple(indices)
    if not indices:
        raise ConfigError("indices is empty; ask for at least one index, e.g. ('ndvi',)")
    specs = {}
    for name in indices:
        get = getattr(ix, "get_index", None)
        spec = get(name) if get is not None else ix.INDICES.get(name)
        if spec is None:
            raise ConfigError(f"unknown index {name!r}; known: {sorted(ix.INDICES)}")
        specs[name] = spec
    bands_needed = sorted({b for s in specs.values() for b in s.bands})
    classes = tuple(ix.DEFAULT_SCL_INVALID if scl_classes is None else scl_classes)
    if dilate < 0:
        raise ConfigError("dilate must be >= 0 (pixels)")
    if not 0.0 <= float(min_valid_fraction) <= 1.0:
        raise ConfigError("min_valid_fraction must be within [0, 1]")
    if not 0.0 <= float(min_coverage_frac) <= 1.0:
        raise ConfigError("min_coverage_frac must be within [0, 1]")
    fields = validate_fields(fields, id_col=id_col)
    scene_list = _as_scene_list(scenes)
    for s in scene_list:
        missing = [b for b in bands_needed if b not in s.bands]
        if missing:
            raise CropYieldError(f"scene {s.id} lacks bands {missing} needed for {indices}; "
                                 f"available: {sorted(s.bands)}")

    # reference grid per scene: finest of the needed bands (+SCL)
    ref_grids = []
    for s in scene_list:
        names = bands_needed + (["SCL"] if "SCL" in s.bands else [])
        ref_grids.append(min((s.bands[b].grid for b in names), key=lambda g: g.resolution))
    # acquisitions
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(scene_list):
        groups.setdefault(_solar_day(s), []).append(i)
    for members in groups.values():
        # ties in the assignment go to the newest processing (reprocessed duplicates), then
        # to the first tile/id in order
        members.sort(key=lambda i: (-_baseline(scene_list[i]), scene_list[i].tile,
                                    scene_list[i].id))
    order = sorted(groups, key=lambda k: (k, min(scene_list[i].datetime for i in groups[k])))
    field_ids = np.asarray(fields[id_col].to_numpy())

    reader_signer = signer
    if reader_signer is None:
        sig = {getattr(s, "signer", None) for s in scene_list} - {None}
        reader_signer = next(iter(sig)) if len(sig) == 1 else None
    results: list[Any] = [None] * len(order)
    done = 0
    lock = threading.Lock()
    t0 = _time.perf_counter()

    def tick():
        nonlocal done
        with lock:
            done += 1
            d = done
        if progress is None or progress is False:
            return
        if progress is True:
            logger.info("field_observations: %d/%d acquisitions (%.1fs)", d, len(order),
                        _time.perf_counter() - t0)
        elif hasattr(progress, "update"):
            progress.update(1)
        elif callable(progress):
            progress(d, len(order))

    with BlockReader(threads=threads, env=env, signer=reader_signer,
                     max_attempts=max_attempts) as reader:
        # the reader threads open the first acquisitions' files while this thread computes
        # the coverage (remote opens are latency-bound requests): SCL first, as they are
        # read. Only single-scene acquisitions: of several overlapping tiles, some may
        # have no field or be assigned none, and their files are never opened
        first = [scene_list[groups[k][0]] for k in order[:threads + 2]
                 if len(groups[k]) == 1]
        reader.prefetch_meta([s.bands["SCL"].href for s in first if "SCL" in s.bands]
                             + [s.bands[b].href for s in first for b in bands_needed])
        ctxs: dict[Grid, _GridCtx] = {}
        for g in ref_grids:
            if g not in ctxs:
                ctxs[g] = _grid_ctx(fields, g, id_col)
        state = _Run(scene_list, ref_grids, ctxs, specs, bands_needed, classes, int(dilate),
                     float(min_valid_fraction), on_error, float(min_coverage_frac))
        state.reader = reader

        def run_group(gi):
            results[gi] = state.group([i for i in groups[order[gi]]])
            tick()

        # a few acquisitions in flight so that the reader pool always has blocks to decode
        # while other acquisitions are masked and reduced (memory: pixels under the fields
        # of at most threads + 2 acquisitions)
        with ThreadPoolExecutor(threads + 2, thread_name_prefix="cropyield-obs") as coord:
            # build each grid's streaming order while the first SCL blocks are decoded
            firsts = {}
            for i, g in enumerate(ref_grids):
                firsts.setdefault(g, i)
            for i in firsts.values():
                coord.submit(state.prepare_stream, i)
            futs = [coord.submit(run_group, gi) for gi in range(len(order))]
            err = None
            for f in futs:
                try:
                    f.result()
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    if err is None:
                        err = exc
                        for g in futs:
                            g.cancel()
            if err is not None:
                raise err
        stats = reader.stats.as_dict()

    # ---- assemble one DataFrame
    parts = [p for r in results if r for p in r]
    cols: dict[str, list] = {k: [] for k in ("fi", "scene", "cov", "vf", "flags")}
    vals: dict[str, list] = {n: [] for n in indices}
    stds: dict[str, list] = {n: [] for n in indices}
    for p in parts:
        cols["fi"].append(p["fi"])
        cols["scene"].append(np.full(len(p["fi"]), p["scene"], np.int64))
        cols["cov"].append(p["cov"])
        cols["vf"].append(p["vf"])
        cols["flags"].append(np.asarray(p["flags"], dtype=object))
        for n in indices:
            vals[n].append(p["mean"][n])
            stds[n].append(p["std"][n])

    def cat(lst, dtype):
        return np.concatenate(lst) if lst else np.zeros(0, dtype)

    fi = cat(cols["fi"], np.int64)
    si = cat(cols["scene"], np.int64)
    srt = np.lexsort((si, fi)) if len(fi) else np.zeros(0, np.int64)
    fi, si = fi[srt], si[srt]
    flags = cat(cols["flags"], object)[srt]
    times = pd.DatetimeIndex([pd.Timestamp(s.datetime) for s in scene_list])
    if times.tz is None:
        times = times.tz_localize("UTC")
    times = times.tz_convert("UTC").as_unit("ns") if len(times) else times
    scene_ids = np.array([s.id for s in scene_list], dtype=object)
    tiles = np.array([s.tile for s in scene_list], dtype=object)
    data = {
        "field_id": _take(field_ids, fi),
        "time": times[si] if len(si) else pd.DatetimeIndex([], tz="UTC"),
        "scene_id": _take(scene_ids, si),
        "tile": _take(tiles, si),
        "coverage": cat(cols["cov"], float)[srt],
        "valid_fraction": cat(cols["vf"], float)[srt],
    }
    for n in indices:
        data[n] = cat(vals[n], float)[srt]
        data[f"{n}_std"] = cat(stds[n], float)[srt]
    data["flags"] = pd.Series(flags, dtype=object)
    df = pd.DataFrame(data, copy=False)      # every column was built here: no copy
    df.attrs.update({
        "requests": stats["requests"], "bytes_read": stats["bytes_read"],
        "blocks_read": stats["blocks_read"], "retries": stats["retries"],
        "read_failures": list(state.failures),
        "scene_ids": [s.id for s in scene_list], "indices": list(indices),
        "scl_classes": list(classes), "dilate": int(dilate),
    })
    return df


def _take(values: np.ndarray, idx: np.ndarray):
    """``values[idx]``; a few distinct strings repeated many times are expanded in Arrow
    (what pandas would convert the object array to, 10x faster than from Python str)."""
    if values.dtype == object and len(idx) and all(isinstance(v, str) for v in values):
        import pyarrow as pa
        import pyarrow.compute as pc

        dtype = pd.Series(values[:1]).dtype         # what pandas makes of str objects
        if not (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"):
            return values[idx]                      # object (pandas < 3): kept as is
        # large_string is pandas 3's storage of str: no cast afterwards
        return pd.Series(pc.take(pa.array(values.tolist(), pa.large_string()),
                                 pa.array(idx)), dtype=dtype)
    return values[idx]


class _Run:
    """Shared state of one :func:`field_observations` call (read-only after set-up)."""

    def __init__(self, scenes, ref_grids, ctxs, specs, bands, classes, dilate, min_vf,
                 on_error, min_cf=0.0):
        self.scenes, self.ref_grids, self.ctxs = scenes, ref_grids, ctxs
        self.specs, self.bands, self.classes = specs, bands, classes
        self.dilate, self.min_vf, self.on_error = dilate, min_vf, on_error
        self.min_cf = min_cf
        self.failures: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.reader = None

    # -- failure bookkeeping -----------------------------------------------------------------
    def _fail(self, scene, band: str, exc: AssetReadError) -> int:
        if self.on_error == "raise":
            raise exc
        rec = {"scene_id": scene.id, "band": band, "href": redact(exc.href or ""),
               "error": type(exc).__name__, "reason": exc.reason, "attempts": exc.attempts,
               "message": redact(str(exc))}
        with self._lock:
            self.failures.append(rec)
        logger.warning("read of %s band %s failed (%s); rows flagged", scene.id, band,
                       type(exc).__name__)
        return _B_AUTH if isinstance(exc, AuthExpiredError) else _B_READ_FAILED

    def _check_grid(self, band) -> None:
        """The file's shape, transform and CRS must match the item's metadata (else pixels
        shift, or the fields land in the wrong UTM zone)."""
        m = self.reader.meta(band.href)
        t, g = m.transform, band.grid.transform
        if (tuple(m.shape) != tuple(band.grid.shape)
                or any(abs(a - b) > 1e-6 for a, b in zip(tuple(t)[:6], tuple(g)[:6]))
                or not _same_crs(m.crs, band.grid.crs)):
            href = redact(band.href)
            raise AssetReadError(
                f"{href} has shape {tuple(m.shape)}, transform {tuple(t)[:6]} and CRS "
                f"{_crs_name(m.crs)} but the item says {tuple(band.grid.shape)}, "
                f"{tuple(g)[:6]} and {_crs_name(band.grid.crs)}; the STAC metadata "
                f"(proj:shape / proj:transform / proj:epsg or proj:code) is wrong for this "
                f"asset: fix or drop the item", href=href, reason="grid_mismatch")

    def prepare_stream(self, si: int) -> None:
        """Build the streaming order of scene ``si``'s grid ahead of need (best effort:
        a failure here is met again, and reported, by the scene's own pass)."""
        scene, ref = self.scenes[si], self.ref_grids[si]
        try:
            for b in self.bands:
                band = scene.bands[b]
                if _factor(band.grid, ref, b) == 1:
                    shape = self.reader.meta(band.href).block_shape
                    self.ctxs[ref].stream(ref.shape, shape)
                    return
        except Exception:  # noqa: BLE001 - best effort, see docstring
            logger.debug("stream preparation for %s deferred", scene.id, exc_info=True)

    # -- SCL pass ----------------------------------------------------------------------------
    def scl_codes(self, si: int, want_u: np.ndarray) -> tuple[np.ndarray | None, int]:
        """Per unique pixel code (outside/masked/clear) for scene ``si``; (None, bits) on failure."""
        from .indices import invalid_mask

        scene = self.scenes[si]
        ctx = self.ctxs[self.ref_grids[si]]
        band = scene.bands.get("SCL")
        if band is None:
            return np.full(len(ctx.urows), _CLEAR, np.uint8), 0
        k = _factor(band.grid, self.ref_grids[si], "SCL")
        brow, bcol, inv_k = ctx.pixels(k)
        want_b = ctx.want_on(k, want_u)
        classes, dilate = self.classes, self.dilate

        # class -> code table with the indices module's semantics (0 always invalid, unknown
        # classes invalid); with dilation the mask needs the 2-D neighbourhood
        lut_inv = np.asarray(invalid_mask(np.arange(256).reshape(16, 16), classes, 0),
                             bool).ravel()
        lut = np.where(lut_inv, _MASKED, _CLEAR).astype(np.uint8)
        lut[0] = _OUTSIDE

        def to_codes(scl):
            if dilate == 0 and scl.dtype == np.uint8:
                return lut[scl]
            inv = np.asarray(invalid_mask(scl, classes, dilate), bool)
            code = np.where(inv, _MASKED, _CLEAR).astype(np.uint8)
            code[scl == 0] = _OUTSIDE
            return code

        try:
            self._check_grid(band)
            if dilate == 0 and np.dtype(self.reader.meta(band.href).dtype) == np.uint8:
                # no neighbourhood needed: gather the raw classes, then look the codes up
                # on the pixel vector only (unread pixels: class 0 -> _OUTSIDE, the fill)
                raw = self.reader.read(band.href, brow, bcol, want=want_b, fill=0,
                                       dtype=np.uint8)
                codes = _codes_at(raw, lut, inv_k)
            else:
                codes = self.reader.read(band.href, brow, bcol, want=want_b,
                                         fill=_OUTSIDE, dtype=np.uint8, pad=dilate,
                                         window_fn=to_codes)[inv_k]
        except AssetReadError as exc:
            return None, self._fail(scene, "SCL", exc)
        finally:
            self.reader.release(band.href)
        return codes, 0

    # -- one acquisition ---------------------------------------------------------------------
    def group(self, members: list[int]) -> list[dict]:
        ctxs = [self.ctxs[self.ref_grids[i]] for i in members]
        cand = [c.cov_sum > 0 for c in ctxs]
        codes, fail_bits, score = [], [], []
        for i, ctx, cm in zip(members, ctxs, cand):
            if not cm.any():
                codes.append(None)
                fail_bits.append(0)
                score.append(None)
                continue
            # cm is cov_sum > 0: its pixels were collected once per grid
            code_u, fb = self.scl_codes(i, ctx.want_cand)
            codes.append(code_u)
            fail_bits.append(fb)
            if len(members) > 1:
                score.append(self._score(ctx, cm, code_u))
        # assignment
        if len(members) == 1:
            assigned = [cand[0]]
        else:
            n = len(cand[0])
            S = np.full((len(members), n), -2, np.int64)
            for j, sc in enumerate(score):
                if sc is not None:
                    S[j] = sc
            best = np.argmax(S, axis=0)
            anyc = np.zeros(n, bool)
            for c in cand:
                anyc |= c
            assigned = [(best == j) & cand[j] & anyc for j in range(len(members))]
        out = []
        for j, i in enumerate(members):
            if not assigned[j].any():
                continue
            out.append(self.scene_rows(i, ctxs[j], assigned[j], codes[j], fail_bits[j]))
        return out

    @staticmethod
    def _score(ctx: _GridCtx, cm: np.ndarray, code_u: np.ndarray | None) -> np.ndarray:
        area = np.where(np.isfinite(ctx.area_px) & (ctx.area_px > 0), ctx.area_px, 1.0)
        n = len(cm)
        ingrid = np.rint(np.clip(ctx.cov_sum / area, 0, 1) * 1000).astype(np.int64)
        if code_u is None:
            sc = np.full(n, -1, np.int64)
        else:
            e = code_u[ctx.inv]
            frac = ctx.cov.fractions
            swath = np.bincount(ctx.pf, weights=frac * (e > _OUTSIDE), minlength=n)
            clear = np.bincount(ctx.pf, weights=frac * (e == _CLEAR), minlength=n)
            sw = np.rint(np.clip(swath / area, 0, 1) * 1000).astype(np.int64)
            cl = np.rint(np.clip(clear / area, 0, 1) * 1000).astype(np.int64)
            sc = (sw * 1001 + ingrid) * 1001 + cl
        return np.where(cm, sc, -2)

    # -- band reads + statistics for the fields assigned to one scene -----------------------
    def scene_rows(self, si: int, ctx: _GridCtx, assigned: np.ndarray,
                   code_u: np.ndarray | None, bits0: int) -> dict:
        from .coverage import bits_to_flags
        from .indices import _stat_bits

        scene = self.scenes[si]
        ref = self.ref_grids[si]
        fi = np.flatnonzero(assigned)
        nf = len(fi)
        cov = ctx.cov_sum[fi]
        bits = np.full(nf, bits0, np.int64)
        nan = np.full(nf, np.nan)
        means = {n: nan.copy() for n in self.specs}
        stds = {n: nan.copy() for n in self.specs}
        vf = nan.copy()
        if code_u is None:
            return self._rows(si, ctx, fi, cov, vf, bits, means, stds)
        # bands on the reference grid sharing the first one's block shape and dtype are
        # streamed block run by block run; the others (20 m bands of a 10 m grid) are
        # gathered first as reflectance per unique pixel
        fine: list[tuple[str, Any, Any]] = []
        coarse: list[tuple[str, Any, int]] = []
        fail = 0
        for b in self.bands:
            band = scene.bands[b]
            k = _factor(band.grid, ref, b)
            try:
                self._check_grid(band)
                m = self.reader.meta(band.href)
            except AssetReadError as exc:
                fail |= self._fail(scene, b, exc)
                continue
            if k == 1 and (not fine or (m.block_shape, np.dtype(m.dtype)) == (
                    fine[0][2].block_shape, np.dtype(fine[0][2].dtype))):
                fine.append((b, band, m))
            else:
                coarse.append((b, band, k))
        coarse_r = np.empty((len(coarse), len(ctx.urows)))
        if coarse and not fail:
            want_u = self._want(ctx, assigned, code_u)
            for j, (b, band, k) in enumerate(coarse):
                try:
                    coarse_r[j] = self._coarse_reflectance(ctx, band, k, want_u)
                except AssetReadError as exc:
                    fail |= self._fail(scene, b, exc)
                finally:
                    self.reader.release(band.href)
        st = ctx.stream(ref.shape, fine[0][2].block_shape if fine else ref.shape)
        nidx = len(self.specs)
        acc = np.zeros((st.n_slots, _ACC_FIRST + _ACC_WIDTH * nidx))
        if not fail:
            fail = self._stream_fine(scene, st, fine, coarse, coarse_r, assigned, code_u, acc,
                                     has_px=ctx.cov_sum > 0)
        if fail:
            for b in self.bands:              # handles opened for metadata only
                self.reader.release(scene.bands[b].href)
            emask = assigned[ctx.pf]
            pf_sub = np.repeat(np.arange(nf), np.diff(ctx.cov.offsets)[fi])
            swath = np.bincount(pf_sub, weights=ctx.cov.fractions[emask]
                                * (code_u[ctx.inv[emask]] > _OUTSIDE), minlength=nf)
            bits |= fail
            bits[swath <= 0] |= _B_NO_OVERLAP
            return self._rows(si, ctx, fi, cov, vf, bits, means, stds)
        vsum, isum = np.empty(nf), np.empty(nf)
        mean, std, wsum = np.empty((nidx, nf)), np.empty((nidx, nf)), np.empty((nidx, nf))
        _merge_slots(acc, st.fslot_off, st.fslot, fi, vsum, isum, mean, std, wsum)
        # the footprint sum only tells NO_OVERLAP from ALL_MASKED for fields without a
        # valid pixel; elsewhere it is >= the valid sum > 0
        fsum = vsum.copy()
        empty = vsum <= 0
        if empty.any():
            fsum[empty] = _footprint_sum(ctx.cov.offsets, ctx.inv, ctx.cov.fractions, code_u,
                                         fi[empty])
        vfrac, sbits, codes = _stat_bits(ctx.cov, fi, vsum, fsum, isum, wsum, mean, std,
                                         self.min_vf, self.min_cf)
        flags = bits_to_flags(sbits, codes)
        for j, name in enumerate(self.specs):
            means[name] = mean[j]
            stds[name] = std[j]
        flags = _with_scene_flags(np.asarray(flags, dtype=object), scene.flags)
        return {"fi": fi, "scene": si, "cov": cov, "vf": vfrac, "flags": flags,
                "mean": means, "std": stds}

    @staticmethod
    def _want(ctx: _GridCtx, assigned: np.ndarray, code_u: np.ndarray) -> np.ndarray:
        """Unique pixels that are clear and under an assigned field."""
        if np.array_equal(assigned, ctx.cov_sum > 0):
            return ctx.want_cand & (code_u == _CLEAR)
        einv = ctx.inv[assigned[ctx.pf]]
        want_u = np.zeros(len(ctx.urows), bool)
        want_u[einv[code_u[einv] == _CLEAR]] = True
        return want_u

    def _coarse_reflectance(self, ctx: _GridCtx, band, k: int, want_u) -> np.ndarray:
        """Reflectance (NaN: nodata or unread) of a band at every unique pixel of ``ctx``,
        read through the 1/k grid nesting."""
        from .indices import _reflectance_valid, reflectance

        brow, bcol, inv_k = ctx.pixels(k)
        nod = band.nodata if band.nodata is not None else 0
        dn = self.reader.read(band.href, brow, bcol, want=ctx.want_on(k, want_u), fill=nod)
        plain = (dn.dtype.kind in "ui" and not (isinstance(nod, float) and np.isnan(nod))
                 and float(nod) == int(nod)
                 and np.iinfo(dn.dtype).min <= int(nod) <= np.iinfo(dn.dtype).max)
        if not plain:
            return np.asarray(reflectance(dn[inv_k], band.scale, band.offset, nodata=nod),
                              float)
        r = np.empty(len(inv_k))
        _reflectance_valid(dn, inv_k, float(band.scale), float(band.offset),
                           dn.dtype.type(int(nod)), True, np.ones(len(inv_k), bool), r)
        return r

    def _stream_fine(self, scene, st: _Stream, fine, coarse, coarse_r, assigned, code_u,
                     acc, has_px) -> int:
        """Read the fine bands block run by block run and accumulate the statistics of
        every run in the reader thread that decoded it (``has_px``: the fields with an
        entry on this grid). Returns failure bits (0: done)."""
        from .indices import _apply, _min_frac_threshold
        from .read import _runs_of

        need = _blocks_needed(st.ekey, st.eu, st.ef, code_u, assigned, st.n_blocks)
        run_row, run_c0, run_c1, _, _ = _runs_of(st.ublocks[need[st.ublocks]], st.nbc,
                                                 self.reader.max_run)
        names = [b for b, _, _ in fine] + [b for b, _, _ in coarse]
        scale = np.array([float(band.scale) for _, band, _ in fine])
        offset = np.array([float(band.offset) for _, band, _ in fine])
        nodata = np.array([float(band.nodata if band.nodata is not None else 0)
                           for _, band, _ in fine])
        specs = list(self.specs.values())
        min_frac = _min_frac_threshold(self.min_cf)

        if (all(spec.scalar is not None for spec in specs)
                and max(len(fine), len(coarse)) <= _FUSED_MAX_BANDS):
            # built-in indices: one fused pass per index, the first also counts validity
            # a single-scene acquisition is assigned every field with a pixel, i.e. the
            # field of every entry: the kernels then skip the per-entry lookup
            all_assigned = bool(np.all(assigned | ~has_px))
            fused = [(_fused_kernel(spec.scalar, [names.index(b) for b in spec.bands],
                                    len(fine), len(coarse)),
                      float(spec.valid_range[0]), float(spec.valid_range[1]))
                     for spec in specs]

            def consume(k: int, r0: int, c0: int, win: np.ndarray) -> None:
                for j, (kern, lo, hi) in enumerate(fused):
                    kern(win, r0, c0, st.row_start, st.ec, st.eu, st.ef, st.efr, st.eslot,
                         assigned, all_assigned, code_u, scale, offset, nodata, coarse_r, lo,
                         hi, min_frac, _ACC_FIRST + _ACC_WIDTH * j, j == 0, acc)
        else:
            # formula indices: gather the valid reflectances, apply, accumulate
            def consume(k: int, r0: int, c0: int, win: np.ndarray) -> None:
                h = win.shape[1]
                refl, pos = _scratch(len(names), int(st.row_start[r0 + h] - st.row_start[r0]))
                m = _gather_valid(win, r0, c0, st.row_start, st.ec, st.eu, st.ef, assigned,
                                  code_u, scale, offset, nodata, coarse_r, refl, pos)
                if m == 0:
                    return
                bands = {b: refl[j, :m] for j, b in enumerate(names)}
                vals = np.empty((len(specs), m))
                for j, spec in enumerate(specs):
                    vals[j] = _apply(spec, bands)
                _accumulate(vals, pos, m, st.efr, st.eslot, min_frac, acc)

        if not fine:                     # nothing to decode here: every band was gathered
            (bh, bw), (H, W) = st.block_shape, st.shape
            for k in range(len(run_row)):
                r0, c0 = int(run_row[k]) * bh, int(run_c0[k]) * bw
                h, w = min(bh, H - r0), min((int(run_c1[k]) + 1) * bw, W) - c0
                consume(k, r0, c0, np.zeros((0, h, w), np.uint16))
            return 0
        hrefs = [band.href for _, band, _ in fine]
        try:
            self.reader.read_windows(hrefs, run_row, run_c0, run_c1, consume)
        except AssetReadError as exc:
            failed = next((b for b, band, _ in fine if redact(band.href) == exc.href),
                          fine[0][0])
            return self._fail(scene, failed, exc)
        finally:
            for h in hrefs:
                self.reader.release(h)
        return 0

    def _rows(self, si, ctx, fi, cov, vf, bits, means, stds) -> dict:
        """Rows without statistics (read failures): bits + coverage flags + scene flags."""
        from .errors import join_flags

        cflags = np.asarray(ctx.cov.flags, dtype=object)[fi]
        cache: dict = {}
        out = np.empty(len(fi), dtype=object)
        for k, (b, c) in enumerate(zip(bits.tolist(), cflags.tolist())):
            key = (b, c)
            if key not in cache:
                cache[key] = join_flags([code for bit, code in _BIT_CODES.items() if b & bit],
                                        [x for x in str(c).split(",") if x != "NO_OVERLAP"],
                                        list(self.scenes[si].flags))
            out[k] = cache[key]
        return {"fi": fi, "scene": si, "cov": cov, "vf": vf, "flags": out, "mean": means,
                "std": stds}


def _with_scene_flags(flags: np.ndarray, scene_flags) -> np.ndarray:
    if not scene_flags:
        return flags
    from .errors import join_flags

    u, inv = np.unique(flags.astype(str), return_inverse=True)
    joined = np.array([join_flags(x, list(scene_flags)) for x in u], dtype=object)
    return joined[inv.ravel()]


def observations_to_xarray(df: pd.DataFrame):
    """Observations table -> ``xarray.Dataset`` with dims ``(field, time)``.

    Every numeric column becomes a variable; ``flags``, ``scene_id`` and ``tile`` become
    object variables (missing combinations are NaN / ""). ``time`` is tz-naive UTC.
    """
    import xarray as xr

    if df.empty:
        return xr.Dataset(coords={"field": [], "time": np.array([], "datetime64[ns]")})
    d = df.copy()
    t = pd.DatetimeIndex(d["time"])
    if t.tz is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    d["time"] = t
    d = d.rename(columns={"field_id": "field"}).set_index(["field", "time"])
    ds = xr.Dataset.from_dataframe(d)
    for c in ("flags", "scene_id", "tile"):
        if c in ds:
            ds[c] = ds[c].fillna("")
    ds.attrs.update({k: v for k, v in df.attrs.items() if isinstance(v, (int, float, str))})
    ds.attrs["time_zone"] = "UTC"
    return ds
