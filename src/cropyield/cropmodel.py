"""Crop-model seasons: PCSE/WOFOST runs turned into Sentinel-2-like index series.

SCYM-style training data (Lobell et al. 2015, Remote Sens. Environ. 164:324-333): a process
crop model simulates many field-seasons over weather years, soils, sowing dates and
management; the simulated canopy becomes index series through the library's own canopy
reflectance model (:mod:`cropyield.synthetic`) and a cloud/noise model; yields come from the
same runs. Used by ``fit_yield_model(method="simulation")``, by the synthetic world (its
wheat and maize yields and canopies) and by ``examples/wofost_validation.py``.

The crop model is PCSE/WOFOST 7.2 (de Wit et al. 2019, Agric. Syst. 168:154-167; water-limited
``Wofost72_WLP_CWB``), optional extra ``[pcse]``. It runs offline on data shipped in the PCSE
wheel: crop parameters of the demo database (crop 1 "WINTER WHEAT" and crop 2 "GRAIN MAIZE",
varieties of grid 31031) and the Wageningen weather files ``NL1.977``-``NL1.999`` (1990 and
1991 have gaps and are skipped). Documented choices (not WOFOST's own):

* **wheat** uses the Wageningen weather as is, emergence around 1 January (the demo crop
  calendar) +-20 days;
* **maize** uses a warm analogue of the same years: +6 degC on daily minimum and maximum
  temperature and rain x1.5 (North China Plain summers are about 8-10 degC warmer and wetter
  than Wageningen's), and a short-season variety (TSUM1/TSUM2 x0.75 of the demo variety, as
  summer maize of the North China Plain matures in 100-120 days); emergence 1-25 June;
* **soil**: the demo soil of grid 31031 with maximum rooting depth RDMSOL 40, 70 or 120 cm;
* **irrigation**: 0-3 applications of 50 mm (70 % efficiency) every 15 days from 30 days
  after emergence (maize) or 100 days after emergence (wheat: spring, stem elongation to
  grain fill) (PCSE timed events);
* **nitrogen** (the management yield gap): WOFOST 7.2 has no nitrogen module and the PCSE
  wheel ships no N-crop parameters, so N supply ``n_kg_ha`` (0-300) scales the maximum leaf
  photosynthesis AMAXTB by ``f_N = 1 - 0.5 exp(-N/90)`` and specific leaf area SLATB by
  ``f_N ** 0.5`` (nitrogen deficiency lowers leaf photosynthesis and leaf expansion, e.g.
  Sinclair & Horie 1989, Crop Sci. 29:90-98; Lemaire & Gastal 1997). The yield gap therefore
  shows in the canopy, as it does in real fields.

Yield at reporting basis = TWSO (kg DM/ha) / 1000 / (1 - moisture), moisture 0.125 (wheat),
0.14 (maize). The cached library (``cropyield/data/crop_library.parquet``) is built by
``scripts/build_crop_library.py`` (seeded); :func:`simulate_seasons` samples it when PCSE is
not installed, so neither the demo nor the tests run WOFOST.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["EMERGENCE_OFFSETS", "NEIGHBOUR_CANOPY_SHARE", "neighbour_share_of",
           "library_digest", "SimulatedSeasons", "simulate_seasons", "load_library", "run_wofost",
           "build_library", "library_runs", "WOFOST_CROPS", "SOILS", "INDICES",
           "nitrogen_factor", "load_weather", "warped_weather", "WEATHER_COLUMNS",
           "weather_provider", "reference_yield", "REFERENCE_SOILS", "REFERENCE_N_KG_HA",
           "CALENDAR_EMERGENCE", "station_weather", "build_reference_index",
           "reference_index_table", "weather_year_index", "WEATHER_LAT",
           "FAO56_WIND_M_S", "FAO56_ANGSTROM"]

#: World crop id -> WOFOST crop of the library.
WOFOST_CROPS = {"winter_wheat": "wheat", "summer_maize": "maize", "spring_maize": "maize",
                "wheat": "wheat", "maize": "maize"}
#: Maximum rooting depth (RDMSOL, cm) of the soil classes.
SOILS = {"shallow": 40.0, "medium": 70.0, "deep": 120.0}
#: Indices of the simulated observations.
INDICES = ("ndvi", "evi2", "gcvi", "ndre", "ndmi")
#: Range of emergence offsets (days after 1 January wheat, 1 June maize) of the library.
EMERGENCE_OFFSETS = {"wheat": (-20.0, 20.0), "maize": (0.0, 24.0)}
_MOISTURE = {"wheat": 0.125, "maize": 0.14}
# first irrigation, days after emergence: wheat in spring (stem elongation, ~10 April on the
# Wageningen calendar), maize a month after emergence
_IRRIGATION_START = {"wheat": 100, "maize": 30}
_MAX_DURATION = {"wheat": 300, "maize": 200}   # days from emergence a run may last
_CROP_NO = {"wheat": 1, "maize": 2}
_YEARS = tuple(y for y in range(1977, 2000) if y not in (1990, 1991))
_MAIZE_DT, _MAIZE_RAIN, _MAIZE_TSUM = 6.0, 1.5, 0.75
_K = {"wheat": 0.50, "maize": 0.55}          # canopy extinction (as the synthetic world)
LIBRARY_FILE = "crop_library.parquet"
LIBRARY_VERSION = 1
WEATHER_FILE = "crop_weather.parquet"
#: Daily weather columns (units in the names): minimum and maximum air temperature (degC),
#: global radiation (MJ m-2 d-1), rain (mm d-1).
WEATHER_COLUMNS = ("tmin_c", "tmax_c", "radiation_mj_m2", "rain_mm")


def _wofost_crop(crop: str, what: str) -> str:
    """The WOFOST crop (``wheat``/``maize``) of ``crop``, or a ConfigError naming ``what``
    has no such crop."""
    c = WOFOST_CROPS.get(crop)
    if c is None:
        from .errors import ConfigError

        raise ConfigError(f"no {what} for crop {crop!r}; choose from {sorted(WOFOST_CROPS)}")
    return c


def _crop_years(c: str) -> list[int]:
    """Weather years of WOFOST crop ``c``: wheat emerging before 1 January needs the
    previous year's weather."""
    return [y for y in _YEARS if c == "maize" or (y - 1) in _YEARS or y == 1977]


def _utc_days(x) -> pd.Series:
    """Dates as tz-naive UTC midnights (tz-aware ones converted to UTC)."""
    d = pd.Series(pd.to_datetime(x))
    if d.dt.tz is not None:
        d = d.dt.tz_convert("UTC").dt.tz_localize(None)
    return d.dt.normalize()


def nitrogen_factor(n_kg_ha) -> np.ndarray:
    """Nitrogen factor on leaf photosynthesis, ``1 - 0.5 exp(-N / 90)`` (N in kg/ha)."""
    return 1.0 - 0.5 * np.exp(-np.asarray(n_kg_ha, dtype=float) / 90.0)


# --------------------------------------------------------------------------------- WOFOST
def _pcse():
    """Import PCSE without side effects on the process.

    On first import PCSE builds its demo database and log folder under ``$HOME/.pcse``
    (pointed at a temporary folder for that import only, then ``HOME`` is restored) and
    reconfigures logging with ``disable_existing_loggers=True`` and its own root handlers
    (the root logger's handlers and level are restored and the ``cropyield`` loggers
    re-enabled, so the application's logging and our redaction keep working).
    """
    import logging
    import sys

    from ._extras import require

    if "pcse" in sys.modules:
        return sys.modules["pcse"]
    home = os.environ.get("HOME")
    root = logging.getLogger()
    root_state = (list(root.handlers), root.level)
    os.environ["HOME"] = tempfile.mkdtemp(prefix="cropyield_pcse_")
    try:
        return require("pcse", "pcse", "crop-model seasons (cropyield.cropmodel)")
    finally:
        if home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = home
        root.handlers[:], root.level = root_state[0], root_state[1]
        for name, lg in list(logging.root.manager.loggerDict.items()):
            if isinstance(lg, logging.Logger) and (name == "cropyield"
                                                   or name.startswith("cropyield.")):
                lg.disabled = False


