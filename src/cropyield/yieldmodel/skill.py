"""Skill of yield estimates against truth, and the canopy ceiling to judge it by.

Entry points:

* :func:`yield_skill` - per crop R², RMSE, bias and P10-P90 coverage of predictions
  (an estimates table) against observed yields.
* :func:`canopy_ceiling` - grouped-CV R² of the same regression (phenological-window features,
  learner chosen by grouped CV) fitted to the *noise-free daily canopy* of the same seasons:
  what the imagery could reveal at best. A model is judged as ``r2 / ceiling``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ModelError

__all__ = ["yield_skill", "canopy_ceiling"]


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
    if len(y) == 0:
        return {"r2": float("nan"), "rmse_t_ha": float("nan"), "rmse_pct": float("nan"),
                "bias_t_ha": float("nan"), "mae_t_ha": float("nan")}
    sse = float(np.sum((y - yhat) ** 2))
    sst = float(np.sum((y - y.mean()) ** 2))
    rmse = math.sqrt(sse / len(y))
    return {"r2": 1.0 - sse / sst if sst > 0 else float("nan"), "rmse_t_ha": rmse,
            "rmse_pct": 100.0 * rmse / float(np.mean(y)), "bias_t_ha": float(np.mean(yhat - y)),
            "mae_t_ha": float(np.mean(np.abs(yhat - y)))}


def _keys(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    if "field_id" not in a.columns or "field_id" not in b.columns:
        raise ModelError("both tables need a 'field_id' column")
    return ["field_id", "season"] if "season" in a.columns and "season" in b.columns \
        else ["field_id"]


def yield_skill(observed: pd.DataFrame, predicted: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Skill of predicted yields per crop.

    Parameters
    ----------
    observed : DataFrame
        ``field_id[, season], yield_t_ha`` (t/ha, truth or crop cuts) and optionally ``crop``.
    predicted : DataFrame
        ``field_id[, season], yield_t_ha_p50`` (or ``yield_t_ha``) and optionally
        ``yield_t_ha_p10``, ``yield_t_ha_p90`` and ``crop`` (e.g. ``estimate_yield`` output
        or ``YieldModel.predict``). Joined on ``field_id`` (+ ``season`` when both have it).

    Returns
    -------
    dict
        ``{crop: {"r2", "rmse" (t/ha), "bias" (t/ha, predicted − observed),
        "coverage_p10_p90" (share of observed yields inside [P10, P90]; None without
        intervals), "n" (pairs with both numbers), "n_missing" (observed seasons without a
        prediction)}}``; crop ``"all"`` when neither table has a ``crop`` column.
    """
    obs, pred = pd.DataFrame(observed), pd.DataFrame(predicted)
    if "yield_t_ha" not in obs.columns:
        raise ModelError("observed needs a 'yield_t_ha' column (t/ha)")
    pcol = "yield_t_ha_p50" if "yield_t_ha_p50" in pred.columns else "yield_t_ha"
    if pcol not in pred.columns:
        raise ModelError("predicted needs 'yield_t_ha_p50' (or 'yield_t_ha')")
    keys = _keys(obs, pred)
    pcols = keys + [c for c in ("yield_t_ha_p10", "yield_t_ha_p90") if c in pred.columns]
    pcols.append(pcol)
    if "crop" in pred.columns and "crop" not in obs.columns:
        pcols.append("crop")
    p = pred[pcols].rename(columns={pcol: "_pred"})
    m = obs.merge(p, on=keys, how="left")
    crop = m["crop"].astype(str) if "crop" in m.columns else pd.Series("all", index=m.index)
    out: dict[str, dict[str, Any]] = {}
    for c in sorted(crop.unique()):
        g = m[crop == c]
        y = g["yield_t_ha"].to_numpy(float)
        yh = g["_pred"].to_numpy(float)
        ok = np.isfinite(y) & np.isfinite(yh)
        met = _metrics(y, yh)
        cov = None
        if "yield_t_ha_p10" in g.columns and "yield_t_ha_p90" in g.columns and ok.any():
            lo = g["yield_t_ha_p10"].to_numpy(float)[ok]
            hi = g["yield_t_ha_p90"].to_numpy(float)[ok]
            cov = float(np.mean((y[ok] >= lo) & (y[ok] <= hi)))
        out[c] = {"r2": met["r2"], "rmse": met["rmse_t_ha"], "bias": met["bias_t_ha"],
                  "coverage_p10_p90": cov, "n": int(ok.sum()),
                  "n_missing": int(np.isfinite(y).sum() - ok.sum())}
    return out


