"""Crop-model-trained yield (SCYM): learn from simulated seasons, take the level from statistics.

Entry point: :func:`fit_simulation` (what ``fit_yield_model(..., method="simulation")`` calls).

1. **Train** the empirical regression (:mod:`cropyield.yieldmodel.empirical`: window features
   of every index, learner chosen by grouped CV with the simulations' weather years as groups)
   on crop-model seasons (:class:`cropyield.cropmodel.SimulatedSeasons`): their per-scene
   observations - simulated canopy turned into index values through the library's own cloud
   and noise model - are smoothed with :func:`cropyield.series.smooth_series` exactly as real
   observations are, so the model learns from the series it will see.
2. **Level.** A crop model knows the weather and management it was given, not the pests,
   weeds and losses of a real landscape, so its level is off by a factor (the "yield gap")
   while the ranking of fields is kept (Lobell et al. 2015, RSE 164:324; Jin et al. 2017,
   RSE 188:125). The level is a shift ``δ`` of log yield estimated from:

   * ``county_mean_t_ha``: ``δ_c = log(county mean / area-weighted mean prediction)`` over
     the target seasons, and/or
   * ``n`` crop cuts with log ratios ``r_i = log(y_i / ŷ_i)``: a normal-normal shrinkage
     ``δ = δ_0 + w (r̄ − δ_0)``, ``w = n / (n + σ² / τ²)``, where ``r̄ = log(Σ y_i / Σ ŷ_i)``
     (the ratio estimator, like the county level), ``δ_0`` is ``δ_c`` (or 0),
     ``τ`` the prior sd of the level (``level_prior_sd``: 0.05 with a county statistic, 0.3
     without) and ``σ²`` the per-field log-residual variance (the larger of the cuts' own and
     the simulations' out-of-fold variance).

   With neither, the simulated level is used and every estimate is flagged
   ``LEVEL_UNCALIBRATED``.
3. **Intervals.** With ≥ 10 crop cuts: split-conformal quantiles of the cuts' leave-one-out
   normalised residuals (with ``cut_error_sd`` the cuts' known measurement error is first
   removed from them, :func:`~cropyield.yieldmodel.intervals.remove_cut_error`). Otherwise the simulations' cross-conformal quantiles widened by the
   level's posterior sd (``q ± 1.2816 sd`` added in quadrature).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence, cast

import numpy as np
import pandas as pd

from .._log import logger
from ..errors import ModelError, join_flags
from .empirical import EmpiricalModel
from .intervals import _Z90, conformal_quantiles, remove_cut_error
from .windows import INDICES

__all__ = ["SimulationModel", "fit_simulation", "train_on_simulations", "level_shift"]


class SimulationModel(EmpiricalModel):
    """An :class:`EmpiricalModel` trained on crop-model seasons, with a calibrated level.

    ``level`` records how the level was set: ``{"kind": "county" | "cuts" | "county+cuts" |
    "uncalibrated", "shift_log", "factor", "n_cuts", "county_mean_t_ha", "prior_sd",
    "posterior_sd", "weight", "source"}``; the shift is already in the parameters (the
    intercept; with a linear target also the coefficients and the floor).
    """

    kind = "simulation"

    def __init__(self, *, level: Mapping[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.level = dict(level or {})

    def _params(self) -> dict[str, Any]:
        from .base import _jsonable
        d = super()._params()
        d["level"] = _jsonable(self.level)
        return d

    def _calibration_record(self, q):
        rec = super()._calibration_record(q)
        rec["level"] = {k: self.level.get(k) for k in ("kind", "factor", "n_cuts",
                                                        "county_mean_t_ha", "source")}
        return rec

    def predict(self, series: pd.DataFrame, seasons, **kwargs) -> pd.DataFrame:
        """As :meth:`EmpiricalModel.predict`; estimates of an uncalibrated level carry the
        flag ``LEVEL_UNCALIBRATED``."""
        out = super().predict(series, seasons, **kwargs)
        if self.level.get("kind") == "uncalibrated":
            fin = out["yield_t_ha_p50"].notna()
            out.loc[fin, "flags"] = [join_flags(f, "LEVEL_UNCALIBRATED")
                                     for f in out.loc[fin, "flags"]]
        return out


def _simulate(crop: str, n: int, seed: int):
    try:
        from ..cropmodel import simulate_seasons
    except ImportError as exc:
        raise ModelError("method='simulation' needs simulated= (a cropyield.cropmodel."
                         "SimulatedSeasons) or the crop-model module with PCSE (pip install "
                         f"'cropyield[pcse]'): {exc}") from exc
    return simulate_seasons(crop, n, seed=seed)


def _truth_seasons(truth: pd.DataFrame, crop: str) -> pd.DataFrame:
    t = pd.DataFrame(truth).copy()
    need = {"field_id", "yield_t_ha"}
    if not need <= set(t.columns):
        raise ModelError(f"simulated truth needs columns {sorted(need)}; has {list(t.columns)}")
    if "crop" in t.columns and (t["crop"] == crop).any():
        t = t[t["crop"] == crop]
    if "season" not in t.columns:
        t["season"] = 1
    for a, alts in (("sos", ("sos_date", "true_sos")), ("eos", ("eos_date", "true_eos"))):
        if a not in t.columns:
            alt = next((c for c in alts if c in t.columns), None)
            if alt is not None:
                t[a] = t[alt]
    return t.assign(crop=crop).reset_index(drop=True)


def train_on_simulations(simulated, *, crop: str, indices: Sequence[str] | None = None,
                         index: str = "ndvi", region: str = "north_china_plain",
                         n_splits: int = 5, seed: int = 0, alpha: float | None = None,
                         features=None, overrides=None, climatology=None,
                         smooth_kwargs: Mapping[str, Any] | None = None,
                         season_source: str = "detected", weather=None,
                         weather_options: Mapping[str, Any] | None = None,
                         n_bags: int = 1, covariates=None) -> EmpiricalModel:
    """Fit the empirical regression on crop-model seasons (step 1 of the module docstring).

    Parameters
    ----------
    simulated : SimulatedSeasons
        Any object with ``observations`` (per-scene, ready for ``smooth_series``) and
        ``truth`` (``field_id, season, yield_t_ha``, ``sos``/``eos`` dates, ``weather_year``,
        optionally ``crop`` and ``lat``) tables.
    crop : str
        Crop id; truth rows of other crops are ignored when ``truth`` has a ``crop`` column.
    indices : sequence of str, optional
        Index columns to smooth and use (default: every one of :data:`INDICES` observed).
    smooth_kwargs : mapping, optional
        Extra keywords for :func:`cropyield.series.smooth_series`.
    season_source : {"detected", "truth"}
        Season dates the training windows use. ``"detected"`` (default):
        :func:`cropyield.seasons.phenology` on the smoothed simulated series, each simulated
        season matched to the detected season overlapping it most (seasons without one are
        dropped) - the same detector that sets the target fields' seasons in the pipeline,
        so training and prediction windows agree. ``"truth"``: the truth's ``sos``/``eos``
        (for targets scored on true season dates).
    weather : DataFrame or True, optional
        Daily weather of the simulated fields (``field_id, time, tmin_c, tmax_c,
        radiation_mj_m2, rain_mm``); ``True`` takes ``simulated.weather``
        (:attr:`cropyield.cropmodel.SimulatedSeasons.weather`). Adds the weather covariates
        as an extra candidate feature set (see ``fit_yield_model(weather=)``). Default: none.
    weather_options : mapping, optional
        ``fill_days``, ``hot_c`` of :func:`cropyield.yieldmodel.weather.weather_features`.
    covariates : DataFrame or True, optional
        Season covariates of the simulated fields (``fit_yield_model(covariates=)``);
        ``True``: the crop-model weather index of each simulated season's weather year from
        the shipped table (:func:`cropyield.cropmodel.weather_year_index`, column
        :data:`~cropyield.yieldmodel.weather.CROP_MODEL_FEATURE`). Default: none.
    n_bags : int
        > 1: bag the learner choice over bootstrap resamples of the simulations' weather
        years (``fit_yield_model(n_bags=)``); the smoothing and features are computed once.

    Returns
    -------
    EmpiricalModel
        With ``cv_`` from grouped CV over the simulations' weather years (``data:
        "simulated"``).
    """
    from ..series import smooth_series
    from .fit import fit_yield_model

    obs = pd.DataFrame(simulated.observations)
    idx = [k for k in (indices if indices is not None else INDICES) if k in obs.columns]
    if not idx:
        raise ModelError(f"simulated observations carry none of the indices {list(INDICES)}")
    truth = _truth_seasons(simulated.truth, crop)
    obs = obs[obs["field_id"].isin(set(truth["field_id"]))]
    ser = smooth_series(obs, index=idx, **dict(smooth_kwargs or {}))
    if season_source not in ("detected", "truth"):
        raise ModelError(f"season_source must be 'detected' or 'truth', got {season_source!r}")
    seasons = None
    if {"sos", "eos"} <= set(truth.columns):
        seasons = truth[[c for c in ("field_id", "season", "crop", "sos", "eos", "lat",
                                     "area_ha", "perimeter_m") if c in truth.columns]]
        if season_source == "detected":
            seasons = _detected_seasons(ser, seasons, "ndvi" if "ndvi" in idx else idx[0])
            truth = truth.merge(seasons[["field_id", "season"]], on=["field_id", "season"])
    groups = truth["weather_year"].to_numpy() if "weather_year" in truth.columns else None
    if weather is True:
        weather = getattr(simulated, "weather", None)
        if weather is None:
            raise ModelError("weather=True needs simulated.weather (simulate_seasons output "
                             "of this cropyield version); pass the daily weather table")
    if covariates is True:
        covariates = _library_covariates(truth, crop)
    fitted = fit_yield_model(ser, truth[["field_id", "season", "yield_t_ha"]], crop=crop,
                             method="empirical", groups=groups, seasons=seasons, region=region,
                             index=index, n_splits=n_splits, seed=seed, alpha=alpha,
                             features=features, overrides=overrides, climatology=climatology,
                             indices=idx, weather=weather, weather_options=weather_options,
                             n_bags=n_bags, covariates=covariates)
    model = cast(EmpiricalModel, fitted)  # method="empirical" fits an EmpiricalModel
    model.cv_ = {**(model.cv_ or {}), "data": "simulated",
                 "n_weather_years": int(truth["weather_year"].nunique())
                 if "weather_year" in truth.columns else None}
    return model


def _library_covariates(truth: pd.DataFrame, crop: str) -> pd.DataFrame:
    """The crop-model weather index of simulated seasons, by their weather year."""
    from ..cropmodel import weather_year_index
    from .weather import CROP_MODEL_FEATURE

    if "weather_year" not in truth.columns:
        raise ModelError("covariates=True needs the simulations' weather_year (truth column)")
    return pd.DataFrame({"field_id": truth["field_id"].to_numpy(),
                         CROP_MODEL_FEATURE: weather_year_index(crop, truth["weather_year"])})


def _detected_seasons(ser: pd.DataFrame, truth: pd.DataFrame, index: str) -> pd.DataFrame:
    """Truth seasons with their dates replaced by the overlapping phenology season's."""
    from ..seasons import phenology

    ph = phenology(ser, index=index)
    ph = ph.dropna(subset=["sos", "eos"])
    m = truth.merge(ph[["field_id", "sos", "eos"]].rename(columns={"sos": "d_sos",
                                                                   "eos": "d_eos"}),
                    on="field_id")
    if not len(m):
        raise ModelError("phenology found no season in the simulated series; use "
                         "season_source='truth'")
    def naive(c: str) -> pd.Series:
        t = pd.to_datetime(m[c])
        return t.dt.tz_localize(None) if t.dt.tz is not None else t

    ov = (np.minimum(naive("d_eos"), naive("eos"))
          - np.maximum(naive("d_sos"), naive("sos"))).dt.days
    m = m.assign(_ov=ov.to_numpy())
    m = m[m["_ov"] > 0].sort_values("_ov", kind="stable").drop_duplicates(
        ["field_id", "season"], keep="last")
    out = m.drop(columns=["sos", "eos", "_ov"]).rename(columns={"d_sos": "sos",
                                                                "d_eos": "eos"})
    return out.reset_index(drop=True)


