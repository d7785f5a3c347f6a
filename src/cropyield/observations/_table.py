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

# a row whose covered_fraction is below _FULL_COVER gets PARTIAL_COVERAGE: the rule of
# cropyield.zonal._stat_bits, applied here to read-failure rows too
from ..zonal import _FULL_COVER

__all__ = ["observations_to_xarray", "merge_observations", "OBSERVATION_COLUMNS"]

#: Leading columns of the observations table (then ``<index>``, ``<index>_std``, ``flags``).
OBSERVATION_COLUMNS = ("field_id", "time", "scene_id", "tile", "coverage", "covered_fraction",
                       "valid_fraction")

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




#: rows of one field closer in time than this are one acquisition (scenes of one pass are
#: seconds to minutes apart; two passes over a place are at least a day apart)
_SAME_ACQUISITION = pd.Timedelta(hours=1)


def merge_observations(*frames: pd.DataFrame) -> pd.DataFrame:
    """Merge observation tables of chunks of one scene list into the table one call would
    give: one row per (field, acquisition), no duplicate field-days.

    :func:`cropyield.field_observations` assigns each field to the one scene of an
    acquisition that covers it best; called per chunk of scenes (dask tasks, threads) with
    the scenes of one acquisition split between chunks, each chunk measures the field once
    and the concatenation holds duplicates. Prefer splitting by acquisition (group scenes
    by ``cropyield.read._solar_day``); otherwise merge the chunks' tables with this.

    Rows of a field within one hour of each other are one acquisition. Of these, the row
    kept is the one that does not carry ``READ_FAILED``/``AUTH_EXPIRED``, then has the
    largest ``covered_fraction`` (share of the field in the grid, to 0.1 %), then the largest
    clear share (``covered_fraction x valid_fraction``, to 0.1 %), then the first
    ``scene_id`` in sort order -- the order of :func:`field_observations`'s assignment
    when the swath shares agree. Fill rows (coverage 0, ``NO_OVERLAP`` or
    ``INVALID_GEOMETRY``) lose to any measured row, and are dropped for a field measured
    on another day, as one call would (it fills only fields measured nowhere). ``attrs``: read counters summed, ``read_failures`` and
    ``scene_ids`` concatenated.

    Parameters
    ----------
    *frames : pandas.DataFrame
        Tables from :func:`cropyield.field_observations` (same indices).

    Returns
    -------
    pandas.DataFrame
        Sorted by field (first appearance) then time.
    """
    from ..errors import split_flags

    tables = [f for f in frames if f is not None]
    if not tables:
        raise ValueError("merge_observations needs at least one observations table")
    df = pd.concat(tables, ignore_index=True)
    if df.empty:
        return df
    failed = df["flags"].map(lambda c: bool({"READ_FAILED", "AUTH_EXPIRED"}
                                            & set(split_flags(c)))).to_numpy()
    cf = df["covered_fraction"].to_numpy(float) if "covered_fraction" in df else \
        np.ones(len(df))
    vf = df["valid_fraction"].to_numpy(float)
    key = pd.DataFrame({
        "field": pd.factorize(df["field_id"])[0],
        "time": pd.to_datetime(df["time"], utc=True),
        "failed": failed.astype(int),
        "cov": -np.rint(np.nan_to_num(cf, nan=-1.0) * 1000),
        "clear": -np.rint(np.nan_to_num(cf * vf, nan=-1.0) * 1000),
        "scene": df["scene_id"].astype(str),
    })
    key = key.sort_values(["field", "time"], kind="stable")
    t = key["time"].to_numpy()
    f = key["field"].to_numpy()
    new = np.ones(len(key), bool)
    new[1:] = (f[1:] != f[:-1]) | ((t[1:] - t[:-1]) > _SAME_ACQUISITION.to_timedelta64())
    key["acq"] = np.cumsum(new)
    best = key.sort_values(["acq", "failed", "cov", "clear", "scene"], kind="stable")
    keep = best.drop_duplicates("acq", keep="first").sort_values(["field", "time"],
                                                                 kind="stable").index
    out = df.loc[keep].reset_index(drop=True)
    # fill rows (no pixel: coverage 0, NO_OVERLAP / INVALID_GEOMETRY) exist only for fields
    # without any measured row in a call; a field measured in another chunk loses them
    fill = (out["coverage"].to_numpy(float) == 0) & out["flags"].isin(
        ["NO_OVERLAP", "INVALID_GEOMETRY"]).to_numpy()
    measured = set(out.loc[~fill, "field_id"])
    if fill.any() and measured:
        out = out[~(fill & out["field_id"].isin(measured).to_numpy())].reset_index(drop=True)
    attrs: dict[str, Any] = {}
    for fr in frames:
        for k, v in fr.attrs.items():
            if k in ("requests", "bytes_read", "blocks_read", "retries"):
                attrs[k] = attrs.get(k, 0) + v
            elif k in ("read_failures", "scene_ids"):
                attrs[k] = list(attrs.get(k, [])) + list(v)
            else:
                attrs.setdefault(k, v)
    out.attrs.update(attrs)
    return out


