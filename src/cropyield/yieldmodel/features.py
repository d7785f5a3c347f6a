"""Season features: what the yield models see of a daily index series inside a season.

Entry point: :func:`season_features` (one row per (field_id, season): radiation, Σ fAPAR × PAR,
peak, integrals, timing, observation counts and gaps, flags). ``fapar_from_index`` turns an
index into fAPAR through a documented relation (:data:`FAPAR_RELATIONS`).

Inputs. ``series`` is a daily table ``field_id, time, <index>[, support, gap_days, flags]``
(:func:`cropyield.series.smooth_series`; ``gap_days == 0`` marks observation days, and
without ``gap_days`` every non-NaN day counts as observed). ``seasons`` is a per
(field_id, season) table with at least ``field_id, season, sos, eos`` and optionally ``crop``,
``region``, ``lat``, ``pos`` (:func:`cropyield.seasons.phenology` output works, merged with
a crop column from :func:`cropyield.identify.identify_crops` or declared crops).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..crops import CropRegistry, load_registry
from ..errors import ConfigError, ModelError, join_flags
from ..radiation import SUNSHINE_CLIMATOLOGY, daily_par

__all__ = ["FAPAR_RELATIONS", "RED_EDGE_INDICES", "FAPAR_MAX", "fapar_from_index",
           "season_features"]


#: Default fAPAR relations per index, used when a crop's registry entry has none for it.
FAPAR_RELATIONS: dict[str, dict[str, Any]] = {
    "ndvi": {"kind": "linear", "slope": 1.1638, "intercept": -0.1426,
             "source": "Myneni & Williams 1994 RSE 49:200"},
    "evi2": {"kind": "linear", "slope": 1.0, "intercept": 0.0,
             "source": "FPAR_chl ≈ EVI, Xiao et al. 2004 RSE 91:256"},
    "lai": {"kind": "beer", "k": 0.65, "max": 0.95,
            "source": "Beer's law, SWAT EXT_COEF 0.65"},
}
#: Index columns whose season peak is used as an extra empirical feature when present.
RED_EDGE_INDICES = ("ndre", "mtci", "ci_re", "cire", "gcvi")
FAPAR_MAX = 0.95

_SEASON_KEYS = ("field_id", "season")

# ----------------------------------------------------------------------------- helpers

def _ts(x) -> pd.Timestamp | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    t = pd.Timestamp(x)
    if pd.isna(t):
        return None
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return t.normalize()


def fapar_from_index(values, relation: Mapping[str, Any]) -> np.ndarray:
    """fAPAR (0..0.95) from index values through a relation (``linear`` or ``beer``)."""
    x = np.asarray(values, dtype=float)
    kind = relation.get("kind", "linear")
    if kind == "linear":
        f = float(relation["slope"]) * x + float(relation.get("intercept", 0.0))
    elif kind == "beer":
        f = float(relation.get("max", FAPAR_MAX)) * (1.0 - np.exp(-float(relation["k"]) * x))
    else:
        raise ConfigError(f"unknown fAPAR relation kind {kind!r}; use 'linear' or 'beer'")
    return np.clip(f, 0.0, FAPAR_MAX)

def _lat_lookup(lat, field_ids, default: float) -> np.ndarray:
    if lat is None:
        return np.full(len(field_ids), float(default))
    if isinstance(lat, Mapping):
        return np.array([float(lat.get(f, default)) for f in field_ids])
    if isinstance(lat, pd.Series):
        return np.array([float(lat.get(f, default)) for f in field_ids])
    return np.full(len(field_ids), float(lat))


def _seasons_frame(seasons) -> pd.DataFrame:
    if seasons is None:
        raise ModelError("a seasons table is needed (field_id, season, sos, eos); pass "
                         "seasons= (e.g. cropyield.phenology(series) merged with crops)")
    s = pd.DataFrame(seasons).copy()
    if "field_id" not in s.columns:
        raise ModelError("seasons table needs a 'field_id' column")
    if "season" not in s.columns:
        s["season"] = s.groupby("field_id").cumcount() + 1
    for c in ("sos", "eos"):
        if c not in s.columns:
            raise ModelError(f"seasons table needs a '{c}' column (dates)")
    return s.reset_index(drop=True)


def _radiation_lookup(radiation):
    """Normalise user radiation: DataFrame[time, rs_mj_m2(, field_id)] -> dict."""
    if radiation is None:
        return None
    r = pd.DataFrame(radiation)
    col = next((c for c in ("rs_mj_m2", "rs", "rs_mj_m2_d") if c in r.columns), None)
    if col is None or "time" not in r.columns:
        raise ConfigError("radiation must be a table with 'time' and 'rs_mj_m2' (daily "
                          "short-wave radiation, MJ m-2 d-1) and optionally 'field_id'")
    r = r.assign(time=pd.to_datetime(r["time"]).dt.normalize())
    if "field_id" in r.columns:
        return {f: g.set_index("time")[col] for f, g in r.groupby("field_id")}
    return {None: r.set_index("time")[col]}


def season_features(series: pd.DataFrame, seasons, *, index: str = "ndvi",
                    registry: CropRegistry | None = None, crop: str | None = None,
                    region: str = "north_china_plain", lat=None, radiation=None,
                    fapar: Mapping[str, Any] | None = None, climatology=None) -> pd.DataFrame:
    """Per (field_id, season) features from a daily series and a seasons table.

    Parameters
    ----------
    series : DataFrame
        Daily ``field_id, time, <index>`` (+ ``gap_days``, ``flags``, other index columns).
    seasons : DataFrame
        ``field_id, season, sos, eos`` (+ ``crop``, ``region``, ``lat``, ``n_obs``).
    index : str
        Index column used for fAPAR and the index features.
    registry : CropRegistry, optional
        Crop registry (default: packaged).
    crop, region : str
        Defaults when ``seasons`` has no ``crop`` / ``region`` column.
    lat : float, mapping field_id -> latitude, or None
        Latitude in degrees for radiation (default: a ``lat`` column of ``seasons``, else the
        region's reference latitude).
    radiation : DataFrame, optional
        Daily short-wave radiation ``time, rs_mj_m2`` (+ ``field_id``), MJ m-2 d-1; gaps are
        filled from the sunshine climatology.
    fapar : mapping, optional
        fAPAR relation overriding the crop's (``{"kind": "linear", "slope": .., "intercept": ..}``).

    Returns
    -------
    DataFrame
        One row per season: ``field_id, season, crop, region, sos, eos, active_start,
        n_days, n_missing, n_obs, max_gap_days, n_extrapolated, par_mj_m2`` (Σ PAR over the
        active window, MJ m-2), ``apar_mj_m2`` (Σ fAPAR × PAR), ``fapar_mean``, ``peak``,
        ``pos``, ``pos_days`` (days from sos to peak), ``length_days``, ``small_integral``,
        ``large_integral`` (index × days), ``<ri>_peak`` for red-edge indices present,
        ``radiation_source`` and ``feature_flags``.
    """
    reg = registry or load_registry()
    s = _seasons_frame(seasons)
    if index not in series.columns:
        raise ModelError(f"series has no '{index}' column; columns: {list(series.columns)}")
    ser = series.copy()
    ser["time"] = pd.to_datetime(ser["time"])
    if getattr(ser["time"].dt, "tz", None) is not None:
        ser["time"] = ser["time"].dt.tz_convert("UTC").dt.tz_localize(None)
    ser = ser.sort_values(["field_id", "time"], kind="stable")
    groups = ser.groupby("field_id", sort=False).indices
    tarr = ser["time"].to_numpy("datetime64[D]")
    xarr = ser[index].to_numpy(float)
    has_gap = "gap_days" in ser.columns
    garr = ser["gap_days"].to_numpy(float) if has_gap else None
    farr = ser["flags"].astype(str).to_numpy() if "flags" in ser.columns else None
    re_cols = [c for c in RED_EDGE_INDICES if c in ser.columns and c != index]
    re_arrs = {c: ser[c].to_numpy(float) for c in re_cols}
    rad = _radiation_lookup(radiation)

    crops_col = s["crop"] if "crop" in s.columns else pd.Series([crop] * len(s))
    regions_col = s["region"] if "region" in s.columns else pd.Series([region] * len(s))
    lat0 = SUNSHINE_CLIMATOLOGY.get(region, {}).get("lat", 35.0)
    if "lat" in s.columns and lat is None:
        lats = pd.to_numeric(s["lat"], errors="coerce").to_numpy(float)
    else:
        lats = _lat_lookup(lat, s["field_id"].tolist(), lat0)
    lats = np.where(np.isfinite(lats), lats, lat0)   # unknown latitude: the region's
    rows = []
    par_cache: dict[tuple, tuple[np.ndarray, str]] = {}
    for i, r in s.iterrows():
        c = crops_col.iloc[i]
        c = None if (c is None or (isinstance(c, float) and math.isnan(c)) or c == "") else str(c)
        rg = str(regions_col.iloc[i]) if pd.notna(regions_col.iloc[i]) else region
        sos, eos = _ts(r["sos"]), _ts(r["eos"])
        out: dict[str, Any] = {"field_id": r["field_id"], "season": r["season"], "crop": c,
                               "region": rg, "sos": sos, "eos": eos}
        sflags = str(r["flags"]) if "flags" in s.columns and pd.notna(r["flags"]) else ""
        flags: list[str] = [sflags]
        idx = groups.get(r["field_id"])
        if sos is None or eos is None or eos <= sos:
            partial = "PARTIAL_SEASON" in sflags or (
                "complete" in s.columns and pd.notna(r["complete"]) and not bool(r["complete"]))
            out["feature_flags"] = join_flags(flags, "PARTIAL_SEASON" if partial
                                              else "NO_SEASON")
            rows.append(out)
            continue
        if idx is None or len(idx) == 0:
            out["feature_flags"] = join_flags(flags, "NO_DATA")
            rows.append(out)
            continue
        yp = None
        if c is not None and c in reg and reg[c].yield_params is not None:
            yp = reg[c].yield_params
        # active window: winter crops accumulate from green-up only
        start = sos
        if yp is not None and yp.active_from_doy:
            green = pd.Timestamp(year=eos.year, month=1, day=1) + pd.Timedelta(
                days=int(yp.active_from_doy) - 1)
            if sos < green < eos:
                start = green
        out["active_start"] = start
        days = pd.date_range(start, eos, freq="D").to_numpy("datetime64[D]")
        t = tarr[idx]
        pos_in = np.searchsorted(t, days)
        present = (pos_in < len(t)) & (t[np.minimum(pos_in, len(t) - 1)] == days)
        x = np.full(len(days), np.nan)
        x[present] = xarr[idx][pos_in[present]]
        n_missing = int(np.sum(~np.isfinite(x)))
        out["n_days"] = len(days)
        out["n_missing"] = n_missing
        # observation days in the whole season (sos..eos) and gaps in the active window
        smask = (t >= np.datetime64(sos.date())) & (t <= np.datetime64(eos.date()))
        xs = xarr[idx][smask]
        if garr is not None:  # has_gap
            obs_days = t[smask][garr[idx][smask] == 0]
        else:
            obs_days = t[smask][np.isfinite(xs)]
        out["n_obs"] = int(len(obs_days))
        a_obs = obs_days[(obs_days >= days[0]) & (obs_days <= days[-1])]
        edges = np.concatenate([[days[0] - np.timedelta64(1, "D")], a_obs,
                                [days[-1] + np.timedelta64(1, "D")]]).astype("datetime64[D]")
        out["max_gap_days"] = float(np.max(np.diff(edges).astype(int)) - 1) if len(edges) > 1 \
            else float(len(days))
        if farr is not None:
            fa = farr[idx][pos_in[present]]
            out["n_extrapolated"] = int(sum("EXTRAPOLATED" in f for f in fa))
        else:
            out["n_extrapolated"] = 0
        if n_missing:
            ok = np.isfinite(x)
            if ok.sum() >= 2 and n_missing <= 0.1 * len(days):
                x = np.interp(np.arange(len(x)), np.flatnonzero(ok), x[ok])
            else:
                flags.append("NO_DATA")
        # radiation
        rs = None
        key_src = None
        if rad is not None:
            rsr = rad.get(r["field_id"], rad.get(None))
            if rsr is not None:
                rs = rsr.reindex(pd.DatetimeIndex(days)).to_numpy(float)
                key_src = True
        rg_clim = rg if rg in SUNSHINE_CLIMATOLOGY or (climatology and rg in climatology) \
            else region
        ckey = None if key_src else (round(float(lats[i]), 3), rg_clim, days[0], len(days))
        if ckey is not None and ckey in par_cache:
            par, src = par_cache[ckey]
        else:
            par, src = daily_par(days, lats[i], region=rg_clim, rs=rs if key_src else None,
                                 climatology=climatology)
            if ckey is not None:
                par_cache[ckey] = (par, src)
        out["radiation_source"] = src
        out["par_mj_m2"] = float(np.sum(par))
        rel = fapar
        if rel is None:
            rel = (dict(yp.fapar).get(index) if yp is not None and yp.fapar else None) \
                or FAPAR_RELATIONS.get(index)
        if rel is None:
            raise ConfigError(f"no fAPAR relation for index {index!r}; pass fapar= "
                              "{'kind': 'linear', 'slope': .., 'intercept': ..}")
        if np.all(np.isfinite(x)):
            fp = fapar_from_index(x, rel)
            out["apar_mj_m2"] = float(np.sum(fp * par))
            out["fapar_mean"] = float(np.mean(fp))
            kpk = int(np.argmax(x))        # grain filling: light absorbed after the peak
            out["apar_post_mj_m2"] = float(np.sum(fp[kpk:] * par[kpk:]))
            out["fapar_relation"] = json.dumps(dict(rel), ensure_ascii=False, sort_keys=True)
        # index features over the whole season
        sx = xs[np.isfinite(xs)]
        st = t[smask][np.isfinite(xs)]
        if len(sx) >= 3:
            k = int(np.argmax(sx))
            out["peak"] = float(sx[k])
            out["pos"] = pd.Timestamp(st[k])
            out["pos_days"] = float((st[k] - np.datetime64(sos.date())).astype(int))
            out["post_peak_days"] = float((np.datetime64(eos.date()) - st[k]).astype(int))
            base = float(min(sx[0], sx[-1]))
            out["large_integral"] = float(np.sum(sx))
            out["small_integral"] = float(np.sum(np.maximum(sx - base, 0.0)))
            for cname, arr in re_arrs.items():
                v = arr[idx][smask]
                v = v[np.isfinite(v)]
                if len(v):
                    out[f"{cname}_peak"] = float(np.max(v))
        out["length_days"] = float((eos - sos).days)
        out["feature_flags"] = join_flags(flags)
        rows.append(out)
    df = pd.DataFrame(rows)
    for c in ("n_days", "n_missing", "n_obs", "max_gap_days", "n_extrapolated", "par_mj_m2",
              "apar_mj_m2", "apar_post_mj_m2", "fapar_mean", "peak", "pos_days",
              "post_peak_days", "length_days", "small_integral",
              "large_integral", "pos", "active_start", "radiation_source", "fapar_relation"):
        if c not in df.columns:
            df[c] = np.nan
    if "n_obs" in s.columns:  # phenology's count wins when given
        given = pd.to_numeric(s["n_obs"], errors="coerce").to_numpy(float)
        df["n_obs"] = np.where(np.isfinite(given), given, df["n_obs"].to_numpy(float))
    return df


