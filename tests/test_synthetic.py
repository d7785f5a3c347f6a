"""Tests of the synthetic Sentinel-2 world (cropyield.synthetic)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cropyield import synthetic as sy
from cropyield.errors import ConfigError, split_flags

# a small world: 2 overlapping tiles of 2.56 km, ~3 months, for fast tests
SMALL = dict(size_m=(4200.0, 2400.0), tile_size_px=256, tile_overlap_px=88, n_fields=120,
             start="2022-01-01", end="2022-03-31")


@pytest.fixture(scope="module")
def cfg():
    return sy.WorldConfig()


@pytest.fixture(scope="module")
def fields(cfg):
    return sy.make_fields(cfg)


@pytest.fixture(scope="module")
def seasons(cfg, fields):
    return sy.true_seasons(fields, cfg)


# ---------------------------------------------------------------------------- config
def test_config_key_stable_and_sensitive():
    a, b = sy.WorldConfig(), sy.WorldConfig()
    assert a.key() == b.key() and len(a.key()) == 16
    assert sy.WorldConfig(seed=1).key() != a.key()
    assert sy.WorldConfig.from_dict(json.loads(json.dumps(a.to_dict()))) == a


@pytest.mark.parametrize("kw", [dict(tile_size_px=401), dict(tile_overlap_px=300),
                                dict(cloud_fraction=1.5), dict(end="2020-01-01"),
                                dict(size_m=100)])
def test_config_rejects_bad_values(kw):
    with pytest.raises(ConfigError):
        sy.WorldConfig(**kw)


def test_tiles_overlap_nest_and_have_mgrs_names(cfg):
    tiles = cfg.tiles
    assert len(tiles) == 2
    assert [t.name for t in tiles] == ["50SLD", "50SMD"]   # Shangqiu lies in MGRS 50SLD
    a, b = tiles[0].bounds, tiles[1].bounds
    assert a[2] - b[0] == pytest.approx(cfg.tile_overlap_px * 10)
    for t in tiles:   # origins on the 60 m lattice so 10/20/60 m grids nest
        assert t.transform10.c % 60 == 0 and t.transform10.f % 60 == 0
    assert cfg.epsg == 32650


def test_scene_plan(cfg):
    sc = cfg.scenes
    dates = cfg.dates
    assert len(dates) == 80
    base = [s for s in sc if s.sequence == 0]
    assert len(base) == len(dates) * len(cfg.tiles)
    dup = [s for s in sc if s.sequence == 1]
    assert len(dup) == cfg.n_reprocessed
    for d in dup:
        orig = next(s for s in base if s.tile == d.tile and s.datetime == d.datetime)
        assert d.generation_time > orig.generation_time
        assert float(d.processing_baseline) > float(orig.processing_baseline)
    # baseline rule: 04.00 from 2022-01-25, and offsets follow the baseline
    for s in base:
        assert (s.processing_baseline >= "04.00") == (s.datetime >= pd.Timestamp("2022-01-25", tz="UTC"))
        assert s.boa_offset_dn == (1000 if s.processing_baseline >= "04.00" else 0)
    plats = [s.platform for s in base if s.tile.name == "50SLD"]
    assert plats[:4] == ["sentinel-2a", "sentinel-2b", "sentinel-2a", "sentinel-2b"]
    assert all(s.datetime.hour == 2 and 40 <= s.datetime.minute <= 41 for s in sc)
    assert sc[0].id.startswith("S2A_50SLD_20211001_0_L2A")


# ---------------------------------------------------------------------------- fields
def test_fields_distribution(fields):
    assert len(fields) == 400
    assert fields.crs.to_epsg() == 32650
    assert fields["field_id"].is_unique
    normal = fields[fields["edge_case"].isin(["", "straddle"])]
    a = normal.geometry.area / 10_000
    assert 0.22 <= a.median() <= 0.40
    assert a.min() >= 0.05 and a.max() <= 2.0
    # log-normal-ish: log areas roughly symmetric
    la = np.log(a)
    assert abs(la.mean() - la.median()) < 0.25
    per_farmer = fields.groupby("farmer_id").size()
    assert per_farmer.min() >= 1 and per_farmer.max() <= 10
    # no overlaps between fields
    import shapely
    g = fields.geometry.values
    tree = shapely.STRtree(g)
    i, j = tree.query(g, predicate="intersects")
    pairs = [(a_, b_) for a_, b_ in zip(i, j) if a_ < b_]
    overl = sum(shapely.area(shapely.intersection(g[a_], g[b_])) for a_, b_ in pairs)
    assert overl < 1.0   # m2, shared edges only


def test_fields_edge_cases_and_crops(cfg, fields):
    ec = fields["edge_case"]
    assert (ec == "subpixel").sum() == 1 and (ec == "sliver").sum() == 1
    assert (ec == "straddle").sum() >= 1
    sub = fields[ec == "subpixel"].geometry.area.iloc[0]
    assert sub < 100.0
    # a straddling field really crosses the east edge of the west tile
    import shapely
    t0 = cfg.tiles[0]
    st = fields[ec == "straddle"].geometry
    assert any(g.intersects(shapely.box(*t0.bounds).exterior) for g in st)
    share = fields["true_crop"].value_counts(normalize=True)
    assert share.index[0] == "winter_wheat+summer_maize" and 0.35 < share.iloc[0] < 0.7
    assert {"fallow", "peanut", "rice_single", "cotton"} <= set(share.index)
    wrong = (fields["crop"] != fields["true_crop"]).mean()
    assert 0.01 <= wrong <= 0.12
    ratio = fields["declared_area_mu"] / (fields["area_ha"] * 15)
    assert ratio.median() == pytest.approx(1.0, abs=0.1)
    assert (ratio > 1.4).sum() + (ratio < 0.6).sum() >= 2     # a few big misdeclarations


def test_fields_deterministic_and_seed_sensitive(cfg, fields):
    again = sy.make_fields(sy.WorldConfig())
    assert again.equals(fields) or (again.to_wkb().equals(fields.to_wkb()))
    other = sy.make_fields(sy.WorldConfig(seed=7))
    assert not other.geometry.iloc[:20].equals(fields.geometry.iloc[:20])


# ---------------------------------------------------------------------------- canopy
def test_canopy_physics_and_calendar(cfg, fields):
    cn = sy.true_canopy(fields, cfg)
    assert set(cn.columns) >= {"field_id", "time", "season", "crop", "lai", "fcover", "ndvi",
                               "evi2", "ndre", "ndmi"}
    assert cn["time"].dt.tz is None
    assert len(cn) == len(fields) * len(cfg.days)
    # fcover from Beer's law and NDVI grows with LAI
    assert cn["fcover"].between(0, 1).all() and cn["ndvi"].between(-0.3, 0.95).all()
    assert np.corrcoef(cn["fcover"], cn["ndvi"])[0, 1] > 0.9
    wm = fields.loc[fields["true_crop"] == "winter_wheat+summer_maize", "field_id"]
    x = cn[cn["field_id"].isin(wm)]
    mon = x.groupby(x["time"].dt.month)["ndvi"].mean()
    assert mon[4] > 0.7 and mon[8] > 0.7            # wheat peak in April, maize in August
    assert mon[6] < mon[4] - 0.2                    # harvest gap in June
    assert mon[1] < mon[4] - 0.2                    # winter dormancy
    fal = cn[cn["field_id"].isin(fields.loc[fields["true_crop"] == "fallow", "field_id"])]
    assert (fal["season"] == 0).all() and fal["ndvi"].max() < 0.35


def test_seasons_truth(cfg, fields, seasons):
    s = seasons
    assert set(s.columns) >= {"field_id", "season", "crop", "sow_date", "sos", "pos", "eos",
                              "harvest_date", "true_yield_t_ha", "true_production_t"}
    dbl = fields.loc[fields["true_crop"] == "winter_wheat+summer_maize", "field_id"]
    assert (s[s["field_id"].isin(dbl)].groupby("field_id").size() == 2).all()
    assert not s["field_id"].isin(fields.loc[fields["true_crop"] == "fallow", "field_id"]).any()
    assert (s["sow_date"] <= s["sos"]).all() and (s["sos"] < s["pos"]).all()
    assert (s["pos"] <= s["eos"]).all() and (s["eos"] <= s["harvest_date"]).all()
    w = s[s["crop"] == "winter_wheat"]
    assert w["sow_date"].dt.month.eq(10).all() and w["harvest_date"].dt.month.isin([5, 6]).all()
    assert w["pos"].dt.month.isin([4, 5]).all()
    m = s[s["crop"] == "summer_maize"]
    assert m["pos"].dt.month.isin([7, 8, 9]).all()
    # yields near NBS 2024 means, inside sanity ranges
    means = s.groupby("crop")["true_yield_t_ha"].mean()
    assert means["winter_wheat"] == pytest.approx(5.94, rel=0.12)
    assert means["summer_maize"] == pytest.approx(6.59, rel=0.12)
    assert s.loc[s["crop"] == "winter_wheat", "true_yield_t_ha"].between(1.5, 11).all()
    assert np.allclose(s["true_production_t"], s["true_yield_t_ha"] * s["area_ha"])


def test_yield_not_a_function_of_peak_ndvi(seasons):
    for crop in ("winter_wheat", "summer_maize"):
        x = seasons[seasons["crop"] == crop]
        r = np.corrcoef(x["peak_ndvi"], x["true_yield_t_ha"])[0, 1]
        assert 0.1 < r < 0.95, (crop, r)
    # post-peak stress cuts yield much more than it cuts greenness
    x = seasons[seasons["crop"] == "winter_wheat"]
    low = x["stress"] < 0.85
    assert low.sum() > 3
    dy = 1 - x.loc[low, "true_yield_t_ha"].mean() / x.loc[~low, "true_yield_t_ha"].mean()
    dn = 1 - x.loc[low, "peak_ndvi"].mean() / x.loc[~low, "peak_ndvi"].mean()
    assert dy > 3 * max(dn, 0.01)


# ---------------------------------------------------------------------------- observations
@pytest.fixture(scope="module")
def small_cfg():
    return sy.WorldConfig(**SMALL)


def test_observations_contract(small_cfg):
    f = sy.make_fields(small_cfg)
    o = sy.simulate_observations(f, small_cfg, indices=("ndvi", "ndre"))
    assert list(o.columns) == ["field_id", "time", "scene_id", "tile", "coverage",
                               "valid_fraction", "ndvi", "ndvi_std", "ndre", "ndre_std", "flags"]
    assert str(o["time"].dtype) == "datetime64[ns, UTC]"
    assert o["valid_fraction"].between(0, 1).all()
    masked = o["valid_fraction"] == 0
    assert masked.any() and (~masked).any()
    assert o.loc[masked, "ndvi"].isna().all()
    assert o.loc[masked, "flags"].map(lambda c: "ALL_MASKED" in split_flags(c)).all()
    assert o.loc[~masked, "ndvi"].notna().all()
    # every NaN travels with a flag
    assert (o.loc[o["ndvi"].isna(), "flags"] != "").all()
    # straddling fields get rows from both tiles on the same date
    st = f.loc[f["edge_case"] == "straddle", "field_id"]
    both = o[o["field_id"].isin(st)].groupby(["field_id", o["time"].dt.date])["tile"].nunique()
    assert (both == 2).any()
    # reprocessed duplicates appear as extra scenes
    assert o["scene_id"].str.endswith("_1_L2A").any()
    assert o.attrs["scene_ids"] and o.attrs["bytes_read"] == 0
    again = sy.simulate_observations(f, small_cfg, indices=("ndvi", "ndre"))
    pd.testing.assert_frame_equal(o, again)


def test_observations_clouds_bias_low_and_cloud_rate(cfg, fields):
    o = sy.simulate_observations(fields, cfg)
    cn = sy.true_canopy(fields, cfg)
    m = o.assign(day=o["time"].dt.tz_localize(None).dt.normalize()).merge(
        cn[["field_id", "time", "ndvi"]].rename(columns={"time": "day", "ndvi": "true"}),
        on=["field_id", "day"])
    clear = m[m["valid_fraction"] > 0.99]
    part = m[(m["valid_fraction"] > 0) & (m["valid_fraction"] < 0.9)]
    err = clear["ndvi"] - clear["true"]
    assert abs(err.median()) < 0.015 and err.abs().median() < 0.03
    assert (part["ndvi"] - part["true"]).median() < -0.01        # residual haze biases low
    # about half of the field-dates are unusable (cloud fraction 0.5)
    bad = (o["valid_fraction"] < 0.5).mean()
    assert 0.25 < bad < 0.6
