"""Benchmark (issue 3 item 7): bytes, requests and wall time of field-centric reads over HTTP.

COGs of a real Sentinel-2 tile's size (10 980 x 10 980 px at 10 m; B04 and B08 at 10 m, SCL
at 20 m; one date, to keep the run short) tiled 512 and 1024, served by
:class:`cropyield.servers.RangeServer` on 127.0.0.1 (in this process; byte and request
counts are the server's). Two field sets:

* ``clustered`` — a county's loan applicants: 1 000 fields in 20 village clusters;
* ``dense``     — 20 000 smallholder fields spread over the whole tile.

Per (tiling, field set), each in a fresh subprocess (so GDAL's caches start cold):

* ``cropyield``  :func:`cropyield.field_observations` over HTTP (threads=2);
* ``odc-stac``   ``odc.stac.load`` of the fields' bounding box (10 m, the tile's CRS, 2
                 threads) followed by the same zonal step (:func:`cropyield.zonal_stats`);
* ``minimum``    the sum of the byte counts of the COG blocks that intersect fields (all
                 three bands), i.e. what an ideal block reader must fetch.

Usage::

    python benchmarks/bench_http.py [--size 10980] [--tilings 512 1024] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EPSG, X0, Y0, Timer, emit, run_child, scenes_for, smallholder_fields  # noqa: E402,I001


# ---------------------------------------------------------------------------------------------
# data


def _write_scratch(path, size, res, kind, seed):
    """Synthesize one band strip by strip into an uncompressed tiled GTiff (low memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return path
    dtype = "uint8" if kind == "SCL" else "uint16"
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 256 + 2, size // 256 + 2)).astype(np.float32)
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", driver="GTiff", width=size, height=size, count=1,
                       dtype=dtype, crs=f"EPSG:{EPSG}", transform=from_origin(X0, Y0, res, res),
                       nodata=0, tiled=True, blockxsize=512, blockysize=512,
                       compress="NONE") as dst:
        step = 1024
        for r0 in range(0, size, step):
            h = min(step, size - r0)
            yy = (np.arange(r0, r0 + h) / 256.0)[:, None]
            xx = (np.arange(size) / 256.0)[None, :]
            y0, x0 = np.floor(yy).astype(int), np.floor(xx).astype(int)
            fy, fx = yy - y0, xx - x0
            z = (coarse[y0, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1, x0] * fy * (1 - fx)
                 + coarse[y0, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1, x0 + 1] * fy * fx)
            noise = rng.normal(0, 25, z.shape).astype(np.float32)
            if kind == "B04":
                a = 1000 + 300 + 800 * (1 - z) + noise
            elif kind == "B08":
                a = 1000 + 2000 + 2500 * z + noise
            else:
                a = np.where(z > 0.8, 9, np.where(z > 0.6, 5, 4))
            dst.write(a.astype(dtype), 1, window=Window(0, r0, size, h))
    tmp.replace(path)
    return path


