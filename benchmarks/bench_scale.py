"""Scaling benchmark (issue 19 item 7): ``cy.estimate`` on a dask LocalCluster with 1 and 2
workers, over a synthetic county served through a STAC API and a Range COG server that adds
50 ms to every request (object storage is not localhost).

Reports, per run: fields/s through the partitioned stages, speed-up of 2 workers over 1,
peak RSS per worker process (``ru_maxrss``), and bytes read against the minimum (each
compressed COG block that a field's bounding box touches read once, per needed band and
scene). Peak RSS is also measured with 10x fewer fields on 1 worker, to show that memory
per worker is bounded by the partition, not by the county.

    python benchmarks/bench_scale.py --size reduced           # what docs/scaling.md shows
    python benchmarks/bench_scale.py --size county            # >= 100 000 fields, 2 real tiles
    nox -s bench -- scale

Sizes (synthetic worlds, generated once and cached in ~/.cache/cropyield/worlds):

* ``reduced``: 2 overlapping 480 px tiles, 1 500 fields, ~33 dates per tile.
* ``county``: 2 overlapping real-size tiles (10 980 px at 10 m, 109.8 km), 100 000 fields,
  ~33 dates per tile (a 12-day revisit over 2021-10..2022-10). Generation alone takes hours
  on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

SIZES = {
    "reduced": {"size_m": (7600.0, 4000.0), "n_fields": 1500, "tile_size_px": 480,
                "tile_overlap_px": 80, "revisit_days": 12, "blocksize": 256},
    "county": {"size_m": (190000.0, 100000.0), "n_fields": 100_000, "tile_size_px": 10980,
               "tile_overlap_px": 980, "revisit_days": 12, "blocksize": 512},
}
#: Fields per partition per size (several partitions per worker, as in a real county run).
PARTITION_SIZE = {"reduced": 150, "county": 2000}
LATENCY_MS = 50.0
INDICES = ("ndvi", "ndre", "ndmi")


def _latency(ms: float):
    from cropyield.cli import _latency_faults

    return _latency_faults(ms)


def min_bytes(world_root: Path, scenes, fields, indices=INDICES) -> int:
    """Bytes of the compressed blocks that the fields' bounding boxes touch, each block once,
    for every band the indices need (+ SCL) of every scene: what any block reader must read."""
    import numpy as np
    import rasterio
    from urllib.parse import urlsplit

    from cropyield.indices import INDICES as REG

    bands = sorted({b for ix in indices for b in REG[ix].bands} | {"SCL"})
    total = 0
    by_crs: dict = {}
    for s in scenes:
        for b in bands:
            band = s.bands.get(b)
            if band is None:
                continue
            g = band.grid
            key = str(g.crs)
            if key not in by_crs:
                by_crs[key] = fields.to_crs(g.crs).geometry.bounds.to_numpy()
            bb = by_crs[key]
            path = world_root / urlsplit(band.href).path.lstrip("/")
            with rasterio.open(path) as src:
                bh, bw = src.block_shapes[0]
                inv = ~src.transform
                xa, ya = inv * (bb[:, 0], bb[:, 3])
                xb, yb = inv * (bb[:, 2], bb[:, 1])
                c0 = np.clip(np.floor(np.minimum(xa, xb)), 0, src.width - 1).astype(int)
                c1 = np.clip(np.floor(np.maximum(xa, xb)), 0, src.width - 1).astype(int)
                r0 = np.clip(np.floor(np.minimum(ya, yb)), 0, src.height - 1).astype(int)
                r1 = np.clip(np.floor(np.maximum(ya, yb)), 0, src.height - 1).astype(int)
                inside = ~((bb[:, 2] < src.bounds.left) | (bb[:, 0] > src.bounds.right)
                           | (bb[:, 3] < src.bounds.bottom) | (bb[:, 1] > src.bounds.top))
                blocks = set()
                for a, bcol, c, d in zip(r0[inside] // bh, c0[inside] // bw,
                                         r1[inside] // bh, c1[inside] // bw):
                    for i in range(a, c + 1):
                        for j in range(bcol, d + 1):
                            blocks.add((i, j))
                total += sum(src.block_size(1, i, j) for i, j in blocks)
    return int(total)


def _worker_peak_rss(client) -> dict:
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    return client.run(peak)


def run_once(fields, scenes, start, end, n_workers: int, out: Path,
             partition_size: int) -> dict:
    import distributed

    import cropyield as cy

    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        # warm the workers (imports, numba compilation from the on-disk cache) off the clock
        client.run(lambda: __import__("cropyield.observations"))
        t0 = time.perf_counter()
        res = cy.estimate(fields, start, end, scenes=scenes, client=client, store=out,
                          restart=True, collect=False, min_coverage_frac=0.5,
                          partition_size=partition_size,
                          declared_prior_odds=10.0, progress_bar=False)
        wall = time.perf_counter() - t0
        rss = _worker_peak_rss(client)
    s = res.summary
    return {"workers": n_workers, "fields": len(fields), "wall_s": round(wall, 1),
            "fields_per_s": round(len(fields) / wall, 2),
            "partitions": s["n_partitions"], "requests": s["requests"],
            "bytes_read": s["bytes_read"],
            "peak_rss_per_worker_mb": sorted(round(v / 2**20) for v in rss.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="reduced")
    ap.add_argument("--latency-ms", type=float, default=LATENCY_MS)
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--partition-size", type=int, default=None)
    ap.add_argument("--out", default=None, help="scratch folder for the stores")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import tempfile

    import cropyield as cy
    from cropyield import servers, synthetic
    from cropyield.demo import demo_world

    cfg = synthetic.WorldConfig(seed=0, **SIZES[args.size])
    t0 = time.perf_counter()
    world = demo_world(cfg, progress=lambda i, n, what="": print(
        f"  generating {what} {i}/{n}", file=sys.stderr, flush=True))
    t_world = time.perf_counter() - t0
    fields = world.fields[["field_id", "farmer_id", "crop", "declared_area_mu", "geometry"]]
    scratch = Path(args.out or tempfile.mkdtemp(prefix="cropyield-bench-scale-"))
    rows = []
    with servers.serve_world(world, cog_faults=_latency(args.latency_ms)) as srv:
        scenes = cy.search_scenes(fields, cfg.start, cfg.end, catalog=srv.stac_url)
        n_dates = len({(s.tile, s.datetime.date()) for s in scenes}) / max(
            1, len({s.tile for s in scenes}))
        minimum = min_bytes(Path(world.root), scenes, fields)
        small = fields.iloc[: max(1, len(fields) // 10)]
        plan = [(int(w), fields) for w in args.workers.split(",")] + [(1, small)]
        for w, fl in plan:
            print(f"run: {w} worker(s), {len(fl)} fields ...", file=sys.stderr, flush=True)
            r = run_once(fl, scenes, cfg.start, cfg.end, w, scratch / f"w{w}-{len(fl)}",
                         args.partition_size or PARTITION_SIZE[args.size])
            if len(fl) == len(fields):
                r["bytes_vs_minimum"] = round(r["bytes_read"] / minimum, 2)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    base = next(r for r in rows if r["workers"] == 1 and r["fields"] == len(fields))
    print()
    print(f"command: python benchmarks/bench_scale.py --size {args.size} "
          f"--latency-ms {args.latency_ms:g} --partition-size "
          f"{args.partition_size or PARTITION_SIZE[args.size]}")
    print(f"host: {platform.node()} {platform.machine()}, cropyield {cy.__version__}, "
          f"world {args.size}: {len(fields)} fields, {len(scenes)} scenes "
          f"({n_dates:.0f} dates x {len({s.tile for s in scenes})} tiles, "
          f"{cfg.tile_size_px} px), world generation {t_world:.0f} s")
    print(f"COG latency {args.latency_ms:g} ms per request; minimum bytes {minimum / 1e6:.1f} MB")
    print()
    print("| workers | fields | wall s | fields/s | speed-up | partitions | requests | MB read "
          "| read / minimum | peak RSS per worker (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sp = (f"{r['fields_per_s'] / base['fields_per_s']:.2f}x"
              if r["fields"] == len(fields) else "")
        print(f"| {r['workers']} | {r['fields']} | {r['wall_s']} | {r['fields_per_s']} | {sp} | "
              f"{r['partitions']} | {r['requests']} | {r['bytes_read'] / 1e6:.1f} | "
              f"{r.get('bytes_vs_minimum', '')} | {r['peak_rss_per_worker_mb']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "rows": rows,
                                               "minimum_bytes": minimum}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
