"""Crop systems, management, canopy (LAI) trajectories, a reflectance model and true yields.

The canopy model mixes three spectral end-members (green leaves, senescent leaves/residue and
soil or flood water) by ground cover ``fcover = 1 - exp(-k LAI)``; indices are computed from
the mixed band reflectances, never drawn as curves.

Winter wheat, summer maize and spring maize take canopy AND yield from one PCSE/WOFOST run per
field-season (the library of :mod:`cropyield.cropmodel`): the run's daily green LAI, time-warped
onto the world's calendar (``_WARP_DAYS``), drives the reflectance; its yield
is scaled by one constant per crop so that the library mean equals the NBS 2024 mean; its
emergence date sets the field's sowing date inside the calendar window. Brown LAI is the
senesced part of the run's canopy (:func:`cropyield.cropmodel.brown_lai`).

The other crops (no WOFOST parameters ship with PCSE) keep the parametric process (potential
yield x field quality x post-peak stress x variety harvest index x pests x noise): stress
after the peak cuts yield much more than it cuts greenness, and harvest-index and pest effects
are invisible to the canopy.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pandas as pd

from ._config import WorldConfig, rng_for

__all__ = [
    "BANDS", "SYSTEMS", "CROPS", "INDEX_FUNCS", "canopy_state", "reflectance_from_state",
    "compute_indices", "assign_management",
]

#: Reflective bands simulated, in this order.
BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")

# End-member reflectances (surface reflectance, 0-1) per band in BANDS order.
# Values are typical of USGS/ASTER spectral-library spectra convolved to S2 bands.
GREEN = np.array([0.025, 0.065, 0.028, 0.11, 0.32, 0.43, 0.47, 0.49, 0.21, 0.10])
BROWN = np.array([0.07, 0.10, 0.14, 0.18, 0.23, 0.27, 0.29, 0.30, 0.36, 0.28])
SOIL = np.array([0.08, 0.11, 0.15, 0.17, 0.185, 0.195, 0.21, 0.225, 0.31, 0.26])
# turbid paddy / pond water
WATER = np.array([0.06, 0.07, 0.06, 0.055, 0.045, 0.04, 0.04, 0.035, 0.02, 0.015])
VILLAGE = np.array([0.10, 0.12, 0.13, 0.15, 0.17, 0.19, 0.21, 0.22, 0.25, 0.22])
ROAD = np.array([0.12, 0.14, 0.16, 0.18, 0.19, 0.20, 0.21, 0.22, 0.25, 0.23])
CLOUD = np.array([0.42, 0.43, 0.44, 0.45, 0.46, 0.47, 0.48, 0.48, 0.35, 0.24])
_NIR_BANDS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0], dtype=float)

#: Crop systems of the North China Plain: share of parcels and crops in season order.
SYSTEMS: dict[str, tuple[float, tuple[str, ...]]] = {
    "winter_wheat+summer_maize": (0.50, ("winter_wheat", "summer_maize")),
    "winter_wheat+soybean": (0.05, ("winter_wheat", "soybean")),
    "winter_wheat": (0.03, ("winter_wheat",)),
    "spring_maize": (0.06, ("spring_maize",)),
    "summer_maize": (0.05, ("summer_maize",)),
    "rice_single": (0.04, ("rice_single",)),
    "soybean": (0.04, ("soybean",)),
    "peanut": (0.08, ("peanut",)),
    "cotton": (0.04, ("cotton",)),
    "vegetables": (0.06, ("vegetables", "vegetables")),
    "fallow": (0.05, ()),
}

#: Per-crop calendar (sowing window "MM-DD"; days after sowing for mid green-up, mid
#: senescence and harvest), canopy (peak LAI, extinction k), varieties with harvest-index
#: factors, and the mean yield at reporting basis (t/ha; NBS 2024, National Bureau of Statistics of China, 13 Dec 2024).
CROPS: dict[str, dict] = {
    "winter_wheat": dict(sow=("10-03", "10-20"), lmax=5.2, k=0.50, ru=0.085, rd=0.16,
                         varieties={"Bainong207": 1.00, "Zhoumai22": 1.05, "Aikang58": 0.95},
                         ymean=5.94, basis="grain@12.5%"),
    "summer_maize": dict(sow=("06-08", "06-22"), up=38, dn=92, harvest=(104, 114), lmax=4.8,
                         k=0.55, ru=0.13, rd=0.11,
                         varieties={"Zhengdan958": 1.00, "Denghai605": 1.04, "Xianyu335": 0.96},
                         ymean=6.59, basis="grain@14%"),
    "spring_maize": dict(sow=("04-20", "05-08"), up=48, dn=112, harvest=(128, 138), lmax=5.0,
                         k=0.55, ru=0.11, rd=0.10,
                         varieties={"Zhengdan958": 1.00, "Xianyu335": 0.97},
                         ymean=7.2, basis="grain@14%"),
    "rice_single": dict(sow=("06-01", "06-15"), up=42, dn=108, harvest=(120, 130), lmax=5.4,
                        k=0.50, ru=0.10, rd=0.10,
                        varieties={"Xindao22": 1.00, "Huangjinqing": 0.96},
                        ymean=7.15, basis="grain@14.5%"),
    "soybean": dict(sow=("06-12", "06-25"), up=40, dn=88, harvest=(100, 108), lmax=4.0,
                    k=0.50, ru=0.12, rd=0.12,
                    varieties={"Zhonghuang13": 1.00, "Qihuang34": 1.03},
                    ymean=2.0, basis="grain@13%"),
    "peanut": dict(sow=("04-25", "05-10"), up=45, dn=102, harvest=(115, 125), lmax=3.8,
                   k=0.50, ru=0.10, rd=0.11,
                   varieties={"Yuhua22": 1.00, "Huayu25": 0.97},
                   ymean=4.6, basis="pods@10%"),
    "cotton": dict(sow=("04-15", "04-30"), up=62, dn=138, harvest=(150, 168), lmax=3.6,
                   k=0.55, ru=0.08, rd=0.09,
                   varieties={"Zhongmian41": 1.00, "Lumian28": 1.04},
                   ymean=1.5, basis="lint"),
    "vegetables": dict(sow=[("03-10", "03-30"), ("08-10", "08-30")], up=28, dn=120,
                       harvest=(60, 75), lmax=3.0, k=0.60, ru=0.16, rd=0.10,
                       varieties={"mixed": 1.00}, ymean=30.0, basis="fresh"),
}


def _doy_date(config: WorldConfig, mmdd: str) -> pd.Timestamp:
    """Calendar date of a month-day in the world's crop year.

    The crop year ``Y`` is the year of ``start + 4 months``; winter-crop dates (September to
    December) fall in ``Y - 1``, the others in ``Y``. The default world (Oct 2021 - Oct 2022)
    has wheat sown in October 2021 and summer crops in 2022.
    """
    y = (pd.Timestamp(config.start) + pd.DateOffset(months=4)).year
    month = int(mmdd[:2])
    return pd.Timestamp(f"{y - 1 if month >= 9 else y}-{mmdd}")


#: World crops whose yield and canopy come from the WOFOST library (cropyield.cropmodel).
WOFOST_WORLD = {"winter_wheat": "wheat", "summer_maize": "maize", "spring_maize": "maize"}
# time warp of a WOFOST run onto the world's calendar: the run (emergence to maturity) is
# stretched to a duration drawn from the crop's North China Plain window, in days from the
# run's day 0: the library's wheat runs on Wageningen weather take ~240 days from 1 January
# emergence to maturity, NCP wheat ~120-128 days from the end of dormancy (1 February) to
# maturity (early June); summer maize ~92-104 days from emergence (maturity before wheat
# sowing), spring maize ~112-125 days. Farmers harvest inside these windows whatever the
# weather; the run's yield and canopy shape are kept, its duration is not.
_WARP_DAYS = {"winter_wheat": (92.0, 100.0), "summer_maize": (92.0, 104.0),
              "spring_maize": (112.0, 125.0)}
# wheat: the run from its day 90 (1 April at Wageningen, spring growth) to maturity is stretched onto green-up (1 March)
# to maturity (early June)
_WHEAT_WINTER_DAYS = 90.0


def lai_gain(crop: str) -> float:
    """Constant factor on a crop-model run's LAI in the canopy model: the demo-database
    varieties of WOFOST (Dutch wheat, a Spanish grain maize on the warm analogue, N-limited)
    reach lower leaf area than North China Plain crops, so the canopy relation is calibrated
    once per crop: mean peak LAI of the library x gain = the crop's ``lmax`` (NCP canopy,
    :data:`CROPS`). Monotone, so the canopy-yield coupling of the runs is kept."""
    return float(CROPS[crop]["lmax"] / _wofost_library(WOFOST_WORLD[crop])["laimax"].mean())


@lru_cache(maxsize=1)
def _wofost_years() -> tuple[int, ...]:
    from ..cropmodel import _load_library

    lib = _load_library()
    years = [set(g["weather_year"].astype(int)) for _, g in lib.groupby("crop")]
    return tuple(sorted(set.intersection(*years)))    # years every crop has runs for


def block_weather_years(config: WorldConfig, ublocks: np.ndarray) -> np.ndarray:
    """Weather year of the crop-model library drawn for each village block (``ublocks``:
    the sorted unique block ids of the world's parcels)."""
    return rng_for(config.seed, "weather_years").choice(np.array(_wofost_years()),
                                                         size=len(ublocks))


@lru_cache(maxsize=4)
def _wofost_library(crop: str) -> dict:
    """Arrays of the library runs of a WOFOST crop (``wheat``/``maize``) for the world."""
    from ..cropmodel import _load_library

    lib = _load_library()
    return library_arrays(lib[lib["crop"] == crop].reset_index(drop=True))


def library_arrays(lib: pd.DataFrame) -> dict:
    """Arrays the canopy model reads from a table of WOFOST runs (rows in order)."""
    from ..cropmodel import brown_lai

    L = np.array([len(v) for v in lib["lai"]])
    green = np.zeros((len(lib), L.max() + 2))
    for i, v in enumerate(lib["lai"]):
        green[i, :len(v)] = v
    by_year: dict[int, list[int]] = {}
    for i, y in enumerate(lib["weather_year"]):
        by_year.setdefault(int(y), []).append(i)
    from ..cropmodel import EMERGENCE_OFFSETS

    off = lib["emergence_offset_d"].to_numpy(dtype=float)
    off_range = EMERGENCE_OFFSETS[str(lib["crop"].iloc[0])]
    return dict(green=green, brown=brown_lai(green), length=L.astype(float),
                laimax=green.max(axis=1),
                **{"yield": lib["yield_t_ha"].to_numpy(dtype=float)},
                mean_yield=float(lib["yield_t_ha"].mean()),
                by_year={k: np.array(v) for k, v in by_year.items()},
                offset=off, offset_range=off_range,
                soil=lib["soil"].to_numpy(dtype=object),
                n=lib["n_kg_ha"].to_numpy(dtype=float),
                irrigations=lib["irrigations"].to_numpy(dtype=int))


def wofost_timing(crop: str, lib: dict, run: np.ndarray, lo_d: float, hi_d: float,
                  march1: float, rng, *, prev_harvest=None, gap=None) -> dict:
    """Calendar of crop-model seasons (days since a start date): sowing inside the window
    ``[lo_d, hi_d]`` at the run's relative emergence date, the warp of the run onto the
    calendar (``t_a`` = calendar day of the run's day 0, ``wscale``), harvest 2-6 days after
    the warped maturity; wheat also gets ``greenup`` (around ``march1``) and ``tu_aut``."""
    m = len(run)
    off_lo, off_hi = lib["offset_range"]
    frac = (lib["offset"][run] - off_lo) / max(off_hi - off_lo, 1e-9)
    t_sow = lo_d + frac * (hi_d - lo_d) + rng.uniform(-1, 1, m)
    if prev_harvest is not None:
        t_sow = np.where(np.isnan(prev_harvest), t_sow, np.fmax(t_sow, prev_harvest + gap))
    t_sow = np.floor(t_sow)
    out = {"t_sow": t_sow}
    lo_len, hi_len = _WARP_DAYS[crop]
    skip = _WHEAT_WINTER_DAYS if crop == "winter_wheat" else 0.0
    wscale = rng.uniform(lo_len, hi_len, m) / (lib["length"][run] - skip)
    if crop == "winter_wheat":
        out["greenup"] = march1 + rng.normal(0, 2, m)
        # the run's day 90 (1 April on the Wageningen calendar: spring growth starts) lands
        # on the field's green-up; the run's winter (LAI ~0.1-0.3) falls before it
        out["t_a"] = out["greenup"] - skip * wscale
        out["wscale"] = wscale
        out["tu_aut"] = t_sow + 32 + rng.normal(0, 3, m)
    else:
        out["t_a"] = t_sow + 7.0
        out["wscale"] = wscale
        out["greenup"] = np.full(m, np.nan)
        out["tu_aut"] = np.full(m, np.nan)
    out["t_harvest"] = np.floor(out["t_a"] + lib["length"][run] * out["wscale"]
                                + rng.uniform(2, 6, m))
    return out


def _e_pow_uniform(a: float, b: float, p: float) -> float:
    return (b ** (p + 1) - a ** (p + 1)) / ((p + 1) * (b - a))


# stress model constants: P(event), event severity range, background range, yield exponent
_P_EVENT, _EV, _BG, _SP = 0.22, (0.55, 0.9), (0.93, 1.0), 1.6
_P_PEST, _PEST = 0.06, (0.6, 0.9)
_Q_SIGMA = 0.15
_E_STRESS = _P_EVENT * _e_pow_uniform(*_EV, _SP) + (1 - _P_EVENT) * _e_pow_uniform(*_BG, _SP)
_E_PEST = (1 - _P_PEST) + _P_PEST * sum(_PEST) / 2
_E_Q = math.exp(0.5 * (0.8 * _Q_SIGMA) ** 2)


def assign_management(parcels, config: WorldConfig):
    """Give every parcel a crop system, declared crop, varieties, seasons and true yields.

    Returns ``(parcels, seasons)``: parcels gain ``system``, ``declared``, ``quality``,
    ``soil_brightness``; ``seasons`` has one row per (parcel, season) with the canopy
    parameters (days since ``config.start``) and the true yield.
    """
    rng = rng_for(config.seed, "crops")
    n = len(parcels)
    names = list(SYSTEMS)
    probs = np.array([SYSTEMS[s][0] for s in names])
    # spatial clustering: neighbouring parcels of a block share systems more often
    blocks = parcels["block"].to_numpy()
    block_pref = {b: rng.choice(len(names), p=probs) for b in np.unique(blocks)}
    sys_idx = np.where(rng.random(n) < 0.35, [block_pref[b] for b in blocks],
                       rng.choice(len(names), size=n, p=probs))
    ec = parcels["edge_case"].to_numpy()
    sys_idx[ec == "subpixel"] = names.index("vegetables")
    system = np.asarray(names, dtype=object)[sys_idx]
    declared = system.copy()
    wrong = rng.random(n) < config.wrong_crop_fraction
    confus = {"winter_wheat+summer_maize": ["winter_wheat+soybean", "summer_maize", "peanut"],
              "spring_maize": ["peanut", "summer_maize", "cotton"],
              "summer_maize": ["soybean", "spring_maize"], "peanut": ["soybean", "spring_maize"],
              "soybean": ["peanut", "summer_maize"], "cotton": ["peanut", "spring_maize"]}
    for i in np.flatnonzero(wrong):
        opts = confus.get(system[i], [s for s in names if s != system[i]])
        declared[i] = opts[int(rng.integers(len(opts)))]
    q = np.exp(rng.normal(0.0, _Q_SIGMA, n))
    soil_b = rng.uniform(0.9, 1.1, n)

    start = pd.Timestamp(config.start)
    ev_rng = rng_for(config.seed, "seasons")
    crop_list = list(CROPS)
    # post-peak stress events (dry-hot wind, waterlogging, drought) cluster by block and crop
    ublocks = np.unique(blocks)
    bidx = np.searchsorted(ublocks, blocks)
    event = ev_rng.random((len(ublocks), len(crop_list))) < _P_EVENT
    # crop-model weather: each village block gets one of the library's weather years
    block_year = block_weather_years(config, ublocks)
    prev_harv = np.full(n, np.nan)
    frames = []
    n_seasons = max(len(v[1]) for v in SYSTEMS.values())
    sys_crops = {k: v[1] for k, v in SYSTEMS.items()}
    for s in range(1, n_seasons + 1):
        crop_of = np.array([sys_crops[x][s - 1] if len(sys_crops[x]) >= s else "" for x in system],
                           dtype=object)
        for ci, crop in enumerate(crop_list):
            idx = np.flatnonzero(crop_of == crop)
            m = len(idx)
            if not m:
                continue
            p = CROPS[crop]
            spec = p["sow"][s - 1] if isinstance(p["sow"], list) else p["sow"]
            lo_d = float((_doy_date(config, spec[0]) - start).days)
            hi_d = float((_doy_date(config, spec[1]) - start).days)
            t_sow = lo_d + ev_rng.uniform(0, hi_d - lo_d, m)
            ph = prev_harv[idx]
            gap = ev_rng.uniform(2, 8, m)
            t_sow = np.floor(np.where(np.isnan(ph), t_sow, np.fmax(t_sow, ph + gap)))
            late = np.maximum(0.0, t_sow - (lo_d + hi_d) / 2)
            varieties = np.array(list(p["varieties"]), dtype=object)
            var = varieties[ev_rng.integers(len(varieties), size=m)]
            density = ev_rng.uniform(0.92, 1.08, m)
            lmax = p["lmax"] * q[idx] ** 0.9 * density * (1 - 0.006 * late)
            hit = event[bidx[idx], ci] & (ev_rng.random(m) < 0.85)
            stress = np.where(hit, ev_rng.uniform(*_EV, m), ev_rng.uniform(*_BG, m))
            if crop == "winter_wheat":
                greenup = float((_doy_date(config, "03-01") - start).days) + ev_rng.normal(0, 4, m)
                tu = greenup + 26 + ev_rng.normal(0, 3, m)
                td = float((_doy_date(config, "05-19") - start).days) + ev_rng.normal(0, 3, m)
                td = td - (1 - stress) * 16
                t_harv = td + 15 + ev_rng.uniform(0, 4, m)
                tu_aut = t_sow + 32 + ev_rng.normal(0, 3, m)
            else:
                tu = t_sow + p["up"] + ev_rng.normal(0, 3, m)
                td = t_sow + p["dn"] + ev_rng.normal(0, 4, m) - (1 - stress) * 16
                h_lo, h_hi = p["harvest"]
                t_harv = t_sow + ev_rng.uniform(h_lo, h_hi, m)
                if crop == "vegetables":
                    td = t_harv + 40
                tu_aut = np.full(m, np.nan)
                greenup = np.full(m, np.nan)
            hi_f = np.array([p["varieties"][v] for v in var])
            pest = np.where(ev_rng.random(m) < _P_PEST, ev_rng.uniform(*_PEST, m), 1.0)
            noise = np.exp(ev_rng.normal(0, 0.07, m) - 0.5 * 0.07 ** 2)
            sowf = 1 - 0.005 * late
            y = (p["ymean"] / (_E_STRESS * _E_PEST * _E_Q)) * q[idx] ** 0.8 * stress ** _SP \
                * hi_f * pest * noise * sowf
            t_harvest = np.floor(t_harv)
            wof = dict(run=np.full(m, -1), t_a=np.full(m, np.nan), wscale=np.full(m, np.nan),
                       weather_year=np.full(m, -1), soil=np.full(m, "", dtype=object),
                       n_kg_ha=np.full(m, np.nan), irrigations=np.full(m, -1))
            if crop in WOFOST_WORLD:
                # crop-model seasons (module docstring): one WOFOST run per field from the
                # shipped library; weather year shared by a block, the run (soil, N,
                # irrigation, emergence date) drawn among that year's runs; yield, canopy and
                # sowing date all come from the same run
                lib = _wofost_library(WOFOST_WORLD[crop])
                wy = block_year[bidx[idx]]
                run = np.array([lib["by_year"][y_][int(ev_rng.integers(len(lib["by_year"][y_])))]
                                for y_ in wy])
                tm = wofost_timing(crop, lib, run, lo_d, hi_d,
                                   float((_doy_date(config, "03-01") - start).days), ev_rng,
                                   prev_harvest=ph, gap=gap)
                t_sow, t_a, wscale, t_harvest = tm["t_sow"], tm["t_a"], tm["wscale"], \
                    tm["t_harvest"]
                if crop == "winter_wheat":
                    greenup, tu_aut = tm["greenup"], tm["tu_aut"]
                lmax = lib["laimax"][run]
                y = lib["yield"][run] * (p["ymean"] / lib["mean_yield"])
                stress = np.ones(m)
                hi_f = np.ones(m)
                pest = np.ones(m)
                wof = dict(run=run, t_a=t_a, wscale=wscale, weather_year=wy,
                           soil=lib["soil"][run], n_kg_ha=lib["n"][run],
                           irrigations=lib["irrigations"][run])
            prev_harv[idx] = t_harvest
            frames.append(pd.DataFrame(dict(
                parcel=idx, season=s, crop=crop, variety=var.astype(str), t_sow=t_sow, t_tu=tu,
                t_td=td, t_harvest=t_harvest, tu_aut=tu_aut, greenup=greenup, lmax=lmax,
                k=p["k"], ru=p["ru"], rd=p["rd"], stress=stress, hi_factor=hi_f, pest=pest,
                yield_t_ha=y, basis=p["basis"], **wof)))
    cols = ["parcel", "season", "crop", "variety", "t_sow", "t_tu", "t_td", "t_harvest",
            "tu_aut", "greenup", "lmax", "k", "ru", "rd", "stress", "hi_factor", "pest",
            "yield_t_ha", "basis", "run", "t_a", "wscale", "weather_year", "soil", "n_kg_ha",
            "irrigations"]
    seasons = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols))
    seasons = seasons.sort_values(["parcel", "season"]).reset_index(drop=True)
    seasons["shape_peak"] = _shape_peak(seasons)
    parcels = parcels.copy()
    parcels["system"] = system
    parcels["declared"] = declared
    parcels["quality"] = q
    parcels["soil_brightness"] = soil_b
    return parcels, seasons


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _up_down(c: dict, is_wheat: np.ndarray, t: np.ndarray):
    """Green-up and senescence factors of seasons (rows of ``c``) on days ``t``."""
    emerged = _logistic((t - c["t_sow"] - 7.0) * 0.8)
    up = _logistic(c["ru"] * (t - c["t_tu"]))
    aut = np.where(is_wheat, _logistic(0.12 * (t - np.nan_to_num(c["tu_aut"]))), 0.0)
    up = np.where(is_wheat, 0.2 * aut + 0.8 * up, up) * emerged
    down = _logistic(-c["rd"] * (t - c["t_td"]))
    return up, down


