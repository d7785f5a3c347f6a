"""Numba kernels of the fast observation path equal their NumPy reference twins (and the
selective statistics kernel equals the full one) on random inputs, NaN and edge cases included."""

import numpy as np

from cropyield.indices import (
    _multi_field_stats,
    _multi_field_stats_sel,
    _reflectance_valid,
    _reflectance_valid_ref,
)
from cropyield.observations import _coarse_unique, _coarse_unique_ref
from cropyield.read import (
    _block_bounds,
    _block_sort,
    _blocks_wanted,
    _blocks_wanted_ref,
    _counting_order,
    _counting_order_ref,
    _filter_sorted,
    _filter_sorted_ref,
    _gather_masked,
    _gather_masked_ref,
    plan_blocks,
)


def test_block_planning_gather_and_selective_stats_twins():
    rng = np.random.default_rng(1)
    for t in range(50):
        n = int(rng.integers(0, 3000))
        rows = rng.integers(0, 700, n); cols = rng.integers(0, 900, n)
        want = rng.random(n) < rng.random()
        o, k = _block_sort(rows, cols, (700, 900), (256, 256))
        a, b = _filter_sorted(o, k, want); c, d = _filter_sorted_ref(o, k, want)
        assert np.array_equal(a, c) and np.array_equal(b, d)
        ub, st, en = _block_bounds(k)
        assert np.array_equal(_blocks_wanted(o, want, st, en), _blocks_wanted_ref(o, want, st, en))
        arr = rng.integers(0, 60000, (700, 900)).astype(np.uint16)
        o1 = np.zeros(n, np.uint16); o2 = o1.copy()
        _gather_masked(arr, rows, cols, o, want, 0, 0, o1); _gather_masked_ref(arr, rows, cols, o, want, 0, 0, o2)
        assert np.array_equal(o1, o2)
        # plan_blocks filtered == old algorithm (stable argsort of wanted keys)
        p = plan_blocks(rows, cols, (700, 900), (256, 256), want)
        sel = np.flatnonzero(want); key = (rows[sel]//256)*4 + cols[sel]//256
        assert np.array_equal(p.order, sel[np.argsort(key, kind="stable")])
        # stats sel == full
        nf = int(rng.integers(1, 30)); cnt = rng.integers(0, 20, nf); off = np.r_[0, np.cumsum(cnt)]
        nnz = off[-1]; nu = max(nnz, 1)
        inv = rng.integers(0, nu, nnz); fr = rng.random(nnz); fr[rng.random(nnz) < .2] = 1.0
        vals_u = rng.random((2, nu)); vals_u[:, rng.random(nu) < .1] = np.nan
        valid_u = rng.random(nu) < .7; foot_u = rng.random(nu) < .9
        outs = [np.empty(nf) for _ in range(3)] + [np.empty((2, nf)) for _ in range(3)]
        _multi_field_stats(np.ascontiguousarray(vals_u[:, inv]), fr, valid_u[inv], foot_u[inv], off, -1.0, *outs)
        fsel = np.sort(rng.choice(nf, int(rng.integers(0, nf + 1)), replace=False)).astype(np.int64)
        outs2 = [np.empty(len(fsel)) for _ in range(3)] + [np.empty((2, len(fsel))) for _ in range(3)]
        _multi_field_stats_sel(vals_u, inv, fr, valid_u, foot_u, off, fsel, -1.0, *outs2)
        for x, y in zip(outs, outs2):
            assert np.array_equal(x[..., fsel], y, equal_nan=True), (x[..., fsel], y)


def test_counting_order_twin():
    rng = np.random.default_rng(2)
    for t in range(30):
        n = int(rng.integers(0, 5000)); nk = int(rng.integers(1, 70))
        key = rng.integers(0, nk, n)
        assert np.array_equal(_counting_order(key, nk), _counting_order_ref(key, nk))


def test_coarse_unique_twin():
    rng = np.random.default_rng(3)
    for t in range(40):
        H, W = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        n = int(rng.integers(1, 5000))
        flat = np.unique(rng.integers(0, H * W, n))
        ur, uc = flat // W, flat % W
        for k in (1, 2, 3, 6):
            w = int(uc.max()) // k + 1
            a = _coarse_unique(ur, uc, k, w); b = _coarse_unique_ref(ur, uc, k, w)
            assert all(np.array_equal(x, y) for x, y in zip(a, b)), (k,)


def test_reflectance_valid_twin():
    rng = np.random.default_rng(4)
    for t in range(20):
        n = int(rng.integers(0, 3000)); dn = rng.integers(0, 65535, n).astype(np.uint16); dn[rng.random(n) < .1] = 0
        inv = rng.integers(0, max(n, 1), int(rng.integers(0, 4000))) if (t % 2 and n) else np.zeros(0, np.int64)
        m = len(inv) if len(inv) else n
        v1 = rng.random(m) < .8; v2 = v1.copy(); r1 = np.empty(m)
        _reflectance_valid(dn, inv, 1e-4, -0.1, np.uint16(0), True, v1, r1)
        r2 = _reflectance_valid_ref(dn, inv, 1e-4, -0.1, 0, v2)
        assert np.array_equal(r1, r2, equal_nan=True) and np.array_equal(v1, v2)
