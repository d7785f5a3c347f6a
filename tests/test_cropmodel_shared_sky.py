"""simulate_seasons(shared_sky=True): the seasons of one weather year (one county and season)
share one sky - acquisition dates, cloudy/clear state and haze of each date - while the
masked share of a cloudy date, the pixel noise and the field size stay per field."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cropyield import cropmodel as cm

YEARS = list(range(1980, 1990))
REVISIT = 5


def _dates(sim) -> pd.DataFrame:
    """Observations with the weather year, the day offset from the season start (1 September
    of the year before harvest) and the cloudy state read from the valid fraction (cloudy
    dates: 0-80 % valid; clear ones: >= 96 %)."""
    t = sim.truth[["field_id", "weather_year"]]
    o = sim.observations.merge(t, on="field_id")
    start = pd.to_datetime((o["weather_year"] - 1).astype(str) + "-09-01")
    o["offset"] = (o["time"].dt.tz_localize(None) - start).dt.days
    o["cloudy"] = o["valid_fraction"] < 0.9
    assert ((o["valid_fraction"] < 0.81) | (o["valid_fraction"] > 0.95)).all()
    return o


@pytest.fixture(scope="module")
def shared():
    return cm.simulate_seasons("winter_wheat", 120, seed=3, weather_years=YEARS,
                               shared_sky=True)


def test_same_weather_year_shares_dates_and_clouds(shared):
    o = _dates(shared)
    assert o.groupby("weather_year")["field_id"].nunique().min() >= 5
    for year, g in o.groupby("weather_year"):
        # one acquisition calendar per year
        assert g["offset"].mod(REVISIT).nunique() == 1, year
        # a date is cloudy for every field of the year or for none
        state = g.groupby("offset")["cloudy"].agg(["min", "max"])
        assert (state["min"] == state["max"]).all(), year
        # masked share per field: the fields' valid fractions differ on a shared cloudy date
        cl = g[g["cloudy"]].groupby("offset")["valid_fraction"]
        assert (cl.nunique() > 1).any(), year
    # the date's haze is shared: on a cloudy date the NDVI departures from the true canopy
    # move together across the year's fields (per-field haze would leave them independent)
    can = shared.canopy[["field_id", "time", "ndvi"]]
    m = o.assign(day=o["time"].dt.tz_localize(None)).merge(
        can, left_on=["field_id", "day"], right_on=["field_id", "time"], suffixes=("", "_t"))
    m["err"] = m["ndvi"] - m["ndvi_t"]
    date_mean = m.groupby(["weather_year", "offset"])["err"].transform("mean")
    share = np.var(date_mean) / np.var(m["err"])
    assert share > 0.8          # 0.97 here; one sky per field: 0.43


def test_different_weather_years_have_independent_skies(shared):
    o = _dates(shared)
    cloudy = {y: g.groupby("offset")["cloudy"].max() for y, g in o.groupby("weather_year")}
    share = pd.Series({y: c.mean() for y, c in cloudy.items()})
    assert share.between(0.15, 0.6).all()      # cloud_fraction 0.35 (fewer kept when masked)
    # cloudy patterns by acquisition number do not repeat from year to year
    n = min(len(c) for c in cloudy.values())
    pat = np.array([c.to_numpy()[:n] for c in cloudy.values()], dtype=float)
    r = np.corrcoef(pat)[np.triu_indices(len(pat), 1)]
    assert np.abs(r).mean() < 0.2 and r.max() < 0.9
    assert len({tuple(p) for p in pat.astype(int)}) == len(pat)


def test_default_is_one_sky_per_field():
    a = cm.simulate_seasons("winter_wheat", 60, seed=3, weather_years=YEARS)
    b = cm.simulate_seasons("winter_wheat", 60, seed=3, weather_years=YEARS,
                            shared_sky=False)
    pd.testing.assert_frame_equal(a.observations, b.observations)
    o = _dates(a)
    # per-field calendars and clouds: fields of one year disagree on phase and on clouds
    assert (o.groupby("weather_year")["offset"].agg(lambda d: d.mod(REVISIT).nunique())
            > 1).any()
    st = o.groupby(["weather_year", "offset"])["cloudy"].agg(["min", "max"])
    assert (st["min"] != st["max"]).mean() > 0.2
    # the truth and canopy do not depend on the sky
    c = cm.simulate_seasons("winter_wheat", 60, seed=3, weather_years=YEARS,
                            shared_sky=True)
    pd.testing.assert_frame_equal(a.truth, c.truth)
    pd.testing.assert_frame_equal(a.canopy, c.canopy)


def test_shared_sentinel2_sky_shares_the_calendar_and_is_deterministic():
    kw = dict(seed=4, weather_years=YEARS[:4], sky="sentinel2", shared_sky=True)
    s = cm.simulate_seasons("winter_wheat", 40, **kw)
    o = _dates(s.__class__(observations=s.observations.assign(valid_fraction=1.0),
                           truth=s.truth, canopy=s.canopy, seed=s.seed))
    assert (o.groupby("weather_year")["offset"].agg(lambda d: d.mod(REVISIT).nunique())
            == 1).all()
    again = cm.simulate_seasons("winter_wheat", 40, **kw)
    pd.testing.assert_frame_equal(s.observations, again.observations)