def _shape_peak(seasons: pd.DataFrame) -> np.ndarray:
    """Maximum of up x down over each season (daily), so LAI peaks at ``lmax`` whatever days
    are later sampled."""
    out = np.ones(len(seasons))
    if not len(seasons):
        return out
    c = {k: seasons[k].to_numpy()[:, None] for k in
         ("t_sow", "t_tu", "t_td", "t_harvest", "tu_aut", "ru", "rd")}
    is_wheat = (seasons["crop"].to_numpy() == "winter_wheat")[:, None]
    span = int(np.ceil((seasons["t_harvest"] - seasons["t_sow"]).max())) + 1
    for a in range(0, len(seasons), 4096):
        cc = {k: v[a:a + 4096] for k, v in c.items()}
        t = cc["t_sow"] + np.arange(span)[None, :]
        up, down = _up_down(cc, is_wheat[a:a + 4096], t)
        shape = np.where(t < cc["t_harvest"], up * down, 0.0)
        pk = shape.max(axis=1)
        out[a:a + 4096] = np.where(pk > 0, pk, 1.0)
    return out


def weather_wetness(config: WorldConfig) -> np.ndarray:
    """Daily soil darkening factor (0.7 wet .. 1 dry) from a seasonal rain process."""
    return rain_wetness(rng_for(config.seed, "weather"), config.days)


