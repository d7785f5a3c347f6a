"""Tests of the crop-model seasons (cropyield.cropmodel): the shipped WOFOST library, the
simulated observations, and WOFOST itself where PCSE is installed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cropyield import cropmodel as cm
from cropyield.errors import ConfigError


def _need_pcse():
    """Skip without PCSE; import it the way the library does (cropmodel._pcse), because a
    bare ``import pcse`` reconfigures the process's logging for every later test."""
    import importlib.util

    if importlib.util.find_spec("pcse") is None:
        pytest.skip("PCSE not installed (extra [pcse])")
    from cropyield.cropmodel import _pcse

    _pcse()


@pytest.fixture(scope="module")
def lib():
    return cm.load_library()


def test_library_loads_and_covers_the_design(lib):
    assert {"run_id", "crop", "weather_year", "emergence_offset_d", "soil", "n_kg_ha",
            "irrigations", "emergence", "maturity", "yield_t_ha", "laimax", "lai"} <= set(lib)
    assert set(lib["crop"]) == {"wheat", "maize"}
    assert lib["run_id"].is_unique
    design = cm.library_runs(0)
    assert len(lib) == len(design)        # every scenario of the seeded design ran
    for c, g in lib.groupby("crop"):
        assert g["weather_year"].nunique() >= 20, c
        assert set(g["soil"]) == set(cm.SOILS)
        assert g["n_kg_ha"].between(0, 300).all() and g["n_kg_ha"].std() > 30
        lengths = g["lai"].map(len)
        assert (lengths > 90).all() and (lengths < 301).all()
        # the stored LAI is the run's: its maximum is the summary LAIMAX
        assert np.allclose(g["lai"].map(np.max), g["laimax"], atol=0.01)
        assert g["yield_t_ha"].between(0, 16).all()


def test_yield_responds_to_nitrogen_and_weather(lib):
    for c, g in lib.groupby("crop"):
        low = g.loc[g["n_kg_ha"] < 70, "yield_t_ha"].mean()
        high = g.loc[g["n_kg_ha"] > 180, "yield_t_ha"].mean()
        assert high > 1.3 * low, (c, low, high)
        # nitrogen shows in the canopy too (leaf photosynthesis and expansion)
        assert np.corrcoef(np.log1p(g["n_kg_ha"]), g["laimax"])[0, 1] > 0.3
        # weather years differ: between-year share of the yield variance is material
        yr = g.groupby("weather_year")["yield_t_ha"].transform("mean")
        assert yr.var() / g["yield_t_ha"].var() > 0.1, c
    # irrigation lifts rainfed maize in dry years on the warm analogue
    m = lib[lib["crop"] == "maize"]
    assert m.loc[m["irrigations"] >= 2, "yield_t_ha"].mean() > \
        m.loc[m["irrigations"] == 0, "yield_t_ha"].mean()


@pytest.fixture(scope="module")
def sim():
    return cm.simulate_seasons("winter_wheat", 24, seed=5)


def test_simulate_seasons_contract(sim):
    assert isinstance(sim, cm.SimulatedSeasons) and sim.seed == 5
    obs, truth, can = sim.observations, sim.truth, sim.canopy
    assert {"field_id", "time", "ndvi", "evi2", "gcvi", "ndre", "ndmi", "valid_fraction",
            "coverage", "flags"} <= set(obs)
    assert str(obs["time"].dt.tz) == "UTC"
    assert {"field_id", "crop", "season", "yield_t_ha", "weather_year", "soil", "sowing_date",
            "n_kg_ha", "sos", "eos"} <= set(truth)
    assert {"field_id", "time", "lai", "ndvi", "evi2", "gcvi", "ndre", "ndmi"} <= set(can)
    assert truth["field_id"].is_unique and len(truth) == 24
    assert set(obs["field_id"]) == set(truth["field_id"]) == set(can["field_id"])
    assert (truth["sos"] < truth["eos"]).all()
    assert obs["valid_fraction"].between(0, 1).all()
    # ~5-day revisit: 40-80 acquisitions a season, clouds drop some
    n = obs.groupby("field_id").size()
    assert n.between(30, 80).all()
    # truth is the library's: same yields
    lib = cm.load_library().set_index("run_id")
    assert np.allclose(truth["yield_t_ha"], lib.loc[truth["run_id"], "yield_t_ha"])
    # the noise-free canopy follows LAI; the observations scatter around it, biased low
    # by haze
    m = obs.assign(day=obs["time"].dt.tz_localize(None)).merge(
        can, left_on=["field_id", "day"], right_on=["field_id", "time"], suffixes=("", "_true"))
    d = m["ndvi"] - m["ndvi_true"]
    assert abs(d.median()) < 0.03 and d.mean() < 0
    assert np.corrcoef(m["ndvi"], m["ndvi_true"])[0, 1] > 0.9


