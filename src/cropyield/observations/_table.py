"""Row flags and the assembly of the observations table (one row per field and acquisition).

:func:`_assemble` turns the per-scene row blocks of :class:`._run._Run` into the
documented DataFrame (``OBSERVATION_COLUMNS``, then ``<index>``, ``<index>_std``,
``flags``); :func:`observations_to_xarray` turns it into a ``(field, time)`` Dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["observations_to_xarray", "OBSERVATION_COLUMNS"]

#: Leading columns of the observations table (then ``<index>``, ``<index>_std``, ``flags``).
OBSERVATION_COLUMNS = ("field_id", "time", "scene_id", "tile", "coverage", "valid_fraction")

# row flag bits
_B_NO_OVERLAP, _B_ALL_MASKED, _B_LOW_VALID, _B_READ_FAILED, _B_AUTH = 1, 2, 4, 8, 16
_BIT_CODES = {_B_NO_OVERLAP: "NO_OVERLAP", _B_ALL_MASKED: "ALL_MASKED",
              _B_LOW_VALID: "LOW_VALID_FRACTION", _B_READ_FAILED: "READ_FAILED",
              _B_AUTH: "AUTH_EXPIRED"}


def observations_to_xarray(df: pd.DataFrame):
    """Observations table -> ``xarray.Dataset`` with dims ``(field, time)``.

    Every numeric column becomes a variable; ``flags``, ``scene_id`` and ``tile`` become
    object variables (missing combinations are NaN / ""). ``time`` is tz-naive UTC.
    """
    import xarray as xr

    if df.empty:
        return xr.Dataset(coords={"field": [], "time": np.array([], "datetime64[ns]")})
    d = df.copy()
    t = pd.DatetimeIndex(d["time"])
    if t.tz is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    d["time"] = t
    d = d.rename(columns={"field_id": "field"}).set_index(["field", "time"])
    ds = xr.Dataset.from_dataframe(d)
    for c in ("flags", "scene_id", "tile"):
        if c in ds:
            ds[c] = ds[c].fillna("")
    ds.attrs.update({k: v for k, v in df.attrs.items() if isinstance(v, (int, float, str))})
    ds.attrs["time_zone"] = "UTC"
    return ds




def _assemble(results: Sequence[Any], scene_list, field_ids: np.ndarray,
              indices: Sequence[str], stats: dict[str, Any], failures: Sequence[dict],
              classes, dilate: int) -> pd.DataFrame:
    """One DataFrame from the per-acquisition row blocks of :class:`._run._Run`, sorted by
    field (input order) then scene, with the reader's counts in ``attrs``."""
    parts = [p for r in results if r for p in r]
    cols: dict[str, list] = {k: [] for k in ("fi", "scene", "cov", "vf", "flags")}
    vals: dict[str, list] = {n: [] for n in indices}
    stds: dict[str, list] = {n: [] for n in indices}
    for p in parts:
        cols["fi"].append(p["fi"])
        cols["scene"].append(np.full(len(p["fi"]), p["scene"], np.int64))
        cols["cov"].append(p["cov"])
        cols["vf"].append(p["vf"])
        cols["flags"].append(np.asarray(p["flags"], dtype=object))
        for n in indices:
            vals[n].append(p["mean"][n])
            stds[n].append(p["std"][n])

    def cat(lst, dtype):
        return np.concatenate(lst) if lst else np.zeros(0, dtype)

    fi = cat(cols["fi"], np.int64)
    si = cat(cols["scene"], np.int64)
    srt = np.lexsort((si, fi)) if len(fi) else np.zeros(0, np.int64)
    fi, si = fi[srt], si[srt]
    flags = cat(cols["flags"], object)[srt]
    times = pd.DatetimeIndex([pd.Timestamp(s.datetime) for s in scene_list])
    if times.tz is None:
        times = times.tz_localize("UTC")
    times = times.tz_convert("UTC").as_unit("ns") if len(times) else times
    scene_ids = np.array([s.id for s in scene_list], dtype=object)
    tiles = np.array([s.tile for s in scene_list], dtype=object)
    data = {
        "field_id": _take(field_ids, fi),
        "time": times[si] if len(si) else pd.DatetimeIndex([], tz="UTC"),
        "scene_id": _take(scene_ids, si),
        "tile": _take(tiles, si),
        "coverage": cat(cols["cov"], float)[srt],
        "valid_fraction": cat(cols["vf"], float)[srt],
    }
    for n in indices:
        data[n] = cat(vals[n], float)[srt]
        data[f"{n}_std"] = cat(stds[n], float)[srt]
    data["flags"] = pd.Series(flags, dtype=object)
    df = pd.DataFrame(data, copy=False)      # every column was built here: no copy
    df.attrs.update({
        "requests": stats["requests"], "bytes_read": stats["bytes_read"],
        "blocks_read": stats["blocks_read"], "retries": stats["retries"],
        "read_failures": list(failures),
        "scene_ids": [s.id for s in scene_list], "indices": list(indices),
        "scl_classes": list(classes), "dilate": int(dilate),
    })
    return df


def _take(values: np.ndarray, idx: np.ndarray):
    """``values[idx]``; a few distinct strings repeated many times are expanded in Arrow
    (what pandas would convert the object array to, 10x faster than from Python str)."""
    if values.dtype == object and len(idx) and all(isinstance(v, str) for v in values):
        import pyarrow as pa
        import pyarrow.compute as pc

        dtype = pd.Series(values[:1]).dtype         # what pandas makes of str objects
        if not (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"):
            return values[idx]                      # object (pandas < 3): kept as is
        # large_string is pandas 3's storage of str: no cast afterwards
        return pd.Series(pc.take(pa.array(values.tolist(), pa.large_string()),
                                 pa.array(idx)), dtype=dtype)
    return values[idx]


def _with_scene_flags(flags: np.ndarray, scene_flags) -> np.ndarray:
    if not scene_flags:
        return flags
    from ..errors import join_flags

    u, inv = np.unique(flags.astype(str), return_inverse=True)
    joined = np.array([join_flags(x, list(scene_flags)) for x in u], dtype=object)
    return joined[inv.ravel()]