@lru_cache(maxsize=1)
def _wofost_inputs():
    """(site, soil, crop params per crop, weather providers per crop) from the PCSE wheel."""
    import logging
    import sqlite3

    pcse = _pcse()
    logging.getLogger("pcse").setLevel(logging.ERROR)
    from pcse.input import CABOWeatherDataProvider
    from pcse.settings import settings
    from pcse.start_wofost import namedtuple_factory
    from pcse.tests.db_input import fetch_cropdata, fetch_sitedata, fetch_soildata

    db = sqlite3.connect(os.path.join(settings.PCSE_USER_HOME, "pcse.db"))
    db.row_factory = namedtuple_factory
    site = fetch_sitedata(db, 31031, 2000)
    soil = fetch_soildata(db, 31031)
    crops = {c: fetch_cropdata(db, 31031, 2000, n) for c, n in _CROP_NO.items()}
    db.close()
    src = os.path.join(os.path.dirname(pcse.__file__), "tests", "test_data")
    warm = tempfile.mkdtemp(prefix="cropyield_wx_")
    for y in _YEARS:
        _warm_cabo(os.path.join(src, f"NL1.{y % 1000:03d}"),
                   os.path.join(warm, f"NLW.{y % 1000:03d}"))
    import warnings

    with warnings.catch_warnings():
        # the Wageningen files of 1990 and 1991 are skipped on purpose (_YEARS): gaps
        warnings.filterwarnings("ignore", message="No CABOWE files found", category=UserWarning)
        weather = {"wheat": CABOWeatherDataProvider("NL1", fpath=src),
                   "maize": CABOWeatherDataProvider("NLW", fpath=warm)}
    return site, soil, crops, weather


def _warm_cabo(src: str, dst: str) -> None:
    """Write the warm analogue of a CABO weather file (+6 degC, rain x1.5)."""
    out, header = [], True
    with open(src, encoding="latin-1") as fh:
        for ln in fh.read().splitlines():
            p = ln.split()
            if ln.startswith("*") or header or len(p) < 9:
                out.append(ln)
                if not ln.startswith("*") and len(p):
                    header = False
                continue
            tmin, tmax, rain = float(p[4]), float(p[5]), float(p[8])
            p[4] = f"{tmin + _MAIZE_DT:.1f}" if tmin > -90 else p[4]
            p[5] = f"{tmax + _MAIZE_DT:.1f}" if tmax > -90 else p[5]
            p[8] = f"{rain * _MAIZE_RAIN:.1f}" if rain > -90 else p[8]
            out.append(" ".join(p))
    with open(dst, "w", encoding="latin-1") as fh:
        fh.write("\n".join(out) + "\n")


def _emergence(crop: str, year: int, offset_d: float) -> dt.date:
    base = dt.date(year, 1, 1) if crop == "wheat" else dt.date(year, 6, 1)
    return base + dt.timedelta(days=int(round(offset_d)))


def run_wofost(crop: str, weather_year: int, *, emergence_offset_d: float = 0.0,
               soil: str = "medium", n_kg_ha: float = 180.0, irrigations: int = 0) -> dict:
    """One water-limited WOFOST 7.2 season (needs the ``[pcse]`` extra).

    Parameters
    ----------
    crop : str
        ``"wheat"``/``"winter_wheat"`` or ``"maize"``/``"summer_maize"``/``"spring_maize"``.
    weather_year : int
        1977-1999 except 1990 and 1991 (Wageningen files shipped with PCSE).
    emergence_offset_d : float
        Days after the base emergence date (1 January wheat, 1 June maize).
    soil : str
        ``"shallow"``, ``"medium"`` or ``"deep"`` (maximum rooting depth, :data:`SOILS`).
    n_kg_ha : float
        Nitrogen supply, kg N/ha (module docstring: the nitrogen factor).
    irrigations : int
        Number of 50 mm irrigations.

    Returns
    -------
    dict
        ``emergence``, ``maturity`` (dates; maturity None when the crop did not mature),
        ``twso_kg_ha``, ``yield_t_ha`` (reporting basis), ``laimax``, ``lai`` (daily green
        LAI from emergence, m2/m2, numpy array), ``tagp_kg_ha``.
    """
    c = _wofost_crop(crop, "WOFOST parameters")
    if weather_year not in _YEARS:
        from .errors import ConfigError

        raise ConfigError(f"weather_year {weather_year} not in the shipped weather {_YEARS}")
    if soil not in SOILS:
        from .errors import ConfigError

        raise ConfigError(f"soil {soil!r} not in {sorted(SOILS)}")
    site, soil0, crops, weather = _wofost_inputs()
    return _run(c, weather[c], _emergence(c, weather_year, emergence_offset_d), soil=soil,
                n_kg_ha=n_kg_ha, irrigations=irrigations, site=site, soil0=soil0,
                cropdata=crops[c])


def _run(c: str, weather, emerg: dt.date, *, soil: str, n_kg_ha: float, irrigations: int,
         site, soil0, cropdata, max_duration: int | None = None) -> dict:
    """One WOFOST 7.2 water-limited run of WOFOST crop ``c`` on a PCSE weather provider
    (``max_duration`` days at most: the run's end when the crop has not matured by then)."""
    import yaml

    _pcse()
    from pcse.base import ParameterProvider
    from pcse.models import Wofost72_WLP_CWB

    first = _IRRIGATION_START[c]
    irr = "null" if irrigations <= 0 else (
        "\n        - event_signal: irrigate\n          name: irrigation\n"
        "          comment: management\n          events_table:\n" + "".join(
            f"            - {emerg + dt.timedelta(days=first + 15 * k)}: "
            "{amount: 5.0, efficiency: 0.7}\n" for k in range(int(irrigations))))
    agro = yaml.safe_load(f"""
- {emerg - dt.timedelta(days=10)}:
    CropCalendar:
        crop_name: '{c}'
        variety_name: 'demo'
        crop_start_date: {emerg}
        crop_start_type: emergence
        crop_end_date: null
        crop_end_type: maturity
        max_duration: {max_duration or _MAX_DURATION[c]}
    TimedEvents: {irr}
    StateEvents: null
""")
    cd = dict(cropdata)
    fn = float(nitrogen_factor(n_kg_ha))
    cd["AMAXTB"] = [v * fn if i % 2 else v for i, v in enumerate(cd["AMAXTB"])]
    cd["SLATB"] = [v * fn ** 0.5 if i % 2 else v for i, v in enumerate(cd["SLATB"])]
    if c == "maize":
        cd["TSUM1"] = cd["TSUM1"] * _MAIZE_TSUM
        cd["TSUM2"] = cd["TSUM2"] * _MAIZE_TSUM
    params = ParameterProvider(cropdata=cd, sitedata=site,
                               soildata=dict(soil0, RDMSOL=SOILS[soil]))
    model = Wofost72_WLP_CWB(params, weather, agro)
    model.run_till_terminate()
    out = pd.DataFrame(model.get_output())
    summ = model.get_summary_output()[0]
    out = out[pd.to_datetime(out["day"]) >= pd.Timestamp(emerg)]
    lai = np.nan_to_num(out["LAI"].to_numpy(dtype=float), nan=0.0)
    twso = float(summ.get("TWSO") or 0.0)
    return {"emergence": emerg, "maturity": summ.get("DOM"), "twso_kg_ha": twso,
            "yield_t_ha": twso / 1000.0 / (1.0 - _MOISTURE[c]),
            "laimax": float(summ.get("LAIMAX") or 0.0),
            "tagp_kg_ha": float(summ.get("TAGP") or 0.0), "lai": lai}


#: FAO-56 defaults where daily weather lacks them (Allen et al. 1998, FAO Irrigation and
#: Drainage Paper 56): wind speed at 2 m, m/s (ch. 3, "2 m/s ... as a temporary estimate"),
#: and the Angstrom coefficients a_s, b_s (eq. 35). Vapour pressure defaults to the
#: saturation vapour pressure at the daily minimum temperature (eq. 48).
FAO56_WIND_M_S = 2.0
FAO56_ANGSTROM = (0.25, 0.50)