def test_simulate_seasons_deterministic(sim):
    again = cm.simulate_seasons("winter_wheat", 24, seed=5)
    pd.testing.assert_frame_equal(sim.observations, again.observations)
    pd.testing.assert_frame_equal(sim.truth, again.truth)
    other = cm.simulate_seasons("winter_wheat", 24, seed=6)
    assert not other.truth["run_id"].equals(sim.truth["run_id"])


def test_simulate_seasons_filters_and_errors():
    s = cm.simulate_seasons("summer_maize", 12, seed=1, weather_years=[1980, 1981])
    assert set(s.truth["weather_year"]) <= {1980, 1981}
    assert (s.truth["crop"] == "summer_maize").all()
    with pytest.raises(ConfigError, match="no crop-model seasons"):
        cm.simulate_seasons("cotton", 5)
    with pytest.raises(ConfigError, match="weather years"):
        cm.simulate_seasons("wheat", 5, weather_years=[1850])


def test_wofost_reproduces_the_library_and_responds_as_wofost_says(lib, monkeypatch):
    _need_pcse()
    row = lib[lib["crop"] == "maize"].iloc[3]
    res = cm.run_wofost("maize", int(row["weather_year"]),
                        emergence_offset_d=row["emergence_offset_d"], soil=row["soil"],
                        n_kg_ha=row["n_kg_ha"], irrigations=int(row["irrigations"]))
    assert res["yield_t_ha"] == pytest.approx(row["yield_t_ha"], rel=1e-3)
    assert np.allclose(res["lai"], row["lai"], atol=2e-3)
    # more nitrogen, more yield and more leaf area, same weather and soil
    lo = cm.run_wofost("maize", 1984, soil="deep", n_kg_ha=20, irrigations=2)
    hi = cm.run_wofost("maize", 1984, soil="deep", n_kg_ha=250, irrigations=2)
    assert hi["yield_t_ha"] > 1.2 * lo["yield_t_ha"] and hi["laimax"] > lo["laimax"]
    with pytest.raises(ConfigError):
        cm.run_wofost("maize", 1990)


def test_importing_pcse_leaves_home_and_our_logger_alone(caplog):
    """PCSE's import reconfigures logging (disable_existing_loggers) and writes under $HOME:
    neither may leak into the process that uses cropyield."""
    import logging
    import os

    _need_pcse()
    from cropyield._log import logger
    from cropyield.cropmodel import _pcse

    home = os.environ.get("HOME")
    _pcse()
    assert os.environ.get("HOME") == home
    with caplog.at_level(logging.DEBUG, logger="cropyield"):
        logger.warning("retrying %s", "https://h/B04.tif?sig=topsecret")
    assert "REDACTED" in caplog.text and "topsecret" not in caplog.text


