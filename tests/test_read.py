"""Field-centric COG block reader (cropyield.read): plans, block accounting, masks, errors,
GDAL environment, load_cube.

Small local COGs (tiled 256, DEFLATE) with known values are written in the tests. Helpers
here (``write_cog``, ``make_scene``, ``ensure_indices``) are reused by test_observations.py
and test_read_faults.py.
"""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

from cropyield._geo import Grid  # noqa: E402
from cropyield.errors import AssetReadError, CorruptAssetError  # noqa: E402

EPSG = 32650
X0, Y0 = 400000.0, 4200000.0


# ---------------------------------------------------------------------------------------------
# stand-in for cropyield.indices until the real module lands (contract in docs/contracts.md)


def ensure_indices():
    """Return cropyield.indices; install a minimal contract stand-in if it does not exist."""
    try:
        import cropyield.indices as ix  # noqa: F401

        return ix
    except ImportError:
        pass
    from dataclasses import dataclass

    mod = types.ModuleType("cropyield.indices")

    @dataclass(frozen=True)
    class IndexSpec:
        name: str
        bands: tuple

    def reflectance(dn, scale, offset, nodata=0):
        dn = np.asarray(dn)
        r = dn.astype(np.float64) * scale + offset
        if nodata is not None:
            r[dn == nodata] = np.nan
        return r

    def compute_index(name, refl):
        if name == "ndvi":
            a, b = refl["B08"], refl["B04"]
        elif name == "ndre":
            a, b = refl["B8A"], refl["B05"]
        else:  # pragma: no cover
            raise KeyError(name)
        with np.errstate(invalid="ignore", divide="ignore"):
            den = a + b
            return np.where(den != 0, (a - b) / np.where(den != 0, den, 1), np.nan)

    def invalid_mask(scl, classes=(0, 1, 3, 8, 9, 10, 11), dilate=0):
        scl = np.asarray(scl)
        inv = np.isin(scl, list(classes))
        if dilate:
            from scipy.ndimage import binary_dilation

            cloud = np.isin(scl, [c for c in (3, 8, 9, 10) if c in classes])
            inv |= binary_dilation(cloud, np.ones((3, 3), bool), iterations=dilate)
        return inv

    def weighted_field_stats(values, weights, offsets):
        n = len(offsets) - 1
        pf = np.repeat(np.arange(n), np.diff(offsets))
        ws = np.bincount(pf, weights=weights, minlength=n)
        s1 = np.bincount(pf, weights=weights * values, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(ws > 0, s1 / ws, np.nan)
            s2 = np.bincount(pf, weights=weights * (values - m[pf]) ** 2, minlength=n)
            sd = np.where(ws > 0, np.sqrt(s2 / ws), np.nan)
        return m, sd, ws

    mod.IndexSpec = IndexSpec
    mod.INDICES = {"ndvi": IndexSpec("ndvi", ("B04", "B08")),
                   "ndre": IndexSpec("ndre", ("B05", "B8A"))}
    mod.DEFAULT_SCL_INVALID = (0, 1, 3, 8, 9, 10, 11)
    mod.reflectance = reflectance
    mod.compute_index = compute_index
    mod.invalid_mask = invalid_mask
    mod.weighted_field_stats = weighted_field_stats
    sys.modules["cropyield.indices"] = mod
    import cropyield

    cropyield.indices = mod
    return mod


# ---------------------------------------------------------------------------------------------
# data helpers


def write_cog(path, arr, transform, epsg=EPSG, blocksize=256, nodata=0):
    """Write a single-band DEFLATE COG (no overviews) tiled ``blocksize``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="COG", width=arr.shape[1], height=arr.shape[0],
                       count=1, dtype=arr.dtype, crs=f"EPSG:{epsg}", transform=transform,
                       nodata=nodata, blocksize=blocksize, compress="deflate",
                       overviews="NONE") as dst:
        dst.write(arr, 1)
    return str(path)


def make_scene(root, sid, *, when, bands, x0=X0, y0=Y0, epsg=EPSG, tile="50SKE",
               baseline="05.10", blocksize=256, href_base=None, flags=()):
    """Write COGs for ``bands`` {name: (array, resolution)} and return a hand-built Scene.

    Reflectance bands get scale 1e-4 and offset -0.1 for baseline >= 04.00, else 0.
    """
    from cropyield.catalogs import Band, Scene

    out = {}
    off = -0.1 if baseline and float(baseline) >= 4.0 else 0.0
    for name, (arr, res) in bands.items():
        tr = from_origin(x0, y0, res, res)
        fn = write_cog(Path(root) / sid / f"{name}.tif", arr, tr, epsg, blocksize)
        href = fn if href_base is None else f"{href_base}/{sid}/{name}.tif"
        grid = Grid(f"EPSG:{epsg}", tr, arr.shape)
        is_scl = name == "SCL"
        out[name] = Band(name, href, float(res), grid, 0, 1.0 if is_scl else 1e-4,
                         0.0 if is_scl else off, str(arr.dtype))
    return Scene(id=sid, datetime=pd.Timestamp(when, tz="UTC"), collection="sentinel-2-l2a",
                 tile=tile, platform="sentinel-2a", processing_baseline=baseline,
                 cloud_cover=0.0, bands=out, offset_source="baseline", flags=tuple(flags))


def ramp(shape, seed=0, lo=500, hi=5000):
    rng = np.random.default_rng(seed)
    return rng.integers(lo, hi, size=shape).astype(np.uint16)


def block_count(path):
    with rasterio.open(path) as ds:
        return len(list(ds.block_windows(1)))


# ---------------------------------------------------------------------------------------------
# plans


def test_plan_blocks_groups_pixels_and_merges_adjacent_blocks():
    from cropyield.read import plan_blocks

    # 600 x 600, blocks 256 -> 3 x 3 blocks. pixels in blocks (0,0), (0,1), (0,2), (2,1)
    rows = np.array([5, 300 - 299, 10, 520, 100])
    cols = np.array([5, 260, 600 - 1, 300, 400])
    plan = plan_blocks(rows, cols, (600, 600), (256, 256))
    assert plan.blocks() == [(0, 0), (0, 1), (0, 2), (2, 1)]
    assert plan.n_runs == 2                      # (0,0..2) merged, (2,1) alone
    assert plan.n_blocks == 4
    # every pixel is planned exactly once
    assert sorted(plan.order.tolist()) == [0, 1, 2, 3, 4]
    # max_run splits a run; want drops pixels
    p2 = plan_blocks(rows, cols, (600, 600), (256, 256), max_run=2)
    assert p2.n_runs == 3 and p2.n_blocks == 4
    p3 = plan_blocks(rows, cols, (600, 600), (256, 256),
                     want=np.array([False, True, False, True, False]))
    assert p3.blocks() == [(0, 1), (2, 1)] and p3.n_runs == 2


def test_plan_never_spans_an_unneeded_block():
    from cropyield.read import plan_blocks

    rng = np.random.default_rng(3)
    rows = rng.integers(0, 2048, 300)
    cols = rng.integers(0, 2048, 300)
    plan = plan_blocks(rows, cols, (2048, 2048), (256, 256))
    needed = {(int(r) // 256, int(c) // 256) for r, c in zip(rows, cols)}
    assert set(plan.blocks()) == needed and len(plan.blocks()) == len(needed)


# ---------------------------------------------------------------------------------------------
# local reads


@pytest.fixture()
def cog600(tmp_path):
    arr = ramp((600, 600), seed=1)
    fn = write_cog(tmp_path / "b.tif", arr, from_origin(X0, Y0, 10, 10))
    return fn, arr


def test_reader_returns_exact_values_and_reads_only_needed_blocks(cog600):
    from cropyield.read import HEADER_BYTES, BlockReader

    fn, arr = cog600
    rng = np.random.default_rng(0)
    # pixels inside blocks (0,0) and (2,2) only
    rows = np.concatenate([rng.integers(0, 256, 50), rng.integers(512, 600, 50)])
    cols = np.concatenate([rng.integers(0, 256, 50), rng.integers(512, 600, 50)])
    with BlockReader(threads=2) as rd:
        vals = rd.read(fn, rows, cols)
        st = rd.stats
        expect_bytes = rd.block_bytes(fn, [(0, 0), (2, 2)])
    np.testing.assert_array_equal(vals, arr[rows, cols])
    assert vals.dtype == np.uint16
    assert st.blocks_read == 2                    # of 9
    assert st.runs == 2
    assert st.bytes_read == expect_bytes + st.opens * HEADER_BYTES
    assert st.requests == st.opens + st.runs


def test_reader_want_mask_skips_blocks_and_fills(cog600):
    from cropyield.read import BlockReader

    fn, arr = cog600
    rows = np.array([10, 20, 300, 310, 590])
    cols = np.array([10, 20, 300, 310, 590])
    want = np.array([True, True, False, False, True])
    with BlockReader(threads=3) as rd:
        vals = rd.read(fn, rows, cols, want=want, fill=0)
        assert rd.stats.blocks_read == 2          # block (1,1) never decoded
    np.testing.assert_array_equal(vals[want], arr[rows[want], cols[want]])
    assert (vals[~want] == 0).all()


def test_reader_window_fn_with_padding_sees_neighbours(cog600):
    """A 3x3 max filter through window_fn/pad equals the full-array filter at the pixels."""
    from scipy.ndimage import maximum_filter

    from cropyield.read import BlockReader

    fn, arr = cog600
    rows = np.array([0, 255, 256, 300, 511, 599])
    cols = np.array([255, 256, 0, 511, 512, 300])
    with BlockReader(threads=2) as rd:
        vals = rd.read(fn, rows, cols, pad=1,
                       window_fn=lambda a: maximum_filter(a, size=3, mode="nearest"))
    ref = maximum_filter(arr, size=3, mode="nearest")
    np.testing.assert_array_equal(vals, ref[rows, cols])


def test_reader_sorts_a_pixel_set_once_even_with_a_foreign_int64_dtype(cog600, monkeypatch):
    """Arrays from numba's on-disk cache carry an int64 dtype equal to, but not the same
    object as, NumPy's; the per-date reads of one pixel set must still reuse its block sort
    (a view per call used to miss the cache and re-sort every date)."""
    import pickle

    import cropyield.read._blocks as rmod     # the module whose _block_sort the reader calls

    fn, arr = cog600
    foreign = pickle.loads(pickle.dumps(np.dtype(np.int64)))
    assert foreign is not np.dtype(np.int64) and foreign == np.int64
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 600, 5000).view(foreign)
    cols = rng.integers(0, 600, 5000).view(foreign)
    sorts = []
    real = rmod._block_sort
    monkeypatch.setattr(rmod, "_block_sort", lambda *a: sorts.append(1) or real(*a))
    with rmod.BlockReader(threads=2) as rd:
        want = np.ones(len(rows), bool)
        for _ in range(3):
            vals = rd.read(fn, rows, cols, want=want)
            np.testing.assert_array_equal(vals, arr[rows, cols])
        assert len(rd._sort_cache) == 1
    assert len(sorts) == 1


def test_reader_rejects_pixels_outside_the_raster(cog600):
    from cropyield.read import BlockReader

    fn, _ = cog600
    with BlockReader() as rd, pytest.raises(ValueError, match="outside the raster"):
        rd.read(fn, np.array([600]), np.array([0]))


def test_corrupt_tile_raises_corrupt_asset_error_never_zeros(tmp_path, cog600):
    from cropyield.read import BlockReader

    fn, arr = cog600
    bad = tmp_path / "bad.tif"
    shutil.copy(fn, bad)
    with rasterio.open(bad) as ds:
        off = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(ds.block_size(1, 1, 1))
    raw = bytearray(bad.read_bytes())
    for i in range(off + 2, off + size - 2):          # garble the tile's deflate stream
        raw[i] ^= 0x5A
    bad.write_bytes(bytes(raw))
    rows, cols = np.array([300, 10]), np.array([300, 10])
    with BlockReader(max_attempts=3, backoff=0.01) as rd:
        with pytest.raises(CorruptAssetError) as ei:
            rd.read(str(bad), rows, cols)
        # a good block of the same file still reads correctly
        np.testing.assert_array_equal(rd.read(str(bad), rows[1:], cols[1:]), arr[10, 10])
        assert rd.stats.retries == 0              # local decode errors are not retried
    assert ei.value.reason == "corrupt"
    assert "re-download" in str(ei.value)


def test_missing_local_file_is_asset_read_error(tmp_path):
    from cropyield.read import BlockReader

    with BlockReader(max_attempts=2, backoff=0.01) as rd, pytest.raises(AssetReadError) as ei:
        rd.read(str(tmp_path / "nope.tif"), np.array([0]), np.array([0]))
    assert not isinstance(ei.value, CorruptAssetError)
    assert ei.value.attempts == 1


def test_prefetched_metadata_is_taken_by_meta_and_errors_surface_there(tmp_path, cog600):
    from cropyield.read import BlockReader

    fn, arr = cog600
    missing = str(tmp_path / "nope.tif")
    with BlockReader(threads=2, max_attempts=1) as rd:
        rd.prefetch_meta([fn, missing, fn])            # returns at once; nothing raised
        assert rd.meta(fn).shape == arr.shape
        with pytest.raises(AssetReadError):
            rd.meta(missing)                            # the prefetch's error, raised here
        assert rd.stats.opens == 2 and len(rd.stats.failures) == 1   # each tried once
        np.testing.assert_array_equal(rd.read(fn, np.array([5]), np.array([7])), arr[5, 7])
    with BlockReader(threads=1) as rd:                  # released before meta(): waits for
        rd.prefetch_meta([fn])                          # the open, then closes the handle
        rd.release(fn)
        assert not rd._by_href.get(fn) and not rd._meta_ahead
    rd = BlockReader(threads=1)
    rd.prefetch_meta([str(tmp_path / f"n{i}.tif") for i in range(50)])
    rd.close()                                          # pending prefetches are cancelled
    assert rd.stats.opens <= 1 and not rd.stats.failures  # never asked for: no failure


def test_pixel_reads_open_local_files_without_georeferencing(cog600):
    """Block reads use handles opened without georeferencing (cheaper), silently; anything
    that asks for georeferencing (metadata, load_cube) gets a georeferenced handle even
    where a plain one is cached."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from cropyield.read import BlockReader

    fn, arr = cog600
    with BlockReader(threads=1) as rd, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = rd._pool.submit
        assert run(rd._attempt, fn, lambda ds: ds.crs, georef=False).result() is None
        m = rd.meta(fn)                     # same reader thread: reopened, georeferenced
        assert m.crs is not None and m.transform.c == X0 and m.transform.f == Y0
        assert run(rd._attempt, fn, lambda ds: ds.crs).result() == m.crs
        assert run(rd._attempt, fn, lambda ds: ds.crs, georef=False).result() == m.crs
        np.testing.assert_array_equal(rd.read(fn, np.array([5, 599]), np.array([7, 3])),
                                      arr[[5, 599], [7, 3]])
    assert not [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)]


