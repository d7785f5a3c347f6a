"""Fitting and grouped cross-validation: :func:`fit_yield_model`."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .._log import logger
from ..errors import ModelError
from .base import YieldModel, _jsonable
from .empirical import (EDGE_FEATURE, SEASON_FEATURES, EmpiricalModel, _design,
                        _uses_windows, model_features)
from .features import _seasons_frame
from .intervals import conformal_quantiles, quality_scale, remove_cut_error
from .lue import LUEModel, _benchmark_yield
from .learners import fit_learner, predict_yield, select_model
from .skill import _group_folds, _metrics
from .weather import (MODEL_STATS, MODEL_WINDOWS, column_sets, weather_columns,
                      weather_feature_names)
from .windows import INDICES, window_feature_names

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
                    seed: int = 0, alpha: float | None = None,
                    features: Sequence[str] | None = None, overrides=None,
                    base_model: LUEModel | None = None, climatology=None,
                    indices: Sequence[str] | None = None, simulated=None,
                    county_mean_t_ha: float | None = None,
                    level_prior_sd: float | None = None,
                    n_simulated: int = 400,
                    cut_error_sd: float | None = None, weather: pd.DataFrame | None = None,
                    weather_options: Mapping[str, Any] | None = None,
                    covariates: pd.DataFrame | None = None,
                    n_bags: int = 1, pool_by=None) -> YieldModel:
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
        With ``method="simulation"``: crop cuts that set the level (any number, 0 included:
        ``None`` or an empty table).
    crop : str
        Crop id of the registry.
    method : {"lue", "empirical", "simulation"}
        ``"lue"`` fits the calibration factor (geometric-mean ratio of observed to raw LUE
        yield); ``"empirical"`` regresses yield or log yield on the phenological-window
        features of every index present (:mod:`cropyield.yieldmodel.windows`) plus log APAR,
        or on their compact subset, with a regularised learner (ridge / elastic net,
        scikit-learn) - target, feature set and learner chosen by grouped CV on the error
        in t/ha inside each training fold
        (:func:`cropyield.yieldmodel.learners.select_model`); ``"simulation"`` trains the same regression on crop-model
        simulations (``simulated``) and calibrates its level to ``county_mean_t_ha`` and/or
        the crop cuts in ``observed`` (:func:`cropyield.yieldmodel.simulation.fit_simulation`).
    groups : array-like, str or None
        Group label per observed row (or the name of an ``observed`` column), e.g. weather
        year, region or village, for grouped K-fold cross-validation and the learner choice;
        default: each field its own group. (Simulation: the groups of the simulations are
        their ``weather_year``.)
    seasons : DataFrame, optional
        Seasons table (``field_id, season, sos, eos``; default: ``cropyield.phenology``).
        With ``perimeter_m`` (m) and ``area_ha`` (ha) columns (the field polygons'),
        ``"empirical"``/``"simulation"`` also offer the learner the edge covariate
        ``perimeter_area_m`` (1/m; mixed edge pixels pull small fields' index means towards
        their surroundings), in every candidate feature set; a model that uses it needs
        the same columns to predict (``estimate_yield`` adds them from its fields).
    region, index, lat, radiation, climatology
        As in :meth:`LUEModel.predict`.
    n_splits, seed : int
        Folds of the grouped cross-validation and the seed of the fold assignment.
    alpha : float, optional
        Fix the learner to a ridge with this penalty on standardised features instead of
        choosing among :data:`cropyield.yieldmodel.learners.CANDIDATES` by grouped CV.
    features : sequence of str, optional
        Empirical features (default: ``log_apar, log_apar_post`` and the window features of
        ``indices``; the pre-window set :data:`DEFAULT_FEATURES` still works).
    overrides : dict or path, optional
        Crop-registry overrides.
    base_model : LUEModel, optional
        LUE model to calibrate (default: a new one with ``overrides`` and ``index``).
    indices : sequence of str, optional
        Index columns for the window features (default: every one of NDVI, EVI2, GCVI, NDRE,
        NDMI present in ``series``).
    simulated : SimulatedSeasons, optional
        ``method="simulation"``: crop-model seasons to train on
        (:class:`cropyield.cropmodel.SimulatedSeasons`); default: built with
        ``cropyield.cropmodel.simulate_seasons(crop, n_simulated, seed=seed)``; or an
        :class:`EmpiricalModel` from
        :func:`cropyield.yieldmodel.simulation.train_on_simulations` (trained once, levelled
        here).
    county_mean_t_ha : float, optional
        ``method="simulation"`` or ``"lue"``: official mean yield (t/ha, the crop's
        reporting basis) of the fields in ``series``/``seasons`` (area-weighted with an
        ``area_ha`` column), e.g. the county statistic of that year. With ``"lue"`` it sets
        the calibration factor (for ``value_only`` crops: the level of the benchmark yield),
        shrunk towards the crop cuts in ``observed`` as the simulation model's level is
        (any number of cuts, none included; the cuts of a ``value_only`` crop also update
        its vigour elasticity from the registry's prior, so that a vigour ratio the cuts do
        not support is damped rather than trusted).
    level_prior_sd : float, optional
        ``method="simulation"`` or ``"lue"`` with ``county_mean_t_ha``: prior standard
        deviation of the log level before crop cuts (default 0.05 with
        ``county_mean_t_ha`` - the error of a county statistic - else 0.3, the spread of
        crop-model level errors); crop cuts shrink towards the prior.
    n_simulated : int
        Seasons to simulate when ``simulated`` is not given.
    cut_error_sd : float, optional
        ``method="empirical"`` or ``"simulation"`` (≥ 10 cuts): known log-scale standard
        deviation of the observed yields' measurement error (a crop cut: ~0.13). Removed
        from the conformal scores (:func:`cropyield.yieldmodel.intervals.remove_cut_error`:
        scores shrunk about their median until their variance drops by it, never below
        zero; assumes the error is independent of the model's), so that P10-P90 aim at
        80 % coverage of *true* yields. ``cv_["coverage_p10_p90"]`` stays measured on the
        observed (noisy) yields and reads low by design.
    weather : DataFrame, optional
        Daily weather per field (``field_id, time, tmin_c, tmax_c`` degC,
        ``radiation_mj_m2`` MJ m-2 d-1, ``rain_mm`` mm/d) of the fields in ``series``: adds
        the grain-fill weather covariates of
        :func:`cropyield.yieldmodel.weather.weather_features` over POS to POS + 35 d - mean
        rain and Tmax (:data:`~cropyield.yieldmodel.weather.MODEL_STATS`), and all five
        statistics as a further candidate; ``features=`` can name others; a fixed ``alpha``
        uses the pair) as extra candidate feature sets of the
        grouped-CV choice - used only when better on held-out groups (``model.learner
        ["column_set"]`` ends with ``+weather`` or ``+weather_all`` then, and the model needs ``weather=`` to
        predict). ``method="empirical"`` and ``"simulation"`` (with ``simulated`` a
        :class:`~cropyield.cropmodel.SimulatedSeasons`, trained on its own ``weather``;
        ``weather`` here is the target fields'). Training seasons without weather are
        dropped (logged). Default: no weather (the behaviour before this keyword).
    weather_options : mapping, optional
        ``fill_days`` (grain-fill window after the peak, days, default 35) and ``hot_c``
        (hot-day threshold, degC, default 30) of the weather covariates.
    covariates : DataFrame, optional
        Season-level weather covariates you computed: ``field_id`` (``season``, ``crop``
        optional join keys) and numeric columns named ``wx_*``
        (:func:`~cropyield.yieldmodel.weather.season_covariates`), e.g. the crop-model
        weather index ``wx_cm_yield_t_ha`` from :func:`cropyield.cropmodel.reference_yield`
        under each field's station weather. Offered with the grain-fill weather pair in the
        ``+weather`` candidate sets (with no ``weather=``, alone); a model that uses them
        needs ``covariates=`` to predict, and a season without them gets NaN and
        ``NO_WEATHER``. ``method="simulation"`` with simulations (not a pre-trained model)
        accepts only the crop-model index: the simulations get theirs from their weather
        years (``train_on_simulations(covariates=True)``). docs/validation_yield.md
        section 10.
    n_bags : int
        ``method="empirical"`` or ``"simulation"`` (trained here or by
        :func:`~cropyield.yieldmodel.simulation.train_on_simulations`): > 1 bags the
        grouped-CV choice of feature set and learner over that many bootstrap resamples of
        whole groups and averages the members (one linear model, same JSON form; ``learner
        ["name"]`` ``"bagging"``), in the final fit and in every cross-validation fold, so
        ``cv_`` scores the bagged model (cost: ``n_bags`` times the choice). It steadies a
        choice that jumps between training draws (the demo's crop-model-trained cores).
        Default 1: no bagging (the behaviour before this keyword).
    pool_by : mapping, Series or str, optional
        Opt-in, ``method="empirical"`` only: a group label per ``field_id`` (mapping or
        Series) or a ``seasons`` column naming the fields that share a county and season.
        Adds the group means of the post-peak integrals of every index
        (:mod:`cropyield.yieldmodel.pooled`: over every season of ``crop`` in ``series``
        with that label, cut or not) as an extra candidate feature set. A model that chose
        them (``learner["column_set"]`` contains ``+pooled``) needs ``pool_by=`` to predict,
        and **one field's estimate then depends on the imagery of the other fields of its
        group** (at least 5 seasons; fewer: NaN, flag ``FEW_POOLED``). Experimental: on
        crop-model wheat its gain vanished when the group's fields share one sky, as real
        fields do (docs/validation_yield.md section 9). Default: none.

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

    Examples
    --------
    ``series``: daily series of the surveyed fields (:func:`cropyield.smooth_series`);
    ``cuts``: their crop cuts, a table ``field_id, yield_t_ha``.

    >>> import cropyield as cy
    >>> model = cy.fit_yield_model(series, cuts, crop="winter_wheat")  # doctest: +SKIP
    >>> model.cv_["rmse_t_ha"], model.cv_["coverage_p10_p90"]  # doctest: +SKIP
    >>> model.to_json("wheat_model.json")  # doctest: +SKIP
    >>> model = cy.YieldModel.from_json("wheat_model.json")  # doctest: +SKIP
    >>> county = {"region": "north_china_plain", "mean_yield_t_ha": 6.2}
    >>> lue = cy.fit_yield_model(series, county, crop="winter_wheat")  # doctest: +SKIP
    """
    if method not in ("lue", "empirical", "simulation"):
        raise ModelError(f"method must be 'lue', 'empirical' or 'simulation', got {method!r}")
    if pool_by is not None and method != "empirical":
        raise ModelError("pool_by= applies to method='empirical' only")
    if covariates is not None and method == "lue":
        raise ModelError("covariates= applies to method='empirical' or 'simulation'")
    if weather is not None and method == "lue":
        raise ModelError("weather= applies to method='empirical' or 'simulation'; the LUE "
                         "model takes measured radiation through radiation=")
    if seasons is None:
        try:
            from ..seasons import phenology as _phen
        except ImportError as exc:  # pragma: no cover - phenology is part of the package
            raise ModelError("pass seasons= (phenology is not available)") from exc
        seasons = _phen(series, index=index)
    seasons = _seasons_frame(seasons)
    if "crop" not in seasons.columns:
        seasons = seasons.assign(crop=crop)
    if method == "simulation":
        from .simulation import fit_simulation
        return fit_simulation(series, observed, crop=crop, seasons=seasons, simulated=simulated,
                              county_mean_t_ha=county_mean_t_ha,
                              level_prior_sd=level_prior_sd, region=region, index=index,
                              lat=lat, radiation=radiation, n_splits=n_splits, seed=seed,
                              alpha=alpha, features=features, overrides=overrides,
                              climatology=climatology, indices=indices,
                              n_simulated=n_simulated, cut_error_sd=cut_error_sd,
                              weather=weather, weather_options=weather_options,
                              n_bags=n_bags, covariates=covariates)
    lue = base_model or LUEModel(overrides=overrides, index=index, region=region)
    if method == "empirical":
        feats = model_features(series, seasons, index=index, indices=indices,
                               windows=not features or _uses_windows(features),
                               registry=lue.registry, crop=crop, region=region, lat=lat,
                               radiation=radiation, climatology=climatology,
                               weather=weather, weather_options=weather_options,
                               covariates=covariates)
    else:
        feats = lue.features(series, seasons, lat=lat, region=region, radiation=radiation,
                             crop=crop, climatology=climatology)
    feats = feats.merge(seasons[[c for c in seasons.columns if c in ("field_id", "season",
                                                                      "area_ha")]],
                        on=["field_id", "season"], how="left")
    pool = None
    if pool_by is not None:
        from .pooled import add_pooled_features, pool_labels, pool_options

        tab = feats if not isinstance(pool_by, str) or pool_by in feats.columns else \
            feats[["field_id", "season"]].merge(
                seasons[[c for c in ("field_id", "season", pool_by) if c in seasons.columns]],
                on=["field_id", "season"], how="left")
        pidx = list(indices) if indices else (_indices_of(default_feature_names(feats)) or [])
        pool = pool_options(pidx)
        feats = add_pooled_features(feats, pool_labels(pool_by, tab), indices=pidx, crop=crop)
    rg_key = region
    model: YieldModel
    if method == "lue":
        # raw LUE yield, or benchmark x vigour ratio ** elasticity for value-only crops
        # (vigour ratios against every given season of the crop, not the cuts alone, and
        # that reference pinned in the fitted model: its estimates do not depend on the batch)
        lue = _pin_vigour_reference(lue, feats, crop)
        feats = feats.assign(_base=lue._base_yield(feats))
        if county_mean_t_ha is not None:
            return _fit_lue_levelled(lue, feats, observed, crop=crop, region=region,
                                     county_mean_t_ha=county_mean_t_ha,
                                     level_prior_sd=level_prior_sd, groups=groups,
                                     n_splits=n_splits, seed=seed, cut_error_sd=cut_error_sd)
    # ---- aggregate statistics
    if isinstance(observed, Mapping) or (isinstance(observed, pd.DataFrame)
                                         and "mean_yield_t_ha" in observed.columns):
        if method != "lue":
            raise ModelError("aggregate statistics can only calibrate the LUE factor; use "
                             "method='lue' or give field yields (field_id, yield_t_ha)")
        recs = [dict(observed)] if isinstance(observed, Mapping) else observed.to_dict("records")
        model = LUEModel(overrides=lue.overrides, index=lue.index, fapar=lue.fapar,
                         region=region, calibration=lue.calibration, residuals=lue.residuals,
                         vigour=lue.vigour, vigour_reference=lue.vigour_reference)
        for rec in recs:
            rg = rec.get("region", region)
            f = feats[(feats["crop"] == crop)]
            if "region" in f.columns and (f["region"] == rg).any():
                f = f[f["region"] == rg]
            raw = f["_base"].to_numpy(float)
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
    obs = obs.assign(_group=_groups_column(obs, groups))
    m = _join_observed(feats, obs, crop)
    y = m["yield_t_ha"].to_numpy(float)
    raw = m["_base"].to_numpy(float) if "_base" in m.columns else np.full(len(m), np.nan)
    s = quality_scale(m["n_obs"].to_numpy(float), m["max_gap_days"].to_numpy(float))
    if method == "lue":
        usable = np.isfinite(raw) & (raw > 0)
    else:
        names = list(features) if features else default_feature_names(m)
        if pool is not None and not features:
            from .pooled import pooled_feature_names

            names += pooled_feature_names(pool["indices"])
        if weather is not None and not features:
            # every statistic for the grouped-CV choice (column_sets offers the MODEL_STATS
            # pair and all of them); a fixed penalty uses every column: the pair only
            names += weather_feature_names(MODEL_WINDOWS,
                                           MODEL_STATS if alpha is not None else None)
        if covariates is not None and not features:
            from .weather import covariate_names

            names += covariate_names(covariates)
        X = _design(m, names)
        usable = np.all(np.isfinite(X), axis=1)
        if weather is not None or covariates is not None:
            wx = np.zeros(len(names), bool)
            wx[weather_columns(names)] = True
            finite = np.isfinite(X)
            n_wx = int((~finite[:, wx].all(axis=1) & finite[:, ~wx].all(axis=1)).sum())
            if n_wx:
                logger.warning("%d observed %s seasons have no weather covariates "
                               "(NO_WEATHER); not used", n_wx, crop)
        if pool is not None:
            from .pooled import is_pooled_feature

            pl = np.array([is_pooled_feature(n) for n in names], bool)
            n_pl = int((~np.isfinite(X[:, pl]).all(axis=1)).sum()) if pl.any() else 0
            if n_pl:
                logger.warning("%d observed %s seasons have no pooled features (fewer than "
                               "%d seasons in their pool_by group: FEW_POOLED); not used",
                               n_pl, crop, pool["min_seasons"])
    m, y, raw, s = m[usable].reset_index(drop=True), y[usable], raw[usable], s[usable]
    if len(m) < 5:
        raise ModelError(f"only {len(m)} usable observed {crop} seasons; need at least 5 to fit "
                         "and cross-validate (or calibrate to an aggregate mean instead)")
    g = m["_group"].to_numpy()
    if len(pd.unique(g)) < 2:
        raise ModelError(f"the {len(m)} usable observed {crop} seasons are all in one group; "
                         "cross-validation holds whole groups out, so groups= needs at least "
                         "2 distinct values (5 or more for a useful check), or leave it None "
                         "to hold out field by field")
    folds = _group_folds(g, n_splits, seed)
    oof = np.full(len(m), np.nan)
    if method == "empirical":
        X = _design(m, names)

    def fit_pred(tr, te):
        if method == "lue":
            fac = float(np.exp(np.mean(np.log(y[tr] / raw[tr]))))
            return raw[te] * fac, fac
        fit = _fit_select(X[tr], y[tr], names, g[tr], alpha=alpha, n_splits=n_splits,
                          n_bags=n_bags, seed=seed)
        return predict_yield(fit, X[te])[0], fit

    for te in folds:
        tr = np.setdiff1d(np.arange(len(m)), te)
        if len(tr) < 2:
            continue
        oof[te], _ = fit_pred(tr, te)
    q, cv = _cross_conformal(y, oof, s, folds, seed=seed, method=method,
                             n_groups=int(len(pd.unique(g))), cut_error_sd=cut_error_sd)
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
        model = LUEModel(overrides=lue.overrides, index=lue.index, fapar=lue.fapar,
                         region=region, calibration=cal, residuals=res, vigour=lue.vigour,
                         vigour_reference=lue.vigour_reference)
    else:
        model = _empirical_from(X, y, g, names, crop=crop, alpha=alpha, n_splits=n_splits,
                                index=index, region=region, residuals=q,
                                overrides=lue.overrides, indices=_indices_of(names),
                                weather=dict(weather_options or {}) or None,
                                n_bags=n_bags, seed=seed, pool=pool)
    model.cv_ = cv
    if method == "empirical" and n_bags and int(n_bags) > 1:
        model.cv_["n_bags"] = int(n_bags)
    logger.info("fitted %s yield model for %s: %s", method, crop,
                {k: cv[k] for k in ("n", "r2", "rmse_t_ha", "coverage_p10_p90")})
    return model