def _groups_of(obs: pd.DataFrame, groups) -> np.ndarray:
    if groups is None:
        return obs["field_id"].to_numpy()
    if isinstance(groups, str):
        if groups not in obs.columns:
            raise ModelError(f"groups column {groups!r} not in observed")
        return obs[groups].to_numpy()
    g = np.asarray(groups)
    if len(g) != len(obs):
        raise ModelError("groups must have one label per observed row")
    return g


def canopy_ceiling(canopy: pd.DataFrame, observed: pd.DataFrame, *, groups=None, indices=None,
                   n_splits: int = 5, seed: int = 0, seasons=None,
                   weather: pd.DataFrame | None = None,
                   covariates: pd.DataFrame | None = None) -> dict[str, Any]:
    """Canopy ceiling: grouped-CV skill of a regression on the noise-free daily canopy.

    The canopy of each season is described by the phenological-window features of
    :func:`cropyield.yieldmodel.windows.window_features` (every index present); yield is
    regressed on them with the feature set, target (yield or log yield) and learner that
    :func:`~cropyield.yieldmodel.learners.select_model` chooses by grouped CV inside each
    training fold - the empirical model's own choice; the out-of-fold predictions are scored
    against ``observed``. The folds are those :func:`cropyield.yieldmodel.fit_yield_model`
    uses for the same ``groups``, ``n_splits`` and ``seed``, so ``model.cv_["r2"] /
    ceiling["r2"]`` compares like with like.

    Parameters
    ----------
    canopy : DataFrame
        Daily noise-free truth ``field_id, time`` + index columns (``ndvi, evi2, gcvi, ndre,
        ndmi``; ``lai`` is ignored) and optionally ``season`` (0 = no crop).
        ``SimulatedSeasons.canopy`` or :func:`cropyield.synthetic.true_canopy`.
    observed : DataFrame
        ``field_id[, season], yield_t_ha`` (t/ha) and optionally ``crop``; with several
        crops each is scored on its own.
    groups : array-like, str or None
        Group per observed row or the name of an ``observed`` column (e.g. ``weather_year``);
        default: each field its own group.
    indices : sequence of str, optional
        Index columns to use (default: all of NDVI, EVI2, GCVI, NDRE, NDMI present).
    n_splits, seed : int
        Grouped folds and the seed of their assignment.
    seasons : DataFrame, optional
        ``field_id, season, sos, eos`` of the seasons the model is scored on (e.g. the
        truth's or the ``seasons=`` given to :func:`fit_yield_model`): the ceiling's windows
        then cover the same days as the model's. Default: each field's (or each
        ``season`` > 0) whole canopy record.
    weather : DataFrame, optional
        Daily weather per field (:func:`cropyield.yieldmodel.weather_features` input): adds
        the grain-fill weather covariates (anchored on the noise-free NDVI peak) as an extra
        candidate set, as ``fit_yield_model(weather=)`` does - a "canopy + weather" ceiling.
        Default: the canopy-only ceiling.
    covariates : DataFrame, optional
        Season covariates (``field_id[, season]`` and ``wx_*`` columns, e.g. the crop-model
        weather index), offered with the weather features as ``fit_yield_model
        (covariates=)`` does: the ceiling of a model that uses them.

    Returns
    -------
    dict
        ``{"r2", "rmse" (t/ha), "n"}``; with several crops also ``"per_crop": {crop: {...}}``
        and the top-level numbers are the n-weighted mean R² and the pooled RMSE.

    Raises
    ------
    ModelError
        Fewer than 10 seasons with both canopy and yield, or fewer than 2 groups.
    """
    from .learners import predict_yield, select_model
    from .weather import column_sets
    from .windows import window_feature_names, window_features

    obs = pd.DataFrame(observed).copy()
    if "yield_t_ha" not in obs.columns:
        raise ModelError("observed needs a 'yield_t_ha' column (t/ha)")
    obs["_group"] = _groups_of(obs, groups)
    cols = [c for c in canopy.columns if c not in ("lai",)]
    if seasons is not None:
        seasons = pd.DataFrame(seasons)
        if "season" not in seasons.columns:
            seasons = seasons.assign(season=seasons.groupby("field_id").cumcount() + 1)
        cols = [c for c in cols if c != "season"]
        seasons = seasons[["field_id", "season", "sos", "eos"]]
    feats = window_features(canopy[cols], seasons, indices=indices)
    idx = [c.rsplit("_", 1)[0] for c in feats.columns if c.endswith("_max")]
    names = window_feature_names(idx)
    if weather is not None:
        from .weather import MODEL_WINDOWS, weather_feature_names, weather_features

        feats = feats.merge(weather_features(weather, _canopy_peaks(canopy[cols], seasons)),
                            on=["field_id", "season"], how="left")
        names = names + weather_feature_names(MODEL_WINDOWS)
    if covariates is not None:
        from .weather import covariate_names

        names = names + covariate_names(covariates)
    keys = ["field_id", "season"] if "season" in obs.columns and (
        "season" in canopy.columns or seasons is not None) else ["field_id"]
    if keys == ["field_id"]:
        feats = feats.drop(columns="season")
    m = obs.merge(feats, on=keys, how="inner")
    if covariates is not None:
        from .weather import join_covariates

        m = join_covariates(m, covariates)
    X = m[names].to_numpy(float)
    y = m["yield_t_ha"].to_numpy(float)
    ok = np.all(np.isfinite(X), axis=1) & np.isfinite(y) & (y > 0)
    m, X, y = m[ok].reset_index(drop=True), X[ok], y[ok]
    crop = m["crop"].astype(str) if "crop" in m.columns else pd.Series("all", index=m.index)
    per: dict[str, dict[str, Any]] = {}
    for c in sorted(crop.unique()):
        sel = np.flatnonzero(crop.to_numpy() == c)
        if len(sel) < 10:
            raise ModelError(f"only {len(sel)} {c} seasons have both canopy and yield; the "
                             "ceiling needs at least 10")
        g = m["_group"].to_numpy()[sel]
        folds = _group_folds(g, n_splits, seed)
        if len(folds) < 2:
            raise ModelError("the canopy ceiling needs at least 2 groups")
        oof = np.full(len(sel), np.nan)
        Xs, ys = X[sel], y[sel]
        sets = column_sets(names)
        for te in folds:
            tr = np.setdiff1d(np.arange(len(sel)), te)
            fit = select_model(Xs[tr], ys[tr], g[tr], n_splits=n_splits, column_sets=sets)
            oof[te] = predict_yield(fit, Xs[te])[0]
        met = _metrics(y[sel], oof)
        per[c] = {"r2": met["r2"], "rmse": met["rmse_t_ha"], "n": int(len(sel))}
    if len(per) == 1:
        return dict(next(iter(per.values())))
    n = sum(v["n"] for v in per.values())
    return {"r2": float(sum(v["r2"] * v["n"] for v in per.values()) / n),
            "rmse": float(math.sqrt(sum(v["rmse"] ** 2 * v["n"] for v in per.values()) / n)),
            "n": int(n), "per_crop": per}


