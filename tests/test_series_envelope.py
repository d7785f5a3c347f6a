"""Upper-envelope re-weighting of ``smooth_series``: hat diagonal and re-weighting kernels
against NumPy twins, and behaviour on realistic series (a cloud-residue dip at the series
end is rejected, a real harvest drop is kept)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cropyield.series import SeriesError, double_logistic, smooth_series, whittaker_fit


def _system(w, lam):
    n = len(w)
    D = np.diff(np.eye(n), 2, axis=0)
    return np.diag(w) + lam * D.T @ D


def envelope_reference(y, w, lam, n_iter, studentize, bisquare, scale, low):
    """NumPy twin of the envelope fit (dense solves; observed first and last days)."""
    def solve(wk):
        S = np.linalg.inv(_system(wk, lam))
        return S @ (wk * np.where(wk > 0, y, 0.0)), wk * np.diag(S)

    obs = w > 0
    wk = w.copy()
    z, h = solve(wk)
    for _ in range(n_iter):
        r = y - z
        if studentize:
            r = r / np.sqrt(np.maximum(1.0 - h, 0.25))
        if bisquare:
            m = np.where(r >= 0, 1.0, np.maximum((1 - (r / scale) ** 2) ** 2, low))
            m = np.where(r <= -scale, low, m)
        else:
            m = np.where(r < -scale, low, 1.0)
        nw = np.where(obs, w * m, 0.0)
        changed = np.any(np.abs(nw - wk)[obs] > 1e-3 * w[obs])
        wk = nw
        if not changed:
            break
        z, h = solve(wk)
    return z


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 150), lam=st.floats(1.0, 1e4), seed=st.integers(0, 10_000))
def test_hat_diagonal_matches_dense_inverse(n, lam, seed):
    from cropyield.series import _whittaker_solve

    rng = np.random.default_rng(seed)
    w = np.where(rng.random(n) < 0.4, rng.uniform(0.05, 1.0, n), 0.0)
    w[0] = w[-1] = 1.0
    y = rng.uniform(0.1, 0.9, n)
    z = np.empty(n)
    h = np.empty(n)
    assert _whittaker_solve(y, w, lam, z, h)
    S = np.linalg.inv(_system(w, lam))
    np.testing.assert_allclose(h, w * np.diag(S), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(z, S @ (w * y), rtol=1e-7, atol=1e-9)
    assert ((h >= -1e-7) & (h <= 1 + 1e-7)).all()   # a hat diagonal lies in [0, 1]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rule=st.sampled_from(["bisquare", "step"]),
       residual=st.sampled_from(["studentized", "plain"]), lam=st.floats(20.0, 2000.0))
def test_envelope_fit_matches_numpy_twin(seed, rule, residual, lam):
    rng = np.random.default_rng(seed)
    t = np.arange(200.0)
    w = np.zeros(200)
    w[::5] = np.where(rng.random(40) < 0.5, rng.uniform(0.5, 1.0, 40), 0.0)
    w[0] = w[-5] = 1.0
    y = double_logistic(t, 0.15, 0.6, 60, 0.1, 150, 0.08) + rng.normal(0, 0.02, 200)
    dark = (w > 0) & (rng.random(200) < 0.2)
    y[dark] -= rng.uniform(0.1, 0.35, dark.sum())
    scale = 0.13 if rule == "bisquare" else 0.05
    kw = ({"envelope_scale": scale} if rule == "bisquare" else {"envelope_threshold": scale})
    z, _ = whittaker_fit(y, w, lam, envelope_rule=rule, envelope_residual=residual, **kw)
    ref = envelope_reference(y[:196], w[:196], lam, 10, residual == "studentized",
                             rule == "bisquare", scale, 0.05)
    np.testing.assert_allclose(z[:196], ref, atol=1e-7)
    np.testing.assert_allclose(z[196:], ref[-1], atol=1e-7)   # held after the last date


def _series(days, truth, dark=(), depth=0.25, noise_seed=0):
    rng = np.random.default_rng(noise_seed)
    v = truth(days.astype(float)) + rng.normal(0, 0.015, len(days))
    for d in dark:
        v[days == d] -= depth
    return pd.DataFrame({"field_id": "F1",
                         "time": pd.Timestamp("2024-01-01") + pd.to_timedelta(days, "D"),
                         "ndvi": v, "valid_fraction": 1.0})


def _bare_then_crop(t):
    return double_logistic(t, 0.15, 0.65, 150, 0.1, 240, 0.1)


def test_residue_dip_at_the_series_end_is_rejected():
    """The last date is darkened by undetected cloud: the one-sided fit follows it with the
    former rule; studentised residuals expose it and the end stays at bare soil."""
    days = np.arange(0, 331, 10)
    obs = _series(days, _bare_then_crop, dark=(330,), depth=0.25)
    truth = _bare_then_crop(np.arange(0, 331.0))
    new = smooth_series(obs)["ndvi"].to_numpy()
    old = smooth_series(obs, envelope_rule="step", envelope_residual="plain",
                        envelope_iterations=4)["ndvi"].to_numpy()
    # the former rule follows the dip (0.21 low on the last day, 0.05 ten days before);
    # the end keeps a little weight (envelope_weight) on a free linear end, so the last
    # day is 0.06 low and the dip is gone ten days before the end
    assert old[-1] < truth[-1] - 0.15 and old[-11] < truth[-11] - 0.04
    assert abs(new[-1] - truth[-1]) < 0.08
    assert np.abs(new[:-10] - truth[:-10]).max() < 0.03
    # the same holds at the first date
    obs = _series(days, _bare_then_crop, dark=(0,), depth=0.25)
    new = smooth_series(obs)["ndvi"].to_numpy()
    assert abs(new[0] - truth[0]) < 0.08
    assert np.abs(new[10:] - truth[10:]).max() < 0.03


def test_real_harvest_drop_is_kept():
    """An abrupt harvest (0.8 → 0.2 within ten days) followed by bare soil is a real
    decline: the fit reaches bare soil within a revisit and stays there."""
    def harvest(t):
        return double_logistic(t, 0.18, 0.62, 100, 0.1, 200, 0.6)

    days = np.arange(0, 301, 6)
    obs = _series(days, harvest, dark=(150,), depth=0.3)
    s = smooth_series(obs)
    z = s["ndvi"].to_numpy()
    t = np.arange(len(z))
    truth = harvest(t.astype(float))
    # the post-harvest dates are real and persist: within three revisits of the drop the
    # fit is at bare soil, and it crosses half the amplitude within a week of the truth
    after = t >= 222
    assert np.abs(z[after] - truth[after]).max() < 0.05
    half = 0.18 + 0.31
    cross = np.argmax((t > 150) & (z < half))
    cross_true = np.argmax((t > 150) & (truth < half))
    assert abs(cross - cross_true) <= 7
    # the mid-season residue (day 150) is not followed
    assert abs(z[150] - truth[150]) < 0.04


def test_trough_between_two_crops_keeps_its_depth():
    """A wheat harvest and a second crop 20 days later: the trough's bare-soil dates are
    real and keep enough weight for the trough to reach within 0.1 of bare soil."""
    def two(t):
        return (double_logistic(t, 0.15, 0.65, 60, 0.1, 170, 0.15)
                + double_logistic(t, 0.0, 0.35, 200, 0.15, 280, 0.1))

    days = np.arange(0, 331, 5)
    s = smooth_series(_series(days, two))
    z = s["ndvi"].to_numpy()
    tt = np.arange(len(z), dtype=float)
    trough = (tt > 170) & (tt < 205)
    assert z[trough].min() < two(tt)[trough].min() + 0.1


def test_envelope_options_and_errors():
    days = np.arange(0, 201, 5)
    obs = _series(days, _bare_then_crop)
    # a threshold alone asks for the step rule (the former meaning of the keyword)
    a = smooth_series(obs, envelope_threshold=0.05)
    b = smooth_series(obs, envelope_rule="step", envelope_threshold=0.05)
    np.testing.assert_allclose(a["ndvi"], b["ndvi"])
    with pytest.raises(SeriesError, match="envelope_rule"):
        smooth_series(obs, envelope_rule="median")
    with pytest.raises(SeriesError, match="envelope_residual"):
        smooth_series(obs, envelope_residual="deleted")
    with pytest.raises(SeriesError, match="step"):
        smooth_series(obs, envelope_rule="bisquare", envelope_keep_runs=True)
    with pytest.raises(SeriesError, match="envelope_scale"):
        smooth_series(obs, envelope_scale=0.0)
    with pytest.raises(SeriesError, match="envelope_weight"):
        whittaker_fit(np.ones(5), np.ones(5), envelope_weight=2.0)