def make_tile(root, size, blocksize):
    """COGs of one date tiled ``blocksize`` (the synthetic bands are shared by the tilings)."""
    from rasterio.shutil import copy as rio_copy

    folder = Path(root) / f"t{blocksize}" / "d00"
    folder.mkdir(parents=True, exist_ok=True)
    for k, (kind, res, sz) in enumerate((("B04", 10, size), ("B08", 10, size),
                                         ("SCL", 20, size // 2))):
        fn = folder / f"{kind}.tif"
        if fn.exists():
            continue
        src = _write_scratch(Path(root) / "scratch" / f"{kind}.tif", sz, res, kind, seed=k)
        tmp = fn.with_suffix(".tmp.tif")
        rio_copy(src, tmp, driver="COG", blocksize=blocksize, compress="DEFLATE",
                 overviews="NONE", num_threads=2)
        tmp.replace(fn)
    return folder.parent


def field_sets(root, size):
    out = {}
    for name, kw in (("clustered", dict(n=1000, clusters=20, cluster_radius_px=150)),
                     ("dense", dict(n=20000))):
        fn = Path(root) / f"fields_{name}.parquet"
        if not fn.exists():
            smallholder_fields(kw.pop("n"), size, seed=3, **kw).to_parquet(fn)
        out[name] = fn
    return out


# ---------------------------------------------------------------------------------------------
# children


def c_cropyield(tile_root, fields, base):
    from cropyield.observations import field_observations

    scenes = scenes_for(tile_root, 1, href_base=base)
    with Timer() as t:
        df = field_observations(scenes, fields, threads=2)
    return {"wall_s": t.s, "rows": int(df["ndvi"].notna().sum()),
            "lib_bytes": df.attrs["bytes_read"], "lib_requests": df.attrs["requests"],
            "blocks_read": df.attrs["blocks_read"]}


def _items(tile_root, base):
    import pystac
    import rasterio

    scene = scenes_for(tile_root, 1, href_base=base)[0]
    item = pystac.Item(id=scene.id, geometry=None, bbox=None,
                       datetime=scene.datetime.to_pydatetime(), properties={},
                       stac_extensions=[
                           "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                           "https://stac-extensions.github.io/raster/v1.1.0/schema.json"])
    for name, band in scene.bands.items():
        with rasterio.open(Path(tile_root) / "d00" / f"{name}.tif") as ds:
            shape, tr = ds.shape, ds.transform
        item.add_asset(name, pystac.Asset(
            href=band.href, media_type=pystac.MediaType.COG, roles=["data"],
            extra_fields={"proj:epsg": EPSG, "proj:shape": list(shape),
                          "proj:transform": list(tr)[:6],
                          "raster:bands": [{"nodata": 0, "data_type": band.dtype}]}))
    from pyproj import Transformer
    import shapely

    g = shapely.box(X0, Y0 - 109800, X0 + 109800, Y0)
    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    g4326 = shapely.ops.transform(lambda x, y: tr.transform(x, y), g)
    item.geometry = shapely.geometry.mapping(g4326)
    item.bbox = list(g4326.bounds)
    return [item]


def c_odc(tile_root, fields, base):
    import odc.stac
    from odc.geo.geobox import GeoBox

    from cropyield._geo import Grid
    from cropyield.indices import zonal_stats
    from cropyield.read import gdal_env

    items = _items(tile_root, base)
    left, bottom, right, top = fields.total_bounds
    left, bottom = np.floor(left / 10) * 10, np.floor(bottom / 10) * 10
    right, top = np.ceil(right / 10) * 10, np.ceil(top / 10) * 10
    gbox = GeoBox.from_bbox((left, bottom, right, top), crs=f"EPSG:{EPSG}", resolution=10)
    same = ("GDAL_HTTP", "VSI", "GDAL_MAX_RAW")       # the read settings cropyield uses
    odc.stac.configure_rio(cloud_defaults=True, **{k: v for k, v in gdal_env().items()
                                                   if k.startswith(same)})
    with Timer() as tm:
        ds = odc.stac.load(items, bands=["B04", "B08", "SCL"], geobox=gbox, pool=2,
                           resampling="nearest", fail_on_error=True)
        arr = {k: ds[k].values[0] for k in ("B04", "B08")}
        scl = ds["SCL"].values[0]
        grid = Grid(f"EPSG:{EPSG}", gbox.affine, gbox.shape)
        df = zonal_stats(arr, grid, fields, indices=("ndvi",), scl=scl, scales=1e-4,
                         offsets=-0.1)
    return {"wall_s": tm.s, "rows": int(df["ndvi"].notna().sum()),
            "pixels_loaded": int(np.prod(gbox.shape))}


def c_minimum(tile_root, fields, base):
    import rasterio

    from cropyield._geo import Grid
    from cropyield.coverage import coverage_fractions

    tot, blocks = 0, 0
    folder = Path(tile_root) / "d00"
    with rasterio.open(folder / "B04.tif") as ds:
        grid = Grid(ds.crs, ds.transform, ds.shape)
    cov = coverage_fractions(fields, grid)
    for name, k in (("B04", 1), ("B08", 1), ("SCL", 2)):
        with rasterio.open(folder / f"{name}.tif") as ds:
            bh, bw = ds.block_shapes[0]
            keys = np.unique(np.stack([cov.rows // k // bh, cov.cols // k // bw], 1), axis=0)
            tot += sum(int(ds.block_size(1, int(i), int(j))) for i, j in keys)
            blocks += len(keys)
    return {"wall_s": 0.0, "min_bytes": tot, "min_blocks": blocks}


CHILDREN = {"cropyield": c_cropyield, "odc-stac": c_odc, "minimum": c_minimum}


def child(method, tile_root, fields_path, base):
    import geopandas as gpd

    fields = gpd.read_parquet(fields_path)
    if method == "cropyield":            # JIT warm-up on a tiny local case (not timed)
        from cropyield.observations import field_observations

        field_observations(scenes_for(tile_root, 1), fields.iloc[:3])
    res = CHILDREN[method](tile_root, fields, base)
    res["method"] = method
    emit(res)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10980)
    ap.add_argument("--tilings", type=int, nargs="*", default=[512, 1024])
    ap.add_argument("--sets", nargs="*", default=["clustered", "dense"])
    ap.add_argument("--methods", nargs="*", default=["minimum", "cropyield", "odc-stac"])
    ap.add_argument("--data", default=None)
    ap.add_argument("--child", nargs=4, default=None)
    ap.add_argument("--keep-scratch", action="store_true",
                    help="keep the uncompressed synthetic bands (faster re-generation)")
    a = ap.parse_args(argv)
    data = Path(a.data or Path(__file__).parent / "_data" / f"http_{a.size}")
    if a.child:
        child(a.child[0], a.child[1], a.child[2], a.child[3])
        return
    from cropyield.servers import RangeServer

    t0 = time.perf_counter()
    roots = {bs: make_tile(data, a.size, bs) for bs in a.tilings}
    fsets = field_sets(data, a.size)
    gen_s = time.perf_counter() - t0
    rows = []
    with RangeServer(data) as srv:
        for bs, root in roots.items():
            base = srv.url + "/" + root.relative_to(data).as_posix()
            for name in a.sets:
                for m in a.methods:
                    srv.wait_idle()
                    srv.reset_log()
                    r = run_child([__file__, "--child", m, str(root), str(fsets[name]), base])
                    srv.wait_idle()
                    r.update(tiling=bs, set=name, srv_bytes=srv.bytes_sent,
                             srv_requests=srv.n_requests)
                    rows.append(r)
                    print(f"  {bs} {name:9s} {m:9s} {r['wall_s']:6.2f} s "
                          f"{r['srv_bytes'] / 2**20:8.1f} MiB {r['srv_requests']:6d} req",
                          file=sys.stderr, flush=True)
    cmd = "python benchmarks/bench_http.py " + " ".join(argv or sys.argv[1:])
    lines = [f"command: `{cmd.strip()}`",
             f"data: one date, B04+B08 {a.size}x{a.size} px (10 m) + SCL (20 m), DEFLATE "
             f"COGs, served by RangeServer on 127.0.0.1; generation {gen_s:.0f} s",
             "", "| tiling | fields | method | wall s | MiB fetched (server) | requests "
             "(server) | x minimum bytes | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    mins = {(r["tiling"], r["set"]): r["min_bytes"] for r in rows if r["method"] == "minimum"}
    for r in rows:
        mb = mins.get((r["tiling"], r["set"]))
        if r["method"] == "minimum":
            lines.append(f"| {r['tiling']} | {r['set']} | minimum (blocks under fields: "
                         f"{r['min_blocks']}) | - | {r['min_bytes'] / 2**20:.1f} | - | 1.00 | - |")
            continue
        ratio = f"{r['srv_bytes'] / mb:.2f}" if mb else "-"
        lines.append(f"| {r['tiling']} | {r['set']} | {r['method']} | {r['wall_s']:.2f} | "
                     f"{r['srv_bytes'] / 2**20:.1f} | {r['srv_requests']} | {ratio} | "
                     f"{r['maxrss_mib']:.0f} |")
    text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    (data / "result.json").write_text(json.dumps({"rows": rows, "table": text}, default=str))
    if not a.keep_scratch:
        import shutil

        shutil.rmtree(data / "scratch", ignore_errors=True)


if __name__ == "__main__":
    main()
