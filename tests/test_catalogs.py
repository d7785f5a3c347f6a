"""Item normalisation on real Earth Search / Planetary Computer responses, and scene search
against a real STAC API (rustac) on 127.0.0.1."""

from __future__ import annotations

import copy
import functools
import json
import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely.geometry as sg
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TINY_EPSG, load_stac_fixture
from cropyield import errors
from cropyield.catalogs import (
    CANONICAL_BANDS,
    PlanetaryComputerSigner,
    Scene,
    Scenes,
    _aoi_to_query,
    _dedupe,
    _parse_when,
    baseline_offset,
    normalize_item,
    search_scenes,
)
from cropyield.errors import (
    CatalogError,
    ConfigError,
    MissingCRSError,
    NoScenesError,
    OffsetInconsistentWarning,
    UnknownCollectionError,
)

ES = "earthsearch_v1_cql2_filter_search_2.response.json"
ES_MULTI = "earthsearch_v1_multi_collection_search_0.response.json"
PC = "pc_s2l2a_datetime_search_0.response.json"


def _features(name, collection=None):
    feats = load_stac_fixture(name)["features"]
    return [f for f in feats if collection is None or f["collection"] == collection]


# ---------------------------------------------------------------- real fixtures


def test_earth_search_l2a_fixture():
    item = _features(ES, "sentinel-2-l2a")[0]
    s = normalize_item(item)
    assert s.id == "S2B_24MVV_20250731_0_L2A" and s.collection == "sentinel-2-l2a"
    assert set(s.bands) == set(CANONICAL_BANDS)
    assert s.tile == "24MVV" and s.platform == "sentinel-2b"
    assert s.processing_baseline == "05.11" and s.cloud_cover == pytest.approx(34.760532)
    assert s.datetime == pd.Timestamp("2025-07-31T13:03:25.899Z") and str(s.datetime.tz) == "UTC"
    assert s.offset_source == "raster:bands" and s.flags == ()
    b04, b11, scl = s.bands["B04"], s.bands["B11"], s.bands["SCL"]
    assert b04.href == item["assets"]["red"]["href"] and b04.href.endswith("/B04.tif")
    assert b04.asset_key == "red" and s.bands["B8A"].asset_key == "nir08"
    assert (b04.scale, b04.offset, b04.nodata, b04.dtype) == (1e-4, -0.1, 0.0, "uint16")
    assert b04.resolution == 10 and b04.grid.shape == (10980, 10980)
    assert b04.grid.epsg == 32724 and tuple(b04.grid.transform)[:6] == (10, 0, 399960, 0, -10, 9500020)
    assert b11.resolution == 20 and b11.grid.shape == (5490, 5490)
    assert (scl.scale, scl.offset, scl.dtype) == (1.0, 0.0, "uint8")
    # jp2 twins, visual and thumbnails are ignored: every href is an https COG
    assert all(b.href.startswith("https://") and b.href.endswith(".tif") for b in s.bands.values())
    assert s.crs.to_epsg() == 32724 and s.grid(20) == b11.grid
    # the 10 m and 20 m grids nest: same origin
    assert b04.grid.transform.c == b11.grid.transform.c and b04.grid.bounds == b11.grid.bounds


def test_earth_search_c1_and_2023_fixtures():
    c1 = [normalize_item(f) for f in _features(ES, "sentinel-2-c1-l2a")]
    assert len(c1) == 3
    for s in c1:
        assert s.collection == "sentinel-2-c1-l2a" and set(s.bands) == set(CANONICAL_BANDS)
        assert s.offset_source == "raster:bands" and s.bands["B08"].offset == -0.1
        assert s.tile.startswith("24M") and s.bands["B02"].href.endswith("/B02.tif")
    assert {s.tile for s in c1} == {"24MWV", "24MXV", "24MUA"}
    s = normalize_item(_features(ES_MULTI, "sentinel-2-l2a")[0])
    assert (s.tile, s.processing_baseline, s.offset_source) == ("13TDE", "05.09", "raster:bands")
    assert s.bands["B04"].offset == -0.1 and s.bands["B04"].grid.epsg == 32613


def test_unknown_collections_raise():
    for item in _features(ES, "sentinel-2-l1c") + _features(ES_MULTI, "landsat-c2-l2"):
        with pytest.raises(UnknownCollectionError, match="supported: .*sentinel-2-l2a"):
            normalize_item(item)
    assert issubclass(UnknownCollectionError, errors.CropYieldError)


