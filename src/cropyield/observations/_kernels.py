"""Numba kernels of :func:`cropyield.observations.field_observations` and their NumPy twins.

Every compiled kernel ``_name`` has a plain NumPy reference ``_name_ref`` beside it, used by
``tests/test_kernel_twins.py``. The kernels here serve the streaming plan
(:mod:`._plan`: pixel order, coarse-grid maps, (block, field) slots) and the per-scene
reduction run by :mod:`._run` (SCL codes, gather, accumulate, merge, and the fused
gather-index-accumulate kernels built per index by :func:`_fused_kernel`).

Kernels are cached on disk (``cropyield._jit.njit``); a cached kernel calls only kernels of
this module (numba invalidates a cache when the kernel's own file changes).

Entry points: :func:`_fused_kernel` (one streaming pass per index), :func:`_gather_valid`,
:func:`_accumulate`, :func:`_merge_slots`, :func:`_order_unique_rows`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np

from .._jit import njit

# per-pixel codes after the SCL pass
_OUTSIDE, _MASKED, _CLEAR = 0, 1, 2


# --------------------------------------------------------------------------------------------
# coarse-grid maps and SCL codes


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

#: accumulator columns per slot: valid weight, index weight, weight of saturated pixels,
#: weight of pixels with a reflectance outside :data:`_REFL_RANGE` (both masked, counted by
#: the fused kernels only), then per index ``_ACC_WIDTH`` columns (weight, shift, sum of
#: w (x - shift), sum of w (x - shift)^2), see :func:`_add_value`
_ACC_VALID, _ACC_INDEX, _ACC_SAT, _ACC_OOR, _ACC_FIRST, _ACC_WIDTH = 0, 1, 2, 3, 4, 4

#: Physical range of surface reflectance accepted and the saturated DN: the rule of
#: :func:`cropyield.zonal_stats` (:data:`cropyield.zonal._REFL_MIN` ...). Written out here,
#: not imported: the disk-cached kernels freeze these globals and numba invalidates their
#: cache only when this file changes (tests/test_field_faults.py checks they agree).
_REFL_MIN, _REFL_MAX, _DN_SATURATED = -0.2, 2.0, 65535
_REFL_RANGE = (_REFL_MIN, _REFL_MAX)


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
            ok &= (d != nodata[j]) & (v >= _REFL_MIN) & (v <= _REFL_MAX)
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
    pixel ``u``. False as soon as one is invalid (DN == nodata, or reflectance outside
    :data:`_REFL_RANGE`, which also rejects NaN)."""
    for j in range(nf):
        d = win[j, rr, cc]
        x = np.float64(d) * scale[j] + offset[j]
        if d == nodata[j] or not (x >= _REFL_MIN and x <= _REFL_MAX):
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


def _dn_histogram_ref(win, step, hist):
    """NumPy twin of :func:`_dn_histogram`."""
    for j in range(win.shape[0]):
        hist[j] += np.bincount(np.asarray(win[j, ::step, ::step]).ravel(),
                               minlength=hist.shape[1])[:hist.shape[1]]


@njit(nogil=True)
def _dn_histogram(win, step, hist):  # pragma: no cover - compiled
    """Add the DN of every ``step``-th row and column of each band of ``win`` (n, h, w;
    unsigned integers below ``hist.shape[1]``) to ``hist[band, DN]``: the dark-object
    statistics of a scene whose metadata say it has no offset (one pass over a 1/step^2
    sample, outside the fused kernels)."""
    for j in range(win.shape[0]):
        for r in range(0, win.shape[1], step):
            for c in range(0, win.shape[2], step):
                hist[j, np.uintp(win[j, r, c])] += 1


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
    rmin, rmax, dn_sat = _REFL_MIN, _REFL_MAX, _DN_SATURATED
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
        ``count_valid``, the valid and index weights and the weights of pixels masked as
        saturated (a band at DN 65535, or a gathered band at +inf) or out of the physical
        range (:data:`_REFL_RANGE`; a gathered band at -inf)."""
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
                        ok = d != nd0 and x0 >= rmin and x0 <= rmax
                    if nf > 1 and ok:
                        d = win[1, ru, cc]
                        x1 = np.float64(d) * sc1 + of1
                        ok = d != nd1 and x1 >= rmin and x1 <= rmax
                    if nf > 2 and ok:
                        d = win[2, ru, cc]
                        x2 = np.float64(d) * sc2 + of2
                        ok = d != nd2 and x2 >= rmin and x2 <= rmax
                    if nf > 3 and ok:
                        d = win[3, ru, cc]
                        x3 = np.float64(d) * sc3 + of3
                        ok = d != nd3 and x3 >= rmin and x3 <= rmax
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
                    elif count_valid:
                        # rare (masked pixels): was a band saturated or out of range?
                        why = 0
                        for j in range(nf):
                            d = win[j, ru, cc]
                            if d != nodata[j]:
                                xj = np.float64(d) * scale[j] + offset[j]
                                if not (xj >= rmin and xj <= rmax):
                                    why = max(why, 2 if d == dn_sat else 1)
                        for j in range(nc):
                            xj = coarse_r[j, u]
                            if xj == np.inf:
                                why = 2
                            elif xj == -np.inf:
                                why = max(why, 1)
                        if why == 2:
                            acc[np.uintp(eslot[p]), _ACC_SAT] += fr
                        elif why == 1:
                            acc[np.uintp(eslot[p]), _ACC_OOR] += fr
                p += np.uintp(1)

    return _fused



# --------------------------------------------------------------------------------------------
# pixel order (used by ._plan._order_unique)


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
