"""Regularised linear learners from scikit-learn, chosen by grouped cross-validation.

Entry points: :func:`select_model` (what the empirical yield model uses) - a grid of
standardised ridge and elastic-net regressions (:data:`CANDIDATES`), each fitted to log yield
or to yield itself (:data:`TARGETS`) on each of a few named feature sets, scored by the squared
error in t/ha under :class:`sklearn.model_selection.GroupKFold` (groups such as weather year
or region, so the choice is made on groups the learner did not see); :func:`select_learner` -
the older choice among the learners alone on a given (log) target. The winner is refitted on
all rows and returned as plain numbers (``coef`` on standardised columns, ``intercept``,
column ``mean`` and ``scale``) that a model stores in JSON - never pickle.

Why both targets: a regression of log yield makes yield convex in the canopy features and
inflates errors at high yields; where yield rises about linearly with the canopy (maize on
crop-model seasons) the linear target predicts better, elsewhere the log one may. Grouped CV
decides per crop and data set (``docs/validation_yield.md``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CANDIDATES", "TARGETS", "select_learner", "select_model", "fit_learner",
           "predict_linear", "predict_yield"]

#: Candidate learners: (name, scikit-learn estimator class name, hyper-parameter grid).
CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (
    *(("ridge", {"alpha": a}) for a in (0.01, 0.1, 1.0, 10.0, 100.0)),
    *(("elasticnet", {"alpha": a, "l1_ratio": 0.5}) for a in (1e-4, 1e-3, 1e-2)),
)

#: Regression targets: ``"log"`` (log yield; prediction ``exp``) or ``"linear"`` (yield in
#: t/ha; prediction floored at :data:`FLOOR_FRACTION` × the smallest training yield).
TARGETS = ("log", "linear")
#: A linear-target prediction below this fraction of the smallest training yield is raised
#: to it (and flagged ``EXTRAPOLATED`` by the model): the season is outside the training data.
FLOOR_FRACTION = 0.5


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


def predict_yield(fit: dict[str, Any], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Yield (t/ha) of a :func:`select_model` fit, from all feature columns ``X``.

    Returns ``(yield, floored)``; ``floored`` marks linear-target predictions raised to the
    fit's ``floor`` (t/ha).
    """
    cols = fit.get("columns")
    lin = predict_linear(fit, X if cols is None else X[:, cols])
    if fit.get("target", "log") == "log":
        return np.exp(lin), np.zeros(len(lin), bool)
    floor = float(fit.get("floor", 0.0))
    with np.errstate(invalid="ignore"):
        low = lin < floor
    return np.where(low, floor, lin), low


def _target(y: np.ndarray, target: str) -> tuple[np.ndarray, float]:
    """Regression target and the factor that turns its predictions back into its units:
    log yield (factor 1), or yield divided by its standard deviation so that the elastic
    net's penalty means the same on both targets."""
    if target == "log":
        return np.log(y), 1.0
    sd = float(np.std(y))
    sd = sd if sd > 1e-9 else 1.0
    return y / sd, sd


