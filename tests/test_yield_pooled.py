"""Opt-in pooled group features (cropyield.yieldmodel.pooled): group means, the feature
choice, fit / predict / estimate_yield with pool_by=, JSON round trip and older files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cropyield import cropmodel as cm
from cropyield.errors import FLAGS, ModelError, split_flags
from cropyield.series import smooth_series
from cropyield.yieldmodel import YieldModel, fit_yield_model
from cropyield.yieldmodel.pooled import (MIN_POOL_SEASONS, add_pooled_features,
                                         pool_labels, pooled_feature_names)
from cropyield.yieldmodel.weather import column_sets

IDX = ["ndvi", "evi2", "gcvi", "ndre", "ndmi"]


def test_group_means_by_hand():
    f = pd.DataFrame({"field_id": list("abcdefgh"), "season": 1,
                      "crop": ["w"] * 7 + ["m"],
                      "ndvi_int": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, np.nan, 100.0],
                      "ndvi_fill1": 1.0, "ndvi_intpost": 2.0})
    lab = pool_labels({"a": "g1", "b": "g1", "c": "g1", "d": "g1", "e": "g1", "f": "g1",
                       "g": "g1", "h": "g1"}, f)
    out = add_pooled_features(f, lab, indices=["ndvi"], crop="w", min_seasons=5)
    assert pooled_feature_names(["ndvi"]) == ["pool_ndvi_int", "pool_ndvi_fill1",
                                              "pool_ndvi_intpost"]
    # the other crop neither enters nor receives the mean; NaN values do not count
    np.testing.assert_allclose(out["pool_ndvi_int"].iloc[:7], 3.5)
    assert np.isnan(out["pool_ndvi_int"].iloc[7])
    # too few seasons in a group, or no label: NaN
    out2 = add_pooled_features(f, lab, indices=["ndvi"], crop="w", min_seasons=7)
    assert out2["pool_ndvi_int"].isna().all() and out2["pool_ndvi_fill1"].iloc[:7].eq(1).all()
    lab2 = pool_labels(pd.Series({"a": "g1"}), f)
    assert lab2[0] == "g1" and lab2[1] is None
    assert add_pooled_features(f, lab2, indices=["ndvi"], min_seasons=1)[
        "pool_ndvi_int"].iloc[1:].isna().all()
    with pytest.raises(ModelError, match="column"):
        pool_labels("county", f)


def test_column_sets_with_pooled_and_weather():
    names = ["log_apar", "ndvi_max", "ndvi_sum", "ndvi_int", "ndvi_fill1"]
    pl = pooled_feature_names(["ndvi"])
    wx = ["wx_fill_tmax_c", "wx_fill_rain_mm_d"]
    sets = column_sets(names + pl + wx)
    assert list(sets)[0] == "full" and sets["full"] == list(range(len(names)))
    assert "full+weather" not in sets
    assert sets["full+pooled+weather"] == list(range(len(names) + len(pl) + len(wx)))
    assert set(column_sets(names + pl)) >= {"full", "full+pooled"}


@pytest.fixture(scope="module")
def wheat():
    s = cm.simulate_seasons("winter_wheat", 80, seed=4)
    ser = smooth_series(s.observations, index=IDX)
    tr = s.truth
    pool = dict(zip(tr["field_id"], tr["weather_year"]))
    return s, ser, tr[["field_id", "season", "crop", "sos", "eos"]], \
        tr[["field_id", "season", "yield_t_ha"]], tr["weather_year"].to_numpy(), pool


def test_fit_predict_roundtrip_with_pool_by(wheat, tmp_path):
    s, ser, seasons, obs, wy, pool = wheat
    # a fixed penalty uses every offered column: the model carries the pooled features
    m = fit_yield_model(ser, obs, crop="winter_wheat", method="empirical", groups=wy,
                        seasons=seasons, pool_by=pool, alpha=1.0)
    assert m.pooled_features == pooled_feature_names(IDX)
    assert m.pool == {"indices": IDX, "suffixes": ["int", "fill1", "intpost"],
                      "min_seasons": MIN_POOL_SEASONS}
    path = tmp_path / "m.json"
    d = json.loads(m.to_json(path))
    assert d["schema_version"] == 5 and d["params"]["pool"]["min_seasons"] == 5
    m2 = YieldModel.from_json(path)
    p1 = m.predict(ser, seasons, pool_by=pool)
    pd.testing.assert_frame_equal(p1, m2.predict(ser, seasons, pool_by=pool))
    big = pd.Series(wy).value_counts()
    in_big = np.isin(wy, big.index[big >= MIN_POOL_SEASONS])
    assert p1["yield_t_ha_p50"].notna().to_numpy()[in_big].all()
    # a column of the seasons table works as well as a mapping
    p_col = m.predict(ser, seasons.assign(county=wy), pool_by="county")
    pd.testing.assert_frame_equal(p1, p_col)
    with pytest.raises(ModelError, match="pool_by="):
        m.predict(ser, seasons)
    # one field's estimate depends on the imagery of the others of its group
    year = big.index[0]
    grp = seasons["field_id"][wy == year].to_numpy()
    other = grp[1:]
    ser2 = ser.copy()
    sel = ser2["field_id"].isin(other)
    ser2.loc[sel, IDX] = ser2.loc[sel, IDX] * 0.8
    p2 = m.predict(ser2, seasons, pool_by=pool).set_index("field_id")
    assert not np.isclose(p2.loc[grp[0], "yield_t_ha_p50"],
                          p1.set_index("field_id").loc[grp[0], "yield_t_ha_p50"])
    # a group with too few seasons: NaN, FEW_POOLED (not a silent number)
    alone = dict(pool)
    alone[grp[0]] = "somewhere else"
    p3 = m.predict(ser, seasons, pool_by=alone).set_index("field_id")
    assert np.isnan(p3.loc[grp[0], "yield_t_ha_p50"])
    assert "FEW_POOLED" in split_flags(p3.loc[grp[0], "flags"]) and "FEW_POOLED" in FLAGS


def test_pool_by_is_opt_in_and_older_files_load(wheat):
    s, ser, seasons, obs, wy, pool = wheat
    m0 = fit_yield_model(ser, obs, crop="winter_wheat", method="empirical", groups=wy,
                         seasons=seasons, weather=s.weather)
    assert m0.pool is None and "pool" not in m0.to_dict()["params"]
    assert not any("pooled" in r["column_set"] for r in m0.learner["cv_mse"])
    d = m0.to_dict()
    d["schema_version"] = 4          # a file written before pooled features
    m4 = YieldModel.from_dict(json.loads(json.dumps(d)))
    pd.testing.assert_frame_equal(m4.predict(ser, seasons, weather=s.weather),
                                  m0.predict(ser, seasons, weather=s.weather))
    m1 = fit_yield_model(ser, obs, crop="winter_wheat", method="empirical", groups=wy,
                         seasons=seasons, weather=s.weather, pool_by=pool)
    assert {"full", "full+pooled+weather"} <= {r["column_set"] for r in m1.learner["cv_mse"]}
    with pytest.raises(ModelError, match="empirical"):
        fit_yield_model(ser, obs, crop="winter_wheat", method="lue", seasons=seasons,
                        pool_by=pool)


def test_estimate_yield_passes_pool_by(wheat):
    import geopandas as gpd
    from shapely.geometry import box

    from cropyield.value import estimate_yield

    s, ser, seasons, obs, wy, pool = wheat
    m = fit_yield_model(ser, obs, crop="winter_wheat", method="empirical", groups=wy,
                        seasons=seasons, pool_by=pool, alpha=1.0)
    fids = seasons["field_id"].to_numpy()
    fields = gpd.GeoDataFrame({"field_id": fids, "crop": "winter_wheat", "county": wy},
                              geometry=[box(500000 + 200 * i, 4000000, 500100 + 200 * i,
                                            4000100) for i in range(len(fids))],
                              crs=32650)
    phen = seasons.assign(pos=seasons["sos"] + (seasons["eos"] - seasons["sos"]) / 2)
    e = estimate_yield(ser, fields, model=m, phenology=phen, pool_by="county")
    want = m.predict(ser, seasons, pool_by=pool).set_index("field_id")["yield_t_ha_p50"]
    got = e.set_index("field_id")["yield_t_ha_p50"]
    ok = want.notna()
    assert ok.sum() > 20 and (~ok).sum() > 20   # groups under 5 seasons: NaN
    # same numbers up to the latitude estimate_yield takes from the geometry (log APAR)
    np.testing.assert_allclose(got[want.index[ok]], want[ok], rtol=1e-2)
    assert got[want.index[~ok]].isna().all()
    with pytest.raises(ModelError, match="pool_by="):
        estimate_yield(ser, fields, model=m, phenology=phen)
