"""numba kernels of :func:`cropyield.coverage.coverage_fractions` (exact pixel coverage).

:func:`_coverage_kernel` walks every ring edge of a batch of fields in pixel coordinates
(the Green's-theorem decomposition described in :mod:`cropyield.coverage`) and writes each
field's covered pixels and fractions in CSR layout; :func:`_ring_edges_into` handles one
ring, :func:`_sort_field_pixels` puts a field's pixels in raster order. They are kept apart
from the public :class:`~cropyield.coverage.Coverage` so that the result type and its entry
point read first; they are checked against shapely areas and exactextract in
``tests/test_coverage.py`` (bit-for-bit sums, thread halves, batching). A cached kernel calls
only kernels of this module (see :mod:`cropyield._jit`).
"""

from __future__ import annotations

import numpy as np

from ._jit import njit

__all__: list[str] = []


@njit(nogil=True)
def _ring_edges_into(u, v, start, stop, sign, r0, c0, nr, nc, part, tail):
    """Accumulate one ring's edge contributions into ``part`` / ``tail`` (local window)."""
    r1 = r0 + nr
    c1 = c0 + nc
    for k in range(start, stop - 1):
        u1 = u[k]
        v1 = v[k]
        u2 = u[k + 1]
        v2 = v[k + 1]
        if v1 == v2:
            continue  # horizontal edges contribute nothing (dv = 0)
        if v2 > v1:
            vmin, vmax, sgn = v1, v2, sign
        else:
            vmin, vmax, sgn = v2, v1, -sign
        slope = (u2 - u1) / (v2 - v1)
        rs = max(int(np.floor(vmin)), r0)
        re = min(int(np.ceil(vmax)), r1)
        for r in range(rs, re):
            vlo = max(float(r), vmin)
            vhi = min(float(r + 1), vmax)
            if vhi <= vlo:
                continue
            # u at both ends of the piece (exact vertex values at edge ends)
            if vlo == v1:
                ua = u1
            elif vlo == v2:
                ua = u2
            else:
                ua = u1 + (vlo - v1) * slope
            if vhi == v1:
                ub = u1
            elif vhi == v2:
                ub = u2
            else:
                ub = u1 + (vhi - v1) * slope
            dv = (vhi - vlo) * sgn
            lr = np.uintp(r - r0)   # unsigned indices (>= 0): no negative-index wraparound code
            umin = min(ua, ub)
            umax = max(ua, ub)
            if umax <= c0:
                continue  # entirely left of the window: no window cell lies left of it
            if umin >= c1:
                tail[lr, nc] += dv  # entirely right of the window: full dv to every cell
                continue
            if umax == umin:
                c = int(np.floor(umin))
                lc = np.uintp(c - c0)
                part[lr, lc] += (umin - c) * dv
                tail[lr, lc] += dv
                continue
            du = umax - umin
            if umax > c1:
                tail[lr, nc] += dv * (umax - c1) / du
            cs = max(int(np.floor(umin)), c0)
            ce = min(int(np.ceil(umax)), c1)
            for c in range(cs, ce):
                lo = max(umin, float(c))
                hi = min(umax, float(c + 1))
                if hi <= lo:
                    continue
                dvp = dv * (hi - lo) / du
                lc = np.uintp(c - c0)
                part[lr, lc] += (0.5 * (lo + hi) - c) * dvp
                tail[lr, lc] += dvp


@njit(nogil=True)
def _coverage_kernel(u, v, ring_offsets, ring_sign, field_ring_offsets, windows,
                     out_rows, out_cols, out_frac, out_offsets, out_sum, out_pure, eps,
                     pure_lo):
    """Exact coverage of every field (rings grouped per field) on its clipped window.

    ``windows[i] = (r0, c0, r1, c1)`` (end-exclusive, already clipped to the grid).
    Writes CSR output; ``out_offsets`` has ``n_fields + 1`` entries; ``out_sum`` and
    ``out_pure`` get each field's sum of fractions (added in output order, as
    ``np.bincount`` would) and its number of fractions ``>= pure_lo``. Returns nnz.
    """
    nfields = windows.shape[0]
    maxcells = 0
    for i in range(nfields):
        nr = windows[i, 2] - windows[i, 0]
        nc = windows[i, 3] - windows[i, 1]
        if nr > 0 and nc > 0 and nr * (nc + 1) > maxcells:
            maxcells = nr * (nc + 1)
    part_buf = np.zeros(maxcells)
    tail_buf = np.zeros(maxcells)
    n = 0
    out_offsets[0] = 0
    for i in range(nfields):
        r0 = windows[i, 0]
        c0 = windows[i, 1]
        nr = windows[i, 2] - r0
        nc = windows[i, 3] - c0
        if nr <= 0 or nc <= 0:
            out_offsets[i + 1] = n
            out_sum[i] = 0.0
            out_pure[i] = 0
            continue
        part = part_buf[: nr * (nc + 1)].reshape((nr, nc + 1))
        tail = tail_buf[: nr * (nc + 1)].reshape((nr, nc + 1))
        part[:, :] = 0.0
        tail[:, :] = 0.0
        for g in range(field_ring_offsets[i], field_ring_offsets[i + 1]):
            _ring_edges_into(u, v, ring_offsets[g], ring_offsets[g + 1], ring_sign[g],
                             r0, c0, nr, nc, part, tail)
        for lr in range(nr):
            acc = tail[lr, nc]
            for lc in range(nc - 1, -1, -1):
                ulc = np.uintp(lc)       # unsigned indices: no wraparound code
                a = part[lr, ulc] + acc
                acc += tail[lr, ulc]
                if a > eps:
                    out_rows[n] = r0 + lr
                    out_cols[n] = c0 + lc
                    out_frac[n] = a if a < 1.0 else 1.0
                    n += 1
        # restore row-major, column-ascending order within each row
        s = out_offsets[i]
        _sort_field_pixels(out_rows, out_cols, out_frac, s, n)
        out_offsets[i + 1] = n
        total = 0.0
        pure = 0
        for j in range(s, n):
            total += out_frac[j]
            if out_frac[j] >= pure_lo:
                pure += 1
        out_sum[i] = total
        out_pure[i] = pure
    return n


@njit(nogil=True)
def _sort_field_pixels(rows, cols, frac, s, e):
    """Reverse each row's run (written right-to-left) so pixels are in raster order."""
    k = s
    while k < e:
        j = k
        while j + 1 < e and rows[j + 1] == rows[k]:
            j += 1
        a, b = k, j
        while a < b:
            cols[a], cols[b] = cols[b], cols[a]
            frac[a], frac[b] = frac[b], frac[a]
            a += 1
            b -= 1
        k = j + 1
