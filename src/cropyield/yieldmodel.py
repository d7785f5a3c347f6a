"""Yield models: light-use efficiency (LUE) and empirical regression, with calibrated intervals.

Two models share one interface, :class:`YieldModel`:

* :class:`LUEModel` - ``yield = HI × Σ_season(RUE × fAPAR × PAR) × 0.01 / (1 − moisture) ×
  product_fraction × calibration`` (t/ha at the crop's reporting basis), with fAPAR from a
  vegetation index through the crop's relation (clipped to [0, 0.95]) and PAR from FAO-56
  radiation (:mod:`cropyield.radiation`). The calibration factor (per crop and region) and its
  source are always reported.
* :class:`EmpiricalModel` - ridge regression of log yield on season features (log APAR, peak
  index, integrals, timing, red-edge peaks when present) fitted to observed yields.

Intervals. Every prediction carries P10/P50/P90. With residuals from a calibration
(:func:`fit_yield_model`, out-of-fold cross-conformal scores), the quantiles of the
*normalised log residuals* ``z = log(y_obs / ŷ) / s`` give ``P_k = ŷ × exp(q_k × s)``, where
``s >= 1`` is an observation-quality scale (fewer clear observations and longer gaps give a
larger ``s``). Without calibration residuals a documented prior spread is used
(``YieldParams.prior_sigma``: ``q = ±1.2816 σ``).

Inputs. ``series`` is a daily table ``field_id, time, <index>[, support, gap_days, flags]``
(:func:`cropyield.series.smooth_series`; ``gap_days == 0`` marks observation days, and
without ``gap_days`` every non-NaN day counts as observed). ``seasons`` is a per
(field_id, season) table with at least ``field_id, season, sos, eos`` and optionally ``crop``,
``region``, ``lat``, ``pos`` (:func:`cropyield.seasons.phenology` output works, merged with
a crop column from :func:`cropyield.identify.identify_crops` or declared crops).

Models serialise to JSON only (``to_json``/``from_json``, ``schema_version``); never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ._io import loads_json
from ._log import logger
from ._version import __version__
from .crops import CropRegistry, YieldParams, load_registry
from .errors import ConfigError, ModelError, join_flags
from .radiation import SUNSHINE_CLIMATOLOGY, daily_par

__all__ = [
    "SCHEMA_VERSION",
    "FAPAR_RELATIONS",
    "YieldModel",
    "LUEModel",
    "EmpiricalModel",
    "fit_yield_model",
    "season_features",
    "conformal_quantiles",
    "quality_scale",
]

#: Version of the JSON layout written by :meth:`YieldModel.to_json`.
SCHEMA_VERSION = 1
_Z90 = 1.2815515655446004  # standard normal 90 % quantile

#: Default fAPAR relations per index, used when a crop's registry entry has none for it.
FAPAR_RELATIONS: dict[str, dict[str, Any]] = {
    "ndvi": {"kind": "linear", "slope": 1.1638, "intercept": -0.1426,
             "source": "Myneni & Williams 1994 RSE 49:200 (science.md §2)"},
    "evi2": {"kind": "linear", "slope": 1.0, "intercept": 0.0,
             "source": "FPAR_chl ≈ EVI, Xiao et al. 2004 RSE 91:256 (science.md §2)"},
    "lai": {"kind": "beer", "k": 0.65, "max": 0.95,
            "source": "Beer's law, SWAT EXT_COEF 0.65 (science.md §2)"},
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


def quality_scale(n_obs, max_gap_days, *, n_ref: float = 10.0, gap_ref: float = 30.0,
                  gap_scale: float = 60.0, s_max: float = 4.0) -> np.ndarray:
    """Interval scale ``s >= 1`` from observation quality of a season.

    ``s = sqrt(n_ref / n_obs)`` (1 when ``n_obs >= n_ref``) × ``(1 + max(0, gap − gap_ref) /
    gap_scale)``, capped at ``s_max``. ``n_obs`` is the number of clear observation days in
    the season, ``max_gap_days`` the longest interval (days) without a clear observation in
    the active window. NaN inputs count as "unknown" and give ``s = 1`` for that term.
    """
    n = np.asarray(n_obs, dtype=float)
    g = np.asarray(max_gap_days, dtype=float)
    s_n = np.where(np.isfinite(n), np.sqrt(n_ref / np.maximum(n, 1.0)), 1.0)
    s_n = np.maximum(s_n, 1.0)
    s_g = np.where(np.isfinite(g), 1.0 + np.maximum(g - gap_ref, 0.0) / gap_scale, 1.0)
    return np.minimum(s_n * s_g, s_max)


def conformal_quantiles(scores, levels=(0.1, 0.5, 0.9)) -> dict[str, float]:
    """Finite-sample split-conformal quantiles of ``scores`` at ``levels``.

    For a lower level ``a < 0.5`` the ``floor(a (n+1))``-th smallest score is used and for an
    upper level the ``ceil(a (n+1))``-th, so that ``[q_a, q_b]`` covers a new exchangeable
    score with probability >= ``b − a``. Where ``n`` is too small for that order statistic
    the extreme score is used (and the result is marked ``"small_n": True``).
    """
    z = np.sort(np.asarray(scores, dtype=float)[np.isfinite(scores)])
    n = len(z)
    if n == 0:
        raise ModelError("no finite residuals to calibrate intervals from")
    out: dict[str, float] = {}
    small = False
    for a in levels:
        if a < 0.5:
            k = int(math.floor(a * (n + 1)))
            if k < 1:
                small, k = True, 1
        elif a > 0.5:
            k = int(math.ceil(a * (n + 1)))
            if k > n:
                small, k = True, n
        else:
            out[f"q{round(a * 100)}"] = float(np.median(z))
            continue
        out[f"q{round(a * 100)}"] = float(z[k - 1])
    out["n"] = n
    out["small_n"] = small
    return out


def _prior_quantiles(sigma: float) -> dict[str, Any]:
    return {"q10": -_Z90 * sigma, "q50": 0.0, "q90": _Z90 * sigma, "n": 0, "small_n": False,
            "method": f"prior: lognormal sigma={sigma:g} (uncalibrated)"}


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
        if has_gap:
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


# ----------------------------------------------------------------------------- base class

class YieldModel:
    """Common interface of yield models.

    ``predict(series, seasons, ...)`` returns one row per (field_id, season) with
    ``yield_t_ha_p10``, ``yield_t_ha_p50``, ``yield_t_ha_p90`` (t/ha at the crop's reporting
    basis), ``yield_basis``, ``model_version``, ``calibration`` (JSON string), ``quality``
    (0..1), ``interval_scale``, ``n_obs``, ``max_gap_days`` and ``flags``. Seasons without
    enough data get NaN and flags explaining why; numbers are never extrapolated.
    """

    kind = "base"
    #: cross-validation report filled by :func:`fit_yield_model`.
    cv_: dict[str, Any] | None = None

    # quality thresholds (documented defaults)
    min_obs: int = 3          # fewer clear observations in the season -> NaN + LOW_OBS
    low_obs: int = 6          # fewer -> LOW_OBS flag (science.md §6: >= 6 clear observations)
    max_gap_days: float = 75  # longer gap in the active window -> NaN + CLOUDY_SEASON
    cloudy_gap_days: float = 40  # longer gap -> CLOUDY_SEASON flag, wider interval
    max_extrapolated_days: int = 20  # more extrapolated days in the window -> NaN + EXTRAPOLATED

    def predict(self, series: pd.DataFrame, seasons, **kwargs) -> pd.DataFrame:  # pragma: no cover
        raise NotImplementedError

    # -- serialisation
    def _params(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (``schema_version``, ``kind``, parameters, ``cv``)."""
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind,
                "cropyield_version": __version__, "params": self._params(),
                "cv": _jsonable(self.cv_)}

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON (and write to ``path`` when given). Never pickle."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, indent=1)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @staticmethod
    def from_json(text_or_path: str | Path) -> "YieldModel":
        """Load a model written by :meth:`to_json` (a JSON string or a path)."""
        p = Path(str(text_or_path)) if not str(text_or_path).lstrip().startswith("{") else None
        try:
            text = p.read_text(encoding="utf-8") if p is not None else str(text_or_path)
            d = loads_json(text, what="yield model JSON", error=ModelError)
        except ModelError:
            raise
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read a yield model from {str(text_or_path)[:80]!r}: {exc}"
                             ) from exc
        return YieldModel.from_dict(d)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "YieldModel":
        if not isinstance(d, Mapping) or "kind" not in d:
            raise ModelError("not a cropyield yield model (no 'kind')")
        if int(d.get("schema_version", -1)) > SCHEMA_VERSION:
            raise ModelError(f"model schema_version {d.get('schema_version')} is newer than "
                             f"this cropyield supports ({SCHEMA_VERSION}); upgrade cropyield")
        cls = {"lue": LUEModel, "empirical": EmpiricalModel}.get(d["kind"])
        if cls is None:
            raise ModelError(f"unknown model kind {d['kind']!r}")
        m = cls(**d["params"])
        m.cv_ = d.get("cv")
        return m

    @property
    def model_version(self) -> str:
        """``<kind>/<cropyield version>/<hash of parameters>`` - identifies the fitted model."""
        h = hashlib.sha256(json.dumps(_jsonable(self._params()), sort_keys=True).encode()
                           ).hexdigest()[:10]
        return f"{self.kind}/{__version__}/{h}"

    def report(self) -> str:
        """Human-readable summary of the calibration and cross-validation."""
        lines = [f"{type(self).__name__} {self.model_version}"]
        cv = self.cv_ or {}
        if not cv:
            lines.append("  not cross-validated (default parameters or aggregate calibration)")
        else:
            lines.append(f"  grouped {cv.get('n_splits')}-fold CV on n={cv.get('n')} seasons "
                         f"({cv.get('n_groups')} groups)")
            lines.append(f"  R2={cv.get('r2'):.3f}  RMSE={cv.get('rmse_t_ha'):.3f} t/ha "
                         f"({cv.get('rmse_pct'):.1f} %)  bias={cv.get('bias_t_ha'):+.3f} t/ha")
            if cv.get("coverage_p10_p90") is not None:
                lines.append(f"  out-of-fold P10-P90 coverage={cv['coverage_p10_p90']:.3f}")
        return "\n".join(lines)

    # -- shared post-processing
    def _finish(self, feats: pd.DataFrame, p50: np.ndarray, quant: list[dict[str, Any]],
                basis: list[str], calib: list[str], extra_flags: list[list[str]],
                sanity: list[tuple[float, float]]) -> pd.DataFrame:
        n = len(feats)
        n_obs = feats["n_obs"].to_numpy(float)
        gap = feats["max_gap_days"].to_numpy(float)
        nextra = feats["n_extrapolated"].to_numpy(float)
        s = quality_scale(n_obs, gap)
        p10, p50o, p90 = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        flags_out, quality = [], np.zeros(n)
        for i in range(n):
            fl = list(extra_flags[i]) + [f for f in str(feats["feature_flags"].iloc[i]
                                                         ).split(",") if f and f != "nan"]
            bad = any(f in ("NO_SEASON", "NO_DATA", "NO_MODEL", "SEASON_INCOMPLETE")
                      for f in fl)
            if np.isfinite(n_obs[i]):
                if n_obs[i] < self.min_obs:
                    fl.append("LOW_OBS")
                    bad = True
                elif n_obs[i] < self.low_obs:
                    fl.append("LOW_OBS")
            if np.isfinite(gap[i]):
                if gap[i] > self.max_gap_days:
                    fl.append("CLOUDY_SEASON")
                    bad = True
                elif gap[i] > self.cloudy_gap_days:
                    fl.append("CLOUDY_SEASON")
            if np.isfinite(nextra[i]) and nextra[i] > self.max_extrapolated_days:
                fl.append("EXTRAPOLATED")
                bad = True
            q = quant[i]
            if not bad and np.isfinite(p50[i]) and p50[i] == 0 and q is not None:
                # no light absorbed at all (bare soil all season): a zero yield, not a gap
                p10[i] = p50o[i] = p90[i] = 0.0
                fl.append("OUT_OF_RANGE")
                quality[i] = float(np.clip(1.0 / s[i], 0.0, 1.0))
            elif not bad and np.isfinite(p50[i]) and p50[i] > 0 and q is not None:
                p10[i] = p50[i] * math.exp(q["q10"] * s[i])
                p50o[i] = p50[i] * math.exp(q["q50"] * s[i])
                p90[i] = p50[i] * math.exp(q["q90"] * s[i])
                lo, hi = sanity[i]
                if not (lo <= p50o[i] <= hi):
                    fl.append("OUT_OF_RANGE")
                quality[i] = float(np.clip(1.0 / s[i], 0.0, 1.0))
            else:
                quality[i] = 0.0
                if not fl:  # a NaN always travels with a flag
                    fl.append("NO_DATA")
            flags_out.append(join_flags(fl))
        out = feats[["field_id", "season", "crop"]].copy()
        out["yield_basis"] = basis
        out["yield_t_ha_p10"] = p10
        out["yield_t_ha_p50"] = p50o
        out["yield_t_ha_p90"] = p90
        out["model_version"] = self.model_version
        out["calibration"] = calib
        out["quality"] = quality
        out["interval_scale"] = s
        for c in ("n_obs", "max_gap_days", "sos", "pos", "eos", "apar_mj_m2", "par_mj_m2",
                  "radiation_source"):
            out[c] = feats[c].to_numpy() if c in feats.columns else np.nan
        out["flags"] = flags_out
        return out