def _groups_column(obs: pd.DataFrame, groups) -> np.ndarray:
    if isinstance(groups, str):
        if groups not in obs.columns:
            raise ModelError(f"groups column {groups!r} not in observed")
        return obs[groups].to_numpy()
    if groups is not None:
        g = np.asarray(groups)
        if len(g) != len(obs):
            raise ModelError("groups must have one label per observed row")
        return g
    return obs["field_id"].to_numpy() if "field_id" in obs.columns else np.arange(len(obs))


def default_feature_names(feats: pd.DataFrame) -> list[str]:
    """Default empirical features present (finite somewhere) in a feature table."""
    idx = [c[:-4] for c in feats.columns if c.endswith("_max") and c[:-4] in INDICES]
    names = list(SEASON_FEATURES) + window_feature_names(idx)
    if EDGE_FEATURE in feats.columns:
        names.append(EDGE_FEATURE)
    X = _design(feats, names)
    return [n for j, n in enumerate(names) if np.isfinite(X[:, j]).any()]


def _indices_of(names: Sequence[str]) -> list[str] | None:
    idx = [n[:-4] for n in names if n.endswith("_max") and n[:-4] in INDICES]
    return idx or None


def _fit_select(X, y, names, groups, *, alpha, n_splits, n_bags=1, seed=0):
    """A fixed ``alpha``: ridge on log yield and every column (the schema-1 behaviour);
    ``alpha=None``: feature set, target and learner chosen by grouped CV
    (:func:`~cropyield.yieldmodel.learners.select_model`); ``n_bags > 1``: that choice
    bagged over bootstrap resamples of the groups (:func:`_bagged`)."""
    if alpha is not None:
        fit = fit_learner(X, np.log(y), "ridge", {"alpha": float(alpha)})
        fit.update(columns=list(range(X.shape[1])), column_set="full", target="log",
                   floor=0.0)
        return fit
    fit = select_model(X, y, groups, n_splits=n_splits, column_sets=_column_sets(names))
    if n_bags and int(n_bags) > 1:
        fit = _bagged(X, y, names, groups, fit, n_splits=n_splits, n_bags=int(n_bags),
                      seed=seed)
    return fit