def test_planetary_computer_fixture_baseline_rule():
    scenes = Scenes.from_items(_features(PC))
    assert len(scenes) == 33
    for s in scenes:
        assert s.processing_baseline == "02.12" and s.offset_source == "baseline"
        assert set(s.bands) == set(CANONICAL_BANDS)
        assert all(b.offset == 0.0 for n, b in s.bands.items())
        assert s.bands["B04"].scale == 1e-4 and s.platform == "sentinel-2a"
        assert "?" not in s.bands["B04"].href
    s = next(x for x in scenes if x.tile == "60VUK")
    assert s.bands["B8A"].grid.shape == (5490, 5490) and s.bands["B02"].resolution == 10
    assert s.bands["SCL"].grid.transform.a == 20 and s.crs.to_epsg() == 32660


def test_planetary_computer_2024_gets_offset_from_baseline():
    """A PC item of 2024 (baseline >= 04.00, no raster:bands) must get -0.1."""
    item = copy.deepcopy(_features(PC)[0])
    item["properties"]["datetime"] = "2024-06-01T03:05:11.024Z"
    item["properties"]["s2:processing_baseline"] = "05.10"
    assert not any("raster:bands" in a for a in item["assets"].values())
    s = normalize_item(item)
    assert s.offset_source == "baseline" and s.processing_baseline == "05.10"
    assert {b.offset for n, b in s.bands.items() if n != "SCL"} == {-0.1}
    assert s.bands["SCL"].offset == 0.0 and s.flags == ()
    # reflectance of DN 2000 is 0.1 (not 0.2)
    b = s.bands["B04"]
    assert 2000 * b.scale + b.offset == pytest.approx(0.1)


def test_baseline_from_product_uri_when_property_missing():
    item = copy.deepcopy(_features(PC)[0])
    del item["properties"]["s2:processing_baseline"]
    item["properties"]["s2:product_uri"] = "S2A_MSIL2A_20240101T000001_N0510_R116_T60VUK_x.SAFE"
    s = normalize_item(item)
    assert s.processing_baseline == "05.10" and s.bands["B03"].offset == -0.1
    for key in ("s2:product_uri", "s2:granule_id", "s2:datatake_id", "s2:datastrip_id"):
        item["properties"].pop(key, None)
    s = normalize_item(item)
    # no baseline anywhere: the rule follows the acquisition date (2019: no offset)
    assert s.processing_baseline is None and s.offset_source == "acquisition_date"
    assert s.bands["B03"].offset == 0.0
    assert s.bands["B03"].offset == 0.0


@pytest.mark.parametrize("baseline, expected", [("02.12", 0.0), ("03.01", 0.0), ("04.00", -0.1),
                                                ("05.11", -0.1), (4, -0.1), (None, None),
                                                ("n/a", None)])
def test_baseline_offset_rule(baseline, expected):
    assert baseline_offset(baseline) == expected


def test_offset_inconsistent_is_flagged_and_warned():
    item = copy.deepcopy(_features(ES, "sentinel-2-l2a")[0])
    item["properties"]["s2:processing_baseline"] = "03.01"  # says 0, raster:bands says -0.1
    with pytest.warns(OffsetInconsistentWarning, match="baseline 03.01"):
        s = normalize_item(item)
    assert s.flags == ("OFFSET_INCONSISTENT",) and "OFFSET_INCONSISTENT" in errors.FLAGS
    assert s.offset_source == "raster:bands" and s.bands["B04"].offset == -0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s2 = normalize_item(item, warn=False)  # flag without the warning
    assert s2.flags == ("OFFSET_INCONSISTENT",)
    # PC item of 2024 whose raster:bands (wrongly) say offset 0
    pc = copy.deepcopy(_features(PC)[0])
    pc["properties"]["s2:processing_baseline"] = "05.10"
    for k, a in pc["assets"].items():
        if k.startswith("B"):
            a["raster:bands"] = [{"nodata": 0, "scale": 0.0001, "offset": 0}]
    with pytest.warns(OffsetInconsistentWarning):
        s = normalize_item(pc)
    assert s.flags == ("OFFSET_INCONSISTENT",) and s.bands["B04"].offset == 0.0