def _sat_vap_hpa(t_c: np.ndarray) -> np.ndarray:
    """FAO-56 eq. 11, saturation vapour pressure in hPa at ``t_c`` degC."""
    return 6.108 * np.exp(17.27 * t_c / (t_c + 237.3))


def weather_provider(weather: pd.DataFrame, *, lat: float, elev: float = 0.0):
    """A PCSE weather provider over the daily weather of one place (needs ``[pcse]``).

    Parameters
    ----------
    weather : DataFrame
        One row per day: ``time`` and :data:`WEATHER_COLUMNS` (``tmin_c, tmax_c`` degC,
        ``radiation_mj_m2`` MJ m-2 d-1, ``rain_mm`` mm d-1); optional ``vap_hpa`` (hPa) and
        ``wind_m_s`` (m/s at 2 m), else the FAO-56 defaults (:data:`FAO56_WIND_M_S`,
        vapour pressure at Tmin). Days with a missing value are left out (a run that needs
        one stops with a PCSE weather error).
    lat : float
        Latitude, degrees (day length and the Penman reference evapotranspiration).
    elev : float
        Elevation, m.

    Returns
    -------
    pcse.base.WeatherDataProvider
        Reference evapotranspiration (E0, ES0, ET0) computed by PCSE
        (:func:`pcse.util.reference_ET`, Penman-Monteith for ET0).
    """
    _pcse()
    from pcse.base import WeatherDataContainer, WeatherDataProvider
    from pcse.util import reference_ET

    w = pd.DataFrame(weather)
    day = _utc_days(w["time"].to_numpy())
    tmin = pd.to_numeric(w["tmin_c"], errors="coerce").to_numpy(float)
    tmax = pd.to_numeric(w["tmax_c"], errors="coerce").to_numpy(float)
    rad = pd.to_numeric(w["radiation_mj_m2"], errors="coerce").to_numpy(float)
    rain = pd.to_numeric(w["rain_mm"], errors="coerce").to_numpy(float)
    vap = (pd.to_numeric(w["vap_hpa"], errors="coerce").to_numpy(float) if "vap_hpa" in w
           else _sat_vap_hpa(tmin))
    wind = (pd.to_numeric(w["wind_m_s"], errors="coerce").to_numpy(float) if "wind_m_s" in w
            else np.full(len(w), FAO56_WIND_M_S))
    a, b = FAO56_ANGSTROM

    class _FrameWeather(WeatherDataProvider):
        def __init__(self):
            super().__init__()
            self.latitude, self.longitude, self.elevation = float(lat), 0.0, float(elev)
            self.angstA, self.angstB = a, b
            self.description = ["cropyield daily weather"]
            ok = np.isfinite(np.column_stack([tmin, tmax, rad, rain, vap, wind])).all(axis=1)
            for i in np.flatnonzero(ok):
                d = day.iloc[i].date()
                row = dict(DAY=d, IRRAD=rad[i] * 1e6, TMIN=tmin[i], TMAX=tmax[i],
                           VAP=vap[i], WIND=wind[i], RAIN=max(rain[i], 0.0) / 10.0)
                e0, es0, et0 = reference_ET(LAT=self.latitude, ELEV=self.elevation,
                                            ANGSTA=a, ANGSTB=b, **row)
                self._store_WeatherDataContainer(WeatherDataContainer(
                    LAT=self.latitude, LON=0.0, ELEV=self.elevation,
                    E0=e0 / 10.0, ES0=es0 / 10.0, ET0=et0 / 10.0, **row), d)

    return _FrameWeather()


_REFERENCE_CACHE: dict[str, float] = {}

#: Reference management of :func:`reference_yield`: the scenario whose simulated yield
#: summarises the season's weather (soils averaged; nitrogen near the library's median
#: supply; rain-fed).
REFERENCE_SOILS = ("shallow", "medium", "deep")
REFERENCE_N_KG_HA = 130.0


#: Emergence (month-day) of the shipped WOFOST runs (:func:`run_wofost`): the crop
#: calendar the parameters were run on; :func:`reference_yield`'s default.
CALENDAR_EMERGENCE = {"wheat": "01-01", "maize": "06-01"}


def reference_yield(weather: pd.DataFrame, seasons: pd.DataFrame, crop: str, *, lat: float,
                    elev: float = 0.0, emergence: str | None = None, soils=REFERENCE_SOILS,
                    n_kg_ha: float = REFERENCE_N_KG_HA, irrigations: int = 0) -> pd.DataFrame:
    """The crop model's yield under each season's own weather (needs ``[pcse]``).

    A crop-model weather index for the yield models, as crop growth monitoring systems
    use simulated yields under the season's weather (the MARS system runs WOFOST on gridded
    weather with regional crop calendars: van der Velde & Nisini 2019, Agric. Syst.
    168:203-212; crop-model outputs as features of a statistical model: Shahhosseini et al.
    2021, Sci. Rep. 11:1606): one water-limited WOFOST 7.2 run per season and soil of
    :data:`REFERENCE_SOILS` with the reference management, on the daily weather given for
    the field (a station or grid cell: fields sharing it are run once), from emergence on
    the crop calendar; the yield (t/ha, reporting basis) averaged over the soils. It
    condenses the season's water supply, heat and radiation through the crop's own
    development into one number - what two window means of rain and Tmax summarise only
    linearly. A run whose weather ends before maturity stops on the last weather day (the
    yield then).

    Parameters
    ----------
    weather : DataFrame
        Daily weather per field: ``field_id, time`` and the columns of
        :func:`weather_provider`.
    seasons : DataFrame
        ``field_id, season`` and ``pos`` (or ``sos``; phenology output): the season's year.
    crop : str
        A crop of :data:`WOFOST_CROPS`.
    lat, elev : float
        Latitude (degrees) and elevation (m) of the weather.
    emergence : str, optional
        ``"MM-DD"``: emergence on that day of the year of the season's ``pos`` (else
        ``sos``); default :data:`CALENDAR_EMERGENCE` of the crop (the calendar the WOFOST
        parameters were run on - set the region's when the parameters are calibrated for
        it). ``"sos"``: on each season's detected start (one run per field; for weather
        that follows the field's own calendar).
    soils, n_kg_ha, irrigations
        The reference scenario (rooting depths of :data:`SOILS`, N supply kg/ha, number
        of 50 mm irrigations).

    Returns
    -------
    DataFrame
        ``field_id, season, cm_yield_t_ha``; NaN where the season has no date, the field
        no weather from 10 days before emergence to 30 days after it, or the run met a gap
        in the weather (logged). Identical weather windows are run once (and cached for the
        process).
    """
    import hashlib
    import logging

    from .errors import ConfigError

    c = _wofost_crop(crop, "WOFOST parameters")
    bad = [x for x in soils if x not in SOILS]
    if bad or not len(soils):
        raise ConfigError(f"soils must be a non-empty subset of {sorted(SOILS)}, got {soils!r}")
    _pcse()
    from pcse.exceptions import WeatherDataProviderError

    site, soil0, crops, _ = _wofost_inputs()
    log = logging.getLogger(__name__)
    w = pd.DataFrame(weather).copy()
    w["time"] = _utc_days(w["time"].to_numpy()).to_numpy()
    w = w.sort_values(["field_id", "time"], kind="stable")
    by_field = {k: g for k, g in w.groupby("field_id", sort=False)}
    s = pd.DataFrame(seasons)
    if "season" not in s:
        s = s.assign(season=s.groupby("field_id").cumcount() + 1)

    def _days(col):
        return (_utc_days(s[col].to_numpy()).set_axis(s.index) if col in s
                else pd.Series(pd.NaT, index=s.index))

    if emergence == "sos":
        start_days = _days("sos")
    else:
        md = emergence or CALENDAR_EMERGENCE[c]
        try:
            month, dom = (int(x) for x in str(md).split("-"))
            dt.date(2001, month, dom)
        except ValueError:
            raise ConfigError(f"emergence must be 'sos' or 'MM-DD', got {emergence!r}") from None
        ref = _days("pos").fillna(_days("sos"))
        start_days = pd.Series([pd.Timestamp(int(d.year), month, dom) if pd.notna(d) else pd.NaT
                                for d in ref], index=s.index)
    cols = [x for x in ("tmin_c", "tmax_c", "radiation_mj_m2", "rain_mm", "vap_hpa",
                        "wind_m_s") if x in w]
    cache = _REFERENCE_CACHE
    max_days = _MAX_DURATION[c]
    out = np.full(len(s), np.nan)
    failed = 0
    for i, (fid, start) in enumerate(zip(s["field_id"].to_numpy(), start_days)):
        g = by_field.get(fid)
        if g is None or pd.isna(start):
            continue
        g = g[(g["time"] >= start - pd.Timedelta(days=10))
              & (g["time"] <= start + pd.Timedelta(days=max_days + 1))]
        if not len(g) or g["time"].iloc[0] > start - pd.Timedelta(days=10):
            continue
        emerg = start.date()
        span = int((g["time"].iloc[-1] - start).days) - 1
        if span < 30:
            continue
        key = hashlib.sha256(g[cols].to_numpy(float).tobytes()
                             + f"{c}{emerg}{span}{tuple(soils)}{n_kg_ha}{irrigations}"
                             f"{lat}{elev}".encode()).hexdigest()
        if key not in cache:
            if len(cache) > 100_000:  # a long-lived process: keep the cache bounded
                cache.clear()
            prov = weather_provider(g, lat=lat, elev=elev)
            try:
                y = [_run(c, prov, emerg, soil=sl, n_kg_ha=n_kg_ha, irrigations=irrigations,
                          site=site, soil0=soil0, cropdata=crops[c],
                          max_duration=min(span, max_days))["yield_t_ha"]
                     for sl in soils]
                cache[key] = float(np.mean(y))
            except WeatherDataProviderError:
                failed += 1
                cache[key] = np.nan
        out[i] = cache[key]
    if failed:
        log.warning("reference_yield: %d season(s) had gaps in their weather; their crop-model "
                    "index is NaN", failed)
    return pd.DataFrame({"field_id": s["field_id"].to_numpy(),
                         "season": s["season"].to_numpy(), "cm_yield_t_ha": out})