def _jsonable(obj):
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return _jsonable(float(obj))
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    raise ModelError(f"cannot store {type(obj).__name__} in a model JSON")


def _registry_from(overrides) -> tuple[CropRegistry, dict[str, Any] | None]:
    if overrides is None:
        return load_registry(), None
    if isinstance(overrides, (str, Path)):
        import tomllib
        try:
            with open(overrides, "rb") as fh:
                overrides = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read crop overrides from {overrides}: {exc}") from exc
    return load_registry(overrides), _jsonable(dict(overrides))


# ----------------------------------------------------------------------------- LUE

class LUEModel(YieldModel):
    """Light-use-efficiency yield model with per-crop, per-region calibration.

    ``yield [t/ha] = HI × RUE [g DM/MJ APAR] × Σ(fAPAR × PAR) [MJ m-2] × 0.01 / (1 − moisture)
    × product_fraction × factor``, accumulated from ``sos`` (or the crop's green-up day,
    ``active_from_doy``) to ``eos``. Crops with ``yield_basis = "value_only"`` (orchards, tea,
    vegetables) get the regional benchmark yield × a vigour ratio (season-mean fAPAR relative
    to the median of the same crop in the batch, clipped to [0.7, 1.3], when >= 5 seasons).

    Parameters
    ----------
    overrides : dict or path, optional
        Crop-registry overrides (see :func:`cropyield.crops.load_registry`).
    index : str
        Index column of the series used for fAPAR (default ``"ndvi"``).
    fapar : mapping, optional
        fAPAR relation for all crops, overriding the registry.
    region : str
        Default region (calibration, climatology) when seasons carry no ``region`` column.
    calibration : mapping, optional
        ``{crop: {region: {"factor": float, "source": str, ...}}}`` overriding the registry's
        default factors (set by :func:`fit_yield_model`).
    residuals : mapping, optional
        ``{crop: {"q10", "q50", "q90", "n", "method"}}`` normalised log-residual quantiles for
        the intervals (set by :func:`fit_yield_model`); default: the crop's prior sigma.
    """

    kind = "lue"

    def __init__(self, *, overrides=None, index: str = "ndvi",
                 fapar: Mapping[str, Any] | None = None, region: str = "north_china_plain",
                 calibration: Mapping[str, Any] | None = None,
                 residuals: Mapping[str, Any] | None = None):
        self.registry, self.overrides = _registry_from(overrides)
        self.index = index
        self.fapar = dict(fapar) if fapar else None
        self.region = region
        self.calibration = {c: {r: dict(v) for r, v in d.items()}
                            for c, d in (calibration or {}).items()}
        self.residuals = {c: dict(v) for c, v in (residuals or {}).items()}
        self.cv_ = None

    def _params(self) -> dict[str, Any]:
        return {"overrides": self.overrides, "index": self.index, "fapar": self.fapar,
                "region": self.region, "calibration": _jsonable(self.calibration),
                "residuals": _jsonable(self.residuals)}

    def yield_params(self, crop: str) -> YieldParams | None:
        if crop is None or crop not in self.registry:
            return None
        return self.registry[crop].yield_params

    def factor(self, crop: str, region: str) -> dict[str, Any]:
        """Calibration ``{"factor", "source", "region", "kind"}`` for ``crop`` in ``region``.

        Order: a fitted/user calibration for (crop, region), then for (crop, "default"), then
        the registry's regional factor, then the registry's ``default`` factor, else 1.0 with
        source ``"none"``.
        """
        user = self.calibration.get(crop, {})
        for key in (region, "default"):
            if key in user:
                d = dict(user[key])
                d.setdefault("region", key)
                d.setdefault("kind", "fitted")
                return d
        yp = self.yield_params(crop)
        cal = dict(yp.calibration) if yp is not None else {}
        for key in (region, "default"):
            if key in cal:
                v = cal[key]
                d = dict(v) if isinstance(v, Mapping) else {"factor": float(v)}
                d.setdefault("source", "crop registry")
                d["region"] = key
                d["kind"] = "default"
                return d
        return {"factor": 1.0, "source": "none (raw textbook parameters)", "region": region,
                "kind": "none"}

    def raw_yield(self, feats: pd.DataFrame) -> np.ndarray:
        """Uncalibrated LUE yield (factor 1) per feature row, t/ha at reporting basis."""
        out = np.full(len(feats), np.nan)
        for i, (c, apar) in enumerate(zip(feats["crop"], feats["apar_mj_m2"].to_numpy(float))):
            yp = self.yield_params(c)
            if yp is None or yp.yield_basis == "value_only" or not np.isfinite(apar):
                continue
            out[i] = (yp.harvest_index * yp.rue_g_mj * apar * 0.01 / (1.0 - yp.moisture)
                      * yp.product_fraction)
        return out

    def features(self, series, seasons, *, lat=None, region=None, radiation=None,
                 crop=None, climatology=None) -> pd.DataFrame:
        return season_features(series, seasons, index=self.index, registry=self.registry,
                               crop=crop, region=region or self.region, lat=lat,
                               radiation=radiation, fapar=self.fapar, climatology=climatology)

    def predict(self, series: pd.DataFrame, seasons, *, lat=None, region: str | None = None,
                radiation=None, crop: str | None = None, climatology=None) -> pd.DataFrame:
        """Yield P10/P50/P90 per (field_id, season); see :class:`YieldModel`.

        Parameters
        ----------
        series, seasons : DataFrame
            Daily series and seasons table (module docstring).
        lat : float or mapping field_id -> degrees, optional
            Latitude for radiation (default: seasons ``lat`` column, else the region's).
        region : str, optional
            Region when seasons have no ``region`` column (default: the model's).
        radiation : DataFrame, optional
            Daily ``time, rs_mj_m2`` (+ ``field_id``) measured radiation, MJ m-2 d-1.
        crop : str, optional
            Crop when seasons have no ``crop`` column.
        """
        feats = self.features(series, seasons, lat=lat, region=region, radiation=radiation,
                              crop=crop, climatology=climatology)
        raw = self.raw_yield(feats)
        n = len(feats)
        p50 = np.full(n, np.nan)
        quant, basis, calib, extra, sanity = [], [], [], [], []
        # vigour reference for value-only crops
        vig_ref: dict[str, float] = {}
        for c, g in feats.groupby("crop"):
            fm = g["fapar_mean"].to_numpy(float)
            fm = fm[np.isfinite(fm)]
            if len(fm) >= 5:
                vig_ref[c] = float(np.median(fm))
        for i in range(n):
            c = feats["crop"].iloc[i]
            rg = feats["region"].iloc[i]
            yp = self.yield_params(c)
            if yp is None:
                quant.append(None)
                basis.append("")
                calib.append(json.dumps({"kind": "none", "reason": f"no yield parameters for "
                                         f"crop {c!r}"}))
                extra.append(["NO_MODEL"])
                sanity.append((0.0, math.inf))
                continue
            basis.append(yp.yield_basis)
            sanity.append(tuple(yp.sanity_t_ha))
            q = self.residuals.get(c) or _prior_quantiles(yp.prior_sigma)
            quant.append(q)
            if yp.yield_basis == "value_only":
                bench = dict(yp.benchmark_t_ha)
                b = bench.get(rg, bench.get("default"))
                fl = ["BENCHMARK_YIELD"]
                vr = 1.0
                fm = feats["fapar_mean"].iloc[i]
                if c in vig_ref and np.isfinite(fm) and vig_ref[c] > 0:
                    vr = float(np.clip(fm / vig_ref[c], 0.7, 1.3))
                if b is None:
                    fl.append("NO_MODEL")
                else:
                    p50[i] = float(b) * vr
                calib.append(json.dumps({"kind": "benchmark", "benchmark_t_ha": b,
                                         "vigour_ratio": vr, "region": rg,
                                         "source": yp.source, "interval": q.get("method", "")},
                                        ensure_ascii=False))
                extra.append(fl)
                continue
            f = self.factor(c, rg)
            p50[i] = raw[i] * float(f["factor"])
            calib.append(json.dumps({**_jsonable(f), "interval": q.get("method", "conformal")},
                                    ensure_ascii=False, sort_keys=True))
            extra.append([])
        return self._finish(feats, p50, quant, basis, calib, extra, sanity)


