"""Benchmark (issue 4 item 7): per-field NDVI over many dates from local DEFLATE COGs.

Methods, side by side in one run, each in its own subprocess (median wall time of
``--repeat`` runs, peak RSS of the process):

* ``floor``        2-thread rasterio read+decode of every block of the same files (B04, B08,
                   SCL of every date), nothing else: the cost no method can avoid.
* ``floor_rows``   the same decode, each file read one block row at a time into a reused
                   per-thread buffer: no fresh 32 MiB array per file (whose page faults
                   ``floor`` pays), i.e. a tighter floor; shown for reference.
* ``cropyield``    :func:`cropyield.field_observations` (threads=2): coverage once, SCL first,
                   block reads, numba kernels, exact coverage weighting.
* ``ee_plain``     exactextract ``mean`` per date on the SCL-masked NDVI raster (coverage
                   recomputed every call); bands decoded by one thread.
* ``ee_cov_once``  exactextract's fastest identical-result use: ``cell_id`` + ``coverage``
                   once, then per date weighted sums of the masked NDVI (one decode thread).
* ``rasterize``    pixel-centre labels (rasterio.features.rasterize) once + ``np.bincount``
                   per date, bands decoded by 2 threads (not exact: a baseline).

Usage::

    python benchmarks/bench_zonal.py [--size 4096] [--dates 24] [--fields 20000]
                                     [--repeat 3] [--data DIR] [--methods ...]
                                     [--memory-dates N] [--before-src OLD/src]

``--methods floor cropyield --memory-dates 0`` is the quick loop while optimising;
``--before-src`` adds the same call from an older source tree (``git archive <rev> src |
tar -x -C /tmp/old``), interleaved, and checks that both outputs are bit-identical.
Every child reports wall and CPU seconds (CPU is steadier on a shared machine) and, for
cropyield, the untimed JIT warm-up call on 1 date x 5 fields (numba compilation).

Data are generated once under ``--data`` (default ``benchmarks/_data/zonal_<size>_<blocksize>``, git-ignored) and reused;
the OS page cache is warm after generation (the "warm cache" condition of DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (X0, Y0, Timer, emit, make_dates, run_child, scenes_for,  # noqa: E402
                     smallholder_fields)

INVALID = np.array([0, 1, 3, 8, 9, 10, 11])


def _files(data, n_dates):
    return [Path(data) / f"d{d:02d}" / f"{b}.tif" for d in range(n_dates)
            for b in ("B04", "B08", "SCL")]


def _read(fn):
    import rasterio

    with rasterio.open(fn) as ds:
        return ds.read(1)


def _masked_ndvi(b04, b08, scl):
    inv = np.isin(scl, INVALID)
    inv = np.repeat(np.repeat(inv, 2, axis=0), 2, axis=1)[: b04.shape[0], : b04.shape[1]]
    red = b04 * 1e-4 - 0.1
    nir = b08 * 1e-4 - 0.1
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = (nir - red) / (nir + red)
    bad = inv | (b04 == 0) | (b08 == 0) | ~np.isfinite(ndvi)
    ndvi[bad] = np.nan
    return ndvi


# ---------------------------------------------------------------------------------------------
# methods (run in the child)


def _decode(fn):
    a = _read(fn)
    return int(a[0, 0])        # keep nothing: the floor is decoding, not holding arrays


def m_floor(data, fields, n_dates):
    with ThreadPoolExecutor(2) as pool:
        tot = sum(pool.map(_decode, _files(data, n_dates)))
    return {"checksum": tot}


_ROWS = threading.local()      # per-thread row buffer of floor_rows


def _decode_rows(fn):
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(fn) as ds:
        bh = ds.block_shapes[0][0]
        buf = getattr(_ROWS, "buf", None)
        if buf is None or buf.shape != (bh, ds.width) or buf.dtype != ds.dtypes[0]:
            buf = _ROWS.buf = np.empty((bh, ds.width), ds.dtypes[0])
        tot = 0
        for r0 in range(0, ds.height, bh):
            h = min(bh, ds.height - r0)
            ds.read(1, window=Window(0, r0, ds.width, h), out=buf[:h])
            tot += int(buf[0, 0])
        return tot


def m_floor_rows(data, fields, n_dates):
    with ThreadPoolExecutor(2) as pool:
        tot = sum(pool.map(_decode_rows, _files(data, n_dates)))
    return {"checksum": tot}


def m_cropyield(data, fields, n_dates):
    from cropyield.observations import field_observations

    scenes = scenes_for(data, n_dates)
    df = field_observations(scenes, fields, indices=("ndvi",), threads=2)
    return {"rows": len(df), "ndvi_mean": float(np.nanmean(df["ndvi"])),
            "blocks_read": df.attrs["blocks_read"], "bytes_read": df.attrs["bytes_read"],
            "_df": df[["field_id", "time", "ndvi"]]}


def _ee_source(arr):
    from exactextract.raster import NumPyRasterSource

    h, w = arr.shape
    return NumPyRasterSource(arr, X0, Y0 - 10 * h, X0 + 10 * w, Y0, nodata=np.nan,
                             srs_wkt=_wkt())


def _wkt():
    from pyproj import CRS

    return CRS.from_epsg(32650).to_wkt()


def m_ee_plain(data, fields, n_dates):
    from exactextract import exact_extract

    out = []
    for d in range(n_dates):
        b04, b08, scl = (_read(f) for f in _files(data, n_dates)[3 * d: 3 * d + 3])
        ndvi = _masked_ndvi(b04, b08, scl)
        r = exact_extract(_ee_source(ndvi), fields, ["mean"], include_cols=["field_id"],
                          output="pandas")
        r["d"] = d
        out.append(r)
    import pandas as pd

    df = pd.concat(out)
    return {"rows": int(df["mean"].notna().sum()), "ndvi_mean": float(np.nanmean(df["mean"])),
            "_df": df.rename(columns={"mean": "ndvi"})[["field_id", "d", "ndvi"]]}


def m_ee_cov_once(data, fields, n_dates):
    from exactextract import exact_extract

    size = _read(_files(data, 1)[0]).shape
    zero = np.zeros(size, np.float32)
    cov = exact_extract(_ee_source(zero), fields, ["cell_id", "coverage"],
                        include_cols=["field_id"], output="pandas")
    cells = [np.asarray(c, np.int64) for c in cov["cell_id"]]
    fracs = [np.asarray(c, float) for c in cov["coverage"]]
    counts = np.array([len(c) for c in cells])
    cells = np.concatenate(cells)
    fracs = np.concatenate(fracs)
    fid = np.repeat(np.arange(len(counts)), counts)
    out = []
    for d in range(n_dates):
        b04, b08, scl = (_read(f) for f in _files(data, n_dates)[3 * d: 3 * d + 3])
        v = _masked_ndvi(b04, b08, scl).ravel()[cells]
        ok = np.isfinite(v)
        w = np.where(ok, fracs, 0.0)
        ws = np.bincount(fid, weights=w, minlength=len(counts))
        s1 = np.bincount(fid, weights=np.where(ok, v, 0.0) * w, minlength=len(counts))
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(ws > 0, s1 / ws, np.nan))
    m = np.stack(out)
    return {"rows": int(np.isfinite(m).sum()), "ndvi_mean": float(np.nanmean(m))}


def m_rasterize(data, fields, n_dates):
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    size = _read(_files(data, 1)[0]).shape
    labels = rasterize(((g, i + 1) for i, g in enumerate(fields.geometry)), out_shape=size,
                       transform=from_origin(X0, Y0, 10, 10), fill=0, dtype="int32")
    lab = labels.ravel()
    n = len(fields) + 1
    out = []
    with ThreadPoolExecutor(2) as pool:
        for d in range(n_dates):
            b04, b08, scl = pool.map(_read, _files(data, n_dates)[3 * d: 3 * d + 3])
            v = _masked_ndvi(b04, b08, scl).ravel()
            ok = np.isfinite(v) & (lab > 0)
            c = np.bincount(lab[ok], minlength=n)
            s = np.bincount(lab[ok], weights=v[ok], minlength=n)
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(np.where(c > 0, s / np.maximum(c, 1), np.nan)[1:])
    m = np.stack(out)
    return {"rows": int(np.isfinite(m).sum()), "ndvi_mean": float(np.nanmean(m))}


METHODS = {"floor": m_floor, "floor_rows": m_floor_rows, "cropyield": m_cropyield,
           "ee_plain": m_ee_plain,
           "ee_cov_once": m_ee_cov_once, "rasterize": m_rasterize}


def child(method, data, n_dates, n_fields, size, save):
    import geopandas as gpd

    fields = gpd.read_parquet(Path(data) / f"fields_{n_fields}.parquet")
    warm = 0.0
    if method == "cropyield":   # JIT warm-up (compilation is not timed): every field on a
        from cropyield.coverage import COVERAGE_CACHE             # clear and a cloudy date,
        from cropyield.observations import field_observations     # so every kernel on the
                                                                   # path compiles; then the
        with Timer() as tw:                                        # coverage is forgotten
            field_observations(scenes_for(data, 2), fields, indices=("ndvi",))
            COVERAGE_CACHE.clear()
        warm = tw.s
    c0 = time.process_time()
    with Timer() as t:
        res = METHODS[method](data, fields, n_dates)
    cpu = time.process_time() - c0
    df = res.pop("_df", None)
    if save and df is not None:
        df.to_parquet(save)
    res.update(method=method, wall_s=t.s, cpu_s=cpu, warmup_s=warm, n_dates=n_dates)
    emit(res)


def blocks_under_fields(data, fields, size):
    """(blocks intersecting fields, total blocks) of the 10 m files."""
    import rasterio
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    with rasterio.open(_files(data, 1)[0]) as ds:
        bh, bw = ds.block_shapes[0]
    lab = rasterize(((g, 1) for g in fields.geometry), out_shape=(size, size),
                    transform=from_origin(X0, Y0, 10, 10), all_touched=True, dtype="uint8")
    nb = -(-size // bh)
    hit = lab.reshape(nb, bh, nb, bw).max(axis=(1, 3)) if size % bh == 0 else None
    return (int(hit.sum()) if hit is not None else -1), nb * nb, (bh, bw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--fields", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blocksize", type=int, default=512)
    ap.add_argument("--data", default=None)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--memory-dates", type=int, default=6,
                    help="also run cropyield once on this many dates (peak memory vs dates)")
    ap.add_argument("--before-src", default=None,
                    help="also run field_observations from this source tree (a 'src' folder "
                         "of an older checkout, e.g. from `git archive`), as method "
                         "'cropyield_before', interleaved with the others")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "N_DATES", "SAVE"), default=None)
    a = ap.parse_args(argv)
    data = Path(a.data or Path(__file__).parent / "_data" / f"zonal_{a.size}_{a.blocksize}")
    if a.child:
        child(a.child[0], data, int(a.child[1]), a.fields, a.size,
              None if a.child[2] == "-" else a.child[2])
        return
    t0 = time.perf_counter()
    make_dates(data, a.dates, a.size, blocksize=a.blocksize)
    fpath = data / f"fields_{a.fields}.parquet"
    if not fpath.exists():
        smallholder_fields(a.fields, a.size).to_parquet(fpath)
    gen_s = time.perf_counter() - t0
    import geopandas as gpd

    nb_hit, nb_all, bshape = blocks_under_fields(data, gpd.read_parquet(fpath), a.size)
    results = {}
    methods = list(a.methods)
    if a.before_src:
        methods.append("cropyield_before")
    for rep in range(a.repeat):                       # interleaved: noise hits all alike
        for m in methods:
            save = str(data / f"out_{m}.parquet") if rep == 0 and m in (
                "cropyield", "ee_plain", "cropyield_before") else "-"
            env = None
            if m == "cropyield_before":
                env = {"PYTHONPATH": str(Path(a.before_src).resolve())}
            r = run_child([__file__, "--size", str(a.size), "--fields", str(a.fields),
                           "--blocksize", str(a.blocksize), "--data", str(data),
                           "--child", m.replace("_before", ""), str(a.dates), save], env=env)
            results.setdefault(m, []).append(r)
            print(f"  run {rep + 1}/{a.repeat} {m:12s} {r['wall_s']:7.2f} s "
                  f"{r['maxrss_mib']:7.0f} MiB", file=sys.stderr, flush=True)
    mem = None
    if a.memory_dates and a.memory_dates < a.dates and "cropyield" in a.methods:
        mem = run_child([__file__, "--size", str(a.size), "--fields", str(a.fields),
                         "--blocksize", str(a.blocksize), "--data", str(data),
                         "--child", "cropyield", str(a.memory_dates), "-"])
    parity = None
    if {"cropyield", "ee_plain"} <= set(a.methods):
        import pandas as pd

        ours = pd.read_parquet(data / "out_cropyield.parquet")
        ee = pd.read_parquet(data / "out_ee_plain.parquet")
        t_ = sorted(ours["time"].unique())
        ours["d"] = ours["time"].map({t: i for i, t in enumerate(t_)})
        j = ours.merge(ee, on=["field_id", "d"], suffixes=("", "_ee"))
        ok = j["ndvi"].notna() & j["ndvi_ee"].notna()
        parity = {"pairs": int(ok.sum()),
                  "max_abs_diff": float((j.loc[ok, "ndvi"] - j.loc[ok, "ndvi_ee"]).abs().max()),
                  "nan_mismatch": int((j["ndvi"].isna() != j["ndvi_ee"].isna()).sum())}
    cmd = "python benchmarks/bench_zonal.py " + " ".join(argv or sys.argv[1:])
    floor = statistics.median(r["wall_s"] for r in results["floor"]) if "floor" in results \
        else None
    lines = [f"command: `{cmd.strip()}`",
             f"data: {a.size}x{a.size} px (10 m), {a.dates} dates, {a.fields} fields, "
             f"DEFLATE COGs tiled {bshape[0]}, B04+B08 (10 m) + SCL (20 m); "
             f"blocks under fields: {nb_hit}/{nb_all} per 10 m file; generation "
             f"{gen_s:.0f} s; median of {a.repeat} runs",
             "", "| method | wall s (median) | runs | x floor | CPU s (median) | x floor CPU "
             "| JIT warm-up s (not timed) | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    floor_cpu = statistics.median(r["cpu_s"] for r in results["floor"]) if "floor" in \
        results else None
    for m, rs in results.items():
        med = statistics.median(r["wall_s"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        runs = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        ratio = f"{med / floor:.2f}" if floor else "-"
        cratio = f"{cpu / floor_cpu:.2f}" if floor_cpu else "-"
        warm = max(r["warmup_s"] for r in rs)
        lines.append(f"| {m} | {med:.2f} | {runs} | {ratio} | {cpu:.2f} | {cratio} | "
                     f"{f'{warm:.1f}' if warm else '-'} | "
                     f"{max(r['maxrss_mib'] for r in rs):.0f} |")
    if mem:
        lines.append(f"| cropyield, {a.memory_dates} dates | {mem['wall_s']:.2f} | 1 | - | "
                     f"{mem['cpu_s']:.2f} | - | - | {mem['maxrss_mib']:.0f} |")
    if parity:
        lines.append("")
        lines.append(f"parity cropyield vs exactextract mean: {parity['pairs']} field-dates, "
                     f"max |diff| {parity['max_abs_diff']:.2e}, NaN mismatches "
                     f"{parity['nan_mismatch']}")
    if {"cropyield", "cropyield_before"} <= set(results):
        import pandas as pd

        new_df = pd.read_parquet(data / "out_cropyield.parquet")
        old_df = pd.read_parquet(data / "out_cropyield_before.parquet")
        same = new_df.equals(old_df)
        if same:
            what = "bit-identical"
        elif new_df[["field_id", "time"]].equals(old_df[["field_id", "time"]]):
            d = (new_df["ndvi"] - old_df["ndvi"]).abs()
            nan_mis = int((new_df["ndvi"].isna() != old_df["ndvi"].isna()).sum())
            what = f"same rows, max |diff| ndvi {d.max():.1e}, NaN mismatches {nan_mis}"
        else:
            what = "DIFFERENT rows"
        lines.append("")
        lines.append(f"cropyield vs cropyield_before output (field_id, time, ndvi): {what}")
    if "floor" in results:
        for m, rs in results.items():
            if m == "floor":
                continue
            pr = [r["wall_s"] / f["wall_s"] for r, f in zip(rs, results["floor"])]
            lines.append(f"{m}: per-repeat wall ratio to the floor run just before it: "
                         f"{', '.join(f'{x:.2f}' for x in pr)} (median "
                         f"{statistics.median(pr):.2f})")
    if {"cropyield", "cropyield_before"} <= set(results):
        pr = [r["wall_s"] / b["wall_s"] for r, b in zip(results["cropyield"],
                                                         results["cropyield_before"])]
        pc = [r["cpu_s"] / b["cpu_s"] for r, b in zip(results["cropyield"],
                                                       results["cropyield_before"])]
        lines.append(f"cropyield / cropyield_before, paired per repeat: wall median "
                     f"{statistics.median(pr):.3f} (faster in {sum(x < 1 for x in pr)} of "
                     f"{len(pr)}), CPU median {statistics.median(pc):.3f}")
    if "cropyield" in results:
        r = results["cropyield"][0]
        lines.append(f"cropyield blocks_read {r['blocks_read']}, bytes_read "
                     f"{r['bytes_read'] / 2**20:.0f} MiB")
    text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    (data / "result.json").write_text(json.dumps({"results": results, "mem": mem,
                                                  "parity": parity, "table": text}, default=str))


if __name__ == "__main__":
    main()
