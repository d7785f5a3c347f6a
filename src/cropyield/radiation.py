"""Solar radiation and PAR without weather data (FAO-56, Allen et al. 1998, chapter 3).

Extraterrestrial radiation ``Ra`` and daylight hours ``N`` follow from latitude and day of
year; clear-sky radiation ``Rso`` from ``Ra`` and elevation; incoming short-wave radiation
``Rs`` from the Ångström relation with a sunshine fraction ``n/N`` (measured, or a regional
monthly climatology shipped here), or from user-supplied daily radiation.
Photosynthetically active radiation is taken as ``PAR = 0.48 Rs`` (energy basis).

All functions are vectorised over NumPy arrays (latitudes and days broadcast together).
Units: radiation in MJ m-2 d-1, latitude in decimal degrees (south negative), day of year
1..366, elevation in metres, hours in h.

References
----------
Allen, R.G., Pereira, L.S., Raes, D., Smith, M. (1998). Crop evapotranspiration.
FAO Irrigation and Drainage Paper 56, chapter 3, equations 21-25 (Ra), 34 (N),
35 (Ångström), 37 (Rso).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from .errors import ConfigError

__all__ = [
    "SOLAR_CONSTANT",
    "PAR_FRACTION",
    "SUNSHINE_CLIMATOLOGY",
    "extraterrestrial_radiation",
    "daylight_hours",
    "clear_sky_radiation",
    "solar_radiation",
    "sunshine_fraction",
    "daily_par",
]

#: Solar constant Gsc, MJ m-2 min-1 (FAO-56 Eq. 21).
SOLAR_CONSTANT = 0.0820
#: PAR / Rs on an energy basis (McCree 1972; FAO-56 ch. 3).
PAR_FRACTION = 0.48
#: Ångström coefficients recommended by FAO-56 when no calibration is available (Eq. 35).
ANGSTROM_AS = 0.25
ANGSTROM_BS = 0.50

#: Monthly climatological sunshine fraction n/N (January..December) by region.
#: Approximate values consistent with typical ranges (n/N about 0.5-0.65 on the North China
#: Plain and in the Northeast, about 0.25-0.35 in the Sichuan Basin and Guizhou; key [CY-SUN] in
#: docs/references.md, awaiting verification against station sunshine normals) and with the seasonal cycle of the summer monsoon
#: (cloudier July-August in the north, cloudier spring in the south). They are priors, not
#: station data: pass measured radiation or sunshine whenever you have it.
SUNSHINE_CLIMATOLOGY: dict[str, dict[str, Any]] = {
    "north_china_plain": {
        "n_over_N": (0.55, 0.55, 0.55, 0.58, 0.60, 0.58, 0.46, 0.48, 0.53, 0.57, 0.55, 0.54),
        "lat": 36.0,
        "source": "NCP n/N 0.5-0.65 with a monsoon-season dip, approximate [CY-SUN]",
    },
    "northeast": {
        "n_over_N": (0.62, 0.66, 0.64, 0.60, 0.60, 0.55, 0.49, 0.53, 0.60, 0.60, 0.57, 0.57),
        "lat": 45.5,
        "source": "Northeast n/N 0.5-0.65, approximate [CY-SUN]",
    },
    "yangtze": {
        "n_over_N": (0.33, 0.32, 0.32, 0.37, 0.41, 0.40, 0.55, 0.57, 0.46, 0.45, 0.40, 0.38),
        "lat": 30.5,
        "source": "middle Yangtze (Wuhan), approximate [CY-SUN]",
    },
    "south": {
        "n_over_N": (0.28, 0.22, 0.20, 0.25, 0.34, 0.38, 0.48, 0.48, 0.50, 0.52, 0.45, 0.38),
        "lat": 23.0,
        "source": "Guangxi/Guangdong, approximate [CY-SUN]",
    },
    "sichuan_basin": {
        "n_over_N": (0.22, 0.22, 0.27, 0.32, 0.33, 0.30, 0.36, 0.40, 0.28, 0.22, 0.20, 0.18),
        "lat": 30.6,
        "source": "Sichuan Basin/Guizhou n/N 0.25-0.35, approximate [CY-SUN]",
    },
}


def _lat_rad(lat_deg) -> np.ndarray:
    lat = np.asarray(lat_deg, dtype=float)
    if np.any(np.abs(lat[np.isfinite(lat)]) > 90.0):
        raise ValueError("latitude must be in decimal degrees within [-90, 90]")
    return np.deg2rad(lat)


def _doy(doy) -> np.ndarray:
    j = np.asarray(doy, dtype=float)
    if np.any((j[np.isfinite(j)] < 1) | (j[np.isfinite(j)] > 366)):
        raise ValueError("day of year must be within 1..366")
    return j


def _sun_geometry(lat_deg, doy):
    phi = _lat_rad(lat_deg)
    j = _doy(doy)
    dr = 1.0 + 0.033 * np.cos(2.0 * np.pi * j / 365.0)          # Eq. 23
    delta = 0.409 * np.sin(2.0 * np.pi * j / 365.0 - 1.39)       # Eq. 24
    # Eq. 25; the argument is clipped for polar day/night (|tan φ tan δ| > 1)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(delta), -1.0, 1.0))
    return phi, dr, delta, ws


def extraterrestrial_radiation(lat_deg, doy) -> np.ndarray:
    """Daily extraterrestrial radiation Ra (FAO-56 Eq. 21), MJ m-2 d-1.

    Parameters
    ----------
    lat_deg : float or array
        Latitude in decimal degrees (north positive).
    doy : int or array
        Day of the year, 1..366. Broadcast against ``lat_deg``.

    Returns
    -------
    numpy.ndarray
        Ra in MJ m-2 d-1 (0 during polar night).

    Raises
    ------
    ValueError
        Latitude outside [-90, 90] or day of year outside 1..366.
    """
    phi, dr, delta, ws = _sun_geometry(lat_deg, doy)
    ra = (24.0 * 60.0 / np.pi) * SOLAR_CONSTANT * dr * (
        ws * np.sin(phi) * np.sin(delta) + np.cos(phi) * np.cos(delta) * np.sin(ws))
    return np.maximum(ra, 0.0)


def daylight_hours(lat_deg, doy) -> np.ndarray:
    """Maximum possible sunshine duration N = 24 ωs / π (FAO-56 Eq. 34), hours."""
    _, _, _, ws = _sun_geometry(lat_deg, doy)
    return 24.0 * ws / np.pi


def clear_sky_radiation(lat_deg, doy, elevation_m=0.0) -> np.ndarray:
    """Clear-sky solar radiation Rso = (0.75 + 2e-5 z) Ra (FAO-56 Eq. 37), MJ m-2 d-1.

    ``elevation_m`` is the station elevation above sea level in metres.
    """
    z = np.asarray(elevation_m, dtype=float)
    return (0.75 + 2e-5 * z) * extraterrestrial_radiation(lat_deg, doy)


def sunshine_fraction(region: str, month, *, climatology: Mapping[str, Any] | None = None
                      ) -> np.ndarray:
    """Climatological relative sunshine duration n/N for ``region`` and calendar ``month``.

    Parameters
    ----------
    region : str
        A key of :data:`SUNSHINE_CLIMATOLOGY` (or of ``climatology``).
    month : int or array
        Calendar month(s), 1..12.
    climatology : mapping, optional
        ``{region: {"n_over_N": [12 values], "source": ...}}`` overriding the packaged table.

    Raises
    ------
    ConfigError
        Unknown region, or a table that does not hold 12 fractions in [0, 1].
    """
    table = dict(SUNSHINE_CLIMATOLOGY)
    if climatology:
        table.update(climatology)
    if region not in table:
        raise ConfigError(f"no sunshine climatology for region {region!r}; known: {sorted(table)}."
                          " Pass radiation= (daily Rs) or climatology={region: {'n_over_N': [...]}}")
    frac = np.asarray(table[region]["n_over_N"], dtype=float)
    if frac.shape != (12,) or np.any((frac < 0) | (frac > 1)):
        raise ConfigError(f"sunshine climatology for {region!r} must hold 12 fractions in [0, 1]")
    m = np.asarray(month, dtype=int)
    if np.any((m < 1) | (m > 12)):
        raise ValueError("month must be within 1..12")
    return frac[m - 1]


def solar_radiation(lat_deg, doy, *, sunshine_fraction=None, a_s: float = ANGSTROM_AS,
                    b_s: float = ANGSTROM_BS) -> np.ndarray:
    """Incoming short-wave radiation Rs from the Ångström formula (FAO-56 Eq. 35), MJ m-2 d-1.

    ``Rs = (a_s + b_s n/N) Ra``. ``sunshine_fraction`` is n/N in [0, 1] (values outside are
    clipped); ``None`` gives clear-sky-like conditions (n/N = 1).
    """
    ra = extraterrestrial_radiation(lat_deg, doy)
    nn = 1.0 if sunshine_fraction is None else np.clip(np.asarray(sunshine_fraction, float), 0, 1)
    return (a_s + b_s * nn) * ra


def daily_par(dates, lat_deg, *, region: str | None = "north_china_plain", rs=None,
              climatology: Mapping[str, Any] | None = None) -> tuple[np.ndarray, str]:
    """Daily PAR (MJ m-2 d-1) for ``dates`` at ``lat_deg``: 0.48 × Rs.

    Parameters
    ----------
    dates : array-like of datetimes
        Days (any time of day; the calendar day is used).
    lat_deg : float or array
        Latitude(s) in degrees, broadcast against ``dates``.
    region : str, optional
        Region of the sunshine climatology used when ``rs`` is not given.
    rs : array-like, optional
        User-supplied daily Rs in MJ m-2 d-1 (same length as ``dates``); NaNs are filled from
        the climatology.
    climatology : mapping, optional
        Override of :data:`SUNSHINE_CLIMATOLOGY`.

    Returns
    -------
    par : numpy.ndarray
        PAR in MJ m-2 d-1.
    source : str
        ``"observed"``, ``"climatological:<region>"`` or ``"mixed:<region>"``.
    """
    idx = pd.DatetimeIndex(pd.to_datetime(np.asarray(dates)))
    doy = np.asarray(idx.day_of_year, dtype=float)
    month = np.asarray(idx.month, dtype=int)
    clim = None
    if rs is None or np.isnan(np.asarray(rs, dtype=float)).any():
        if region is None:
            raise ConfigError("no daily radiation given and no region for the sunshine "
                              "climatology; pass region= or rs=")
        clim = solar_radiation(lat_deg, doy, sunshine_fraction=sunshine_fraction(
            region, month, climatology=climatology))
    if rs is None:
        assert clim is not None  # computed above whenever rs is missing
        return PAR_FRACTION * clim, f"climatological:{region}"
    obs = np.asarray(rs, dtype=float)
    if obs.shape != doy.shape:
        raise ValueError(f"rs has shape {obs.shape}, dates {doy.shape}; give one Rs per date")
    if np.any(obs[np.isfinite(obs)] < 0) or np.any(obs[np.isfinite(obs)] > 50):
        raise ValueError("rs must be daily short-wave radiation in MJ m-2 d-1 (0..50); "
                         "convert W m-2 by × 0.0864")
    if clim is None:
        return PAR_FRACTION * obs, "observed"
    return PAR_FRACTION * np.where(np.isfinite(obs), obs, clim), f"mixed:{region}"