def test_offset_override():
    item = _features(PC)[0]
    s = normalize_item(item, offset_override=-0.1)
    assert s.offset_source == "override" and s.bands["B05"].offset == -0.1
    assert s.bands["SCL"].offset == 0.0
    s = normalize_item(item, offset_override={b: -0.05 for b in CANONICAL_BANDS})
    assert s.bands["B12"].offset == -0.05
    s = normalize_item(item, offset_override={"B04": -0.1})  # only the bands named
    assert s.offset_source == "override"
    assert (s.bands["B04"].offset, s.bands["B08"].offset) == (-0.1, 0.0)


def test_stac_11_bands_field_and_grid_fallbacks(tmp_path):
    item = copy.deepcopy(_features(PC)[0])
    ref = normalize_item(item)
    for a in item["assets"].values():
        a.pop("proj:transform", None)
        a.pop("proj:shape", None)
    s = normalize_item(item)  # from proj:bbox + gsd
    assert all(s.bands[n].grid == ref.bands[n].grid for n in CANONICAL_BANDS)
    # STAC 1.1 "bands" with raster:scale / raster:offset
    es = copy.deepcopy(_features(ES, "sentinel-2-l2a")[0])
    for a in es["assets"].values():
        rb = a.pop("raster:bands", None)
        if rb:
            b = {"nodata": rb[0]["nodata"], "data_type": rb[0]["data_type"]}
            if "scale" in rb[0]:
                b.update({"raster:scale": rb[0]["scale"], "raster:offset": rb[0]["offset"]})
            a["bands"] = [b]
    s = normalize_item(es)
    assert s.offset_source == "raster:bands" and s.bands["B02"].offset == -0.1
    assert s.bands["SCL"].dtype == "uint8"
    # no projection metadata at all on a remote href: clear error
    for a in item["assets"].values():
        a.pop("proj:bbox", None)
    with pytest.raises(CatalogError, match="projection metadata"):
        normalize_item(item)


def test_local_hrefs_and_grid_from_file(s2_world_dir):
    import pystac
    import rasterio

    items = [json.loads(line) for line in (s2_world_dir / "items.ndjson").read_text().splitlines()]
    # relative hrefs resolve against the item's self link (a local file)
    for it in items:
        it["links"] = [{"rel": "self", "href": str(s2_world_dir / "items" / f"{it['id']}.json")}]
        for a in it["assets"].values():
            if not a["href"].startswith("https://"):
                a["href"] = "../" + a["href"]
    scenes = Scenes.from_items(items)
    b = scenes[0].bands["B04"]
    assert b.href.startswith(str(s2_world_dir)) and b.href.endswith("B04.tif")
    with rasterio.open(b.href) as ds:
        assert ds.transform == b.grid.transform and (ds.height, ds.width) == b.grid.shape
    # no proj metadata: the local file's own header gives the grid
    it = copy.deepcopy(items[0])
    for a in it["assets"].values():
        for k in ("proj:transform", "proj:shape"):
            a.pop(k, None)
    it["properties"].pop("proj:epsg")
    assert normalize_item(it).bands["B11"].grid == normalize_item(items[0]).bands["B11"].grid
    # pystac Items and an ItemCollection give the same scenes as dicts
    coll = pystac.ItemCollection.from_file(str(s2_world_dir / "items.json"))
    from_items = Scenes.from_items(coll)
    from_dicts = Scenes.from_items(json.loads((s2_world_dir / "items.json").read_text()))
    assert [s.id for s in from_items] == [s.id for s in from_dicts]
    assert [s.bands for s in from_items][0].keys() == {"B04", "B08", "B11", "SCL"}
    assert isinstance(from_items[0].item, pystac.Item)


def test_signed_hrefs_are_stripped():
    item = copy.deepcopy(_features(PC)[0])
    href = item["assets"]["B04"]["href"]
    item["assets"]["B04"]["href"] = href + "?st=2024-01-01T00%3A00%3A00Z&se=2024-01-02T00%3A00%3A00Z" \
                                           "&sp=rl&sv=2021-06-08&sr=c&skoid=abc&sig=SECRETSIG"
    s = normalize_item(item)
    assert s.bands["B04"].href == href


