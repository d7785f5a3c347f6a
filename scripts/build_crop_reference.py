"""Build ``cropyield/data/crop_reference.parquet``: the crop-model weather index of every
shipped weather year (:func:`cropyield.cropmodel.build_reference_index`; needs ``pcse``).

Usage::

    PYTHONPATH=src .venv/bin/python scripts/build_crop_reference.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cropyield.cropmodel import REFERENCE_FILE, build_reference_index


def main() -> int:
    t0 = time.time()
    df = build_reference_index()
    out = Path(__file__).resolve().parents[1] / "src" / "cropyield" / "data" / REFERENCE_FILE
    df.to_parquet(out, index=False)
    sys.stdout.write(f"{len(df)} rows -> {out} ({time.time() - t0:.0f} s)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
