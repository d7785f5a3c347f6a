"""Interval machinery: observation-quality scale and (cross-)conformal quantiles.

Every prediction carries P10/P50/P90. With residuals from a calibration
(:func:`cropyield.yieldmodel.fit_yield_model`, out-of-fold cross-conformal scores), the
quantiles of the *normalised log residuals* ``z = log(y_obs / ŷ) / s`` give
``P_k = ŷ × exp(q_k × s)``, where ``s >= 1`` is an observation-quality scale
(:func:`quality_scale`: fewer clear observations and longer gaps give a larger ``s``).
Without calibration residuals a documented prior spread is used
(``YieldParams.prior_sigma``: ``q = ±1.2816 σ``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ModelError

__all__ = ["quality_scale", "conformal_quantiles", "remove_cut_error"]

_Z90 = 1.2815515655446004  # standard normal 90 % quantile


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


def remove_cut_error(scores, cut_error_sd: float, scale=1.0) -> tuple[np.ndarray, float]:
    """Remove a known crop-cut measurement error from normalised log-residual scores.

    A crop cut measures ``y_cut = y · exp(u)`` with ``u`` the cut's own log error (sd
    ``cut_error_sd``, e.g. 0.13 for a random-octant cut, Kosmowski et al. 2021), independent
    of the model's error ``e = log(y / ŷ)``. The scores ``z_i = (e_i + u_i) / s_i``
    (``s_i``: :func:`quality_scale`) then overstate the spread of the model's error on true
    yields by ``mean(σ² / s_i²)``. The scores are shrunk about their median by

        ``k = sqrt(max(0, 1 − mean(σ² / s_i²) / var(z)))``   (``var`` with ``ddof=1``)

    so that their variance drops by the cut error's and never below zero: a location-scale
    deconvolution, exact when ``e`` and ``u`` are normal and a first-order correction
    otherwise (the shape of the score distribution is kept). With ``k = 0`` (the scores are
    no wider than the cut error) every score becomes the median.

    Parameters
    ----------
    scores : array-like
        Normalised log residuals ``log(y_cut / ŷ) / s`` (dimensionless); NaN kept as NaN.
    cut_error_sd : float
        Standard deviation of the cuts' log measurement error (dimensionless, >= 0).
    scale : float or array-like
        The quality scale ``s_i`` of each score (default 1).

    Returns
    -------
    (numpy.ndarray, float)
        The shrunk scores and ``k``.

    Raises
    ------
    ModelError
        ``cut_error_sd`` negative or not finite.
    """
    sd = float(cut_error_sd)
    if not (math.isfinite(sd) and sd >= 0):
        raise ModelError(f"cut_error_sd must be a finite number >= 0 (log-scale sd), got "
                         f"{cut_error_sd!r}")
    z = np.asarray(scores, dtype=float)
    s = np.broadcast_to(np.asarray(scale, dtype=float), z.shape)
    ok = np.isfinite(z) & np.isfinite(s) & (s > 0)
    if sd == 0 or ok.sum() < 2:
        return z.copy(), 1.0
    var = float(np.var(z[ok], ddof=1))
    err = float(np.mean(sd ** 2 / s[ok] ** 2))
    k = math.sqrt(max(0.0, 1.0 - err / var)) if var > 0 else 0.0
    med = float(np.median(z[ok]))
    return med + k * (z - med), k


def _prior_quantiles(sigma: float) -> dict[str, Any]:
    return {"q10": -_Z90 * sigma, "q50": 0.0, "q90": _Z90 * sigma, "n": 0, "small_n": False,
            "method": f"prior: lognormal sigma={sigma:g} (uncalibrated)"}


