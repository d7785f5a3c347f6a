"""Issue 18, the pixel half: every field comes out of ``field_observations`` (broken
geometries, fields outside every scene, fields half outside a grid or split between two
tiles), saturated and out-of-range pixels never enter the means, offsets inferred from the
acquisition date or detected from the data, wrong ``proj:epsg`` never drops a scene, reads
have a total deadline, and chunks that split an acquisition are merged without duplicates.

Small hand-made scenes (``tests/test_read.py``'s helpers) and the tiny world of
``tests/conftest.py``; servers are real (127.0.0.1)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from test_read import EPSG, X0, Y0, ensure_indices, make_scene, ramp

from cropyield.errors import FLAGS, split_flags

ensure_indices()


def _scene(root, sid="S1", when="2024-06-01T03:00", b04=None, b08=None, **kw):
    b04 = ramp((64, 64), 1, 1300, 2500) if b04 is None else b04
    b08 = ramp((64, 64), 2, 3000, 6000) if b08 is None else b08
    scl = np.full((32, 32), 4, np.uint8)
    return make_scene(root, sid, when=when,
                      bands={"B04": (b04, 10), "B08": (b08, 10), "SCL": (scl, 20)}, **kw)


def _fields(geoms, ids=None):
    ids = ids or [f"f{i}" for i in range(len(geoms))]
    return gpd.GeoDataFrame({"field_id": ids}, geometry=geoms, crs=f"EPSG:{EPSG}")


def _tiny_items(world_dir, day=None):
    """The tiny world's STAC item dicts with absolute hrefs (``day``: ``YYYYMMDD`` filter)."""
    import json

    items = []
    for line in (world_dir / "items.ndjson").read_text().splitlines():
        it = json.loads(line)
        if day is not None and it["properties"]["datetime"][:10].replace("-", "") != day:
            continue
        for a in it["assets"].values():
            if not a["href"].startswith("http"):
                a["href"] = str(world_dir / a["href"])
        items.append(it)
    return items


# ---------------------------------------------------------------------------- lost fields
def test_broken_geometries_get_invalid_geometry_rows_on_every_date(tmp_path):
    from cropyield.observations import field_observations

    s1 = _scene(tmp_path, "S1", "2024-06-01T03:00")
    s2 = _scene(tmp_path, "S2", "2024-06-06T03:00")
    good = shapely.box(X0 + 50, Y0 - 200, X0 + 150, Y0 - 100)
    bowtie = shapely.Polygon([(X0 + 100, Y0 - 100), (X0 + 200, Y0 - 200),
                              (X0 + 200, Y0 - 100), (X0 + 100, Y0 - 200)])
    with np.errstate(invalid="ignore"):
        nan_vertex = shapely.Polygon([(X0 + 100, Y0 - 100), (np.nan, Y0 - 200),
                                      (X0 + 200, Y0 - 100)])
    inf_vertex = shapely.Polygon([(X0 + 100, Y0 - 100), (np.inf, Y0 - 200),
                                  (X0 + 200, Y0 - 100)])
    geoms = [good, bowtie, shapely.Polygon(), shapely.Point(X0 + 100, Y0 - 100),
             shapely.LineString([(X0 + 10, Y0 - 10), (X0 + 100, Y0 - 100)]), nan_vertex,
             inf_vertex]
    fields = _fields(geoms, ["good", "bowtie", "empty", "point", "line", "nan", "inf"])
    df = field_observations([s1, s2], fields)
    assert len(df) == 2 * len(fields)                       # one row per field and date
    assert df.groupby("field_id").size().eq(2).all()
    bad = df[df.field_id != "good"]
    assert bad["flags"].eq("INVALID_GEOMETRY").all()
    assert bad["ndvi"].isna().all() and bad["covered_fraction"].isna().all()
    assert df[df.field_id == "good"]["ndvi"].notna().all()
    # input order is kept
    assert list(df["field_id"].drop_duplicates()) == list(fields["field_id"])


