"""Trained crop classification: cloud-, cadence- and year-robust features and a LightGBM learner.

:class:`CropClassifier` learns crop classes from labelled parcels. Its input is a daily
series per field (:func:`cropyield.smooth_series` output, whatever the acquisition cadence:
5-day Sentinel-2 revisits and monthly composites both give a daily smoothed curve), so the
features do not depend on which days were clear.

Features per field, inside one season-year window (365 days from the ``year_start``
anniversary that covers most of the field's series):

* every index column of the series by default (NDVI, EVI2, GCVI, NDRE, NDMI …);
* the mean of each index in ``bin_days`` bins, and the mean over observed days only
  (``gap_days`` ≤ ``bin_days``/2; days far from any clear observation are left out, so
  interpolation across a long cloudy spell is not read as a crop signal);
* robust summaries per index: minimum, 10/50/90 % quantiles, maximum, mean, standard
  deviation and the day of the maximum;
* harmonic coefficients per index (mean and ``n_harmonics`` annual cosine/sine pairs fitted
  by least squares, with their amplitudes), as in harmonic crop mapping (Jakubauskas et
  al. 2002; Wang et al. 2019);
* phenology metrics of the first index (:func:`cropyield.phenology`: number of seasons,
  SOS/peak/EOS day offsets, peak, amplitude, length, integral and rates of the two largest
  seasons).

Time-shift augmentation (``augment_days``) adds copies of every training field with the
series shifted by a few days, so a model fitted on one year tolerates the earlier or later
sowing of the next. Level augmentation (``augment_gain``, ``augment_offset``) rescales
the index values of those copies by a random gain and offset per field, the same for every
index (domain randomisation of levels: another region, sensor or year is greener or browner,
and absolute levels were measured to be what transfers worst across regions), so the learner
cannot lean on absolute levels alone; the features themselves do not change. The learner is
LightGBM gradient boosting (Ke et al. 2017), chosen over
scikit-learn's HistGradientBoosting by measurement (docs/validation_crops.md) and because
its model has a plain-text dump. Probabilities are calibrated by temperature scaling
(Guo et al. 2017) fitted on out-of-fold scores of the training fields.

Two opt-in transfer modes for a whole region the model was not trained on
(``predict_proba(series, align=True, adapt_priors=True)``): *region alignment* shifts every
feature so that its median over the new region's fields equals its median over the
training fields (the first-moment part of CORAL, Sun, Feng & Saenko 2016, AAAI), and *prior
adaptation* re-estimates the class mix of the new fields by EM (Saerens, Latinne &
Decaestecker 2002, Neural Computation 14:21-41). Measured on real parcels in
docs/validation_crops.md; both are off by default because a prediction then depends on the
other fields passed.

Model files are JSON (format version 4; versions 2 and 3 still load): an envelope with the
feature specification, the classes, the calibration, the training class priors and feature
medians, the library versions and LightGBM's own text model. Nothing is unpickled or
evaluated on load; LightGBM parses its text model.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ._io import loads_json
from ._version import __version__
from .errors import ModelError

if TYPE_CHECKING:
    import lightgbm

__all__ = ["CropClassifier", "series_features", "default_indices", "brier_score",
           "reliability_curve", "adapt_class_priors"]

_PHEN_COLS = ("sos", "pos", "eos", "peak", "amplitude", "length_days", "small_integral",
              "greenup_rate", "senescence_rate")


def default_indices(series: pd.DataFrame) -> tuple[str, ...]:
    """Every vegetation/water index column of ``series`` (names registered in ``INDICES``)."""
    from .indices import INDICES

    known = {k.lower() for k in INDICES}
    return tuple(c for c in series.columns if isinstance(c, str) and c.lower() in known)


def _start_doy(year_start: str) -> tuple[int, int]:
    try:
        ts = pd.Timestamp(f"2001-{year_start}")
    except ValueError as exc:
        raise ModelError(f"year_start must be 'MM-DD', got {year_start!r}") from exc
    return int(ts.month), int(ts.day)


def _naive_days(t) -> pd.Series:
    t = pd.to_datetime(t)
    if getattr(t.dt, "tz", None) is not None:
        t = t.dt.tz_convert("UTC").dt.tz_localize(None)
    return t.dt.floor("D")


def _window_starts(ids: np.ndarray, t: pd.Series, year_start: str) -> pd.Series:
    """Per field, the ``year_start`` anniversary whose 365-day window covers most days."""
    mm, dd = _start_doy(year_start)
    df = pd.DataFrame({"id": ids, "t": t.to_numpy()})
    grp = df.groupby("id", sort=False)["t"]
    lo, hi = grp.min(), grp.max()
    lo_v = lo.to_numpy().astype("datetime64[D]").astype(np.int64)
    hi_v = hi.to_numpy().astype("datetime64[D]").astype(np.int64)
    best = np.zeros(len(lo), dtype=np.int64)
    best_cov = np.full(len(lo), -1, dtype=np.int64)
    for y in range(int(lo.dt.year.min()) - 1, int(hi.dt.year.max()) + 1):
        a = np.datetime64(pd.Timestamp(year=y, month=mm, day=min(dd, 28) if mm == 2 else dd)
                          .date(), "D").astype(np.int64)
        cov = np.clip(np.minimum(hi_v, a + 365) - np.maximum(lo_v, a), 0, None)
        better = cov > best_cov
        best[better] = a
        best_cov[better] = cov[better]
    return pd.Series(best.astype("datetime64[D]").astype("datetime64[ns]"), index=lo.index)


def _row_quantiles(V: np.ndarray, qs) -> list[np.ndarray]:
    """NaN-ignoring quantiles (linear interpolation, as ``np.nanquantile``) of each row."""
    S = np.sort(V, axis=1)                       # NaN sort last
    n = np.isfinite(S).sum(axis=1)
    out = []
    rows = np.arange(len(V))
    for q in qs:
        pos = q * np.maximum(n - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        f = pos - lo
        v = S[rows, lo] * (1 - f) + S[rows, hi] * f
        v = np.where(f == 0, S[rows, lo], v)
        out.append(np.where(n > 0, v, np.nan))
    return out


def _harmonics(V: np.ndarray, n_harm: int) -> np.ndarray:
    """Least-squares harmonic coefficients of rows of ``V`` (fields × 365 days, NaN = none).

    Returns fields × (1 + 3 n_harm): mean, then (cos, sin, amplitude) per harmonic; NaN for
    rows with fewer than 2 (1 + 2 n_harm) values.
    """
    d = np.arange(V.shape[1], dtype=float)
    cols = [np.ones_like(d)]
    for k in range(1, n_harm + 1):
        w = 2 * np.pi * k * d / 365.0
        cols += [np.cos(w), np.sin(w)]
    A = np.stack(cols, axis=1)
    ok = np.isfinite(V)
    M = np.einsum("fd,dk,dl->fkl", ok.astype(float), A, A)      # normal equations per row
    b = np.where(ok, V, 0.0) @ A
    enough = ok.sum(axis=1) >= 2 * (1 + 2 * n_harm)
    out = np.full((V.shape[0], 1 + 3 * n_harm), np.nan)
    if enough.any():
        c = np.linalg.solve(M[enough], b[enough][:, :, None])[:, :, 0]
        out[enough, 0] = c[:, 0]
        for k in range(n_harm):
            a_, b_ = c[:, 1 + 2 * k], c[:, 2 + 2 * k]
            out[enough, 1 + 3 * k] = a_
            out[enough, 2 + 3 * k] = b_
            out[enough, 3 + 3 * k] = np.hypot(a_, b_)
    return out


def series_features(series: pd.DataFrame, *, indices: Sequence[str], bin_days: int = 15,
                    year_start: str = "01-01", n_harmonics: int = 3,
                    phenology_features: bool = True, shift_days: int = 0,
                    id_col: str = "field_id") -> pd.DataFrame:
    """Feature table (one row per field, indexed by field id) from a daily series.

    Parameters
    ----------
    series : DataFrame
        Daily series (``field_id, time, <indices>``; ``gap_days`` used when present).
    indices : sequence of str
        Index columns to use (index units).
    bin_days : int
        Width of the time bins, days.
    year_start : str
        ``"MM-DD"`` of the season-year start; each field uses the 365-day window from the
        anniversary that covers most of its series.
    n_harmonics : int
        Number of annual harmonics (0: none).
    phenology_features : bool
        Add phenology metrics of ``indices[0]``.
    shift_days : int
        Shift the series by this many days first (time-shift augmentation).

    Returns
    -------
    DataFrame
        Features (floats, NaN where a bin or metric has no data).
    """
    missing = [c for c in (id_col, "time", *indices) if c not in series.columns]
    if missing:
        raise ModelError(f"series lacks columns {missing} needed by this classifier; pass "
                         "smooth_series output with these index columns")
    if len(series) == 0:
        raise ModelError("series is empty")
    t = _naive_days(series["time"])
    if shift_days:
        t = t + pd.Timedelta(days=int(shift_days))
    ids = series[id_col].to_numpy()
    starts = _window_starts(ids, t, year_start)
    uid = starts.index
    fpos = pd.Index(uid).get_indexer(ids)
    off = ((t.to_numpy() - starts.to_numpy()[fpos]) / np.timedelta64(1, "D")).astype(np.int64)
    inw = (off >= 0) & (off < 365)
    nf = len(uid)
    gap = (series["gap_days"].to_numpy(dtype=float, na_value=np.nan)
           if "gap_days" in series.columns else np.zeros(len(series)))
    n_bins = int(math.ceil(365 / bin_days))
    b_of_day = np.minimum(np.arange(365) // bin_days, n_bins - 1)
    parts: dict[str, np.ndarray] = {}
    for ix in indices:
        V = np.full((nf, 365), np.nan)
        v = series[ix].to_numpy(dtype=float, na_value=np.nan)
        V[fpos[inw], off[inw]] = v[inw]
        Vo = np.full((nf, 365), np.nan)
        near = inw & (np.nan_to_num(gap, nan=1e9) <= bin_days / 2)
        Vo[fpos[near], off[near]] = v[near]
        with np.errstate(all="ignore"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                for k in range(n_bins):
                    sl = b_of_day == k
                    parts[f"{ix}_b{k:02d}"] = np.nanmean(V[:, sl], axis=1)
                for k in range(n_bins):
                    sl = b_of_day == k
                    parts[f"{ix}_o{k:02d}"] = np.nanmean(Vo[:, sl], axis=1)
                q = _row_quantiles(V, [0.0, 0.1, 0.5, 0.9, 1.0])
                for name, row in zip(("min", "q10", "q50", "q90", "max"), q):
                    parts[f"{ix}_{name}"] = row
                parts[f"{ix}_mean"] = np.nanmean(V, axis=1)
                parts[f"{ix}_std"] = np.nanstd(V, axis=1)
                has = np.isfinite(V).any(axis=1)
                parts[f"{ix}_argmax"] = np.where(
                    has, np.argmax(np.where(np.isfinite(V), V, -np.inf), axis=1), np.nan)
        if n_harmonics:
            H = _harmonics(V, int(n_harmonics))
            parts[f"{ix}_h0"] = H[:, 0]
            for k in range(int(n_harmonics)):
                for j, nm in enumerate(("c", "s", "a")):
                    parts[f"{ix}_h{k + 1}{nm}"] = H[:, 1 + 3 * k + j]
    feat = pd.DataFrame(parts, index=pd.Index(uid, name=id_col))
    if phenology_features:
        sub = series.loc[inw, [id_col, indices[0]]].copy()
        sub["time"] = t[inw].to_numpy()
        for c in ("gap_days", "support"):
            if c in series.columns:
                sub[c] = series.loc[inw, c].to_numpy()
        feat = feat.join(_phen_features(sub, indices[0], starts, id_col), how="left")
        feat["n_seasons"] = feat["n_seasons"].fillna(0.0)
    return feat


def _phen_features(sub: pd.DataFrame, index: str, starts: pd.Series,
                   id_col: str) -> pd.DataFrame:
    from .seasons import phenology

    cols = ["n_seasons"] + [f"s{s}_{c}" for s in range(2) for c in _PHEN_COLS]
    if len(sub) == 0:
        return pd.DataFrame(columns=cols, dtype=float)
    ph = phenology(sub, index=index, id_col=id_col)
    ph = ph[ph["pos"].notna() | ph["sos"].notna()]
    if len(ph) == 0:
        return pd.DataFrame(index=pd.Index(starts.index, name=id_col), columns=cols,
                            dtype=float)
    ph = ph.assign(_r=ph.groupby(id_col)["amplitude"].rank(ascending=False, method="first"))
    ph = ph[ph["_r"] <= 2].sort_values([id_col, "season"])
    ph = ph.assign(_s=ph.groupby(id_col).cumcount())
    a = starts.reindex(ph[id_col].to_numpy()).to_numpy()
    rec = {}
    for c in _PHEN_COLS:
        v = ph[c]
        if c in ("sos", "pos", "eos"):
            v = (pd.to_datetime(v).to_numpy() - a) / np.timedelta64(1, "D")
        rec[c] = np.asarray(v, dtype=float)
    long = pd.DataFrame(rec)
    long[id_col] = ph[id_col].to_numpy()
    long["_s"] = ph["_s"].to_numpy()
    w = long.pivot(index=id_col, columns="_s")
    w.columns = [f"s{int(s)}_{c}" for c, s in w.columns]
    w["n_seasons"] = ph.groupby(id_col).size().astype(float)
    return w.reindex(columns=cols)


def _nanmedian_cols(X: np.ndarray) -> np.ndarray:
    """Per-column median ignoring NaN (NaN for an all-NaN column), without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(X, axis=0) if len(X) else np.full(X.shape[1], np.nan)