def _column_sets(names):
    """:func:`~cropyield.yieldmodel.weather.column_sets` with the field covariate
    (:data:`~cropyield.yieldmodel.empirical.EDGE_FEATURE`, a property of the field, not of
    an index) in every set."""
    if EDGE_FEATURE not in names:
        return column_sets(names)
    j = list(names).index(EDGE_FEATURE)
    rest = [n for n in names if n != EDGE_FEATURE]
    back = [k for k in range(len(names)) if k != j]
    return {k: [back[i] for i in v] + [j] for k, v in column_sets(rest).items()}


def _bagged(X, y, names, groups, full, *, n_splits, n_bags, seed):
    """Bootstrap aggregation of the grouped-CV model choice (Breiman 1996, Machine Learning
    24:123): ``n_bags`` resamples of whole groups (weather years) with replacement, each
    running the full choice of feature set and learner on the target ``full`` chose (its
    copies of a group stay in one fold), averaged. Every member is linear in the features on
    that target (log yield or yield), so their average is one linear model: coefficients
    averaged on the raw feature scale over the union of the members' columns (a column a
    member did not use counts 0), re-expressed on standardised columns of all rows - the
    model and its JSON keep the single-regression form. A linear-target floor applies to
    the average. Returns a :func:`select_model`-like dict (``name`` ``"bagging"``,
    ``params`` ``{"n_bags", "seed", "members"}``, ``column_set`` ``"<full's>|bagged"``)."""
    g = np.asarray(groups)
    ug = np.unique(g)
    if len(ug) < 3:
        return full
    rng = np.random.default_rng([int(seed), 1996])
    target = full["target"]
    raw = np.zeros(X.shape[1])
    icpt = 0.0
    members = []
    for _ in range(n_bags):
        pick = rng.choice(ug, size=len(ug), replace=True)
        while len(np.unique(pick)) < 2:
            pick = rng.choice(ug, size=len(ug), replace=True)
        idx = np.concatenate([np.flatnonzero(g == u) for u in pick])
        fb = select_model(X[idx], y[idx], g[idx], n_splits=n_splits,
                          column_sets=_column_sets(names), targets=(target,))
        cols = np.asarray(fb["columns"], int)
        c = np.asarray(fb["coef"], float) / np.asarray(fb["scale"], float)
        raw[cols] += c
        icpt += float(fb["intercept"]) - float(np.sum(c * np.asarray(fb["mean"], float)))
        members.append(f"{fb['column_set']}/{fb['name']}/{fb['params']}")
    raw /= n_bags
    icpt /= n_bags
    cols = np.flatnonzero(raw != 0.0)
    if not len(cols):  # every member an intercept-only fit: keep the single choice
        return full
    mean = X[:, cols].mean(axis=0)
    sd = X[:, cols].std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    out = dict(full)
    out.update(name="bagging", params={"n_bags": n_bags, "seed": int(seed),
                                       "members": members},
               coef=raw[cols] * sd, intercept=icpt + float(np.sum(raw[cols] * mean)),
               mean=mean, scale=sd, columns=cols.tolist(),
               column_set=f"{full['column_set']}|bagged")
    return out


