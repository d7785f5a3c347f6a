"""Per-field daily time series: same-day merge and weighted Whittaker smoothing.

The smoother solves ``(W + λ DᵀD) z = W y`` on a daily grid (Eilers 2003, Anal. Chem.
75:3631), where ``D`` is the second-order difference matrix and ``W`` the diagonal of
observation weights (0 on days without a clear observation). The system is symmetric
pentadiagonal; it is factorised as ``LDLᵀ`` in O(n) per field by a numba kernel
(:func:`whittaker_banded`). Clouds that escape the mask bias vegetation indices *low*, so
an iterative upper-envelope re-weighting down-weights observations that fall well below
the current fit (Chen et al. 2004, RSE 91:332): by default with asymmetric bisquare weights
on studentised residuals, whose leverage term (the hat-matrix diagonal, computed in O(n) from
the same factorisation) exposes dark dates that a one-sided fit at the series ends or beside
a gap would follow (see :func:`smooth_series`).

λ is fixed or chosen per field by the V-curve (Frasso & Eilers 2015) and always bounded,
because unbounded automatic choices pick λ ≈ 0 on sparse irregular series.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ._jit import njit
from ._log import logger
from .errors import CropYieldError, join_flags, split_flags

__all__ = ["smooth_series", "whittaker_banded", "whittaker_fit", "fit_double_logistic",
           "double_logistic", "DEFAULT_FLAG_WEIGHTS", "SeriesError"]


class SeriesError(CropYieldError, ValueError):
    """The observations table cannot be turned into a series (missing columns, bad options)."""


#: Multiplier applied to an observation's weight when its flags contain the code.
#: Rows whose value is NaN always get weight 0.
DEFAULT_FLAG_WEIGHTS: dict[str, float] = {
    "ALL_MASKED": 0.0,
    "READ_FAILED": 0.0,
    "NO_OVERLAP": 0.0,
    "AUTH_EXPIRED": 0.0,
    "INVALID_GEOMETRY": 0.0,
    "LOW_VALID_FRACTION": 0.5,
    "SUBPIXEL_FIELD": 0.5,
}

_NS_PER_DAY = 86_400_000_000_000

#: Leverage cap of the studentised envelope residual (factor 1/√(1 − h) at most 2). Above
#: it a date is nearly the fit's only local support (monthly composites, h ≈ 0.9-1): there
#: is no neighbour to compare it with, and the uncapped test would lift real months.
_MAX_LEVERAGE = 0.75


# --------------------------------------------------------------------------- kernels


@njit(nogil=True)
def _ldl_banded(w, lam, d, l1, l2):
    """``LDLᵀ`` factors of ``W + lam·DᵀD`` (pentadiagonal; ``n ≥ 3``) into ``d, l1, l2``.

    ``L`` is unit lower triangular with ``L[i, i-1] = l1[i]`` and ``L[i, i-2] = l2[i]``.
    Returns False when a pivot is not positive (singular system).
    """
    n = w.shape[0]
    a0 = np.zeros(n)   # diagonal of D'D
    b0 = np.zeros(n)   # b0[i] = (D'D)[i, i-1]
    for k in range(n - 2):
        a0[k] += 1.0
        a0[k + 1] += 4.0
        a0[k + 2] += 1.0
        b0[k + 1] += -2.0
        b0[k + 2] += -2.0
    for i in range(n):
        l1[i] = 0.0
        l2[i] = 0.0
    for i in range(n):
        dd = w[i] + lam * a0[i]
        if i >= 1:
            tmp = lam * b0[i]
            if i >= 2:
                tmp -= l1[i - 1] * l2[i] * d[i - 2]
            l1[i] = tmp / d[i - 1]
            dd -= l1[i] * l1[i] * d[i - 1]
        if i >= 2:
            dd -= l2[i] * l2[i] * d[i - 2]
        if not (dd > 1e-12 * (1.0 + lam)):
            return False
        d[i] = dd
        if i + 2 < n:
            l2[i + 2] = lam / dd  # (D'D)[i+2, i] = 1
    return True


@njit(nogil=True)
def _whittaker_solve(y, w, lam, z, h):
    """Whittaker fit into ``z``; with ``h`` of length n also the hat-matrix diagonal.

    ``h[i] = w[i]·[(W + lam·DᵀD)⁻¹]ᵢᵢ`` (the fit's sensitivity to its own observation,
    Eilers 2003), from the band of the inverse by the Takahashi/Hutchinson-de Hoog
    recursion, O(n). Returns False (``z``, ``h`` NaN) when the system is singular.
    """
    n = y.shape[0]
    want_h = h.shape[0] == n
    if n == 0:
        return True
    if n < 3:
        sw = 0.0
        swy = 0.0
        for i in range(n):
            if w[i] > 0:
                sw += w[i]
                swy += w[i] * y[i]
        for i in range(n):
            z[i] = swy / sw if sw > 0 else np.nan
            if want_h:
                h[i] = w[i] / sw if sw > 0 else np.nan
        return sw > 0
    d = np.empty(n)
    l1 = np.empty(n)   # L[i, i-1]
    l2 = np.empty(n)   # L[i, i-2]
    if not _ldl_banded(w, lam, d, l1, l2):
        for k in range(n):
            z[k] = np.nan
            if want_h:
                h[k] = np.nan
        return False
    # forward: L u = W y
    for i in range(n):
        v = w[i] * y[i] if w[i] > 0 else 0.0
        if i >= 1:
            v -= l1[i] * z[i - 1]
        if i >= 2:
            v -= l2[i] * z[i - 2]
        z[i] = v
    for i in range(n):
        z[i] /= d[i]
    # backward: L' x = u
    for i in range(n - 1, -1, -1):
        v = z[i]
        if i + 1 < n:
            v -= l1[i + 1] * z[i + 1]
        if i + 2 < n:
            v -= l2[i + 2] * z[i + 2]
        z[i] = v
    if want_h:
        # band of S = A^-1 from S = D^-1 L^-1 + (I - L') S, last row first:
        # s0[i] = S[i, i], s1[i] = S[i, i+1], s2[i] = S[i, i+2]
        s0n1 = 0.0  # s0[i+1]
        s0n2 = 0.0  # s0[i+2]
        s1n1 = 0.0  # s1[i+1]
        for i in range(n - 1, -1, -1):
            a1 = l1[i + 1] if i + 1 < n else 0.0
            a2 = l2[i + 2] if i + 2 < n else 0.0
            s2 = -a1 * s1n1 - a2 * s0n2
            s1 = -a1 * s0n1 - a2 * s1n1
            s0 = 1.0 / d[i] - a1 * s1 - a2 * s2
            h[i] = w[i] * s0
            s0n2 = s0n1
            s0n1 = s0
            s1n1 = s1
    return True


@njit(nogil=True)
def whittaker_banded(y, w, lam, z):
    """Weighted second-order Whittaker smoother on a regular grid (in place into ``z``).

    Solves ``(W + lam·DᵀD) z = W y`` with a banded LDLᵀ factorisation, O(n).

    Parameters
    ----------
    y : float64[n]
        Values (ignored where ``w == 0``; may be NaN there).
    w : float64[n]
        Non-negative weights.
    lam : float
        Smoothing parameter λ (> 0), in (index units)² per (index units / day²)².
    z : float64[n]
        Output array.

    Returns
    -------
    bool
        False when the system is singular (fewer than two distinct weighted days);
        ``z`` is then left filled with NaN.
    """
    return _whittaker_solve(y, w, lam, z, np.empty(0))


@njit(nogil=True)
def _fit_terms(y, w, z):
    """Weighted residual sum of squares and roughness Σ(Δ²z)²."""
    n = y.shape[0]
    fit = 0.0
    for i in range(n):
        if w[i] > 0:
            r = y[i] - z[i]
            fit += w[i] * r * r
    pen = 0.0
    for i in range(2, n):
        dz = z[i] - 2.0 * z[i - 1] + z[i - 2]
        pen += dz * dz
    return fit, pen


@njit(nogil=True)
def _vcurve_lambda(y, w, lams, z):
    """λ minimising the V-curve distance between consecutive (log fit, log pen) points."""
    m = lams.shape[0]
    lf = np.empty(m)
    lp = np.empty(m)
    for k in range(m):
        whittaker_banded(y, w, lams[k], z)
        f, p = _fit_terms(y, w, z)
        lf[k] = np.log10(f + 1e-12)
        lp[k] = np.log10(p + 1e-12)
    best = np.inf
    lam = lams[m // 2]
    for k in range(m - 1):
        dl = np.log10(lams[k + 1]) - np.log10(lams[k])
        v = np.sqrt((lf[k + 1] - lf[k]) ** 2 + (lp[k + 1] - lp[k]) ** 2) / dl
        if v < best:
            best = v
            lam = np.sqrt(lams[k] * lams[k + 1])
    return lam


@njit(nogil=True)
def _envelope_weights(y, w0, z, h, studentize, bisquare, scale, low, keep_runs, wk):
    """One upper-envelope re-weighting pass; new weights into ``wk``.

    The residual of each observation is ``r = y − z``, or with ``studentize`` the
    studentised residual ``r / √(1 − h)`` (``h`` the hat-matrix diagonal of the current
    fit, capped at :data:`_MAX_LEVERAGE`): a fit that leans on one date — at the series
    ends, next to a gap — follows that date's dip, so its plain residual understates the dip
    by the factor ``1 − h``.

    ``bisquare``: asymmetric Tukey bisquare (Garcia 2010 for robust Whittaker smoothing,
    kept to one side as in Atzberger & Eilers 2011): ``r ≥ 0`` keeps ``w0``; ``r < 0`` gets
    ``w0 · max((1 − (r/scale)²)², low)`` (``low`` from ``r ≤ −scale``). Otherwise the step
    rule: ``r < −scale`` gets ``low · w0``; with ``keep_runs`` two or more consecutive low
    observations keep their weight (a harvest persists, a residue is isolated).
    Returns whether any weight changed by more than 0.1 % of its ``w0``.
    """
    n = y.shape[0]
    changed = False
    prev_low = False
    prev_i = -1
    for i in range(n):
        if w0[i] <= 0:
            continue
        r = y[i] - z[i]
        if studentize:
            q = 1.0 - h[i]
            r = r / np.sqrt(q if q > 1.0 - _MAX_LEVERAGE else 1.0 - _MAX_LEVERAGE)
        if bisquare:
            if r >= 0.0:
                nw = w0[i]
            elif r <= -scale:
                nw = w0[i] * low
            else:
                u = r / scale
                m = (1.0 - u * u) ** 2
                nw = w0[i] * (m if m > low else low)
        else:
            is_low = r < -scale
            nw = w0[i] * low if is_low else w0[i]
            if keep_runs and is_low:
                if prev_low:
                    nw = w0[i]
                    if prev_i >= 0 and wk[prev_i] != w0[prev_i]:
                        wk[prev_i] = w0[prev_i]
                        changed = True
            prev_low = is_low
            prev_i = i
        if abs(nw - wk[i]) > 1e-3 * w0[i]:
            changed = True
        wk[i] = nw
    return changed


@njit(nogil=True)
def _envelope_fit(y, w0, lam, n_iter, studentize, bisquare, scale, low, keep_runs, z, wk, h):
    """Whittaker fit at ``lam`` with up to ``n_iter`` re-weighting passes (stops when the
    weights are stable); final weights in ``wk``. Returns False for a singular system."""
    n = y.shape[0]
    hh = h if studentize else h[:0]
    for i in range(n):
        wk[i] = w0[i]
    ok = _whittaker_solve(y, wk, lam, z, hh)
    for it in range(n_iter):
        if not ok:
            break
        if not _envelope_weights(y, w0, z, h, studentize, bisquare, scale, low, keep_runs,
                                 wk):
            break
        ok = _whittaker_solve(y, wk, lam, z, hh)
    return ok


@njit(nogil=True)
def _smooth_one(y, w0, lam, lams, n_iter, studentize, bisquare, scale, low, keep_runs,
                z, wk, h):
    """Fit one field: optional V-curve, then upper-envelope iterations. Returns λ used."""
    if lams.shape[0] > 0:
        # λ from the V-curve on the weights of a first envelope pass at a mid λ
        lam0 = np.sqrt(lams[0] * lams[-1])
        _envelope_fit(y, w0, lam0, n_iter, studentize, bisquare, scale, low, keep_runs,
                      z, wk, h)
        lam = _vcurve_lambda(y, wk, lams, z)
    _envelope_fit(y, w0, lam, n_iter, studentize, bisquare, scale, low, keep_runs, z, wk, h)
    return lam


@njit(nogil=True)
def _smooth_all(Y, W, lam, lams, n_iter, studentize, bisquare, scale, low, keep_runs,
                Z, lam_out):
    nf, n = Y.shape
    wk = np.empty(n)
    h = np.empty(n)
    for f in range(nf):
        n_valid = 0
        first = -1
        sw = 0.0
        swy = 0.0
        for i in range(n):
            if W[f, i] > 0:
                n_valid += 1
                if first < 0:
                    first = i
                sw += W[f, i]
                swy += W[f, i] * Y[f, i]
        if n_valid == 0:
            for i in range(n):
                Z[f, i] = np.nan
            lam_out[f] = np.nan
            continue
        if n_valid == 1:
            for i in range(n):
                Z[f, i] = swy / sw
            lam_out[f] = np.nan
            continue
        lam_out[f] = _smooth_one(Y[f], W[f], lam, lams, n_iter, studentize, bisquare, scale,
                                 low, keep_runs, Z[f], wk, h)
        # outside the observed period hold the edge value (a second-order penalty would
        # extrapolate the edge slope linearly, without bound)
        last = first
        for i in range(n):
            if W[f, i] > 0:
                last = i
        for i in range(first):
            Z[f, i] = Z[f, first]
        for i in range(last + 1, n):
            Z[f, i] = Z[f, last]


@njit(nogil=True)
def _support_gap(W, sigma, S, G):
    """Gaussian-kernel weight density ``S`` and days to nearest weighted day ``G``."""
    nf, n = W.shape
    half = int(np.ceil(4.0 * sigma))
    kern = np.empty(2 * half + 1)
    for k in range(-half, half + 1):
        kern[k + half] = np.exp(-0.5 * (k / sigma) ** 2)
    for f in range(nf):
        for i in range(n):
            S[f, i] = 0.0
        for i in range(n):
            wi = W[f, i]
            if wi > 0:
                lo = max(0, i - half)
                hi = min(n, i + half + 1)
                for j in range(lo, hi):
                    S[f, j] += wi * kern[j - i + half]
        big = 1 << 30
        last = -big
        for i in range(n):
            if W[f, i] > 0:
                last = i
            G[f, i] = i - last
        last = big
        for i in range(n - 1, -1, -1):
            if W[f, i] > 0:
                last = i
            d = last - i
            if d < G[f, i]:
                G[f, i] = d


def whittaker_fit(y, w, lam: float = 200.0, *, envelope_iterations: int = 10,
                  envelope_threshold: float | None = None, envelope_weight: float = 0.05,
                  lam_bounds: tuple[float, float] | None = None, n_lambdas: int = 13,
                  keep_runs: bool = False, envelope_rule: str | None = None,
                  envelope_residual: str = "studentized", envelope_scale: float = 0.13):
    """Smooth one regular series (NumPy arrays in, array and λ out).

    Parameters
    ----------
    y, w : array-like of float, same length
        Values on a regular grid and their weights (0 = missing; NaN values get weight 0).
    lam : float
        Fixed λ, used when ``lam_bounds`` is None.
    envelope_iterations, envelope_threshold, envelope_weight, envelope_rule, \
