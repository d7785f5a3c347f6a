"""Block plans of the reader: which COG blocks hold the needed pixels, grouped into runs of
adjacent blocks, and the numba gather kernels that scatter a decoded window into the output.

Public entry points
-------------------
:func:`plan_blocks` -> :class:`BlockPlan`
    Group pixels ``(rows, cols)`` by internal tile and merge adjacent tiles of one block row
    into runs (one window read each, at most ``max_run`` blocks).

Every numba kernel here (``_counting_order``, ``_filter_sorted``, ``_gather_into``,
``_gather_masked``, ``_blocks_wanted``) has a NumPy twin (``*_ref``) beside it, compared in
``tests/test_kernel_twins.py`` and ``tests/test_read.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._jit import njit

__all__ = ["BlockPlan", "plan_blocks"]


@dataclass(frozen=True)
class BlockPlan:
    """Which blocks to read for a set of pixels, grouped into runs.

    ``order`` lists the indices (into the caller's pixel vectors) of the wanted pixels sorted
    by block; run ``k`` covers block row ``run_row[k]``, block columns
    ``run_col0[k] .. run_col1[k]`` (inclusive) and pixels ``order[run_start[k]:run_end[k]]``.
    """

    block_shape: tuple[int, int]
    order: np.ndarray
    run_row: np.ndarray
    run_col0: np.ndarray
    run_col1: np.ndarray
    run_start: np.ndarray
    run_end: np.ndarray

    @property
    def n_runs(self) -> int:
        return len(self.run_row)

    @property
    def n_blocks(self) -> int:
        return int(np.sum(self.run_col1 - self.run_col0 + 1))

    def blocks(self) -> list[tuple[int, int]]:
        """All ``(block_row, block_col)`` pairs in the plan."""
        return [(int(r), int(c)) for r, c0, c1 in zip(self.run_row, self.run_col0, self.run_col1)
                for c in range(c0, c1 + 1)]


def plan_blocks(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
                block_shape: tuple[int, int], want: np.ndarray | None = None,
                max_run: int = 8, presorted: tuple[np.ndarray, np.ndarray] | None = None
                ) -> BlockPlan:
    """Group pixels by the raster block they fall in and merge adjacent blocks into runs.

    Parameters
    ----------
    rows, cols : int arrays
        Pixel indices on the raster (must be inside ``shape``).
    shape : (height, width)
        Raster shape in pixels.
    block_shape : (block_height, block_width)
        Internal tile shape in pixels.
    want : bool array, optional
        Only pixels where ``want`` is True are planned (others are not read).
    max_run : int
        Maximum number of blocks in one run (window read).
    presorted : (order, keys), optional
        :func:`_block_sort` of ``rows, cols`` (cached by callers that plan the same pixels
        many times with different ``want``); computed here when None.
    """
    bh, bw = int(block_shape[0]), int(block_shape[1])
    if presorted is None:
        presorted = _block_sort(rows, cols, shape, block_shape)
    order_all, key_all = presorted
    nbc = -(-int(shape[1]) // bw)
    if want is None:
        sel, key = order_all, key_all
    else:
        # filtering the stable sort of all pixels == stable sort of the wanted ones
        want = np.ascontiguousarray(want, dtype=np.bool_).reshape(-1)
        if want.shape[0] != order_all.shape[0]:
            raise ValueError(f"want has {want.shape[0]} entries for {order_all.shape[0]} "
                             f"pixels")
        sel, key = _filter_sorted(order_all, key_all, want)
    if len(sel) == 0:
        e = np.zeros(0, np.int64)
        return BlockPlan((bh, bw), sel.astype(np.int64), e, e, e, e, e)
    ublocks, starts, ends = _block_bounds(key)
    # runs of adjacent blocks, capped at max_run blocks
    rr, rc0, rc1, s, e = _runs_of(ublocks, nbc, max_run)
    return BlockPlan((bh, bw), sel.astype(np.int64), rr, rc0, rc1, starts[s], ends[e])


def _as_int64(a) -> np.ndarray:
    """``a`` as an int64 array, the same object when it already is one.

    :meth:`BlockReader.read` caches its block sort by array identity. ``np.asarray(a,
    np.int64)`` returns a new view when ``a``'s dtype equals int64 but is not NumPy's own
    instance of it, which is the case for arrays made by numba's on-disk cached kernels,
    so every call would miss the cache and sort again.
    """
    if isinstance(a, np.ndarray) and a.dtype == np.int64:
        return a
    return np.asarray(a, np.int64)


def _block_sort(rows, cols, shape, block_shape) -> tuple[np.ndarray, np.ndarray]:
    """Stable order of all pixels by block key and the sorted keys (block row-major)."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    bh, bw = int(block_shape[0]), int(block_shape[1])
    nbc = -(-int(shape[1]) // bw)
    key = (rows // bh) * nbc + cols // bw
    nbr = -(-int(shape[0]) // bh)
    if len(key) and nbr * nbc <= 1 << 22:
        # counting sort by block: the same permutation as a stable argsort, in O(n)
        order = _counting_order(key, nbr * nbc)
    else:
        order = np.argsort(key, kind="stable").astype(np.int64, copy=False)
    return order, key[order]


def _counting_order_ref(key, nkeys):
    """NumPy twin of :func:`_counting_order` (a stable argsort)."""
    return np.argsort(key, kind="stable").astype(np.int64)


@njit(nogil=True)
def _counting_order(key, nkeys):  # pragma: no cover - compiled
    """Stable sort permutation of small non-negative integer keys (< nkeys)."""
    cnt = np.zeros(nkeys + 1, np.int64)
    for i in range(key.shape[0]):
        cnt[key[i] + 1] += 1
    for b in range(nkeys):
        cnt[b + 1] += cnt[b]
    order = np.empty(key.shape[0], np.int64)
    for i in range(key.shape[0]):
        k = key[i]
        order[cnt[k]] = i
        cnt[k] += 1
    return order


def _block_bounds(keys_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct block keys of a sorted key vector and each block's [start, end) in it."""
    if len(keys_sorted) == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    newb = np.empty(len(keys_sorted), bool)
    newb[0] = True
    np.not_equal(keys_sorted[1:], keys_sorted[:-1], out=newb[1:])
    starts = np.flatnonzero(newb)
    return keys_sorted[starts], starts, np.append(starts[1:], len(keys_sorted))


def _runs_of(ublocks, nbc: int, max_run: int):
    """Split sorted block keys into runs of adjacent blocks of one block row (as
    :func:`plan_blocks`): (run_row, run_col0, run_col1, first block, last block)."""
    if len(ublocks) == 0:
        e = np.zeros(0, np.int64)
        return e, e, e, e, e
    br, bc = ublocks // nbc, ublocks % nbc
    brk = np.ones(len(ublocks), bool)
    brk[1:] = (br[1:] != br[:-1]) | (bc[1:] != bc[:-1] + 1)
    run_id = np.cumsum(brk) - 1
    first = np.flatnonzero(brk)
    pos = np.arange(len(ublocks)) - first[run_id]
    brk |= (pos % max(int(max_run), 1)) == 0
    s = np.flatnonzero(brk)
    e = np.append(s[1:], len(ublocks)) - 1
    return br[s], bc[s], bc[e], s, e


# --------------------------------------------------------------------------------------------
# gather kernel


def _gather_into_ref(arr, rows, cols, idx, r0, c0, out):
    """NumPy twin of :func:`_gather_into`: ``out[idx] = arr[rows[idx] - r0, cols[idx] - c0]``."""
    out[idx] = arr[rows[idx] - r0, cols[idx] - c0]


@njit(nogil=True)
def _gather_into(arr, rows, cols, idx, r0, c0, out):  # pragma: no cover - compiled
    """Scatter window values to the output vector: out[i] = arr[rows[i]-r0, cols[i]-c0]
    for every i in idx (disjoint idx per thread, so threads never write the same slot)."""
    for k in range(idx.shape[0]):
        i = np.uintp(idx[k])          # unsigned indices: no negative-index wraparound code
        out[i] = arr[np.uintp(rows[i] - r0), np.uintp(cols[i] - c0)]


def _filter_sorted_ref(order, keys, want):
    """NumPy twin of :func:`_filter_sorted`: ``order[m], keys[m]`` with ``m = want[order]``."""
    m = np.asarray(want, bool)[order]
    return order[m], keys[m]


@njit(nogil=True)
def _filter_sorted(order, keys, want):  # pragma: no cover - compiled
    """Entries of the block-sorted pixel order whose pixel is wanted (one pass)."""
    n = 0
    for i in range(order.shape[0]):
        if want[order[i]]:
            n += 1
    sel = np.empty(n, np.int64)
    key = np.empty(n, np.int64)
    j = 0
    for i in range(order.shape[0]):
        o = order[i]
        if want[o]:
            sel[j] = o
            key[j] = keys[i]
            j += 1
    return sel, key


def _gather_masked_ref(arr, rows, cols, idx, want, r0, c0, out):
    """NumPy twin of :func:`_gather_masked`: like :func:`_gather_into_ref` for the
    ``idx`` with ``want[idx]`` only."""
    i = idx[want[idx]]
    out[i] = arr[rows[i] - r0, cols[i] - c0]


def _blocks_wanted_ref(order, want, starts, ends):
    """NumPy twin of :func:`_blocks_wanted`."""
    w = np.asarray(want, bool)[order]
    return np.array([bool(w[a:b].any()) for a, b in zip(starts, ends)], dtype=bool)


@njit(nogil=True)
def _gather_masked(arr, rows, cols, idx, want, r0, c0, out):  # pragma: no cover
    """out[i] = arr[rows[i]-r0, cols[i]-c0] for i in idx where want[i]."""
    for k in range(idx.shape[0]):
        i = np.uintp(idx[k])          # unsigned indices: no negative-index wraparound code
        if want[i]:
            out[i] = arr[np.uintp(rows[i] - r0), np.uintp(cols[i] - c0)]

@njit(nogil=True)
def _blocks_wanted(order, want, starts, ends):  # pragma: no cover - compiled
    """Per block (pixels order[starts[b]:ends[b]]): does it hold a wanted pixel?
    Stops at the first wanted pixel of each block."""
    nb = starts.shape[0]
    hit = np.zeros(nb, np.bool_)
    for b in range(nb):
        for k in range(starts[b], ends[b]):
            if want[order[k]]:
                hit[b] = True
                break
    return hit