def test_tile_and_platform_variants():
    base = copy.deepcopy(_features(ES, "sentinel-2-l2a")[0])
    p = base["properties"]
    for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square"):
        p.pop(k)
    assert normalize_item(base).tile == "24MVV"          # grid:code
    p.pop("grid:code")
    assert normalize_item(base).tile == "24MVV"          # id
    p["s2:mgrs_tile"] = "T5VNK"
    assert normalize_item(base).tile == "05VNK"          # zero-padded zone
    p.pop("s2:mgrs_tile")
    base["id"] = "no-tile-here"
    with pytest.raises(CatalogError, match="MGRS tile"):
        normalize_item(base)
    pc = _features(PC)[0]
    assert normalize_item(pc).platform == "sentinel-2a"  # "Sentinel-2A"


def test_malformed_items():
    item = copy.deepcopy(_features(PC)[0])
    item["properties"].pop("datetime")
    with pytest.raises(CatalogError, match="no datetime"):
        normalize_item(item)
    with pytest.raises(CatalogError, match="not a STAC item"):
        normalize_item({"type": "Collection", "id": "x"})
    with pytest.raises(CatalogError, match="cannot normalise"):
        normalize_item(42)
    item = copy.deepcopy(_features(PC)[0])
    item["assets"] = {"visual": item["assets"]["visual"]}
    with pytest.raises(UnknownCollectionError, match="none of the Sentinel-2 L2A asset keys"):
        normalize_item(item)


def test_scenes_container():
    scenes = Scenes.from_items(_features(PC)[:5], lineage={"x": 1})
    assert len(scenes) == 5 and isinstance(scenes[0], Scene)
    assert list(scenes) == sorted(scenes, key=lambda s: (s.datetime, s.tile, s.id))
    sub = scenes[1:3]
    assert isinstance(sub, Scenes) and len(sub) == 2 and sub.lineage == {"x": 1}
    df = scenes.to_dataframe()
    assert list(df.scene_id) == [s.id for s in scenes] and (df.offset_source == "baseline").all()
    assert Scenes([]).to_dataframe().empty
    assert len(scenes.filter(lambda s: s.tile == "60VUK")) == 1
    assert scenes.sign("https://x/y.tif") == "https://x/y.tif"
    signed = Scenes(scenes, signer=lambda h: h + "?sig=1")
    assert signed.sign("https://x/y.tif") == "https://x/y.tif?sig=1" and signed[:1].signer


def test_pc_signer_needs_pc_extra():
    try:
        import planetary_computer  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"cropyield\[pc\]"):
            PlanetaryComputerSigner()("https://x.blob.core.windows.net/c/a.tif")
    else:  # pragma: no cover - depends on the environment
        pytest.skip("planetary_computer installed; network needed to sign")


# ---------------------------------------------------------------- de-duplication


@functools.lru_cache(maxsize=1)
def _template() -> Scene:
    return normalize_item(_features(PC)[0])


def _scene(i, tile, t, baseline, gen, seq):
    s = _template()
    props = dict(s.properties, **{"s2:generation_time": gen, "s2:sequence": str(seq)})
    return Scene(id=f"S{i}", datetime=t, collection="sentinel-2-l2a", tile=tile,
                 platform="sentinel-2a", processing_baseline=baseline, cloud_cover=1.0,
                 bands=s.bands, offset_source="baseline", properties=props)


def test_dedupe_keeps_newest_processing():
    t = pd.Timestamp("2024-05-11T03:15:20Z")
    a = _scene(1, "49SGU", t, "05.09", "2024-09-01T00:00:00Z", 1)
    b = _scene(2, "49SGU", t + pd.Timedelta(seconds=2), "05.10", "2024-05-11T06:00:00Z", 0)
    c = _scene(3, "49SGU", t, "05.10", "2024-09-02T00:00:00Z", 0)
    d = _scene(4, "49SGU", t, "05.10", "2024-09-02T00:00:00Z", 1)
    e = _scene(5, "49SGV", t, "05.09", "2024-05-11T06:00:00Z", 0)  # other tile: kept
    f = _scene(6, "49SGU", t + pd.Timedelta(days=5), "05.09", "2024-05-16T06:00:00Z", 0)
    kept, dropped = _dedupe([a, b, c, d, e, f])
    assert {s.id for s in kept} == {"S4", "S5", "S6"}
    assert dropped == {"S1": "S4", "S2": "S4", "S3": "S4"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["49SGU", "49SGV"]), st.integers(0, 3),
                          st.sampled_from(["04.00", "05.09", "05.10"]), st.integers(0, 5),
                          st.integers(0, 2)), min_size=1, max_size=12),
       st.randoms(use_true_random=False))