def rain_wetness(rng: np.random.Generator, days: pd.DatetimeIndex) -> np.ndarray:
    """Daily soil darkening factor (0.7 wet .. 1 dry) on ``days``: rain days drawn with a
    monsoon-peaked probability, the soil drying with a 3-day e-folding time after each."""
    doy = days.day_of_year.to_numpy()
    p_rain = 0.08 + 0.22 * np.exp(-0.5 * ((doy - 205) / 35.0) ** 2)   # monsoon Jul-Aug
    rain = rng.random(len(days)) < p_rain
    wet = np.ones(len(days))
    last = -100
    for i in range(len(days)):
        if rain[i]:
            last = i
        wet[i] = 1.0 - 0.3 * math.exp(-(i - last) / 3.0)
    return wet


def canopy_state(seasons: pd.DataFrame, parcel_ids: np.ndarray, t: np.ndarray, *,
                 lai_scale: float = 1.0, wofost_library=None) -> dict[str, np.ndarray]:
    """Canopy state of parcels on days ``t`` (days since the world's start).

    Returns arrays of shape ``(len(parcel_ids), len(t))``: ``lai_green``, ``lai_brown``,
    ``residue`` (fraction of residue/stubble on the soil), ``flood`` (0-1 water background),
    ``season`` (int, 0 when no crop is in the ground) and ``crop_idx`` (index into
    ``CROP_IDS``, -1 when bare).
    """
    pos = {int(p): i for i, p in enumerate(parcel_ids)}
    n, m = len(parcel_ids), len(t)
    t = np.asarray(t, dtype=float)[None, :]
    lg = np.zeros((n, m))
    lb = np.zeros((n, m))
    res = np.zeros((n, m))
    flood = np.zeros((n, m))
    season = np.zeros((n, m), dtype=np.int8)
    crop_idx = np.full((n, m), -1, dtype=np.int8)
    sub = seasons[seasons["parcel"].isin(pos)]
    if len(sub) == 0:
        return dict(lai_green=lg, lai_brown=lb, residue=res, flood=flood, season=season,
                    crop_idx=crop_idx)
    rows = np.array([pos[int(p)] for p in sub["parcel"]])
    c = {k: sub[k].to_numpy()[:, None] for k in
         ("t_sow", "t_tu", "t_td", "t_harvest", "tu_aut", "greenup", "lmax", "ru", "rd")}
    is_wheat = (sub["crop"].to_numpy() == "winter_wheat")[:, None]
    in_season = (t >= c["t_sow"]) & (t < c["t_harvest"])
    up, down = _up_down(c, is_wheat, t)
    # winter dormancy of wheat: part of the green leaf area browns (frost), recovers at green-up
    winter = np.where(is_wheat, 0.45 * _logistic((t - (np.nan_to_num(c["greenup"]) - 80)) * 0.1)
                      * _logistic(-(t - np.nan_to_num(c["greenup"])) * 0.15), 0.0)
    shape = up * down
    peak = sub["shape_peak"].to_numpy()[:, None]
    total = c["lmax"] * lai_scale * shape / peak
    green = total * (1 - winter)
    brown = c["lmax"] * lai_scale * up * (1 - down) * 0.6 + total * winter
    if "run" in sub and (sub["run"].to_numpy() >= 0).any():
        g_w, b_w = _wofost_lai(sub, t, is_wheat, winter, lai_scale, wofost_library)
        w = (sub["run"].to_numpy() >= 0)[:, None]
        green = np.where(w, g_w, green)
        brown = np.where(w, b_w, brown)
    green = np.where(in_season, green, 0.0)
    brown = np.where(in_season, brown, 0.0)
    after = t - c["t_harvest"]
    resid = np.where(after >= 0, 0.35 * np.exp(-np.maximum(after, 0) / 25.0), 0.0)
    is_rice = (sub["crop"].to_numpy() == "rice_single")[:, None]
    fl = np.where(is_rice, _logistic((t - c["t_sow"] + 6) * 1.0) *
                  _logistic(-(t - c["t_sow"] - 75) * 0.3), 0.0)
    cid = np.array([CROP_IDS.index(x) for x in sub["crop"]], dtype=np.int8)[:, None]
    seas = sub["season"].to_numpy()[:, None].astype(np.int8)
    np.add.at(lg, rows, green)
    np.add.at(lb, rows, brown)
    np.add.at(res, rows, resid)
    np.maximum.at(flood, rows, fl)
    # seasons do not overlap in time within a parcel: at most one is non-zero per day
    np.maximum.at(season, rows, (seas * in_season).astype(np.int8))
    cplus = np.zeros((n, m), dtype=np.int8)
    np.maximum.at(cplus, rows, ((cid + 1) * in_season).astype(np.int8))
    crop_idx = cplus - 1
    res = np.minimum(res, 0.5)
    return dict(lai_green=lg, lai_brown=lb, residue=res, flood=flood, season=season,
                crop_idx=crop_idx)