def test_sentinel2_sky_observes_like_the_synthetic_world():
    """sky="sentinel2": summer (monsoon) dates are cloudier than winter ones, clouds mask
    whole fields (no partly valid rows), small fields carry their surroundings (edge mixing
    pulls a dense canopy's NDVI down, more on small fields), the truth is the same runs'."""
    kw = dict(seed=4)
    mz_u = cm.simulate_seasons("summer_maize", 40, **kw)
    mz = cm.simulate_seasons("summer_maize", 40, sky="sentinel2", **kw)
    wh = cm.simulate_seasons("winter_wheat", 40, sky="sentinel2", **kw)
    pd.testing.assert_frame_equal(mz.truth.drop(columns=["area_ha", "perimeter_m"]),
                                  mz_u.truth)
    o = mz.observations
    # the field's size (as the user knows it from its polygon) is the observed one: a 2:1
    # rectangle of `coverage` 10 m pixels
    px = o.groupby("field_id")["coverage"].first()
    t = mz.truth.set_index("field_id")
    assert np.allclose(t["area_ha"], px.reindex(t.index) * 0.01)
    assert np.allclose(t["perimeter_m"], 6 * np.sqrt(t["area_ha"] * 1e4 / 2))
    assert (o["valid_fraction"] == 1.0).all() and (mz_u.observations["valid_fraction"] < 1).any()
    # usable acquisitions per 5-day slot: summer maize loses more than winter wheat
    def kept(sim):
        c = sim.canopy.groupby("field_id")["time"].agg(["min", "max"])
        days = (c["max"] - c["min"]).dt.days + 1
        return float((sim.observations.groupby("field_id").size() / (days / 5)).mean())
    assert kept(mz) < kept(wh) and kept(mz) < kept(mz_u)
    m = o.assign(day=o["time"].dt.tz_localize(None)).merge(
        mz.canopy, left_on=["field_id", "day"], right_on=["field_id", "time"],
        suffixes=("", "_true"))
    dense = m[m["ndvi_true"] > 0.8]
    d = dense["ndvi"] - dense["ndvi_true"]
    assert d.median() < -0.01
    small = dense["coverage"] < dense["coverage"].median()
    assert d[small].mean() < d[~small].mean()
    assert o["coverage"].median() < mz_u.observations["coverage"].median()
    again = cm.simulate_seasons("summer_maize", 40, sky="sentinel2", **kw)
    pd.testing.assert_frame_equal(again.observations, o)
    with pytest.raises(ConfigError, match="sky"):
        cm.simulate_seasons("summer_maize", 5, sky="landsat")


def test_wheat_edge_pixels_see_bare_neighbours():
    """sky="sentinel2" winter wheat: 42 % of its neighbours are bare through its season
    (NEIGHBOUR_CANOPY_SHARE 0.58), so a small field's dense canopy loses more NDVI to its
    edge pixels than with all-wheat neighbours - and the loss grows with the canopy (an
    edge pixel mixes the field's own index with the surroundings'). The runs, the field
    sizes and the clouds are the same; share 1 is the former landscape (summer maize's
    default)."""
    kw = dict(seed=5, sky="sentinel2")
    wh = cm.simulate_seasons("winter_wheat", 60, **kw)
    wh1 = cm.simulate_seasons("winter_wheat", 60, neighbour_canopy_share=1.0, **kw)
    assert cm.NEIGHBOUR_CANOPY_SHARE["winter_wheat"] == pytest.approx(0.58)
    # one rule for the default, by world or WOFOST crop id (the demo's cache key uses it)
    assert cm.neighbour_share_of("wheat") == cm.neighbour_share_of("winter_wheat") == 0.58
    assert cm.neighbour_share_of("summer_maize") == cm.neighbour_share_of("maize") == 1.0
    pd.testing.assert_frame_equal(wh.truth, wh1.truth)
    pd.testing.assert_frame_equal(wh.observations[["field_id", "time", "valid_fraction"]],
                                  wh1.observations[["field_id", "time", "valid_fraction"]])

    def loss(sim, lo, hi):
        o = sim.observations
        m = o.assign(day=o["time"].dt.tz_localize(None)).merge(
            sim.canopy, left_on=["field_id", "day"], right_on=["field_id", "time"],
            suffixes=("", "_true"))
        m = m[(m["ndvi_true"] > lo) & (m["ndvi_true"] <= hi)]
        d = m["ndvi"] - m["ndvi_true"]
        small = m["coverage"] < 25                        # fields under 0.25 ha
        return float(d[small].mean() - d[m["coverage"] > 60].mean())

    dense, mid = loss(wh, 0.7, 1.0), loss(wh, 0.3, 0.5)
    assert dense < mid < 0                                 # grows with the canopy
    assert dense < 1.5 * loss(wh1, 0.7, 1.0) < 0           # bare neighbours: a larger loss
    mz = cm.simulate_seasons("summer_maize", 20, **kw)
    mz1 = cm.simulate_seasons("summer_maize", 20, neighbour_canopy_share=1.0, **kw)
    pd.testing.assert_frame_equal(mz.observations, mz1.observations)
    with pytest.raises(ConfigError, match="neighbour_canopy_share"):
        cm.simulate_seasons("winter_wheat", 5, neighbour_canopy_share=1.5, **kw)
