"""Benchmark: numba compilation paid by the first ``field_observations`` call of a process.

Each run is a fresh subprocess that imports cropyield and calls ``field_observations``
twice on the same small case (2 dates x 2 000 fields of the zonal benchmark data): the
first call compiles every kernel on its path, the second does not, so their difference is
the compilation. ``cache=off`` sets ``CROPYIELD_NUMBA_CACHE=0`` (compile everything per
process); ``cache=warm`` runs after a process that filled numba's on-disk cache (module-
level kernels load from disk; the factory-made fused index kernels still compile).

Usage::

    python benchmarks/bench_jit.py [--repeat 3] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
sys.path.insert(0, {bench!r})
t0 = time.perf_counter()
import geopandas as gpd
from _common import scenes_for
from cropyield.observations import field_observations
t1 = time.perf_counter()
fields = gpd.read_parquet({fields!r}).iloc[:2000]
scenes = scenes_for({data!r}, 2)
t2 = time.perf_counter()
field_observations(scenes, fields, indices=("ndvi",))
t3 = time.perf_counter()
field_observations(scenes, fields, indices=("ndvi",))
t4 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "first_s": t3 - t2, "second_s": t4 - t3}}))
"""


def run(data: Path, cache: bool) -> dict:
    env = dict(os.environ, CROPYIELD_NUMBA_CACHE="1" if cache else "0")
    code = CHILD.format(bench=str(Path(__file__).parent), data=str(data),
                        fields=str(data / "fields_20000.parquet"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", default=None)
    a = ap.parse_args(argv)
    data = Path(a.data or Path(__file__).parent / "_data" / "zonal_4096_512")
    if not (data / "fields_20000.parquet").exists():
        sys.exit(f"no data under {data}: run benchmarks/bench_zonal.py once first")
    run(data, True)                                  # fill the on-disk cache
    res: dict[str, list] = {"cache=off": [], "cache=warm": []}
    for _ in range(a.repeat):                        # interleaved
        res["cache=off"].append(run(data, False))
        res["cache=warm"].append(run(data, True))
    cmd = "python benchmarks/bench_jit.py " + " ".join(argv or sys.argv[1:])
    print(f"command: `{cmd.strip()}`\n")
    print("| numba cache | first call s | second call s | compilation s (first - second) "
          "| import s |\n|---|---|---|---|---|")
    for k, rs in res.items():
        med = {m: statistics.median(r[m] for r in rs) for m in rs[0]}
        print(f"| {k} | {med['first_s']:.2f} | {med['second_s']:.2f} | "
              f"{med['first_s'] - med['second_s']:.2f} | {med['import_s']:.2f} |")


if __name__ == "__main__":
    main()
