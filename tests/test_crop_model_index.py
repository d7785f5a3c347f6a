"""The crop-model weather index (cropmodel.reference_yield) and season covariates
(fit_yield_model / predict / estimate_yield / canopy_ceiling with covariates=)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from cropyield import cropmodel as cm
from cropyield.errors import ConfigError, ModelError, split_flags
from cropyield.series import smooth_series
from cropyield.yieldmodel import YieldModel, canopy_ceiling, fit_yield_model
from cropyield.yieldmodel.weather import (CROP_MODEL_FEATURE, column_sets, season_covariates,
                                          weather_feature_names)
from cropyield.yieldmodel.windows import feature_column_sets

from test_cropmodel import _need_pcse

IDX = ["ndvi", "evi2", "gcvi", "ndre", "ndmi"]


# ------------------------------------------------------------------ station weather, table
def test_station_weather_is_the_record_shifted_by_whole_years():
    f = pd.DataFrame({"field_id": ["a", "b"], "weather_year": [1985, 1988], "year": [1985, 2022]})
    st = cm.station_weather("winter_wheat", f)
    rec = cm.load_weather("wheat")
    a = st[st["field_id"] == "a"].set_index("time")
    assert a.index[0] == pd.Timestamp("1984-07-01") and a.index[-1] == pd.Timestamp("1985-12-31")
    pd.testing.assert_frame_equal(a[list(cm.WEATHER_COLUMNS)],
                                  rec.loc["1984-07-01":"1985-12-31", list(cm.WEATHER_COLUMNS)],
                                  check_names=False, check_freq=False)
    # 1988 is a leap year, 2022 is not: 29 Feb 1988 is dropped, every other day keeps its
    # month and day
    b = st[st["field_id"] == "b"].set_index("time")
    assert b.index.is_unique and b.index[0] == pd.Timestamp("2021-07-01")
    assert b.loc["2022-03-01", "tmax_c"] == rec.loc["1988-03-01", "tmax_c"]
    assert b.loc["2021-11-15", "rain_mm"] == rec.loc["1987-11-15", "rain_mm"]
    with pytest.raises(ConfigError, match="crop-model weather"):
        cm.station_weather("rice_single", f)


def test_shipped_index_table_covers_the_library_years_and_carries_weather_signal():
    t = cm.reference_index_table()
    lib = cm.load_library()
    for c in ("wheat", "maize"):
        yrs = set(lib.loc[lib["crop"] == c, "weather_year"])
        assert yrs <= set(t.loc[t["crop"] == c, "weather_year"])
        # the index follows the library's year-mean yield (same weather, other management)
        lm = lib[lib["crop"] == c].groupby("weather_year")["yield_t_ha"].mean()
        idx = cm.weather_year_index(c, lm.index)
        assert np.isfinite(idx).all() and (idx > 0).all()
        assert np.corrcoef(idx, lm.to_numpy())[0, 1] > 0.8
    v = cm.weather_year_index("winter_wheat", [1985, 1850, np.nan])
    assert np.isfinite(v[0]) and np.isnan(v[1:]).all()
    with pytest.raises(ConfigError, match="crop-model index"):
        cm.weather_year_index("rice_single", [1985])


# ------------------------------------------------------------------ WOFOST runs (pcse)
def test_reference_yield_reproduces_wofost_on_its_own_weather():
    _need_pcse()
    years = [1985, 1986]
    f = pd.DataFrame({"field_id": ["x", "y", "x2"], "weather_year": [1985, 1986, 1985],
                      "year": [1985, 1986, 1985]})
    st = cm.station_weather("wheat", f)
    sea = f.assign(season=1, pos=pd.to_datetime(["1985-05-01", "1986-05-01", "1985-05-01"]))
    r = cm.reference_yield(st, sea, "winter_wheat", lat=cm.WEATHER_LAT, soils=("medium",),
                           n_kg_ha=130.0)
    direct = [cm.run_wofost("wheat", y, soil="medium", n_kg_ha=130.0)["yield_t_ha"]
              for y in years]
    # same crop model and weather; vapour pressure and wind are FAO-56 defaults here
    # (the CABO files have measured ones): within 10 %
    np.testing.assert_allclose(r["cm_yield_t_ha"].to_numpy()[:2], direct, rtol=0.1)
    # a dry year (1986) stays far below a good one (1985), as WOFOST says
    assert r["cm_yield_t_ha"].iloc[0] > 1.5 * r["cm_yield_t_ha"].iloc[1]
    # two fields under one station: one number
    assert r["cm_yield_t_ha"].iloc[2] == r["cm_yield_t_ha"].iloc[0]
    # the shipped table is this function on the station records (all three soils)
    full = cm.reference_yield(st.iloc[:0].pipe(lambda _: st[st.field_id == "x"]),
                              sea.iloc[:1], "winter_wheat", lat=cm.WEATHER_LAT)
    np.testing.assert_allclose(full["cm_yield_t_ha"], cm.weather_year_index("wheat", [1985]),
                               atol=1e-3)


def test_reference_yield_missing_weather_and_bad_input(caplog):
    _need_pcse()
    f = pd.DataFrame({"field_id": ["a"], "weather_year": [1985], "year": [1985]})
    st = cm.station_weather("wheat", f)
    sea = pd.DataFrame({"field_id": ["a", "a", "b", "a"], "season": [1, 2, 1, 3],
                        "pos": pd.to_datetime(["1985-05-01", "1986-05-01", "1985-05-01",
                                               None])})
    with caplog.at_level(logging.WARNING):
        r = cm.reference_yield(st, sea, "wheat", lat=52.0, soils=("shallow",))
    # season 2 has no weather after its emergence, field b none at all, season 3 no date
    assert np.isfinite(r["cm_yield_t_ha"].iloc[0])
    assert r["cm_yield_t_ha"].iloc[1:].isna().all()
    # a gap in the weather during the run: NaN, logged
    holed = st[(st["time"] < "1985-03-01") | (st["time"] > "1985-03-10")]
    with caplog.at_level(logging.WARNING):
        r2 = cm.reference_yield(holed, sea.iloc[:1], "wheat", lat=52.0, soils=("shallow",))
    assert r2["cm_yield_t_ha"].isna().all() and "gaps in their weather" in caplog.text
    with pytest.raises(ConfigError, match="MM-DD"):
        cm.reference_yield(st, sea, "wheat", lat=52.0, emergence="13-45")
    with pytest.raises(ConfigError, match="soils"):
        cm.reference_yield(st, sea, "wheat", lat=52.0, soils=("clay",))
    with pytest.raises(ConfigError, match="WOFOST"):
        cm.reference_yield(st, sea, "cotton", lat=52.0)
    # emergence on each season's detected start instead of the calendar
    s1 = cm.reference_yield(st, sea.iloc[:1].assign(sos=pd.Timestamp("1985-01-20")), "wheat",
                            lat=52.0, soils=("shallow",), emergence="sos")
    assert np.isfinite(s1["cm_yield_t_ha"]).all()
    assert s1["cm_yield_t_ha"].iloc[0] != r["cm_yield_t_ha"].iloc[0]


# ------------------------------------------------------------------ season covariates
@pytest.fixture(scope="module")
def wheat():
    s = cm.simulate_seasons("winter_wheat", 90, seed=5)
    ser = smooth_series(s.observations, index=IDX)
    tr = s.truth
    cov = pd.DataFrame({"field_id": tr["field_id"],
                        CROP_MODEL_FEATURE: cm.weather_year_index("wheat", tr["weather_year"])})
    return (s, ser, tr[["field_id", "season", "crop", "sos", "eos"]],
            tr[["field_id", "season", "yield_t_ha"]], tr["weather_year"].to_numpy(), cov)


def test_season_covariates_checks_names():
    ok = season_covariates(pd.DataFrame({"field_id": ["a"], "crop": ["x"], "wx_cm": ["1.5"]}))
    assert ok["wx_cm"].dtype == float and list(ok.columns) == ["field_id", "crop", "wx_cm"]
    for bad in (pd.DataFrame({"field_id": ["a"], "soil_depth": [1.0]}),
                pd.DataFrame({"field_id": ["a"], "wx_fill_tmax_c": [1.0]}),
                pd.DataFrame({"field_id": ["a"]}),
                pd.DataFrame({"wx_cm": [1.0]})):
        with pytest.raises(ModelError):
            season_covariates(bad)


def test_column_sets_offer_covariates_with_the_weather_pair():
    names = ["ndvi_max", "ndvi_sum", "ndvi_pre30", "ndvi_post30", "ndvi_fill1"]
    base = feature_column_sets(names)
    wx = weather_feature_names(("fill",))
    sets = column_sets(names + wx + [CROP_MODEL_FEATURE])
    cm_j = len(names) + len(wx)
    assert cm_j in sets["full+weather"] and cm_j in sets["full+weather_all"]
    assert sets["full"] == base["full"]
    # covariates alone (no daily weather): the "+weather" sets are the covariates
    only = column_sets(names + [CROP_MODEL_FEATURE])
    assert only["full+weather"] == base["full"] + [len(names)]


def test_fit_with_covariates_roundtrip_errors_and_missing(wheat, tmp_path):
    s, ser, seasons, obs, wy, cov = wheat
    m = fit_yield_model(ser, obs, crop="winter_wheat", method="empirical", groups=wy,
                        seasons=seasons, covariates=cov, alpha=1.0)
    assert m.covariate_features == [CROP_MODEL_FEATURE] and m.weather is None
    path = tmp_path / "m.json"
    d = json.loads(m.to_json(path))
    assert CROP_MODEL_FEATURE in d["params"]["feature_names"]
    m2 = YieldModel.from_json(path)
    p1 = m.predict(ser, seasons, covariates=cov)
    pd.testing.assert_frame_equal(p1, m2.predict(ser, seasons, covariates=cov))
    assert p1["yield_t_ha_p50"].notna().all()
    # the covariate moves the estimate (positive coefficient: a better weather year)
    up = m.predict(ser, seasons, covariates=cov.assign(**{CROP_MODEL_FEATURE:
                                                          cov[CROP_MODEL_FEATURE] + 1.0}))
    assert (up["yield_t_ha_p50"].to_numpy() >= p1["yield_t_ha_p50"].to_numpy() - 1e-9).all()
    assert (up["yield_t_ha_p50"] > p1["yield_t_ha_p50"] + 1e-6).mean() > 0.5
    with pytest.raises(ModelError, match="covariates="):
        m.predict(ser, seasons)
    gone = seasons["field_id"].iloc[0]
    r = m.predict(ser, seasons, covariates=cov[cov["field_id"] != gone]).set_index("field_id")
    assert np.isnan(r.loc[gone, "yield_t_ha_p50"])
    assert "NO_WEATHER" in split_flags(r.loc[gone, "flags"])
    with pytest.raises(ModelError, match="covariates="):
        fit_yield_model(ser, obs, crop="winter_wheat", method="lue", seasons=seasons,
                        covariates=cov)


def test_crop_keyed_covariates_pick_the_seasons_crop(wheat):
    s, ser, seasons, obs, wy, cov = wheat
    m = fit_yield_model(ser, obs, crop="winter_wheat", method="empirical", groups=wy,
                        seasons=seasons, covariates=cov, alpha=1.0)
    # one row per crop of the field: the wheat season takes the wheat row
    both = pd.concat([cov.assign(crop="winter_wheat"),
                      cov.assign(crop="summer_maize", **{CROP_MODEL_FEATURE: 99.0})])
    pd.testing.assert_frame_equal(m.predict(ser, seasons, covariates=both),
                                  m.predict(ser, seasons, covariates=cov))


def test_crop_model_index_is_chosen_and_lifts_held_out_wheat(wheat):
    """Held-out weather years: the index carries the year-level yield the canopy misses."""
    s, ser, seasons, obs, wy, cov = wheat
    m0 = fit_yield_model(ser, obs, crop="winter_wheat", method="empirical", groups=wy,
                         seasons=seasons)
    m1 = fit_yield_model(ser, obs, crop="winter_wheat", method="empirical", groups=wy,
                         seasons=seasons, covariates=cov)
    assert m1.learner["column_set"].endswith("+weather")
    assert m1.cv_["r2"] > m0.cv_["r2"] + 0.1
    # the ceiling of a model with the covariate sits above the canopy-only one
    c0 = canopy_ceiling(s.canopy, s.truth, groups="weather_year", seasons=seasons)
    c1 = canopy_ceiling(s.canopy, s.truth, groups="weather_year", seasons=seasons,
                        covariates=cov)
    assert c1["r2"] > c0["r2"]


def test_simulation_model_with_the_crop_model_index(wheat):
    s, ser, seasons, obs, wy, cov = wheat
    from cropyield.yieldmodel.simulation import train_on_simulations

    lib = cm.simulate_seasons("winter_wheat", 60, seed=12)
    core = train_on_simulations(lib, crop="winter_wheat", indices=IDX, season_source="truth",
                                covariates=True, alpha=1.0)
    assert core.covariate_features == [CROP_MODEL_FEATURE]
    m = fit_yield_model(ser, obs.iloc[:20], crop="winter_wheat", method="simulation",
                        simulated=core, seasons=seasons, covariates=cov)
    p = m.predict(ser, seasons, covariates=cov)
    assert p["yield_t_ha_p50"].notna().all() and m.level["n_cuts"] == 20
    with pytest.raises(ModelError, match="covariates="):
        fit_yield_model(ser, obs.iloc[:20], crop="winter_wheat", method="simulation",
                        simulated=core, seasons=seasons)
    # simulations (not a pre-trained model) get only the crop-model index
    with pytest.raises(ModelError, match="only the crop-model index"):
        fit_yield_model(ser, obs.iloc[:20], crop="winter_wheat", method="simulation",
                        simulated=lib, seasons=seasons,
                        covariates=cov.assign(wx_soil_depth=1.0))
    with pytest.raises(ModelError, match="weather_year"):
        train_on_simulations(lib.__class__(lib.observations, lib.truth.drop(
            columns="weather_year"), lib.canopy, lib.seed), crop="winter_wheat",
            season_source="truth", covariates=True)