def test_field_outside_every_scene_gets_no_overlap_rows(tmp_path):
    from cropyield.observations import field_observations

    s1 = _scene(tmp_path)
    fields = _fields([shapely.box(X0 + 50, Y0 - 200, X0 + 150, Y0 - 100),
                      shapely.box(X0 + 5000, Y0 - 5000, X0 + 5100, Y0 - 4900)])
    df = field_observations([s1], fields).set_index("field_id")
    assert df.loc["f1", "flags"] == "NO_OVERLAP"
    assert np.isnan(df.loc["f1", "ndvi"]) and df.loc["f1", "covered_fraction"] == 0.0
    assert df.loc["f1", "scene_id"] == "S1"


def test_field_half_outside_the_grid_reports_covered_fraction_and_flag(tmp_path):
    from cropyield.observations import field_observations

    s1 = _scene(tmp_path)                                   # 64 x 64 px of 10 m
    fields = _fields([shapely.box(X0 + 50, Y0 - 200, X0 + 150, Y0 - 100),
                      shapely.box(X0 + 590, Y0 - 200, X0 + 690, Y0 - 100)])
    df = field_observations([s1], fields).set_index("field_id")
    assert df.loc["f1", "coverage"] == pytest.approx(50.0)
    assert df.loc["f1", "covered_fraction"] == pytest.approx(0.5)
    assert "PARTIAL_COVERAGE" in split_flags(df.loc["f1", "flags"])
    assert df.loc["f0", "covered_fraction"] == pytest.approx(1.0)
    assert "PARTIAL_COVERAGE" not in split_flags(df.loc["f0", "flags"])
    assert "PARTIAL_COVERAGE" in FLAGS


def test_field_split_between_two_tiles_of_one_acquisition_is_flagged(s2_world_dir):
    from conftest import TINY_TILES

    from cropyield.catalogs import normalize_item
    from cropyield.observations import field_observations

    scenes = [normalize_item(it) for it in _tiny_items(s2_world_dir, "20240501")]
    assert {s.tile for s in scenes} == {"49SGU", "49SGV"}
    x_gu = TINY_TILES["49SGU"][0] + 2560          # right edge of 49SGU
    y_gv = TINY_TILES["49SGV"][1] - 2560          # bottom edge of 49SGV
    # half of it beyond 49SGU's right edge, half below 49SGV's bottom edge
    split = shapely.box(x_gu - 50, y_gv - 50, x_gu + 50, y_gv + 50)
    inside = shapely.box(x_gu - 400, y_gv + 200, x_gu - 300, y_gv + 300)
    fields = gpd.GeoDataFrame({"field_id": ["split", "inside"]}, geometry=[split, inside],
                              crs="EPSG:32649")
    df = field_observations(scenes, fields).set_index("field_id")
    assert len(df) == 2                            # one row per field and acquisition
    assert "PARTIAL_COVERAGE" in split_flags(df.loc["split", "flags"])
    assert 0 < df.loc["split", "covered_fraction"] < 1
    assert df.loc["inside", "covered_fraction"] == pytest.approx(1.0)
    assert "PARTIAL_COVERAGE" not in split_flags(df.loc["inside", "flags"])


# ---------------------------------------------------------------------------- pixels
FIELD = (X0 + 50, Y0 - 200, X0 + 150, Y0 - 100)          # columns 5..14, rows 10..19


