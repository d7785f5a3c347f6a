"""Scaling benchmark (issue 19 item 7): ``cy.estimate`` on a dask LocalCluster with 1 and 2
workers, over a synthetic county served through a STAC API and a Range COG server that adds
50 ms to every request (object storage is not localhost).

Reports, per run: fields/s through the partitioned stages, speed-up of 2 workers over 1
(median of ``--repeat`` side-by-side runs), peak RSS per worker process (``ru_maxrss``),
HTTP requests and bytes as the COG server counted them against the minimum (each
compressed COG block that a field's bounding box touches read once, per needed band and
scene), and CPU seconds per process (workers, driver, and the servers, which run in a
separate process) with the share of the machine that was busy and the load average, since
wall time on a shared machine says little. Peak RSS is also measured with 10x fewer fields
on 1 worker, to show that memory per worker is bounded by the partition, not by the county.

    python benchmarks/bench_scale.py --size reduced --latency-ms 50 --partition-size 150 \
        --workers 1,2 --repeat 3                           # what docs/scaling.md shows
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
import os
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


def _serve_child(size: str, latency_ms: float, conn) -> None:
    """Child process: serve the world (STAC API + Range COG server with latency) until told
    to stop; answers ``"stats"`` with (requests, body bytes sent) since the last ``"reset"``."""
    from cropyield import servers, synthetic
    from cropyield.demo import demo_world

    cfg = synthetic.WorldConfig(seed=0, **SIZES[size])
    world = demo_world(cfg, progress=lambda i, n, what="": print(
        f"  generating {what} {i}/{n}", file=sys.stderr, flush=True))
    with servers.serve_world(world, cog_faults=_latency(latency_ms)) as srv:
        conn.send({"stac_url": srv.stac_url, "cog_url": srv.cog_url, "root": str(world.root)})
        while True:
            cmd = conn.recv()
            if cmd == "stats":
                conn.send((srv.cogs.n_requests, srv.cogs.bytes_sent))
            elif cmd == "reset":
                srv.cogs.reset_log()
                conn.send(True)
            else:
                break


class _Servers:
    """The benchmark's STAC and Range servers in a separate process (so that their CPU time
    is not the driver's, and can be reported on its own)."""

    def __init__(self, size: str, latency_ms: float):
        import multiprocessing as mp

        import psutil

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_child, args=(size, latency_ms, child),
                                daemon=True)
        self.proc.start()
        self.info = self.conn.recv()
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stats(self) -> tuple[int, int]:
        self.conn.send("stats")
        return self.conn.recv()

    def reset(self) -> None:
        self.conn.send("reset")
        self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat (0, 0 elsewhere)."""
    try:
        v = [float(x) for x in open("/proc/stat").readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = v[3] + (v[4] if len(v) > 4 else 0.0)
    return sum(v) - idle, sum(v)


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


def _worker_cpu(client) -> dict:
    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    return client.run(cpu)


def _warm(scenes, fields) -> None:
    from cropyield.pipeline import _Options, _partition_tables

    o = _Options(indices=INDICES, region="north_china_plain", model=None, prices=None,
                 as_of=None, on_error="flag", declared_prior_odds=10.0,
                 min_coverage_frac=0.5, id_col="field_id", env={})
    by_tile: dict = {}
    for i, s in enumerate(scenes):
        by_tile.setdefault(s.tile, []).append(i)
    pick = sorted(i for ix in by_tile.values() for i in ix[:3])
    _partition_tables(type(scenes)([scenes[i] for i in pick], scenes.lineage, scenes.signer),
                      fields, o)


def run_once(fields, scenes, start, end, n_workers: int, out: Path,
             partition_size: int, srv: "_Servers | None" = None) -> dict:
    """One ``cy.estimate`` on a fresh LocalCluster. Besides wall time, CPU seconds are
    accounted per process (workers: getrusage; driver: process_time; servers: psutil) and
    for the whole machine (/proc/stat), with the load average sampled every 2 s, so that a
    run on a machine shared with other work can be judged by its CPU, not its wall time."""
    import os
    import statistics
    import threading

    import distributed

    import cropyield as cy

    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        # warm the workers off the clock: imports and every stage's numba kernels (loaded
        # from the on-disk cache, or compiled on a fresh checkout: seconds per worker, paid
        # once per worker and run, not per field), on 5 fields and 3 scenes per tile
        client.run(_warm, scenes, fields.iloc[:: max(1, len(fields) // 5)])
        if srv is not None:
            srv.reset()
        loads: list[float] = []
        stop = threading.Event()

        def sample():
            while not stop.wait(2.0):
                loads.append(os.getloadavg()[0])

        sampler = threading.Thread(target=sample, daemon=True)
        w0 = _worker_cpu(client)
        s0 = srv.cpu_s() if srv is not None else 0.0
        m0 = _machine_cpu()
        d0 = time.process_time()
        sampler.start()
        t0 = time.perf_counter()
        res = cy.estimate(fields, start, end, scenes=scenes, client=client, store=out,
                          restart=True, collect=False, min_coverage_frac=0.5,
                          partition_size=partition_size,
                          declared_prior_odds=10.0, progress_bar=False)
        wall = time.perf_counter() - t0
        d1 = time.process_time()
        m1 = _machine_cpu()
        s1 = srv.cpu_s() if srv is not None else 0.0
        w1 = _worker_cpu(client)
        stop.set()
        sampler.join()
        rss = _worker_peak_rss(client)
        http = srv.stats() if srv is not None else (None, None)
    s = res.summary
    wcpu = sorted(round(w1[k] - w0[k], 1) for k in w1)
    busy, tot = m1[0] - m0[0], m1[1] - m0[1]
    ncpu = os.cpu_count() or 1
    out = {"workers": n_workers, "fields": len(fields), "wall_s": round(wall, 1),
           "fields_per_s": round(len(fields) / wall, 2),
           "partitions": s["n_partitions"], "requests": s["requests"],
           "bytes_read": s["bytes_read"],
           "http_requests": http[0], "http_bytes": http[1],
           "worker_cpu_s": wcpu,
           "worker_cpu_s_per_field": round(sum(wcpu) / max(1, len(fields)), 4),
           "driver_cpu_s": round(d1 - d0, 1),
           "server_cpu_s": round(s1 - s0, 1),
           # share of all cores busy during the run (ours + everyone else's)
           "machine_busy": round(busy / tot, 2) if tot else None,
           "others_cpu_s": (round(busy / tot * wall * ncpu - sum(wcpu) - (d1 - d0)
                                  - (s1 - s0), 1) if tot else None),
           "load_avg_median": round(statistics.median(loads), 2) if loads else None,
           "timings_s": {k: v for k, v in s.get("timings_s", {}).items()},
           "peak_rss_per_worker_mb": sorted(round(v / 2**20) for v in rss.values())}
    return out


def main(argv=None) -> int:
    import statistics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="reduced")
    ap.add_argument("--latency-ms", type=float, default=LATENCY_MS)
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the worker counts side by side this many times (medians)")
    ap.add_argument("--no-small", action="store_true",
                    help="skip the 1-worker run on a tenth of the fields (RSS vs field count)")
    ap.add_argument("--partition-size", type=int, default=None)
    ap.add_argument("--out", default=None, help="scratch folder for the stores")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import tempfile

    import cropyield as cy
    from cropyield import synthetic

    cfg = synthetic.WorldConfig(seed=0, **SIZES[args.size])
    t0 = time.perf_counter()
    srv = _Servers(args.size, args.latency_ms)
    t_world = time.perf_counter() - t0
    psize = args.partition_size or PARTITION_SIZE[args.size]
    try:
        root = Path(srv.info["root"])
        fields = synthetic.World.open(root).fields[["field_id", "farmer_id", "crop", "declared_area_mu", "geometry"]]
        scratch = Path(args.out or tempfile.mkdtemp(prefix="cropyield-bench-scale-"))
        rows = []
        scenes = cy.search_scenes(fields, cfg.start, cfg.end, catalog=srv.info["stac_url"])
        n_dates = len({(s.tile, s.datetime.date()) for s in scenes}) / max(
            1, len({s.tile for s in scenes}))
        minimum = min_bytes(root, scenes, fields)
        small = fields.iloc[: max(1, len(fields) // 10)]
        plan = [(int(w), fields) for _ in range(max(1, args.repeat))
                for w in args.workers.split(",")]
        if not args.no_small:
            plan.append((1, small))
        for w, fl in plan:
            print(f"run: {w} worker(s), {len(fl)} fields ...", file=sys.stderr, flush=True)
            r = run_once(fl, scenes, cfg.start, cfg.end, w, scratch / f"w{w}-{len(fl)}",
                         psize, srv)
            if len(fl) == len(fields):
                r["bytes_vs_minimum"] = round(r["bytes_read"] / minimum, 2)
                if r["http_bytes"] is not None:
                    r["http_bytes_vs_minimum"] = round(r["http_bytes"] / minimum, 2)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    finally:
        srv.close()

    def med(w: int, key: str) -> float:
        return statistics.median(r[key] for r in rows
                                 if r["workers"] == w and r["fields"] == len(fields))

    print()
    print(f"command: python benchmarks/bench_scale.py --size {args.size} "
          f"--latency-ms {args.latency_ms:g} --partition-size {psize} --workers {args.workers}"
          f" --repeat {args.repeat}")
    print(f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, cropyield "
          f"{cy.__version__}, world {args.size}: {len(fields)} fields, {len(scenes)} scenes "
          f"({n_dates:.0f} dates x {len({s.tile for s in scenes})} tiles, "
          f"{cfg.tile_size_px} px), world load/generation {t_world:.0f} s")
    print(f"COG latency {args.latency_ms:g} ms per request; minimum bytes {minimum / 1e6:.1f} MB")
    print()
    print("| workers | fields | wall s | fields/s | partitions | HTTP requests | MB sent "
          "| sent / minimum | worker CPU s | server CPU s | driver CPU s | machine busy "
          "| load avg | peak RSS per worker (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        hb = r["http_bytes"] / 1e6 if r["http_bytes"] is not None else float("nan")
        print(f"| {r['workers']} | {r['fields']} | {r['wall_s']} | {r['fields_per_s']} | "
              f"{r['partitions']} | {r['http_requests']} | {hb:.1f} | "
              f"{r.get('http_bytes_vs_minimum', '')} | {r['worker_cpu_s']} | "
              f"{r['server_cpu_s']} | {r['driver_cpu_s']} | {r['machine_busy']} | "
              f"{r['load_avg_median']} | {r['peak_rss_per_worker_mb']} |")
    ws = [int(w) for w in args.workers.split(",")]
    if len(ws) > 1 and ws[0] == 1:
        print()
        for w in ws[1:]:
            print(f"median speed-up {w} vs 1 worker (wall): "
                  f"{med(w, 'fields_per_s') / med(1, 'fields_per_s'):.2f}x; worker CPU s per "
                  f"field: 1 worker {med(1, 'worker_cpu_s_per_field'):.4f}, {w} workers "
                  f"{med(w, 'worker_cpu_s_per_field'):.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "rows": rows,
                                               "minimum_bytes": minimum}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