def _empirical_from(X, y, g, names, *, crop, alpha, n_splits, index, region, residuals,
                    overrides, indices, cls=EmpiricalModel, n_bags=1, seed=0,
                    **extra) -> EmpiricalModel:
    fit = _fit_select(X, y, names, g, alpha=alpha, n_splits=n_splits, n_bags=n_bags,
                      seed=seed)
    cols = fit["columns"]
    used = [names[j] for j in cols]
    rng_ = {names[j]: [float(np.min(X[:, j])), float(np.max(X[:, j]))] for j in cols}
    learner = {"name": fit["name"], "params": _jsonable(fit["params"]),
               "target": fit["target"],
               "column_set": fit["column_set"], "cv_mse": fit.get("cv_mse"),
               "n_splits": fit.get("n_splits"), "library": "scikit-learn"}
    return cls(crop=crop, feature_names=used, coef=fit["coef"], intercept=fit["intercept"],
               mean=fit["mean"], scale=fit["scale"],
               alpha=float(fit["params"].get("alpha", 1.0)), index=index, region=region,
               residuals=residuals, overrides=overrides, training_range=rng_,
               indices=indices, learner=learner, target=fit["target"],
               floor_t_ha=fit["floor"], **extra)


def _cross_conformal(y, oof, s, folds, *, seed, method, n_groups, cut_error_sd=None):
    """Interval quantiles from out-of-fold normalised log residuals and a nested coverage
    estimate (quantiles from the other folds' scores applied to each fold). With
    ``cut_error_sd`` the quantiles come from scores with the measurement error removed
    (:func:`remove_cut_error`); the nested coverage is still of the observed yields."""
    z = np.log(y / oof) / s
    zq, k_cut = (remove_cut_error(z, cut_error_sd, s) if cut_error_sd else (z, 1.0))
    q = conformal_quantiles(zq)
    q["method"] = (f"cross-conformal: out-of-fold log residuals / quality scale, n={q['n']}, "
                   f"{len(folds)} grouped folds, seed={seed}"
                   + (f", cut error sd {float(cut_error_sd):g} removed (scores x{k_cut:.3f})"
                      if cut_error_sd else ""))
    if cut_error_sd:
        q["cut_error_sd"], q["cut_error_shrink"] = float(cut_error_sd), k_cut
    cover = []
    for te in folds:
        rest = np.setdiff1d(np.arange(len(y)), te)
        rest = rest[np.isfinite(z[rest])]
        if len(rest) < 5:
            continue
        qq = conformal_quantiles(remove_cut_error(z[rest], cut_error_sd, np.broadcast_to(
            s, z.shape)[rest])[0] if cut_error_sd else z[rest])
        zt = z[te][np.isfinite(z[te])]
        cover.append((zt >= qq["q10"]) & (zt <= qq["q90"]))
    cv = {"n": int(len(y)), "n_groups": n_groups, "n_splits": len(folds), "seed": seed,
          "method": method, **_metrics(y, oof),
          "coverage_p10_p90": float(np.mean(np.concatenate(cover))) if cover else None}
    return q, cv


