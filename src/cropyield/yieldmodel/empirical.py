"""Empirical yield model (:class:`EmpiricalModel`): a regularised regression of yield or log
yield on season features, fitted to observed yields by
:func:`cropyield.yieldmodel.fit_yield_model`.

Features: phenological-window features of every index present
(:func:`cropyield.yieldmodel.windows.window_features`: green-up, peak, three grain-fill
windows, senescence slope, integrals, timing) and ``log_apar`` / ``log_apar_post`` (log
Σ fAPAR × PAR over the season and after the peak, :func:`season_features`). The target (yield
or log yield), the feature set (all or the compact subset) and the learner (standardised ridge
or elastic net) are chosen by grouped CV (:func:`cropyield.yieldmodel.learners.select_model`);
its coefficients are stored in JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ModelError
from .base import YieldModel, _jsonable, _registry_from
from .features import season_features
from .windows import WINDOW_SUFFIXES, window_features
from .intervals import _prior_quantiles

__all__ = ["DEFAULT_FEATURES", "SEASON_FEATURES", "EmpiricalModel", "ridge_fit",
           "model_features"]


#: Features of the pre-window empirical model (schema 1); still used for models that name them.
DEFAULT_FEATURES = ("log_apar", "peak", "small_integral", "large_integral", "length_days",
                    "pos_days")
#: Season-level features added to the window features by default.
SEASON_FEATURES = ("log_apar", "log_apar_post")
#: Field covariate (1/m): perimeter / area of the field, from ``perimeter_m`` and ``area_ha``
#: columns of the seasons table when both are there (:func:`model_features`); offered to the
#: empirical learner in every feature set (``fit_yield_model``).
EDGE_FEATURE = "perimeter_area_m"


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


def _uses_windows(names: Sequence[str]) -> bool:
    return any(n.rsplit("_", 1)[-1] in WINDOW_SUFFIXES or n in ("pos_doy", "green_days",
                                                                "sen_days") for n in names)


def model_features(series: pd.DataFrame, seasons, *, index: str = "ndvi", indices=None,
                   windows: bool = True, weather: pd.DataFrame | None = None,
                   weather_options: Mapping[str, Any] | None = None,
                   covariates: pd.DataFrame | None = None,
                   **kwargs) -> pd.DataFrame:
    """:func:`season_features` (``kwargs``: registry, crop, region, lat, radiation, fapar,
    climatology) joined with :func:`~cropyield.yieldmodel.windows.window_features` of
    ``indices`` (default: every index present) on ``field_id, season``, and with
    :func:`~cropyield.yieldmodel.weather.weather_features` of ``weather`` (daily weather per
    field; windows on each season's ``sos``/``pos``; ``weather_options``: ``fill_days``,
    ``hot_c``) when given, and with :data:`EDGE_FEATURE` (perimeter / area, 1/m) when
    ``seasons`` has ``perimeter_m`` (m) and ``area_ha`` (ha) columns."""
    feats = season_features(series, seasons, index=index, **kwargs)
    if windows:
        w = window_features(series, feats[["field_id", "season", "sos", "eos"]],
                            indices=indices)
        dup = [c for c in w.columns if c in feats.columns and c not in ("field_id", "season")]
        w = w.drop(columns=dup)
        feats = feats.merge(w.drop_duplicates(["field_id", "season"]),
                            on=["field_id", "season"], how="left")
    if weather is not None:
        from .weather import weather_features

        wf = weather_features(weather, feats[["field_id", "season", "sos", "pos"]],
                              **dict(weather_options or {}))
        feats = feats.merge(wf.drop_duplicates(["field_id", "season"]),
                            on=["field_id", "season"], how="left")
    if covariates is not None:
        from .weather import join_covariates

        feats = join_covariates(feats, covariates)
    s = pd.DataFrame(seasons)
    if {"perimeter_m", "area_ha"} <= set(s.columns) and "field_id" in s.columns:
        # the field's boundary per unit area (1/m): mixed edge pixels take a share of its
        # mean from the surroundings in proportion to it (cropmodel._field_sizes)
        keys = ["field_id", "season"] if "season" in s.columns else ["field_id"]
        pa = s[keys].assign(**{EDGE_FEATURE: s["perimeter_m"].to_numpy(float)
                               / (s["area_ha"].to_numpy(float) * 1e4)})
        feats = feats.drop(columns=[EDGE_FEATURE], errors="ignore").merge(
            pa.drop_duplicates(keys), on=keys, how="left")
    return feats


class EmpiricalModel(YieldModel):
    """Regularised linear regression of yield or log yield on season features for one crop.

    ``log ŷ = intercept + ((x − mean) / scale) · coef`` (``target="log"``) or
    ``ŷ = max(intercept + ((x − mean) / scale) · coef, floor_t_ha)`` (``target="linear"``);
    ``x`` are the named features
    (:func:`model_features`). Parameters are usually set by :func:`fit_yield_model`
    (``method="empirical"``); all of them are plain numbers stored in JSON.

    Parameters
    ----------
    crop : str
        Crop id the model predicts; seasons of other crops get ``NO_MODEL``.
    feature_names : sequence of str
        Feature columns in the order of ``coef``.
    coef, intercept, mean, scale
        Coefficients on standardised features, intercept (log t/ha or t/ha, as ``target``),
        column means and scales.
    target : {"log", "linear"}
        What the regression predicts (chosen by grouped CV in :func:`fit_yield_model`; files
        written before it existed are ``"log"``).
    floor_t_ha : float
        Linear target: the smallest P50 given (t/ha); a prediction raised to it is flagged
        ``EXTRAPOLATED``.
    alpha : float
        Penalty of the chosen learner (kept for the schema-1 layout).
    index : str
        Index used for fAPAR features (``log_apar``).
    indices : sequence of str, optional
        Index columns of the window features (None: the pre-window model of schema 1).
    learner : mapping, optional
        Learner record: ``name``, ``params``, grouped-CV MSE per candidate.
    region, residuals, overrides, training_range
        Default region; interval quantiles (normalised log residuals); crop-registry
        overrides; per-feature training range (features are clamped to it ± 25 % of its
        width; beyond, the season is flagged ``EXTRAPOLATED`` with a widened interval).
    weather : mapping, optional
        Options of the weather covariates (``fill_days``, ``hot_c``;
        :func:`cropyield.yieldmodel.weather.weather_features`) when ``feature_names`` has
        weather features (``wx_*``); such a model needs ``weather=`` in :meth:`predict`.
    pool : mapping, optional
        Options of the pooled group features (``indices``, ``suffixes``, ``min_seasons``;
        :mod:`cropyield.yieldmodel.pooled`) when ``feature_names`` has some (``pool_*``);
        such a model needs ``pool_by=`` in :meth:`predict` (model JSON schema 5).
    """

    kind = "empirical"

    def __init__(self, *, crop: str, feature_names: Sequence[str], coef: Sequence[float],
                 intercept: float, mean: Sequence[float], scale: Sequence[float],
                 alpha: float = 1.0, index: str = "ndvi", region: str = "north_china_plain",
                 residuals: Mapping[str, Any] | None = None, overrides=None,
                 training_range: Mapping[str, Sequence[float]] | None = None,
                 indices: Sequence[str] | None = None,
                 learner: Mapping[str, Any] | None = None, target: str = "log",
                 floor_t_ha: float = 0.0, weather: Mapping[str, Any] | None = None,
                 pool: Mapping[str, Any] | None = None):
        if target not in ("log", "linear"):
            raise ValueError(f"target must be 'log' or 'linear', got {target!r}")
        self.crop = crop
        self.target = target
        self.floor_t_ha = float(floor_t_ha)
        self.feature_names = list(feature_names)
        self.coef = np.asarray(coef, dtype=float)
        self.intercept = float(intercept)
        self.mean = np.asarray(mean, dtype=float)
        self.scale = np.asarray(scale, dtype=float)
        self.alpha = float(alpha)
        self.index = index
        self.indices = list(indices) if indices is not None else None
        self.learner = dict(learner) if learner else None
        self.region = region
        self.residuals = dict(residuals) if residuals else None
        self.registry, self.overrides = _registry_from(overrides)
        self.training_range = {k: list(v) for k, v in (training_range or {}).items()}
        from .weather import is_covariate_feature, is_weather_feature

        self.weather_features = [n for n in self.feature_names if is_weather_feature(n)]
        #: weather-level covariates given per season (``covariates=``), not computed here
        self.covariate_features = [n for n in self.weather_features if is_covariate_feature(n)]
        self.weather = (dict(weather) if weather else {"fill_days": 35, "hot_c": 30.0}) \
            if len(self.covariate_features) < len(self.weather_features) else None
        from .pooled import MIN_POOL_SEASONS, is_pooled_feature, pool_options

        self.pooled_features = [n for n in self.feature_names if is_pooled_feature(n)]
        self.pool = None
        if self.pooled_features:
            self.pool = dict(pool) if pool else pool_options(self.indices or [],
                                                             MIN_POOL_SEASONS)
        self.cv_ = None

    def _params(self) -> dict[str, Any]:
        d = {"crop": self.crop, "feature_names": self.feature_names,
             "coef": self.coef, "intercept": self.intercept, "mean": self.mean,
             "scale": self.scale, "alpha": self.alpha, "index": self.index,
             "region": self.region, "residuals": self.residuals,
             "overrides": self.overrides, "training_range": self.training_range}
        if self.indices is not None:
            d["indices"] = self.indices
        if self.learner is not None:
            d["learner"] = self.learner
        if self.target != "log":
            d["target"] = self.target
            d["floor_t_ha"] = self.floor_t_ha
        if self.weather is not None:
            d["weather"] = self.weather
        if self.pool is not None:
            d["pool"] = self.pool
        return _jsonable(d)

    #: Factor on the log-residual P10/P90 quantiles of ``EXTRAPOLATED`` seasons.
    extrapolation_widening: float = 1.5

    def _yield_from_design(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(P50 t/ha, floored)`` from the design matrix (floored: raised to the floor)."""
        from .learners import predict_yield

        return predict_yield({"intercept": self.intercept, "coef": self.coef,
                              "mean": self.mean, "scale": self.scale, "target": self.target,
                              "floor": self.floor_t_ha}, X)

    def _predict_log(self, feats: pd.DataFrame) -> np.ndarray:
        return np.log(self._yield_from_design(_design(feats, self.feature_names))[0])

    def level_scaled(self, shift_log: float) -> dict[str, Any]:
        """Parameters that multiply every prediction by ``exp(shift_log)``: the intercept
        moves by the shift (log target), or intercept, coefficients and floor scale by the
        factor (linear target)."""
        if self.target == "log":
            return {"intercept": self.intercept + shift_log}
        f = math.exp(shift_log)
        return {"intercept": self.intercept * f, "coef": self.coef * f,
                "floor_t_ha": self.floor_t_ha * f}

    def features(self, series: pd.DataFrame, seasons, *, lat=None, region: str | None = None,
                 radiation=None, crop: str | None = None, climatology=None,
                 weather: pd.DataFrame | None = None, pool_by=None,
                 covariates: pd.DataFrame | None = None) -> pd.DataFrame:
        """Feature table of the model (:func:`model_features`) for ``seasons``.

        ``weather`` (daily weather per field, :func:`~cropyield.yieldmodel.weather_features`)
        is required when the model uses weather covariates (:class:`ModelError` otherwise)
        and ignored when it does not; likewise ``seasons`` columns ``perimeter_m`` and
        ``area_ha`` when it uses :data:`EDGE_FEATURE`; so is ``pool_by`` (group label per
        ``field_id``, or a ``seasons`` column; :mod:`cropyield.yieldmodel.pooled`) for pooled
        group features.
        """
        if self.pooled_features and pool_by is None:
            raise ModelError(
                f"this {self.crop} model uses pooled group features ({len(self.pooled_features)}"
                ", e.g. " + ", ".join(self.pooled_features[:2]) + "); pass pool_by= (a mapping "
                "field_id -> county-and-season label, or a seasons column name) and predict "
                "the group's fields together")
        if self.covariate_features and covariates is None:
            raise ModelError(
                f"this {self.crop} model uses season covariates ("
                + ", ".join(self.covariate_features) + "); pass covariates= (field_id, season "
                "and those columns, e.g. cropyield.cropmodel.reference_yield output renamed to "
                "wx_cm_yield_t_ha)")
        if self.weather is not None and weather is None:
            raise ModelError(
                f"this {self.crop} model uses weather covariates ({len(self.weather_features)}"
                " features, e.g. " + ", ".join(self.weather_features[:3]) + "); pass weather= "
                "(daily field_id, time, tmin_c, tmax_c, radiation_mj_m2, rain_mm per field, "
                "e.g. SimulatedSeasons.weather or cropyield.synthetic.field_weather)")
        if EDGE_FEATURE in self.feature_names and not (
                {"perimeter_m", "area_ha"} <= set(pd.DataFrame(seasons).columns)):
            raise ModelError(
                f"this {self.crop} model uses the field's perimeter / area ({EDGE_FEATURE}, "
                "the edge-pixel covariate); pass seasons with 'perimeter_m' (m) and "
                "'area_ha' (ha) columns from the field polygons in a projected CRS "
                "(estimate_yield adds them from its fields)")
        feats = model_features(series, seasons, index=self.index, indices=self.indices,
                               windows=_uses_windows(self.feature_names),
                               registry=self.registry, crop=crop or self.crop,
                               region=region or self.region, lat=lat, radiation=radiation,
                               climatology=climatology,
                               weather=weather if self.weather is not None else None,
                               weather_options=self.weather,
                               covariates=covariates if self.covariate_features else None)
        if self.pooled_features:
            from .pooled import add_pooled_features, pool_labels

            tab = feats
            if isinstance(pool_by, str) and pool_by not in feats.columns:
                sea = pd.DataFrame(seasons)
                if "season" not in sea.columns:
                    sea = sea.assign(season=sea.groupby("field_id").cumcount() + 1)
                tab = feats[["field_id", "season"]].merge(
                    sea[[c for c in ("field_id", "season", pool_by) if c in sea.columns]],
                    on=["field_id", "season"], how="left")
            pool = self.pool or {}
            feats = add_pooled_features(feats, pool_labels(pool_by, tab),
                                        indices=pool["indices"], crop=self.crop,
                                        min_seasons=int(pool.get("min_seasons", 5)))
        return feats

    def _calibration_record(self, q: Mapping[str, Any]) -> dict[str, Any]:
        return {"kind": self.kind, "crop": self.crop, "features": len(self.feature_names),
                "indices": self.indices, "learner": (self.learner or {}).get("name", "ridge"),
                "n_train": (self.residuals or {}).get("n", 0),
                "interval": q.get("method", "conformal")}

    def predict(self, series: pd.DataFrame, seasons, *, lat=None, region: str | None = None,
                radiation=None, crop: str | None = None, climatology=None,
                weather: pd.DataFrame | None = None, pool_by=None,
                covariates: pd.DataFrame | None = None) -> pd.DataFrame:
        """Yield P10/P50/P90 per (field_id, season); seasons of another crop get ``NO_MODEL``.

        Features are clamped to their training range widened by 25 % of its width on each
        side before the regression is applied, so a season unlike every training season
        cannot blow the log-linear prediction up. Seasons with a feature beyond that are
        flagged ``EXTRAPOLATED``: they keep the clamped (bounded) number, and their P10-P90
        interval is widened by :attr:`extrapolation_widening` (a factor on the log-residual
        quantiles).

        A model with weather covariates needs ``weather`` (daily weather per field, see
        :func:`~cropyield.yieldmodel.weather_features`; :class:`ModelError` without it);
        seasons whose weather is missing get NaN and ``NO_WEATHER``. A model with pooled
        group features needs ``pool_by`` (see :meth:`features`); seasons whose group has
        too few seasons get NaN and ``FEW_POOLED``. A model with season covariates
        (``fit_yield_model(..., covariates=)``) needs ``covariates``; seasons without them
        get NaN and ``NO_WEATHER``.
        """
        feats = self.features(series, seasons, lat=lat, region=region, radiation=radiation,
                              crop=crop, climatology=climatology, weather=weather,
                              pool_by=pool_by, covariates=covariates)
        yp = self.registry[self.crop].yield_params if self.crop in self.registry else None
        X = _design(feats, self.feature_names)
        n = len(feats)
        q = self.residuals or _prior_quantiles(yp.prior_sigma if yp else 0.3)
        lo_hi = np.array([self.training_range.get(k, (-math.inf, math.inf))
                          for k in self.feature_names], dtype=float).reshape(-1, 2)
        width = lo_hi[:, 1] - lo_hi[:, 0]
        pad = np.where(np.isfinite(width), 0.25 * width, 0.0)
        with np.errstate(invalid="ignore"):
            outside = np.isfinite(X) & ((X < lo_hi[:, 0] - pad) | (X > lo_hi[:, 1] + pad))
        p50, floored = self._yield_from_design(np.clip(X, lo_hi[:, 0] - pad, lo_hi[:, 1] + pad))
        outside = outside | floored[:, None]
        wq = dict(q)
        for k in ("q10", "q90"):
            if k in wq:
                wq[k] = float(wq[k]) * self.extrapolation_widening
        rec = json.dumps(_jsonable(self._calibration_record(q)), ensure_ascii=False)
        wx_col = np.array([n in self.weather_features for n in self.feature_names], bool)
        pl_col = np.array([n in self.pooled_features for n in self.feature_names], bool)
        quant, basis, calib, extra, sanity = [], [], [], [], []
        for i in range(n):
            fl: list[str] = []
            if feats["crop"].iloc[i] != self.crop:
                fl.append("NO_MODEL")
            if not np.all(np.isfinite(X[i])):
                bad = ~np.isfinite(X[i])
                if (bad & ~wx_col & ~pl_col).any():
                    fl.append("NO_DATA")
                else:
                    if (bad & wx_col).any():
                        fl.append("NO_WEATHER")
                    if (bad & pl_col).any():
                        fl.append("FEW_POOLED")
            if outside[i].any():
                fl.append("EXTRAPOLATED")
            extra.append(fl)
            quant.append(wq if outside[i].any() else q)
            basis.append(yp.yield_basis if yp else "")
            sanity.append(tuple(yp.sanity_t_ha) if yp else (0.0, math.inf))
            calib.append(rec)
        return self._finish(feats, p50, quant, basis, calib, extra, sanity)