def _wofost_lai(sub: pd.DataFrame, t: np.ndarray, is_wheat, winter, lai_scale, libs=None):
    """Green and brown LAI of crop-model seasons on days ``t`` (rows of ``sub``).

    The run's daily LAI is read at WOFOST day ``(t - t_a) / wscale`` (linear interpolation);
    wheat adds its autumn tillers (20 % of the run's peak LAI, browned in winter, fading as
    spring growth starts) before the run's own spring canopy. LAI is scaled by
    :func:`lai_gain`.
    """
    green = np.zeros((len(sub), t.shape[-1]))
    brown = np.zeros_like(green)
    runs = sub["run"].to_numpy()
    for crop in sub.loc[runs >= 0, "crop"].unique():
        rows = np.flatnonzero((runs >= 0) & (sub["crop"].to_numpy() == crop))
        lib = (libs or {}).get(WOFOST_WORLD[crop]) or _wofost_library(WOFOST_WORLD[crop])
        r = runs[rows]
        u = (t - sub["t_a"].to_numpy()[rows, None]) / sub["wscale"].to_numpy()[rows, None]
        Lr = lib["length"][r][:, None]
        inside = (u >= 0) & (u <= Lr - 1)
        uc = np.clip(u, 0, Lr - 1)
        i0 = np.floor(uc).astype(int)
        f = uc - i0
        i1 = np.minimum(i0 + 1, lib["green"].shape[1] - 1)
        rr = r[:, None]
        g = (1 - f) * lib["green"][rr, i0] + f * lib["green"][rr, i1]
        b = (1 - f) * lib["brown"][rr, i0] + f * lib["brown"][rr, i1]
        gain = lai_gain(crop)
        g = np.where(inside, g, 0.0) * gain
        b = np.where(inside, b, np.where(u > Lr - 1, lib["brown"][r, lib["length"][r].astype(int)
                                                                   - 1][:, None], 0.0)) * gain
        if crop == "winter_wheat":
            tsow = sub["t_sow"].to_numpy()[rows, None]
            aut = _logistic(0.12 * (t - np.nan_to_num(sub["tu_aut"].to_numpy()[rows, None])))
            emerged = _logistic((t - tsow - 7.0) * 0.8)
            fade = _logistic(-(t - np.nan_to_num(sub["greenup"].to_numpy()[rows, None])
                               - 25.0) * 0.15)
            a = 0.2 * gain * lib["laimax"][r][:, None] * aut * emerged * fade
            wi = winter[rows] if np.ndim(winter) else 0.0
            g = g + a * (1 - wi)
            b = b + a * wi
        green[rows] = g * lai_scale
        brown[rows] = b * lai_scale
    return green, brown