def test_saturated_pixels_are_masked_counted_and_flagged(tmp_path):
    from cropyield.observations import field_observations

    b04 = ramp((64, 64), 1, 1300, 2500)
    b08 = ramp((64, 64), 2, 3000, 6000)
    b04[10:12, 5:15] = 65535                         # 20 of the field's 100 pixels
    sc = _scene(tmp_path, b04=b04, b08=b08)
    df = field_observations([sc], _fields([shapely.box(*FIELD)]))
    r = (b04[12:20, 5:15] * 1e-4 - 0.1, b08[12:20, 5:15] * 1e-4 - 0.1)
    want = ((r[1] - r[0]) / (r[1] + r[0])).mean()
    assert df["ndvi"].iloc[0] == pytest.approx(want, abs=1e-12)
    assert df["valid_fraction"].iloc[0] == pytest.approx(0.8)
    assert split_flags(df["flags"].iloc[0]) == ["SATURATED"]
    assert "SATURATED" in FLAGS
    # the generic (formula) path masks them as well
    from cropyield.indices import register_index, unregister_index

    register_index("ndvi_f18", "(B08 - B04) / (B08 + B04)", valid_range=(-1, 1))
    try:
        g = field_observations([sc], _fields([shapely.box(*FIELD)]), indices=("ndvi_f18",))
    finally:
        unregister_index("ndvi_f18")
    assert g["ndvi_f18"].iloc[0] == pytest.approx(want, abs=1e-12)
    # zonal_stats on the same arrays: same rule, same numbers and flags
    from cropyield.indices import zonal_stats

    z = zonal_stats({"B04": b04, "B08": b08}, sc.bands["B04"].grid, _fields([shapely.box(
        *FIELD)]), indices=("ndvi",), scl=np.full((32, 32), 4, np.uint8), scales=1e-4,
        offsets=-0.1, nodata=0)
    assert z["ndvi"].iloc[0] == pytest.approx(want, abs=1e-12)
    assert z["valid_fraction"].iloc[0] == pytest.approx(0.8)
    assert z["flags"].iloc[0] == "SATURATED"


def _uncompressed_cog(path, arr, transform):
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0],
                       count=1, dtype=arr.dtype, crs=f"EPSG:{EPSG}", transform=transform,
                       nodata=0, tiled=True, blockxsize=32, blockysize=32,
                       compress="none") as dst:
        dst.write(arr, 1)
    with rasterio.open(path) as src:
        off = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    return off, size


def test_corrupt_uncompressed_tile_is_flagged_out_of_range(tmp_path):
    from rasterio.transform import from_origin

    from cropyield.observations import field_observations

    sc = _scene(tmp_path)
    good = field_observations([sc], _fields([shapely.box(*FIELD)]))
    assert good["flags"].iloc[0] == ""
    rng = np.random.default_rng(3)
    b08 = ramp((64, 64), 2, 3000, 6000)
    path = tmp_path / "S1" / "B08.tif"
    off, size = _uncompressed_cog(path, b08, from_origin(X0, Y0, 10, 10))
    with open(path, "r+b") as fh:                      # garbage in tile (0, 0): no decoder
        fh.seek(off)                                   # can notice it
        fh.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    df = field_observations([sc], _fields([shapely.box(*FIELD)]))
    assert "REFLECTANCE_OUT_OF_RANGE" in split_flags(df["flags"].iloc[0])
    assert df["valid_fraction"].iloc[0] < 0.6          # the garbage pixels are masked
    assert "REFLECTANCE_OUT_OF_RANGE" in FLAGS


# ---------------------------------------------------------------------------- offsets
def test_item_without_baseline_takes_the_offset_from_its_acquisition_date(s2_world_dir):
    from cropyield.catalogs import normalize_item

    items = _tiny_items(s2_world_dir)
    new = next(it for it in items if it["properties"]["datetime"].startswith("2024-05-01"))
    old = next(it for it in items if it["properties"]["datetime"].startswith("2021"))
    for it in (new, old):
        del it["properties"]["s2:processing_baseline"]
        for a in it["assets"].values():
            for rb in a.get("raster:bands", []):
                rb.pop("offset", None)
    assert normalize_item(new).bands["B04"].offset == pytest.approx(-0.1)
    assert normalize_item(old).bands["B04"].offset == 0.0
    assert normalize_item(new).bands["B04"].scale == pytest.approx(1e-4)


