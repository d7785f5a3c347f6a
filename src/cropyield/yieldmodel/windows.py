"""Phenological-window features of every index: what the empirical model learns from.

Entry point: :func:`window_features` - one row per (field_id, season) with, for each index
column present (NDVI, EVI2, GCVI, NDRE, NDMI by default), the curve's level in windows set by
the primary index's own phenology inside the season:

========== =================================================================================
suffix     window (days, relative to the primary index's peak ``pos``)
========== =================================================================================
``max``    season maximum of the index
``green``  mean over green-up: from the up-crossing of half the primary amplitude to ``pos``
``atpeak`` mean over ``pos − 7 .. pos + 7``
``fill1``  mean over ``pos + 8 .. pos + 22`` (early grain fill)
``fill2``  mean over ``pos + 23 .. pos + 37`` (mid grain fill)
``fill3``  mean over ``pos + 38 .. pos + 52`` (late grain fill / maturity)
``slope``  least-squares slope (index units per day) from ``pos`` to the down-crossing of
           half the amplitude (senescence rate; ≤ 0)
``int``    Σ (index − season base) over the half-amplitude span (index × days)
``intpost````Σ (index − season base)`` from ``pos`` to the half-amplitude down-crossing
``sum``    Σ index over the whole season ``sos .. eos`` (index × days: level and duration)
``pre30``  mean over the 30 days up to the index's *own* peak
``post30`` mean over the 30 days from the index's *own* peak
========== =================================================================================

The last three form the compact set (:data:`COMPACT_SUFFIXES`, with ``max``): a few robust
levels per index that do not depend on the primary curve's half-amplitude crossings, which
:func:`cropyield.yieldmodel.learners.select_model` can choose instead of the full set when
grouped CV prefers fewer, steadier features.

plus timing of the primary curve: ``pos_doy`` (day of year of the peak), ``green_days``
(half-amplitude up-crossing to peak) and ``sen_days`` (peak to half-amplitude down-crossing).
Windows that run past ``eos`` use the part inside the season (the last value when empty), so
the features stay finite whenever the season has ≥ 5 finite days.

The same function runs on a smoothed series (:func:`cropyield.series.smooth_series`) and on
the noise-free daily canopy of a simulation (:func:`cropyield.yieldmodel.canopy_ceiling`), so
a model and its ceiling see the same windows.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import ModelError

__all__ = ["INDICES", "WINDOW_SUFFIXES", "COMPACT_SUFFIXES", "window_features",
           "window_feature_names"]

#: Index columns used by default (those present in the series).
INDICES = ("ndvi", "evi2", "gcvi", "ndre", "ndmi")
#: Per-index window feature suffixes (see the module docstring).
WINDOW_SUFFIXES = ("max", "green", "atpeak", "fill1", "fill2", "fill3", "slope", "int",
                   "intpost", "sum", "pre30", "post30")
#: Suffixes of the compact feature set (season maximum, season sum, 30 days either side of
#: each index's own peak).
COMPACT_SUFFIXES = ("max", "sum", "pre30", "post30")
TIMING = ("pos_doy", "green_days", "sen_days")
_FILL = ((8, 23), (23, 38), (38, 53))


def window_feature_names(indices: Sequence[str]) -> list[str]:
    """Feature column names produced by :func:`window_features` for ``indices``."""
    return [f"{k}_{s}" for k in indices for s in WINDOW_SUFFIXES] + list(TIMING)


def _present(series: pd.DataFrame, indices) -> list[str]:
    want = list(indices) if indices is not None else list(INDICES)
    have = [k for k in want if k in series.columns
            and np.isfinite(pd.to_numeric(series[k], errors="coerce")).any()]
    if indices is not None and len(have) < len(want):
        missing = sorted(set(want) - set(have))
        raise ModelError(f"series lacks index column(s) {missing}; present: "
                         f"{[c for c in INDICES if c in series.columns]}")
    if not have:
        raise ModelError(f"series has none of the index columns {list(INDICES)}; "
                         f"columns: {list(series.columns)}")
    return have


def _mean(x: np.ndarray, a: int, b: int) -> float:
    n = len(x)
    a, b = max(a, 0), min(b, n)
    if b <= a:
        return float(x[min(max(a, 0), n - 1)])
    return float(np.mean(x[a:b]))


def _curve_windows(p: np.ndarray) -> tuple[int, int, int]:
    """(up-crossing, peak, down-crossing) day offsets of half the amplitude of ``p``."""
    kp = int(np.argmax(p))
    base_l, base_r = float(np.min(p[:kp + 1])), float(np.min(p[kp:]))
    half_l = base_l + 0.5 * (p[kp] - base_l)
    half_r = base_r + 0.5 * (p[kp] - base_r)
    below = np.flatnonzero(p[:kp] < half_l)
    up = int(below[-1] + 1) if len(below) else 0
    below = np.flatnonzero(p[kp:] < half_r)
    dn = int(kp + below[0] - 1) if len(below) else len(p) - 1
    return up, kp, max(dn, kp)


def window_features(series: pd.DataFrame, seasons=None, *, indices=None,
                    primary: str | None = None) -> pd.DataFrame:
    """Phenological-window features per (field_id, season) (see the module docstring).

    Parameters
    ----------
    series : DataFrame
        Daily ``field_id, time`` and index columns (a smoothed series or a noise-free canopy).
        Missing days inside a season are filled by linear interpolation.
    seasons : DataFrame, optional
        ``field_id, season, sos, eos`` (dates). Default: one season per field spanning its
        record, or per (field_id, season) when ``series`` has a ``season`` column (rows with
        season 0 - no crop - are ignored).
    indices : sequence of str, optional
        Index columns to describe (default: those of :data:`INDICES` present). Naming a
        column the series lacks raises :class:`~cropyield.errors.ModelError`.
    primary : str, optional
        Index whose curve sets the windows (default ``ndvi`` when present, else the first).

    Returns
    -------
    DataFrame
        ``field_id, season`` and :func:`window_feature_names` columns; NaN (all features of
        a season) when the season has fewer than 5 finite days or no dates.
    """
    idx = _present(series, indices)
    primary = primary or ("ndvi" if "ndvi" in idx else idx[0])
    if primary not in idx:
        raise ModelError(f"primary index {primary!r} is not among {idx}")
    ser = series.copy()
    ser["time"] = pd.to_datetime(ser["time"])
    if getattr(ser["time"].dt, "tz", None) is not None:
        ser["time"] = ser["time"].dt.tz_convert("UTC").dt.tz_localize(None)
    ser["time"] = ser["time"].dt.normalize()
    if seasons is None:
        keys = ["field_id", "season"] if "season" in ser.columns else ["field_id"]
        src = ser[ser["season"] > 0] if "season" in ser.columns else ser
        seasons = src.groupby(keys, sort=False)["time"].agg(sos="min", eos="max").reset_index()
        if "season" not in seasons.columns:
            seasons["season"] = 1
    s = pd.DataFrame(seasons)
    for c in ("field_id", "sos", "eos"):
        if c not in s.columns:
            raise ModelError(f"seasons table needs a '{c}' column")
    if "season" not in s.columns:
        s = s.assign(season=s.groupby("field_id").cumcount() + 1)
    ser = ser.sort_values(["field_id", "time"], kind="stable")
    groups = ser.groupby("field_id", sort=False).indices
    tarr = ser["time"].to_numpy("datetime64[D]")
    arrs = {k: pd.to_numeric(ser[k], errors="coerce").to_numpy(float) for k in idx}
    names = window_feature_names(idx)
    out = np.full((len(s), len(names)), np.nan)
    sos_a = pd.to_datetime(s["sos"]).to_numpy("datetime64[D]")
    eos_a = pd.to_datetime(s["eos"]).to_numpy("datetime64[D]")
    for i, fid in enumerate(s["field_id"].to_numpy()):
        g = groups.get(fid)
        if g is None or np.isnat(sos_a[i]) or np.isnat(eos_a[i]) or eos_a[i] <= sos_a[i]:
            continue
        t = tarr[g]
        days = np.arange(sos_a[i], eos_a[i] + np.timedelta64(1, "D"))
        pos_in = np.searchsorted(t, days)
        hit = (pos_in < len(t)) & (t[np.minimum(pos_in, len(t) - 1)] == days)
        curves: dict[Any, np.ndarray] = {}
        too_few = False
        for k in idx:
            x = np.full(len(days), np.nan)
            x[hit] = arrs[k][g][pos_in[hit]]
            ok = np.isfinite(x)
            if ok.sum() < 5:
                too_few = True
                break
            curves[k] = np.interp(np.arange(len(x)), np.flatnonzero(ok), x[ok])
        if too_few:
            continue
        up, kp, dn = _curve_windows(curves[primary])
        row = []
        for k in idx:
            x = curves[k]
            base = float(min(np.min(x[:kp + 1]), np.min(x[kp:])))
            seg = x[kp:dn + 1]
            slope = float(np.polyfit(np.arange(len(seg)), seg, 1)[0]) if len(seg) >= 3 else 0.0
            row += [float(np.max(x)), _mean(x, up, kp + 1), _mean(x, kp - 7, kp + 8)]
            row += [_mean(x, kp + a, kp + b) for a, b in _FILL]
            row += [slope, float(np.sum(x[up:dn + 1] - base)), float(np.sum(seg - base))]
            ko = int(np.argmax(x))
            row += [float(np.sum(x)), _mean(x, ko - 29, ko + 1), _mean(x, ko, ko + 30)]
        pos_day = pd.Timestamp(days[kp])
        row += [float(pos_day.day_of_year), float(kp - up), float(dn - kp)]
        out[i] = row
    df = pd.DataFrame(out, columns=names)
    df.insert(0, "season", s["season"].to_numpy())
    df.insert(0, "field_id", s["field_id"].to_numpy())
    return df


def feature_column_sets(names: Sequence[str]) -> dict[str, list[int]]:
    """Named feature subsets the empirical learner chooses among by grouped CV.

    ``"full"``: every column of ``names``; ``"compact"``: the :data:`COMPACT_SUFFIXES`
    columns of each index (only when there are some and they are fewer than all).
    """
    full = list(range(len(names)))
    compact = [j for j, n in enumerate(names) if n.rsplit("_", 1)[-1] in COMPACT_SUFFIXES]
    sets = {"full": full}
    if compact and len(compact) < len(full):
        sets["compact"] = compact
    return sets