REFERENCE_FILE = "crop_reference.parquet"
#: Latitude of the shipped weather records (Wageningen, NL), degrees: the reference runs of
#: :func:`reference_index_table` use the records' own place, as the library's runs do.
WEATHER_LAT = 51.97


def build_reference_index() -> pd.DataFrame:
    """:func:`reference_yield` of every shipped weather year (needs ``[pcse]``).

    Per WOFOST crop and weather year: the year's station record (:func:`station_weather`),
    emergence on :data:`CALENDAR_EMERGENCE`, :data:`REFERENCE_SOILS`, nitrogen
    :data:`REFERENCE_N_KG_HA`, rain-fed, at :data:`WEATHER_LAT`. Written to
    ``cropyield/data/crop_reference.parquet`` by ``scripts/build_crop_reference.py``.
    """
    rows = []
    for c in ("wheat", "maize"):
        years = _crop_years(c)
        f = pd.DataFrame({"field_id": [str(y) for y in years], "weather_year": years,
                          "year": years})
        st = station_weather(c, f)
        md = CALENDAR_EMERGENCE[c]
        sea = f.assign(season=1, sos=[pd.Timestamp(f"{y}-{md}") for y in years])
        ref = reference_yield(st, sea, c, lat=WEATHER_LAT)
        rows += [dict(crop=c, weather_year=int(y), cm_yield_t_ha=round(float(v), 4))
                 for y, v in zip(years, ref["cm_yield_t_ha"])]
    return pd.DataFrame(rows)


@lru_cache(maxsize=1)
def reference_index_table() -> pd.DataFrame:
    """The shipped crop-model weather index of every weather year of the library.

    Columns ``crop`` (``wheat``/``maize``), ``weather_year``, ``cm_yield_t_ha`` (t/ha:
    :func:`reference_yield` under the year's station record; :func:`build_reference_index`).
    What a user computes with :func:`reference_yield` on their own station's weather; the
    demo and the simulated library read it here so that neither runs WOFOST.
    """
    with resources.as_file(resources.files("cropyield") / "data" / REFERENCE_FILE) as p:
        return pd.read_parquet(p)


def weather_year_index(crop: str, weather_years) -> np.ndarray:
    """The crop-model weather index (t/ha) of ``crop`` for each of ``weather_years``, from
    :func:`reference_index_table` (NaN for a year not in it)."""
    c = _wofost_crop(crop, "crop-model index")
    t = reference_index_table()
    m = dict(zip(t.loc[t["crop"] == c, "weather_year"].astype(int),
                 t.loc[t["crop"] == c, "cm_yield_t_ha"].astype(float)))
    return np.array([m.get(int(y), np.nan) if pd.notna(y) else np.nan
                     for y in np.asarray(weather_years)], dtype=float)