def test_pixels_carrying_the_offset_against_the_metadata_are_flagged(tmp_path):
    from cropyield.observations import field_observations

    fields = _fields([shapely.box(*FIELD)])
    b04 = ramp((64, 64), 1, 300, 900)                       # red of vegetation, DN
    b08 = ramp((64, 64), 2, 3000, 4000)
    honest = _scene(tmp_path, "old", "2021-06-01T03:00", b04=b04, b08=b08, baseline="03.00")
    lying = _scene(tmp_path, "lie", "2021-06-06T03:00", b04=b04 + 1000, b08=b08 + 1000,
                   baseline="03.00")                         # +1000 DN, metadata: offset 0
    df = field_observations([honest, lying], fields).set_index("scene_id")
    assert df.loc["old", "flags"] == ""
    assert "OFFSET_INCONSISTENT" in split_flags(df.loc["lie", "flags"])
    # the same pixels with the offset stated are fine
    right = _scene(tmp_path, "new", "2024-06-01T03:00", b04=b04 + 1000, b08=b08 + 1000,
                   baseline="05.10")
    assert field_observations([right], fields)["flags"].iloc[0] == ""


# ---------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("epsg", [4326.5, 32650])
def test_wrong_proj_epsg_never_makes_the_scene_vanish(s2_world_dir, epsg):
    """proj:epsg 4326.5 (read as 4326) or the neighbouring UTM zone with the file's own
    transform put the grid where no field is: the scene must fail naming the item, or
    give READ_FAILED rows, never drop out silently."""
    from cropyield.catalogs import normalize_item
    from cropyield.errors import AssetReadError
    from cropyield.observations import field_observations

    from cropyield.errors import CatalogError

    it = _tiny_items(s2_world_dir, "20240506")[0]
    it["properties"]["proj:epsg"] = epsg
    try:
        scene = normalize_item(it)
    except CatalogError as exc:              # rejected when the item is read: fine too
        assert it["id"] in str(exc) and "proj:epsg" in str(exc)
        return
    fields = gpd.GeoDataFrame({"field_id": ["a"]},
                              geometry=[shapely.box(701000, 3849000, 701100, 3849100)],
                              crs="EPSG:32649")
    with pytest.raises(AssetReadError) as ei:
        field_observations([scene], fields)
    assert it["id"] in str(ei.value) and ei.value.reason == "grid_mismatch"
    df = field_observations([scene], fields, on_error="flag")
    assert df["flags"].tolist() == ["READ_FAILED"] and df["ndvi"].isna().all()
    assert df.attrs["read_failures"][0]["scene_id"] == it["id"]
    assert df.attrs["read_failures"][0]["reason"] == "grid_mismatch"


# ---------------------------------------------------------------------------- chunks
def test_chunks_splitting_an_acquisition_merge_without_duplicate_field_days(s2_world_dir):
    """The two tiles of 2024-05-01 in two calls (as two dask tasks would): concatenated,
    a field in the overlap has two rows that day; merged, the table equals one call's."""
    from conftest import TINY_TILES

    from cropyield.catalogs import normalize_item
    from cropyield.observations import field_observations, merge_observations

    scenes = [normalize_item(it) for it in _tiny_items(s2_world_dir)
              if it["properties"]["datetime"][:4] == "2024"]
    x, y = TINY_TILES["49SGV"]                       # overlap: 49SGV's upper-left part
    geoms = [shapely.box(x + 900 + 150 * k, y - 2200, x + 1000 + 150 * k, y - 2100)
             for k in range(4)]
    geoms.append(shapely.box(x - 600, y - 1500, x - 500, y - 1400))   # 49SGU only
    fields = gpd.GeoDataFrame({"field_id": [f"f{k}" for k in range(5)]}, geometry=geoms,
                              crs="EPSG:32649")
    one = field_observations(scenes, fields)
    gu = [s for s in scenes if s.tile == "49SGU"]
    gv = [s for s in scenes if s.tile == "49SGV"]
    parts = [field_observations(gu, fields), field_observations(gv, fields)]
    cat = __import__("pandas").concat(parts, ignore_index=True)
    day = cat["time"].dt.strftime("%Y%m%d")
    assert cat.assign(day=day).duplicated(["field_id", "day"]).any()       # the bug
    merged = merge_observations(*parts)
    assert not merged.assign(day=merged["time"].dt.strftime("%Y%m%d")).duplicated(
        ["field_id", "day"]).any()
    cols = ["field_id", "time", "scene_id", "ndvi", "covered_fraction", "flags"]
    a = one[cols].reset_index(drop=True)
    b = merged[cols].reset_index(drop=True)
    assert a["field_id"].tolist() == b["field_id"].tolist()
    assert a["scene_id"].tolist() == b["scene_id"].tolist()
    np.testing.assert_allclose(a["ndvi"], b["ndvi"], rtol=0, atol=0)
    assert merged.attrs["requests"] == sum(p.attrs["requests"] for p in parts)


