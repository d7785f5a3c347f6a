"""Fitting and grouped cross-validation: :func:`fit_yield_model`."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .._log import logger
from ..errors import ModelError
from .base import YieldModel
from .empirical import DEFAULT_FEATURES, EmpiricalModel, _design, ridge_fit
from .features import _seasons_frame
from .intervals import conformal_quantiles, quality_scale
from .lue import LUEModel
from .skill import _group_folds, _metrics

__all__ = ["fit_yield_model"]


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