def library_runs(seed: int = 0, runs_per_year: int = 16) -> pd.DataFrame:
    """The scenario design of the library: per crop and weather year, ``runs_per_year`` draws
    of emergence offset, soil, nitrogen and irrigations (seeded)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in ("wheat", "maize"):
        years = _crop_years(c)
        for y in years:
            for _ in range(runs_per_year):
                rows.append(dict(
                    crop=c, weather_year=y,
                    emergence_offset_d=float(rng.integers(int(EMERGENCE_OFFSETS[c][0]),
                                                          int(EMERGENCE_OFFSETS[c][1]) + 1)),
                    soil=str(rng.choice(list(SOILS))),
                    # smallholder N supply: lognormal around 150 kg/ha, 0-300
                    n_kg_ha=float(np.clip(np.round(rng.lognormal(math.log(130), 0.6)), 0, 300)),
                    irrigations=int(rng.choice([0, 1, 2, 3], p=[0.35, 0.3, 0.2, 0.15]))))
    return pd.DataFrame(rows)


def build_library(seed: int = 0, runs_per_year: int = 16, *, progress=None,
                  part: tuple[int, int] = (0, 1)) -> pd.DataFrame:
    """Run WOFOST over :func:`library_runs`; one row per run with its daily LAI as a list.

    Runs that do not mature within the season (``max_duration``) are kept with their yield
    (a crop cut at the end of the season), flagged ``matured=False``. ``part=(i, n)`` runs
    every n-th scenario from the i-th (to build the library in n processes).
    """
    design = library_runs(seed, runs_per_year)
    design = design.iloc[part[0]::part[1]]
    rows = []
    for i, r in zip(design.index, design.itertuples(index=False)):
        res = run_wofost(r.crop, r.weather_year, emergence_offset_d=r.emergence_offset_d,
                         soil=r.soil, n_kg_ha=r.n_kg_ha, irrigations=r.irrigations)
        lai = np.round(res["lai"], 3).astype(np.float32)
        mat = res["maturity"]
        rows.append(dict(
            run_id=f"{r.crop[0]}{i:04d}", **r._asdict(),
            emergence=pd.Timestamp(res["emergence"]),
            maturity=pd.Timestamp(mat) if mat is not None
            else pd.Timestamp(res["emergence"]) + pd.Timedelta(days=len(lai) - 1),
            matured=mat is not None, twso_kg_ha=round(res["twso_kg_ha"], 1),
            yield_t_ha=round(res["yield_t_ha"], 4), laimax=round(res["laimax"], 3),
            lai=lai))
        if progress is not None:
            progress(i + 1, len(design))
    df = pd.DataFrame(rows)
    df.attrs["seed"] = seed
    return df


def load_library() -> pd.DataFrame:
    """The shipped library of WOFOST runs (one row per run, ``lai`` a daily array).

    ``$CROPYIELD_CROP_LIBRARY`` (a Parquet file written by ``scripts/build_crop_library.py``)
    replaces the shipped file.

    Columns: ``run_id, crop`` (``wheat``/``maize``), ``weather_year, emergence_offset_d,
    soil, n_kg_ha, irrigations, emergence, maturity, matured, twso_kg_ha, yield_t_ha``
    (reporting basis), ``laimax``, ``lai`` (green LAI per day from emergence).
    """
    return _load_library().copy()


def _library_path():
    from pathlib import Path

    alt = os.environ.get("CROPYIELD_CROP_LIBRARY")
    return Path(alt) if alt else resources.files("cropyield") / "data" / LIBRARY_FILE


@lru_cache(maxsize=4)
def _digest(path: str) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def library_digest() -> str:
    """Content digest of the crop-model library in use (part of the synthetic world's key)."""
    with resources.as_file(_library_path()) as p:
        return _digest(str(p))


@lru_cache(maxsize=1)
def _load_library() -> pd.DataFrame:
    with resources.as_file(_library_path()) as p:
        df = pd.read_parquet(p)
    df["lai"] = [np.asarray(v, dtype=float) for v in df["lai"]]
    return df


# ------------------------------------------------------------------------------ weather
@lru_cache(maxsize=2)
def _weather_table(c: str) -> pd.DataFrame:
    with resources.as_file(resources.files("cropyield") / "data" / WEATHER_FILE) as p:
        w = pd.read_parquet(p)
    w = w.set_index(pd.DatetimeIndex(w.pop("date")).normalize())
    # one row per day, no gaps: warped_weather looks days up by position
    w = w[~w.index.duplicated(keep="last")].reindex(pd.date_range(w.index.min(), w.index.max()))
    if c == "maize":     # the warm analogue the maize runs use (_warm_cabo, rounded as there)
        for k in ("tmin_c", "tmax_c"):
            w[k] = (w[k] + _MAIZE_DT).round(1)
        w["rain_mm"] = (w["rain_mm"] * _MAIZE_RAIN).round(1)
    return w[list(WEATHER_COLUMNS)]


def load_weather(crop: str = "wheat") -> pd.DataFrame:
    """Daily weather the crop-model library ran on (no PCSE needed).

    The Wageningen (Haarweg) CABO files ``NL1.976``-``NL1.999`` shipped with PCSE, copied
    into ``cropyield/data/crop_weather.parquet`` by ``scripts/build_crop_weather.py``; for
    maize the warm analogue of the module docstring (+6 degC on minimum and maximum
    temperature, rain x1.5).

    Parameters
    ----------
    crop : str
        ``wheat``/``winter_wheat`` or ``maize``/``summer_maize``/``spring_maize``.

    Returns
    -------
    pandas.DataFrame
        Indexed by date (tz-naive, daily), columns :data:`WEATHER_COLUMNS`: ``tmin_c``,
        ``tmax_c`` (degC), ``radiation_mj_m2`` (MJ m-2 d-1), ``rain_mm`` (mm d-1); NaN on the
        missing days of the files (1990-1991).
    """
    return _weather_table(_wofost_crop(crop, "crop-model weather")).copy()


def station_weather(crop: str, fields: pd.DataFrame) -> pd.DataFrame:
    """The weather station record of each field's weather year on the field's calendar.

    The crop-model seasons (:func:`simulate_seasons`, the synthetic world) place a WOFOST run
    of weather year ``Y`` on a calendar by a time warp; their ``weather`` follows that warp
    (the weather along the crop's development). A weather station records the year as is:
    this is the shipped record of ``Y`` (:func:`load_weather`; for wheat also the autumn of
    ``Y - 1``), dated in the field's calendar year (same month and day; 29 February
    dropped where the target year has none). Input of :func:`reference_yield` with the crop
    calendar's emergence.

    Parameters
    ----------
    crop : str
        A crop of :data:`WOFOST_CROPS`.
    fields : DataFrame
        ``field_id``, ``weather_year`` and ``year`` (calendar year of the season's harvest).

    Returns
    -------
    DataFrame
        ``field_id, time`` (tz-naive days, 1 July of ``year - 1`` to 31 December of
        ``year``) and :data:`WEATHER_COLUMNS`.
    """
    w = _weather_table(_wofost_crop(crop, "crop-model weather"))  # read only: no copy
    frames = []
    f = pd.DataFrame(fields)[["field_id", "weather_year", "year"]]
    for (wy, yr), g in f.groupby(["weather_year", "year"], sort=True):
        rec = w.loc[pd.Timestamp(int(wy) - 1, 7, 1):pd.Timestamp(int(wy), 12, 31)]
        shift = int(yr) - int(wy)
        if shift:
            rec = rec[~((rec.index.month == 2) & (rec.index.day == 29))]
            rec = rec.set_axis(rec.index + pd.DateOffset(years=shift))
        rec = rec.rename_axis("time").reset_index()
        frames.append(pd.concat([rec.assign(field_id=fid) for fid in g["field_id"]],
                                ignore_index=True))
    if not frames:
        return pd.DataFrame(columns=["field_id", "time", *WEATHER_COLUMNS])
    out = pd.concat(frames, ignore_index=True)
    return out[["field_id", "time", *WEATHER_COLUMNS]]


def warped_weather(crop: str, emergence, t_a, wscale, t) -> dict[str, np.ndarray]:
    """Weather of crop-model runs on the calendar they are placed on by the time warp.

    A run is placed on a field's calendar by ``day = t_a + run_day * wscale``
    (:func:`cropyield.synthetic._canopy.wofost_timing`); calendar day ``t`` therefore sees
    the run's weather of run day ``u = (t - t_a) / wscale`` (nearest day), i.e. the weather
    date ``emergence + u``. Before the run's day 0 (``t < t_a``: wheat's autumn and winter,
    the days before maize emergence) the calendar is not warped: ``u = t - t_a``. Means of
    daily weather over a window are kept by the warp; sums are not (use means, mm/d).

    Parameters
    ----------
    crop : str
        Crop of the runs (``wheat``/``maize`` or a world crop id).
    emergence : sequence of datetime-like
        Emergence date of each run on its weather calendar (library column ``emergence``).
    t_a, wscale : array-like of float
        Calendar day of each run's day 0 and the warp factor (days per run day).
    t : ndarray
        Calendar days (same origin as ``t_a``), shape ``(D,)`` or ``(n, D)``.

    Returns
    -------
    dict of str to ndarray
        :data:`WEATHER_COLUMNS` arrays of shape ``(n, D)``; NaN where the weather files have
        no day.
    """
    w = load_weather(crop)
    t = np.asarray(t, dtype=float)
    t_a = np.asarray(t_a, dtype=float)[:, None]
    ws = np.asarray(wscale, dtype=float)[:, None]
    d = t - t_a
    u = np.where(d >= 0, d / ws, d)
    em = pd.DatetimeIndex(pd.to_datetime(list(emergence))).normalize()
    day0 = w.index[0]
    off = ((em - day0).days.to_numpy(dtype=float))[:, None] + np.round(u)
    k = np.nan_to_num(off, nan=-1.0).astype(np.int64)
    ok = np.isfinite(off) & (k >= 0) & (k < len(w))
    out = {}
    for c in WEATHER_COLUMNS:
        v = w[c].to_numpy(dtype=float)
        out[c] = np.where(ok, v[np.clip(k, 0, len(v) - 1)], np.nan)
    return out


# ------------------------------------------------------------------ canopy -> observations
@dataclass(frozen=True)
class SimulatedSeasons:
    """Crop-model seasons seen like Sentinel-2 fields.

    Attributes
    ----------
    observations : pandas.DataFrame
        Observations-like table for :func:`cropyield.series.smooth_series`: ``field_id, time``
        (tz-aware UTC), ``ndvi, evi2, gcvi, ndre, ndmi``, ``valid_fraction``, ``coverage``
        (pixels), ``flags``. Cloudy dates are dropped or left partly valid (haze biases low).
    truth : pandas.DataFrame
        One row per field: ``field_id, crop, season`` (1), ``yield_t_ha`` (reporting basis),
        ``weather_year`` (use as CV group), ``soil, sowing_date, emergence, maturity,
        n_kg_ha, irrigations, run_id, sos, eos`` (true, 20 % of the NDVI amplitude); with
        ``sky="sentinel2"`` also the field's ``area_ha`` and ``perimeter_m`` (the 2:1
        rectangle whose edge pixels the observations mix with the surroundings).
    canopy : pandas.DataFrame
        Noise-free daily truth: ``field_id, time`` (tz-naive), ``lai, ndvi, evi2, gcvi, ndre,
        ndmi``.
    seed : int
    weather : pandas.DataFrame or None
        Daily weather of each field on the same calendar as ``canopy`` (each run's weather
        mapped through the run's time warp, :func:`warped_weather`): ``field_id, time``
        (tz-naive), ``tmin_c, tmax_c`` (degC), ``radiation_mj_m2`` (MJ m-2 d-1), ``rain_mm``
        (mm d-1). Input of :func:`cropyield.yieldmodel.weather_features` (``weather=`` of
        ``fit_yield_model`` and ``train_on_simulations``).
    """

    observations: pd.DataFrame
    truth: pd.DataFrame
    canopy: pd.DataFrame
    seed: int
    weather: pd.DataFrame | None = None


def brown_lai(lai: np.ndarray) -> np.ndarray:
    """Senesced (brown) leaf area still standing: 0.6 x (running max of green LAI - LAI)."""
    lai = np.asarray(lai, dtype=float)
    return 0.6 * (np.maximum.accumulate(lai, axis=-1) - lai)


#: With ``shared_sky`` the date's atmospheric noise (0.004 per band) is shared by the group
#: too; ``False`` keeps it per field (the sensitivity check of docs/validation_yield.md §9).
_SHARED_SKY_ATM = True


def _shared_sky_plan(sky_groups, D: int, days_of, seed: int, *, revisit: int,
                     cloud_fraction: float, sky: str, nbands: int) -> dict:
    """One sky per group of fields (the seasons of one weather year: one county under one
    sky): the acquisition phase and, per date of the group's calendar, whether it is cloudy
    and the date's cloud cover (``sky="sentinel2"``) or the haze of its cloudy/clear
    atmosphere (``sky="uniform"``), and the date's atmospheric noise (0.004 per band: the
    atmospheric correction error of one scene). Drawn from a generator seeded by ``(seed, group)`` alone,
    so groups are independent of each other and of the fields' own draws."""
    plan = {}
    first: dict[Any, int] = {}
    for i, g in enumerate(sky_groups):
        first.setdefault(g, i)
    for g, i in first.items():
        grng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(g) & 0xFFFFFFFF, 0x5C1])
        idx, cloudy, cover = _sky_dates(grng, days_of[i], D, revisit=revisit,
                                        cloud_fraction=cloud_fraction, sky=sky)
        level = cover if sky == "sentinel2" else _uniform_haze(grng, cloudy)
        atm = grng.normal(0, 0.004, (len(idx), nbands))
        plan[g] = (idx, cloudy, level, atm)
    return plan