CROP_IDS = tuple(CROPS)


def reflectance_from_state(state: dict, *, k: np.ndarray | float = 0.5, soil_brightness=1.0,
                           wetness=1.0) -> tuple[np.ndarray, np.ndarray]:
    """Band reflectances from a canopy state: ``(refl[..., 10], fcover)``.

    ``fcover = 1 - exp(-k (LAI_green + LAI_brown))``; the canopy mixes green and senescent
    leaves in proportion to their leaf area; multiple scattering raises NIR with green LAI;
    the background is soil (darkened by ``wetness``, covered by residue) or flood water.
    """
    lg, lb = state["lai_green"], state["lai_brown"]
    lt = lg + lb
    k = np.asarray(k, dtype=float)
    if k.ndim == 1:
        k = k[:, None]
    fc = 1.0 - np.exp(-k * lt)
    gs = np.where(lt > 0, lg / np.where(lt > 0, lt, 1.0), 1.0)
    ms = 0.78 + 0.25 * (1.0 - np.exp(-0.35 * lg))
    green = GREEN * (1 + _NIR_BANDS * (ms[..., None] - 1))
    canopy = gs[..., None] * green + (1 - gs[..., None]) * BROWN
    sb = np.asarray(soil_brightness, dtype=float)
    sb = sb[:, None, None] if sb.ndim == 1 else sb
    wet = np.asarray(wetness, dtype=float)
    wet = wet[None, :, None] if wet.ndim == 1 else wet
    soil = SOIL * sb * wet
    soil = state["residue"][..., None] * BROWN + (1 - state["residue"][..., None]) * soil
    fl = state["flood"][..., None]
    bg = fl * WATER + (1 - fl) * soil
    refl = fc[..., None] * canopy + (1 - fc[..., None]) * bg
    return refl, fc