envelope_residual, envelope_scale, keep_runs
        Upper-envelope re-weighting, as in :func:`smooth_series` (``keep_runs`` is its
        ``envelope_keep_runs``).
    lam_bounds : (float, float), optional
        If given, λ is chosen by the V-curve on a log grid of ``n_lambdas`` values
        between the bounds.

    Returns
    -------
    z : ndarray of float64
    lam : float
        λ used (NaN when fewer than two weighted points).

    Raises
    ------
    SeriesError
        Invalid envelope options.
    """
    stud, bisq, width = _envelope_options(envelope_rule, envelope_residual,
                                          envelope_threshold, envelope_scale, keep_runs,
                                          envelope_iterations, envelope_weight)
    y = np.asarray(y, dtype=np.float64)[None, :].copy()
    w = np.asarray(w, dtype=np.float64)[None, :].copy()
    bad = ~np.isfinite(y) | ~np.isfinite(w) | (w < 0)
    w[bad] = 0.0
    y[bad] = 0.0
    lams = (np.geomspace(lam_bounds[0], lam_bounds[1], n_lambdas) if lam_bounds is not None
            else np.empty(0))
    z = np.empty_like(y)
    lam_out = np.empty(1)
    _smooth_all(y, w, float(lam), lams, int(envelope_iterations), stud, bisq, width,
                float(envelope_weight), bool(keep_runs), z, lam_out)
    return z[0], float(lam_out[0])


def _envelope_options(rule, residual, threshold, scale, keep_runs, iterations,
                      weight) -> tuple[bool, bool, float]:
    """Check the envelope keywords; returns (studentize, bisquare, width) for the kernel."""
    if rule is None:
        rule = "step" if (threshold is not None or keep_runs) else "bisquare"
    if rule not in ("bisquare", "step"):
        raise SeriesError(f"envelope_rule must be 'bisquare' or 'step', not {rule!r}")
    if residual not in ("plain", "studentized"):
        raise SeriesError("envelope_residual must be 'studentized' or 'plain', "
                          f"not {residual!r}")
    if keep_runs and rule == "bisquare":
        raise SeriesError("envelope_keep_runs works with envelope_rule='step' only")
    width = (float(scale) if rule == "bisquare"
             else 0.05 if threshold is None else float(threshold))
    if not width > 0:
        raise SeriesError(f"envelope_{'scale' if rule == 'bisquare' else 'threshold'} "
                          f"must be > 0, got {width}")
    if iterations < 0 or not (0 <= weight <= 1):
        raise SeriesError("envelope_iterations must be >= 0 and envelope_weight in [0, 1]")
    return residual == "studentized", rule == "bisquare", width


# --------------------------------------------------------------------------- public API

def _to_days(t: pd.Series) -> pd.Series:
    t = pd.to_datetime(t)
    if getattr(t.dt, "tz", None) is not None:
        t = t.dt.tz_convert("UTC").dt.tz_localize(None)
    return t.dt.floor("D").astype("datetime64[ns]")


def _naive_day(x) -> pd.Timestamp:
    ts = pd.Timestamp(x)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.floor("D")


def _obs_weights(obs: pd.DataFrame, values: np.ndarray, weights, flag_weights) -> np.ndarray:
    n = len(obs)
    if weights is None:
        if "valid_fraction" in obs.columns:
            w = obs["valid_fraction"].to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            w = np.ones(n)
    elif isinstance(weights, str):
        if weights not in obs.columns:
            raise SeriesError(f"weights column {weights!r} not in observations; "
                              f"available: {list(obs.columns)}")
        w = obs[weights].to_numpy(dtype=np.float64, na_value=np.nan)
    elif callable(weights):
        w = np.asarray(weights(obs), dtype=np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise SeriesError(f"weights must give one value per observation row ({n}), got {w.shape}")
    w = np.where(np.isfinite(w), np.clip(w, 0.0, None), 0.0)
    if flag_weights and "flags" in obs.columns:
        inv, uniq = pd.factorize(obs["flags"], use_na_sentinel=False)
        mult = np.ones(len(uniq))
        for k, cell in enumerate(uniq):
            for code in split_flags(cell if isinstance(cell, str) else None):
                if code in flag_weights:
                    mult[k] *= float(flag_weights[code])
        w = w * mult[inv]
    w[~np.isfinite(values)] = 0.0
    return w


def smooth_series(
    observations: pd.DataFrame,
    *,
    index: str | Sequence[str] = "ndvi",
    lam: float | str | None = 200.0,
    lam_bounds: tuple[float, float] = (10.0, 1e5),
    weights: str | Callable[[pd.DataFrame], Any] | np.ndarray | None = None,
    flag_weights: Mapping[str, float] | None = None,
    envelope_iterations: int = 10,
    envelope_threshold: float | None = None,
    envelope_weight: float = 0.05,
    envelope_keep_runs: bool = False,
    envelope_rule: str | None = None,
    envelope_residual: str = "studentized",
    envelope_scale: float = 0.13,
    start=None,
    end=None,
    min_obs: int = 6,
    support_sigma_days: float = 8.0,
    id_col: str = "field_id",
) -> pd.DataFrame:
    """Daily smoothed series per field from per-scene observations.

    Parameters
    ----------
    observations : DataFrame
        ``field_observations`` table, or any table with ``field_id``, ``time`` and the
        ``index`` column(s); ``valid_fraction`` (0..1), ``coverage`` (pixels) and ``flags``
        are used when present. Times may be tz-aware (converted to UTC) or naive (taken as
        UTC); each is assigned to its UTC calendar day.
    index : str or sequence of str
        Index column(s) to smooth. With several, each is smoothed with the same weights
        (NaN values excluded per index); ``support``/``gap_days``/``flags`` refer to the
        first index.
    lam : float, "vcurve" or None
        Whittaker λ on the daily grid (default 200, chosen on the synthetic validation,
        docs/validation_series.md). ``"vcurve"`` or None chooses λ per field by the V-curve
        within ``lam_bounds``.
    lam_bounds : (float, float)
        Bounds of the V-curve search (13 log-spaced values).
    weights : None, column name, callable or array
        Observation weights before flag multipliers. Default: ``valid_fraction`` (1 if the
        column is absent). Same-day observations (e.g. overlapping tiles) are averaged with
        weights ``coverage × valid_fraction × weight`` and the day's weight is the largest
        of their weights.
    flag_weights : mapping, optional
        Flag code → weight multiplier (default :data:`DEFAULT_FLAG_WEIGHTS`; NaN values
        always get weight 0).
    envelope_iterations : int
        Upper-envelope re-weighting passes (cloud residues bias vegetation indices low): each
        pass re-fits with weights lowered for observations below the fit; stops early when
        the weights are stable (default 10). Set 0 for indices where that asymmetry does
        not hold.
    envelope_rule : {None, "bisquare", "step"}
        ``"bisquare"`` (default): an observation whose residual ``r`` is negative keeps
        ``(1 − (r/envelope_scale)²)²`` of its weight, at least ``envelope_weight``, and
        ``envelope_weight`` from ``r ≤ −envelope_scale`` (Tukey's bisquare, kept to the low
        side: robust Whittaker smoothing as in Garcia 2010, Comput. Stat. Data Anal.
        54:1167, with the asymmetric weights of Atzberger & Eilers 2011, Int. J. Digital
        Earth 4:365). A real trough or a fast harvest that the fit cannot follow keeps part
        of its weight; a residue 0.1-0.35 below the curve loses nearly all. ``"step"``: the
        former rule, observations more than ``envelope_threshold`` below the fit get
        ``envelope_weight`` × their weight. None: ``"step"`` when ``envelope_threshold`` or
        ``envelope_keep_runs`` is given, else ``"bisquare"``.
    envelope_residual : {"studentized", "plain"}
        ``"studentized"`` (default): the residual is ``(y − z)/√(1 − h)``, ``h`` the
        hat-matrix diagonal of the current fit (how much the fit leans on the observation),
        capped at 0.75 (a date that is the fit's only local support, as in monthly
        composites, has no neighbour to be compared with).
        At the first and last dates and beside gaps the fit follows a dark date and hides
        it from the plain residual ``y − z`` (by the factor ``1 − h``, up to 0.1 there);
        studentising restores the comparison with the neighbours. The former behaviour is
        ``envelope_rule="step", envelope_residual="plain", envelope_iterations=4``.
    envelope_scale : float
        Bisquare width (index units; default 0.13, chosen on the weak-season validation,
        docs/validation_crops.md): residuals beyond it get ``envelope_weight``.
    envelope_threshold : float, optional
        Step-rule threshold (index units; 0.05 when the step rule is asked for without one).
    envelope_weight : float
        Weight multiplier (0..1) for observations well below the fit.
    envelope_keep_runs : bool
        Step rule only: two or more consecutive valid observations below the fit keep their
        weight (a real decline such as a harvest persists; cloud residues are isolated).
        Off by default: it helps on abrupt harvests but lets runs of residues through
        (docs/validation_series.md).
    start, end : date-like, optional
        Daily grid limits (inclusive; default: first and last observation date overall).
        Observations outside are dropped.
    min_obs : int
        Fields with fewer valid observation days get the ``LOW_OBS`` flag.
    support_sigma_days : float
        Width (days) of the Gaussian kernel for ``support``.
    id_col : str
        Field id column.

    Returns
    -------
    DataFrame
        One row per field and day: ``field_id``, ``time`` (tz-naive UTC date,
        ``datetime64[ns]``), ``<index>`` (smoothed, index units), ``support`` (Gaussian
        kernel sum of observation weights, σ = ``support_sigma_days``; ≈ effective number
        of clear observations within ±σ days), ``gap_days`` (days to the nearest valid
        observation; 0 on observed days), ``lam`` (λ used for the field) and ``flags``
        (``NO_DATA`` for fields without a valid observation, whose values are NaN;
        ``LOW_OBS``; ``EXTRAPOLATED`` on days before the first or after the last valid
        observation). ``attrs["lam"]`` records the λ setting.

    Raises
    ------
    SeriesError
        Missing columns, an empty grid (``end`` before ``start``) or invalid options.

    Examples
    --------
    Twenty-four five-day observations of one field become a daily series:

    >>> import numpy as np
    >>> import pandas as pd
    >>> import cropyield as cy
    >>> t = pd.date_range("2025-03-01", periods=24, freq="5D", tz="UTC")
    >>> ndvi = 0.2 + 0.6 * np.exp(-0.5 * ((np.arange(24) - 12) / 4.0) ** 2)
    >>> obs = pd.DataFrame({"field_id": "F1", "time": t, "ndvi": ndvi})
    >>> series = cy.smooth_series(obs, index="ndvi")
    >>> series.columns.tolist()
    ['field_id', 'time', 'ndvi', 'support', 'gap_days', 'lam', 'flags']
    >>> len(series)   # days from the first to the last observation
    116
    """
    indices = [index] if isinstance(index, str) else list(index)
    if not indices:
        raise SeriesError("index must name at least one column")
    need = [id_col, "time", *indices]
    missing = [c for c in need if c not in observations.columns]
    if missing:
        raise SeriesError(f"observations lack columns {missing}; need {need} "
                          "(the field_observations table has them)")
    if isinstance(lam, str) and lam != "vcurve":
        raise SeriesError(f"lam must be a positive number, 'vcurve' or None, not {lam!r}")
    vcurve = lam is None or lam == "vcurve"
    # the fixed smoothing parameter (a placeholder for the kernel when vcurve chooses per field)
    lam_fixed = 1000.0 if lam is None or isinstance(lam, str) else float(lam)
    if not vcurve and not (lam_fixed > 0):
        raise SeriesError(f"lam must be > 0, got {lam}")
    lo_b, hi_b = (float(lam_bounds[0]), float(lam_bounds[1]))
    if not (0 < lo_b < hi_b):
        raise SeriesError(f"lam_bounds must satisfy 0 < low < high, got {lam_bounds}")
    stud, bisq, width = _envelope_options(envelope_rule, envelope_residual,
                                          envelope_threshold, envelope_scale,
                                          envelope_keep_runs, envelope_iterations,
                                          envelope_weight)
    flag_weights = DEFAULT_FLAG_WEIGHTS if flag_weights is None else dict(flag_weights)

    obs = observations
    days = _to_days(obs["time"]) if len(obs) else pd.Series([], dtype="datetime64[ns]")
    day_ns = days.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    fidx, ids_all = _factorize_ids(obs[id_col])
    n_fields = len(ids_all)

    t0 = _naive_day(start) if start is not None else (
        pd.Timestamp(day_ns.min()) if len(day_ns) else None)
    t1 = _naive_day(end) if end is not None else (
        pd.Timestamp(day_ns.max()) if len(day_ns) else None)
    if t0 is None or t1 is None:
        raise SeriesError("observations are empty and no start/end given: nothing to smooth")
    n_days = int((t1 - t0) / pd.Timedelta(days=1)) + 1
    if n_days <= 0:
        raise SeriesError(f"end {t1.date()} is before start {t0.date()}")

    dix = (day_ns - t0.value) // _NS_PER_DAY
    inside = (dix >= 0) & (dix < n_days)
    flat = fidx.astype(np.int64) * n_days + dix

    cov = (obs["coverage"].to_numpy(dtype=np.float64, na_value=np.nan)
           if "coverage" in obs.columns else np.ones(len(obs)))
    cov = np.where(np.isfinite(cov) & (cov > 0), cov, 0.0)
    if "coverage" not in obs.columns:
        cov[:] = 1.0

    size = n_fields * n_days
    results: dict[str, np.ndarray] = {}
    W_first: np.ndarray | None = None
    lam_first: np.ndarray | None = None
    for k, ix in enumerate(indices):
        vals = obs[ix].to_numpy(dtype=np.float64, na_value=np.nan)
        w = _obs_weights(obs, vals, weights, flag_weights)
        use = inside & (w > 0)
        fl = flat[use]
        ww = w[use]
        mw = ww * cov[use]
        # same-day observations with zero coverage fall back to plain weights
        mw = np.where(mw > 0, mw, ww)
        sum_mw = np.bincount(fl, weights=mw, minlength=size)
        sum_mwy = np.bincount(fl, weights=mw * vals[use], minlength=size)
        Wd = np.zeros(size)
        np.maximum.at(Wd, fl, ww)
        with np.errstate(invalid="ignore", divide="ignore"):
            Yd = np.where(sum_mw > 0, sum_mwy / np.where(sum_mw > 0, sum_mw, 1.0), 0.0)
        Y = Yd.reshape(n_fields, n_days)
        Wm = Wd.reshape(n_fields, n_days)
        lams = np.geomspace(lo_b, hi_b, 13) if vcurve else np.empty(0)
        Z = np.empty((n_fields, n_days))
        lam_out = np.empty(n_fields)
        _smooth_all(Y, Wm, lam_fixed, lams, int(envelope_iterations), stud, bisq, width,
                    float(envelope_weight), bool(envelope_keep_runs),
                    Z, lam_out)
        results[ix] = Z.reshape(-1)
        if k == 0:
            W_first = Wm
            lam_first = lam_out

    if W_first is None or lam_first is None:  # pragma: no cover - indices is never empty
        raise SeriesError("index must name at least one column")
    S = np.empty((n_fields, n_days))
    G = np.empty((n_fields, n_days), dtype=np.int64)
    _support_gap(W_first, float(support_sigma_days), S, G)
    n_valid = (W_first > 0).sum(axis=1)
    has = W_first > 0
    first = np.where(n_valid > 0, has.argmax(axis=1), n_days)
    last = np.where(n_valid > 0, n_days - 1 - has[:, ::-1].argmax(axis=1), -1)
    gap = G.astype(np.float64)
    gap[n_valid == 0, :] = np.nan

    # flags: a few field-level combinations × extrapolated-or-not → categorical codes
    field_codes = np.where(n_valid == 0, 2, np.where(n_valid < min_obs, 1, 0))
    day = np.arange(n_days)
    extrap = (day[None, :] < first[:, None]) | (day[None, :] > last[:, None])
    extrap[n_valid == 0, :] = False
    code = (field_codes[:, None] * 2 + extrap).reshape(-1)
    cats = [join_flags(f, e) for f in ([], ["LOW_OBS"], ["NO_DATA"])
            for e in ([], ["EXTRAPOLATED"])]
    flags = pd.Categorical.from_codes(code, categories=pd.Index(cats, dtype=object))
    causes = _field_causes(obs, fidx, n_fields, n_valid)
    if causes:
        # field-level causes (why a field has no data, or how its geometry was changed)
        # travel on every row of the field, so no downstream table loses them
        cell = np.asarray(flags, dtype=object).reshape(n_fields, n_days)
        for f, extra in causes.items():
            cell[f, :] = [join_flags(c, extra) for c in cell[f, :]]
        flags = pd.Categorical(cell.reshape(-1))

    out = pd.DataFrame({
        id_col: np.repeat(np.asarray(ids_all), n_days),
        "time": np.tile(t0.to_datetime64().astype("datetime64[ns]")
                        + np.arange(n_days).astype("timedelta64[D]"), n_fields)
        .astype("datetime64[ns]"),
    })
    for ix in indices:
        out[ix] = results[ix]
    out["support"] = S.reshape(-1)
    out["gap_days"] = gap.reshape(-1)
    out["lam"] = np.repeat(lam_first, n_days)
    out["flags"] = flags
    out.attrs["lam"] = "vcurve" if vcurve else lam_fixed
    out.attrs["lam_bounds"] = (lo_b, hi_b)
    out.attrs["index"] = indices
    n_nodata = int((n_valid == 0).sum())
    if n_nodata:
        logger.info("smooth_series: %d of %d fields have no valid observation (NO_DATA)",
                    n_nodata, n_fields)
    return out


#: Observation flags that explain why a field has no valid observation; they are carried
#: onto the series rows of fields flagged ``NO_DATA``.
FIELD_CAUSE_FLAGS = ("INVALID_GEOMETRY", "NO_OVERLAP", "READ_FAILED", "AUTH_EXPIRED",
                     "ALL_MASKED")
#: Observation flags about the field itself, carried onto every series row of the field.
FIELD_NOTE_FLAGS = ("GEOMETRY_REPAIRED",)


def _field_causes(obs: pd.DataFrame, fidx: np.ndarray, n_fields: int,
                  n_valid: np.ndarray) -> dict[int, list[str]]:
    """Field-level flags to carry from the observations onto a field's series rows.

    ``NO_DATA`` fields get every :data:`FIELD_CAUSE_FLAGS` code seen in their rows;
    every field gets the :data:`FIELD_NOTE_FLAGS` codes seen in its rows.
    """
    if "flags" not in obs.columns or not len(obs):
        return {}
    codes, uniq = pd.factorize(obs["flags"], use_na_sentinel=False)
    wanted = set(FIELD_CAUSE_FLAGS) | set(FIELD_NOTE_FLAGS)
    out: dict[int, list[str]] = {}
    for k, u in enumerate(uniq):
        hit = [c for c in split_flags(u) if c in wanted]
        if not hit:
            continue
        for f in np.unique(fidx[codes == k]):
            keep = [c for c in hit if c in FIELD_NOTE_FLAGS or n_valid[f] == 0]
            if keep:
                out.setdefault(int(f), [])
                out[int(f)] = sorted(set(out[int(f)]) | set(keep))
    return out


# --------------------------------------------------------------------------- double logistic


def double_logistic(t, base, amp, sos, rate_up, eos, rate_down):
    """Beck et al. (2006) double logistic.

    ``base + amp·(σ(rate_up·(t − sos)) − σ(rate_down·(t − eos)))`` with σ the logistic function.

    ``t``, ``sos``, ``eos`` in days; ``rate_*`` in 1/day; ``sos``/``eos`` are the 50 % points.
    """
    t = np.asarray(t, dtype=np.float64)
    up = 1.0 / (1.0 + np.exp(-np.clip(rate_up * (t - sos), -60, 60)))
    dn = 1.0 / (1.0 + np.exp(-np.clip(rate_down * (t - eos), -60, 60)))
    return base + amp * (up - dn)


def fit_double_logistic(series: pd.DataFrame, seasons: pd.DataFrame, *, index: str = "ndvi",
                        id_col: str = "field_id", pad_days: int = 45) -> pd.DataFrame:
    """Fit a double logistic per field-season to the smoothed daily series.

    Requires scipy (``pip install cropyield[test]`` or scipy itself). Each fit uses the
    daily values from ``sos − pad_days`` to ``eos + pad_days`` of the season (from
    :func:`cropyield.seasons.phenology`), weighted by ``support`` so extrapolated stretches
    count little.

    Returns
    -------
    DataFrame
        ``field_id, season, base, amp, sos50_fit, eos50_fit, rate_up, rate_down, rmse,
        flags`` (dates as Timestamps; rates in 1/day; ``FIT_FAILED`` in flags when the
        optimiser fails or the season has no dates).
    """
    try:
        from scipy.optimize import curve_fit
    except ImportError as exc:  # pragma: no cover - scipy is in the test extra
        raise ImportError("fit_double_logistic needs scipy: pip install scipy "
                          "(or cropyield[test])") from exc
    rows = []
    groups = {k: g for k, g in series.groupby(id_col, sort=False)}
    for r in seasons.itertuples(index=False):
        fid = getattr(r, id_col)
        rec: dict[str, Any] = {id_col: fid, "season": r.season}
        g = groups.get(fid)
        if g is None or pd.isna(r.sos) or pd.isna(r.eos):
            rec["flags"] = join_flags("FIT_FAILED")
            rows.append(rec)
            continue
        lo = r.sos - pd.Timedelta(days=pad_days)
        hi = r.eos + pd.Timedelta(days=pad_days)
        gg = g[(g["time"] >= lo) & (g["time"] <= hi)]
        y = gg[index].to_numpy(float)
        t = ((gg["time"] - lo) / pd.Timedelta(days=1)).to_numpy(float)
        sup = gg["support"].to_numpy(float) if "support" in gg else np.ones_like(y)
        ok = np.isfinite(y)
        flags = []
        try:
            base0 = float(np.nanmin(y))
            amp0 = float(np.nanmax(y) - base0)
            p0 = [base0, amp0, float((r.sos - lo).days) + 15, 0.1,
                  float((r.eos - lo).days) - 15, 0.1]
            sigma = 1.0 / np.sqrt(np.clip(sup[ok], 0.05, None))
            popt, _ = curve_fit(double_logistic, t[ok], y[ok], p0=p0, sigma=sigma,
                                bounds=([-1, 0, -50, 0.005, -50, 0.005],
                                        [1, 2, t.max() + 50, 1.0, t.max() + 50, 1.0]),
                                maxfev=2000)
            resid = y[ok] - double_logistic(t[ok], *popt)
            rec.update(base=popt[0], amp=popt[1],
                       sos50_fit=lo + pd.Timedelta(days=float(popt[2])),
                       rate_up=popt[3],
                       eos50_fit=lo + pd.Timedelta(days=float(popt[4])),
                       rate_down=popt[5], rmse=float(np.sqrt(np.mean(resid ** 2))))
        except (RuntimeError, ValueError) as exc:
            logger.info("double logistic fit failed for %s season %s: %s", fid, r.season, exc)
            flags.append("FIT_FAILED")
        rec["flags"] = join_flags(flags)
        rows.append(rec)
    cols = [id_col, "season", "base", "amp", "sos50_fit", "eos50_fit", "rate_up", "rate_down",
            "rmse", "flags"]
    return pd.DataFrame(rows, columns=cols)


def _factorize_ids(ids: pd.Series, error: type[Exception] = SeriesError):
    """Codes and unique field ids, sorted when the ids are comparable (mixed types: first
    seen). Missing ids raise ``error`` (the calling stage's error class)."""
    if ids.isna().any():
        raise error("field ids must not be missing (NaN/None)")
    try:
        return pd.factorize(ids, sort=True)
    except TypeError:
        return pd.factorize(ids, sort=False)
