"""Scaling: partitions of fields, the resumable results store, ``cropyield serve`` and
``cropyield estimate``, a run killed with SIGKILL and resumed, local vs dask.distributed.

The end-to-end tests serve the tiny demo world with the ``cropyield serve`` command (a real
STAC API and Range COG server on 127.0.0.1) and stop it with SIGTERM at the end.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box

from cropyield.pipeline import partition_fields
from cropyield.store import ResultStore, StoreMismatchError

SRC = Path(__file__).resolve().parents[1] / "src"
TABLES = ("observations", "series", "phenology", "crops", "estimates")


# ------------------------------------------------------------------------ partitions


def _grid_fields(n: int, seed: int = 0, crs: str = "EPSG:32650") -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    x = 400_000 + rng.uniform(0, 30_000, n)
    y = 3_800_000 + rng.uniform(0, 30_000, n)
    geoms = [box(a, b, a + 60, b + 40) for a, b in zip(x, y)]
    return gpd.GeoDataFrame({"field_id": [f"F{i:06d}" for i in range(n)]}, geometry=geoms,
                            crs=crs)


@pytest.mark.parametrize("max_fields", [1, 7, 100, 5000])
def test_partition_fields_each_field_once_and_bounded(max_fields):
    fields = _grid_fields(2000)
    parts = partition_fields(fields, max_fields=max_fields)
    assert parts.index.equals(fields.index) and parts.notna().all()
    counts = parts.value_counts()
    assert counts.max() <= max_fields
    assert counts.sum() == len(fields)
    # deterministic, and a block is a quadtree cell: no id is a prefix of another
    assert parts.equals(partition_fields(fields.iloc[::-1], max_fields=max_fields).loc[parts.index])
    ids = sorted(counts.index)
    assert not any(b.startswith(a) for a, b in zip(ids, ids[1:]))


def test_partition_fields_are_spatial_blocks():
    fields = _grid_fields(4000)
    parts = partition_fields(fields, max_fields=500)
    pts = fields.geometry.representative_point().to_crs(4326)
    # the blocks' bounding boxes (in longitude/latitude) do not overlap: quadtree cells
    boxes = [box(*pts[parts == p].total_bounds) for p in sorted(set(parts))]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a.intersection(b).area <= 1e-9 * max(a.area, b.area)


def test_partition_fields_same_block_whatever_the_crs():
    fields = _grid_fields(300)
    a = partition_fields(fields, max_fields=50)
    b = partition_fields(fields.to_crs(4326), max_fields=50)
    assert a.equals(b)


def _tiles(n_tiles: int = 2, size_px: int = 3000, overlap_px: int = 300):
    """Pixel grids of overlapping 10 m tiles side by side (as Sentinel-2 tiles are)."""
    from affine import Affine

    from cropyield._geo import Grid

    return [Grid("EPSG:32650", Affine(10.0, 0, 400_000 + k * (size_px - overlap_px) * 10.0,
                                      0, -10.0, 3_830_000), (size_px, size_px))
            for k in range(n_tiles)]


def _block_of(fields, grids, block_px):
    """(grid, block row, block col) of each field's representative point: first grid
    holding it, as partition_fields assigns them."""
    pts = fields.geometry.representative_point()
    out = np.full(len(fields), None, dtype=object)
    for k, g in enumerate(grids):
        c = np.floor((pts.x.to_numpy() - g.transform.c) / 10.0).astype(int)
        r = np.floor((g.transform.f - pts.y.to_numpy()) / 10.0).astype(int)
        ok = (c >= 0) & (c < g.shape[1]) & (r >= 0) & (r < g.shape[0])
        for i in np.flatnonzero(ok & pd.isna(out)):
            out[i] = (k, r[i] // block_px, c[i] // block_px)
    return pd.Series(out, index=fields.index)


def _blocks_read(fields, parts, grids, block_px):
    """Blocks each partition reads (those its fields' bounding boxes touch, on every grid),
    summed over the partitions: the partitions' block reads for one band of one date."""
    b = fields.geometry.bounds.to_numpy()
    total = 0
    for pid in set(parts):
        m = (parts == pid).to_numpy()
        seen = set()
        for k, g in enumerate(grids):
            c0 = np.floor((b[m, 0] - g.transform.c) / 10.0).astype(int)
            c1 = np.floor((b[m, 2] - g.transform.c) / 10.0).astype(int)
            r0 = np.floor((g.transform.f - b[m, 3]) / 10.0).astype(int)
            r1 = np.floor((g.transform.f - b[m, 1]) / 10.0).astype(int)
            ok = (c1 >= 0) & (c0 < g.shape[1]) & (r1 >= 0) & (r0 < g.shape[0])
            for a, bb, cc, dd in zip(r0[ok], c0[ok], r1[ok], c1[ok]):
                for i in range(max(a, 0) // block_px, min(cc, g.shape[0] - 1) // block_px + 1):
                    for j in range(max(bb, 0) // block_px,
                                   min(dd, g.shape[1] - 1) // block_px + 1):
                        seen.add((k, i, j))
        total += len(seen)
    return total


@pytest.mark.parametrize("max_fields", [1, 40, 150, 700, 5000])
def test_partition_fields_on_block_grid_each_field_once_and_bounded(max_fields):
    fields = _grid_fields(2000)
    grids = _tiles()
    parts = partition_fields(fields, max_fields=max_fields, grids=grids, block_px=256)
    assert parts.index.equals(fields.index) and parts.notna().all()
    counts = parts.value_counts()
    assert counts.max() <= max_fields and counts.sum() == len(fields)
    # deterministic: neither the fields' order nor the grids' order changes a partition
    again = partition_fields(fields.iloc[::-1], max_fields=max_fields, grids=grids[::-1],
                             block_px=256)
    assert parts.equals(again.loc[parts.index])
    ids = sorted(counts.index)
    assert not any(b.startswith(a) for a, b in zip(ids, ids[1:]))
    # fields outside every grid keep the longitude/latitude quadtree
    inside = _block_of(fields, sorted(grids, key=lambda g: g.transform.c), 256).notna()
    assert parts[inside].str.startswith("g").all()
    assert parts[~inside].str.startswith("q").all()


def test_partition_fields_on_block_grid_never_split_a_block_needlessly():
    """A block is in one partition unless it holds more than max_fields fields; then it is
    cut into the fewest runs (ceil(n / max_fields)), so it is re-read as little as the
    partition size allows."""
    fields = _grid_fields(4000, seed=3)
    grids = sorted(_tiles(), key=lambda g: g.transform.c)
    for max_fields, block_px in ((150, 256), (1000, 512), (60, 256)):
        parts = partition_fields(fields, max_fields=max_fields, grids=grids,
                                 block_px=block_px)
        blk = _block_of(fields, grids, block_px)
        inside = blk.notna()
        per_block = pd.DataFrame({"b": blk[inside], "p": parts[inside]}).groupby("b")
        for _, g in per_block:
            n_parts = g["p"].nunique()
            assert n_parts == max(1, -(-len(g) // max_fields)), (max_fields, block_px)
            if n_parts > 1:  # runs of one block: no other block's field among them
                assert g["p"].str.contains("r").all()
                assert parts.isin(set(g["p"])).sum() == len(g)


def test_partition_fields_on_block_grid_read_fewer_blocks_than_lonlat_cells():
    """Partitions smaller than a block re-read it: aligned to the block grid, the blocks
    read (summed over partitions) are fewer than with cells over longitude/latitude."""
    fields = _grid_fields(6000, seed=1)
    grids = _tiles()
    for max_fields, block_px in ((150, 256), (400, 512), (60, 1024), (2000, 512)):
        aligned = partition_fields(fields, max_fields=max_fields, grids=grids,
                                   block_px=block_px)
        lonlat = partition_fields(fields, max_fields=max_fields)
        a = _blocks_read(fields, aligned, grids, block_px)
        b = _blocks_read(fields, lonlat, grids, block_px)
        assert a <= b, (max_fields, block_px, a, b)
        if max_fields < 2000:          # partitions smaller than a block's fields
            assert a < 0.8 * b, (max_fields, block_px, a, b)
        assert aligned.nunique() <= lonlat.nunique()


# ------------------------------------------------------------------------------ store


def _table(pid: str, n: int) -> dict[str, pd.DataFrame]:
    df = pd.DataFrame({"field_id": [f"{pid}-{i}" for i in range(n)],
                       "x": np.arange(n, dtype=float), "flags": [""] * n})
    geo = gpd.GeoDataFrame(df.copy(), geometry=[box(i, 0, i + 1, 1) for i in range(n)],
                           crs="EPSG:32650")
    return {"series": df, "estimates": geo}


@pytest.mark.parametrize("url", ["local", "memory://cropyield-test-store"])
def test_store_manifest_partial_reads_and_consolidate(tmp_path, url):
    root = str(tmp_path / "run") if url == "local" else url
    st = ResultStore(root)
    assert st.begin({"fingerprint": "A"}) == {}
    st.write_partition("q1", _table("q1", 3))
    # files in place but not committed: not a result yet
    assert st.completed() == [] and st.read("series").empty
    st.commit("q1", {"n_fields": 3})
    st.write_partition("q0", _table("q0", 2))
    st.commit("q0", {"n_fields": 2})
    # partial results are readable during a run, sorted by partition id
    est = ResultStore(root).read("estimates")
    assert isinstance(est, gpd.GeoDataFrame) and est.crs.to_epsg() == 32650
    assert list(est["field_id"]) == ["q0-0", "q0-1", "q1-0", "q1-1", "q1-2"]
    path = st.consolidate("estimates")
    with st.fs.open(path, "rb") as fh:
        whole = gpd.read_parquet(fh)
    pd.testing.assert_frame_equal(pd.DataFrame(whole), pd.DataFrame(est))
    # no temporary file is left behind
    leftovers = [p for p in st.fs.find(st.root) if "/.tmp-" in p]
    assert leftovers == []
    # resume: same run → completed partitions; other inputs → a clear error
    assert set(ResultStore(root).begin({"fingerprint": "A"})) == {"q0", "q1"}
    with pytest.raises(StoreMismatchError, match="--restart"):
        ResultStore(root).begin({"fingerprint": "B"})
    st.write_bytes("notes.txt", b"the user's own file")
    assert ResultStore(root).begin({"fingerprint": "B"}, restart=True) == {}
    assert st.exists("notes.txt")   # restart removes only what a run wrote
    assert ResultStore(root).completed() == [] and not st.exists("parts/q0/series.parquet")
    if url != "local":
        st.fs.rm(st.root, recursive=True)


def test_store_schema_unified_when_a_partition_is_all_null(tmp_path):
    st = ResultStore(tmp_path)
    st.begin({"fingerprint": "A"})
    st.write_partition("a", {"t": pd.DataFrame({"k": ["x"], "v": [None]})})
    st.write_partition("b", {"t": pd.DataFrame({"k": ["y"], "v": ["text"]})})
    st.commit("a", {})
    st.commit("b", {})
    out = pd.read_parquet(st.consolidate("t"))
    assert out["v"].isna().tolist() == [True, False] and out["v"].iloc[1] == "text"


# ------------------------------------------------------------------ served demo world


def _read_lines_until(proc, pattern: str, stream: str = "stdout", timeout: float = 600):
    """Lines of ``proc``'s stream up to and including one containing ``pattern`` (a reader
    thread feeds a queue: select() on a buffered pipe would miss lines already buffered)."""
    f = getattr(proc, stream)
    q = getattr(proc, f"_lines_{stream}", None)
    if q is None:
        q = queue.Queue()
        setattr(proc, f"_lines_{stream}", q)

        def pump():
            try:
                for line in f:
                    q.put(line)
            except (ValueError, OSError):  # closed by _stop
                pass
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        lines.append(line.rstrip("\n"))
        if pattern in line:
            return lines
    raise AssertionError(f"{pattern!r} not seen on {stream}; got: {lines[-20:]}")


def _env(cache: Path, **extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["CROPYIELD_CACHE_DIR"] = str(cache)
    env.pop("CROPYIELD_TEST_PAUSE", None)
    env.update(extra)
    return env


def _stop(proc, sig=signal.SIGTERM, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - last resort
            proc.kill()
            proc.wait(10)
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    return proc.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``cropyield serve --size tiny`` as a subprocess: (stac_url, start, end, fields path)."""
    tmp = tmp_path_factory.mktemp("serve")
    cache = tmp_path_factory.mktemp("cache")
    fields = tmp / "fields.gpkg"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cropyield.cli", "serve", "--size", "tiny", "--fields",
         str(fields)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=_env(cache))
    try:
        lines = _read_lines_until(proc, "END=")
        kv = dict(line.split("=", 1) for line in lines if "=" in line)
        yield {"url": kv["STAC_URL"], "start": kv["START"], "end": kv["END"],
               "fields": fields, "cache": cache, "tmp": tmp}
    finally:
        rc = _stop(proc)
    assert rc == 0, "cropyield serve did not stop cleanly on SIGTERM"


@pytest.fixture(scope="module")
def few_fields(served):
    """36 neighbouring fields of the tiny world (keeps the end-to-end runs short)."""
    fields = gpd.read_file(served["fields"])
    assert {"field_id", "farmer_id", "crop", "declared_area_mu"} <= set(fields.columns)
    sub = fields.sort_values("field_id").iloc[:36].reset_index(drop=True)
    path = served["tmp"] / "few.gpkg"
    sub.to_file(path, driver="GPKG")
    return sub, path


def _cli_estimate(served, fields_path, out, *extra, pause: str | None = None):
    env = _env(served["cache"], **({"CROPYIELD_TEST_PAUSE": pause} if pause else {}))
    return subprocess.Popen(
        [sys.executable, "-m", "cropyield.cli", "estimate", str(fields_path), "--start",
         served["start"], "--end", served["end"], "--catalog", served["url"], "--out",
         str(out), "--partition-size", "8", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _assert_same_outputs(a: Path, b: Path) -> None:
    for name in TABLES:
        x, y = pd.read_parquet(a / f"{name}.parquet"), pd.read_parquet(b / f"{name}.parquet")
        pd.testing.assert_frame_equal(x, y, obj=name)
    pa = json.loads((a / "credit_profiles.json").read_text())
    pb = json.loads((b / "credit_profiles.json").read_text())
    assert pa == pb


@pytest.mark.slow
def test_estimate_killed_with_sigkill_then_resumed(served, few_fields, tmp_path):
    _, path = few_fields
    ref, run = tmp_path / "ref", tmp_path / "run"
    p = _cli_estimate(served, path, ref, "--quiet")
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    est = gpd.read_parquet(ref / "estimates.parquet")
    assert est.crs == gpd.read_file(path).crs and est.geometry.notna().all()
    summary = json.loads((ref / "summary.json").read_text())
    n_parts = summary["n_partitions"]
    assert n_parts >= 4 and summary["n_partitions_skipped"] == 0

    # killed after the files of the 3rd partition are written but before its commit
    p = _cli_estimate(served, path, run, "--quiet", pause="before:3")
    try:
        _read_lines_until(p, "test pause before:3", stream="stderr", timeout=900)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(60)
    finally:
        _stop(p)
    assert p.returncode == -signal.SIGKILL
    st = ResultStore(run)
    done = st.completed()
    assert len(done) == 2
    # the uncommitted partition's files are there, but it is not a result
    parts_dirs = {d.rsplit("/", 1)[-1] for d in st.fs.ls(st.path("parts"), detail=False)}
    assert len(parts_dirs) == 3
    assert len(st.read("estimates")["field_id"].unique()) == sum(
        st.manifest()["partitions"][d]["n_fields"] for d in done)
    mtimes = {f: os.stat(f).st_mtime_ns for d in done for f in map(str, (run / "parts" / d)
                                                                   .glob("*.parquet"))}

    p = _cli_estimate(served, path, run)  # resumed (not quiet: reports what it skipped)
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    assert f"resumed: skipped 2 of {n_parts} partitions already complete" in err
    resumed = json.loads((run / "summary.json").read_text())
    assert sorted(resumed["partitions_skipped"]) == sorted(done)
    # completed partitions were not redone
    assert {f: os.stat(f).st_mtime_ns for f in mtimes} == mtimes
    _assert_same_outputs(ref, run)
    assert sorted(ResultStore(run).completed()) == sorted(
        ResultStore(ref).completed())

    # a second resume has nothing left to do; --restart starts over
    p = _cli_estimate(served, path, run, "--quiet", "--restart")
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    assert json.loads((run / "summary.json").read_text())["n_partitions_skipped"] == 0
    _assert_same_outputs(ref, run)


@pytest.mark.slow
def test_local_and_distributed_results_identical(served, few_fields, tmp_path, monkeypatch,
                                                 caplog):
    distributed = pytest.importorskip("distributed")
    import cropyield as cy
    import cropyield.pipeline as pl

    # credit profiles farmer chunk by farmer chunk on the workers (as_of resolved over all
    # chunks first), at this size too: the profiles must equal one assess call's
    monkeypatch.setattr(pl, "_CREDIT_CHUNK_ROWS", 2)
    caplog.set_level(logging.INFO, logger="cropyield")

    fields, _ = few_fields
    scenes = cy.search_scenes(fields, served["start"], served["end"], catalog=served["url"])
    kw = dict(scenes=scenes, min_coverage_frac=0.5, declared_prior_odds=10.0,
              partition_size=8, progress_bar=False)
    local = cy.estimate(fields, served["start"], served["end"], store=tmp_path / "local", **kw)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        dist = cy.estimate(fields, served["start"], served["end"], client=client,
                           store=tmp_path / "dist", **kw)
    assert isinstance(dist.estimates, gpd.GeoDataFrame)
    assert dist.estimates.crs == fields.crs
    for name in TABLES:
        pd.testing.assert_frame_equal(pd.DataFrame(getattr(local, name)),
                                      pd.DataFrame(getattr(dist, name)), obj=name)
    assert [p.to_dict() for p in local.profiles] == [p.to_dict() for p in dist.profiles]
    assert any("chunks on the cluster" in r.getMessage() for r in caplog.records)
    # each field in exactly one partition: one observation per (field, acquisition time)
    obs = dist.observations
    assert not obs.duplicated(["field_id", "scene_id"]).any()
    assert set(obs["field_id"]) <= set(fields["field_id"])
    # read counters are summed over partitions (they vary with GDAL's per-process caches)
    assert dist.observations.attrs["bytes_read"] > 0 and dist.observations.attrs["requests"] > 0

    # and the same numbers as one unpartitioned run, except two things that depend on the
    # batch of fields in a call: value-only crops (benchmark yield scaled by vigour relative
    # to the batch's median field) and OFFSET_INCONSISTENT (decided from the darkest 1 % of
    # the pixels read for the batch's fields)
    whole = cy.estimate(fields, served["start"], served["end"], scenes=scenes,
                        min_coverage_frac=0.5, declared_prior_odds=10.0, progress_bar=False)

    def no_batch_flags(df):
        df = pd.DataFrame(df).copy()
        if "flags" in df:
            df["flags"] = [",".join(f for f in str(x).split(",") if f != "OFFSET_INCONSISTENT")
                           if isinstance(x, str) else x for x in df["flags"]]
        return df

    for name in ("observations", "series", "phenology", "crops"):
        a = no_batch_flags(getattr(whole, name))
        keys = ["field_id"] + [k for k in ("time", "scene_id", "season") if k in a.columns]
        a = a.sort_values(keys).reset_index(drop=True)
        b = no_batch_flags(getattr(dist, name)).sort_values(keys).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, obj=name, check_dtype=False)  # str vs object
    a = no_batch_flags(whole.estimates).sort_values(["field_id", "season"]).reset_index(drop=True)
    b = no_batch_flags(dist.estimates).sort_values(["field_id", "season"]).reset_index(drop=True)
    keep = a["yield_basis"] != "value_only"
    assert keep.sum() > 0
    pd.testing.assert_frame_equal(a[keep].drop(columns="geometry"),
                                  b[keep].drop(columns="geometry"), obj="estimates",
                                  check_dtype=False)


# ------------------------------------------------------------------- lazy load_cube


@pytest.mark.parametrize("dilate", [0, 2])
def test_load_cube_chunks_lazy_and_identical_to_eager(tmp_path, dilate):
    import dask.array as da
    import shapely
    from test_read import EPSG, X0, Y0, ensure_indices, make_scene, ramp

    from cropyield.read import load_cube

    ensure_indices()
    b04, b08 = ramp((64, 64), 1), ramp((64, 64), 2)
    scl = np.full((32, 32), 4, np.uint8)
    scl[10:14, 14:20] = 9                              # a cloud across chunk borders
    scenes = [
        make_scene(tmp_path, "S_old", when="2021-06-01T03:00", baseline="03.00",
                   bands={"B04": (b04, 10), "B08": (b08, 10), "SCL": (scl, 20)}),
        make_scene(tmp_path, "S_new", when="2024-06-01T03:00", baseline="05.10",
                   bands={"B04": (b04 + 1000, 10), "B08": (b08 + 1000, 10), "SCL": (scl, 20)}),
        make_scene(tmp_path, "S_east", when="2024-06-01T03:00", baseline="05.10",
                   x0=X0 + 640, tile="50SKF",
                   bands={"B04": (b04 + 1000, 10), "B08": (b08 + 1000, 10),
                          "SCL": (np.full((32, 32), 4, np.uint8), 20)}),
    ]
    aoi = gpd.GeoSeries([shapely.box(X0 + 100, Y0 - 500, X0 + 1000, Y0 - 100)],
                        crs=f"EPSG:{EPSG}")
    kw = dict(bands=["B04", "B08", "SCL"], resolution=10, dilate=dilate)
    eager = load_cube(scenes, aoi, **kw)
    lazy = load_cube(scenes, aoi, chunks={"time": 1, "y": 16, "x": 32}, **kw)
    assert isinstance(lazy["B04"].data, da.Array) and isinstance(lazy["valid"].data, da.Array)
    assert lazy["B04"].data.chunks == ((1, 1), (16, 16, 8), (32, 32, 26))
    assert "bytes_read" not in lazy.attrs          # nothing read yet
    assert lazy.sizes == eager.sizes and lazy.rio.crs == eager.rio.crs
    computed = lazy.compute()
    for v in ("B04", "B08", "SCL", "valid"):
        np.testing.assert_array_equal(computed[v].values, eager[v].values, err_msg=v)
    assert (eager["valid"].values == 0).sum() > 0
    with pytest.raises(ValueError, match="chunks keys"):
        load_cube(scenes, aoi, chunks={"band": 1}, **kw)


# ------------------------------------------------------------------------ command line


@pytest.mark.parametrize("pre,post", [(["-v"], []), ([], ["-v"]), (["-v"], ["-vv"])])
def test_estimate_command_line_checks_the_id_column(tmp_path, pre, post):
    from cropyield.cli import main

    path = tmp_path / "f.gpkg"
    _grid_fields(3).rename(columns={"field_id": "parcel"}).to_file(path, driver="GPKG")
    base = [str(path), "--start", "2022-01-01", "--end", "2022-02-01", "--catalog",
            "http://127.0.0.1:9", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="no column 'field_id'.*--id-col"):
        main([*pre, "estimate", *base, *post])   # -v before or after the subcommand
    with pytest.raises(SystemExit) as exc:
        main(["estimate", str(path), "--start", "2022-01-01"])   # --end etc. missing
    assert exc.value.code == 2


def test_serve_rejects_unknown_size():
    from cropyield.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--size", "planet"])
    assert exc.value.code == 2


# ---------------------------------------- estimate() and the CLI with weather and covariates
def test_estimate_passes_weather_and_covariates_to_the_yield_model(served, few_fields,
                                                                   tmp_path):
    """A winter-wheat model fitted with weather and the crop-model index runs through
    ``cy.estimate`` (in memory and partitioned into a store) and ``cropyield estimate
    --weather --covariates`` with the same numbers; without the tables it says what to pass."""
    import cropyield as cy
    from cropyield import cropmodel as cm
    from cropyield import synthetic
    from cropyield.demo import DEMO_SIZES
    from cropyield.errors import ModelError
    from cropyield.series import smooth_series
    from cropyield.yieldmodel.weather import CROP_MODEL_FEATURE

    fields, path = few_fields
    lib = cm.simulate_seasons("winter_wheat", 60, seed=4)
    idx = ["ndvi", "evi2", "ndre", "ndmi"]
    cov_lib = pd.DataFrame({"field_id": lib.truth["field_id"], CROP_MODEL_FEATURE:
                            cm.weather_year_index("wheat", lib.truth["weather_year"])})
    model = cy.fit_yield_model(smooth_series(lib.observations, index=idx),
                               lib.truth[["field_id", "season", "yield_t_ha"]],
                               crop="winter_wheat", method="empirical",
                               groups=lib.truth["weather_year"].to_numpy(),
                               seasons=lib.truth[["field_id", "season", "crop", "sos", "eos"]],
                               indices=idx, weather=lib.weather, covariates=cov_lib, alpha=1.0)
    assert model.weather is not None and model.covariate_features == [CROP_MODEL_FEATURE]
    config = synthetic.WorldConfig(seed=0, **DEMO_SIZES["tiny"])
    wx = synthetic.field_weather(fields, config)
    years = wx.groupby("field_id")["weather_year"].agg(lambda v: v.mode().iloc[0])
    cov = pd.DataFrame({"field_id": years.index, "crop": "winter_wheat",
                        CROP_MODEL_FEATURE: cm.weather_year_index("wheat", years.to_numpy())})
    scenes = cy.search_scenes(fields, served["start"], served["end"], catalog=served["url"])
    kw = dict(scenes=scenes, model={"winter_wheat": model}, min_coverage_frac=0.5,
              declared_prior_odds=10.0, progress_bar=False)
    with pytest.raises(ModelError, match="covariates="):
        cy.estimate(fields, served["start"], served["end"], weather=wx, **kw)
    whole = cy.estimate(fields, served["start"], served["end"], weather=wx, covariates=cov,
                        **kw)
    wheat = whole.estimates[whole.estimates["crop"] == "winter_wheat"]
    assert len(wheat) >= 3 and np.isfinite(wheat["yield_t_ha_p50"]).mean() > 0.5
    assert wheat["calibration"].str.contains('"kind": "empirical"').all()
    # partitioned into a store: each partition gets its fields' rows, same numbers
    parts = cy.estimate(fields, served["start"], served["end"], weather=wx, covariates=cov,
                        store=tmp_path / "api", partition_size=8, **kw)
    cols = ["field_id", "season", "yield_t_ha_p10", "yield_t_ha_p50", "yield_t_ha_p90"]

    def wheat_rows(est):
        e = pd.DataFrame(est)
        e = e[e["crop"] == "winter_wheat"][cols]
        return e.sort_values(["field_id", "season"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(wheat_rows(whole.estimates), wheat_rows(parts.estimates))
    # the command line: model JSON, weather as Parquet, covariates as CSV
    (tmp_path / "m.json").write_text(json.dumps({"winter_wheat": model.to_dict()}))
    wx.to_parquet(tmp_path / "wx.parquet")
    cov.to_csv(tmp_path / "cov.csv", index=False)
    p = _cli_estimate(served, path, tmp_path / "cli", "--quiet", "--model",
                      str(tmp_path / "m.json"), "--weather", str(tmp_path / "wx.parquet"),
                      "--covariates", str(tmp_path / "cov.csv"), "--min-coverage-frac", "0.5")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    cli = pd.read_parquet(tmp_path / "cli" / "estimates.parquet")
    pd.testing.assert_frame_equal(wheat_rows(cli), wheat_rows(parts.estimates),
                                  check_dtype=False)