def _ratio(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(b) > 1e-12, a / b, np.nan)


#: Index formulas on band reflectance (band order of BANDS).
INDEX_FUNCS = {
    "ndvi": lambda r: _ratio(r[..., 6] - r[..., 2], r[..., 6] + r[..., 2]),
    "evi2": lambda r: _ratio(2.5 * (r[..., 6] - r[..., 2]), r[..., 6] + 2.4 * r[..., 2] + 1.0),
    "ndre": lambda r: _ratio(r[..., 7] - r[..., 3], r[..., 7] + r[..., 3]),
    "ndmi": lambda r: _ratio(r[..., 6] - r[..., 8], r[..., 6] + r[..., 8]),
    "gcvi": lambda r: _ratio(r[..., 6], r[..., 1]) - 1.0,
}


def compute_indices(refl: np.ndarray, names) -> dict[str, np.ndarray]:
    """Indices (``ndvi``, ``evi2``, ``ndre`` = (B8A-B05)/(B8A+B05), ``ndmi`` = (B08-B11)/(B08+B11),
    ``gcvi``) from reflectance arrays whose last axis follows :data:`BANDS`."""
    out = {}
    for nm in names:
        if nm not in INDEX_FUNCS:
            from ..errors import ConfigError

            raise ConfigError(f"unknown index {nm!r}; choose from {sorted(INDEX_FUNCS)}")
        out[nm] = INDEX_FUNCS[nm](refl)
    return out
