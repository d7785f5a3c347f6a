"""Build the cached library of WOFOST runs shipped with cropyield.

Runs PCSE/WOFOST 7.2 (extra ``[pcse]``) over the scenario design of
:func:`cropyield.cropmodel.library_runs` (per crop and weather year 1977-1999 without 1990/91:
``--runs-per-year`` seeded draws of emergence date, soil rooting depth, nitrogen supply and
irrigations; see the :mod:`cropyield.cropmodel` docstring for every assumption) and writes
``src/cropyield/data/crop_library.parquet``: one row per run with its yield and daily green LAI.

Run (about 4-8 minutes on a shared 2-core machine)::

    PYTHONPATH=src python scripts/build_crop_library.py [--seed 0] [--runs-per-year 16]

The demo, the synthetic world and the tests read the file; none of them runs WOFOST.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _part(args):
    from cropyield.cropmodel import build_library

    seed, rpy, i, n = args
    return build_library(seed, rpy, part=(i, n))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs-per-year", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=1, help="processes (same result for any n)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1]
                                         / "src" / "cropyield" / "data" / "crop_library.parquet"))
    args = ap.parse_args(argv)
    from cropyield.cropmodel import LIBRARY_VERSION, build_library

    t0 = time.time()

    def progress(i, n):
        if i % 50 == 0 or i == n:
            sys.stderr.write(f"{i}/{n} runs, {time.time() - t0:.0f} s\n")

    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as ex:
            parts = list(ex.map(_part, [(args.seed, args.runs_per_year, i, args.jobs)
                                        for i in range(args.jobs)]))
        import pandas as pd

        df = pd.concat(parts).sort_values("run_id").reset_index(drop=True)
    else:
        df = build_library(args.seed, args.runs_per_year, progress=progress)
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({
        **(table.schema.metadata or {}),
        b"cropyield_library_version": str(LIBRARY_VERSION).encode(),
        b"cropyield_seed": str(args.seed).encode(),
        b"cropyield_runs_per_year": str(args.runs_per_year).encode()})
    pq.write_table(table, args.out, compression="zstd")
    sys.stderr.write(f"wrote {args.out}: {len(df)} runs in {time.time() - t0:.0f} s\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