def _elasticity_posterior(r: np.ndarray, x: np.ndarray, *, prior: float, prior_sd: float,
                          sigma2: float) -> tuple[float, float]:
    """Normal-normal update of the vigour elasticity ``β`` in ``r = δ + β x + e``
    (``r``: log of cut yield / benchmark, ``x``: log vigour ratio, ``e ~ N(0, sigma2)``),
    both centred so that the level ``δ`` drops out. Returns ``(posterior mean, sd)``; the
    prior when ``x`` does not vary."""
    if len(r) < 3:
        return float(prior), float(prior_sd)
    xc, rc = x - np.mean(x), r - np.mean(r)
    sxx = float(np.sum(xc ** 2))
    if sxx <= 0:
        return float(prior), float(prior_sd)
    prec = 1.0 / prior_sd ** 2 + sxx / sigma2
    beta = (prior / prior_sd ** 2 + float(np.sum(xc * rc)) / sigma2) / prec
    return float(beta), float(1.0 / np.sqrt(prec))


def _pin_vigour_reference(lue: LUEModel, feats: pd.DataFrame, crop: str) -> LUEModel:
    """A copy of ``lue`` whose vigour reference for a ``value_only`` ``crop`` is the median
    season-mean fAPAR of the crop's seasons in ``feats`` (the fitting batch), when there are
    enough of them; ``lue`` itself otherwise (other crops, too few seasons)."""
    from .lue import batch_vigour_reference

    yp = lue.yield_params(crop)
    if yp is None or yp.yield_basis != "value_only" or "fapar_mean" not in feats.columns:
        return lue
    fm = feats.loc[feats["crop"] == crop, "fapar_mean"].to_numpy(float)
    ref = batch_vigour_reference(fm)
    if ref is None or not ref > 0:
        return lue
    refs = {**lue.vigour_reference,
            crop: {"fapar": ref, "n_seasons": int(np.isfinite(fm).sum())}}
    return LUEModel(overrides=lue.overrides, index=lue.index, fapar=lue.fapar,
                    region=lue.region, calibration=lue.calibration, residuals=lue.residuals,
                    vigour=lue.vigour, vigour_reference=refs)


