"""Streaming plan of :func:`cropyield.observations.field_observations`, built once per grid.

For each (fields, tile grid) pair :func:`_grid_ctx` computes the exact coverage fractions
once and puts the coverage entries in row-major pixel order (:class:`_GridCtx`); per block
shape :func:`_build_stream` then gives each entry its (block, field) slot
(:class:`_Stream`), so that every decoded block run can be reduced by the thread that read
it. Both are reused for every date on that grid. Large set-ups are split between two
threads (:data:`_SPLIT_ENTRIES`).

Entry points: :func:`_grid_ctx`, :meth:`_GridCtx.stream`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._geo import Grid
from ._kernels import (_assign_slots_range, _coarse_unique, _entry_arrays_range,
                       _order_unique_rows)


def _grid_ctx(fields, grid: Grid, id_col: str, make_valid: bool = False) -> _GridCtx:
    from ..coverage import coverage_fractions

    cov = coverage_fractions(fields, grid, id_col=id_col, make_valid=make_valid)
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
    want_cand: np.ndarray           # unique pixels under fields with coverage > 0
    order: np.ndarray               # CSR entries in row-major pixel order (stable)
    order_u: np.ndarray             # their unique pixel (inv[order], non-decreasing)
    lock: Any = field(default_factory=threading.Lock)          # coarse pixel maps
    stream_lock: Any = field(default_factory=threading.Lock)   # streaming orders

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
    from ..read import _counting_order

    bh, bw = int(block_shape[0]), int(block_shape[1])
    H, W = int(shape[0]), int(shape[1])
    nbc = -(-W // bw)
    n_blocks = -(-H // bh) * nbc
    n_fields = len(ctx.cov_sum)
    n = len(ctx.order)
    # the kernels stream these per date: 32-bit where it fits halves the memory traffic
    dt: type[np.signedinteger[Any]] = np.int32 if max(n, len(ctx.urows), n_fields, W, n_blocks) < 2**31 else np.int64
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