def test_handles_are_closed_after_the_reader(cog600):
    from cropyield.read import BlockReader

    fn, _ = cog600
    rd = BlockReader(threads=2, max_handles=1)
    rd.read(fn, np.array([1, 300]), np.array([1, 300]))
    opened = list(rd._all)
    assert opened and all(not ds.closed for ds in opened)
    rd.close()
    assert all(ds.closed for ds in opened) and not rd._all


# ---------------------------------------------------------------------------------------------
# GDAL environment


def test_gdal_env_layers_without_touching_os_environ(monkeypatch):
    import cropyield.read._gdal as rd  # where _configured lives

    before = dict(os.environ)
    env = rd.gdal_env(GDAL_HTTP_TIMEOUT=3)
    assert env["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert env["GDAL_HTTP_MERGE_CONSECUTIVE_RANGES"] == "YES"
    assert env["GDAL_HTTP_TIMEOUT"] == 3
    monkeypatch.setattr(rd, "_configured", {})
    out = rd.configure_rio(GDAL_HTTP_MAX_RETRY=7)
    assert out["GDAL_HTTP_MAX_RETRY"] == 7 and rd.gdal_env()["GDAL_HTTP_MAX_RETRY"] == 7
    assert dict(os.environ) == before


def test_worker_plugin_applies_options(monkeypatch):
    pytest.importorskip("distributed")
    import cropyield.read._gdal as rd  # where _configured lives

    monkeypatch.setattr(rd, "_configured", {})
    plugin = rd.make_worker_plugin(GDAL_HTTP_TIMEOUT=11)
    plugin.setup(worker=None)
    assert rd.gdal_env()["GDAL_HTTP_TIMEOUT"] == 11


def test_worker_plugin_without_distributed_names_the_extra(monkeypatch):
    import builtins

    import cropyield.read as rd

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "distributed":
            raise ImportError("no distributed")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.delitem(sys.modules, "distributed", raising=False)
    with pytest.raises(ImportError, match=r"cropyield\[distributed\]"):
        rd.make_worker_plugin()


def test_classify_error_messages():
    from cropyield.read import classify_error

    E = OSError
    assert classify_error(E("HTTP response code: 404"), remote=True) == "not_found"
    assert classify_error(E("HTTP response code: 403"), remote=True) == "auth"
    assert classify_error(E("HTTP response code: 503"), remote=True) == "transient"
    assert classify_error(E("HTTP response code: 429"), remote=True) == "transient"
    assert classify_error(E("Operation timed out after 1000 ms"), remote=True) == "transient"
    assert classify_error(E("TIFFReadEncodedTile() failed"), remote=False) == "corrupt"
    assert classify_error(E("TIFFReadEncodedTile() failed"), remote=True) == "transient"


def test_clear_gdal_cache_reaches_libgdal():
    from cropyield.read import clear_gdal_cache

    assert clear_gdal_cache("http://127.0.0.1:1/x.tif?sig=abc") is True
    assert clear_gdal_cache("/local/file.tif") is False


# ---------------------------------------------------------------------------------------------
# load_cube


def test_load_cube_reflectance_offsets_mask_and_mosaic(tmp_path):
    import geopandas as gpd
    import shapely

    ensure_indices()
    from cropyield.read import load_cube

    b04 = ramp((64, 64), 1)
    b08 = ramp((64, 64), 2)
    scl = np.full((32, 32), 4, np.uint8)
    scl[:8, :8] = 9                                   # cloud in the NW corner
    old = make_scene(tmp_path, "S_old", when="2021-06-01T03:00", baseline="03.00",
                     bands={"B04": (b04, 10), "B08": (b08, 10), "SCL": (scl, 20)})
    # same DNs + 1000 in a post-04.00 product: must give the same reflectance
    new = make_scene(tmp_path, "S_new", when="2024-06-01T03:00", baseline="05.10",
                     bands={"B04": (b04 + 1000, 10), "B08": (b08 + 1000, 10), "SCL": (scl, 20)})
    # a second tile east of the first, same acquisition: mosaicked into one slice
    east = make_scene(tmp_path, "S_east", when="2024-06-01T03:00", baseline="05.10",
                      x0=X0 + 640, tile="50SKF",
                      bands={"B04": (b04 + 1000, 10), "B08": (b08 + 1000, 10),
                             "SCL": (np.full((32, 32), 4, np.uint8), 20)})
    aoi = gpd.GeoSeries([shapely.box(X0 + 100, Y0 - 500, X0 + 1000, Y0 - 100)],
                        crs=f"EPSG:{EPSG}")
    ds = load_cube([old, new, east], aoi, bands=["B04", "B08", "SCL"], resolution=10)
    assert ds.sizes == {"time": 2, "y": 40, "x": 90}
    assert ds.rio.crs.to_epsg() == EPSG and "spatial_ref" in ds.coords
    assert ds["B04"].dtype == np.float32
    expect = (b04[10:50, 10:64].astype(float) * 1e-4).astype(np.float32)
    np.testing.assert_allclose(ds["B04"].isel(time=0).values[:, :54], expect, atol=1e-6)
    np.testing.assert_allclose(ds["B04"].isel(time=1).values[:, :54], expect, atol=1e-6)
    # east tile fills x >= X0 + 640 in the second slice only
    np.testing.assert_allclose(ds["B04"].isel(time=1).values[:, 54:],
                               (b04[10:50, :36] * 1e-4).astype(np.float32), atol=1e-6)
    assert np.isnan(ds["B04"].isel(time=0).values[:, 54:]).all()
    # SCL cloud at 20 m rows/cols 0..7 -> 10 m rows 0..15 -> output rows 0..5, cols 0..5
    v = ds["valid"].isel(time=0).values
    assert (v[:6, :6] == 0).all() and v[6:, 6:54].all()
    assert str(ds.time.values[0]).startswith("2021-06-01")


def test_gather_kernel_equals_numpy_twin():
    from cropyield.read._plan import _gather_into, _gather_into_ref

    rng = np.random.default_rng(9)
    for dtype in (np.uint16, np.uint8, np.float64):
        arr = rng.integers(0, 250, (40, 70)).astype(dtype)
        rows = rng.integers(100, 140, 500)
        cols = rng.integers(30, 100, 500)
        idx = rng.choice(500, 300, replace=False)
        a = np.zeros(500, dtype)
        b = np.zeros(500, dtype)
        _gather_into(arr, rows, cols, idx, 100, 30, a)
        _gather_into_ref(arr, rows, cols, idx, 100, 30, b)
        np.testing.assert_array_equal(a, b)
        assert (a[idx] == arr[rows[idx] - 100, cols[idx] - 30]).all()


def _worker_gdal_timeout():
    from cropyield.read import gdal_env

    return gdal_env()["GDAL_HTTP_TIMEOUT"]


def test_gdal_settings_reach_real_dask_worker_processes():
    """The settings travel to separate worker processes, present and future, not via os.environ."""
    distributed = pytest.importorskip("distributed")
    import cropyield.read._gdal as rd  # where _configured lives

    before = dict(rd._configured)
    try:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            rd.configure_rio(client=client, GDAL_HTTP_TIMEOUT=13)
            cluster.scale(2)
            client.wait_for_workers(2, timeout=60)
            values = client.run(_worker_gdal_timeout)
    finally:
        rd._configured.clear()
        rd._configured.update(before)
    assert len(values) == 2 and set(values.values()) == {13}


def test_read_windows_hands_every_run_to_consume_once(tmp_path):
    """read_windows decodes each run of every file into one buffer and calls consume in a
    reader thread with the right origin; mismatched files are refused."""
    import threading

    from cropyield.read import BlockReader

    a = ramp((600, 700), 31)
    b = ramp((600, 700), 32)
    fa = write_cog(tmp_path / "a.tif", a, from_origin(X0, Y0, 10, 10))
    fb = write_cog(tmp_path / "b.tif", b, from_origin(X0, Y0, 10, 10))
    fc = write_cog(tmp_path / "c.tif", a.astype(np.float32), from_origin(X0, Y0, 10, 10))
    # runs: block row 0 cols 0..2 (partial last block), block row 2 (partial) col 1
    rr, c0, c1 = np.array([0, 2]), np.array([0, 1]), np.array([2, 1])
    seen, lock = {}, threading.Lock()

    def consume(k, r0, col0, win):
        with lock:
            seen[k] = (r0, col0, win.copy(), threading.current_thread().name)

    with BlockReader(threads=2) as rd:
        rd.read_windows([str(fa), str(fb)], rr, c0, c1, consume)
        assert rd.stats.as_dict()["blocks_read"] == 2 * (3 + 1)
        with pytest.raises(ValueError, match="differs"):
            rd.read_windows([str(fa), str(fc)], rr, c0, c1, consume)
    assert sorted(seen) == [0, 1]
    r0, col0, win, th = seen[0]
    assert (r0, col0, win.shape) == (0, 0, (2, 256, 700))
    assert np.array_equal(win[0], a[:256, :700]) and np.array_equal(win[1], b[:256, :700])
    r0, col0, win, th = seen[1]
    assert (r0, col0, win.shape) == (512, 256, (2, 88, 256))
    assert np.array_equal(win[1], b[512:, 256:512]) and th.startswith("cropyield-read")
