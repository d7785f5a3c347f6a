"""Value-only crops (benchmark x level x vigour ratio ** elasticity) and the LUE model
levelled to a county statistic (``fit_yield_model(method="lue", county_mean_t_ha=)``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cropyield.errors import ModelError, split_flags
from cropyield.yieldmodel import LUEModel, YieldModel, fit_yield_model
from cropyield.yieldmodel.fit import _elasticity_posterior


def _series(n, values, start="2024-03-01", end="2024-07-30"):
    d = pd.date_range(start, end)
    parts = [pd.DataFrame({"field_id": f"v{i}", "time": d, "ndvi": values[i],
                           "gap_days": 0.0, "support": 1.0, "flags": ""}) for i in range(n)]
    return pd.concat(parts, ignore_index=True)


def _veg(n=40, seed=0, elasticity=None, noise=0.05):
    """``n`` vegetable fields with NDVI 0.45-0.85 and areas 0.05-1 ha; yields follow the vigour
    ratio with ``elasticity`` (None: unrelated to the canopy) around 28 t/ha."""
    rng = np.random.default_rng(seed)
    ndvi = rng.uniform(0.45, 0.85, n)
    ser = _series(n, ndvi)
    seasons = pd.DataFrame({"field_id": [f"v{i}" for i in range(n)], "season": 1,
                            "crop": "vegetables", "sos": pd.Timestamp("2024-03-20"),
                            "eos": pd.Timestamp("2024-07-10"),
                            "area_ha": rng.uniform(0.05, 1.0, n)})
    vr = LUEModel().vigour_ratios(LUEModel().features(ser, seasons))
    e = 0.0 if elasticity is None else elasticity
    y = 28.0 * vr ** e * np.exp(rng.normal(0, noise, n))
    if elasticity is None:
        y = 28.0 * np.exp(rng.normal(0, 0.15, n))
    cuts = pd.DataFrame({"field_id": seasons["field_id"], "season": 1, "yield_t_ha": y})
    return ser, seasons, cuts, vr


def test_county_level_sets_the_area_weighted_mean():
    """No crop cuts: the benchmark is levelled so that the area-weighted mean P50 of the given
    seasons is the county statistic; the elasticity stays at the registry's prior."""
    ser, seasons, _, vr = _veg()
    m = fit_yield_model(ser, None, crop="vegetables", method="lue", seasons=seasons,
                        county_mean_t_ha=26.0)
    p = m.predict(ser, seasons).merge(seasons[["field_id", "area_ha"]], on="field_id")
    mean = np.average(p["yield_t_ha_p50"], weights=p["area_ha"])
    assert mean == pytest.approx(26.0, rel=1e-9)
    cal = m.calibration["vegetables"]["north_china_plain"]
    assert cal["kind"] == "fitted_county" and cal["n"] == 0
    assert m.vigour["vegetables"]["elasticity"] == pytest.approx(0.5)
    # P50 = level x ratio ** 0.5: half the spread of the vigour ratio (in logs)
    lp = np.log(p["yield_t_ha_p50"].to_numpy())
    assert np.std(lp) == pytest.approx(0.5 * np.std(np.log(vr)), rel=1e-6)
    assert all("BENCHMARK_YIELD" in split_flags(f) for f in p["flags"])
    rec = json.loads(p["calibration"].iloc[0])
    assert rec["level"]["county_mean_t_ha"] == 26.0 and rec["vigour_elasticity"] == 0.5
    # the interval is the prior sigma widened by the level's uncertainty
    ratio = p["yield_t_ha_p90"] / p["yield_t_ha_p50"]
    assert (ratio > np.exp(1.2816 * 0.40)).all()
    # JSON round trip, and a file written before the vigour keyword still loads
    back = YieldModel.from_json(m.to_json())
    assert np.allclose(back.predict(ser, seasons)["yield_t_ha_p50"], p["yield_t_ha_p50"])
    d = json.loads(m.to_json())
    del d["params"]["vigour"]
    old = YieldModel.from_dict(d)
    assert old.vigour_elasticity("vegetables")["source"] == "crop registry prior"


def test_cuts_update_the_elasticity():
    """Many cuts that follow the vigour ratio pull the elasticity from the prior 0.5 towards
    1; many cuts unrelated to the canopy pull it towards 0; two cuts leave the prior."""
    ser, seasons, cuts, _ = _veg(n=60, elasticity=1.0, seed=1)
    m = fit_yield_model(ser, cuts, crop="vegetables", method="lue", seasons=seasons,
                        county_mean_t_ha=28.0)
    v = m.vigour["vegetables"]
    assert 0.8 < v["elasticity"] <= 1.2 and v["n_cuts"] == 60 and v["sd"] < 0.3
    assert m.calibration["vegetables"]["north_china_plain"]["kind"] == "fitted_county+cuts"
    assert m.cv_ is not None and m.cv_["n"] == 60            # cross-conformal on the cuts
    ser, seasons, cuts, _ = _veg(n=60, elasticity=None, seed=2)
    m0 = fit_yield_model(ser, cuts, crop="vegetables", method="lue", seasons=seasons,
                         county_mean_t_ha=28.0)
    e0 = m0.vigour["vegetables"]["elasticity"]
    assert e0 < 0.45 and v["elasticity"] - e0 > 0.4
    few = fit_yield_model(ser, cuts.iloc[:2], crop="vegetables", method="lue",
                          seasons=seasons, county_mean_t_ha=28.0)
    assert few.vigour["vegetables"]["elasticity"] == 0.5
    assert "< 3 crop cuts" in few.vigour["vegetables"]["source"]