def _sky_dates(rng, days: pd.DatetimeIndex, D: int, *, revisit: int, cloud_fraction: float,
               sky: str):
    """Acquisition days (indices into ``days``: a random phase, every ``revisit`` days),
    which of them are cloudy and, with ``sky="sentinel2"``, each date's cloud cover (None
    with ``"uniform"``)."""
    phase = int(rng.integers(revisit))
    idx = np.arange(phase, D, revisit)
    m = len(idx)
    if sky == "sentinel2":
        doy = days[idx].day_of_year.to_numpy()
        p = np.clip(cloud_fraction * (1 + 0.35 * np.cos(2 * np.pi * (doy - 200) / 365.0)),
                    0, 1)
        cloudy = rng.random(m) < p
        return idx, cloudy, np.where(cloudy, rng.uniform(0.2, 1.0, m),
                                     rng.uniform(0.0, 0.04, m))
    return idx, rng.random(m) < cloud_fraction, None


def _uniform_haze(rng, cloudy: np.ndarray) -> np.ndarray:
    """``sky="uniform"``: haze over a cloudy date's valid part (0-0.25), else 0-0.02."""
    m = len(cloudy)
    return np.where(cloudy, rng.uniform(0, 0.25, m), rng.uniform(0, 0.02, m))


def _field_sky(rng, cloudy: np.ndarray, cover, sky: str):
    """What one field sees of its dates' sky: its valid fraction and, with
    ``sky="sentinel2"``, its haze (whether the km-scale clouds cover it, whether it lies in
    the haze band next to them); ``(valid fraction, haze or None)``. With ``"uniform"`` a
    cloudy date masks 20-100 % of the field (sub-scene cloud fragments)."""
    m = len(cloudy)
    if sky == "sentinel2":
        masked = rng.random(m) < cover
        vf = np.where(masked, 0.0, 1.0)
        in_band = rng.random(m) < np.minimum(1.0, 0.06 / np.maximum(1 - cover, 1e-6))
        return vf, np.where(in_band & ~masked, rng.uniform(0, 0.25, m), 0.0)
    return np.where(cloudy, 1.0 - rng.uniform(0.2, 1.0, m), 1.0 - rng.uniform(0, 0.04, m)), None


def _observe(refl: np.ndarray, days_of, fids, rng, *, revisit=5,
             cloud_fraction=0.35, names=INDICES, sky: str = "uniform", npx=None,
             sky_groups=None, sky_seed: int = 0):
    """Sentinel-2-like sampling of daily reflectance ``refl (n, D, bands)`` on the day axes
    ``days_of[i]`` (one DatetimeIndex of length D per field).

    ``sky="uniform"`` (the original library model): a flat share ``cloud_fraction`` of
    cloudy dates; on them 20-100 % of a field is masked and undetected haze (0-0.25 of the
    CLOUD end-member) mixes into the whole valid part (biases indices low); clear dates
    carry 0-0.02 haze. Field sizes 15-120 pixels.

    ``sky="sentinel2"``: the synthetic world's documented observation process
    (:func:`cropyield.synthetic._clouds.sky_plan`, :func:`~cropyield.synthetic._clouds.sky_on_date`,
    :func:`cropyield.synthetic.simulate_observations`): cloudy dates with probability
    ``cloud_fraction x (1 + 0.35 cos(2 pi (doy - 200) / 365))`` (monsoon summers cloudier)
    covering 20-100 % of the area, clear dates 0-4 %; clouds (km-scale) cover a smallholder
    field wholly, so a field is masked (SCL) with probability equal to the cover, and a
    clear field lies in the 6 %-of-the-area haze band next to the clouds with probability
    ``0.06 / (1 - cover)`` (haze 0-0.25, undetected). The edge-pixel mixing with the
    landscape is already in ``refl`` (:func:`simulate_seasons`, :func:`_field_sizes`).

    Both: atmospheric noise 0.004 per band and date, pixel noise 0.012/sqrt(valid pixels);
    ``npx`` the field sizes in 10 m pixels (default: uniform 15-120).

    ``sky_groups`` (one label per field, default ``None``: every field its own sky): fields
    with one label share the acquisition dates and each date's cloudy/clear state
    (:func:`_shared_sky_plan`, seeded by ``(sky_seed, label)``) - with ``"uniform"`` also the
    date's haze, with ``"sentinel2"`` the date's cloud cover; both share the date's
    atmospheric noise. What stays per field: the
    masked share of a cloudy date (``"uniform"``: 20-100 %, sub-scene cloud fragments;
    ``"sentinel2"``: whether the km-scale clouds cover the field, and whether it lies in the
    haze band and how much haze), the pixel noise, and the field size.
    """
    from .synthetic._canopy import BANDS, CLOUD, compute_indices

    n, D, _ = refl.shape
    frames = []
    if npx is None:
        npx = rng.uniform(15, 120, n)        # field size in 10 m pixels (0.15-1.2 ha)
    plan = None
    if sky_groups is not None:
        plan = _shared_sky_plan(sky_groups, D, days_of, sky_seed, revisit=revisit,
                                cloud_fraction=cloud_fraction, sky=sky, nbands=len(BANDS))
    for i in range(n):
        days = days_of[i]
        if plan is not None:
            idx, cloudy, level, atm = plan[sky_groups[i]]
            vf, haze = _field_sky(rng, cloudy, level, sky)
            if haze is None:
                haze = level
        else:
            idx, cloudy, cover = _sky_dates(rng, days, D, revisit=revisit,
                                            cloud_fraction=cloud_fraction, sky=sky)
            vf, haze = _field_sky(rng, cloudy, cover, sky)
            if haze is None:
                haze = _uniform_haze(rng, cloudy)
        m = len(idx)
        r = refl[i, idx] * (1 - haze[:, None]) + haze[:, None] * CLOUD
        r = r + (rng.normal(0, 0.004, (m, len(BANDS)))
                 if plan is None or not _SHARED_SKY_ATM else atm)
        r = r + rng.normal(0, 1, (m, len(BANDS))) * 0.012 / np.sqrt(
            np.maximum(vf * npx[i], 0.5))[:, None]
        vals = compute_indices(r, names)
        ok = vf > 0.05
        frames.append(pd.DataFrame({
            "field_id": fids[i], "time": days[idx][ok].tz_localize("UTC"),
            **{k: v[ok] for k, v in vals.items()},
            "valid_fraction": vf[ok], "coverage": npx[i], "flags": ""}))
    return pd.concat(frames, ignore_index=True)