def test_dedupe_properties(specs, rnd):
    t0 = pd.Timestamp("2024-05-01T03:15:20Z")
    scenes = [_scene(i, tile, t0 + pd.Timedelta(days=5 * day), bl,
                     f"2024-06-0{gen + 1}T00:00:00Z", seq)
              for i, (tile, day, bl, gen, seq) in enumerate(specs)]
    kept, dropped = _dedupe(scenes)
    keys = {(s.tile, s.datetime) for s in scenes}
    assert len(kept) == len(keys) and {(s.tile, s.datetime) for s in kept} == keys
    assert len(kept) + len(dropped) == len(scenes)
    for s in scenes:  # the kept scene of each group has the highest baseline
        k = next(x for x in kept if (x.tile, x.datetime) == (s.tile, s.datetime))
        assert float(k.processing_baseline) >= float(s.processing_baseline)
    shuffled = list(scenes)
    rnd.shuffle(shuffled)
    assert {s.id for s in _dedupe(shuffled)[0]} == {s.id for s in kept}  # order-independent


# ---------------------------------------------------------------- AOI and dates


def test_aoi_forms():
    fields = gpd.GeoDataFrame(
        {"field_id": ["a", "b"]},
        geometry=[sg.box(700050, 3849700, 700150, 3849800), sg.box(700200, 3849900, 700260, 3849960)],
        crs=TINY_EPSG,
    )
    q = _aoi_to_query(fields)
    lon0, lat0, lon1, lat1 = sg.shape(q["intersects"]).bounds
    expect = fields.to_crs(4326).total_bounds
    np.testing.assert_allclose([lon0, lat0, lon1, lat1], expect, atol=1e-9)
    assert 113 < lon0 < 114 and 34 < lat0 < 35
    q2 = _aoi_to_query((fields.geometry.iloc[0], f"EPSG:{TINY_EPSG}"))
    np.testing.assert_allclose(sg.shape(q2["intersects"]).bounds,
                               fields.iloc[:1].to_crs(4326).total_bounds, atol=1e-9)
    assert _aoi_to_query(fields.geometry)["intersects"] == q["intersects"]
    assert _aoi_to_query((113.1, 34.7, 113.3, 34.9)) == {"bbox": [113.1, 34.7, 113.3, 34.9]}
    with pytest.raises(MissingCRSError, match="set_crs"):
        _aoi_to_query(fields.set_crs(None, allow_override=True))
    with pytest.raises(MissingCRSError, match=r"\(geometry, crs\)"):
        _aoi_to_query(sg.box(0, 0, 1, 1))
    with pytest.raises(ConfigError, match="outside lon"):
        _aoi_to_query((700000, 3849000, 701000, 3850000))  # UTM numbers given as a bbox
    with pytest.raises(ConfigError, match="min > max"):
        _aoi_to_query((114, 35, 113, 34))
    with pytest.raises(ConfigError, match="empty"):
        _aoi_to_query(fields.iloc[:0])
    with pytest.raises(ConfigError, match="cannot use"):
        _aoi_to_query("Henan")


def test_dates():
    assert _parse_when("2024-05-01", end=False) == pd.Timestamp("2024-05-01T00:00Z")
    assert _parse_when("2024-05-31", end=True) == pd.Timestamp("2024-05-31T23:59:59.999Z")
    import datetime as dt

    assert _parse_when(dt.date(2024, 5, 31), end=True) == pd.Timestamp("2024-05-31T23:59:59.999Z")
    assert _parse_when("2024-05-31T12:00", end=True) == pd.Timestamp("2024-05-31T12:00Z")
    assert _parse_when(pd.Timestamp("2024-05-01T08:00+08:00"), end=False) == \
        pd.Timestamp("2024-05-01T00:00Z")
    with pytest.raises(ConfigError):
        _parse_when("not a date", end=False)


# ---------------------------------------------------------------- search on a real STAC API

BBOX = (113.0, 34.0, 115.0, 35.5)


