"""Weather covariates: cropmodel weather on the simulated calendar, weather_features,
fit/estimate with weather= (JSON round trip, missing weather), old calls unchanged."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cropyield import cropmodel as cm
from cropyield.errors import FLAGS, ModelError, split_flags
from cropyield.series import smooth_series
from cropyield.yieldmodel import YieldModel, fit_yield_model, weather_features
from cropyield.yieldmodel.weather import MODEL_STATS, column_sets, weather_feature_names
from cropyield.yieldmodel.windows import feature_column_sets

IDX = ["ndvi", "evi2", "gcvi", "ndre", "ndmi"]


def _wx(fid, days, **cols):
    base = {"tmin_c": 10.0, "tmax_c": 20.0, "radiation_mj_m2": 18.0, "rain_mm": 2.0}
    base.update(cols)
    return pd.DataFrame({"field_id": fid, "time": days, **base})


def test_weather_features_hand_computed():
    days = pd.date_range("2022-04-01", periods=80)
    tmax = np.r_[np.full(30, 20.0), np.full(10, 34.0), np.full(40, 24.0)]
    rain = np.r_[np.zeros(30), np.full(36, 3.0), np.zeros(14)]
    wx = _wx("a", days, tmax_c=tmax, rain_mm=rain)
    wx = pd.concat([wx, _wx("b", days)], ignore_index=True)
    s = pd.DataFrame({"field_id": ["a", "b"], "season": [1, 1],
                      "sos": [days[0], days[0]], "pos": [days[30], days[30]]})
    f = weather_features(wx, s, fill_days=35).set_index("field_id")
    assert list(f.columns[1:]) == weather_feature_names()
    a = f.loc["a"]
    # SOS..POS-1: 30 days at 20 degC, no rain; POS..POS+35: 36 days, 10 of them at 34 degC
    assert a["wx_veg_tmax_c"] == pytest.approx(20.0) and a["wx_veg_rain_mm_d"] == 0.0
    assert a["wx_fill_tmax_c"] == pytest.approx((10 * 34 + 26 * 24) / 36)
    assert a["wx_fill_hot_share"] == pytest.approx(10 / 36)
    assert a["wx_fill_rain_mm_d"] == pytest.approx(3.0)
    assert f.loc["b", "wx_fill_radiation_mj_m2"] == pytest.approx(18.0)
    # tz-aware times (UTC) give the same numbers
    g = weather_features(wx.assign(time=wx["time"].dt.tz_localize("UTC")), s)
    pd.testing.assert_frame_equal(g.set_index("field_id"), f)


def test_weather_features_missing_and_bad_input():
    days = pd.date_range("2022-04-01", periods=80)
    wx = _wx("a", days)
    wx.loc[40:60, "tmax_c"] = np.nan               # 21 of the fill window's 36 days missing
    s = pd.DataFrame({"field_id": ["a", "zz"], "season": [1, 1],
                      "sos": [days[0]] * 2, "pos": [days[30]] * 2})
    f = weather_features(wx, s).set_index("field_id")
    assert np.isfinite(f.loc["a", "wx_veg_tmax_c"])
    assert f.loc["a", [c for c in f.columns if "_fill_" in c]].isna().all()
    assert f.loc["zz"].drop("season").isna().all()      # field without weather
    with pytest.raises(ModelError, match="rain_mm"):
        weather_features(wx.drop(columns="rain_mm"), s)
    with pytest.raises(ModelError, match="pos"):
        weather_features(wx, s.drop(columns="pos"))


def test_warped_weather_follows_the_time_warp():
    w = cm.load_weather("wheat")
    assert list(w.columns) == list(cm.WEATHER_COLUMNS) and w.index.is_unique
    assert (w.index[1:] - w.index[:-1] == pd.Timedelta(days=1)).all()
    em = pd.Timestamp("1985-01-01")
    t = np.arange(0.0, 60.0)
    out = cm.warped_weather("wheat", [em], [10.0], [2.0], t)
    # wscale 2 (two calendar days per run day): calendar day 10 + 2k sees run day k;
    # before t_a the calendar is not warped
    for k in (0, 7, 20):
        assert out["tmax_c"][0, 10 + 2 * k] == w.loc[em + pd.Timedelta(days=k), "tmax_c"]
    assert out["rain_mm"][0, 4] == w.loc[em - pd.Timedelta(days=6), "rain_mm"]
    warm = cm.warped_weather("maize", [em], [10.0], [2.0], t)
    np.testing.assert_allclose(warm["tmin_c"], out["tmin_c"] + 6.0, atol=0.051)


def test_simulated_weather_is_the_runs_weather_on_the_simulated_calendar():
    s = cm.simulate_seasons("winter_wheat", 6, seed=2)
    wx = s.weather
    assert set(wx.columns) == {"field_id", "time", *cm.WEATHER_COLUMNS}
    assert set(wx["field_id"]) == set(s.truth["field_id"])
    assert wx[list(cm.WEATHER_COLUMNS)].notna().all().all()
    lib = cm.load_library().set_index("run_id")
    w = cm.load_weather("wheat")
    for fid, run in zip(s.truth["field_id"], s.truth["run_id"]):
        r = lib.loc[run]
        lai = np.asarray(r["lai"])
        can = s.canopy[s.canopy["field_id"] == fid]
        peak = can.loc[can["lai"].idxmax(), "time"]
        got = wx[(wx["field_id"] == fid) & (wx["time"] == peak)]["tmax_c"].iloc[0]
        want = w.loc[pd.Timestamp(r["emergence"]) + pd.Timedelta(days=int(np.argmax(lai)))]
        # the calendar peak is the run's LAI peak up to the warp's rounding (one run day)
        near = [w.loc[pd.Timestamp(r["emergence"]) + pd.Timedelta(days=int(np.argmax(lai))
                                                                  + d), "tmax_c"]
                for d in (-1, 0, 1)]
        assert got in near, (fid, got, want["tmax_c"])


def test_column_sets_unchanged_without_weather():
    names = ["log_apar", "ndvi_max", "ndvi_sum", "ndvi_fill1", "pos_doy"]
    assert column_sets(names) == feature_column_sets(names)
    wx = weather_feature_names(("fill",))
    sets = column_sets(names + wx)
    assert list(sets)[0] == "full" and sets["full"] == list(range(len(names)))
    # "+weather": the MODEL_STATS pair of the five statistics; "+weather_all": all five
    pair = [len(names) + j for j, n in enumerate(wx)
            if n.endswith(tuple(f"_{s}" for s in MODEL_STATS))]
    assert len(pair) == 2
    assert sets["full+weather"] == list(range(len(names))) + pair
    assert sets["full+weather_all"] == list(range(len(names) + len(wx)))
    assert sets["compact+weather"][-2:] == pair
    assert sets["compact+weather_all"][-len(wx):] == list(range(len(names),
                                                                len(names) + len(wx)))
    # only the pair given: no "+weather_all" candidate
    two = column_sets(names + weather_feature_names(("fill",), MODEL_STATS))
    assert "full+weather_all" not in two
    assert two["full+weather"] == list(range(len(names) + 2))


@pytest.fixture(scope="module")
def wheat():
    s = cm.simulate_seasons("winter_wheat", 60, seed=4)
    ser = smooth_series(s.observations, index=IDX)
    tr = s.truth
    return s, ser, tr[["field_id", "season", "crop", "sos", "eos"]], \
        tr[["field_id", "season", "yield_t_ha"]], tr["weather_year"].to_numpy()


def test_fit_with_weather_roundtrip_and_missing_weather(wheat, tmp_path):
    s, ser, seasons, obs, wy = wheat
    # a fixed penalty uses every offered column: the model must carry the weather features
    m = fit_yield_model(ser, obs, crop="winter_wheat", method="empirical", groups=wy,
                        seasons=seasons, weather=s.weather, alpha=1.0)
    wxn = weather_feature_names(("fill",), MODEL_STATS)
    assert wxn == ["wx_fill_tmax_c", "wx_fill_rain_mm_d"]
    assert m.weather_features == wxn and m.weather == {"fill_days": 35, "hot_c": 30.0}
    path = tmp_path / "m.json"
    d = json.loads(m.to_json(path))
    assert d["schema_version"] == 5 and d["params"]["weather"]["fill_days"] == 35
    assert set(wxn) <= set(d["params"]["feature_names"])
    m2 = YieldModel.from_json(path)
    p1 = m.predict(ser, seasons, weather=s.weather)
    pd.testing.assert_frame_equal(p1, m2.predict(ser, seasons, weather=s.weather))
    assert p1["yield_t_ha_p50"].notna().all()
    # the weather moves the estimate: another field's weather gives other numbers
    swapped = s.weather.assign(field_id=s.weather["field_id"].map(
        dict(zip(seasons["field_id"], np.roll(seasons["field_id"].to_numpy(), 7)))))
    p_sw = m.predict(ser, seasons, weather=swapped)
    assert not np.allclose(p_sw["yield_t_ha_p50"], p1["yield_t_ha_p50"])
    # no weather at all: a clear error naming the keyword
    with pytest.raises(ModelError, match="weather="):
        m.predict(ser, seasons)
    # one field without weather: NaN with NO_WEATHER, the others unchanged
    gone = seasons["field_id"].iloc[0]
    p3 = m.predict(ser, seasons, weather=s.weather[s.weather["field_id"] != gone])
    r = p3.set_index("field_id")
    assert np.isnan(r.loc[gone, "yield_t_ha_p50"])
    assert "NO_WEATHER" in split_flags(r.loc[gone, "flags"]) and "NO_WEATHER" in FLAGS
    np.testing.assert_allclose(r.drop(gone)["yield_t_ha_p50"],
                               p1.set_index("field_id").drop(gone)["yield_t_ha_p50"])


def test_weather_is_a_candidate_chosen_by_grouped_cv(wheat):
    s, ser, seasons, obs, wy = wheat
    m0 = fit_yield_model(ser, obs, crop="winter_wheat", method="empirical", groups=wy,
                         seasons=seasons)
    m1 = fit_yield_model(ser, obs, crop="winter_wheat", method="empirical", groups=wy,
                         seasons=seasons, weather=s.weather)
    tried = {r["column_set"] for r in m1.learner["cv_mse"]}
    assert {"full", "full+weather"} <= tried
    assert not any(r["column_set"].endswith("+weather") for r in m0.learner["cv_mse"])
    # the call without weather= is the call it always was
    assert m0.weather is None and "weather" not in m0.to_dict()["params"]
    if not m1.learner["column_set"].endswith("+weather"):
        assert m1.weather is None and m1.feature_names == m0.feature_names
        pd.testing.assert_frame_equal(m1.predict(ser, seasons), m0.predict(ser, seasons))
    with pytest.raises(ModelError, match="LUE"):
        fit_yield_model(ser, obs, crop="winter_wheat", method="lue", seasons=seasons,
                        weather=s.weather)


def test_simulation_model_with_weather(wheat):
    s, ser, seasons, obs, wy = wheat
    lib = cm.simulate_seasons("winter_wheat", 50, seed=11)
    from cropyield.yieldmodel.simulation import train_on_simulations

    core = train_on_simulations(lib, crop="winter_wheat", indices=IDX, weather=True,
                                season_source="truth", alpha=1.0)
    assert core.weather_features
    m = fit_yield_model(ser, obs.iloc[:20], crop="winter_wheat", method="simulation",
                        simulated=core, seasons=seasons, weather=s.weather)
    p = m.predict(ser, seasons, weather=s.weather)
    assert p["yield_t_ha_p50"].notna().all() and m.level["n_cuts"] == 20
    with pytest.raises(ModelError, match="weather="):
        fit_yield_model(ser, obs.iloc[:20], crop="winter_wheat", method="simulation",
                        simulated=core, seasons=seasons)
    with pytest.raises(ModelError, match="simulated.weather"):
        train_on_simulations(lib.__class__(lib.observations, lib.truth, lib.canopy, lib.seed),
                             crop="winter_wheat", weather=True)


def test_world_field_weather_covers_crop_model_seasons():
    from cropyield import synthetic as syn

    cfg = syn.WorldConfig(n_fields=40, seed=1)
    wx = syn.field_weather(config=cfg)
    truth = syn.true_seasons(config=cfg)
    wof = truth[truth["yield_source"] == "wofost"]
    fields = syn.make_fields(cfg)
    assert len(wof) and set(wx["field_id"]) == set(fields["field_id"])
    assert not wx.duplicated(["field_id", "time"]).any()
    assert wx[["tmin_c", "tmax_c", "radiation_mj_m2", "rain_mm"]].notna().all().all()
    # every field has the world's whole period, on one weather year: its block's, which is
    # the weather year of its crop-model seasons
    n_days = len(cfg.days) + 20
    assert (wx.groupby("field_id").size() == n_days).all()
    assert (wx.groupby("field_id")["weather_year"].nunique() == 1).all()
    for r in wof.itertuples():
        w = wx[(wx["field_id"] == r.field_id)]
        days = w["time"]
        inside = w[(days >= r.sow_date) & (days <= r.harvest_date)]
        assert (inside["season"] > 0).all() and (w["weather_year"] == r.weather_year).all()
    # features over the seasons' own phenology are finite for every crop-model season
    f = weather_features(wx, wof)
    assert f[weather_feature_names(("fill",))].notna().all().all()
    # wheat grain fill (May-June) is warmer than its winter, maize is warm throughout
    wheat = f.merge(wof[["field_id", "season", "crop"]])
    assert (wheat.loc[wheat["crop"] == "winter_wheat", "wx_fill_tmax_c"] > 12).all()
