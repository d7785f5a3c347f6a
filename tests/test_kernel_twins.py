"""Numba kernels of the fast observation path equal their NumPy reference twins (and the
selective statistics kernel equals the full one) on random inputs, NaN and edge cases included."""

import numpy as np

from cropyield.zonal import (
    _multi_field_stats,
    _multi_field_stats_sel,
    _reflectance_valid,
    _reflectance_valid_ref,
)
from cropyield.observations._kernels import (_coarse_unique, _coarse_unique_ref, _codes_at,
                                             _codes_at_ref)
from cropyield.read import plan_blocks
from cropyield.read._plan import (
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


def test_codes_at_twin():
    rng = np.random.default_rng(11)
    lut = rng.integers(0, 3, 256).astype(np.uint8)
    for t in range(20):
        n = int(rng.integers(1, 3000))
        raw = rng.integers(0, 256, n).astype(np.uint8)
        inv = np.sort(rng.integers(0, n, int(rng.integers(0, 6000))))
        assert np.array_equal(_codes_at(raw, lut, inv), _codes_at_ref(raw, lut, inv))


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


def _stream_case(rng, H=300, W=340, nf=40):
    """A random coverage-like entry set in row-major order with slots per 64 x 64 block."""
    from cropyield.observations._kernels import _assign_slots

    n_u = int(rng.integers(1, H * W // 3))
    flat = np.sort(rng.choice(H * W, n_u, replace=False))
    # entries: each unique pixel in 1..3 fields (edge pixels are shared)
    eu = np.repeat(np.arange(n_u), rng.integers(1, 4, n_u))
    er, ec = flat[eu] // W, flat[eu] % W
    ef = rng.integers(0, nf, len(eu))
    efr = rng.random(len(eu))
    efr[rng.random(len(eu)) < 0.3] = 1.0
    efr[rng.random(len(eu)) < 0.02] = 0.0
    nbc = -(-W // 64)
    ekey = (er // 64) * nbc + ec // 64
    eslot, slot_field = _assign_slots(ekey, ef, nf)
    row_start = np.searchsorted(er, np.arange(H + 1))
    return dict(H=H, W=W, nf=nf, n_u=n_u, eu=eu, er=er, ec=ec, ef=ef, efr=efr, ekey=ekey,
                eslot=eslot, slot_field=slot_field, row_start=row_start, nbc=nbc)


def test_stream_kernels_equal_their_numpy_twins(monkeypatch):
    import cropyield.observations._plan as obs
    from cropyield.observations._kernels import (
        _ACC_FIRST, _ACC_WIDTH, _CLEAR, _accumulate, _accumulate_ref, _assign_slots, _assign_slots_ref,
        _blocks_needed, _blocks_needed_ref, _entry_arrays, _entry_arrays_ref, _footprint_sum, _footprint_sum_ref,
        _gather_valid, _gather_valid_ref, _merge_slots, _merge_slots_ref, _order_unique_ref)
    from cropyield.observations._plan import _order_unique

    rng = np.random.default_rng(11)
    for t in range(25):
        c = _stream_case(rng)
        ekey, ef = c["ekey"], c["ef"]
        for o in (np.arange(len(ekey)), np.argsort(ekey, kind="stable"),
                  rng.permutation(len(ekey))):
            a, b = _assign_slots(ekey[o], ef[o], c["nf"]), _assign_slots_ref(ekey[o], ef[o], c["nf"])
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        # entry arrays of a random row-major entry order
        flat_u = np.unique(c["er"] * c["W"] + c["ec"])
        urows, ucols = flat_u // c["W"], flat_u % c["W"]
        order = rng.permutation(len(ekey))
        order_u = np.sort(rng.integers(0, len(flat_u), len(ekey)))
        pf, fr = rng.integers(0, c["nf"], len(ekey)), rng.random(len(ekey))
        x = _entry_arrays(order, order_u, pf, fr, urows, ucols, 64, 64, c["nbc"], c["H"])
        y = _entry_arrays_ref(order, order_u, pf, fr, urows, ucols, 64, 64, c["nbc"], c["H"])
        assert all(np.array_equal(p_, q_) for p_, q_ in zip(x, y))
        code_u = rng.integers(0, 3, c["n_u"]).astype(np.uint8)
        assigned = rng.random(c["nf"]) < 0.8
        nb = int(ekey.max()) + 1
        assert np.array_equal(_blocks_needed(ekey, c["eu"], ef, code_u, assigned, nb),
                              _blocks_needed_ref(ekey, c["eu"], ef, code_u, assigned, nb))
        # per-field (CSR) entries: field f owns entries offsets[f]:offsets[f + 1]
        by_f = np.argsort(ef, kind="stable")
        offs = np.zeros(c["nf"] + 1, np.int64)
        np.cumsum(np.bincount(ef, minlength=c["nf"]), out=offs[1:])
        some = np.flatnonzero(rng.random(c["nf"]) < 0.5)
        f1 = _footprint_sum(offs, c["eu"][by_f], c["efr"][by_f], code_u, some)
        f2 = _footprint_sum_ref(offs, c["eu"][by_f], c["efr"][by_f], code_u, some)
        np.testing.assert_allclose(f1, f2, rtol=1e-13, atol=1e-13)
        assert len(f1) == len(some)
        # a window of two uint16 bands with no-data, one coarse band with NaN
        r0, c0 = int(rng.integers(0, 100)), int(rng.integers(0, 100))
        h, w = int(rng.integers(1, 200)), int(rng.integers(1, 240))
        h, w = min(h, c["H"] - r0), min(w, c["W"] - c0)
        win = rng.integers(0, 10000, (2, h, w)).astype(np.uint16)
        win[rng.random(win.shape) < 0.05] = 0
        win[rng.random(win.shape) < 0.02] = 65535        # saturated: outside _REFL_RANGE
        coarse = rng.random((1, c["n_u"]))
        coarse[0, rng.random(c["n_u"]) < 0.05] = np.nan
        args = (win, r0, c0, c["row_start"], c["ec"], c["eu"], ef, assigned, code_u,
                np.array([1e-4, 2e-4]), np.array([-0.1, 0.0]), np.array([0.0, 0.0]), coarse)
        n = len(ef)
        ra, pa = np.empty((3, n)), np.empty(n, np.int64)
        rb, pb = np.empty((3, n)), np.empty(n, np.int64)
        ma, mb = _gather_valid(*args, ra, pa), _gather_valid_ref(*args, rb, pb)
        assert ma == mb and np.array_equal(pa[:ma], pb[:mb])
        assert np.array_equal(ra[:, :ma], rb[:, :mb])
        vals = ra[:2, :ma] - ra[2:, :ma]
        vals[:, rng.random(ma) < 0.1] = np.nan
        acc1 = np.zeros((len(c["slot_field"]), _ACC_FIRST + 2 * _ACC_WIDTH))
        acc2 = acc1.copy()
        _accumulate(vals, pa, ma, c["efr"], c["eslot"], 0.4, acc1)
        _accumulate_ref(vals, pa, ma, c["efr"], c["eslot"], 0.4, acc2)
        assert np.array_equal(acc1, acc2)
        fslot = np.argsort(c["slot_field"], kind="stable")
        fslot_off = np.r_[0, np.cumsum(np.bincount(c["slot_field"], minlength=c["nf"]))]
        fsel = np.sort(rng.choice(c["nf"], int(rng.integers(0, c["nf"] + 1)), replace=False))
        outs1 = [np.empty(len(fsel)) for _ in range(2)] + [np.empty((2, len(fsel)))
                                                            for _ in range(3)]
        outs2 = [np.empty_like(o) for o in outs1]
        _merge_slots(acc1, fslot_off, fslot, fsel, *outs1)
        _merge_slots_ref(acc1, fslot_off, fslot, fsel, *outs2)
        for x, y in zip(outs1, outs2):
            assert np.array_equal(x, y, equal_nan=True)
        # the merged statistics are the two-pass weighted mean and population std
        sel = pa[:ma]
        for i, f in enumerate(fsel):
            for j in range(2):
                x = vals[j]
                k = (ef[sel] == f) & (c["efr"][sel] >= 0.4) & (c["efr"][sel] > 0) & ~np.isnan(x)
                wk, xk = c["efr"][sel][k], x[k]
                if wk.sum() > 0:
                    m = np.sum(wk * xk) / wk.sum()
                    sd = np.sqrt(np.sum(wk * (xk - m) ** 2) / wk.sum())
                    assert abs(outs1[2][j, i] - m) < 1e-12
                    assert abs(outs1[3][j, i] - sd) < 1e-9
                else:
                    assert np.isnan(outs1[2][j, i])
        # row-major order of pixels with repeats (several fields on one pixel): stable;
        # then the distinct pixels and the maps to them
        nr, ncol = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        m = int(rng.integers(0, 500))
        pr, pc = rng.integers(0, nr, m).astype(np.int32), rng.integers(0, ncol, m)
        ref = _order_unique_ref(pr, pc, nr, ncol)
        for split in (10**9, 0):        # one pass, and rows split between two threads
            monkeypatch.setattr(obs, "_SPLIT_ENTRIES", split)
            for x, y in zip(_order_unique(pr, pc, nr, ncol), ref):
                assert np.array_equal(x, y) and x.dtype == np.int64
        assert _CLEAR == 2


def test_fused_kernel_equals_gather_apply_accumulate():
    """The fused per-index kernel adds exactly the same terms as the generic path, and
    counts the saturated pixels both mask."""
    from cropyield.indices import INDICES, _apply
    from cropyield.observations._kernels import (_ACC_FIRST, _ACC_OOR, _ACC_SAT, _CLEAR,
                                                 _accumulate, _fused_kernel, _gather_valid)

    rng = np.random.default_rng(12)
    for t in range(15):
        c = _stream_case(rng)
        code_u = rng.integers(0, 3, c["n_u"]).astype(np.uint8)
        assigned = rng.random(c["nf"]) < 0.9
        win = rng.integers(0, 8000, (2, c["H"], c["W"])).astype(np.uint16)
        win[rng.random(win.shape) < 0.03] = 0
        win[rng.random(win.shape) < 0.02] = 65535
        coarse = rng.random((1, c["n_u"])) * 0.5
        coarse[0, rng.random(c["n_u"]) < 0.05] = np.nan
        names = ["B04", "B08", "B11"]
        scale, offset, nod = np.array([1e-4, 1e-4]), np.array([-0.1, -0.1]), np.zeros(2)
        specs = [INDICES["ndvi"], INDICES["ndmi"], INDICES["evi2"]]
        n = len(c["ef"])
        refl, pos = np.empty((3, n)), np.empty(n, np.int64)
        m = _gather_valid(win, 0, 0, c["row_start"], c["ec"], c["eu"], c["ef"], assigned,
                          code_u, scale, offset, nod, coarse, refl, pos)
        bands = {b: refl[j, :m] for j, b in enumerate(names)}
        vals = np.stack([_apply(s, bands) for s in specs])
        ns = len(c["slot_field"])
        width = _ACC_FIRST + 12
        acc_g = np.zeros((ns, width))
        _accumulate(vals, pos, m, c["efr"], c["eslot"], 0.25, acc_g)
        acc_f = np.zeros((ns, width))
        every = np.ones(c["nf"], bool)
        acc_all, acc_skip = np.zeros((ns, width)), np.zeros((ns, width))
        for j, s in enumerate(specs):
            kern = _fused_kernel(s.scalar, [names.index(b) for b in s.bands], 2, 1)
            args = (c["efr"], c["eslot"])
            kern(win, 0, 0, c["row_start"], c["ec"], c["eu"], c["ef"], *args, assigned, False,
                 code_u, scale, offset, nod, coarse, s.valid_range[0], s.valid_range[1], 0.25,
                 _ACC_FIRST + 4 * j, j == 0, acc_f)
            # every field assigned: skipping the per-entry lookup adds the same terms
            for skip, acc in ((False, acc_all), (True, acc_skip)):
                kern(win, 0, 0, c["row_start"], c["ec"], c["eu"], c["ef"], *args, every, skip,
                     code_u, scale, offset, nod, coarse, s.valid_range[0], s.valid_range[1],
                     0.25, _ACC_FIRST + 4 * j, j == 0, acc)
        # saturated pixels (DN 65535 in a window band) of clear entries of assigned fields
        p = np.arange(n)
        rows = np.searchsorted(c["row_start"], p, side="right") - 1
        sat = ((win[0][rows, c["ec"]] == 65535) | (win[1][rows, c["ec"]] == 65535))
        sel = sat & (code_u[c["eu"]] == _CLEAR) & assigned[c["ef"]] & (c["efr"] > 0)
        want = np.bincount(c["eslot"][sel], weights=c["efr"][sel], minlength=ns)
        np.testing.assert_allclose(acc_f[:, _ACC_SAT], want, rtol=1e-12)
        assert sel.any() and not acc_f[:, _ACC_OOR].any()
        acc_f[:, [_ACC_SAT, _ACC_OOR]] = 0.0           # the generic path does not count
        assert np.array_equal(acc_f, acc_g)
        assert np.array_equal(acc_all, acc_skip) and not np.array_equal(acc_all, acc_f)


def test_jit_falls_back_to_no_cache_when_numba_cannot_cache(monkeypatch):
    """A read-only install without a writable cache location must still import and run."""
    import numba

    from cropyield import _jit

    real = numba.njit

    def fake(*a, **kw):
        if kw.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file")
        return real(*a, **kw)

    monkeypatch.setattr(_jit.numba, "njit", fake)

    @_jit.njit(nogil=True)
    def add(a, b):  # pragma: no cover - compiled
        return a + b

    assert add(2, 3) == 5
    monkeypatch.setenv("CROPYIELD_NUMBA_CACHE", "0")

    @_jit.njit()
    def mul(a, b):  # pragma: no cover - compiled
        return a * b

    assert mul(2, 3) == 6


def test_first_at_or_after_twin():
    from cropyield.observations._kernels import _first_at_or_after

    rng = np.random.default_rng(16)
    for t in range(200):
        ec = np.sort(rng.integers(0, 100, int(rng.integers(0, 60)))).astype(np.int32)
        lo = int(rng.integers(0, len(ec) + 1))
        hi = int(rng.integers(lo, len(ec) + 1))
        c0 = int(rng.integers(-5, 110))
        assert _first_at_or_after(ec, lo, hi, c0) == lo + np.searchsorted(ec[lo:hi], c0)


def test_stream_built_in_two_halves_equals_one_pass(monkeypatch):
    """Cut at a block-row boundary, the two halves' entries and slots are those of one
    pass (slots numbered in order of first appearance)."""
    import dataclasses

    import geopandas as gpd
    import shapely
    from affine import Affine

    import cropyield.observations._plan as obs
    from cropyield._geo import Grid

    rng = np.random.default_rng(21)
    x0, y0 = 500000.0, 4100000.0
    polys = []
    for _ in range(400):
        cx, cy = rng.uniform(0, 300), rng.uniform(0, 200)
        r = rng.uniform(0.5, 9)
        a = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 9))))
        polys.append(shapely.Polygon(np.c_[x0 + 10 * (cx + r * np.cos(a)),
                                           y0 - 10 * (cy + r * np.sin(a))]))
    fields = gpd.GeoDataFrame({"field_id": np.arange(400)}, geometry=polys, crs=32650)
    grid = Grid(32650, Affine(10, 0, x0, 0, -10, y0), (200, 300))
    ctx = obs._grid_ctx(fields, grid, "field_id")
    monkeypatch.setattr(obs, "_SPLIT_ENTRIES", 10**9)
    one = obs._build_stream(ctx, grid.shape, (32, 48))
    monkeypatch.setattr(obs, "_SPLIT_ENTRIES", 0)
    two = obs._build_stream(ctx, grid.shape, (32, 48))
    for f in dataclasses.fields(one):
        a, b = getattr(one, f.name), getattr(two, f.name)
        assert np.array_equal(a, b) and np.asarray(a).dtype == np.asarray(b).dtype, f.name
    assert one.n_slots > 400 and one.ec.dtype == np.int32


def test_dn_histogram_equals_its_numpy_twin():
    from cropyield.observations._kernels import _dn_histogram, _dn_histogram_ref

    rng = np.random.default_rng(5)
    for step in (1, 3, 4):
        win = rng.integers(0, 65536, (2, 37, 53)).astype(np.uint16)
        a, b = np.zeros((2, 65536), np.int64), np.zeros((2, 65536), np.int64)
        _dn_histogram(win, step, a)
        _dn_histogram_ref(win, step, b)
        assert np.array_equal(a, b) and a.sum() == 2 * len(range(0, 37, step)) * len(
            range(0, 53, step))
