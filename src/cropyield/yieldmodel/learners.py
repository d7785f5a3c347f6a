"""Regularised linear learners from scikit-learn, chosen by grouped cross-validation.

Entry point: :func:`select_learner` - a grid of standardised ridge and elastic-net regressions
(:data:`CANDIDATES`) scored by :class:`sklearn.model_selection.GroupKFold` (groups such as
weather year or region, so the choice is made on groups the learner did not see); the winner
is refitted on all rows and returned as plain numbers (``coef`` on standardised columns,
``intercept``, column ``mean`` and ``scale``) that a model stores in JSON - never pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CANDIDATES", "select_learner", "fit_learner"]

#: Candidate learners: (name, scikit-learn estimator class name, hyper-parameter grid).
CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (
    *(("ridge", {"alpha": a}) for a in (0.01, 0.1, 1.0, 10.0, 100.0)),
    *(("elasticnet", {"alpha": a, "l1_ratio": 0.5}) for a in (1e-4, 1e-3, 1e-2)),
)


def _estimator(name: str, params: dict[str, Any]):
    from sklearn.linear_model import ElasticNet, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "ridge":
        reg = Ridge(alpha=float(params["alpha"]))
    elif name == "elasticnet":
        reg = ElasticNet(alpha=float(params["alpha"]), l1_ratio=float(params["l1_ratio"]),
                         max_iter=5000, tol=1e-4)
    else:
        raise ValueError(f"unknown learner {name!r}")
    return make_pipeline(StandardScaler(), reg)


def fit_learner(X: np.ndarray, y: np.ndarray, name: str = "ridge",
                params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit one learner on all rows; returns ``{"name", "params", "coef", "intercept", "mean",
    "scale"}`` (coefficients on standardised columns; prediction ``intercept + ((X − mean) /
    scale) @ coef``)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    params = dict(params or {"alpha": 1.0})
    est = _estimator(name, params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    sc, reg = est[0], est[-1]
    scale = np.where(sc.scale_ > 0, sc.scale_, 1.0)
    return {"name": name, "params": params, "coef": np.asarray(reg.coef_, float),
            "intercept": float(reg.intercept_), "mean": np.asarray(sc.mean_, float),
            "scale": np.asarray(scale, float)}


def select_learner(X: np.ndarray, y: np.ndarray, groups, *, n_splits: int = 5,
                   candidates=CANDIDATES) -> dict[str, Any]:
    """Choose the candidate with the lowest grouped-CV mean squared error and refit it.

    Parameters
    ----------
    X, y : ndarray
        Features (rows × columns, finite) and target (e.g. log yield).
    groups : array-like
        Group label per row; folds never split a group
        (:class:`sklearn.model_selection.GroupKFold`, ``min(n_splits, n_groups)`` folds).
    n_splits : int
        Folds (at least 2 groups are needed; otherwise the first candidate is used).
    candidates : sequence of (name, params)
        Default :data:`CANDIDATES`.

    Returns
    -------
    dict
        :func:`fit_learner` output plus ``"cv_mse"`` (grouped-CV MSE per candidate, in the
        order of ``candidates``) and ``"n_splits"``.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GroupKFold, cross_val_predict

    g = np.asarray(groups)
    k = min(int(n_splits), len(np.unique(g)))
    if k < 2:
        out = fit_learner(X, y, *candidates[0])
        out.update(cv_mse=None, n_splits=0)
        return out
    cv = GroupKFold(n_splits=k)
    mse = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, params in candidates:
            p = cross_val_predict(_estimator(name, params), X, y, groups=g, cv=cv)
            mse.append(float(np.mean((p - y) ** 2)))
    best = int(np.argmin(mse))
    out = fit_learner(X, y, *candidates[best])
    out.update(cv_mse=mse, n_splits=k)
    return out


def predict_linear(fit: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """Prediction of a stored linear fit (:func:`fit_learner` output)."""
    return fit["intercept"] + ((X - np.asarray(fit["mean"])) / np.asarray(fit["scale"])) \
        @ np.asarray(fit["coef"])