def _assemble(results: Sequence[Any], scene_list, field_ids: np.ndarray,
              indices: Sequence[str], stats: dict[str, Any], failures: Sequence[dict],
              classes, dilate: int, fields=None,
              acquisitions: Sequence[int] = (), repaired=None) -> pd.DataFrame:
    """One DataFrame from the per-acquisition row blocks of :class:`._run._Run`, sorted by
    field (input order) then scene, with the reader's counts in ``attrs``.

    Every field comes out: a field without any row (no pixel in any scene's grid, or a
    geometry that cannot be measured) gets one row per acquisition (``acquisitions``: the
    first scene of each), or one row with ``NaT`` time when there is none, with NaN values
    and ``INVALID_GEOMETRY`` or ``NO_OVERLAP``."""
    parts = [p for r in results if r for p in r]
    cols: dict[str, list] = {k: [] for k in ("fi", "scene", "cov", "vf", "flags", "area")}
    vals: dict[str, list] = {n: [] for n in indices}
    stds: dict[str, list] = {n: [] for n in indices}
    for p in parts:
        cols["fi"].append(p["fi"])
        cols["scene"].append(np.full(len(p["fi"]), p["scene"], np.int64))
        cols["cov"].append(p["cov"])
        cols["vf"].append(p["vf"])
        cols["flags"].append(np.asarray(p["flags"], dtype=object))
        cols["area"].append(np.asarray(p["area"], float))
        for n in indices:
            vals[n].append(p["mean"][n])
            stds[n].append(p["std"][n])
    nfield = len(field_ids)
    present = np.zeros(nfield, bool)
    for p in parts:
        present[p["fi"]] = True
    miss = np.flatnonzero(~present)
    no_time = False
    if len(miss):
        bad = _bad_geometry(fields, miss) if fields is not None else np.zeros(len(miss), bool)
        acq = np.asarray(list(acquisitions), np.int64)
        if not len(acq):
            acq, no_time = np.zeros(1, np.int64), True
        m = len(miss) * len(acq)
        nan = np.full(m, np.nan)
        cols["fi"].append(np.repeat(miss, len(acq)))
        cols["scene"].append(np.tile(acq, len(miss)))
        cols["cov"].append(np.zeros(m))
        cols["vf"].append(nan)
        cols["area"].append(np.where(np.repeat(bad, len(acq)), np.nan, np.inf))
        cols["flags"].append(np.where(np.repeat(bad, len(acq)), "INVALID_GEOMETRY",
                                      "NO_OVERLAP").astype(object))
        for n in indices:
            vals[n].append(nan)
            stds[n].append(nan)

    def cat(lst, dtype):
        return np.concatenate(lst) if lst else np.zeros(0, dtype)

    scene_ids_all = [s.id for s in scene_list]
    fi = cat(cols["fi"], np.int64)
    si = cat(cols["scene"], np.int64)
    srt = np.lexsort((si, fi)) if len(fi) else np.zeros(0, np.int64)
    fi, si = fi[srt], si[srt]
    flags = cat(cols["flags"], object)[srt]
    cov = cat(cols["cov"], float)[srt]
    with np.errstate(invalid="ignore", divide="ignore"):
        area = cat(cols["area"], float)[srt]
        covered = np.clip(cov / area, 0.0, 1.0)      # NaN: no measurable area
    if repaired is not None and len(repaired):
        rep = np.isin(fi, repaired) & (cov > 0)
        if rep.any():
            flags[rep] = _with_scene_flags(flags[rep], ("GEOMETRY_REPAIRED",))
    partial = (cov > 0) & (covered < _FULL_COVER)
    if partial.any():
        flags[partial] = _with_scene_flags(flags[partial], ("PARTIAL_COVERAGE",))
    times = pd.DatetimeIndex([pd.Timestamp(s.datetime) for s in scene_list])
    if times.tz is None:
        times = times.tz_localize("UTC")
    times = times.tz_convert("UTC").as_unit("ns") if len(times) else times
    if no_time:
        scene_list = []
        times = pd.DatetimeIndex([pd.NaT], tz="UTC").as_unit("ns")
    scene_ids = np.array([s.id for s in scene_list] or [None], dtype=object)
    tiles = np.array([s.tile for s in scene_list] or [None], dtype=object)
    data = {
        "field_id": _take(field_ids, fi),
        "time": times[si] if len(si) else pd.DatetimeIndex([], tz="UTC"),
        "scene_id": _take(scene_ids, si),
        "tile": _take(tiles, si),
        "coverage": cov,
        "covered_fraction": covered,
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
        "scene_ids": list(scene_ids_all), "indices": list(indices),
        "scl_classes": list(classes), "dilate": int(dilate),
    })
    return df


def _bad_geometry(fields, pos: np.ndarray) -> np.ndarray:
    """Whether the geometries at ``pos`` cannot be measured: empty, not polygonal, invalid
    (e.g. a self-intersecting "bow-tie" ring) or with non-finite vertices."""
    import shapely

    geoms = np.asarray(fields.geometry.values, dtype=object)[pos]
    bad = np.ones(len(pos), bool)
    ok = np.array([g is not None for g in geoms], bool)
    g = geoms[ok]
    with np.errstate(invalid="ignore"):
        finite = np.array([np.isfinite(shapely.get_coordinates(x)).all() for x in g], bool)
        good = (np.isin(shapely.get_type_id(g), (3, 6)) & ~shapely.is_empty(g) & finite)
        good[good] = shapely.is_valid(g[good])
    bad[np.flatnonzero(ok)] = ~good
    return bad


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