#: default level augmentation (``CropClassifier(augment_gain=, augment_offset=)``): gains
#: log-uniform within exp(±0.2), offsets within ±0.2 of each index's spread — the median
#: between-region difference of same-class index levels of the WorldCereal parcels
#: (docs/validation_crops.md, ``scripts/transfer_experiments.py --level-sizes``)
LEVEL_GAIN = (math.exp(-0.2), math.exp(0.2))
LEVEL_OFFSET = 0.2

_LEVEL_STATS = ("min", "q10", "q50", "q90", "max", "mean", "h0")
_SCALE_STATS = ("std",)
_PHEN_LEVEL = ("peak",)
_PHEN_SCALE = ("amplitude", "small_integral", "greenup_rate", "senescence_rate")


def _level_feature_kinds(feature_names: Sequence[str], indices: Sequence[str]
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """How each feature of :func:`series_features` moves when an index is rescaled.

    Under ``v → g·v + o`` of one index's values (a gain ``g > 0`` and an offset ``o``, index
    units), its bin means, quantiles, mean, harmonic mean and (for the phenology index, the
    first of ``indices``) season peaks become ``g·x + o`` ("level" features); its standard
    deviation, harmonic cosine/sine/amplitude coefficients and season amplitudes,
    integrals above the base and green-up/senescence rates become ``g·x`` ("scale"
    features); days, lengths and season counts do not move.

    Returns
    -------
    dict
        index → (positions of its level features, positions of its scale features) in
        ``feature_names``.
    """
    pos = {c: i for i, c in enumerate(feature_names)}
    out = {}
    for j, ix in enumerate(indices):
        lvl, scl = [], []
        for c, i in pos.items():
            if not c.startswith(ix + "_"):
                continue
            rest = c[len(ix) + 1:]
            if (len(rest) == 3 and rest[0] in "bo" and rest[1:].isdigit()) \
                    or rest in _LEVEL_STATS:
                lvl.append(i)
            elif rest in _SCALE_STATS or (len(rest) == 3 and rest[0] == "h"
                                          and rest[1].isdigit() and rest[2] in "csa"):
                scl.append(i)
        if j == 0:
            for s in range(2):
                lvl += [pos[f"s{s}_{c}"] for c in _PHEN_LEVEL if f"s{s}_{c}" in pos]
                scl += [pos[f"s{s}_{c}"] for c in _PHEN_SCALE if f"s{s}_{c}" in pos]
        out[ix] = (np.array(sorted(lvl), dtype=np.int64), np.array(sorted(scl), dtype=np.int64))
    return out


def _rescale_levels(X: np.ndarray, kinds: Mapping[str, tuple[np.ndarray, np.ndarray]],
                   gain: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Feature rows as if each row's index values had been ``gain · v + offset``.

    Parameters
    ----------
    X : array (rows × features)
        Features in the order :func:`_level_feature_kinds` was given.
    kinds : mapping
        :func:`_level_feature_kinds` output (index → level and scale feature positions).
    gain, offset : arrays (rows × indices)
        Per row and index (in the order of ``kinds``), the gain (> 0) and the offset
        (index units).

    Returns
    -------
    array
        A rescaled copy of ``X`` (NaN stays NaN).
    """
    X = np.array(X, dtype=float, copy=True)
    for j, (lvl, scl) in enumerate(kinds.values()):
        g = gain[:, j:j + 1]
        if len(lvl):
            X[:, lvl] = X[:, lvl] * g + offset[:, j:j + 1]
        if len(scl):
            X[:, scl] = X[:, scl] * g
    return X


def _list_or_none(a) -> list | None:
    """JSON-safe list (NaN → None) of an array, or None."""
    if a is None:
        return None
    return [float(v) if math.isfinite(v) else None for v in np.asarray(a, dtype=float)]


def _array_or_none(v, n: int) -> np.ndarray | None:
    if v is None:
        return None
    a = np.array([np.nan if x is None else float(x) for x in v], dtype=float)
    if a.shape != (n,):
        raise ValueError(f"model shapes do not match: {a.shape[0]} values for {n} "
                         "classes or features")
    return a


def _softmax(Z: np.ndarray) -> np.ndarray:
    Z = Z - Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    return P / P.sum(axis=1, keepdims=True)


def _fit_temperature(Z: np.ndarray, yi: np.ndarray) -> float:
    """Temperature minimising the log loss of softmax(Z / T) (golden-section on log T)."""
    def nll(logt):
        P = _softmax(Z / math.exp(logt))
        return -float(np.mean(np.log(P[np.arange(len(yi)), yi] + 1e-12)))

    a, b = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(math.exp((a + b) / 2))


def brier_score(proba: np.ndarray, yi: np.ndarray) -> float:
    """Multi-class Brier score: mean over fields of Σ_k (p_k − 1[y = k])² (0 best, 2 worst)."""
    P = np.asarray(proba, dtype=float)
    Y = np.zeros_like(P)
    Y[np.arange(len(yi)), yi] = 1.0
    return float(np.mean(np.sum((P - Y) ** 2, axis=1)))


def adapt_class_priors(proba: np.ndarray, train_prior: np.ndarray, *, max_iter: int = 1000,
                       tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Re-estimate class priors on unlabelled fields and adjust their posteriors (EM).

    Saerens, Latinne & Decaestecker (2002, Neural Computation 14:21-41): with calibrated
    posteriors ``p(k | x)`` learnt under training priors ``π_s``, the priors ``π_t`` of a new
    set of fields maximise its likelihood at the fixed point of
    ``p_t(k | x) ∝ p(k | x) π_t,k / π_s,k`` and ``π_t = mean_x p_t(k | x)``. Valid under
    label shift only (the class mix changes, each class looks the same); when the classes
    themselves look different in the new set (another climate), the estimate can be far off.

    Parameters
    ----------
    proba : array (fields × classes)
        Calibrated posteriors under the training priors (rows sum to 1).
    train_prior : array (classes,)
        Class frequencies of the training fields (> 0, sum 1).
    max_iter, tol : EM iterations and convergence tolerance on the priors.

    Returns
    -------
    (adapted posteriors, estimated priors)
    """
    P = np.asarray(proba, dtype=float)
    ps = np.asarray(train_prior, dtype=float)
    if P.ndim != 2 or ps.shape != (P.shape[1],):
        raise ModelError(f"proba must be fields × classes and train_prior one value per class; "
                         f"got {P.shape} and {ps.shape}")
    if not (np.all(ps > 0) and np.isfinite(P).all() and len(P)):
        raise ModelError("adapt_class_priors needs finite posteriors for at least one field "
                         "and training priors > 0 for every class")
    ps = ps / ps.sum()
    pt = ps.copy()
    for _ in range(int(max_iter)):
        W = P * (pt / ps)
        W /= np.maximum(W.sum(axis=1, keepdims=True), 1e-300)
        new = W.mean(axis=0)
        done = np.abs(new - pt).max() < tol
        pt = new
        if done:
            break
    W = P * (pt / ps)
    W /= np.maximum(W.sum(axis=1, keepdims=True), 1e-300)
    return W, pt


def reliability_curve(confidence: np.ndarray, correct: np.ndarray,
                      n_bins: int = 10) -> pd.DataFrame:
    """Reliability of top-class probabilities: per confidence bin, mean confidence vs accuracy.

    Returns a DataFrame ``bin_lo, bin_hi, n, confidence, accuracy``; ``attrs["ece"]`` is the
    expected calibration error (count-weighted mean absolute difference of accuracy and confidence).
    """
    conf = np.asarray(confidence, dtype=float)
    ok = np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    k = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    rows = []
    for j in range(n_bins):
        m = k == j
        rows.append({"bin_lo": edges[j], "bin_hi": edges[j + 1], "n": int(m.sum()),
                     "confidence": float(conf[m].mean()) if m.any() else np.nan,
                     "accuracy": float(ok[m].mean()) if m.any() else np.nan})
    out = pd.DataFrame(rows)
    w = out["n"] / max(1, len(conf))
    out.attrs["ece"] = float(np.nansum(w * (out["accuracy"] - out["confidence"]).abs()))
    return out


class CropClassifier:
    """Crop classifier trained on labelled parcels (LightGBM, calibrated probabilities).

    Parameters
    ----------
    indices : sequence of str, optional
        Index columns of the daily series to use. Default (``None``): every index column
        the series passed to :meth:`fit` has (names in ``cropyield.INDICES``: ``ndvi``,
        ``evi2``, ``gcvi``, ``ndre``, ``ndmi`` …). Phenology metrics use the first one
        (``ndvi`` when present).
    bin_days : int
        Width of the time bins, days (1..183).
    year_start : str
        ``"MM-DD"`` where the season-year starts (e.g. ``"09-01"`` keeps winter crops of
        the northern hemisphere in one season-year).
    phenology_features : bool
        Add phenology metrics of the first index.
    l2 : float, optional
        L2 penalty on leaf values (LightGBM ``lambda_l2``); default 1.0.
    max_iter : int, optional
        Boosting rounds; default 150.
    learning_rate : float
        Boosting shrinkage.
    seed : int
        Seed of bagging, feature subsampling and calibration folds (fits are reproducible).
    id_col : str
        Field id column.
    n_harmonics : int
        Annual harmonics per index (see :func:`series_features`).
    augment_days : sequence of int
        Time shifts (days) of the extra training copies; ``()`` for none.
    augment_gain : (float, float)
        Level augmentation: the index values of every extra training copy (time-shifted
        or ``augment_level_copies``) are rescaled as ``g · v + o`` per field, the same for
        every index, with ``g`` log-uniform within this range. Default exp(±0.2) =
        (0.82, 1.22); ``(1, 1)`` with ``augment_offset=0`` turns level augmentation off.
    augment_offset : float
        Half-width of the uniform offset ``o``, in units of each index's spread (median
        over the training fields of its 90 % − 10 % quantile range; NDVI of arable
        parcels ≈ 0.3, so 0.2 ≈ ±0.06 NDVI). Default 0.2. Both defaults are the median
        between-region difference of same-class index levels of the WorldCereal parcels
        (docs/validation_crops.md).
    augment_level_copies : int
        Extra unshifted training copies with random levels (default 0: the time-shifted
        copies carry the level augmentation).
    calibrate : bool
        Fit a temperature on out-of-fold scores (``calibration_folds`` folds).
    num_leaves, min_child_samples, feature_fraction : LightGBM tree settings.
    class_weight : {"balanced", None}
        Reweight classes inversely to their frequency.
    num_threads : int
        LightGBM threads.

    Examples
    --------
    ``series``: daily series of labelled parcels (:func:`cropyield.smooth_series`);
    ``labels``: a Series field id -> crop id.

    >>> import cropyield as cy
    >>> from cropyield import CropClassifier
    >>> clf = CropClassifier(year_start="09-01").fit(series, labels)  # doctest: +SKIP
    >>> clf.predict_proba(new_series).round(2).head()  # doctest: +SKIP
    >>> # a whole other region: align its feature medians on the training ones
    >>> clf.predict(other_region_series, align=True)  # doctest: +SKIP
    >>> clf.save("crop_classifier.json")   # JSON with the LightGBM text model  # doctest: +SKIP
    >>> clf = CropClassifier.load("crop_classifier.json")  # doctest: +SKIP
    >>> crops = cy.identify_crops(series, region="north_china_plain",
    ...                           classifier=clf)  # doctest: +SKIP
    """

    FORMAT = "cropyield.CropClassifier"
    VERSION = 4
    LEARNER = "lightgbm"
    #: fewest fields with features that ``align=True`` accepts (a region's median needs many)
    MIN_ALIGN_FIELDS = 20

    def __init__(self, indices: Sequence[str] | None = None, *, bin_days: int = 15,
                 year_start: str = "01-01", phenology_features: bool = True,
                 l2: float | None = None, max_iter: int | None = None,
                 learning_rate: float = 0.1, seed: int = 0, id_col: str = "field_id",
                 n_harmonics: int = 3, augment_days: Sequence[int] = (-12, 12),
                 calibrate: bool = True, calibration_folds: int = 3, num_leaves: int = 15,
                 min_child_samples: int = 5, feature_fraction: float = 0.5,
                 class_weight: str | None = None, num_threads: int = 1,
                 augment_gain: Sequence[float] = LEVEL_GAIN,
                 augment_offset: float = LEVEL_OFFSET, augment_level_copies: int = 0):
        if isinstance(indices, str):
            indices = (indices,)
        if indices is not None and not len(indices):
            raise ModelError("indices must name at least one index column (or None for all)")
        if not 1 <= int(bin_days) <= 183:
            raise ModelError(f"bin_days must be within 1..183, got {bin_days}")
        _start_doy(year_start)
        gain = tuple(float(v) for v in np.atleast_1d(augment_gain))
        if len(gain) == 1:
            gain = (gain[0], gain[0])
        if len(gain) != 2 or not (0 < gain[0] <= gain[1] < np.inf):
            raise ModelError(f"augment_gain must be (low, high) with 0 < low <= high, got "
                             f"{augment_gain!r}")
        if not (0 <= float(augment_offset) < np.inf):
            raise ModelError(f"augment_offset must be >= 0, got {augment_offset!r}")
        if int(augment_level_copies) < 0:
            raise ModelError(f"augment_level_copies must be >= 0, got {augment_level_copies!r}")
        if class_weight not in (None, "balanced"):
            raise ModelError(f"class_weight must be None or 'balanced', got {class_weight!r}")
        self.indices = tuple(indices) if indices is not None else None
        self.bin_days = int(bin_days)
        self.year_start = year_start
        self.phenology_features = bool(phenology_features)
        self.l2 = 1.0 if l2 is None else float(l2)
        self.max_iter = 150 if max_iter is None else int(max_iter)
        self.learning_rate = float(learning_rate)
        self.seed = int(seed)
        self.id_col = id_col
        self.n_harmonics = int(n_harmonics)
        self.augment_days = tuple(int(s) for s in augment_days)
        self.calibrate = bool(calibrate)
        self.calibration_folds = int(calibration_folds)
        self.num_leaves = int(num_leaves)
        self.min_child_samples = int(min_child_samples)
        self.feature_fraction = float(feature_fraction)
        self.class_weight = class_weight
        self.num_threads = int(num_threads)
        self.augment_gain = gain
        self.augment_offset = float(augment_offset)
        self.augment_level_copies = int(augment_level_copies)
        # experiments (scripts/transfer_experiments.py): independent draws per index
        self._level_per_index = False
        self.classes_: list[str] | None = None
        self.feature_names_: list[str] | None = None
        self.indices_: tuple[str, ...] | None = self.indices
        self.temperature_: float = 1.0
        self.class_prior_: np.ndarray | None = None
        self.feature_median_: np.ndarray | None = None
        self.training_: dict[str, Any] = {}
        self._booster: lightgbm.Booster | None = None

    def _config(self) -> dict[str, Any]:
        return {"indices": None if self.indices is None else list(self.indices),
                "bin_days": self.bin_days, "year_start": self.year_start,
                "phenology_features": self.phenology_features, "l2": self.l2,
                "max_iter": self.max_iter, "learning_rate": self.learning_rate,
                "seed": self.seed, "id_col": self.id_col, "n_harmonics": self.n_harmonics,
                "augment_days": list(self.augment_days), "calibrate": self.calibrate,
                "calibration_folds": self.calibration_folds, "num_leaves": self.num_leaves,
                "min_child_samples": self.min_child_samples,
                "feature_fraction": self.feature_fraction, "class_weight": self.class_weight,
                "num_threads": self.num_threads, "augment_gain": list(self.augment_gain),
                "augment_offset": self.augment_offset,
                "augment_level_copies": self.augment_level_copies}

    def get_params(self) -> dict[str, Any]:
        """Constructor settings (for cloning)."""
        return self._config()

    # ---- features
    def _resolve_indices(self, series: pd.DataFrame) -> tuple[str, ...]:
        if self.indices_ is not None:
            return self.indices_
        found = default_indices(series)
        if not found:
            raise ModelError("series has no index column (none of cropyield.INDICES: "
                             "ndvi, evi2, ndre, ndmi …); pass indices=(...) or smooth an "
                             "index first")
        if "ndvi" in found:   # phenology uses the first index: NDVI when present
            found = ("ndvi",) + tuple(c for c in found if c != "ndvi")
        return found

    def features(self, series: pd.DataFrame, *, shift_days: int = 0) -> pd.DataFrame:
        """Feature table (one row per field, indexed by field id) from a daily series."""
        ind = self._resolve_indices(series)
        return series_features(series, indices=ind, bin_days=self.bin_days,
                               year_start=self.year_start, n_harmonics=self.n_harmonics,
                               phenology_features=self.phenology_features,
                               shift_days=shift_days, id_col=self.id_col)

    def _feature_sets(self, series: pd.DataFrame) -> dict[int, pd.DataFrame]:
        out = {0: self.features(series)}
        for s in self.augment_days:
            if s:
                out[s] = self.features(series, shift_days=s)
        return out

    # ---- learner
    def _params(self, n_class: int) -> dict[str, Any]:
        return {"objective": "multiclass", "num_class": n_class,
                "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                "min_data_in_leaf": self.min_child_samples, "lambda_l2": self.l2,
                "feature_fraction": self.feature_fraction, "bagging_fraction": 0.8,
                "bagging_freq": 1, "min_data_in_bin": 1, "max_bin": 63, "seed": self.seed,
                "deterministic": True, "force_row_wise": True,
                "num_threads": self.num_threads, "verbose": -1}

    def _train(self, X: np.ndarray, yi: np.ndarray, n_class: int):
        import lightgbm as lgb

        w = None
        if self.class_weight == "balanced":
            cnt = np.bincount(yi, minlength=n_class).astype(float)
            w = (len(yi) / (n_class * np.maximum(cnt, 1)))[yi]
        ds = lgb.Dataset(X, label=yi, weight=w, free_raw_data=True,
                         params={"min_data_in_bin": 1, "max_bin": 63, "verbose": -1})
        return lgb.train(self._params(n_class), ds, num_boost_round=self.max_iter)

    def _levels_on(self) -> bool:
        return self.augment_gain != (1.0, 1.0) or self.augment_offset > 0

    def _level_draws(self, rng: np.random.Generator, n: int, spread: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Gains (log-uniform in ``augment_gain``) and offsets (uniform within
        ± ``augment_offset`` × ``spread``) for ``n`` rows × indices: one gain and one
        offset (in units of each index's spread) per row, shared by the indices."""
        k = len(spread) if self._level_per_index else 1
        lo, hi = np.log(self.augment_gain)
        g = np.exp(rng.uniform(lo, hi, size=(n, k)))
        o = rng.uniform(-1.0, 1.0, size=(n, k)) * self.augment_offset
        if k == 1:      # one gain and one offset (in spreads) per row for every index
            g, o = np.repeat(g, len(spread), 1), np.repeat(o, len(spread), 1)
        return g, o * spread[None, :]

    def _stack(self, fsets: Mapping[int, pd.DataFrame], ids, yi: np.ndarray):
        """Training rows: the fields, their time-shifted copies and their level copies.

        With level augmentation (``augment_gain`` / ``augment_offset``) every copy — the
        time-shifted ones and ``augment_level_copies`` unshifted ones — has its index
        values rescaled by a random gain and offset per field (:func:`_rescale_levels`),
        the same for every index: a greener or browner region moves its indices together.
        The fields themselves stay as they are. Offsets are in units of each index's
        spread: the median over the training fields of its 90 % − 10 % quantile range.
        Draws come from the classifier's seed, so fits are reproducible.
        """
        X = [fsets[s].reindex(index=ids, columns=self.feature_names_).to_numpy(dtype=float)
             for s in fsets]
        if self._levels_on() and (len(X) > 1 or self.augment_level_copies):
            X += [X[0]] * self.augment_level_copies
            ind = list(self.indices_ or ())
            kinds = _level_feature_kinds(self.feature_names_ or [], ind)
            spread = self._index_spread(X[0], ind)
            rng = np.random.default_rng([self.seed, 16])
            for i in range(1, len(X)):
                g, o = self._level_draws(rng, len(X[i]), spread)
                X[i] = _rescale_levels(X[i], kinds, g, o)
        return np.vstack(X), np.tile(yi, len(X))

    def _index_spread(self, X0: np.ndarray, ind: Sequence[str]) -> np.ndarray:
        """Per index, the median over fields of its 90 % − 10 % quantile range (index units;
        0 where unknown)."""
        pos = {c: i for i, c in enumerate(self.feature_names_ or [])}
        out = np.zeros(len(ind))
        for j, ix in enumerate(ind):
            if f"{ix}_q90" in pos and f"{ix}_q10" in pos:
                d = X0[:, pos[f"{ix}_q90"]] - X0[:, pos[f"{ix}_q10"]]
                d = d[np.isfinite(d)]
                out[j] = float(np.median(d)) if len(d) else 0.0
        return out

    def fit(self, series: pd.DataFrame, labels, groups=None) -> "CropClassifier":
        """Fit on a daily series and per-field labels.

        Parameters
        ----------
        series : DataFrame
            Daily series (``field_id, time, <indices>``), e.g. from :func:`smooth_series`.
        labels : Series or mapping
            ``field_id`` → class label (crop id or any string, e.g. a rotation
            ``"winter_wheat+summer_maize"``). Fields without a label are ignored.
        groups : Series or mapping, optional
            ``field_id`` → group (farmer, village); calibration folds keep groups together.
        """
        self.indices_ = self._resolve_indices(series)
        fsets = self._feature_sets(series)
        y = pd.Series(labels)
        y = y[y.notna()].astype(str)
        common = fsets[0].index.intersection(y.index)
        if len(common) < 2:
            raise ModelError("fewer than two labelled fields have series data; check that "
                             "labels are indexed by field_id")
        g = pd.Series(groups).reindex(common) if groups is not None else None
        return self._fit_sets(fsets, common, y.loc[common].to_numpy(), g)

    def _fit_sets(self, fsets, ids, y: np.ndarray, groups=None) -> "CropClassifier":
        classes = sorted(set(y))
        if len(classes) < 2:
            raise ModelError(f"need at least two classes to fit, got {classes}")
        self.classes_ = classes
        self.feature_names_ = list(fsets[0].columns)
        cix = {c: i for i, c in enumerate(classes)}
        yi = np.array([cix[v] for v in y])
        K = len(classes)
        X, Y = self._stack(fsets, ids, yi)
        self._booster = self._train(X, Y, K)
        self.temperature_ = 1.0
        self.class_prior_ = np.bincount(yi, minlength=K) / len(yi)
        self.feature_median_ = _nanmedian_cols(
            fsets[0].reindex(index=ids, columns=self.feature_names_).to_numpy(dtype=float))
        info: dict[str, Any] = {"n_fields": int(len(ids)), "n_rows": int(len(X)),
                                "n_features": int(X.shape[1]), "seed": self.seed}
        if self.calibrate and len(ids) >= 2 * self.calibration_folds:
            Z = self._oof_scores(fsets, ids, yi, K, groups)
            ok = np.isfinite(Z).all(axis=1)
            if ok.sum() >= 10:
                self.temperature_ = _fit_temperature(Z[ok], yi[ok])
                info["calibration"] = {
                    "method": "temperature", "n_fields": int(ok.sum()),
                    "brier_raw": brier_score(_softmax(Z[ok]), yi[ok]),
                    "brier_calibrated": brier_score(_softmax(Z[ok] / self.temperature_),
                                                    yi[ok]),
                    "oof_accuracy": float(np.mean(Z[ok].argmax(axis=1) == yi[ok]))}
        self.training_ = info
        return self

    def _oof_scores(self, fsets, ids, yi, K, groups) -> np.ndarray:
        """Out-of-fold raw scores of the training fields (augmented copies stay in-fold)."""
        rng = np.random.default_rng(self.seed)
        n = len(ids)
        if groups is not None and groups.notna().all():
            ug = pd.unique(groups.to_numpy())
            perm = rng.permutation(len(ug))
            fold_of = {ug[p]: i % self.calibration_folds for i, p in enumerate(perm)}
            folds = groups.map(fold_of).to_numpy()
        else:
            folds = np.empty(n, dtype=int)
            for c in range(K):   # stratified by class
                m = np.flatnonzero(yi == c)
                folds[rng.permutation(m)] = np.arange(len(m)) % self.calibration_folds
        Z = np.full((n, K), np.nan)
        ids = pd.Index(ids)
        for f in range(self.calibration_folds):
            te = folds == f
            tr = ~te
            present = np.unique(yi[tr])
            if te.sum() == 0 or len(present) < 2:
                continue
            X, Y = self._stack(fsets, ids[tr], yi[tr])
            bst = self._train(X, Y, K)
            Xt = fsets[0].reindex(index=ids[te], columns=self.feature_names_).to_numpy(float)
            Z[te] = bst.predict(Xt, raw_score=True).reshape(-1, K)
        return Z

    def _check(self) -> lightgbm.Booster:
        """The fitted booster (ModelError when the classifier is not fitted)."""
        if self._booster is None:
            raise ModelError("the classifier is not fitted; call fit() or load() first")
        return self._booster

    def _aligned(self, X: np.ndarray) -> np.ndarray:
        """``X`` shifted so its per-feature medians equal the training fields' medians."""
        if self.feature_median_ is None:
            raise ModelError("align=True needs the training fields' feature medians, which "
                             "this model (saved by an older cropyield) lacks; refit with "
                             "CropClassifier().fit(series, labels) and save() again")
        n = int(np.isfinite(X).any(axis=1).sum())
        if n < self.MIN_ALIGN_FIELDS:
            raise ModelError(f"align=True shifts features by the median over the fields "
                             f"passed, which needs at least {self.MIN_ALIGN_FIELDS} fields "
                             f"of one region; got {n}. Pass the whole region's series, or "
                             "predict without align")
        shift = _nanmedian_cols(X) - self.feature_median_
        return X - np.where(np.isfinite(shift), shift, 0.0)

    def _proba_matrix(self, feat: pd.DataFrame, *, align: bool = False,
                      adapt_priors: bool = False) -> np.ndarray:
        X = feat.reindex(columns=self.feature_names_).to_numpy(dtype=float)
        if align:
            X = self._aligned(X)
        Z = np.asarray(self._check().predict(X, raw_score=True)).reshape(len(X), -1)
        P = _softmax(Z / self.temperature_)
        return self._adapted(P)[0] if adapt_priors else P

    def _adapted(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`adapt_class_priors` of ``P`` from the training class priors."""
        if self.class_prior_ is None:
            raise ModelError("adapt_priors=True needs the training class priors, which "
                             "this model (saved by an older cropyield) lacks; refit with "
                             "CropClassifier().fit(series, labels) and save() again")
        return adapt_class_priors(P, self.class_prior_)

    def predict_proba(self, series: pd.DataFrame, *, align: bool = False,
                      adapt_priors: bool = False) -> pd.DataFrame:
        """Calibrated class probabilities, one row per field (index: field id).

        Parameters
        ----------
        series : DataFrame
            Daily series (``field_id, time, <indices>``) as passed to :meth:`fit`.
        align : bool
            Region alignment (opt-in; for a whole region the model was not trained on):
            shift every feature so that its median over the fields passed equals its
            median over the training fields (first-moment alignment, cf. CORAL, Sun, Feng
            & Saenko 2016, AAAI). Measured to help across regions
            (docs/validation_crops.md); it assumes the fields passed are many parcels of
            one region with a class mix not wholly unlike the training one, and raises
            ``ModelError`` for fewer than ``MIN_ALIGN_FIELDS`` fields. Predictions for a
            field then depend on the other fields passed.
        adapt_priors : bool
            Re-estimate the class priors of the fields passed by EM and adjust the
            probabilities (:func:`adapt_class_priors`, Saerens et al. 2002; opt-in). Sound
            under pure label shift (same region, another class mix); measured to hurt
            across regions, where classes look different. The estimated priors are in
            ``attrs["priors"]`` of the result.

        Returns
        -------
        DataFrame
            One column per class (``classes_``), rows sum to 1.
        """
        self._check()
        feat = self.features(series)
        P = self._proba_matrix(feat, align=align)
        priors = None
        if adapt_priors:
            P, priors = self._adapted(P)
        out = pd.DataFrame(P, index=feat.index, columns=self.classes_)
        if priors is not None:
            out.attrs["priors"] = dict(zip(self.classes_ or [], (float(v) for v in priors)))
        return out

    def predict(self, series: pd.DataFrame, *, align: bool = False,
                adapt_priors: bool = False) -> pd.Series:
        """Most likely class per field (Series indexed by field id); keywords as in
        :meth:`predict_proba`."""
        P = self.predict_proba(series, align=align, adapt_priors=adapt_priors)
        return pd.Series(np.asarray(self.classes_, dtype=object)[P.to_numpy().argmax(axis=1)],
                         index=P.index, name="crop")

    # ---- persistence
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON representation of the fitted model (LightGBM text model inside)."""
        booster = self._check()
        import lightgbm

        return {
            "format": self.FORMAT, "version": self.VERSION, "learner": self.LEARNER,
            "versions": {"cropyield": __version__, "lightgbm": lightgbm.__version__},
            "config": self._config(), "indices": list(self.indices_ or ()),
            "classes": list(self.classes_ or []),
            "feature_names": list(self.feature_names_ or []),
            "calibration": {"method": "temperature", "temperature": self.temperature_},
            "class_prior": _list_or_none(self.class_prior_),
            "feature_median": _list_or_none(self.feature_median_),
            "training": self.training_,
            "model": booster.model_to_string(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CropClassifier":
        """Rebuild a classifier from :meth:`to_dict` output (no code is run)."""
        if not isinstance(d, Mapping) or d.get("format") != cls.FORMAT:
            fmt = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise ModelError(f"not a {cls.FORMAT} document (format={fmt!r})")
        if d.get("version") == 1:
            raise ModelError(
                "this file holds a version-1 CropClassifier (the former NumPy softmax "
                "regression), which this cropyield no longer reads; refit on your labelled "
                "parcels with CropClassifier().fit(series, labels) and save() again")
        if d.get("version") not in (2, 3, cls.VERSION) or d.get("learner") != cls.LEARNER:
            raise ModelError(f"unsupported {cls.FORMAT} version={d.get('version')!r} "
                             f"learner={d.get('learner')!r}; this cropyield reads versions "
                             f"2 to {cls.VERSION} ({cls.LEARNER})")
        import lightgbm as lgb

        try:
            # version 4 adds the level-augmentation settings to the config; a version 2/3
            # file was fitted without level augmentation (its config lacks them)
            cfg = dict(d["config"])
            if d.get("version") in (2, 3):
                cfg.setdefault("augment_gain", [1.0, 1.0])
                cfg.setdefault("augment_offset", 0.0)
                cfg.setdefault("augment_level_copies", 0)
            m = cls(**cfg)
            m.indices_ = tuple(str(x) for x in d["indices"])
            m.classes_ = [str(c) for c in d["classes"]]
            m.feature_names_ = [str(c) for c in d["feature_names"]]
            m.temperature_ = float(d["calibration"]["temperature"])
            m.training_ = dict(d.get("training", {}))
            # version 3 adds the training priors and feature medians (align/adapt_priors);
            # version-2 files load without them and predict as before
            m.class_prior_ = _array_or_none(d.get("class_prior"), len(m.classes_))
            m.feature_median_ = _array_or_none(d.get("feature_median"),
                                               len(m.feature_names_))
            text = d["model"]
            if not isinstance(text, str):
                raise TypeError("model is not a string")
        except (KeyError, TypeError, ValueError, ModelError) as exc:
            raise ModelError(f"corrupt classifier document: {exc}") from exc
        if not (m.temperature_ > 0 and math.isfinite(m.temperature_)):
            raise ModelError("corrupt classifier document: temperature must be > 0")
        try:
            bst = lgb.Booster(model_str=text)
        except Exception as exc:   # lightgbm raises LightGBMError on a bad text model
            raise ModelError(f"corrupt classifier document: LightGBM cannot parse the "
                             f"model ({exc})") from exc
        nf, nc = len(m.feature_names_), len(m.classes_)
        if bst.num_feature() != nf or bst.num_model_per_iteration() != nc:
            raise ModelError("corrupt classifier document: model shapes do not match "
                             f"{nf} features × {nc} classes")
        m._booster = bst
        return m

    def save(self, path: str | Path) -> None:
        """Write the model as JSON (text; no pickle)."""
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "CropClassifier":
        """Read a model written by :meth:`save`. Only JSON is parsed; nothing is executed."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ModelError(f"cannot read classifier from {path}: not a JSON model file "
                             f"written by CropClassifier.save ({exc}); cropyield never "
                             "reads pickle") from exc
        except OSError as exc:
            raise ModelError(f"cannot read classifier from {path}: {exc}") from exc
        try:
            d = loads_json(text, what=f"crop classifier file {path}", error=ModelError)
        except ModelError as exc:
            raise ModelError(f"{exc} (not a JSON model file written by CropClassifier.save; "
                             "cropyield never reads pickle)") from exc
        return cls.from_dict(d)

    # ---- validation
    def cross_validate(self, series: pd.DataFrame, labels, groups, *, n_splits: int = 5,
                       seed: int | None = None) -> pd.DataFrame:
        """Grouped k-fold cross-validation (all fields of a group share a fold).

        Parameters
        ----------
        series, labels : as in :meth:`fit`
        groups : Series or mapping
            ``field_id`` → group (farmer or village), so that no group is in both the
            training and the test part.
        n_splits : int
        seed : int, optional
            Shuffles groups into folds (default: the classifier's seed).

        Returns
        -------
        DataFrame
            Out-of-fold predictions: ``field_id, group, fold, label, predicted, prob``;
            ``attrs["accuracy"]`` (overall), ``attrs["fold_accuracy"]`` (list),
            ``attrs["seed"]``, ``attrs["brier"]`` (calibrated, out of fold).
        """
        self.indices_ = self._resolve_indices(series)
        fsets = self._feature_sets(series)
        y = pd.Series(labels)
        y = y[y.notna()].astype(str)
        g = pd.Series(groups)
        common = fsets[0].index.intersection(y.index).intersection(g.index)
        if len(common) < n_splits:
            raise ModelError(f"need at least n_splits={n_splits} labelled fields with groups")
        y, g = y.loc[common], g.loc[common]
        ug = pd.unique(g.to_numpy())
        if len(ug) < n_splits:
            raise ModelError(f"only {len(ug)} groups for {n_splits} folds")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        perm = rng.permutation(len(ug))
        fold_of = {ug[p]: i % n_splits for i, p in enumerate(perm)}
        folds = g.map(fold_of).to_numpy()
        rows = []
        accs = []
        briers = []
        for f in range(n_splits):
            te = folds == f
            tr = ~te
            if te.sum() == 0 or len(set(y[tr])) < 2:
                continue
            m = CropClassifier(**self._config())
            m.indices_ = self.indices_
            m._level_per_index = self._level_per_index
            m._fit_sets(fsets, common[tr], y[tr].to_numpy(), g[tr])
            P = m._proba_matrix(fsets[0].loc[common[te]])
            pred = np.asarray(m.classes_, dtype=object)[P.argmax(axis=1)]
            accs.append(float(np.mean(pred == y[te].to_numpy())))
            known = y[te].isin(m.classes_).to_numpy()
            if known.any():
                ci = {c: i for i, c in enumerate(m.classes_ or [])}
                briers.append((brier_score(P[known], np.array([ci[v] for v in y[te][known]])),
                               int(known.sum())))
            for fid, grp, lab, pr, pp in zip(common[te], g[te], y[te], pred, P.max(axis=1)):
                rows.append({self.id_col: fid, "group": grp, "fold": f, "label": lab,
                             "predicted": pr, "prob": float(pp)})
        out = pd.DataFrame(rows)
        out.attrs["accuracy"] = float((out["label"] == out["predicted"]).mean()) if len(out) \
            else float("nan")
        out.attrs["fold_accuracy"] = accs
        out.attrs["seed"] = self.seed if seed is None else seed
        out.attrs["brier"] = (sum(b * n for b, n in briers) / sum(n for _, n in briers)
                              if briers else float("nan"))
        return out