def _sha256_multihash(path) -> str:
    import hashlib

    return "1220" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_checksum_mismatch_fails_or_flags_the_scene(s2_world_dir, tmp_path):
    """An asset changed after its item was written (here: bytes appended, invisible to
    GDAL) passes the block reads; verify_checksums=True compares the file:checksum."""
    import shutil

    from cropyield.catalogs import normalize_item
    from cropyield.errors import CorruptAssetError
    from cropyield.observations import field_observations
    from cropyield.read import verify_checksum

    it = _tiny_items(s2_world_dir, "20240506")[0]
    for a in it["assets"].values():
        if a["href"].startswith("http"):
            continue
        src = s2_world_dir / a["href"].split(str(s2_world_dir) + "/", 1)[1]
        dst = tmp_path / src.name
        shutil.copy(src, dst)
        a["href"] = str(dst)
        a["file:checksum"] = _sha256_multihash(dst)
    fields = gpd.GeoDataFrame({"field_id": ["a"]},
                              geometry=[shapely.box(701000, 3849000, 701100, 3849100)],
                              crs="EPSG:32649")
    ok = field_observations([normalize_item(it)], fields, verify_checksums=True)
    assert ok["ndvi"].notna().all() and ok["flags"].eq("").all()
    with open(tmp_path / "B08.tif", "ab") as fh:
        fh.write(b"\0garbage")
    scene = normalize_item(it)
    plain = field_observations([scene], fields)            # block reads cannot see it
    assert plain["ndvi"].notna().all()
    with pytest.raises(CorruptAssetError) as ei:
        field_observations([scene], fields, verify_checksums=True)
    assert ei.value.reason == "checksum" and "B08.tif" in str(ei.value)
    df = field_observations([scene], fields, verify_checksums=True, on_error="flag")
    assert df["flags"].tolist() == ["READ_FAILED"] and df["ndvi"].isna().all()
    assert df.attrs["read_failures"][0]["reason"] == "checksum"
    with pytest.raises(CorruptAssetError):
        verify_checksum(str(tmp_path / "B08.tif"), it["assets"]["nir"]["file:checksum"])


def test_verify_checksum_over_http_and_malformed_checksums(tmp_path):
    from cropyield.errors import AssetReadError, CorruptAssetError
    from cropyield.read import verify_checksum
    from cropyield.servers import RangeServer

    (tmp_path / "a.bin").write_bytes(b"cropyield" * 1000)
    good = _sha256_multihash(tmp_path / "a.bin")
    with RangeServer(tmp_path) as srv:
        verify_checksum(srv.url_for("a.bin"), good)
        with pytest.raises(CorruptAssetError):
            verify_checksum(srv.url_for("a.bin"), good[:-2] + ("00" if good[-2:] != "00"
                                                                else "11"))
    for bad in ("zz", "1220abcd", "9901ff"):
        with pytest.raises(AssetReadError, match="multihash"):
            verify_checksum(str(tmp_path / "a.bin"), bad)


def test_verify_checksum_deadline_holds_against_a_stalled_server(tmp_path):
    """The checksum download had only a per-socket-read timeout (60 s): a stalled server
    held it that long (and a trickling one for ever). With ``deadline`` it ends by then."""
    import time

    from cropyield.errors import AssetReadError
    from cropyield.read import verify_checksum
    from cropyield.servers import RangeServer

    (tmp_path / "a.bin").write_bytes(b"cropyield" * 1000)
    good = _sha256_multihash(tmp_path / "a.bin")
    with RangeServer(tmp_path, faults={"a.bin": ["sleep:60"]}) as srv:
        t0 = time.monotonic()
        with pytest.raises(AssetReadError) as ei:
            verify_checksum(srv.url_for("a.bin"), good, timeout=60, deadline=2)
        took = time.monotonic() - t0
        verify_checksum(srv.url_for("a.bin"), good, deadline=30)    # a healthy answer
    assert ei.value.reason == "deadline" and "read_deadline" in str(ei.value)
    assert took < 2 + 10


