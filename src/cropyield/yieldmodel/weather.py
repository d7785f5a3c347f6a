"""Season weather covariates: daily weather summarised over phenological windows.

SCYM (Lobell et al. 2015, Remote Sens. Environ. 164:324-333) regresses yield on imagery
*and* weather covariates of the season: much of the year-to-year variation of yield comes
from weather after the canopy peak (radiation, heat and water during grain fill) that the
canopy shows late or not at all (docs/validation_yield.md section 7: 46 % of crop-model wheat
yield variance lies between weather years). Heat during grain fill shortens it and lowers
wheat yield (Asseng et al. 2011, Global Change Biol. 17:997-1012).

Entry point: :func:`weather_features` - one row per (field_id, season), windows anchored on
each season's own phenology (``sos``, ``pos``), so that they follow the crop whatever its
calendar:

* ``veg``: SOS to the day before POS (canopy build-up);
* ``fill``: POS to POS + ``fill_days`` (grain fill, 35 days by default).

Per window: mean minimum and maximum temperature (degC), mean global radiation
(MJ m-2 d-1), mean rain (mm d-1) and the share of days with maximum temperature above
``hot_c`` (30 degC by default). Means and shares rather than sums: they do not depend on the
window's length (a crop-model run placed on another calendar by a time warp keeps them).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..cropmodel import WEATHER_COLUMNS
from ..errors import ModelError

__all__ = ["WEATHER_VARIABLES", "WEATHER_WINDOWS", "MODEL_WINDOWS", "MODEL_STATS",
           "CROP_MODEL_FEATURE", "COVARIATE_KEYS", "season_covariates", "covariate_names",
           "join_covariates", "is_covariate_feature", "weather_feature_names",
           "weather_features", "is_weather_feature"]

#: Daily weather columns the features need (units in the names; as the crop-model weather).
WEATHER_VARIABLES = WEATHER_COLUMNS
#: Windows (name, description) of :func:`weather_features`.
WEATHER_WINDOWS = (("veg", "sos to pos"), ("fill", "pos to pos + fill_days"))
_STATS = ("tmin_c", "tmax_c", "radiation_mj_m2", "rain_mm_d", "hot_share")
#: Prefix of every weather feature name.
PREFIX = "wx_"
#: A window needs weather on at least this share of its days, else its features are NaN.
MIN_COVERAGE = 0.8


#: Windows the yield models offer to the feature choice by default: grain fill only. On the
#: crop-model seasons (docs/validation_yield.md section 8) adding the SOS-POS window lowered
#: held-out skill: every weather feature is nearly a year-level variable, and with ~16
#: training years ten of them overfit where five do not.
MODEL_WINDOWS = ("fill",)
#: Statistics the yield models offer by default: mean rain and mean maximum temperature of
#: each window of :data:`MODEL_WINDOWS`. The grain-fill water supply and heat are what carry
#: crop-model wheat yield across weather years (year-level r = +0.63 and -0.31 on the
#: section 8 seasons); with ~16 training years the three other statistics (Tmin, radiation,
#: hot-day share) added noise: held-out R² 0.39 with these two against 0.35 with all five
#: (docs/validation_yield.md section 9). Models fitted before store their five names and
#: keep predicting (every statistic is still computed).
MODEL_STATS = ("tmax_c", "rain_mm_d")
#: Name of the crop-model weather index as a season covariate
#: (:func:`cropyield.cropmodel.reference_yield`'s ``cm_yield_t_ha``, t/ha).
CROP_MODEL_FEATURE = "wx_cm_yield_t_ha"


#: Join keys of a season-covariate table (``field_id`` required).
COVARIATE_KEYS = ("field_id", "season", "crop")


def is_covariate_feature(name: str) -> bool:
    """Whether a model feature name is a season covariate: a ``wx_*`` name that is not
    computed from daily weather (:func:`weather_feature_names`)."""
    return is_weather_feature(name) and name not in _DAILY_NAMES


def season_covariates(covariates) -> pd.DataFrame:
    """Check a table of season-level weather covariates (``covariates=`` of the yield models).

    ``field_id`` (and ``season``, else every season of the field; and ``crop``, else any
    crop: a field with two crops in the year can carry each crop's value) and one or more
    numeric columns named ``wx_*`` that are not :func:`weather_feature_names` (those are
    computed from daily ``weather=``), e.g. :data:`CROP_MODEL_FEATURE`. They join the
    weather candidate sets of the learner choice (:func:`column_sets`).
    """
    cov = pd.DataFrame(covariates)
    if "field_id" not in cov.columns:
        raise ModelError("covariates need a 'field_id' column (and 'season')")
    extra = [c for c in cov.columns if c not in COVARIATE_KEYS]
    bad = [c for c in extra if not is_covariate_feature(c)]
    if bad or not extra:
        raise ModelError(f"covariate columns must be named '{PREFIX}*' and not be one of the "
                         f"daily-weather features; got {extra} (bad: {bad}); e.g. "
                         f"{CROP_MODEL_FEATURE!r} from cropyield.cropmodel.reference_yield")
    for c in extra:
        cov[c] = pd.to_numeric(cov[c], errors="coerce").astype(float)
    return cov[[c for c in COVARIATE_KEYS if c in cov.columns] + extra]


def covariate_names(covariates) -> list[str]:
    """The covariate columns of a :func:`season_covariates` table (checked)."""
    return [c for c in season_covariates(covariates).columns if c not in COVARIATE_KEYS]


def join_covariates(table: pd.DataFrame, covariates) -> pd.DataFrame:
    """``table`` (one row per field and season) with the checked covariate columns joined on
    the keys both have (a left join: seasons without a row get NaN)."""
    cov = season_covariates(covariates)
    keys = [k for k in COVARIATE_KEYS if k in cov.columns and k in table.columns]
    return table.drop(columns=[c for c in cov.columns if c not in keys and c in table.columns]
                      ).merge(cov.drop_duplicates(keys), on=keys, how="left")


def weather_feature_names(windows: Sequence[str] | None = None,
                          stats: Sequence[str] | None = None) -> list[str]:
    """Names of :func:`weather_features` columns (``wx_<window>_<statistic>``) of
    ``windows`` (default: every window of :data:`WEATHER_WINDOWS`) and ``stats`` (default:
    every statistic: ``tmin_c, tmax_c, radiation_mj_m2, rain_mm_d, hot_share``)."""
    ws = [w for w, _ in WEATHER_WINDOWS] if windows is None else list(windows)
    st = list(_STATS) if stats is None else list(stats)
    bad = [x for x in st if x not in _STATS]
    if bad:
        raise ValueError(f"unknown weather statistics {bad}; choose from {list(_STATS)}")
    return [f"{PREFIX}{w}_{s}" for w in ws for s in st]


#: Every feature name :func:`weather_features` computes from daily weather.
_DAILY_NAMES = frozenset(weather_feature_names())


def is_weather_feature(name: str) -> bool:
    """Whether a model feature name is a weather covariate."""
    return str(name).startswith(PREFIX)


def _naive_days(x) -> np.ndarray:
    t = pd.to_datetime(pd.Series(x))
    if getattr(t.dt, "tz", None) is not None:
        t = t.dt.tz_convert("UTC").dt.tz_localize(None)
    return t.dt.normalize().to_numpy("datetime64[D]")


def weather_features(weather: pd.DataFrame, seasons: pd.DataFrame, *, fill_days: int = 35,
                     hot_c: float = 30.0) -> pd.DataFrame:
    """Weather covariates per (field_id, season) over windows anchored on phenology.

    Parameters
    ----------
    weather : DataFrame
        Daily weather per field: ``field_id, time`` (dates; tz-aware ones are taken in UTC),
        ``tmin_c, tmax_c`` (degC), ``radiation_mj_m2`` (global radiation, MJ m-2 d-1),
        ``rain_mm`` (mm d-1); e.g. :attr:`cropyield.cropmodel.SimulatedSeasons.weather` or
        :func:`cropyield.synthetic.field_weather`. Several rows of one field and day are
        averaged.
    seasons : DataFrame
        ``field_id, season, sos, pos`` (dates; :func:`cropyield.seasons.phenology` output).
    fill_days : int
        Length of the grain-fill window after the peak (days).
    hot_c : float
        Threshold of a hot day (maximum temperature, degC).

    Returns
    -------
    DataFrame
        ``field_id, season`` and :func:`weather_feature_names` columns: per window the mean
        ``tmin_c``, ``tmax_c`` (degC), ``radiation_mj_m2`` (MJ m-2 d-1), ``rain_mm_d``
        (mm d-1) and ``hot_share`` (share of days with ``tmax_c > hot_c``). A window whose
        days have weather on less than 80 % of them (or a season without ``sos``/``pos``,
        or a field without weather) gives NaN features; the yield models flag such seasons
        ``NO_WEATHER``.

    Raises
    ------
    ModelError
        Missing columns in ``weather`` or ``seasons``.

    Examples
    --------
    >>> import pandas as pd
    >>> days = pd.date_range("2022-04-01", periods=60)
    >>> wx = pd.DataFrame({"field_id": "a", "time": days, "tmin_c": 10.0,
    ...                    "tmax_c": [20.0] * 30 + [32.0] * 30,
    ...                    "radiation_mj_m2": 18.0, "rain_mm": 2.0})
    >>> s = pd.DataFrame({"field_id": ["a"], "season": [1], "sos": [days[0]],
    ...                   "pos": [days[30]]})
    >>> f = weather_features(wx, s, fill_days=20)
    >>> float(f["wx_veg_tmax_c"].iloc[0]), float(f["wx_fill_hot_share"].iloc[0])
    (20.0, 1.0)
    """
    need = {"field_id", "time", *WEATHER_VARIABLES}
    miss = need - set(weather.columns)
    if miss:
        raise ModelError(f"weather needs columns {sorted(need)}; missing {sorted(miss)} "
                         "(daily tmin_c/tmax_c in degC, radiation_mj_m2 in MJ m-2 d-1, "
                         "rain_mm in mm/d per field_id and time)")
    s = pd.DataFrame(seasons)
    for c in ("field_id", "sos", "pos"):
        if c not in s.columns:
            raise ModelError(f"seasons need a '{c}' column (phenology output) for the "
                             "weather windows")
    if "season" not in s.columns:
        s = s.assign(season=s.groupby("field_id").cumcount() + 1)
    w = pd.DataFrame({"field_id": weather["field_id"].to_numpy(),
                      "day": _naive_days(weather["time"]),
                      **{c: pd.to_numeric(weather[c], errors="coerce").to_numpy(float)
                         for c in WEATHER_VARIABLES}})
    if w.duplicated(["field_id", "day"]).any():
        w = w.groupby(["field_id", "day"], sort=False, as_index=False).mean()
    w = w.sort_values(["field_id", "day"], kind="stable")
    groups = w.groupby("field_id", sort=False).indices
    day = w["day"].to_numpy("datetime64[D]")
    arr = {c: w[c].to_numpy(float) for c in WEATHER_VARIABLES}
    sos = _naive_days(s["sos"])
    pos = _naive_days(s["pos"])
    names = weather_feature_names()
    out = np.full((len(s), len(names)), np.nan)
    one = np.timedelta64(1, "D")
    for i, fid in enumerate(s["field_id"].to_numpy()):
        g = groups.get(fid)
        if g is None or np.isnat(sos[i]) or np.isnat(pos[i]) or pos[i] <= sos[i]:
            continue
        d = day[g]
        row: list[float] = []
        for a, b in ((sos[i], pos[i] - one), (pos[i], pos[i] + int(fill_days) * one)):
            n_days = int((b - a) / one) + 1
            lo, hi = np.searchsorted(d, a), np.searchsorted(d, b, side="right")
            sel = g[lo:hi]
            vals = {c: arr[c][sel] for c in WEATHER_VARIABLES}
            ok = np.all(np.isfinite(np.column_stack(list(vals.values()))), axis=1) \
                if len(sel) else np.zeros(0, bool)
            if ok.sum() < MIN_COVERAGE * n_days:
                row += [np.nan] * len(_STATS)
                continue
            tmax = vals["tmax_c"][ok]
            row += [float(np.mean(vals["tmin_c"][ok])), float(np.mean(tmax)),
                    float(np.mean(vals["radiation_mj_m2"][ok])),
                    float(np.mean(vals["rain_mm"][ok])), float(np.mean(tmax > hot_c))]
        out[i] = row
    df = pd.DataFrame(out, columns=names)
    df.insert(0, "season", s["season"].to_numpy())
    df.insert(0, "field_id", s["field_id"].to_numpy())
    return df


def weather_columns(names: Sequence[str]) -> list[int]:
    """Positions of the weather features in a feature-name list."""
    return [j for j, n in enumerate(names) if is_weather_feature(n)]


def column_sets(names: Sequence[str]) -> dict[str, list[int]]:
    """Feature subsets for the learner choice with weather (and pooled features) as extra
    candidates.

    The sets of :func:`cropyield.yieldmodel.windows.feature_column_sets` over the season
    features of the field itself (``"full"`` first: the reference) and, when ``names`` has
    weather features, each of them plus the weather features of :data:`MODEL_STATS`
    (``"full+weather"``, ``"compact+weather"``; every weather feature given when none is of
    those statistics) and, when ``names`` has weather statistics beyond them, each plus
    every weather feature (``"full+weather_all"``, ``"compact+weather_all"``): on
    crop-model wheat the two statistics generalise better across ~16 training years, on the
    demo's crop-model maize all five (docs/validation_yield.md section 9), so the grouped CV
    chooses. When ``names`` has pooled group features (:mod:`cropyield.yieldmodel.pooled`),
    instead each base set plus the pooled and the :data:`MODEL_STATS` weather features
    together (``"full+pooled+weather"``, ``"compact+pooled+weather"``; ``"+pooled"`` without
    weather): both carry the same year-level signal, and fewer candidates make the one-SE
    choice steadier with ~16 training years (offering the weather-only sets too let one of
    five winter-wheat folds fall back to them: held-out R² 0.45 instead of 0.49,
    docs/validation_yield.md section 9). The grouped-CV choice
    (:func:`cropyield.yieldmodel.learners.select_model`) keeps the reference unless another
    set is better by more than one standard error, so the extras are used only where they
    pay on held-out groups.
    """
    from .pooled import is_pooled_feature
    from .windows import feature_column_sets

    wx_all = weather_columns(names)
    model = {f"_{st}" for st in MODEL_STATS}
    # the MODEL_STATS pair and every season covariate
    wx = [j for j in wx_all if any(names[j].endswith(m) for m in model)
          or is_covariate_feature(names[j])] or wx_all
    pl = [j for j, n in enumerate(names) if is_pooled_feature(n)]
    obs = [j for j, n in enumerate(names) if not is_weather_feature(n)
           and not is_pooled_feature(n)]
    base = {k: [obs[i] for i in v]
            for k, v in feature_column_sets([names[j] for j in obs]).items()} if obs else {}
    sets = dict(base)
    if wx and not pl:
        for k in base:
            sets[f"{k}+weather"] = base[k] + wx
        if len(wx_all) > len(wx):
            for k in base:
                sets[f"{k}+weather_all"] = base[k] + wx_all
    if pl:
        for k in base:
            sets[f"{k}+pooled" + ("+weather" if wx else "")] = base[k] + pl + wx
    if not sets and (wx or pl):
        sets["weather" if not pl else "pooled"] = pl + wx
    return sets
