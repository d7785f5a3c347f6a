"""FAO-56 radiation: worked examples of Allen et al. (1998) chapter 3 and science.md §3."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cropyield import radiation as rad
from cropyield.errors import ConfigError, CropYieldError


def test_fao56_example_8_extraterrestrial_radiation():
    # FAO-56 Example 8: 20°S, 3 September (J = 246): Ra = 32.2 MJ m-2 d-1
    assert rad.extraterrestrial_radiation(-20.0, 246) == pytest.approx(32.2, abs=0.05)


def test_fao56_example_9_daylight_hours():
    # FAO-56 Example 9: same place and day, ws = 1.527 rad, N = 11.7 h
    assert rad.daylight_hours(-20.0, 246) == pytest.approx(11.7, abs=0.05)


def test_fao56_example_10_angstrom():
    # FAO-56 Example 10: Rio de Janeiro 22°54'S, 220 h of sunshine in May (J = 135):
    # Ra = 25.1, N = 10.9 h, n/N = 0.65, Rs = 14.5 MJ m-2 d-1 (NCL radsol2_fao56 replicates
    # it as 14.456)
    lat, j = -22.9, 135
    assert rad.extraterrestrial_radiation(lat, j) == pytest.approx(25.1, abs=0.05)
    n_max = rad.daylight_hours(lat, j)
    assert n_max == pytest.approx(10.9, abs=0.05)
    rs = rad.solar_radiation(lat, j, sunshine_fraction=(220.0 / 31.0) / n_max)
    assert rs == pytest.approx(14.456, abs=0.01)
    # FAO-56 Example 11 uses Rso = 0.75 Ra = 18.8 for the same case (z = 0)
    assert rad.clear_sky_radiation(lat, j, 0.0) == pytest.approx(18.8, abs=0.05)


# science.md §3 table (computed, z = 50 m): latitude -> Ra/Rso on
# 15 Jan, 15 Apr, 21 Jun, 15 Sep, 21 Dec
SCIENCE_TABLE = {
    23.0: [(25.1, 18.9), (37.7, 28.3), (40.1, 30.1), (35.1, 26.4), (23.9, 17.9)],
    30.5: [(20.8, 15.6), (36.8, 27.6), (41.2, 31.0), (33.2, 24.9), (19.4, 14.6)],
    35.0: [(18.1, 13.6), (35.9, 26.9), (41.6, 31.3), (31.7, 23.8), (16.6, 12.5)],
    38.0: [(16.2, 12.2), (35.2, 26.4), (41.8, 31.4), (30.7, 23.0), (14.8, 11.1)],
    45.5: [(11.6, 8.7), (33.1, 24.8), (41.9, 31.5), (27.7, 20.8), (10.1, 7.6)],
}
DATES = ["2023-01-15", "2023-04-15", "2023-06-21", "2023-09-15", "2023-12-21"]


@pytest.mark.parametrize("lat", sorted(SCIENCE_TABLE))
def test_science_table(lat):
    doy = pd.DatetimeIndex(DATES).day_of_year.to_numpy()
    ra = rad.extraterrestrial_radiation(lat, doy)
    rso = rad.clear_sky_radiation(lat, doy, 50.0)
    exp = np.array(SCIENCE_TABLE[lat])
    np.testing.assert_allclose(ra, exp[:, 0], atol=0.051)
    np.testing.assert_allclose(rso, exp[:, 1], atol=0.051)


def test_vectorised_broadcast_and_polar_night():
    lats = np.array([[0.0], [45.0], [80.0]])
    doys = np.array([1, 172, 355])
    ra = rad.extraterrestrial_radiation(lats, doys)
    assert ra.shape == (3, 3)
    assert ra[2, 0] == 0.0 and ra[2, 2] == 0.0          # polar night at 80°N in winter
    assert rad.daylight_hours(80.0, 172) == pytest.approx(24.0)


@settings(max_examples=200, deadline=None)
@given(lat=st.floats(-66, 66), doy=st.integers(1, 365))
def test_properties(lat, doy):
    ra = float(rad.extraterrestrial_radiation(lat, doy))
    n = float(rad.daylight_hours(lat, doy))
    assert 0.0 <= ra <= 45.0
    assert 0.0 < n < 24.0
    # hemispheric symmetry: half a year later in the other hemisphere is ~ the same
    assert float(rad.daylight_hours(-lat, doy)) == pytest.approx(24.0 - n, abs=1e-9)
    rs = rad.solar_radiation(lat, doy, sunshine_fraction=0.5)
    assert float(rs) == pytest.approx(0.5 * ra)     # as + bs/2 = 0.5
    assert float(rad.clear_sky_radiation(lat, doy)) == pytest.approx(0.75 * ra)


def test_daily_par_climatological_and_observed():
    days = pd.date_range("2024-06-15", "2024-09-30")
    par, src = rad.daily_par(days, 36.0, region="north_china_plain")
    assert src == "climatological:north_china_plain"
    doy = days.day_of_year.to_numpy()
    frac = rad.sunshine_fraction("north_china_plain", days.month.to_numpy())
    np.testing.assert_allclose(par, 0.48 * (0.25 + 0.5 * frac) * rad.extraterrestrial_radiation(36.0, doy))
    # summer maize season PAR of the order of science.md §1.4 (≈1000 MJ m-2 at 38°N, n/N 0.55)
    assert 850 < par.sum() < 1100
    rs = np.full(len(days), 20.0)
    par2, src2 = rad.daily_par(days, 36.0, rs=rs)
    assert src2 == "observed" and np.allclose(par2, 9.6)
    rs[5] = np.nan
    par3, src3 = rad.daily_par(days, 36.0, rs=rs, region="north_china_plain")
    assert src3.startswith("mixed") and par3[5] == pytest.approx(par[5])


def test_sichuan_is_darker_than_ncp():
    m = np.arange(1, 13)
    assert np.all(rad.sunshine_fraction("sichuan_basin", m) < rad.sunshine_fraction("north_china_plain", m))
    assert 0.5 <= rad.sunshine_fraction("north_china_plain", m).mean() <= 0.65


def test_bad_inputs():
    with pytest.raises(ValueError):
        rad.extraterrestrial_radiation(95.0, 10)
    with pytest.raises(ValueError):
        rad.extraterrestrial_radiation(30.0, 400)
    with pytest.raises(ConfigError) as ei:
        rad.sunshine_fraction("atlantis", 5)
    assert isinstance(ei.value, CropYieldError) and "radiation=" in str(ei.value)
    with pytest.raises(ValueError, match="W m-2"):
        rad.daily_par(pd.date_range("2024-01-01", periods=3), 30.0, rs=[200.0, 210.0, 190.0])
    with pytest.raises(ConfigError):
        rad.sunshine_fraction("x", 1, climatology={"x": {"n_over_N": [0.5] * 11}})