def _fit_lue_levelled(lue: LUEModel, feats: pd.DataFrame, observed, *, crop: str, region: str,
                      county_mean_t_ha: float, level_prior_sd: float | None, groups,
                      n_splits: int, seed: int, cut_error_sd: float | None) -> LUEModel:
    """``method="lue"`` with a county statistic: the level (calibration factor) is the
    county mean over the area-weighted mean base yield of the given seasons, shrunk towards
    the crop cuts (any number, none included) as the simulation model's level is
    (:func:`cropyield.yieldmodel.simulation.level_shift`, prior sd ``level_prior_sd``,
    default 0.05 - the error of a county statistic). For ``value_only`` crops the cuts first
    update the vigour elasticity from the registry's prior (:func:`_elasticity_posterior`):
    with few cuts, or cuts whose vigour ratios hardly differ, it stays at the prior.
    Intervals: cross-conformal on the cuts (>= 5, folds of ``groups``), else the crop's prior
    sigma widened by the level's posterior sd."""
    import math

    from .intervals import _Z90, _prior_quantiles
    from .simulation import level_shift

    if not (county_mean_t_ha is not None and np.isfinite(county_mean_t_ha)
            and county_mean_t_ha > 0):
        raise ModelError(f"county_mean_t_ha must be a positive number (t/ha), got "
                         f"{county_mean_t_ha!r}")
    f = feats[feats["crop"] == crop].reset_index(drop=True)
    yp = lue.yield_params(crop)
    if yp is None:
        raise ModelError(f"crop {crop!r} has no yield parameters in the registry")
    value_only = yp.yield_basis == "value_only"
    f = f.assign(_vr=lue.vigour_ratios(f))
    bench = np.full(len(f), np.nan)
    if value_only:
        rg = f["region"] if "region" in f.columns else pd.Series([region] * len(f))
        bench = np.array([b if (b := _benchmark_yield(yp, r_)) is not None else np.nan
                          for r_ in rg], dtype=float)
    f = f.assign(_bench=bench)
    # crop cuts (optional)
    if observed is not None and len(observed):
        obs = pd.DataFrame(observed)
        obs = obs.assign(_group=_groups_column(obs, groups))
        m = _join_observed(f, obs, crop)
        m = m[np.isfinite(m["_base"].to_numpy(float))].reset_index(drop=True)
    else:
        m = f.iloc[:0].assign(yield_t_ha=np.zeros(0), _group=np.zeros(0))
    y = m["yield_t_ha"].to_numpy(float)
    sigma2 = float(yp.prior_sigma) ** 2
    vigour = {c: dict(v) for c, v in lue.vigour.items()}
    if value_only:
        ve = lue.vigour_elasticity(crop)
        r0 = np.log(y / m["_bench"].to_numpy(float))
        if len(y) >= 3:
            sigma2 = max(sigma2, float(np.var(r0, ddof=1)))
        beta, beta_sd = _elasticity_posterior(
            r0, np.log(m["_vr"].to_numpy(float)), prior=float(ve["elasticity"]),
            prior_sd=float(ve["sd"]), sigma2=sigma2)
        vigour[crop] = {"elasticity": beta, "sd": beta_sd, "n_cuts": int(len(y)),
                        "prior": float(ve["elasticity"]), "prior_sd": float(ve["sd"]),
                        "source": (f"registry prior {float(ve['elasticity']):g} ± "
                                   f"{float(ve['sd']):g} updated by {len(y)} crop cuts"
                                   if len(y) >= 3 else "crop registry prior (< 3 crop cuts)")}
        f = f.assign(_base=f["_bench"] * f["_vr"] ** beta)
        m = m.assign(_base=m["_bench"] * m["_vr"] ** beta)
    base = f["_base"].to_numpy(float)
    w = f["area_ha"].to_numpy(float) if "area_ha" in f.columns else np.ones(len(f))
    ok = np.isfinite(base) & (base > 0) & np.isfinite(w) & (w > 0)
    if not ok.any():
        raise ModelError(f"no usable {crop} season among the given seasons to compare with "
                         "county_mean_t_ha; check seasons= (with an area_ha column) and the "
                         "series")
    prior_mean = math.log(float(county_mean_t_ha) / float(np.sum(base[ok] * w[ok])
                                                          / np.sum(w[ok])))
    tau = float(level_prior_sd) if level_prior_sd is not None else 0.05
    yb = m["_base"].to_numpy(float)
    r = np.log(y / yb)
    if len(r) >= 3:
        sigma2 = max(sigma2, float(np.var(r, ddof=1)))

    def level(sel):
        if not sel.any():
            return level_shift(np.zeros(0), prior_mean=prior_mean, prior_sd=tau,
                               sigma2=sigma2)
        return level_shift(r[sel], prior_mean=prior_mean, prior_sd=tau, sigma2=sigma2,
                           cuts_level=math.log(float(np.sum(y[sel]) / np.sum(yb[sel]))))

    shift, post_sd, weight = level(np.ones(len(r), bool))
    n = int(len(r))
    cv = None
    if n >= 5:
        s = quality_scale(m["n_obs"].to_numpy(float), m["max_gap_days"].to_numpy(float))
        g = m["_group"].to_numpy()
        folds = _group_folds(g, n_splits, seed)
        oof = np.full(n, np.nan)
        for te in folds:
            tr = np.ones(n, bool)
            tr[te] = False
            oof[te] = yb[te] * math.exp(level(tr)[0])
        q, cv = _cross_conformal(y, oof, s, folds, seed=seed, method="lue",
                                 n_groups=int(len(pd.unique(g))), cut_error_sd=cut_error_sd)
    else:
        q = _prior_quantiles(float(yp.prior_sigma))
        d = _Z90 * post_sd
        q["q10"] = -math.hypot(q["q10"], d)
        q["q90"] = math.hypot(q["q90"], d)
        q["method"] = (f"prior: lognormal sigma={float(yp.prior_sigma):g} widened by the "
                       f"level's posterior sd {post_sd:.3f} ({n} crop cuts)")
    kind = "fitted_county" + ("+cuts" if n else "")
    cal = {c: dict(v) for c, v in lue.calibration.items()}
    cal.setdefault(crop, {})[region] = {
        "factor": math.exp(shift), "kind": kind, "n": n,
        "county_mean_t_ha": float(county_mean_t_ha), "prior_sd": tau,
        "posterior_sd": post_sd, "weight": weight,
        "source": f"fitted: county mean {float(county_mean_t_ha):g} t/ha over "
                  f"{int(ok.sum())} seasons area-weighted"
                  + (f", shrunk towards {n} crop cuts (weight {weight:.2f})" if n else "")}
    res = dict(lue.residuals)
    res[crop] = q
    model = LUEModel(overrides=lue.overrides, index=lue.index, fapar=lue.fapar, region=region,
                     calibration=cal, residuals=res, vigour=vigour,
                     vigour_reference=lue.vigour_reference)
    model.cv_ = cv
    logger.info("levelled %s yield model for %s: x%.3f (%s)", "value-only" if value_only
                else "LUE", crop, math.exp(shift), cal[crop][region]["source"])
    return model
