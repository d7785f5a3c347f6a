"""Write ``cropyield/data/crop_weather.parquet``: the daily weather of the crop-model library.

The WOFOST library (:mod:`cropyield.cropmodel`) runs on the Wageningen (Haarweg) weather
files ``NL1.976``-``NL1.999`` shipped in the PCSE wheel (CABO format: irradiation kJ m-2 d-1,
minimum and maximum temperature degC, rain mm d-1; -99 = missing). This script copies the
columns the yield models use into a small Parquet file so the package can map the weather of
any library run onto the simulated or synthetic calendar without PCSE installed.

Usage::

    PYTHONPATH=src .venv/bin/python scripts/build_crop_weather.py   # needs the [pcse] extra
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> int:
    import pcse

    src = Path(os.path.dirname(pcse.__file__)) / "tests" / "test_data"
    rows = []
    for y in range(1976, 2000):
        with open(src / f"NL1.{y % 1000:03d}", encoding="latin-1") as fh:
            for ln in fh:
                p = ln.split()
                # station -999: a line of quality codes, not data
                if ln.startswith("*") or len(p) != 9 or p[0] == "-999":
                    continue
                rows.append((pd.Timestamp(int(p[1]), 1, 1) + pd.Timedelta(days=int(p[2]) - 1),
                             float(p[3]), float(p[4]), float(p[5]), float(p[8])))
    df = pd.DataFrame(rows, columns=["date", "irrad_kj", "tmin_c", "tmax_c", "rain_mm"])
    for c in ("irrad_kj", "tmin_c", "tmax_c", "rain_mm"):
        df.loc[df[c] < -90, c] = np.nan
    df["radiation_mj_m2"] = (df.pop("irrad_kj") / 1000.0).round(3)
    df = df[["date", "tmin_c", "tmax_c", "radiation_mj_m2", "rain_mm"]]
    df["date"] = df["date"].astype("datetime64[ns]")
    # some files (1978, 1986-1990) give a day twice: first a line of quality codes (all
    # values 1 or 3), then the data; keep the data line (the last, as a reader that
    # overwrites by day does)
    df = df.drop_duplicates("date", keep="last")
    full = pd.date_range(df["date"].min(), df["date"].max(), freq="D")
    df = df.set_index("date").reindex(full).rename_axis("date").reset_index()
    out = Path(__file__).resolve().parents[1] / "src" / "cropyield" / "data" / "crop_weather.parquet"
    df.to_parquet(out, index=False)
    sys.stdout.write(f"wrote {out} ({len(df)} days, {df['date'].min().date()} - "
                     f"{df['date'].max().date()}, pcse {pcse.__version__})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