def _canopy_peaks(canopy: pd.DataFrame, seasons) -> pd.DataFrame:
    """``field_id, season, sos, pos`` with ``pos`` the NDVI peak inside each season (the
    whole record per field, or per ``season`` > 0, without ``seasons``)."""
    c = canopy[["field_id", "time", "ndvi"] + (["season"] if "season" in canopy else [])].copy()
    c["time"] = pd.to_datetime(c["time"])
    if getattr(c["time"].dt, "tz", None) is not None:
        c["time"] = c["time"].dt.tz_convert("UTC").dt.tz_localize(None)
    if seasons is None:
        if "season" not in c.columns:
            c["season"] = 1
        c = c[c["season"] > 0]
        s = c.groupby(["field_id", "season"])["time"].min().rename("sos").reset_index()
        m = c
    else:
        s = pd.DataFrame(seasons)[["field_id", "season", "sos", "eos"]].copy()
        for k in ("sos", "eos"):
            s[k] = pd.to_datetime(s[k])
            if getattr(s[k].dt, "tz", None) is not None:
                s[k] = s[k].dt.tz_convert("UTC").dt.tz_localize(None)
        m = c.drop(columns=[k for k in ("season",) if k in c]).merge(s, on="field_id")
        m = m[(m["time"] >= m["sos"]) & (m["time"] <= m["eos"])]
    pk = m.loc[m.groupby(["field_id", "season"])["ndvi"].idxmax(),
               ["field_id", "season", "time"]].rename(columns={"time": "pos"})
    return s[["field_id", "season", "sos"]].merge(pk, on=["field_id", "season"], how="left")