# ----------------------------------------------------------------------------- empirical

DEFAULT_FEATURES = ("log_apar", "peak", "small_integral", "large_integral", "length_days",
                    "pos_days")


def _design(feats: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    cols = []
    for n in names:
        if n in ("log_apar", "log_apar_post"):
            v = feats["apar_mj_m2" if n == "log_apar" else "apar_post_mj_m2"].to_numpy(float)
            cols.append(np.log(np.where(v > 0, v, np.nan)))
        elif n in feats.columns:
            cols.append(pd.to_numeric(feats[n], errors="coerce").to_numpy(float))
        else:
            cols.append(np.full(len(feats), np.nan))
    return np.column_stack(cols) if cols else np.zeros((len(feats), 0))


def ridge_fit(X: np.ndarray, y: np.ndarray, alpha: float = 1.0):
    """Ridge regression on standardised columns; returns ``(coef, intercept, mean, scale)``.

    Solves ``(Zᵀ Z + α I) β = Zᵀ (y − ȳ)`` with ``Z = (X − mean) / scale`` by least squares.
    """
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    Z = (X - mean) / scale
    yc = y - y.mean()
    A = np.vstack([Z, math.sqrt(alpha) * np.eye(Z.shape[1])])
    b = np.concatenate([yc, np.zeros(Z.shape[1])])
    beta, *_ = np.linalg.lstsq(A, b, rcond=None)
    return beta, float(y.mean()), mean, scale


class EmpiricalModel(YieldModel):
    """Ridge regression of log yield on season features for one crop.

    Features (computed by :func:`season_features` from the series inside each season):
    ``log_apar`` (log Σ fAPAR × PAR), ``peak`` index, ``small_integral``, ``length_days``,
    ``pos_days`` and ``<red-edge>_peak`` for red-edge index columns present at fit time.

    Parameters are usually set by :func:`fit_yield_model`; ``coef`` etc. are stored in JSON.
    """

    kind = "empirical"

    def __init__(self, *, crop: str, feature_names: Sequence[str], coef: Sequence[float],
                 intercept: float, mean: Sequence[float], scale: Sequence[float],
                 alpha: float = 1.0, index: str = "ndvi", region: str = "north_china_plain",
                 residuals: Mapping[str, Any] | None = None, overrides=None,
                 training_range: Mapping[str, Sequence[float]] | None = None):
        self.crop = crop
        self.feature_names = list(feature_names)
        self.coef = np.asarray(coef, dtype=float)
        self.intercept = float(intercept)
        self.mean = np.asarray(mean, dtype=float)
        self.scale = np.asarray(scale, dtype=float)
        self.alpha = float(alpha)
        self.index = index
        self.region = region
        self.residuals = dict(residuals) if residuals else None
        self.registry, self.overrides = _registry_from(overrides)
        self.training_range = {k: list(v) for k, v in (training_range or {}).items()}
        self.cv_ = None

    def _params(self) -> dict[str, Any]:
        return _jsonable({"crop": self.crop, "feature_names": self.feature_names,
                          "coef": self.coef, "intercept": self.intercept, "mean": self.mean,
                          "scale": self.scale, "alpha": self.alpha, "index": self.index,
                          "region": self.region, "residuals": self.residuals,
                          "overrides": self.overrides, "training_range": self.training_range})

    def _predict_log(self, feats: pd.DataFrame) -> np.ndarray:
        X = _design(feats, self.feature_names)
        Z = (X - self.mean) / self.scale
        return self.intercept + Z @ self.coef

    def predict(self, series: pd.DataFrame, seasons, *, lat=None, region: str | None = None,
                radiation=None, crop: str | None = None, climatology=None) -> pd.DataFrame:
        """Yield P10/P50/P90 per (field_id, season); seasons of another crop get ``NO_MODEL``.

        Feature values far outside the training range (beyond 25 % of the range on either
        side) are flagged ``EXTRAPOLATED`` and give NaN.
        """
        feats = season_features(series, seasons, index=self.index, registry=self.registry,
                                crop=crop or self.crop, region=region or self.region, lat=lat,
                                radiation=radiation, climatology=climatology)
        yp = self.registry[self.crop].yield_params if self.crop in self.registry else None
        logy = self._predict_log(feats)
        X = _design(feats, self.feature_names)
        n = len(feats)
        p50 = np.exp(logy)
        q = self.residuals or _prior_quantiles(yp.prior_sigma if yp else 0.3)
        quant, basis, calib, extra, sanity = [], [], [], [], []
        for i in range(n):
            fl: list[str] = []
            if feats["crop"].iloc[i] != self.crop:
                fl.append("NO_MODEL")
            if not np.all(np.isfinite(X[i])):
                fl.append("NO_DATA")
            for j, name in enumerate(self.feature_names):
                lo, hi = self.training_range.get(name, (-math.inf, math.inf))
                pad = 0.25 * (hi - lo) if math.isfinite(hi - lo) else 0.0
                if np.isfinite(X[i, j]) and not (lo - pad <= X[i, j] <= hi + pad):
                    fl.append("EXTRAPOLATED")
            extra.append(fl)
            quant.append(q)
            basis.append(yp.yield_basis if yp else "")
            sanity.append(tuple(yp.sanity_t_ha) if yp else (0.0, math.inf))
            calib.append(json.dumps({"kind": "empirical", "crop": self.crop,
                                     "features": self.feature_names,
                                     "n_train": (self.residuals or {}).get("n", 0),
                                     "interval": q.get("method", "conformal")}))
        return self._finish(feats, p50, quant, basis, calib, extra, sanity)


# ----------------------------------------------------------------------------- fitting

def _group_folds(groups: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    uniq = pd.unique(groups)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(uniq))
    k = min(n_splits, len(uniq))
    fold_of_group = {uniq[g]: i % k for i, g in enumerate(perm)}
    f = np.array([fold_of_group[g] for g in groups])
    return [np.flatnonzero(f == i) for i in range(k)]


def _metrics(y: np.ndarray, yhat: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(y) & np.isfinite(yhat)
    y, yhat = y[ok], yhat[ok]
    sse = float(np.sum((y - yhat) ** 2))
    sst = float(np.sum((y - y.mean()) ** 2))
    rmse = math.sqrt(sse / len(y))
    return {"r2": 1.0 - sse / sst if sst > 0 else float("nan"), "rmse_t_ha": rmse,
            "rmse_pct": 100.0 * rmse / float(np.mean(y)), "bias_t_ha": float(np.mean(yhat - y)),
            "mae_t_ha": float(np.mean(np.abs(yhat - y)))}


def _join_observed(feats: pd.DataFrame, observed: pd.DataFrame, crop: str) -> pd.DataFrame:
    obs = observed.copy()
    if "yield_t_ha" not in obs.columns or "field_id" not in obs.columns:
        raise ModelError("observed yields need 'field_id' and 'yield_t_ha' columns (t/ha at "
                         "the crop's reporting basis)")
    keys = ["field_id", "season"] if "season" in obs.columns else ["field_id"]
    f = feats[feats["crop"] == crop] if "crop" in feats.columns else feats
    if keys == ["field_id"] and f["field_id"].duplicated().any():
        raise ModelError(f"fields have several {crop} seasons; give observed a 'season' column")
    cols = [c for c in obs.columns if c not in f.columns or c in keys]
    m = f.merge(obs[cols], on=keys, how="inner")
    bad = ~np.isfinite(m["yield_t_ha"].to_numpy(float)) | (m["yield_t_ha"].to_numpy(float) <= 0)
    if bad.any():
        logger.warning("dropping %d observed yields that are missing or <= 0", int(bad.sum()))
        m = m[~bad]
    return m.reset_index(drop=True)


def fit_yield_model(series: pd.DataFrame, observed, *, crop: str, method: str = "lue",
                    groups=None, seasons=None, region: str = "north_china_plain",
                    index: str = "ndvi", lat=None, radiation=None, n_splits: int = 5,
                    seed: int = 0, alpha: float = 1.0, features: Sequence[str] | None = None,
                    overrides=None, base_model: LUEModel | None = None,
                    climatology=None) -> YieldModel:
    """Fit a yield model for ``crop`` to observed yields and cross-validate it.

    Parameters
    ----------
    series : DataFrame
        Daily series (``field_id, time, <index>`` + ``gap_days``, ``flags``...).
    observed : DataFrame or mapping
        Field yields (``field_id[, season], yield_t_ha`` - crop cuts, t/ha at the crop's
        reporting basis) or aggregate statistics ``{"region": ..., "mean_yield_t_ha": ...}``
        (area-weighted mean over the given seasons; weights from an ``area_ha`` column of
        ``seasons`` when present). Aggregates can only calibrate the LUE factor.
    crop : str
        Crop id of the registry.
    method : {"lue", "empirical"}
        ``"lue"`` fits the calibration factor (geometric-mean ratio of observed to raw LUE
        yield); ``"empirical"`` fits a ridge regression of log yield on season features.
    groups : array-like, str or None
        Group label per observed row (or the name of an ``observed`` column), e.g. village,
        for grouped K-fold cross-validation; default: each field its own group.
    seasons : DataFrame, optional
        Seasons table (``field_id, season, sos, eos``; default: ``cropyield.phenology``).
    region, index, lat, radiation, climatology
        As in :meth:`LUEModel.predict`.
    n_splits, seed : int
        Folds of the grouped cross-validation and the seed of the fold assignment.
    alpha : float
        Ridge penalty on standardised features (empirical).
    features : sequence of str, optional
        Empirical features (default :data:`DEFAULT_FEATURES` + red-edge peaks present).
    overrides : dict or path, optional
        Crop-registry overrides.
    base_model : LUEModel, optional
        LUE model to calibrate (default: a new one with ``overrides`` and ``index``).

    Returns
    -------
    YieldModel
        With ``cv_`` (R², RMSE t/ha and %, bias, out-of-fold P10-P90 coverage, n, folds,
        seed) and interval quantiles from out-of-fold normalised log residuals
        (cross-conformal); see :meth:`YieldModel.report`.

    Raises
    ------
    ModelError
        Unknown method, too few matched observations (< 5 for field yields), an empirical fit
        to aggregates, or no usable seasons.
    """
    if method not in ("lue", "empirical"):
        raise ModelError(f"method must be 'lue' or 'empirical', got {method!r}")
    if seasons is None:
        try:
            from .seasons import phenology as _phen
        except ImportError as exc:  # pragma: no cover - phenology is part of the package
            raise ModelError("pass seasons= (phenology is not available)") from exc
        seasons = _phen(series, index=index)
    seasons = _seasons_frame(seasons)
    if "crop" not in seasons.columns:
        seasons = seasons.assign(crop=crop)
    lue = base_model or LUEModel(overrides=overrides, index=index, region=region)
    feats = lue.features(series, seasons, lat=lat, region=region, radiation=radiation,
                         crop=crop, climatology=climatology)
    feats = feats.merge(seasons[[c for c in seasons.columns if c in ("field_id", "season",
                                                                      "area_ha")]],
                        on=["field_id", "season"], how="left")
    rg_key = region
    # ---- aggregate statistics
    if isinstance(observed, Mapping) or (isinstance(observed, pd.DataFrame)
                                         and "mean_yield_t_ha" in observed.columns):
        if method != "lue":
            raise ModelError("aggregate statistics can only calibrate the LUE factor; use "
                             "method='lue' or give field yields (field_id, yield_t_ha)")
        recs = [dict(observed)] if isinstance(observed, Mapping) else observed.to_dict("records")
        model = LUEModel(overrides=lue.overrides, index=lue.index, fapar=lue.fapar,
                         region=region, calibration=lue.calibration, residuals=lue.residuals)
        for rec in recs:
            rg = rec.get("region", region)
            f = feats[(feats["crop"] == crop)]
            if "region" in f.columns and (f["region"] == rg).any():
                f = f[f["region"] == rg]
            raw = lue.raw_yield(f)
            w = f["area_ha"].to_numpy(float) if "area_ha" in f.columns else np.ones(len(f))
            w = np.where(np.isfinite(w), w, 0.0)
            ok = np.isfinite(raw) & (w > 0)
            if ok.sum() == 0:
                raise ModelError(f"no usable {crop} seasons to calibrate against the aggregate")
            mean_raw = float(np.sum(raw[ok] * w[ok]) / np.sum(w[ok]))
            fac = float(rec["mean_yield_t_ha"]) / mean_raw
            src = rec.get("source", "user aggregate")
            model.calibration.setdefault(crop, {})[rg] = {
                "factor": fac, "source": f"fitted: aggregate mean {rec['mean_yield_t_ha']} t/ha"
                f" ({src}), n={int(ok.sum())} seasons area-weighted", "kind": "fitted_aggregate",
                "n": int(ok.sum())}
        model.cv_ = None
        return model
    # ---- field yields
    obs = pd.DataFrame(observed)
    if isinstance(groups, str):
        if groups not in obs.columns:
            raise ModelError(f"groups column {groups!r} not in observed")
        obs = obs.assign(_group=obs[groups])
    elif groups is not None:
        g = np.asarray(groups)
        if len(g) != len(obs):
            raise ModelError("groups must have one label per observed row")
        obs = obs.assign(_group=g)
    else:
        obs = obs.assign(_group=obs["field_id"])
    m = _join_observed(feats, obs, crop)
    y = m["yield_t_ha"].to_numpy(float)
    raw = lue.raw_yield(m)
    s = quality_scale(m["n_obs"].to_numpy(float), m["max_gap_days"].to_numpy(float))
    if method == "lue":
        usable = np.isfinite(raw) & (raw > 0)
    else:
        names = list(features) if features else list(DEFAULT_FEATURES) + [
            c for c in m.columns if c.endswith("_peak") and m[c].notna().all()]
        X = _design(m, names)
        usable = np.all(np.isfinite(X), axis=1)
    m, y, raw, s = m[usable].reset_index(drop=True), y[usable], raw[usable], s[usable]
    if len(m) < 5:
        raise ModelError(f"only {len(m)} usable observed {crop} seasons; need at least 5 to fit "
                         "and cross-validate (or calibrate to an aggregate mean instead)")
    folds = _group_folds(m["_group"].to_numpy(), n_splits, seed)
    oof = np.full(len(m), np.nan)

    def fit_pred(tr, te):
        if method == "lue":
            fac = float(np.exp(np.mean(np.log(y[tr] / raw[tr]))))
            return raw[te] * fac, fac
        Xtr = _design(m.iloc[tr], names)
        coef, icpt, mu, sc = ridge_fit(Xtr, np.log(y[tr]), alpha)
        Xte = _design(m.iloc[te], names)
        return np.exp(icpt + ((Xte - mu) / sc) @ coef), (coef, icpt, mu, sc)

    fold_scores = []
    for te in folds:
        tr = np.setdiff1d(np.arange(len(m)), te)
        if len(tr) < 2:
            continue
        oof[te], _ = fit_pred(tr, te)
        fold_scores.append(te)
    z = np.log(y / oof) / s
    q = conformal_quantiles(z)
    q["method"] = (f"cross-conformal: out-of-fold log residuals / quality scale, n={q['n']}, "
                   f"{len(folds)} grouped folds, seed={seed}")
    # nested coverage estimate: quantiles from the other folds' scores
    cover = []
    for te in folds:
        rest = np.setdiff1d(np.arange(len(m)), te)
        if len(rest) < 5:
            continue
        qq = conformal_quantiles(z[rest])
        cover.append((z[te] >= qq["q10"]) & (z[te] <= qq["q90"]))
    cv = {"n": int(len(m)), "n_groups": int(len(pd.unique(m["_group"]))),
          "n_splits": len(folds), "seed": seed, "method": method,
          **_metrics(y, oof),
          "coverage_p10_p90": float(np.mean(np.concatenate(cover))) if cover else None}
    all_idx = np.arange(len(m))
    if method == "lue":
        _, fac = fit_pred(all_idx, all_idx)
        cal = {c: dict(v) for c, v in lue.calibration.items()}
        cal.setdefault(crop, {})[rg_key] = {
            "factor": fac, "kind": "fitted",
            "source": f"fitted: field yields n={len(m)} ({cv['n_groups']} groups), "
                      f"geometric-mean ratio", "n": int(len(m))}
        res = dict(lue.residuals)
        res[crop] = q
        model: YieldModel = LUEModel(overrides=lue.overrides, index=lue.index, fapar=lue.fapar,
                                     region=region, calibration=cal, residuals=res)
    else:
        Xall = _design(m, names)
        coef, icpt, mu, sc = ridge_fit(Xall, np.log(y), alpha)
        rng_ = {n_: [float(np.min(Xall[:, j])), float(np.max(Xall[:, j]))]
                for j, n_ in enumerate(names)}
        model = EmpiricalModel(crop=crop, feature_names=names, coef=coef, intercept=icpt,
                               mean=mu, scale=sc, alpha=alpha, index=index, region=region,
                               residuals=q, overrides=lue.overrides, training_range=rng_)
    model.cv_ = cv
    logger.info("fitted %s yield model for %s: %s", method, crop,
                {k: cv[k] for k in ("n", "r2", "rmse_t_ha", "coverage_p10_p90")})
    return model
