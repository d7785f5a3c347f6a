"""Exact coverage fractions: analytic cases, exactextract agreement, hypothesis properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

gpd = pytest.importorskip("geopandas")

from cropyield._geo import Grid  # noqa: E402
from cropyield.coverage import (  # noqa: E402
    COVERAGE_CACHE,
    Coverage,
    CoverageCache,
    PURE_TOLERANCE,
    coverage_fractions,
)
from cropyield.errors import InvalidFieldsError, MissingCRSError  # noqa: E402

X0, Y0 = 500000.0, 4000000.0
EPSG = 32650


def grid(h=40, w=50, res=10.0):
    return Grid(f"EPSG:{EPSG}", Affine(res, 0, X0, 0, -res, Y0), (h, w))


def px_box(c0, r0, c1, r1, res=10.0):
    """Box given in (fractional) pixel coordinates of :func:`grid`."""
    return shapely.box(X0 + c0 * res, Y0 - r1 * res, X0 + c1 * res, Y0 - r0 * res)


def px_poly(coords, res=10.0, holes=()):
    tr = lambda cs: [(X0 + c * res, Y0 - r * res) for c, r in cs]  # noqa: E731
    return shapely.Polygon(tr(coords), [tr(h) for h in holes])


def frame(geoms, crs=EPSG):
    return gpd.GeoDataFrame({"field_id": [f"f{i}" for i in range(len(geoms))]},
                            geometry=list(geoms), crs=crs)


def as_dict(cov: Coverage, i: int) -> dict[tuple[int, int], float]:
    s, e = cov.offsets[i], cov.offsets[i + 1]
    return {(int(r), int(c)): float(f)
            for r, c, f in zip(cov.rows[s:e], cov.cols[s:e], cov.fractions[s:e])}


# ------------------------------------------------------------------------------------------
# analytic cases
# ------------------------------------------------------------------------------------------
def test_half_pixel_offset_square_hand_computed():
    # square from (0.5, 0.5) to (2.5, 2.5) px: corners 0.25, edges 0.5, centre 1
    cov = coverage_fractions(frame([px_box(0.5, 0.5, 2.5, 2.5)]), grid(), cache=False)
    d = as_dict(cov, 0)
    expect = {(r, c): (0.5 if r in (0, 2) else 1.0) * (0.5 if c in (0, 2) else 1.0)
              for r in range(3) for c in range(3)}
    assert d.keys() == expect.keys()
    for k, v in expect.items():
        assert d[k] == pytest.approx(v, abs=1e-12)
    assert cov.area_px[0] == pytest.approx(4.0)
    assert cov.coverage[0] == pytest.approx(4.0, abs=1e-12)
    assert cov.n_pure[0] == 1
    # raster order within the field
    assert list(zip(cov.rows, cov.cols)) == sorted(expect)


def test_aligned_box_is_pure_and_flags():
    big = px_box(2, 3, 6, 7)  # 4 x 4 px, aligned: 16 pure pixels
    small = px_box(10, 10, 12, 12)  # 4 pure pixels -> FIELD_TOO_SMALL
    cov = coverage_fractions(frame([big, small]), grid(), cache=False)
    assert np.all(cov.fractions[: cov.offsets[1]] == 1.0)
    assert cov.n_pixels.tolist() == [16, 4]
    assert cov.n_pure.tolist() == [16, 4]
    assert cov.flags == ["", "FIELD_TOO_SMALL"]
    assert cov.purity.tolist() == [1.0, 1.0]


def test_triangle_hand_computed():
    # right triangle (0,0),(2,0),(0,2) in px: cells (0,0)=1, (0,1)=0.5, (1,0)=0.5
    cov = coverage_fractions(frame([px_poly([(0, 0), (2, 0), (0, 2)])]), grid(), cache=False)
    d = as_dict(cov, 0)
    assert d == pytest.approx({(0, 0): 1.0, (0, 1): 0.5, (1, 0): 0.5}, abs=1e-12)


def test_hole_subtracts_and_multipolygon_adds():
    outer = [(1, 1), (6, 1), (6, 6), (1, 6)]
    hole = [(2.5, 2.5), (3.5, 2.5), (3.5, 3.5), (2.5, 3.5)]
    donut = px_poly(outer, holes=[hole])
    multi = shapely.MultiPolygon([px_box(10, 10, 11.5, 11), px_box(20, 20, 20.5, 20.5)])
    cov = coverage_fractions(frame([donut, multi]), grid(), cache=False)
    d = as_dict(cov, 0)
    assert cov.coverage[0] == pytest.approx(25 - 1, abs=1e-12)
    # the hole takes a quarter of each of the four cells around (3, 3)
    for cell in [(2, 2), (2, 3), (3, 2), (3, 3)]:
        assert d[cell] == pytest.approx(0.75, abs=1e-12)
    m = as_dict(cov, 1)
    assert m == pytest.approx({(10, 10): 1.0, (10, 11): 0.5, (20, 20): 0.25}, abs=1e-12)
    assert cov.coverage[1] == pytest.approx(1.75)


def test_hole_winding_does_not_matter():
    outer = [(1, 1), (6, 1), (6, 6), (1, 6)]
    hole = [(2.5, 2.5), (3.5, 2.5), (3.5, 3.5), (2.5, 3.5)]
    a = px_poly(outer, holes=[hole])
    b = px_poly(outer[::-1], holes=[hole])  # same winding for shell and hole
    c = px_poly(outer, holes=[hole[::-1]])
    covs = [coverage_fractions(frame([g]), grid(), cache=False) for g in (a, b, c)]
    for cv in covs[1:]:
        np.testing.assert_allclose(cv.fractions, covs[0].fractions, atol=1e-12)


def test_partly_outside_grid_is_clipped_but_area_is_full():
    g = grid(10, 10)
    f = px_box(-1.5, 8.5, 2, 12)  # 3.5 x 3.5 px, only [0,2] x [8.5,10] inside
    cov = coverage_fractions(frame([f]), g, cache=False)
    assert cov.area_px[0] == pytest.approx(12.25)
    assert cov.coverage[0] == pytest.approx(2 * 1.5, abs=1e-12)
    assert cov.rows.min() >= 0 and cov.rows.max() < 10 and cov.cols.min() >= 0
    d = as_dict(cov, 0)
    assert d == pytest.approx({(8, 0): 0.5, (8, 1): 0.5, (9, 0): 1.0, (9, 1): 1.0}, abs=1e-12)


def test_field_covering_whole_grid_and_beyond():
    g = grid(5, 7)
    cov = coverage_fractions(frame([px_box(-3.3, -2.2, 9.1, 8.7)]), g, cache=False)
    assert cov.n_pixels[0] == 35
    assert np.all(cov.fractions == 1.0)


def test_subpixel_field_single_pixel():
    f = px_box(3.2, 4.1, 3.5, 4.6)  # 0.3 x 0.5 px inside pixel (4, 3)
    cov = coverage_fractions(frame([f]), grid(), cache=False)
    assert as_dict(cov, 0) == pytest.approx({(4, 3): 0.15}, abs=1e-12)
    assert "SUBPIXEL_FIELD" in cov.flags[0] and "FIELD_TOO_SMALL" in cov.flags[0]


def test_empty_and_invalid_geometries_are_flagged_not_repaired():
    bowtie = px_poly([(0, 0), (4, 4), (4, 0), (0, 4)])
    line = shapely.LineString([(X0, Y0 - 10), (X0 + 30, Y0 - 10)])
    good = px_box(5, 5, 17, 17)
    cov = coverage_fractions(frame([shapely.Polygon(), bowtie, line, good]), grid(),
                             cache=False)
    assert cov.flags[:3] == ["INVALID_GEOMETRY"] * 3
    assert cov.n_pixels.tolist()[:3] == [0, 0, 0]
    assert np.isnan(cov.area_px[:3]).all()
    assert cov.flags[3] == "" and cov.coverage[3] == pytest.approx(144)
    fixed = coverage_fractions(frame([bowtie]), grid(), make_valid=True, cache=False)
    assert fixed.flags[0] != "INVALID_GEOMETRY"
    assert fixed.coverage[0] == pytest.approx(8.0, abs=1e-9)  # two triangles of 4 px


def test_no_overlap_flag():
    cov = coverage_fractions(frame([px_box(100, 100, 105, 105)]), grid(), cache=False)
    assert cov.flags == ["NO_OVERLAP"] and cov.nnz == 0
    assert cov.window() is None
    assert np.isnan(cov.purity[0])


def test_missing_crs_and_bad_ids():
    f = gpd.GeoDataFrame({"field_id": [1]}, geometry=[px_box(0, 0, 1, 1)])
    with pytest.raises(MissingCRSError, match="set_crs"):
        coverage_fractions(f, grid())
    f2 = gpd.GeoDataFrame({"field_id": [1, 1]}, geometry=[px_box(0, 0, 1, 1)] * 2, crs=EPSG)
    with pytest.raises(InvalidFieldsError, match="unique"):
        coverage_fractions(f2, grid())


def test_reprojects_fields_to_grid_crs():
    f = frame([px_box(3.3, 4.4, 9.9, 12.7), px_poly([(1, 1), (5, 2), (2, 6)])])
    wgs = f.to_crs(4326)
    cov_utm = coverage_fractions(f, grid(), cache=False)
    cov_wgs = coverage_fractions(wgs, grid(), cache=False)
    back = wgs.to_crs(EPSG)
    np.testing.assert_allclose(cov_wgs.area_px, back.area / 100.0, rtol=1e-12)
    np.testing.assert_allclose(cov_wgs.coverage, cov_wgs.area_px, rtol=1e-9)
    # the round trip moves vertices by ~nm only
    np.testing.assert_allclose(cov_wgs.coverage, cov_utm.coverage, rtol=1e-6)
    assert cov_wgs.nnz == cov_utm.nnz


# ------------------------------------------------------------------------------------------
# windows, nesting, cache
# ------------------------------------------------------------------------------------------
def test_window_and_field_windows():
    cov = coverage_fractions(frame([px_box(0.5, 0.5, 2.5, 2.5), px_box(7, 9, 8.2, 10),
                                    px_box(200, 200, 201, 201)]), grid(), cache=False)
    assert cov.window() == (0, 0, 10, 9)
    fw = cov.field_windows()
    assert fw.tolist() == [[0, 0, 3, 3], [9, 7, 10, 9], [0, 0, 0, 0]]


def test_to_coarser_equals_direct_computation_on_20m_grid():
    rng = np.random.default_rng(3)
    geoms = [_star(rng, (rng.uniform(2, 45), rng.uniform(2, 35)), rng.uniform(0.3, 6), 9)
             for _ in range(25)]
    f = frame(geoms)
    g10 = grid(40, 50, 10.0)
    g20 = Grid(f"EPSG:{EPSG}", Affine(20.0, 0, X0, 0, -20.0, Y0), (20, 25))
    c10 = coverage_fractions(f, g10, cache=False)
    coarse = c10.to_coarser(2)
    direct = coverage_fractions(f, g20, cache=False)
    assert coarse.grid == g20
    np.testing.assert_array_equal(coarse.offsets, direct.offsets)
    np.testing.assert_array_equal(coarse.rows, direct.rows)
    np.testing.assert_array_equal(coarse.cols, direct.cols)
    np.testing.assert_allclose(coarse.fractions, direct.fractions, atol=1e-12)
    np.testing.assert_allclose(coarse.area_px, direct.area_px, rtol=1e-12)
    r2, c2 = c10.coarse_pixels(2)
    np.testing.assert_array_equal(r2, c10.rows // 2)
    np.testing.assert_array_equal(c2, c10.cols // 2)
    with pytest.raises(ValueError, match="positive integer"):
        c10.to_coarser(1.5)


def test_cache_reuses_and_invalidates():
    cache = CoverageCache(maxsize=2)
    f = frame([px_box(1, 1, 3, 3)])
    a = coverage_fractions(f, grid(), cache=cache)
    b = coverage_fractions(f.copy(), grid(), cache=cache)
    assert a is b and cache.hits == 1 and cache.misses == 1
    moved = frame([px_box(1, 1, 3, 3.5)])
    c = coverage_fractions(moved, grid(), cache=cache)
    assert c is not a and c.coverage[0] == pytest.approx(5.0)
    other_grid = coverage_fractions(f, grid(41, 50), cache=cache)
    assert other_grid is not a
    assert len(cache) == 2  # LRU bound
    assert not a.fractions.flags.writeable  # shared results are read-only
    COVERAGE_CACHE.clear()


# ------------------------------------------------------------------------------------------
# agreement with exactextract's coverage fractions
# ------------------------------------------------------------------------------------------
def test_fractions_match_exactextract_coverage():
    ee = pytest.importorskip("exactextract")
    from exactextract.raster import NumPyRasterSource

    rng = np.random.default_rng(11)
    h, w = 30, 40
    g = grid(h, w)
    geoms = []
    for i in range(60):
        centre = (rng.uniform(-2, w + 2), rng.uniform(-2, h + 2))
        p = _star(rng, centre, rng.uniform(0.2, 7), int(rng.integers(3, 14)))
        if i % 4 == 0 and p.area > 400:
            p = p.difference(shapely.Point(p.centroid).buffer(np.sqrt(p.area) / 6))
        geoms.append(p)
    geoms.append(shapely.MultiPolygon([px_box(1.2, 1.3, 2.9, 2.2), px_box(5.5, 5.5, 6, 8)]))
    f = frame(geoms)
    cov = coverage_fractions(f, g, cache=False)
    rast = NumPyRasterSource(np.arange(h * w, dtype=float).reshape(h, w), *g.bounds)
    res = ee.exact_extract(rast, f, ["cell_id", "coverage"], output="pandas",
                           include_cols=["field_id"])
    res = res.set_index("field_id")
    ncmp = 0
    for i, fid in enumerate(f.field_id):
        if cov.flags[i] == "INVALID_GEOMETRY":
            assert not geoms[i].is_valid  # never repaired silently; exactextract has no check
            continue
        mine = {r * w + c: v for (r, c), v in as_dict(cov, i).items()}
        if fid not in res.index:
            assert not mine
            continue
        theirs = dict(zip(np.asarray(res.loc[fid, "cell_id"]).tolist(),
                          np.asarray(res.loc[fid, "coverage"], dtype=float)))
        theirs = {k: v for k, v in theirs.items() if v > 0}
        for k in set(mine) | set(theirs):
            # exactextract stores fractions as float32
            assert mine.get(k, 0.0) == pytest.approx(theirs.get(k, 0.0), abs=2e-6), (fid, k)
            ncmp += 1
    assert ncmp > 1000


# ------------------------------------------------------------------------------------------
# hypothesis properties
# ------------------------------------------------------------------------------------------
def _star(rng, centre_px, radius_px, k, res=10.0):
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    ang = np.unique(ang)
    if len(ang) < 3:
        ang = np.array([0.0, 2.0, 4.0])
    rad = radius_px * rng.uniform(0.35, 1.0, len(ang))
    cu = centre_px[0] + rad * np.cos(ang)
    cv = centre_px[1] + rad * np.sin(ang)
    return shapely.Polygon(np.c_[X0 + cu * res, Y0 - cv * res])


@st.composite
def star_polygons(draw, max_radius=8.0):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    k = draw(st.integers(3, 16))
    radius = draw(st.floats(0.05, max_radius))
    cu = draw(st.floats(radius + 0.01, 60 - radius - 0.01))
    cv = draw(st.floats(radius + 0.01, 40 - radius - 0.01))
    p = _star(rng, (cu, cv), radius, k)
    if draw(st.booleans()) and radius > 1 and p.is_valid:
        # a hole (a well, a grave) of 0.3 radius around the centre, when it fits inside
        hole = shapely.Point(X0 + cu * 10, Y0 - cv * 10).buffer(radius * 3.0, quad_segs=3)
        if p.contains(hole):
            p = shapely.Polygon(p.exterior.coords, [hole.exterior.coords])
    return p


HYP = settings(max_examples=60, deadline=None,
               suppress_health_check=[HealthCheck.too_slow])


@HYP
@given(star_polygons())
def test_fractions_bounded_and_sum_to_area(poly):
    if not poly.is_valid or poly.is_empty:
        return
    cov = coverage_fractions(frame([poly]), grid(40, 60), cache=False)
    assert np.all(cov.fractions > 0) and np.all(cov.fractions <= 1.0)
    assert cov.coverage[0] == pytest.approx(poly.area / 100.0, rel=1e-9, abs=1e-12)
    assert cov.area_px[0] == pytest.approx(poly.area / 100.0, rel=1e-12)


@HYP
@given(star_polygons(), st.integers(0, 20))
def test_invariant_to_vertex_order_and_start(poly, shift):
    if not poly.is_valid or poly.is_empty or poly.geom_type != "Polygon":
        return
    ext = np.asarray(poly.exterior.coords)[:-1]
    holes = [np.asarray(r.coords)[:-1] for r in poly.interiors]
    s = shift % len(ext)
    rolled = shapely.Polygon(np.roll(ext, s, axis=0), holes)
    reversed_ = shapely.Polygon(ext[::-1], [h[::-1] for h in holes])
    covs = [coverage_fractions(frame([g]), grid(40, 60), cache=False)
            for g in (poly, rolled, reversed_)]
    for cv in covs[1:]:
        np.testing.assert_array_equal(cv.rows, covs[0].rows)
        np.testing.assert_array_equal(cv.cols, covs[0].cols)
        np.testing.assert_allclose(cv.fractions, covs[0].fractions, atol=1e-11)


@HYP
@given(star_polygons(max_radius=5.0), st.integers(-8, 8), st.integers(-8, 8))
def test_translation_by_whole_pixels_shifts_indices(poly, dc, dr):
    if not poly.is_valid or poly.is_empty:
        return
    moved = shapely.affinity.translate(poly, xoff=dc * 10.0, yoff=-dr * 10.0)
    g = Grid(f"EPSG:{EPSG}", Affine(10, 0, X0 - 100, 0, -10, Y0 + 100), (70, 90))
    a = coverage_fractions(frame([poly]), g, cache=False)
    b = coverage_fractions(frame([moved]), g, cache=False)
    np.testing.assert_array_equal(b.rows, a.rows + dr)
    np.testing.assert_array_equal(b.cols, a.cols + dc)
    np.testing.assert_allclose(b.fractions, a.fractions, atol=1e-9)


def test_many_fields_consistent_with_one_at_a_time():
    rng = np.random.default_rng(5)
    geoms = [_star(rng, (rng.uniform(0, 50), rng.uniform(0, 40)), rng.uniform(0.2, 9),
                   int(rng.integers(3, 12))) for _ in range(120)]
    f = frame(geoms)
    cov = coverage_fractions(f, grid(), cache=False)
    for i in range(0, 120, 17):
        single = coverage_fractions(f.iloc[[i]], grid(), cache=False)
        d1, d2 = as_dict(cov, i), as_dict(single, 0)
        assert d1.keys() == d2.keys()
        for k in d1:
            assert d1[k] == d2[k]


def test_coverage_kernel_threads_give_identical_results():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    geoms = [_star(rng, (rng.uniform(0, 50), rng.uniform(0, 40)), rng.uniform(0.2, 9),
                   int(rng.integers(3, 12))) for _ in range(300)]
    f = frame(geoms)
    ref = coverage_fractions(f, grid(), cache=False)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: coverage_fractions(f, grid(), cache=False), range(8)))
    for cv in outs:
        np.testing.assert_array_equal(cv.offsets, ref.offsets)
        np.testing.assert_array_equal(cv.fractions, ref.fractions)
        assert cv.flags == ref.flags


def test_cache_key_changes_with_ids_and_crs():
    from cropyield.coverage import fields_key

    f = frame([px_box(1, 1, 3, 3), px_box(4, 4, 6, 6)])
    k = fields_key(f)
    g2 = f.copy()
    g2["field_id"] = ["a", "b"]
    assert fields_key(g2) != k
    assert fields_key(f.to_crs(4326)) != k
    assert fields_key(f.copy()) == k


def test_cache_key_sees_every_vertex_and_ring():
    from cropyield.coverage import fields_key

    a, b = px_box(1, 1, 3, 3), px_box(4, 4, 6, 6)
    k = fields_key(frame([a, b]))
    moved = shapely.Polygon([(x + (1e-6 if i == 2 else 0), y)
                             for i, (x, y) in enumerate(b.exterior.coords)])
    assert fields_key(frame([a, moved])) != k                   # one vertex, 1 µm
    assert fields_key(frame([b, a])) != k                       # order is identity
    # a hole switches to the WKB form: the same shell with and without a hole differ,
    # and so does a polygon from its one-part multipolygon
    shell = px_box(0, 0, 10, 10)
    holed = shapely.Polygon(shell.exterior.coords, [px_box(2, 2, 4, 4).exterior.coords])
    keys = {fields_key(frame([shell, b])), fields_key(frame([holed, b])),
            fields_key(frame([shapely.MultiPolygon([shell]), b]))}
    assert len(keys) == 3
    assert fields_key(frame([holed, b])) == fields_key(frame([holed, b]))


def test_kernel_halves_and_dropped_invalid_fields_give_identical_results(monkeypatch):
    import cropyield.coverage as cmod

    rng = np.random.default_rng(11)
    stars = [_star(rng, (rng.uniform(0, 50), rng.uniform(0, 40)), rng.uniform(0.2, 9),
                   int(rng.integers(3, 12))) for _ in range(60)]
    bowtie = px_poly([(0, 0), (4, 4), (4, 0), (0, 4)])
    with warnings.catch_warnings():                         # GEOS: invalid coordinate
        warnings.simplefilter("ignore", RuntimeWarning)
        nan_vertex = shapely.Polygon([(X0, Y0), (X0 + 50, Y0), (np.nan, Y0 - 50), (X0, Y0)])
    geoms = stars[:30] + [bowtie, nan_vertex] + stars[30:]
    alone = coverage_fractions(frame(stars), grid(), cache=False)
    monkeypatch.setattr(cmod, "_SPLIT_CELLS", 0)              # two halves, two threads
    both = coverage_fractions(frame(geoms), grid(), cache=False)
    assert both.flags[30:32] == ["INVALID_GEOMETRY"] * 2
    assert both.n_pixels[30:32].tolist() == [0, 0] and np.isnan(both.area_px[30:32]).all()
    keep = np.r_[0:30, 32:62]
    np.testing.assert_array_equal(both.n_pixels[keep], alone.n_pixels)
    np.testing.assert_array_equal(both.rows, alone.rows)
    np.testing.assert_array_equal(both.cols, alone.cols)
    np.testing.assert_array_equal(both.fractions, alone.fractions)
    np.testing.assert_array_equal(both.area_px[keep], alone.area_px)


@pytest.mark.parametrize("split, batch", [(10**9, 4_000_000), (0, 4_000_000), (0, 40)])
def test_kernel_per_field_sums_equal_their_definitions_bit_for_bit(monkeypatch, split, batch):
    """coverage and n_pure come from the kernel (one buffer shared by two halves, or one
    buffer per batch); they must be exactly what bincount over the entries gives."""
    import cropyield.coverage as cmod

    monkeypatch.setattr(cmod, "_SPLIT_CELLS", split)
    monkeypatch.setattr(cmod, "_BATCH_CELLS", batch)
    rng = np.random.default_rng(5)
    geoms = [_star(rng, (rng.uniform(-5, 55), rng.uniform(-5, 45)), rng.uniform(0.2, 12),
                   int(rng.integers(3, 12))) for _ in range(120)]
    geoms[7] = px_poly([(0, 0), (4, 4), (4, 0), (0, 4)])            # invalid: dropped
    geoms[50] = px_box(200, 200, 210, 210)                            # off the grid
    cov = coverage_fractions(frame(geoms), grid(), cache=False)
    pf = np.repeat(np.arange(cov.n_fields), np.diff(cov.offsets))
    np.testing.assert_array_equal(
        cov.coverage, np.bincount(pf, weights=cov.fractions, minlength=cov.n_fields))
    np.testing.assert_array_equal(cov.n_pure, np.bincount(
        pf[cov.fractions >= 1 - PURE_TOLERANCE], minlength=cov.n_fields))
    assert cov.coverage[7] == 0 and cov.coverage[50] == 0 and cov.n_pure.sum() > 0
    assert len(cov.rows) == len(cov.cols) == len(cov.fractions) == cov.nnz


def test_summary_and_frame_tables():
    cov = coverage_fractions(frame([px_box(0.5, 0.5, 2.5, 2.5), px_box(90, 90, 91, 91)]),
                             grid(), cache=False)
    s = cov.summary()
    assert s.columns.tolist() == ["field_id", "coverage", "area_px", "n_pixels", "n_pure",
                                  "purity", "flags"]
    assert s["n_pixels"].tolist() == [9, 0] and s["flags"].tolist()[1] == "NO_OVERLAP"
    t = cov.to_frame()
    assert len(t) == 9 and t["fraction"].sum() == pytest.approx(4.0)


def _shapely_reference(poly, g: Grid) -> dict[tuple[int, int], float]:
    """Brute force: area of poly ∩ pixel box for every pixel of the grid in its bbox."""
    left, bottom, right, top = poly.bounds
    t = g.transform
    c0, c1 = max(int(np.floor((left - t.c) / t.a)), 0), min(int(np.ceil((right - t.c) / t.a)),
                                                            g.shape[1])
    r0, r1 = max(int(np.floor((top - t.f) / t.e)), 0), min(int(np.ceil((bottom - t.f) / t.e)),
                                                           g.shape[0])
    rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    boxes = shapely.box(t.c + cc.ravel() * t.a, t.f + (rr.ravel() + 1) * t.e,
                        t.c + (cc.ravel() + 1) * t.a, t.f + rr.ravel() * t.e)
    areas = shapely.area(shapely.intersection(poly, boxes)) / g.pixel_area
    return {(int(r), int(c)): float(a) for r, c, a in zip(rr.ravel(), cc.ravel(), areas)
            if a > 1e-12}


@st.composite
def lattice_polygons(draw):
    """Convex hulls of points on a half-pixel lattice: edges along pixel boundaries,
    vertices on pixel corners and centres (the degenerate cases of edge walking)."""
    pts = draw(st.lists(st.tuples(st.integers(-6, 26), st.integers(-6, 26)), min_size=3,
                        max_size=9, unique=True))
    p = shapely.MultiPoint([(X0 + u * 5.0, Y0 - v * 5.0) for u, v in pts]).convex_hull
    return p


@HYP
@given(st.one_of(star_polygons(), lattice_polygons()))
def test_fractions_equal_shapely_intersection_areas(poly):
    if poly.geom_type != "Polygon" or not poly.is_valid or poly.area == 0:
        return
    g = grid(20, 20)
    cov = coverage_fractions(frame([poly]), g, cache=False)
    ref = _shapely_reference(poly, g)
    mine = as_dict(cov, 0)
    for k in set(mine) | set(ref):
        assert mine.get(k, 0.0) == pytest.approx(ref.get(k, 0.0), abs=1e-9)


def test_batching_gives_identical_results(monkeypatch):
    import cropyield.coverage as cmod

    rng = np.random.default_rng(4)
    geoms = [_star(rng, (rng.uniform(0, 50), rng.uniform(0, 40)), rng.uniform(0.2, 9),
                   int(rng.integers(3, 12))) for _ in range(80)]
    geoms.append(px_box(-10, -10, 60, 50))  # larger than the whole grid
    f = frame(geoms)
    one = coverage_fractions(f, grid(), cache=False)
    monkeypatch.setattr(cmod, "_BATCH_CELLS", 50)
    many = coverage_fractions(f, grid(), cache=False)
    np.testing.assert_array_equal(one.offsets, many.offsets)
    np.testing.assert_array_equal(one.rows, many.rows)
    np.testing.assert_array_equal(one.cols, many.cols)
    np.testing.assert_array_equal(one.fractions, many.fractions)


def test_cache_is_bounded_by_bytes():
    cache = CoverageCache(maxsize=10, maxbytes=1)
    a = coverage_fractions(frame([px_box(1, 1, 3, 3)]), grid(), cache=cache)
    b = coverage_fractions(frame([px_box(1, 1, 4, 3)]), grid(), cache=cache)
    assert len(cache) == 1 and a.nbytes > 0 and b.nbytes > 0  # newest kept
    assert coverage_fractions(frame([px_box(1, 1, 4, 3)]), grid(), cache=cache) is b


def test_hole_free_fast_path_equals_general_ring_path():
    """Hole-free single polygons skip the per-ring objects; adding one field with a hole
    (general path for all) must not change any other field's fractions."""
    rng = np.random.default_rng(13)
    geoms = [_star(rng, (rng.uniform(0, 50), rng.uniform(0, 40)), rng.uniform(0.2, 9),
                   int(rng.integers(3, 12))) for _ in range(80)]
    fast = coverage_fractions(frame(geoms), grid(), cache=False)
    holed = px_poly([(1, 1), (9, 1), (9, 9), (1, 9)], holes=[[(3, 3), (6, 3), (6, 6), (3, 6)]])
    general = coverage_fractions(frame(geoms + [holed]), grid(), cache=False)
    for i in range(80):
        assert as_dict(fast, i) == as_dict(general, i)
    assert abs(general.fractions[general.offsets[80]:].sum() - (64 - 9)) < 1e-9