def _sigma2_from_quantiles(q: Mapping[str, Any]) -> float:
    return float(((q["q90"] - q["q10"]) / (2 * _Z90)) ** 2)


def level_shift(r: np.ndarray, *, prior_mean: float, prior_sd: float,
                sigma2: float, cuts_level: float | None = None) -> tuple[float, float, float]:
    """Shrinkage estimate of the log level from crop-cut log ratios ``r``.

    Returns ``(shift, posterior_sd, weight)`` with ``weight = n / (n + sigma2 / prior_sd²)``
    and ``shift = prior_mean + weight (r̄ − prior_mean)`` (``prior_mean`` when ``r`` is
    empty). ``r̄`` is ``cuts_level`` when given (:func:`fit_simulation` passes the log ratio
    of the cuts' mean yield to their mean prediction), else ``mean(r)``.
    """
    r = np.asarray(r, dtype=float)
    r = r[np.isfinite(r)]
    n = len(r)
    tau2 = float(prior_sd) ** 2
    if n == 0:
        return float(prior_mean), math.sqrt(tau2), 0.0
    w = n / (n + sigma2 / tau2)
    post = math.sqrt(1.0 / (1.0 / tau2 + n / sigma2))
    rbar = float(np.mean(r)) if cuts_level is None else float(cuts_level)
    return float(prior_mean + w * (rbar - prior_mean)), post, float(w)