def test_elasticity_posterior_is_conjugate():
    """Hand check of the normal-normal update on centred log ratios."""
    x = np.log(np.array([0.8, 0.9, 1.0, 1.1, 1.2]))
    r = 2.0 * x + 0.3
    b, sd = _elasticity_posterior(r, x, prior=0.5, prior_sd=0.5, sigma2=0.04)
    sxx = np.sum((x - x.mean()) ** 2)
    prec = 1 / 0.25 + sxx / 0.04
    assert b == pytest.approx((0.5 / 0.25 + 2.0 * sxx / 0.04) / prec)
    assert sd == pytest.approx(prec ** -0.5)
    assert _elasticity_posterior(r[:2], x[:2], prior=0.5, prior_sd=0.5, sigma2=0.04) == (0.5, 0.5)


def test_lue_crop_county_level_and_errors():
    """A grain crop: the calibration factor comes from the county statistic (no cuts needed);
    a non-positive statistic or no season of the crop is a clear error."""
    d = pd.date_range("2024-06-01", "2024-09-30")
    ser = pd.concat([pd.DataFrame({"field_id": f"m{i}", "time": d, "ndvi": 0.5 + 0.04 * i,
                                   "gap_days": 0.0, "support": 1.0, "flags": ""})
                     for i in range(6)], ignore_index=True)
    seasons = pd.DataFrame({"field_id": [f"m{i}" for i in range(6)], "season": 1,
                            "crop": "summer_maize", "sos": pd.Timestamp("2024-06-10"),
                            "eos": pd.Timestamp("2024-09-20"), "area_ha": 0.5})
    m = fit_yield_model(ser, None, crop="summer_maize", method="lue", seasons=seasons,
                        county_mean_t_ha=7.0)
    p = m.predict(ser, seasons)
    assert p["yield_t_ha_p50"].mean() == pytest.approx(7.0, rel=1e-9)
    assert p["yield_t_ha_p50"].is_monotonic_increasing      # the LUE spread is kept
    with pytest.raises(ModelError, match="positive"):
        fit_yield_model(ser, None, crop="summer_maize", method="lue", seasons=seasons,
                        county_mean_t_ha=0.0)
    with pytest.raises(ModelError, match="no usable"):
        fit_yield_model(ser, None, crop="summer_maize", method="lue",
                        seasons=seasons.assign(crop="soybean"), county_mean_t_ha=7.0)


def test_value_only_aggregate_calibrates_the_benchmark():
    """The aggregate form (a county mean as ``observed``) levels a value-only crop too
    (it used to raise: no raw LUE yield)."""
    ser, seasons, _, _ = _veg(n=10)
    m = fit_yield_model(ser, {"mean_yield_t_ha": 30.0}, crop="vegetables", method="lue",
                        seasons=seasons)
    p = m.predict(ser, seasons).merge(seasons[["field_id", "area_ha"]], on="field_id")
    assert np.average(p["yield_t_ha_p50"], weights=p["area_ha"]) == pytest.approx(30.0)


def test_fitted_vigour_reference_makes_estimates_batch_independent():
    """A fitted value-only model pins its vigour reference (the fitting seasons' median
    fAPAR): a field's P50 is the same estimated alone, with its batch, or with a batch of
    much weaker fields (an unfitted model rescales against each batch's median), and it
    survives a JSON round trip; files without the reference keep the batch median."""
    ser, seasons, _, vr = _veg()
    m = fit_yield_model(ser, None, crop="vegetables", method="lue", seasons=seasons,
                        county_mean_t_ha=26.0)
    ref = m.vigour_reference["vegetables"]
    feats = LUEModel().features(ser, seasons)
    assert ref["fapar"] == pytest.approx(np.median(feats["fapar_mean"]))
    assert ref["n_seasons"] == 40
    full = m.predict(ser, seasons).set_index("field_id")["yield_t_ha_p50"]
    one = seasons.iloc[[7]]
    alone = m.predict(ser[ser["field_id"] == "v7"], one)["yield_t_ha_p50"].iloc[0]
    assert alone == pytest.approx(full["v7"], rel=1e-12)
    # v7 with 6 weaker fields (NDVI 0.3): the batch median would fall, the ratio rise
    weak = _series(6, np.full(6, 0.3)).assign(
        field_id=lambda d: d["field_id"].str.replace("v", "w"))
    wseasons = seasons.iloc[:6].assign(field_id=[f"w{i}" for i in range(6)])
    mixed_ser = pd.concat([ser[ser["field_id"] == "v7"], weak], ignore_index=True)
    mixed_seas = pd.concat([one, wseasons], ignore_index=True)
    mixed = m.predict(mixed_ser, mixed_seas).set_index("field_id")["yield_t_ha_p50"]
    assert mixed["v7"] == pytest.approx(full["v7"], rel=1e-12)
    back = YieldModel.from_json(m.to_json())
    assert back.predict(mixed_ser, mixed_seas).set_index("field_id")[
        "yield_t_ha_p50"]["v7"] == pytest.approx(full["v7"], rel=1e-12)
    # a file written before the reference existed: ratios against the batch median again
    d = json.loads(m.to_json())
    del d["params"]["vigour_reference"]
    old = YieldModel.from_dict(d).predict(mixed_ser, mixed_seas).set_index("field_id")
    assert old["yield_t_ha_p50"]["v7"] > full["v7"] * 1.05