def test_search_bbox_datetime_dedupe_lineage(served_s2_world):
    srv = served_s2_world
    scenes = search_scenes(BBOX, "2024-05-01", "2024-05-31", catalog=srv.stac_url)
    assert [s.id for s in scenes] == ["S2B_49SGU_20240501_0_L2A", "S2B_49SGV_20240501_0_L2A",
                                      "S2B_49SGU_20240506_0_L2A", "S2B_49SGU_20240511_1_L2A"]
    lin = scenes.lineage
    assert lin["n_matched"] == 5 and lin["duplicates"] == ["S2B_49SGU_20240511_0_L2A"]
    assert lin["duplicate_of"] == {"S2B_49SGU_20240511_0_L2A": "S2B_49SGU_20240511_1_L2A"}
    assert lin["catalog"] == srv.stac_url and lin["collection"] == "sentinel-2-l2a"
    assert lin["query"]["datetime"] == "2024-05-01T00:00:00.000Z/2024-05-31T23:59:59.999Z"
    assert scenes.signer is None
    assert all(b.href.startswith(srv.cog_url) for s in scenes for b in s.bands.values())


def test_search_reflectance_end_to_end(served_s2_world):
    """hrefs, grids and offsets found by the search give the true reflectance (B04 = 0.06) for
    products before and after baseline 04.00."""
    import rasterio

    scenes = search_scenes(BBOX, "2021-01-01", "2024-12-31", catalog=served_s2_world.stac_url)
    assert {s.processing_baseline for s in scenes} == {"03.00", "05.10"}
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        for s in scenes:
            b = s.bands["B04"]
            with rasterio.open(b.href) as ds:
                dn = ds.read(1).astype(float)
                assert ds.transform == b.grid.transform and ds.crs == b.grid.crs
            refl = dn[dn != b.nodata] * b.scale + b.offset
            assert refl.mean() == pytest.approx(0.06, abs=0.002), s.id


def test_search_geodataframe_intersects(served_s2_world):
    fields = gpd.GeoDataFrame({"field_id": ["a"]},
                              geometry=[sg.box(700050, 3849700, 700150, 3849800)], crs=TINY_EPSG)
    scenes = search_scenes(fields, "2024-05-01", "2024-05-31", catalog=served_s2_world.stac_url)
    assert {s.tile for s in scenes} == {"49SGU"}  # the field is outside the other tile
    far = gpd.GeoDataFrame({"field_id": ["z"]}, geometry=[sg.Point(120, 30).buffer(0.01)], crs=4326)
    with pytest.raises(NoScenesError, match="AOI bounds"):
        search_scenes(far, "2024-05-01", "2024-05-31", catalog=served_s2_world.stac_url)


def test_max_cloud_client_side_and_rustac_query_trap(served_s2_world):
    from pystac_client import Client

    url = served_s2_world.stac_url
    scenes = search_scenes(BBOX, "2024-05-01", "2024-05-31", catalog=url, max_cloud=20)
    assert [s.cloud_cover for s in scenes] == [5.0, 12.0, 18.0]
    assert scenes.lineage["server_filter"] is None and scenes.lineage["n_cloud_filtered"] == 1
    # what would happen if `query` were sent: rustac's memory backend returns nothing
    client = Client.open(url, timeout=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sent = list(client.search(collections=["sentinel-2-l2a"], bbox=list(BBOX),
                                  query={"eo:cloud_cover": {"lte": 20}}).items())
        plain = list(client.search(collections=["sentinel-2-l2a"], bbox=list(BBOX)).items())
    assert sent == [] and len(plain) == 6


def test_server_filter_sent_only_when_advertised(s2_world_dir):
    from pystac_client import Client

    from cropyield.servers import serve_stac

    with serve_stac(s2_world_dir / "collection.json", s2_world_dir / "items.ndjson") as (_, px):
        client = Client.open(px.url, timeout=10)
        search_scenes(BBOX, "2024-05-01", "2024-05-31", client=client, max_cloud=20)
        px.wait_idle()
        bodies = [json.loads(r.body) for r in px.requests if r.path == "/search"]
        assert bodies and not any("query" in b or "filter" in b for b in bodies)
        client.add_conforms_to("FILTER")  # a server that advertises CQL2 filter
        px.reset_log()
        with pytest.raises(NoScenesError):  # ... and rustac then (wrongly) returns nothing
            search_scenes(BBOX, "2024-05-01", "2024-05-31", client=client, max_cloud=20)
        px.wait_idle()
        body = json.loads(next(r.body for r in px.requests if r.path == "/search"))
        assert body["filter"] == {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 20.0]}
        assert body["filter-lang"] == "cql2-json"


