"""The offline demo: a synthetic county served by real servers, run through the public API.

``cropyield demo`` builds (or reuses from the cache) a synthetic Sentinel-2 world with known
truth, serves its COGs over HTTP with Range support and its STAC items through a real STAC API
(``rustac serve``), then runs exactly what a user runs against Earth Search:
``search_scenes`` → ``field_observations`` → ``smooth_series`` → ``phenology`` →
``identify_crops`` → ``fit_yield_model``/``estimate_yield`` → ``credit.assess``.
It prints a summary and the accuracy against the synthetic truth, and writes the results.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._geo import field_shapes as field_shape_table
from ._io import clean_stale_dirs, work_dir_prefix
from ._log import logger
from ._version import __version__

__all__ = ["run_demo", "cache_dir", "demo_world", "simulation_core", "accuracy_report",
           "over_lending", "referral_drivers", "declaration_check", "demo_crop_cuts",
           "demo_county_means", "field_shape_table", "DEMO_SIZES"]

#: Named demo sizes → synthetic-world overrides. "small" is the default (< 3 min on 2 cores).
DEMO_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"size_m": (2400.0, 1600.0), "n_fields": 120, "tile_size_px": 160,
             "tile_overlap_px": 40},
    "small": {},
    "medium": {"size_m": 12000.0, "n_fields": 2500, "tile_size_px": 800, "tile_overlap_px": 120},
    "county": {"size_m": 30000.0, "n_fields": 20000, "tile_size_px": 2000,
               "tile_overlap_px": 200, "blocksize": 512},
}


#: Edge pixels less than half inside a field are left out of its means: on smallholder
#: fields they mix in the neighbours (docs/method.md; on the tiny demo world 0.5 raised
#: crop identification from 0.881 to 0.901 and yield R2 from 0.065 to 0.098).
MIN_COVERAGE_FRAC = 0.5

#: Prior odds the demo gives to declared crops (see ``identify_crops``).
DECLARED_PRIOR_ODDS = 10.0


#: Credit policy version the demo assesses with (``Policy.preset``): 1.1.0 leaves a field
#: whose crop identity is in doubt out of the limit instead of referring the farmer
#: (docs/credit.md, "Excluded fields").
CREDIT_POLICY_VERSION = "1.1.0"


#: Crops whose yield model is trained on crop-model simulations (the crops whose truth the
#: synthetic world takes from WOFOST) and how many simulated seasons it trains on.
SIMULATION_CROPS = ("winter_wheat", "summer_maize", "spring_maize")
N_SIMULATED = 300
#: Offer the SCYM regressions the crop-model weather index (WOFOST's reference yield under
#: the season's station weather; docs/validation_yield.md section 10).
CROP_MODEL_INDEX = True
#: Observation model of the simulated training seasons (``cropmodel.simulate_seasons(sky=)``):
#: the Sentinel-2 process the synthetic world documents (seasonal clouds masking whole
#: smallholder fields, haze next to clouds, edge pixels mixing with the landscape, wet soil);
#: the flat "uniform" model saw cleaner, larger fields (docs/validation_yield.md, "Demo").
SIMULATION_SKY = "sentinel2"

#: Crop-cut measurement error (log-scale sigma; see ``run_demo``).
CROP_CUT_SIGMA = 0.13

#: Date of the demo's in-season monitoring run (summer maize mid-season).
MONITOR_AS_OF = "2022-08-20"


def cache_dir() -> Path:
    """The user cache folder (``$CROPYIELD_CACHE_DIR``, else ``$XDG_CACHE_HOME/cropyield``,
    else ``~/.cache/cropyield``), created with mode 0700."""
    root = os.environ.get("CROPYIELD_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "cropyield")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def demo_crop_model_index(world) -> pd.DataFrame:
    """Season covariates of the demo's fields: the crop-model weather index of each
    crop-model crop (:data:`SIMULATION_CROPS`) under the field's weather station record.

    A user runs :func:`cropyield.cropmodel.reference_yield` on their county's station or
    grid weather; the world's stations record the shipped weather years (one per village
    block, ``world.weather["weather_year"]``), whose index is shipped
    (:func:`cropyield.cropmodel.weather_year_index`), so the demo runs no WOFOST.
    Columns ``field_id, crop, wx_cm_yield_t_ha``."""
    from .cropmodel import weather_year_index
    from .yieldmodel.weather import CROP_MODEL_FEATURE

    wx = world.weather
    years = wx.groupby("field_id")["weather_year"].agg(lambda v: v.mode().iloc[0])
    return pd.concat([pd.DataFrame({"field_id": years.index.to_numpy(), "crop": crop,
                                    CROP_MODEL_FEATURE: weather_year_index(crop,
                                                                           years.to_numpy())})
                      for crop in SIMULATION_CROPS], ignore_index=True)


def simulation_core(crop: str, *, indices, seed: int, n: int = 0, cache: bool = True,
                    weather: bool = False, crop_model: bool = False):
    """The crop-model-trained regression of ``crop`` before levelling
    (:func:`cropyield.yieldmodel.simulation.train_on_simulations` on ``n`` seasons of the
    shipped WOFOST library, default :data:`N_SIMULATED`, observed with
    :data:`SIMULATION_SKY`; ``weather=True``: with the simulations' weather offered as
    covariates; ``crop_model=True``: and the crop-model weather index of each season's
    weather year, ``train_on_simulations(covariates=True)``), cached as JSON under
    ``cache_dir()/models/`` by library digest, crop, size,
    seed, indices, sky, weather statistics and package version (and a format version: 7
    since the library's seasons carry their field's ``area_ha``/``perimeter_m``, so the
    core may use the edge covariate ``perimeter_area_m``; 9 since the weather candidates
    are the ``MODEL_STATS`` pair and all five statistics; 10 since the library's edge pixels
    see bare neighbours, ``cropmodel.NEIGHBOUR_CANOPY_SHARE``, whose value for the crop is
    in the key too; 11 with the crop-model index table's values); a cached file that does
    not load is refitted, never trusted."""
    import hashlib
    import json

    from .cropmodel import (library_digest, neighbour_share_of, reference_index_table,
                            simulate_seasons)
    from .yieldmodel import YieldModel
    from .yieldmodel.simulation import train_on_simulations
    from .yieldmodel.weather import MODEL_STATS

    n = int(n or N_SIMULATED)
    key = hashlib.sha256(json.dumps(
        [library_digest(), crop, n, int(seed), list(indices), __version__, "detected", 10,
         SIMULATION_SKY, list(MODEL_STATS) if weather else False,
         neighbour_share_of(crop), 11,
         reference_index_table()["cm_yield_t_ha"].round(4).tolist() if crop_model else False]
    ).encode()).hexdigest()[:20]
    path = cache_dir() / "models" / f"simulation-{crop}-{key}.json"
    if cache and path.exists():
        try:
            core = YieldModel.from_json(path)
            core.cv_ = {**(core.cv_ or {}), "cached": str(path)}
            return core
        except Exception as exc:  # corrupt cache: refit
            logger.warning("cached simulation model %s unreadable (%s); refitting", path, exc)
    core = train_on_simulations(simulate_seasons(crop, n, seed=seed, sky=SIMULATION_SKY),
                                crop=crop, indices=list(indices), seed=seed,
                                weather=bool(weather) or None,
                                covariates=True if crop_model else None)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        core.to_json(tmp)
        os.replace(tmp, path)
    return core


def demo_world(config, *, cache: bool = True, progress: Callable | None = None):
    """Return the synthetic world for ``config``, generating it once per parameter set.

    Worlds are cached under ``cache_dir()/worlds/<config key>``; the key covers every parameter
    and the library version. Generation writes to a temporary folder that is renamed into
    place, so an interrupted run never leaves a half-written world behind.
    """
    from . import synthetic

    if not cache:
        tmp = Path(tempfile.mkdtemp(prefix="cropyield-world-"))
        return synthetic.make_world(tmp, config, progress=progress)
    root = cache_dir() / "worlds" / config.key()
    # folders of builds killed before their cleanup ran (dead pid, or older than a day)
    clean_stale_dirs(root.parent, ".building-")
    if (root / "world.json").is_file():
        try:
            return synthetic.World.open(root)
        except Exception as exc:  # a corrupt cache is rebuilt, never trusted
            logger.warning("cached world at %s unreadable (%s); rebuilding", root, exc)
            shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=work_dir_prefix(".building-"), dir=root.parent))
    try:
        synthetic.make_world(tmp, config, progress=progress)
        try:
            os.replace(tmp, root)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return synthetic.World.open(root)


def _match_seasons(detected: pd.DataFrame, truth: pd.DataFrame, max_days: int = 45) -> pd.DataFrame:
    """Pair detected seasons with true seasons of the same field by nearest peak date."""
    d = detected.dropna(subset=["pos"]).copy()
    t = truth.dropna(subset=["pos"]).copy()
    d["pos"] = pd.to_datetime(d["pos"]).dt.tz_localize(None) if getattr(
        pd.to_datetime(d["pos"]).dt, "tz", None) is not None else pd.to_datetime(d["pos"])
    t["pos"] = pd.to_datetime(t["pos"])
    rows = []
    for fid, dg in d.groupby("field_id"):
        tg = t[t["field_id"] == fid]
        for _, r in dg.iterrows():
            if tg.empty:
                continue
            dt = (tg["pos"] - r["pos"]).abs().dt.days
            j = dt.idxmin()
            if dt[j] <= max_days:
                rows.append({"field_id": fid, "season": r["season"], "true_season": tg.loc[j, "season"]})
    return pd.DataFrame(rows, columns=["field_id", "season", "true_season"])


def in_season_alerts(observations: pd.DataFrame, fields, as_of: str) -> pd.DataFrame:
    """Monitoring as a lender runs it mid-season: only imagery up to ``as_of`` is used.

    The series and seasons are recomputed from observations up to ``as_of`` (no look-ahead);
    the crop is what the farmer declared, as known in season.
    """
    from . import credit
    from .seasons import phenology
    from .series import smooth_series

    cut = pd.Timestamp(as_of, tz="UTC")
    obs = observations[observations["time"] <= cut]
    series = smooth_series(obs, index="ndvi")
    seasons = phenology(series, index="ndvi", as_of=as_of)
    known = fields[[c for c in ("field_id", "farmer_id", "crop") if c in fields]].copy()
    if "crop" in known:   # the declared crop system's summer crop is the one growing now
        known["crop"] = known["crop"].astype(str).str.split("+").str[-1]
    return credit.monitor(series, known, as_of=as_of, phenology=seasons)


def _canopy_ceilings(world, truth: pd.DataFrame, crops) -> dict[str, dict[str, Any]]:
    """Canopy ceiling per crop: grouped-CV R2 of a regression on the noise-free daily true
    canopy of every true season of the crop (:func:`cropyield.yieldmodel.canopy_ceiling`);
    ``None`` where it cannot be computed (too few seasons)."""
    from .errors import ModelError
    from .yieldmodel import canopy_ceiling

    canopy = world.canopy
    canopy = canopy[canopy["season"] > 0]
    out: dict[str, dict[str, Any]] = {}
    obs = truth[["field_id", "season", "crop", "true_yield_t_ha"]].rename(
        columns={"true_yield_t_ha": "yield_t_ha"})
    for crop in crops:
        o = obs[obs["crop"] == crop]
        c = canopy[canopy["crop"] == crop]
        try:
            r = canopy_ceiling(c, o, seed=0)
        except ModelError as exc:
            logger.info("no canopy ceiling for %s: %s", crop, exc)
            continue
        out[str(crop)] = {"r2_ceiling": float(r["r2"]), "n_ceiling": int(r["n"])}
    return out


def _observed_ceilings(result, truth: pd.DataFrame, pairs: pd.DataFrame,
                       crops) -> dict[str, dict[str, Any]]:
    """Observation ceiling per crop: the canopy ceiling's regression (same features, learner
    choice and folds) on the pipeline's smoothed series over the detected seasons, fitted
    to every matched season's true yield. An oracle - no lender has those yields - that
    says what the imagery the pipeline saw (clouds, haze, mixed edge pixels, the season
    dates it found) can reveal with this learner; ``None`` where it cannot be computed."""
    from .errors import ModelError
    from .yieldmodel import canopy_ceiling

    idx = [c for c in ("ndvi", "evi2", "gcvi", "ndre", "ndmi") if c in result.series.columns]
    series = pd.DataFrame(result.series)[["field_id", "time", *idx]]
    seasons = pd.DataFrame(result.phenology)[["field_id", "season", "sos", "eos"]]
    obs = pairs.merge(truth[["field_id", "season", "crop", "true_yield_t_ha"]].rename(
        columns={"season": "true_season", "true_yield_t_ha": "yield_t_ha"}),
        on=["field_id", "true_season"])[["field_id", "season", "crop", "yield_t_ha"]]
    out: dict[str, dict[str, Any]] = {}
    for crop in crops:
        o = obs[obs["crop"] == crop]
        try:
            r = canopy_ceiling(series[series["field_id"].isin(set(o["field_id"]))], o,
                               seasons=seasons, seed=0)
        except ModelError as exc:
            logger.info("no observation ceiling for %s: %s", crop, exc)
            continue
        out[str(crop)] = {"r2_ceiling_observed": float(r["r2"])}
    return out


def over_lending(profiles, world, estimates: pd.DataFrame, *, share: float = 0.8
                 ) -> dict[str, Any]:
    """Loan sizing against the truth: approved farmers whose limit exceeds ``share`` of the
    TRUE output value of their fields (true production of every true season in the world's
    window x the price the lender used for that crop; a crop without a price counts 0).
    """
    price = estimates.dropna(subset=["price_cny_per_t"]).groupby("crop")["price_cny_per_t"].first()
    truth = world.seasons
    fields = world.fields[["field_id", "farmer_id"]]
    tv = truth.assign(v=truth["true_production_t"] * truth["crop"].map(price).fillna(0.0))
    value = tv.merge(fields, on="field_id").groupby("farmer_id")["v"].sum()
    approved = [p for p in profiles if p.decision == "approve"]
    over = [p.farmer_id for p in approved
            if p.suggested_limit_cny > share * float(value.get(p.farmer_id, 0.0))]
    ratio = [p.suggested_limit_cny / max(float(value.get(p.farmer_id, 0.0)), 1e-9)
             for p in approved]
    return {"over_lending_share": float(len(over) / len(approved)) if approved else 0.0,
            "over_lending_n": len(over), "approved_n": len(approved),
            "limit_to_true_value_max": float(max(ratio)) if ratio else None,
            "limit_to_true_value_median": float(np.median(ratio)) if ratio else None,
            "over_lending_threshold": share}


def declaration_check(profiles, world) -> dict[str, Any]:
    """Wrong crop declarations against the credit decisions (the world knows the truth).

    A field's declaration is wrong when its declared crop system differs from the true
    one. Returns how many farmers hold one, how many of them were approved, and how many
    approved limits rest on a wrongly declared field (must be 0: such a field is either
    referred or excluded from the limit), plus the number of excluded fields.
    """
    f = world.fields
    wrong = set(f.loc[f["crop"].astype(str) != f["true_crop"].astype(str), "field_id"])
    holders = set(f.loc[f["field_id"].isin(wrong), "farmer_id"])
    approved = [p for p in profiles if p.decision == "approve"]
    in_limit = [p.farmer_id for p in approved
                if ({e.field_id for e in p.fields} - set(p.excluded_fields)) & wrong]
    return {"wrong_declaration_farmers": len(holders),
            "wrong_declaration_approved": sum(p.farmer_id in holders for p in approved),
            "wrong_declaration_in_limit": len(in_limit),
            "excluded_fields_n": sum(len(p.excluded_fields) for p in profiles),
            "farmers_with_excluded_fields": sum(bool(p.excluded_fields) for p in profiles),
            "credit_policy_version": profiles[0].policy_version if profiles else None}


def referral_drivers(profiles) -> dict[str, Any]:
    """Referral rate and what drives it: per reason code, the farmers it referred (a farmer
    counts once per code) and the farmers for whom it was the only referring code."""
    refer = [p for p in profiles if p.decision == "refer"]
    by_code: dict[str, int] = {}
    sole: dict[str, int] = {}
    for p in refer:
        codes = sorted({r.code for r in p.reasons if r.effect == "refer"})
        for c in codes:
            by_code[c] = by_code.get(c, 0) + 1
        if len(codes) == 1:
            sole[codes[0]] = sole.get(codes[0], 0) + 1
    return {"referral_rate": float(len(refer) / len(profiles)) if profiles else 0.0,
            "referred_n": len(refer),
            "referral_reasons": dict(sorted(by_code.items(), key=lambda kv: -kv[1])),
            "referral_sole_reasons": dict(sorted(sole.items(), key=lambda kv: -kv[1]))}


def accuracy_report(result, world, *, calibration_fields=()) -> dict[str, Any]:
    """Accuracy of a pipeline run against the synthetic truth (never used by the model).

    Fields used for calibration (crop cuts) are excluded from the yield figures.
    """
    truth = world.seasons.copy()
    truth_fields = world.fields
    pairs = _match_seasons(result.phenology, truth)
    report: dict[str, Any] = {}
    # season detection on double-cropped fields
    dbl = truth.groupby("field_id")["season"].nunique()
    dbl_ids = set(dbl[dbl >= 2].index)
    found = result.phenology.dropna(subset=["pos"]).groupby("field_id")["season"].nunique()
    if dbl_ids:
        report["double_crop_split_rate"] = float(np.mean([found.get(f, 0) >= 2 for f in dbl_ids]))
    # crop identification, per matched season
    crops = result.crops.merge(pairs, on=["field_id", "season"]).merge(
        truth[["field_id", "season", "crop"]].rename(columns={"season": "true_season",
                                                               "crop": "true_crop"}),
        on=["field_id", "true_season"])
    if len(crops):
        report["crop_id_accuracy"] = float((crops["crop"] == crops["true_crop"]).mean())
        report["crop_id_n"] = int(len(crops))
        # the same identification from the imagery alone (declarations not used)
        from .identify import identify_crops

        image_only = identify_crops(result.phenology, region=result.crops.attrs.get(
            "region", "north_china_plain"))[["field_id", "season", "crop"]].merge(
            crops[["field_id", "season", "true_crop"]], on=["field_id", "season"])
        report["crop_id_accuracy_image_only"] = float(
            (image_only["crop"] == image_only["true_crop"]).mean())
    # yield accuracy per crop (pooled figures mix crops and crop-identification errors)
    # yield on matched seasons, held-out fields only
    est = result.estimates.merge(pairs, on=["field_id", "season"]).merge(
        truth[["field_id", "season", "crop", "true_yield_t_ha"]].rename(
            columns={"season": "true_season", "crop": "true_crop"}),
        on=["field_id", "true_season"])
    est = est[~est["field_id"].isin(set(calibration_fields))]
    ok = est[np.isfinite(est["yield_t_ha_p50"]) & np.isfinite(est["true_yield_t_ha"])]
    report["yield_n_estimated"] = int(len(ok))
    report["yield_n_withheld_nan"] = int(len(est) - len(ok))
    if len(ok) >= 3:
        y, p = ok["true_yield_t_ha"].to_numpy(), ok["yield_t_ha_p50"].to_numpy()
        report["yield_r2"] = float(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))
        report["yield_rmse_t_ha"] = float(np.sqrt(np.mean((y - p) ** 2)))
        report["yield_rmse_pct"] = float(100 * report["yield_rmse_t_ha"] / y.mean())
        report["yield_bias_t_ha"] = float(np.mean(p - y))
        inside = (y >= ok["yield_t_ha_p10"].to_numpy()) & (y <= ok["yield_t_ha_p90"].to_numpy())
        report["p10_p90_coverage"] = float(inside.mean())
        # per crop: the seasons identified as the crop they are (a misidentified season's
        # truth is another crop's yield on another basis; identification has its own figure)
        per_crop = {}
        right = ok[ok["crop"] == ok["true_crop"]]
        counts = right["crop"].value_counts()
        ceilings = _canopy_ceilings(world, truth, sorted(counts[counts >= 10].index))
        # (the oracle on the pipeline's series, for the crops the demo's bar is about)
        observed = _observed_ceilings(result, truth, pairs, sorted(counts[counts >= 30].index))
        wrong = ok[ok["crop"] != ok["true_crop"]]["crop"].value_counts()
        for crop, g in right.groupby("crop"):
            if len(g) >= 10:
                yc, pc = g["true_yield_t_ha"].to_numpy(), g["yield_t_ha_p50"].to_numpy()
                per_crop[str(crop)] = {
                    "n": int(len(g)),
                    "r2": float(1 - np.sum((yc - pc) ** 2) / np.sum((yc - yc.mean()) ** 2)),
                    "rmse_t_ha": float(np.sqrt(np.mean((yc - pc) ** 2))),
                    "bias_t_ha": float(np.mean(pc - yc)),
                    "p10_p90_coverage": float(((yc >= g["yield_t_ha_p10"]) &
                                               (yc <= g["yield_t_ha_p90"])).mean()),
                    **ceilings.get(str(crop), {"r2_ceiling": None, "n_ceiling": 0}),
                    **observed.get(str(crop), {"r2_ceiling_observed": None}),
                    "n_wrong_crop": int(wrong.get(crop, 0)),
                }
        report["yield_per_crop"] = per_crop
    report["n_fields"] = int(len(truth_fields))
    return report


def demo_crop_cuts(world, phenology: pd.DataFrame, *, seed: int,
                   fraction: float = 0.1) -> tuple[list[str], pd.DataFrame]:
    """The demo's crop cuts: the fields a bank's staff would measure and what they measure.

    ``fraction`` of the world's fields (at least 3), drawn with ``seed``; each cut is the
    field's true yield of the season ``phenology`` detected (matched by
    :func:`_match_seasons`) times a lognormal measurement error of sigma
    :data:`CROP_CUT_SIGMA` (mean-unbiased).

    Returns
    -------
    (list of str, DataFrame)
        The calibration field ids (sorted) and the cuts: the matched seasons' columns with
        ``crop`` and ``true_yield_t_ha`` (the measured yield, t/ha, despite the name).
    """
    fields, truth = world.fields, world.seasons
    rng = np.random.default_rng(seed)
    ids = np.array(sorted(fields["field_id"]))
    calib_ids = sorted(rng.choice(ids, size=max(3, int(len(ids) * fraction)),
                                  replace=False).tolist())
    pairs = _match_seasons(phenology, truth)
    cuts = pairs[pairs["field_id"].isin(calib_ids)].merge(
        truth[["field_id", "season", "crop", "true_yield_t_ha"]].rename(
            columns={"season": "true_season"}), on=["field_id", "true_season"])
    # a crop cut measures the true yield with error: lognormal, sigma 0.13, i.e. a mean
    # absolute error of ~10.6 %, the best sampling protocol against full-plot harvests of
    # 237 smallholder maize plots (random octant; Kosmowski et al. 2021, Food Policy
    # 102:102122; other protocols were worse, farmer estimates 23 %)
    cut_rng = np.random.default_rng([seed, 17])
    cuts["true_yield_t_ha"] = cuts["true_yield_t_ha"] * np.exp(
        cut_rng.normal(0.0, CROP_CUT_SIGMA, len(cuts)) - 0.5 * CROP_CUT_SIGMA ** 2)
    return calib_ids, cuts


def demo_county_means(world) -> dict[str, float]:
    """The county statistic a lender looks up in the statistical yearbook: per crop, the
    area-weighted mean true yield (t/ha) of every season of the crop in the world."""
    return {c: float(g["true_production_t"].sum() / g["area_ha"].sum())
            for c, g in world.seasons.groupby("crop") if g["area_ha"].sum() > 0}


def run_demo(
    out: str | Path = "cropyield-demo",
    *,
    seed: int = 0,
    size: str = "small",
    cache: bool = True,
    crop_cut_fraction: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build/serve the synthetic world, run the chain through the public API, write results.

    Parameters
    ----------
    out : path
        Output folder (created). Receives ``estimates.parquet`` (GeoParquet), the other stage
        tables, ``credit_profiles.json``, ``summary.json`` and ``demo.png``.
    seed : int
        Seed of the synthetic world and of the crop-cut sample; same seed, same numbers.
    size : {"tiny", "small", "medium", "county"}
        World size preset (see :data:`DEMO_SIZES`).
    crop_cut_fraction : float
        Share of fields whose true yield is "measured" by crop cuts and used to calibrate the
        yield model; accuracy is reported on the other fields only.

    Returns
    -------
    dict
        The summary written to ``summary.json``.
    """
    from . import credit, servers, synthetic
    from .catalogs import search_scenes
    from .pipeline import estimate
    from .value import estimate_yield
    from .yieldmodel import fit_yield_model

    say = progress or (lambda msg: logger.info("%s", msg))
    if size not in DEMO_SIZES:
        raise ValueError(f"size must be one of {sorted(DEMO_SIZES)}, got {size!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    config = synthetic.WorldConfig(seed=seed, **DEMO_SIZES[size])
    say(f"synthetic world (seed {seed}, size {size}) ...")
    world = demo_world(config, cache=cache,
                       progress=lambda i, n, what="": say(f"  generating {what} {i}/{n}"))
    t_world = time.perf_counter() - t0
    user_cols = [c for c in ("field_id", "farmer_id", "crop", "declared_area_mu") if c in world.fields]
    fields = world.fields[user_cols + ["geometry"]]
    start, end = config.start, config.end

    with servers.serve_world(world) as srv:
        say(f"STAC API at {srv.stac_url}, COGs at {srv.cog_url}")
        scenes = search_scenes(fields, start, end, catalog=srv.stac_url)
        say(f"found {len(scenes)} scenes on tiles {sorted({s.tile for s in scenes})}")

        def stage(i, n, name):
            say(f"[{i}/{n}] {name}")

        # planting declarations are mostly right: let them break ties the imagery cannot
        # (summer soybean vs maize); strong contrary evidence still flags CROP_MISMATCH
        result = estimate(fields, start, end, scenes=scenes, progress=stage,
                          read_progress=True, declared_prior_odds=DECLARED_PRIOR_ODDS,
                          min_coverage_frac=MIN_COVERAGE_FRAC,
                          policy=credit.Policy.preset(CREDIT_POLICY_VERSION))
    # Calibrate the yield model on a crop-cut sample (what a bank's field staff measure),
    # then re-estimate: intervals become conformal on those residuals.
    calib_ids: list[str] = []
    if crop_cut_fraction > 0:
        calib_ids, cuts = demo_crop_cuts(world, result.phenology, seed=seed,
                                         fraction=crop_cut_fraction)
        models = {}
        from .errors import ModelError

        indices = [c for c in ("ndvi", "evi2", "gcvi", "ndre", "ndmi")
                   if c in result.series.columns]
        # each field's area, perimeter and latitude, as estimate_yield gives them to the
        # models: the level must be set on the predictions the estimates will have (a
        # missing latitude moved the radiation features and the maize level by ~0.1 t/ha)
        world_area = field_shape_table(fields)
        county_means = demo_county_means(world)
        covariates = demo_crop_model_index(world)
        for crop in sorted(set(cuts["crop"]) | set(SIMULATION_CROPS) | set(county_means)):
            g = cuts[cuts["crop"] == crop]
            obs = g.rename(columns={"true_yield_t_ha": "yield_t_ha"})[
                ["field_id", "season", "yield_t_ha"]]
            # the seasons identified as this crop (their area weights the comparison with
            # the county statistic)
            cs = result.phenology.merge(
                result.crops.loc[result.crops["crop"] == crop, ["field_id", "season", "crop"]],
                on=["field_id", "season"]).merge(world_area, on="field_id", how="left")
            if crop in SIMULATION_CROPS:
                # SCYM-style: trained on crop-model seasons (the shipped WOFOST library seen
                # through the same canopy/cloud model), level set by the crop cuts
                try:
                    # the fields' daily weather (each crop-model season's weather year on
                    # the world calendar) offered as covariates, as SCYM uses them
                    core = simulation_core(crop, indices=indices, seed=seed, cache=cache,
                                           weather=True, crop_model=CROP_MODEL_INDEX)
                    models[crop] = fit_yield_model(
                        result.series, obs, crop=crop, method="simulation",
                        seasons=cs, indices=indices, seed=seed, simulated=core,
                        county_mean_t_ha=county_means.get(crop),
                        cut_error_sd=CROP_CUT_SIGMA, weather=world.weather,
                        covariates=covariates if CROP_MODEL_INDEX else None)
                    continue
                except ModelError as exc:
                    logger.warning("simulation model for %s failed (%s); LUE instead", crop, exc)
            # the other crops: the LUE model (value-only crops: benchmark x vigour), its
            # level set by the county statistic and shrunk towards the crop cuts (any
            # number); without a county figure, by >= 5 crop cuts alone
            county = county_means.get(crop)
            if county is None and len(g) < 5:
                continue
            try:
                models[crop] = fit_yield_model(
                    result.series, obs, crop=crop, method="lue", seasons=cs, groups=None,
                    county_mean_t_ha=county, cut_error_sd=CROP_CUT_SIGMA if county else None)
            except ModelError as exc:
                logger.warning("LUE model for %s not fitted (%s); registry default", crop, exc)
        if models:
            say(f"calibrated yield model on {len(cuts)} crop cuts for {sorted(models)}")
            # crops with too few cuts keep the default (uncalibrated, NBS-anchored) model:
            # leaving them without a model made every such field NO_MODEL with no value,
            # which referred most farmers for missing data rather than for any real doubt
            from .crops import load_registry
            from .yieldmodel import LUEModel

            default = LUEModel()
            for c in load_registry():
                models.setdefault(c, default)
            result.estimates = estimate_yield(result.series, fields, model=models,
                                              phenology=result.phenology, crops=result.crops,
                                              weather=world.weather, covariates=covariates)
            result.profiles = credit.assess(
                result.estimates, policy=credit.Policy.preset(CREDIT_POLICY_VERSION))
    alerts = in_season_alerts(result.observations, fields, MONITOR_AS_OF)
    acc = accuracy_report(result, world, calibration_fields=calib_ids)
    # estimates.parquet is GeoParquet with the fields' geometry; it goes through
    # result.write so the manifest (written last) describes the file that is on disk
    est_plain = result.estimates
    result.estimates = fields[["field_id", "geometry"]].merge(
        pd.DataFrame(est_plain).drop(columns="geometry", errors="ignore"),
        on="field_id", how="right")
    try:
        paths = result.write(out)
    finally:
        result.estimates = est_plain
    alerts.to_parquet(out / "alerts.parquet", index=False)
    paths["alerts"] = out / "alerts.parquet"
    try:
        from .plot import demo_figure

        demo_figure(result, fields, out / "demo.png")
        paths["figure"] = out / "demo.png"
    except ImportError as exc:
        logger.warning("no figure: %s", exc)
    decisions = pd.Series([p.decision for p in result.profiles]).value_counts().to_dict()
    summary = {
        "cropyield_version": __version__,
        "seed": seed,
        "size": size,
        "world": str(world.root),
        "n_fields": int(len(fields)),
        "n_farmers": int(fields["farmer_id"].nunique()) if "farmer_id" in fields else None,
        "n_scenes": len(result.scenes),
        "n_observations": int(len(result.observations)),
        "bytes_read": int(result.observations.attrs.get("bytes_read", 0) or 0),
        "requests": int(result.observations.attrs.get("requests", 0) or 0),
        "decisions": {str(k): int(v) for k, v in decisions.items()},
        "alerts_as_of": MONITOR_AS_OF,
        "alerts": {str(k): int(v) for k, v in alerts["code"].value_counts().items()},
        "accuracy": acc,
        **over_lending(result.profiles, world, result.estimates),
        **referral_drivers(result.profiles),
        **declaration_check(result.profiles, world),
        "timings_s": {"world": round(t_world, 2), **result.timings_s,
                      "total": round(time.perf_counter() - t0, 2)},
        "outputs": {k: str(v) for k, v in paths.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=str))
    return summary