def _oof_predictions(X: np.ndarray, targets: dict[str, np.ndarray], fold: np.ndarray, k: int,
                     candidates) -> dict[tuple, np.ndarray]:
    """Out-of-fold predictions of every (target, learner) candidate, as
    ``cross_val_predict(_estimator(name, params), X, t, cv=folds)`` would give them, but with
    one SVD of each training fold serving every ridge penalty and target, and one warm-started
    elastic net per target walking its penalties from strong to weak (the same standardised
    models, far fewer factorisations)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import ElasticNet

    out = {(t, n, tuple(sorted(p.items()))): np.empty(len(fold))
           for t in targets for n, p in candidates}
    for f in range(k):
        tr, te = fold != f, fold == f
        mean = X[tr].mean(axis=0)
        sd = X[tr].std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        Ztr, Zte = (X[tr] - mean) / sd, (X[te] - mean) / sd
        U, sv, Vt = np.linalg.svd(Ztr, full_matrices=False)
        for t, v in targets.items():
            vt = v[tr]
            uty = U.T @ (vt - vt.mean())
            for n, p in candidates:
                if n != "ridge":
                    continue
                beta = Vt.T @ (sv / (sv ** 2 + float(p["alpha"])) * uty)
                out[(t, n, tuple(sorted(p.items())))][te] = vt.mean() + Zte @ beta
            enets = sorted((p for n, p in candidates if n == "elasticnet"),
                           key=lambda p: (float(p["l1_ratio"]), -float(p["alpha"])))
            est = None
            for p in enets:
                if est is None or est.l1_ratio != float(p["l1_ratio"]):
                    # Gram matrix precomputed: rows >> columns here, ~6x faster
                    est = ElasticNet(l1_ratio=float(p["l1_ratio"]), max_iter=5000, tol=1e-4,
                                     warm_start=True, precompute=True)
                est.set_params(alpha=float(p["alpha"]))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    est.fit(Ztr, vt)
                out[(t, "elasticnet", tuple(sorted(p.items())))][te] = est.predict(Zte)
    return out


def _best_with_reference(tried: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    """Lowest-MSE candidate of the reference column set, replaced by another set's best only
    when that is better by more than one standard error of the paired per-fold MSE
    difference."""
    ref = min((r for r in tried if r["column_set"] == reference), key=lambda r: r["mse"])
    best = ref
    for name in dict.fromkeys(r["column_set"] for r in tried):
        if name == reference:
            continue
        alt = min((r for r in tried if r["column_set"] == name), key=lambda r: r["mse"])
        d = np.asarray(ref["fold_mse"]) - np.asarray(alt["fold_mse"])
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        if float(np.mean(d)) > se and alt["mse"] < best["mse"]:
            best = alt
    return best


def select_model(X: np.ndarray, y: np.ndarray, groups, *, n_splits: int = 5,
                 column_sets: dict[str, Any] | None = None,
                 targets: tuple[str, ...] = TARGETS,
                 candidates=CANDIDATES) -> dict[str, Any]:
    """Choose feature set, target and learner by grouped CV on yield; refit the winner.

    Parameters
    ----------
    X : ndarray
        Features (rows × columns, finite).
    y : ndarray
        Yield (t/ha, > 0) - not its log.
    groups : array-like
        Group label per row; folds never split a group (``min(n_splits, n_groups)`` folds).
    n_splits : int
        Folds (with fewer than 2 groups: the first learner on the first column set, log
        target).
    column_sets : dict of str to sequence of int, optional
        Named column subsets to try (default ``{"all": every column}``). The first is the
        reference: another set replaces it only when its best candidate beats the
        reference's best by more than one standard error of their paired per-fold MSE
        difference (a near-tie keeps the reference; with few training seasons the CV error
        of the two sets is noisy and a chance win does not transfer).
    targets : tuple of str
        Subset of :data:`TARGETS`.
    candidates : sequence of (name, params)
        Learners (default :data:`CANDIDATES`).

    Returns
    -------
    dict
        :func:`fit_learner` output on the chosen columns (coefficients in the target's units:
        log t/ha or t/ha) plus ``"columns"`` (indices into ``X``), ``"column_set"``,
        ``"target"``, ``"floor"`` (t/ha), ``"cv_mse"`` (records of every tried (set, target,
        learner) with its grouped-CV MSE in (t/ha)²) and ``"n_splits"``. Predict with
        :func:`predict_yield`.
    """
    from sklearn.model_selection import GroupKFold

    y = np.asarray(y, float)
    if not (np.all(np.isfinite(y)) and np.all(y > 0)):
        raise ValueError("select_model needs finite positive yields (t/ha)")
    sets = {k: np.asarray(v, int) for k, v in
            (column_sets or {"all": np.arange(X.shape[1])}).items() if len(v)}
    floor = FLOOR_FRACTION * float(np.min(y))
    g = np.asarray(groups)
    k = min(int(n_splits), len(np.unique(g)))
    tried: list[dict[str, Any]] = []
    if k < 2:
        best = {"column_set": next(iter(sets)), "target": "log", "name": candidates[0][0],
                "params": dict(candidates[0][1])}
    else:
        cv = GroupKFold(n_splits=k)
        fold = np.empty(len(y), int)
        for i, (_, te) in enumerate(cv.split(X, y, g)):
            fold[te] = i
        tgt = {target: _target(y, target) for target in targets}
        for set_name, cols in sets.items():
            oof = _oof_predictions(X[:, cols], {t: v[0] for t, v in tgt.items()}, fold, k,
                                   candidates)
            for (target, name, params), p in oof.items():
                params = dict(params)
                back = tgt[target][1]
                yh = np.exp(p) if target == "log" else np.maximum(p * back, floor)
                se = (yh - y) ** 2
                tried.append({"column_set": set_name, "target": target, "name": name,
                              "params": dict(params), "mse": float(np.mean(se)),
                              "fold_mse": [float(np.mean(se[fold == f])) for f in range(k)]})
        best = _best_with_reference(tried, next(iter(sets)))
    cols = sets[best["column_set"]]
    t, back = _target(y, best["target"])
    out = fit_learner(X[:, cols], t, best["name"], best["params"])
    out["coef"] = out["coef"] * back
    out["intercept"] = out["intercept"] * back
    out.update(columns=cols.tolist(), column_set=best["column_set"], target=best["target"],
               floor=floor, cv_mse=tried or None, n_splits=k if k >= 2 else 0)
    return out
