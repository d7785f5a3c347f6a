"""Output value: price table, areas, production, value, flags."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box

from cropyield.errors import ConfigError, MissingCRSError, split_flags
from cropyield.value import ESTIMATE_COLUMNS, PriceRecord, PriceTable, estimate_yield
from cropyield.yieldmodel import LUEModel


# ----------------------------------------------------------------------------- prices

def test_price_lookup_dates_regions_and_conservative_rule(tmp_path):
    t = PriceTable()
    assert t.lookup("winter_wheat", "north_china_plain", "2024-06-10")["price_cny_per_kg"] == 2.36
    assert t.lookup("winter_wheat", "north_china_plain", "2025-06-10")["price_cny_per_t"] == 2380
    # regional record wins over the national one; other regions fall back to "china"
    assert t.lookup("rice_single", "northeast", "2024-10-01")["price_cny_per_kg"] == 2.62
    assert t.lookup("rice_single", "yangtze", "2024-10-01")["price_cny_per_kg"] == 2.58
    assert t.lookup("potato", "china", "1999-01-01") is None           # before any record
    assert t.lookup("durian", "china", "2024-01-01") is None
    rec = t.lookup("summer_maize", "north_china_plain", "2024-09-30")
    assert rec["records"][0]["type"] == "market" and rec["records"][0]["source"]
    # conservative: max(MSP, 0.9 x market)
    ct = t.with_records([
        {"crop": "winter_wheat", "region": "china", "price": 2.8, "unit": "CNY/kg",
         "type": "market", "valid_from": "2024-01-01", "source": "test quote"}])
    c = ct.lookup("winter_wheat", "x", "2024-06-10", conservative=True)
    assert c["price_cny_per_kg"] == pytest.approx(max(2.36, 0.9 * 2.8))
    assert len(c["records"]) == 2
    low = ct.with_records([
        {"crop": "winter_wheat", "region": "china", "price": 2.4, "unit": "CNY/kg",
         "type": "market", "valid_from": "2024-03-01", "source": "low quote"}])
    assert low.lookup("winter_wheat", "x", "2024-06-10", conservative=True)[
        "price_cny_per_kg"] == pytest.approx(2.36)                     # MSP floor
    assert t.lookup("summer_maize", "x", "2024-09-30", conservative=True)[
        "price_cny_per_kg"] == pytest.approx(0.9 * 2.3)
    # user TOML override (tomllib, safe)
    p = tmp_path / "p.toml"
    p.write_text('[[price]]\ncrop = "summer_maize"\nregion = "north_china_plain"\n'
                 'price = 2.55\nunit = "CNY/kg"\ntype = "contract"\nvalid_from = 2024-09-01\n'
                 'source = "coop contract"\n', encoding="utf-8")
    u = PriceTable.from_toml(p)
    assert u.lookup("summer_maize", "north_china_plain", "2024-09-30")["price_cny_per_kg"] == 2.55
    assert u.lookup("summer_maize", "north_china_plain", "2024-08-30")["price_cny_per_kg"] == 2.3
    assert PriceTable.from_toml(p, replace=True).lookup("winter_wheat", "x", "2024-07-01") is None


def test_bad_price_records():
    base = dict(crop="x", region="china", price=2.0, unit="CNY/kg", type="market",
                valid_from="2024-01-01", source="s")
    with pytest.raises(ConfigError, match="CNY/kg"):
        PriceRecord(**{**base, "unit": "CNY/jin"})
    with pytest.raises(ConfigError):
        PriceRecord(**{**base, "type": "guess"})
    with pytest.raises(ConfigError):
        PriceRecord(**{**base, "price": -1})
    with pytest.raises(ConfigError):
        PriceTable([{**base, "colour": "red"}])
    with pytest.raises(ConfigError):
        PriceTable.from_toml("/nonexistent/prices.toml")


@pytest.mark.parametrize("valid_from", ["2024-13-01", "yesterday", "", 20240101, None,
                                        pd.NaT, [2024]])
def test_price_record_with_a_bad_date_is_a_config_error(valid_from, tmp_path):
    base = dict(crop="x", region="china", price=2.0, unit="CNY/kg", type="market",
                valid_from=valid_from, source="NDRC")
    with pytest.raises(ConfigError, match=r"x/china.*valid_from.*is not a date.*YYYY-MM-DD"):
        PriceRecord(**base)
    with pytest.raises(ConfigError, match="valid_from"):
        PriceTable([base])
    assert PriceRecord(**{**base, "valid_from": pd.Timestamp("2024-01-01")}).valid_from.year \
        == 2024
    if isinstance(valid_from, str):
        toml = tmp_path / "prices.toml"
        toml.write_text('[[price]]\ncrop = "x"\nregion = "china"\nprice = 2.0\n'
                        'unit = "CNY/kg"\ntype = "market"\nsource = "s"\n'
                        f'valid_from = "{valid_from}"\n')
        with pytest.raises(ConfigError, match="valid_from"):
            PriceTable.from_toml(toml)


@pytest.mark.parametrize("price", ["abc", None, [2.0], True])
def test_price_record_with_a_non_numeric_price_is_a_config_error(price):
    with pytest.raises(ConfigError, match="price must be a positive number"):
        PriceRecord(crop="x", region="china", price=price, unit="CNY/kg", type="market",
                    valid_from="2024-01-01", source="s")


# ----------------------------------------------------------------------------- estimates

X0, Y0 = 560_000.0, 3_812_000.0      # UTM 50N, ~34.45°N 115.65°E (Henan)


def _fields():
    geoms = [box(X0, Y0, X0 + 100, Y0 + 50),          # 0.5 ha
             box(X0 + 200, Y0, X0 + 225, Y0 + 20),    # 0.05 ha -> FIELD_TOO_SMALL
             box(X0 + 300, Y0, X0 + 305, Y0 + 5),     # 25 m2 -> SUBPIXEL
             box(X0 + 400, Y0, X0 + 500, Y0 + 100)]   # 1 ha, double cropping
    return gpd.GeoDataFrame({
        "field_id": ["a", "b", "c", "d"], "farmer_id": ["h1", "h1", "h2", "h2"],
        "crop": ["summer_maize", "summer_maize", "summer_maize", "winter_wheat+summer_maize"],
        "declared_area_mu": [7.5, 1.5, np.nan, 22.0]}, geometry=geoms, crs="EPSG:32650")


def _series(fid, start, end, value=0.7, every=4):
    d = pd.date_range(start, end)
    gap = np.array([min(i % every, every - i % every) for i in range(len(d))], float)
    return pd.DataFrame({"field_id": fid, "time": d, "ndvi": value, "gap_days": gap,
                         "support": 1.0, "flags": ""})


def _inputs():
    ser = pd.concat([_series(f, "2023-10-01", "2024-10-15") for f in "abcd"])
    phen = pd.DataFrame({
        "field_id": ["a", "b", "c", "d", "d"], "season": [1, 1, 1, 1, 2],
        "sos": pd.to_datetime(["2024-06-25"] * 3 + ["2023-10-25", "2024-06-25"]),
        "pos": pd.to_datetime(["2024-08-10"] * 3 + ["2024-04-25", "2024-08-10"]),
        "eos": pd.to_datetime(["2024-09-25"] * 3 + ["2024-06-05", "2024-09-25"]),
        "flags": ""})
    return ser, phen


def test_estimate_yield_arithmetic_and_flags():
    ser, phen = _inputs()
    model = LUEModel()
    e = estimate_yield(ser, _fields(), phenology=phen, model=model)
    assert list(e.columns) == ESTIMATE_COLUMNS
    assert len(e) == 5
    e = e.set_index(["field_id", "season"])
    a = e.loc[("a", 1)]
    assert a["area_ha"] == pytest.approx(0.5, rel=1e-6)
    assert a["area_mu"] == pytest.approx(7.5, rel=1e-6)
    assert a["crop"] == "summer_maize" and a["yield_basis"] == "grain"
    for q in ("p10", "p50", "p90"):
        assert a[f"production_t_{q}"] == pytest.approx(a[f"yield_t_ha_{q}"] * 0.5, rel=1e-6)
        assert a[f"value_cny_{q}"] == pytest.approx(a[f"production_t_{q}"] * 2300.0, rel=1e-6)
    assert a["yield_t_ha_p10"] < a["yield_t_ha_p50"] < a["yield_t_ha_p90"]
    rec = json.loads(a["price_record"])
    assert rec["price_cny_per_t"] == 2300.0 and rec["records"][0]["crop"] == "summer_maize"
    assert json.loads(a["calibration"])["factor"] == pytest.approx(0.57)
    assert a["harvest_date"] == pd.Timestamp("2024-09-25")
    assert a["flags"] == "CROP_DECLARED" and 0 < a["quality"] <= 1
    # the same curve from the model directly
    direct = model.predict(ser, phen.iloc[:1].assign(crop="summer_maize"), lat=34.45)
    assert a["yield_t_ha_p50"] == pytest.approx(direct["yield_t_ha_p50"].iloc[0], rel=1e-3)
    b = e.loc[("b", 1)]
    assert "FIELD_TOO_SMALL" in split_flags(b["flags"]) and np.isfinite(b["yield_t_ha_p50"])
    assert b["quality"] < a["quality"]
    assert "AREA_MISMATCH" in split_flags(b["flags"])          # 1.5 mu declared vs 0.05 ha (0.75 mu)
    c = e.loc[("c", 1)]
    assert "SUBPIXEL_FIELD" in split_flags(c["flags"]) and np.isnan(c["yield_t_ha_p50"])
    assert np.isnan(c["value_cny_p50"]) and c["quality"] == 0
    # double cropping: two rows, wheat then maize, wheat priced at the 2024 MSP
    d1, d2 = e.loc[("d", 1)], e.loc[("d", 2)]
    assert (d1["crop"], d2["crop"]) == ("winter_wheat", "summer_maize")
    assert d1["price_cny_per_t"] == 2360.0 and d2["price_cny_per_t"] == 2300.0
    assert "AREA_MISMATCH" in split_flags(d1["flags"])         # 22 mu declared vs 15 mu
    # every NaN yield travels with a flag
    assert (e.loc[e["yield_t_ha_p50"].isna(), "flags"] != "").all()


def test_estimate_yield_prices_crops_and_as_of():
    ser, phen = _inputs()
    fields = _fields()
    model = LUEModel()
    # no price for the crop -> NaN value + NO_PRICE, yield kept
    e = estimate_yield(ser, fields, phenology=phen, model=model,
                       prices={"winter_wheat": 2.5})
    a = e.set_index(["field_id", "season"]).loc[("a", 1)]
    assert np.isfinite(a["yield_t_ha_p50"]) and np.isnan(a["value_cny_p50"])
    assert "NO_PRICE" in split_flags(a["flags"])
    # identify_crops output overrides declarations; low probability -> CROP_UNCERTAIN
    crops = pd.DataFrame({"field_id": ["a", "b", "c", "d", "d"], "season": [1, 1, 1, 1, 2],
                          "crop": ["soybean", "summer_maize", "summer_maize", "winter_wheat",
                                   "summer_maize"],
                          "crop_prob": [0.45, 0.9, 0.9, 0.95, 0.9], "flags": ""})
    e = estimate_yield(ser, fields, phenology=phen, model=model, crops=crops)
    a = e.set_index(["field_id", "season"]).loc[("a", 1)]
    assert a["crop"] == "soybean" and a["crop_prob"] == 0.45
    assert "CROP_UNCERTAIN" in split_flags(a["flags"]) and "CROP_DECLARED" not in a["flags"]
    # as_of before the maize harvest: no yield for unfinished seasons
    e = estimate_yield(ser, fields, phenology=phen, model=model,
                       as_of="2024-08-01")
    e = e.set_index(["field_id", "season"])
    assert np.isnan(e.loc[("a", 1), "yield_t_ha_p50"])
    assert "SEASON_INCOMPLETE" in split_flags(e.loc[("a", 1), "flags"])
    assert np.isfinite(e.loc[("d", 1), "yield_t_ha_p50"])      # wheat harvested in June
    # season selection
    e = estimate_yield(ser, fields, phenology=phen, model=model, season=2)
    assert list(e["field_id"]) == ["d"]
    # a model dict without a model for wheat -> NO_MODEL
    e = estimate_yield(ser, fields, phenology=phen,
                       model={"summer_maize": model})
    d1 = e.set_index(["field_id", "season"]).loc[("d", 1)]
    assert np.isnan(d1["yield_t_ha_p50"]) and "NO_MODEL" in split_flags(d1["flags"])


def test_missing_crs_raises():
    ser, phen = _inputs()
    f = _fields().set_crs(None, allow_override=True)
    with pytest.raises(MissingCRSError):
        estimate_yield(ser, f, phenology=phen)


def test_estimate_yield_on_synthetic_world_with_phenology():
    syn = pytest.importorskip("cropyield.synthetic")
    from cropyield.series import smooth_series
    cfg = syn.WorldConfig(n_fields=60)
    fields = syn.make_fields(cfg)
    ser = smooth_series(syn.simulate_observations(fields, cfg), index="ndvi")
    e = estimate_yield(ser, fields, model=LUEModel())
    assert list(e.columns) == ESTIMATE_COLUMNS
    assert set(e["field_id"]) == set(fields["field_id"])
    has = e["yield_t_ha_p50"].notna()
    assert has.mean() > 0.6
    assert (e.loc[~has, "flags"] != "").all()
    assert (e.loc[e["value_cny_p50"].isna(), "flags"] != "").all()
    from cropyield.errors import FLAGS
    assert {c for f in e["flags"] for c in split_flags(f)} <= set(FLAGS)
    ok = e[has & e["value_cny_p50"].notna()]
    assert (ok["value_cny_p10"] <= ok["value_cny_p50"]).all()
    assert (ok["value_cny_p50"] <= ok["value_cny_p90"]).all()
    truth = syn.true_seasons(fields, cfg)
    wheat = e[(e["crop"] == "winter_wheat") & has]
    assert 3.5 < wheat["yield_t_ha_p50"].mean() < 9.0
    assert abs(e.drop_duplicates("field_id")["area_ha"].sum()
               - fields["area_ha"].sum()) < 1e-6 * fields["area_ha"].sum() + 1e-3
    assert len(truth)