def test_checksum_downloads_count_against_the_read_deadline(s2_world_dir, tmp_path):
    """field_observations(verify_checksums=True) with a stalled asset server: the downloads
    are bounded by read_deadline too, and the scene's rows come out flagged."""
    import shutil
    import time

    from cropyield.catalogs import normalize_item
    from cropyield.observations import field_observations
    from cropyield.servers import RangeServer

    it = _tiny_items(s2_world_dir, "20240506")[0]
    fields = gpd.GeoDataFrame({"field_id": ["a"]},
                              geometry=[shapely.box(701000, 3849000, 701100, 3849100)],
                              crs="EPSG:32649")
    with RangeServer(tmp_path, faults={"*.tif": ["sleep:60"] * 20}) as srv:
        for a in it["assets"].values():
            if a["href"].startswith("http"):
                continue
            src = s2_world_dir / a["href"].split(str(s2_world_dir) + "/", 1)[1]
            shutil.copy(src, tmp_path / src.name)
            a["href"] = srv.url_for(src.name)
            a["file:checksum"] = _sha256_multihash(tmp_path / src.name)
        t0 = time.monotonic()
        df = field_observations([normalize_item(it)], fields, verify_checksums=True,
                                on_error="flag", read_deadline=3)
        took = time.monotonic() - t0
    assert took < 3 + 10, f"field_observations took {took:.1f} s with read_deadline=3"
    assert df["flags"].tolist() == ["READ_FAILED"] and df["ndvi"].isna().all()
    assert df.attrs["read_failures"][0]["reason"] == "deadline"


def test_load_cube_masks_saturated_pixels(tmp_path):
    from cropyield.read import load_cube

    b04 = ramp((64, 64), 1, 1300, 2500)
    b04[20, 20] = 65535
    sc = _scene(tmp_path, b04=b04)
    aoi = gpd.GeoSeries([shapely.box(X0 + 100, Y0 - 500, X0 + 500, Y0 - 100)],
                        crs=f"EPSG:{EPSG}")
    ds = load_cube([sc], aoi, bands=["B04", "B08"], resolution=10)
    v = ds["B04"].isel(time=0).values
    assert np.isnan(v[10, 10])                        # row 20, col 20 of the tile
    assert np.isfinite(np.delete(v.ravel(), 10 * v.shape[1] + 10)).all()


def test_repair_geometry_measures_bowties_and_flags_them(tmp_path):
    from cropyield.observations import field_observations

    s1 = _scene(tmp_path)
    bowtie = shapely.Polygon([(X0 + 100, Y0 - 100), (X0 + 200, Y0 - 200),
                              (X0 + 200, Y0 - 100), (X0 + 100, Y0 - 200)])
    fields = _fields([shapely.box(*FIELD), bowtie, shapely.Point(X0 + 100, Y0 - 100)])
    df = field_observations([s1], fields, repair_geometry=True).set_index("field_id")
    assert df.loc["f1", "flags"] == "GEOMETRY_REPAIRED" and np.isfinite(df.loc["f1", "ndvi"])
    assert df.loc["f1", "coverage"] == pytest.approx(50.0)       # two triangles of 25 px
    assert df.loc["f2", "flags"] == "INVALID_GEOMETRY"            # a point stays unusable
    assert df.loc["f0", "flags"] == ""
    assert "GEOMETRY_REPAIRED" in FLAGS


def test_one_physical_range_rule_everywhere():
    from cropyield import zonal
    from cropyield.observations import _kernels

    assert (_kernels._REFL_MIN, _kernels._REFL_MAX, _kernels._DN_SATURATED) == (
        zonal._REFL_MIN, zonal._REFL_MAX, zonal._DN_SATURATED)