def fit_simulation(series: pd.DataFrame, observed, *, crop: str, seasons: pd.DataFrame,
                   simulated=None, county_mean_t_ha: float | None = None,
                   level_prior_sd: float | None = None, region: str = "north_china_plain",
                   index: str = "ndvi", lat=None, radiation=None, n_splits: int = 5,
                   seed: int = 0, alpha: float | None = None, features=None, overrides=None,
                   climatology=None, indices: Sequence[str] | None = None,
                   n_simulated: int = 400, cut_error_sd: float | None = None,
                   weather: pd.DataFrame | None = None,
                   weather_options: Mapping[str, Any] | None = None,
                   n_bags: int = 1, covariates: pd.DataFrame | None = None) -> SimulationModel:
    """Crop-model-trained yield model levelled to statistics or crop cuts (module docstring).

    Parameters are those of :func:`cropyield.yieldmodel.fit_yield_model` (``simulated`` may
    also be an :class:`EmpiricalModel` returned by :func:`train_on_simulations`, to level one
    trained model several times); ``series`` and ``seasons`` are the *target* fields (the level is set on their predictions), ``observed``
    holds their crop cuts (``field_id[, season], yield_t_ha``; ``None`` or empty for none).
    ``cut_error_sd`` (log-scale sd of the cuts' measurement error, e.g. 0.13): with ≥ 10
    cuts their conformal scores are shrunk by :func:`~cropyield.yieldmodel.intervals.remove_cut_error`
    so that the intervals cover true yields, not the cuts' noisy measurements of them.
    ``weather`` is the daily weather of the *target* fields: with it, simulations given as
    :class:`~cropyield.cropmodel.SimulatedSeasons` are trained with their own ``weather``
    (weather covariates as an extra candidate set), and a pre-trained model that uses
    weather predicts with it. ``covariates`` are the *target* fields' season covariates
    (``fit_yield_model(covariates=)``); simulations given as
    :class:`~cropyield.cropmodel.SimulatedSeasons` then get the crop-model weather index
    of their weather years (``train_on_simulations(covariates=True)``; the only covariate
    a simulation has), and a pre-trained model that uses covariates predicts with them.

    Returns
    -------
    SimulationModel
        ``cv_``: grouped CV on the simulations (``data: "simulated"``) and ``level``.

    Raises
    ------
    ModelError
        No simulations and no crop-model module, no usable target season of ``crop`` for a
        county statistic, or malformed crop cuts.
    """
    if isinstance(simulated, EmpiricalModel):
        if not simulated.residuals:
            raise ModelError("a pre-trained simulated= model needs its interval residuals; "
                             "use train_on_simulations")
        core = simulated
    else:
        sim = simulated if simulated is not None else _simulate(crop, n_simulated, seed)
        ser_idx = [k for k in (indices if indices is not None else INDICES)
                   if k in series.columns]
        sim_wx = None
        if weather is not None:
            sim_wx = getattr(sim, "weather", None)
            if sim_wx is None:
                raise ModelError("weather= needs simulations with their weather "
                                 "(SimulatedSeasons.weather); simulate them with "
                                 "cropyield.cropmodel.simulate_seasons")
        if covariates is not None:
            from .weather import CROP_MODEL_FEATURE, covariate_names

            other = [c for c in covariate_names(covariates) if c != CROP_MODEL_FEATURE]
            if other:
                raise ModelError(f"simulations have only the crop-model index "
                                 f"({CROP_MODEL_FEATURE}) as a covariate, not {other}; drop "
                                 "them or train the model yourself (train_on_simulations"
                                 "(covariates=<the simulations' table>))")
        core = train_on_simulations(sim, crop=crop, indices=ser_idx or None, index=index,
                                    region=region, n_splits=n_splits, seed=seed, alpha=alpha,
                                    features=features, overrides=overrides,
                                    climatology=climatology, weather=sim_wx,
                                    weather_options=weather_options, n_bags=n_bags,
                                    covariates=True if covariates is not None else None)
    tseas = seasons[seasons["crop"] == crop] if "crop" in seasons.columns else seasons
    pred = core.predict(series, tseas, lat=lat, region=region, radiation=radiation,
                        climatology=climatology, weather=weather,
                        **({"covariates": covariates} if core.covariate_features else {}))
    p50 = pred["yield_t_ha_p50"].to_numpy(float)
    # county statistic -> prior mean of the level
    prior_mean, kind, src = 0.0, [], []
    if county_mean_t_ha is not None:
        if not (np.isfinite(county_mean_t_ha) and county_mean_t_ha > 0):
            raise ModelError(f"county_mean_t_ha must be a positive number (t/ha), got "
                             f"{county_mean_t_ha!r}")
        area = tseas.set_index(["field_id", "season"])["area_ha"] if "area_ha" in tseas \
            else None
        w = np.ones(len(pred)) if area is None else \
            area.reindex(pd.MultiIndex.from_frame(pred[["field_id", "season"]])).to_numpy(float)
        ok = np.isfinite(p50) & (p50 > 0) & np.isfinite(w) & (w > 0)
        if not ok.any():
            raise ModelError(f"no usable {crop} season among the target fields to compare "
                             "with county_mean_t_ha; check seasons= and the series")
        mean_pred = float(np.sum(p50[ok] * w[ok]) / np.sum(w[ok]))
        prior_mean = math.log(float(county_mean_t_ha) / mean_pred)
        kind.append("county")
        src.append(f"county mean {county_mean_t_ha:g} t/ha over {int(ok.sum())} seasons")
    tau = float(level_prior_sd) if level_prior_sd is not None else (
        0.05 if county_mean_t_ha is not None else 0.3)
    # crop cuts
    r, s_cut, y_cut = np.zeros(0), np.zeros(0), np.zeros(0)
    if observed is not None and len(observed):
        obs = pd.DataFrame(observed)
        if "yield_t_ha" not in obs.columns or "field_id" not in obs.columns:
            raise ModelError("crop cuts need 'field_id' and 'yield_t_ha' columns (t/ha)")
        keys = ["field_id", "season"] if "season" in obs.columns else ["field_id"]
        m = obs[keys + ["yield_t_ha"]].merge(
            pred[keys + ["yield_t_ha_p50", "interval_scale"]], on=keys, how="inner")
        y_cut = m["yield_t_ha"].to_numpy(float)
        yh = m["yield_t_ha_p50"].to_numpy(float)
        ok = np.isfinite(y_cut) & (y_cut > 0) & np.isfinite(yh) & (yh > 0)
        if (~ok).any():
            logger.warning("%d crop cuts have no usable prediction or yield; not used",
                           int((~ok).sum()))
        r = np.log(y_cut[ok] / yh[ok])
        s_cut = m["interval_scale"].to_numpy(float)[ok]
        y_cut = y_cut[ok]
        if len(r):
            kind.append("cuts")
            src.append(f"{len(r)} crop cuts")
    q_sim = core.residuals
    if not q_sim:  # pragma: no cover - checked above for simulated=, set by training
        raise ModelError("the simulation model has no interval residuals")
    sigma2 = _sigma2_from_quantiles(q_sim)
    if len(r) >= 3:
        sigma2 = max(sigma2, float(np.var(r, ddof=1)))
    # the cuts' level is the log ratio of their mean yield to their mean prediction (the
    # ratio estimator, as for the county statistic): the mean of log ratios sits about
    # sigma²/2 below it when the P50 is a mean (a linear-target regression), which pulled
    # the demo's wheat level 7 % low
    yh_cut = y_cut / np.exp(r) if len(r) else np.zeros(0)

    def cuts_level(sel):
        return math.log(float(np.sum(y_cut[sel])) / float(np.sum(yh_cut[sel])))

    every = np.ones(len(r), bool)
    shift, post_sd, weight = level_shift(r, prior_mean=prior_mean, prior_sd=tau, sigma2=sigma2,
                                         cuts_level=cuts_level(every) if len(r) else None)
    level: dict[str, Any] = {
        "kind": "+".join(kind) if kind else "uncalibrated", "shift_log": shift,
        "factor": math.exp(shift), "n_cuts": int(len(r)),
        "county_mean_t_ha": None if county_mean_t_ha is None else float(county_mean_t_ha),
        "prior_sd": tau, "posterior_sd": post_sd, "weight": weight,
        "sigma_log": math.sqrt(sigma2),
        "source": "; ".join(src) if src else "none: simulated level (LEVEL_UNCALIBRATED)"}
    # intervals
    if len(r) >= 10:
        z = np.empty(len(r))
        loo = np.empty(len(r))
        for i in range(len(r)):
            rest = np.delete(r, i)
            others = every.copy()
            others[i] = False
            sh_i, _, _ = level_shift(rest, prior_mean=prior_mean, prior_sd=tau, sigma2=sigma2,
                                     cuts_level=cuts_level(others))
            z[i] = (r[i] - sh_i) / s_cut[i]
            loo[i] = sh_i
        k_cut = 1.0
        if cut_error_sd:
            z, k_cut = remove_cut_error(z, cut_error_sd, s_cut)
        q: dict[str, Any] = conformal_quantiles(z)
        # the level was set on P50s formed with the simulations' median score (``pred``
        # above); keep that median so the county statistic / cut level is not undone by
        # the cuts' own residual median (the shrunk level leaves it off zero)
        d50 = float(q_sim["q50"]) - float(q["q50"])
        for k in [k for k in q if k[:1] == "q" and k[1:].isdigit()]:
            q[k] = float(q[k]) + d50
        q["method"] = (f"split-conformal on {len(r)} crop cuts (leave-one-out level), "
                       "normalised log residuals, median at the simulations' median"
                       + (f", cut error sd {float(cut_error_sd):g} removed (scores x"
                          f"{k_cut:.3f})" if cut_error_sd else ""))
        if cut_error_sd:
            q["cut_error_sd"], q["cut_error_shrink"] = float(cut_error_sd), k_cut
        yhat_loo = y_cut / np.exp(r) * np.exp(loo)
        level["loo_rmse_t_ha"] = float(np.sqrt(np.mean((yhat_loo - y_cut) ** 2)))
    else:
        q = dict(q_sim)
        d = _Z90 * post_sd
        q["q10"] = q["q50"] - math.hypot(q["q50"] - q["q10"], d)
        q["q90"] = q["q50"] + math.hypot(q["q90"] - q["q50"], d)
        q["method"] = (f"cross-conformal on simulations ({q_sim.get('n')} seasons) widened by "
                       f"the level's posterior sd {post_sd:.3f}")
    p = {k: v for k, v in core._params().items() if k != "residuals"}
    p.update(core.level_scaled(shift))
    model = SimulationModel(level=level, residuals=q, **p)
    model.cv_ = {**(core.cv_ or {}), "level": level}
    logger.info("simulation yield model for %s: level %s x%.3f", crop, level["kind"],
                level["factor"])
    return model