def _sos_eos(ndvi: np.ndarray, days: pd.DatetimeIndex):
    """True SOS/EOS of one daily NDVI curve at 20 % of the amplitude."""
    ip = int(np.argmax(ndvi))
    pk = ndvi[ip]
    left, right = ndvi[: ip + 1].min(), ndvi[ip:].min()
    up = np.flatnonzero(ndvi[: ip + 1] >= left + 0.2 * (pk - left))
    dn = np.flatnonzero(ndvi[ip:] >= right + 0.2 * (pk - right))
    return days[up[0]], days[ip + dn[-1]]


def simulate_seasons(crop: str, n: int, *, seed: int = 0, weather_years=None,
                     fresh: bool = False, revisit: int = 5,
                     cloud_fraction: float | None = None,
                     sky: str = "uniform", shared_sky: bool = False,
                     neighbour_canopy_share: float | None = None) -> SimulatedSeasons:
    """Simulate ``n`` field-seasons of ``crop`` from WOFOST and observe them like Sentinel-2.

    Parameters
    ----------
    crop : str
        ``winter_wheat``, ``summer_maize``, ``spring_maize`` (or ``wheat``/``maize``).
    n : int
        Number of field-seasons.
    seed : int
        Seed of the sampling, management draws, clouds and noise.
    weather_years : sequence of int, optional
        Restrict to these weather years (1977-1999).
    fresh : bool
        Run WOFOST now (needs the ``[pcse]`` extra) with freshly drawn management instead of
        sampling the shipped library (default: the library; no PCSE needed).
    revisit, cloud_fraction : int, float
        Sampling: days between acquisitions, share of cloudy acquisitions (default 0.35 with
        ``sky="uniform"``, 0.5 - the synthetic world's default - with ``"sentinel2"``).
    sky : {"uniform", "sentinel2"}
        Observation model (:func:`_observe`). ``"uniform"`` (default, the original library
        model): flat cloud share, haze over every cloudy date's valid part, fields of 15-120
        pixels, dry soil. ``"sentinel2"``: the synthetic world's documented process - seasonal
        cloud share, clouds masking whole smallholder fields, haze only next to clouds,
        smallholder field sizes (lognormal, median 35 pixels) whose edge pixels mix with the
        landscape, and the world's daily soil wetness process under the canopy.
    shared_sky : bool
        ``False`` (default, unchanged): every field has its own acquisition dates, clouds,
        haze and noise. ``True``: the seasons of one weather year - the "county-season"
        groups of the validation, fields under one sky - share the acquisition calendar,
        each date's cloudy/clear state, its haze (``"uniform"``) or cloud cover
        (``"sentinel2"``) and its atmospheric noise, drawn from a generator seeded by
        ``(seed, weather_year)``; the masked share of a cloudy date (sub-scene cloud
        fragments), the haze band of ``"sentinel2"``, the pixel noise and the field size stay
        per field (:func:`_observe`). For judging features pooled over a group
        (``pool_by=``), whose gain per-field skies overstate.
    neighbour_canopy_share : float, optional
        ``sky="sentinel2"``: share (0-1) of a field's neighbouring parcels that carry a
        canopy through the season; the landscape its edge pixels see is
        ``0.8 × (share × the simulated fields' mean + (1 − share) × bare soil) + 0.2 × road``
        on each day. Default: :data:`NEIGHBOUR_CANOPY_SHARE` of the crop (winter wheat 0.58,
        other crops 1). Set it from the county's sown areas where the crop mix differs.

    Returns
    -------
    SimulatedSeasons
    """
    c = _wofost_crop(crop, "crop-model seasons")
    if n < 1:
        from .errors import ConfigError

        raise ConfigError(f"n must be >= 1, got {n}")
    if sky not in ("uniform", "sentinel2"):
        from .errors import ConfigError

        raise ConfigError(f"sky must be 'uniform' or 'sentinel2', got {sky!r}")
    if neighbour_canopy_share is not None and not 0.0 <= float(neighbour_canopy_share) <= 1.0:
        from .errors import ConfigError

        raise ConfigError(f"neighbour_canopy_share must be in [0, 1], got "
                          f"{neighbour_canopy_share!r}")
    if cloud_fraction is None:
        cloud_fraction = 0.5 if sky == "sentinel2" else 0.35
    rng = np.random.default_rng(seed)
    if fresh:
        design = library_runs(seed, 1)
        design = design[design["crop"] == c]
        if weather_years is not None:
            design = design[design["weather_year"].isin(list(weather_years))]
        pick = design.sample(n=n, replace=True, random_state=seed).reset_index(drop=True)
        # fresh management per field
        pick["n_kg_ha"] = np.clip(np.round(rng.lognormal(math.log(130), 0.6, n)), 0, 300)
        lo, hi = EMERGENCE_OFFSETS[c]
        pick["emergence_offset_d"] = rng.integers(int(lo), int(hi) + 1, n).astype(float)
        runs = []
        for i, r in enumerate(pick.itertuples(index=False)):
            res = run_wofost(c, r.weather_year, emergence_offset_d=r.emergence_offset_d,
                             soil=r.soil, n_kg_ha=r.n_kg_ha, irrigations=r.irrigations)
            mat = res["maturity"]
            runs.append(dict(run_id=f"fresh{i:05d}", **r._asdict(),
                             emergence=pd.Timestamp(res["emergence"]),
                             maturity=pd.Timestamp(mat) if mat else
                             pd.Timestamp(res["emergence"])
                             + pd.Timedelta(days=len(res["lai"]) - 1),
                             yield_t_ha=res["yield_t_ha"], lai=res["lai"]))
        lib = pd.DataFrame(runs)
    else:
        lib = _load_library()
        lib = lib[lib["crop"] == c]
        if weather_years is not None:
            lib = lib[lib["weather_year"].isin(list(weather_years))]
        if not len(lib):
            from .errors import ConfigError

            raise ConfigError(f"no library runs for {crop!r} in weather years {weather_years}")
        lib = lib.iloc[rng.choice(len(lib), size=n, replace=n > len(lib))].reset_index(drop=True)
    lib = lib.reset_index(drop=True)
    if "crop" not in lib:
        lib["crop"] = c
    fids = [f"S{seed:03d}{i:05d}" for i in range(n)]
    wc = _WORLD_CROP[crop]
    can, refl, t, starts, sea = _season_canopy(wc, lib, rng, sky=sky)
    D = len(t)
    canopy, truth, day_axes = [], [], []
    for i in range(n):
        days = pd.DatetimeIndex(starts[i] + pd.to_timedelta(t, unit="D"))
        day_axes.append(days)
        canopy.append(pd.DataFrame({"field_id": fids[i], "time": days, "lai": can["lai"][i],
                                    **{nm: can[nm][i] for nm in INDICES}}))
        a, b = int(sea["t_sow"][i] - t[0]), min(int(sea["t_harvest"][i] - t[0]) + 10, D - 1)
        sos, eos = _sos_eos(can["ndvi"][i][a:b + 1], days[a:b + 1])
        r = lib.iloc[i]
        day = lambda x, i=i: starts[i] + pd.Timedelta(days=float(x))  # noqa: E731
        truth.append(dict(
            field_id=fids[i], crop=crop, season=1, yield_t_ha=float(r["yield_t_ha"]),
            weather_year=int(r["weather_year"]), soil=r["soil"],
            sowing_date=day(sea["t_sow"][i]), emergence=day(sea["t_sow"][i] + 7),
            maturity=day(sea["t_a"][i] + len(r["lai"]) * sea["wscale"][i]),
            harvest_date=day(sea["t_harvest"][i]), n_kg_ha=float(r["n_kg_ha"]),
            irrigations=int(r["irrigations"]), run_id=r["run_id"], sos=sos, eos=eos))
    npx = mix = None
    if sky == "sentinel2":
        npx, mix = _field_sizes(rng, n)
        # the field's size and boundary (2:1 rectangle), as a user knows them from the
        # field polygons (perimeter_m, area_ha: the edge covariate of the yield models)
        short = np.sqrt(npx * 100.0 / 2.0)
        for i, rec in enumerate(truth):
            rec["area_ha"] = float(npx[i] * 0.01)
            rec["perimeter_m"] = float(6.0 * short[i])
        from .synthetic._canopy import ROAD, SOIL

        # edge pixels see the landscape: the mean of the simulated fields on the same
        # calendar day where a neighbour carries a canopy, bare soil where it does not
        # (share 1 - neighbour_canopy_share), 80 %, and roads/tracks, 20 %
        share = (neighbour_share_of(crop) if neighbour_canopy_share is None
                 else float(neighbour_canopy_share))
        land = 0.8 * (share * refl.mean(axis=0, keepdims=True) + (1.0 - share) * SOIL) \
            + 0.2 * ROAD
        refl = (1 - mix[:, None, None]) * refl + mix[:, None, None] * land
    observations = _observe(refl, day_axes, fids, rng, revisit=revisit,
                            cloud_fraction=cloud_fraction, sky=sky, npx=npx,
                            sky_groups=(lib["weather_year"].to_numpy(dtype=int)
                                        if shared_sky else None), sky_seed=seed)
    observations["time"] = observations["time"].astype("datetime64[ns, UTC]")
    wx = warped_weather(c, lib["emergence"], sea["t_a"], sea["wscale"], t)
    weather = pd.DataFrame({"field_id": np.repeat(fids, D),
                            "time": pd.DatetimeIndex(np.concatenate(
                                [d.to_numpy("datetime64[ns]") for d in day_axes])),
                            **{k: v.ravel() for k, v in wx.items()}})
    return SimulatedSeasons(observations=observations, truth=pd.DataFrame(truth),
                            canopy=pd.concat(canopy, ignore_index=True), seed=seed,
                            weather=weather)