def test_max_items_and_errors(served_s2_world):
    url = served_s2_world.stac_url
    scenes = search_scenes(BBOX, "2021-01-01", "2024-12-31", catalog=url, max_items=2, limit=1)
    assert scenes.lineage["n_matched"] == 2 and len(scenes) == 2
    with pytest.raises(NoScenesError, match=r"2019-01-01T00:00:00.000Z/2019-12-31.*max_cloud"):
        search_scenes(BBOX, "2019-01-01", "2019-12-31", catalog=url)
    with pytest.raises(UnknownCollectionError, match="sentinel-2-l1c"):
        search_scenes(BBOX, "2024-05-01", "2024-05-31", catalog=url, collection="sentinel-2-l1c")
    with pytest.raises(ConfigError, match="unknown catalog"):
        search_scenes(BBOX, "2024-05-01", "2024-05-31", catalog="earthsearch")
    with pytest.raises(ConfigError, match="after end"):
        search_scenes(BBOX, "2024-06-01", "2024-05-31", catalog=url)
    with pytest.raises(ConfigError, match="max_cloud"):
        search_scenes(BBOX, "2024-05-01", "2024-05-31", catalog=url, max_cloud=120)


def test_planetary_computer_catalog_has_signer(monkeypatch):
    from cropyield import catalogs

    client, url, coll, signer = catalogs._resolve_catalog("planetary-computer", None, None)
    assert url == "https://planetarycomputer.microsoft.com/api/stac/v1"
    assert coll == "sentinel-2-l2a" and isinstance(signer, PlanetaryComputerSigner)
    assert catalogs._resolve_catalog("earth-search", None, "sentinel-2-c1-l2a")[2:] == \
        ("sentinel-2-c1-l2a", None)


def test_pc_signer_refresh_clears_token_cache(monkeypatch):
    """The signer delegates to planetary_computer.sign and drops cached SAS tokens on refresh
    (an in-memory stand-in for the package: tests never reach the network)."""
    import sys
    import types

    calls = []
    cache = {"sentinel2l2a01/sentinel2-l2": "old-token"}
    fake = types.ModuleType("planetary_computer")
    fake.sas = types.SimpleNamespace(TOKEN_CACHE=cache)

    def sign(href):
        calls.append(href)
        token = cache.setdefault("sentinel2l2a01/sentinel2-l2", f"new-token-{len(calls)}")
        return f"{href}?se=2030-01-01T00%3A00%3A00Z&sig={token}"

    fake.sign = sign
    monkeypatch.setitem(sys.modules, "planetary_computer", fake)
    signer = PlanetaryComputerSigner()
    href = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/a/B04.tif"
    assert signer(href).endswith("sig=old-token")
    assert signer(href, refresh=True).endswith("sig=new-token-2")
    assert calls == [href, href]


@settings(max_examples=80, deadline=None)
@given(baseline=st.floats(0.0, 9.99).map(lambda b: f"{b:05.2f}"),
       meta=st.sampled_from([None, 0.0, -0.1]),
       pc_layout=st.booleans())
def test_offset_rules_property(baseline, meta, pc_layout):
    item = copy.deepcopy(_features(PC)[0] if pc_layout else _features(ES, "sentinel-2-l2a")[0])
    item["properties"]["s2:processing_baseline"] = baseline
    for a in item["assets"].values():
        for rb in a.get("raster:bands", []):
            rb.pop("offset", None)
            if meta is not None and "scale" in rb:
                rb["offset"] = meta
        if pc_layout and meta is not None and "proj:shape" in a:
            a["raster:bands"] = [{"nodata": 0, "scale": 0.0001, "offset": meta}]
    rule = -0.1 if float(baseline) >= 4.0 else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OffsetInconsistentWarning)
        s = normalize_item(item)
    refl = [b for n, b in s.bands.items() if n != "SCL"]
    if meta is None:
        assert s.offset_source == "baseline" and all(b.offset == rule for b in refl)
    else:
        assert s.offset_source == "raster:bands" and all(b.offset == meta for b in refl)
    assert ("OFFSET_INCONSISTENT" in s.flags) == (meta is not None and meta != rule)
    assert s.bands["SCL"].offset == 0.0 and s.bands["SCL"].scale == 1.0


def test_search_with_client_as_catalog(served_s2_world):
    from pystac_client import Client

    client = Client.open(served_s2_world.stac_url, timeout=10)
    scenes = search_scenes(BBOX, "2024-05-01", "2024-05-31", catalog=client)
    assert len(scenes) == 4 and scenes.lineage["catalog"].startswith(served_s2_world.stac_url)
