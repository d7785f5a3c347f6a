"""Empirical yield model (:class:`EmpiricalModel`): a regularised regression of log yield
on season features, fitted to observed yields by :func:`cropyield.yieldmodel.fit_yield_model`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .base import YieldModel, _jsonable, _registry_from
from .features import season_features
from .intervals import _prior_quantiles

__all__ = ["DEFAULT_FEATURES", "EmpiricalModel", "ridge_fit"]


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


