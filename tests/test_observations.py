"""field_observations: hand-computable NDVI, baseline offsets, block accounting, SCL-first
skipping, one grid per field and acquisition, flags, exactextract parity, xarray view."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from test_read import EPSG, X0, Y0, ensure_indices, make_scene, ramp

from cropyield.errors import split_flags

ensure_indices()


def fields_px(boxes, ids=None, x0=X0, y0=Y0, epsg=EPSG, res=10.0):
    """Fields from pixel-unit boxes (col0, row0, col1, row1) on a grid with origin x0, y0."""
    geoms = [shapely.box(x0 + c0 * res, y0 - r1 * res, x0 + c1 * res, y0 - r0 * res)
             for c0, r0, c1, r1 in boxes]
    ids = ids or [f"f{i}" for i in range(len(geoms))]
    return gpd.GeoDataFrame({"field_id": ids}, geometry=geoms, crs=f"EPSG:{epsg}")


def ndvi_of(b04, b08, scale=1e-4, off=0.0):
    r = b04.astype(float) * scale + off
    n = b08.astype(float) * scale + off
    return (n - r) / (n + r)


@pytest.fixture()
def world(tmp_path):
    """600 x 600 px 10 m tile (3 x 3 blocks of 256), SCL 300 x 300 (2 x 2 blocks)."""
    b04 = ramp((600, 600), 11, 300, 1500)
    b08 = ramp((600, 600), 12, 2000, 5000)
    scl = np.full((300, 300), 4, np.uint8)
    scl[256:, 256:] = 9            # SCL block (1,1) is all cloud -> 10 m rows/cols >= 512
    scene = make_scene(tmp_path, "S2A_T1_20210601", when="2021-06-01T03:10", baseline="03.00",
                       bands={"B04": (b04, 10), "B08": (b08, 10), "SCL": (scl, 20)})
    return tmp_path, scene, b04, b08, scl


def test_hand_computable_ndvi_with_partial_pixels(world):
    from cropyield.observations import field_observations

    _, scene, b04, b08, _ = world
    ndvi = ndvi_of(b04, b08)
    fields = fields_px([(10, 20, 13, 22),          # 3 x 2 whole pixels
                        (40.5, 50, 42.5, 51)])     # half, full, half pixel in one row
    df = field_observations([scene], fields)
    assert list(df.columns) == ["field_id", "time", "scene_id", "tile", "coverage",
                                "covered_fraction", "valid_fraction", "ndvi", "ndvi_std",
                                "flags"]
    a = df.set_index("field_id")
    np.testing.assert_allclose(a.loc["f0", "ndvi"], ndvi[20:22, 10:13].mean(), atol=1e-12)
    np.testing.assert_allclose(a.loc["f0", "ndvi_std"], ndvi[20:22, 10:13].std(), atol=1e-12)
    w = np.array([0.5, 1.0, 0.5])
    v = ndvi[50, 40:43]
    np.testing.assert_allclose(a.loc["f1", "ndvi"], (w * v).sum() / 2.0, atol=1e-12)
    np.testing.assert_allclose(a["coverage"].to_numpy(), [6.0, 2.0], atol=1e-9)
    np.testing.assert_allclose(a["valid_fraction"].to_numpy(), [1.0, 1.0])
    assert (df["time"] == pd.Timestamp("2021-06-01T03:10", tz="UTC")).all()
    assert str(df["time"].dtype) == "datetime64[ns, UTC]"
    assert df["scene_id"].eq("S2A_T1_20210601").all() and df["tile"].eq("50SKE").all()


def test_pre_and_post_baseline_products_give_the_same_reflectance(tmp_path):
    from cropyield.observations import field_observations

    b04 = ramp((64, 64), 1, 300, 1500)
    b08 = ramp((64, 64), 2, 2000, 5000)
    scl = np.full((32, 32), 4, np.uint8)
    old = make_scene(tmp_path, "old", when="2021-06-01T03:00", baseline="03.00",
                     bands={"B04": (b04, 10), "B08": (b08, 10), "SCL": (scl, 20)})
    new = make_scene(tmp_path, "new", when="2024-06-01T03:00", baseline="05.10",
                     bands={"B04": (b04 + 1000, 10), "B08": (b08 + 1000, 10),
                            "SCL": (scl, 20)})
    fields = fields_px([(3.3, 4.1, 17.8, 12.6), (30, 30, 50.5, 41.2)])
    df = field_observations([old, new], fields)
    assert len(df) == 4
    piv = df.pivot(index="field_id", columns="scene_id", values="ndvi")
    np.testing.assert_allclose(piv["old"], piv["new"], atol=1e-12)
    assert np.isfinite(piv.to_numpy()).all()


def test_only_blocks_under_fields_are_read(world):
    from cropyield.observations import field_observations

    _, scene, *_ = world
    fields = fields_px([(10, 10, 20, 20), (30, 40, 35, 45)])       # all in 10 m block (0, 0)
    df = field_observations([scene], fields)
    # SCL block (0,0) + B04 block (0,0) + B08 block (0,0), out of 4 + 9 + 9
    assert df.attrs["blocks_read"] == 3
    assert df.attrs["requests"] >= 3 and df.attrs["bytes_read"] > 0
    assert df.attrs["scene_ids"] == ["S2A_T1_20210601"]
    assert df.attrs["read_failures"] == []


def test_scl_masked_blocks_are_not_decoded_for_other_bands(world):
    from cropyield.observations import field_observations

    _, scene, *_ = world
    cloudy = fields_px([(520, 520, 540, 530)])        # SCL block (1,1) is all cloud
    df = field_observations([scene], cloudy)
    assert df.attrs["blocks_read"] == 1               # only the SCL block
    assert np.isnan(df["ndvi"]).all() and df["flags"].eq("ALL_MASKED").all()
    assert df["valid_fraction"].eq(0.0).all()
    both = fields_px([(520, 520, 540, 530), (10, 10, 20, 20)])
    df2 = field_observations([scene], both)
    assert df2.attrs["blocks_read"] == 1 + 1 + 2      # SCL (0,0),(1,1); B04/B08 (0,0)
    assert df2.set_index("field_id").loc["f1", "flags"] == ""


def test_partly_cloudy_field_is_weighted_by_validity(world):
    from cropyield.observations import field_observations

    _, scene, b04, b08, _ = world
    ndvi = ndvi_of(b04, b08)
    # rows 508..516 x cols 100..110: SCL rows >= 256 (10 m rows >= 512) are cloud only for
    # cols >= 512, so this field is clear; the field below straddles the cloud edge in cols
    f = fields_px([(508, 100, 516, 104)])           # cols 508..515: 508..511 clear, 512.. cloud
    df = field_observations([scene], f, min_valid_fraction=0.0)
    # rows 100..103 are < 512 -> SCL rows 50..51 are clear everywhere: fully valid
    assert df["valid_fraction"].iloc[0] == pytest.approx(1.0)
    g = fields_px([(508, 510, 516, 514)])           # rows 510..513, cols 508..515
    dg = field_observations([scene], g)
    # cloud where row >= 512 and col >= 512: 2 x 4 of 4 x 8 pixels
    assert dg["valid_fraction"].iloc[0] == pytest.approx(24 / 32)
    clear = np.ones((4, 8), bool)
    clear[2:, 4:] = False
    np.testing.assert_allclose(dg["ndvi"].iloc[0], ndvi[510:514, 508:516][clear].mean(),
                               atol=1e-12)
    dl = field_observations([scene], g, min_valid_fraction=0.8)
    assert np.isnan(dl["ndvi"].iloc[0]) and dl["flags"].iloc[0] == "LOW_VALID_FRACTION"
    assert dl["valid_fraction"].iloc[0] == pytest.approx(0.75)


def test_dilation_grows_the_cloud_mask(tmp_path):
    from cropyield.observations import field_observations

    b04 = ramp((64, 64), 1, 300, 1500)
    b08 = ramp((64, 64), 2, 2000, 5000)
    scl = np.full((32, 32), 4, np.uint8)
    scl[10, 10] = 9                               # one cloudy 20 m pixel
    sc = make_scene(tmp_path, "d", when="2021-06-01T03:00", baseline="03.00",
                    bands={"B04": (b04, 10), "B08": (b08, 10), "SCL": (scl, 20)})
    f = fields_px([(22, 18, 24, 20)])             # 10 m px rows 18-19 cols 22-23 = SCL (9, 11)
    d0 = field_observations([sc], f)
    d1 = field_observations([sc], f, dilate=1)
    assert d0["valid_fraction"].iloc[0] == 1.0
    assert d1["valid_fraction"].iloc[0] == 0.0 and "ALL_MASKED" in split_flags(d1["flags"].iloc[0])


def test_no_overlap_outside_swath_and_outside_grid(tmp_path):
    from cropyield.observations import field_observations

    b04 = ramp((64, 64), 1, 300, 1500)
    b08 = ramp((64, 64), 2, 2000, 5000)
    scl = np.full((32, 32), 4, np.uint8)
    b04[:, 40:] = 0
    b08[:, 40:] = 0
    scl[:, 20:] = 0                               # east part outside the valid swath
    sc = make_scene(tmp_path, "sw", when="2021-06-01T03:00", baseline="03.00",
                    bands={"B04": (b04, 10), "B08": (b08, 10), "SCL": (scl, 20)})
    f = fields_px([(45, 5, 50, 10), (100, 5, 110, 10), (5, 5, 10, 10)])
    df = field_observations([sc], f).set_index("field_id")
    # outside the grid: a flagged row (issue 18: no field vanishes)
    assert df.loc["f1", "flags"] == "NO_OVERLAP" and np.isnan(df.loc["f1", "ndvi"])
    assert df.loc["f1", "covered_fraction"] == 0.0
    assert df.loc["f0", "flags"] == "NO_OVERLAP" and np.isnan(df.loc["f0", "ndvi"])
    assert df.loc["f0", "coverage"] == pytest.approx(25.0)
    assert df.loc["f2", "flags"] == "" and np.isfinite(df.loc["f2", "ndvi"])


def test_field_on_two_overlapping_tiles_is_counted_once(tmp_path):
    from cropyield.observations import field_observations

    b04 = ramp((64, 64), 1, 300, 1500)
    b08 = ramp((64, 64), 2, 2000, 5000)
    scl = np.full((32, 32), 4, np.uint8)
    # tile B's grid starts 32 px east of tile A's: columns 32..63 of A = 0..31 of B
    a = make_scene(tmp_path, "A", when="2024-06-01T03:00:00", tile="50SKE",
                   bands={"B04": (b04 + 1000, 10), "B08": (b08 + 1000, 10), "SCL": (scl, 20)})
    bb04, bb08 = np.zeros_like(b04), np.zeros_like(b08)
    bb04[:, :32], bb08[:, :32] = b04[:, 32:], b08[:, 32:]
    bb04[:, 32:], bb08[:, 32:] = 800, 3000
    bscl = np.full((32, 32), 4, np.uint8)
    b = make_scene(tmp_path, "B", when="2024-06-01T03:00:05", tile="50SKF", x0=X0 + 320,
                   bands={"B04": (bb04 + 1000, 10), "B08": (bb08 + 1000, 10),
                          "SCL": (bscl, 20)})
    fields = fields_px([(40, 10, 50, 20),       # inside both grids -> one row
                        (60, 30, 70, 40),       # straddles A's east edge -> B covers it fully
                        (5, 5, 10, 10)])        # A only
    df = field_observations([a, b], fields)
    assert df.groupby("field_id").size().to_dict() == {"f0": 1, "f1": 1, "f2": 1}
    s = df.set_index("field_id")
    assert s.loc["f1", "scene_id"] == "B" and s.loc["f2", "scene_id"] == "A"
    assert s.loc["f1", "coverage"] == pytest.approx(100.0)
    ndvi = ndvi_of(b04, b08)
    np.testing.assert_allclose(s.loc["f0", "ndvi"], ndvi[10:20, 40:50].mean(), atol=1e-12)
    # when tile A has clouds over f0, the clear tile B is chosen
    cl = scl.copy()
    cl[5:10, 20:25] = 9
    a2 = make_scene(tmp_path / "c", "A", when="2024-06-01T03:00:00", tile="50SKE",
                    bands={"B04": (b04 + 1000, 10), "B08": (b08 + 1000, 10), "SCL": (cl, 20)})
    d2 = field_observations([a2, b], fields).set_index("field_id")
    assert d2.loc["f0", "scene_id"] == "B" and d2.loc["f0", "valid_fraction"] == 1.0


def test_field_across_utm_zones_is_read_once(tmp_path):
    """A field at 120 E is on a 32650 and a 32651 tile of the same acquisition."""
    from pyproj import Transformer

    from cropyield.observations import field_observations

    lon, lat = 120.0, 36.0
    grids = {}
    scenes = []
    for epsg, tile in ((32650, "50SQF"), (32651, "51SUA")):
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
        x0, y0 = np.floor(x / 10) * 10 - 320, np.floor(y / 10) * 10 + 320
        grids[epsg] = (x0, y0)
        v = np.full((64, 64), 2000 if epsg == 32650 else 2200, np.uint16)
        scenes.append(make_scene(tmp_path, tile, when="2024-06-01T03:00", tile=tile,
                                 epsg=epsg, x0=x0, y0=y0,
                                 bands={"B04": (v, 10), "B08": (v * 3, 10),
                                        "SCL": (np.full((32, 32), 4, np.uint8), 20)}))
    pt = gpd.GeoSeries(gpd.points_from_xy([lon], [lat]), crs=4326).to_crs(3857)
    f = gpd.GeoDataFrame({"field_id": ["z"]}, geometry=pt.buffer(40), crs=3857)
    df = field_observations(scenes, f)
    assert len(df) == 1 and np.isfinite(df["ndvi"].iloc[0])
    # equal coverage and clear data in both zones: the tie goes to the first tile in order
    # (50SQF): DN 2000/6000 with offset -0.1 -> red 0.1, nir 0.5 -> NDVI 0.4 / 0.6
    assert df["scene_id"].iloc[0] == "50SQF"
    assert df["ndvi"].iloc[0] == pytest.approx(0.4 / 0.6, abs=1e-12)
    assert df["coverage"].iloc[0] == pytest.approx(f.to_crs(32650).area.iloc[0] / 100, rel=1e-9)


def test_parity_with_exactextract_mean(tmp_path):
    exactextract = pytest.importorskip("exactextract")
    import rasterio
    from rasterio.transform import from_origin

    from cropyield.observations import field_observations

    rng = np.random.default_rng(5)
    b04 = ramp((128, 128), 21, 300, 1500)
    b08 = ramp((128, 128), 22, 2000, 5000)
    scl = rng.choice(np.array([4, 4, 4, 5, 8, 3], np.uint8), size=(64, 64))
    sc = make_scene(tmp_path, "p", when="2021-06-01T03:00", baseline="03.00", blocksize=256,
                    bands={"B04": (b04, 10), "B08": (b08, 10), "SCL": (scl, 20)})
    boxes = []
    for _ in range(40):
        c0, r0 = rng.uniform(0, 110, 2)
        boxes.append((c0, r0, c0 + rng.uniform(0.4, 15), r0 + rng.uniform(0.4, 12)))
    fields = fields_px(boxes)
    fields.loc[3, "geometry"] = shapely.Point(X0 + 300.3, Y0 - 400.7).buffer(37.0)
    df = field_observations([sc], fields).set_index("field_id")
    ndvi = ndvi_of(b04, b08)
    invalid = np.isin(np.kron(scl, np.ones((2, 2), np.uint8)), (0, 1, 3, 8, 9, 10, 11))
    ndvi[invalid] = np.nan
    fn = tmp_path / "ndvi.tif"
    with rasterio.open(fn, "w", driver="GTiff", width=128, height=128, count=1,
                       dtype="float64", crs=f"EPSG:{EPSG}",
                       transform=from_origin(X0, Y0, 10, 10), nodata=np.nan) as dst:
        dst.write(ndvi, 1)
    ref = exactextract.exact_extract(str(fn), fields, ["mean"], include_cols=["field_id"],
                                     output="pandas").set_index("field_id")
    both = df.join(ref, how="inner")
    assert len(both) == 40
    ok = both["mean"].notna()
    assert ok.sum() >= 30
    np.testing.assert_allclose(both.loc[ok, "ndvi"], both.loc[ok, "mean"], atol=1e-6)
    assert both.loc[~ok, "ndvi"].isna().all()
    assert (both.loc[~ok, "flags"].str.contains("ALL_MASKED")).all()

    # min_coverage_frac: same as exactextract's mean(min_coverage_frac=0.5); fields with no
    # such valid pixel are NaN and say why, coverage and valid fraction are unchanged
    half = field_observations([sc], fields, min_coverage_frac=0.5).set_index("field_id")
    ref5 = exactextract.exact_extract(str(fn), fields, ["mean(min_coverage_frac=0.5)"],
                                      include_cols=["field_id"], output="pandas")
    both5 = half.join(ref5.set_index("field_id"), how="inner")
    ok5 = both5["mean"].notna()
    assert ok5.sum() >= 20
    np.testing.assert_allclose(both5.loc[ok5, "ndvi"], both5.loc[ok5, "mean"], atol=1e-6)
    assert both5.loc[~ok5, "ndvi"].isna().all()
    assert (both5.loc[~ok5, "flags"].str.len() > 0).all()
    np.testing.assert_allclose(half["coverage"], df["coverage"])
    assert (np.abs(half.loc[ok5, "ndvi"] - df.loc[ok5, "ndvi"]) > 1e-9).any()


def test_scene_flags_and_progress_and_xarray(tmp_path):
    from cropyield.observations import field_observations, observations_to_xarray

    b04 = ramp((64, 64), 1, 300, 1500)
    b08 = ramp((64, 64), 2, 2000, 5000)
    scl = np.full((32, 32), 4, np.uint8)
    s1 = make_scene(tmp_path, "s1", when="2024-06-01T03:00", flags=("OFFSET_INCONSISTENT",),
                    bands={"B04": (b04 + 1000, 10), "B08": (b08 + 1000, 10), "SCL": (scl, 20)})
    s2 = make_scene(tmp_path, "s2", when="2024-06-06T03:00",
                    bands={"B04": (b04 + 1000, 10), "B08": (b08 + 1000, 10), "SCL": (scl, 20)})
    calls = []

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    f = fields_px([(1, 1, 5, 5), (10, 10, 20, 20)], ids=[7, 3])
    df = field_observations([s2, s1], f, progress=lambda d, t: calls.append((d, t)))
    assert sorted(calls) == [(1, 2), (2, 2)]
    field_observations([s1, s2], f, progress=bar)
    assert bar.n == 2
    assert df["field_id"].tolist() == [7, 7, 3, 3]             # field input order, then time
    assert df["flags"].tolist() == ["OFFSET_INCONSISTENT", "", "OFFSET_INCONSISTENT", ""]
    ds = observations_to_xarray(df)
    assert ds["ndvi"].dims == ("field", "time") and ds.sizes == {"field": 2, "time": 2}
    np.testing.assert_allclose(ds["ndvi"].sel(field=3).values,
                               df[df.field_id == 3]["ndvi"].to_numpy())


def test_bad_arguments_raise_clear_errors(world):
    from cropyield.errors import ConfigError, CropYieldError, MissingCRSError
    from cropyield.observations import field_observations

    _, scene, *_ = world
    f = fields_px([(1, 1, 5, 5)])
    with pytest.raises(CropYieldError, match="unknown index"):
        field_observations([scene], f, indices=("nope",))
    with pytest.raises(ConfigError, match="on_error"):
        field_observations([scene], f, on_error="ignore")
    with pytest.raises(MissingCRSError):
        field_observations([scene], f.set_crs(None, allow_override=True))


def test_stac_items_are_normalised_and_one_row_per_acquisition(s2_world_dir):
    """Real item dicts (tiny world of conftest): overlapping tiles 49SGU/49SGV on 2024-05-01
    and a reprocessed duplicate on 2024-05-11 give one row per field and acquisition."""
    import json

    from cropyield.observations import field_observations

    items = []
    for line in (s2_world_dir / "items.ndjson").read_text().splitlines():
        it = json.loads(line)
        for a in it["assets"].values():
            if not a["href"].startswith("http"):
                a["href"] = str(s2_world_dir / a["href"])
        items.append(it)
    fields = fields_px([(40, 40, 50, 50), (20, 50, 30, 60)], x0=700000.0, y0=3850000.0,
                       epsg=32649)
    df = field_observations(items, fields)
    day = df["time"].dt.tz_convert("UTC").dt.strftime("%Y-%m-%d")
    assert df.groupby(["field_id", day]).size().max() == 1
    assert sorted(day.unique()) == ["2021-06-01", "2024-05-01", "2024-05-06", "2024-05-11"]
    d11 = df[day == "2024-05-11"]
    assert d11["scene_id"].str.contains("20240511_1").all()      # newest processing wins
    ok = df["flags"].map(lambda f: "ALL_MASKED" not in f and "NO_OVERLAP" not in f)
    # B04 0.06, B08 0.35 reflectance in every product (offsets harmonised)
    np.testing.assert_allclose(df.loc[ok, "ndvi"], (0.35 - 0.06) / (0.35 + 0.06), atol=0.01)


def test_asset_grid_disagreeing_with_item_metadata_is_an_error(world):
    import dataclasses

    from cropyield._geo import Grid
    from cropyield.errors import AssetReadError
    from cropyield.observations import field_observations

    _, scene, *_ = world
    b = scene.bands["B08"]
    wrong = Grid(b.grid.crs, b.grid.transform, (600, 640))      # item says 640 columns
    bad = dataclasses.replace(scene, bands={**scene.bands,
                                            "B08": dataclasses.replace(b, grid=wrong)})
    f = fields_px([(10, 10, 20, 20)])
    with pytest.raises(AssetReadError, match="proj:shape / proj:transform"):
        field_observations([bad], f)
    df = field_observations([bad], f, on_error="flag")
    assert df["flags"].iloc[0] == "READ_FAILED"
    assert df.attrs["read_failures"][0]["reason"] == "grid_mismatch"


def test_asset_crs_disagreeing_with_item_metadata_is_an_error(world):
    """Same shape and transform, but the item names another UTM zone than the file: the
    fields would be placed about 600 km off, so the read fails instead."""
    import dataclasses

    from cropyield._geo import Grid
    from cropyield.errors import AssetReadError
    from cropyield.observations import field_observations

    _, scene, *_ = world
    assert {b.grid.crs.to_epsg() for b in scene.bands.values()} == {32650}
    bad = dataclasses.replace(scene, bands={
        name: dataclasses.replace(b, grid=Grid("EPSG:32651", b.grid.transform, b.grid.shape))
        for name, b in scene.bands.items()})
    f = fields_px([(10, 10, 20, 20)], epsg=32651)
    with pytest.raises(AssetReadError, match=r"EPSG:32650 but the item says .*EPSG:32651"):
        field_observations([bad], f)
    df = field_observations([bad], f, on_error="flag")
    assert df["flags"].iloc[0] == "READ_FAILED"
    assert df.attrs["read_failures"][0]["reason"] == "grid_mismatch"


def test_same_crs_compares_codes_then_definitions():
    from pyproj import CRS as PCRS
    from rasterio.crs import CRS as RCRS

    from cropyield.observations._run import _same_crs

    utm50 = PCRS.from_epsg(32650)
    assert _same_crs(RCRS.from_epsg(32650), utm50)
    assert not _same_crs(RCRS.from_epsg(32651), utm50)
    assert _same_crs(None, utm50)                     # a file without CRS: nothing to check
    # a definition without an EPSG code is compared as a definition
    custom = "+proj=tmerc +lat_0=0 +lon_0=117 +k=0.9996 +x_0=500000 +y_0=0 +datum=WGS84"
    assert _same_crs(RCRS.from_proj4(custom), PCRS.from_proj4(custom))
    assert not _same_crs(RCRS.from_proj4(custom.replace("117", "118")), PCRS.from_proj4(custom))


def _mixed_world(tmp_path):
    """600 x 600 px 10 m tile (blocks of 256, partial edge blocks) with 20 m red-edge and
    SWIR bands, SCL with a cloud, a shadow and a no-data swath edge, B04 no-data pixels."""
    rng = np.random.default_rng(7)
    b04 = ramp((600, 600), 21, 300, 1500)
    b04[rng.random((600, 600)) < 0.01] = 0                      # scattered no-data
    b08 = ramp((600, 600), 22, 2000, 5000)
    b05, b8a, b11 = (ramp((300, 300), s, 800, 4000) for s in (23, 24, 25))
    scl = np.full((300, 300), 4, np.uint8)
    scl[40:90, 150:220] = 9                                     # cloud
    scl[100:130, 20:60] = 3                                     # shadow
    scl[:, 280:] = 0                                            # outside the swath
    bands = {"B04": (b04, 10), "B08": (b08, 10), "B05": (b05, 20), "B8A": (b8a, 20),
             "B11": (b11, 20), "SCL": (scl, 20)}
    scene = make_scene(tmp_path, "S2B_T1_20220601", when="2022-06-01T03:10",
                       baseline="05.10", bands=bands)
    geoms = []
    for _ in range(120):                                        # rotated smallholder plots
        cx, cy = rng.uniform(5, 595, 2)
        w, h = rng.uniform(0.3, 25, 2)
        box = shapely.box(-w / 2, -h / 2, w / 2, h / 2)
        box = shapely.affinity.rotate(box, rng.uniform(0, 180))
        geoms.append(shapely.affinity.translate(box, cx, cy))
    holed = shapely.box(250, 250, 270, 270).difference(shapely.box(255, 255, 262, 262))
    geoms += [holed, shapely.MultiPolygon([shapely.box(10, 10, 14, 13),
                                           shapely.box(590, 590, 598, 599)])]
    geoms = [shapely.affinity.affine_transform(g, [10, 0, 0, -10, X0, Y0]) for g in geoms]
    fields = gpd.GeoDataFrame({"field_id": np.arange(len(geoms))}, geometry=geoms,
                              crs=f"EPSG:{EPSG}")
    arrays = {k: v for k, (v, _) in bands.items() if k != "SCL"}
    return scene, fields, arrays, scl


@pytest.mark.parametrize("kw", [{}, {"min_coverage_frac": 0.5, "min_valid_fraction": 0.3}])
def test_streamed_statistics_equal_zonal_stats_with_20m_bands(tmp_path, kw):
    """Block-streamed sums (10 m bands decoded run by run, 20 m bands gathered through the
    2 x 2 nesting) give zonal_stats' numbers and flags on the same arrays, for fused
    built-in indices and for a formula index (the generic path)."""
    from cropyield.indices import register_index, unregister_index, zonal_stats
    from cropyield.observations import field_observations

    scene, fields, arrays, scl = _mixed_world(tmp_path)
    grid = scene.bands["B04"].grid
    register_index("test_re_ratio", "(B8A - B05) / (B8A + B05 + B04)")
    try:
        for indices in (("ndvi", "ndmi", "ndre", "evi2"), ("test_re_ratio", "ndvi")):
            df = field_observations([scene], fields, indices=indices, **kw)
            ref = zonal_stats(arrays, grid, fields, indices=indices, scl=scl, scales=1e-4,
                              offsets=-0.1, nodata=0, **kw)
            a = df.set_index("field_id")
            b = ref.set_index("field_id").loc[a.index]
            assert len(a) >= 118
            np.testing.assert_allclose(a["coverage"], b["coverage"], rtol=1e-12)
            np.testing.assert_allclose(a["valid_fraction"], b["valid_fraction"], rtol=1e-12,
                                       atol=1e-15)
            for n in indices:
                assert np.array_equal(np.isnan(a[n]), np.isnan(b[n])), n
                np.testing.assert_allclose(a[n], b[n], rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(a[f"{n}_std"], b[f"{n}_std"], rtol=1e-9, atol=1e-12)
            assert a["flags"].tolist() == b["flags"].tolist()
            assert {"ALL_MASKED", "NO_OVERLAP"} <= {f for c in a["flags"] for f in
                                                    split_flags(c)}
            assert a["ndvi"].notna().sum() > 80
        # a formula equal to a built-in gives the built-in's numbers (generic vs fused path)
        register_index("ndvi_formula", "(B08 - B04) / (B08 + B04)", valid_range=(-1, 1))
        both = field_observations([scene], fields, indices=("ndvi_formula",), **kw)
        fused = field_observations([scene], fields, indices=("ndvi",), **kw)
        np.testing.assert_allclose(both["ndvi_formula"], fused["ndvi"], rtol=0, atol=1e-14)
        np.testing.assert_allclose(both["ndvi_formula_std"], fused["ndvi_std"], rtol=0,
                                   atol=1e-14)
        assert both["flags"].tolist() == fused["flags"].tolist()
    finally:
        unregister_index("test_re_ratio")
        unregister_index("ndvi_formula")


def test_requests_with_more_bands_than_the_fused_kernels_take_the_generic_path(tmp_path,
                                                                             monkeypatch):
    """Fused kernels unroll at most _FUSED_MAX_BANDS bands of each kind; beyond that the
    generic gather -> index -> accumulate path runs and adds exactly the same terms."""
    import cropyield.observations as obs
    import cropyield.observations._kernels as kernels

    scene, fields, *_ = _mixed_world(tmp_path)
    indices = ("ndvi", "ndmi", "ndre", "evi2")          # 2 window + 3 gathered bands
    fused = obs.field_observations([scene], fields, indices=indices)
    built = len(kernels._FUSED)
    monkeypatch.setattr(kernels, "_FUSED_MAX_BANDS", 2)
    kernels._FUSED.clear()
    generic = obs.field_observations([scene], fields, indices=indices)
    assert built > 0 and len(kernels._FUSED) == 0          # no fused kernel was asked for
    cols = [c for c in fused.columns if c != "flags"]
    pd.testing.assert_frame_equal(fused[cols], generic[cols])
    assert fused["flags"].tolist() == generic["flags"].tolist()


def test_only_coarse_bands_are_gathered_then_reduced_without_windows(tmp_path):
    """An index whose bands are all coarser than the scene's finest grid (here a 10 m SCL
    and 20 m red-edge bands) takes the gathered path with no window to decode; it gives
    zonal_stats' numbers on the same arrays."""
    from cropyield.indices import zonal_stats
    from cropyield.observations import field_observations

    rng = np.random.default_rng(8)
    b05, b8a = ramp((150, 150), 41, 800, 3000), ramp((150, 150), 42, 2000, 5000)
    scl = np.full((300, 300), 4, np.uint8)
    scl[100:160, 30:120] = 8
    scene = make_scene(tmp_path, "S2A_T1_20220701", when="2022-07-01T03:10",
                       baseline="05.10",
                       bands={"B05": (b05, 20), "B8A": (b8a, 20), "SCL": (scl, 10)})
    boxes = [(float(c), float(r), c + float(w), r + float(h)) for c, r, w, h in
             zip(rng.uniform(0, 280, 40), rng.uniform(0, 280, 40), rng.uniform(0.5, 15, 40),
                 rng.uniform(0.5, 15, 40))]
    fields = fields_px(boxes)
    df = field_observations([scene], fields, indices=("ndre",)).set_index("field_id")
    ref = zonal_stats({"B05": b05, "B8A": b8a}, scene.bands["SCL"].grid, fields,
                      indices=("ndre",), scl=scl, scales=1e-4, offsets=-0.1)
    ref = ref.set_index("field_id").loc[df.index]
    assert df["ndre"].notna().sum() > 25
    np.testing.assert_allclose(df["ndre"], ref["ndre"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(df["ndre_std"], ref["ndre_std"], rtol=0, atol=1e-12)
    assert df["flags"].tolist() == ref["flags"].tolist()
    assert df.attrs["blocks_read"] >= 3          # SCL + the two 20 m bands, nothing else


def test_take_builds_string_columns_as_pandas_would():
    """Repeated ids/tiles are expanded in Arrow to the dtype pandas gives str objects (with
    pandas 3, converting 480 000 Python strings in the DataFrame constructor took ~50 ms
    per column)."""
    from cropyield.observations._table import _take

    vals = np.array(["S2A_a", "S2B_b", "S2A_c"], dtype=object)
    idx = np.array([2, 0, 0, 1, 2])
    out = _take(vals, idx)
    ref = pd.DataFrame({"s": vals[idx]})["s"]
    got = pd.DataFrame({"s": out})["s"]
    assert got.dtype == ref.dtype
    assert got.tolist() == ref.tolist() == ["S2A_c", "S2A_a", "S2A_a", "S2B_b", "S2A_c"]
    if isinstance(ref.dtype, pd.StringDtype) and ref.dtype.storage == "pyarrow":
        assert isinstance(out, pd.Series)               # the Arrow path was taken
    ints = np.arange(5) * 7
    assert np.array_equal(_take(ints, idx), ints[idx])
    mixed = np.array(["a", 3], dtype=object)
    assert _take(mixed, np.array([1, 0])).tolist() == [3, "a"]