#: Crop of the simulated seasons' calendar and canopy (``wheat``/``maize`` as the world's
#: winter wheat and summer maize).
_WORLD_CROP = {"winter_wheat": "winter_wheat", "summer_maize": "summer_maize",
               "spring_maize": "spring_maize", "wheat": "winter_wheat", "maize": "summer_maize"}


#: Outside share of a field's coverage-weighted mean per unit perimeter/area (m): the 10 m
#: boundary strip contributes through the sensor PSF (3-tap, 0.12 per side: ~1.2 m) and the
#: outside part of the partly covered edge pixels kept at min_coverage_frac 0.5 (~1 m).
_EDGE_MIX_M = 2.2


#: Share of a field's neighbouring parcels that carry a canopy through the crop's season
#: (``simulate_seasons(sky="sentinel2")``; crops not listed: 1). The rest are bare: on the
#: North China Plain 58 % of parcels grow winter wheat (``synthetic._canopy.SYSTEMS``) and
#: the others - fallow, or waiting for crops sown from mid-April (spring maize, cotton,
#: peanut) or June (soybean, rice) - are bare soil through wheat's green-up and peak. In
#: summer 92 % of parcels are green; there the same-crop approximation is kept (1: summer
#: maize measured at 0.92 gains nothing, docs/validation_yield.md "Edge interaction").
NEIGHBOUR_CANOPY_SHARE: dict[str, float] = {"winter_wheat": 0.58}


def neighbour_share_of(crop: str) -> float:
    """The default ``neighbour_canopy_share`` of ``crop`` (a world or WOFOST crop id):
    :data:`NEIGHBOUR_CANOPY_SHARE` of its world crop, 1 for crops not listed."""
    return float(NEIGHBOUR_CANOPY_SHARE.get(_WORLD_CROP.get(crop, crop), 1.0))


def _field_sizes(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallholder field sizes (10 m pixels; lognormal, median 35, 4-400) and the share of
    their mean that edge pixels take from the surroundings, ``clip(_EDGE_MIX_M ×
    perimeter / area, 0, 0.6)`` for a 2:1 rectangle (perimeter / area = 3 / short side)."""
    npx = np.clip(rng.lognormal(math.log(35.0), 0.7, n), 4.0, 400.0)
    short = np.sqrt(npx * 100.0 / 2.0)            # m
    mix = np.clip(_EDGE_MIX_M * 3.0 / short, 0.0, 0.6)   # perimeter / area = 3 / short side
    return npx, mix


def _season_canopy(wc: str, lib: pd.DataFrame, rng, *, sky: str = "uniform"):
    """Daily canopy of runs ``lib`` placed on the North China Plain calendar exactly as the
    synthetic world places its fields (:func:`cropyield.synthetic._canopy.wofost_timing`,
    :func:`~cropyield.synthetic._canopy.canopy_state`), so that simulated seasons and world
    fields share one canopy process. Day 0 = 1 September of the year before harvest (wheat),
    1 April (maize)."""
    from .synthetic._canopy import (CROPS, canopy_state, compute_indices, library_arrays,
                                    reflectance_from_state, wofost_timing)

    n = len(lib)
    arrays = library_arrays(lib)
    p = CROPS[wc]
    wheat = wc == "winter_wheat"
    ref = pd.Timestamp("2001-09-01") if wheat else pd.Timestamp("2002-04-01")
    spec = p["sow"][0] if isinstance(p["sow"], list) else p["sow"]
    yr = lambda mmdd: ref.year if (not wheat or int(mmdd[:2]) >= 9) else ref.year + 1  # noqa
    lo_d = float((pd.Timestamp(f"{yr(spec[0])}-{spec[0]}") - ref).days)
    hi_d = float((pd.Timestamp(f"{yr(spec[1])}-{spec[1]}") - ref).days)
    march1 = float((pd.Timestamp(f"{ref.year + 1 if wheat else ref.year}-03-01") - ref).days)
    run = np.arange(n)
    tm = wofost_timing(wc, arrays, run, lo_d, hi_d, march1, rng)
    t = np.arange(0.0, float(np.max(tm["t_harvest"])) + 45.0)
    seasons = pd.DataFrame(dict(
        parcel=run, season=1, crop=wc, t_sow=tm["t_sow"], t_tu=tm["t_a"],
        t_td=tm["t_harvest"], t_harvest=tm["t_harvest"], tu_aut=tm["tu_aut"],
        greenup=tm["greenup"], lmax=arrays["laimax"], ru=0.1, rd=0.1, shape_peak=1.0,
        run=run, t_a=tm["t_a"], wscale=tm["wscale"]))
    st = canopy_state(seasons, run, t, wofost_library={WOFOST_CROPS[wc]: arrays})
    sb = rng.uniform(0.9, 1.1, n)
    refl, _ = reflectance_from_state(st, k=p["k"], soil_brightness=sb, wetness=1.0)
    can = compute_indices(refl, INDICES)
    can["lai"] = st["lai_green"]
    years = lib["weather_year"].to_numpy(dtype=int)
    starts = [pd.Timestamp(f"{y - 1 if wheat else y}-{ref.month:02d}-01") for y in years]
    if sky == "sentinel2":   # observed reflectance over wet soil; the truth stays dry
        from .synthetic._canopy import rain_wetness

        wet = np.stack([rain_wetness(rng, pd.DatetimeIndex(s0 + pd.to_timedelta(t, unit="D")))
                        for s0 in starts])
        refl, _ = reflectance_from_state(st, k=p["k"], soil_brightness=sb,
                                         wetness=wet[:, :, None])
    return can, refl, t, starts, tm
