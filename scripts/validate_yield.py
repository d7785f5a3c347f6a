"""Validation of the yield models on crop-model (PCSE/WOFOST 7.2) seasons, weather years held out.

Truth: :func:`cropyield.cropmodel.simulate_seasons` - WOFOST runs over weather years, soils,
sowing dates and nitrogen/irrigation management, their daily canopy turned into index values
and observed like Sentinel-2 (5-day revisit, clouds, haze, noise). The models only see the
observations, smoothed with :func:`cropyield.series.smooth_series`.

Per crop (winter wheat, summer maize):

* **Main table** - grouped cross-validation with whole weather years held out (``--folds``
  folds of years): R², RMSE, bias and P10-P90 coverage of ``lue`` (factor fitted to the
  training years' yields), ``empirical`` (window features of every index, learner chosen by
  grouped CV; true season dates, and the outside-check call with ``phenology`` seasons),
  ``simulation`` (SCYM: trained on a separate simulated library - fresh WOFOST runs with their
  own management draws (``--library fresh``, default) or the shipped runs minus every run
  shared with the test seasons - levelled with the training years' yields as crop cuts;
  the library covers the held-out years' weather, as SCYM runs the crop model with the
  target year's weather, but none of their yields), beside the
  **canopy ceiling** (:func:`cropyield.yieldmodel.canopy_ceiling`, same folds).
* **Weather covariates** (``--no-weather`` skips them) - the same empirical and simulation
  models given the fields' daily weather (``SimulatedSeasons.weather``: each run's weather
  on the simulated calendar): grain-fill weather means offered as an extra candidate feature
  set (:func:`cropyield.yieldmodel.weather_features`), beside a "canopy + weather" ceiling
  (the canopy ceiling stays canopy-only).
* **Pooled group features** (``--pooled``, opt-in) - the empirical model (+ weather) given
  ``pool_by`` = the weather year of each field (the fields of one county and season):
  the group means of the post-peak integrals as extra candidates
  (:mod:`cropyield.yieldmodel.pooled`); each field's estimate uses the other fields' imagery.
  ``--shared-sky``: the scored seasons of one weather year share one sky (acquisition dates,
  cloudy dates, haze, atmospheric noise: ``simulate_seasons(shared_sky=True)``), as fields of
  one county and season do; per-field skies let pooling average out more noise.
* **Crop-cut curve** - as the number of crop cuts (drawn from the training years) falls
  through ``--cuts`` (default 100, 30, 10, 3, 0): empirical (needs ≥ 5) vs simulation levelled
  by the cuts alone, and by the cuts plus a county mean (the exact area mean of the held-out
  year's seasons - an optimistic statistic).

A yield gap: the "real" landscape yields ``--gap`` (default 0.85) × WOFOST (losses the crop
model does not simulate), so a simulation-trained model must find its level; R² is unaffected.

Usage::

    PYTHONPATH=src .venv/bin/python scripts/validate_yield.py [--n 300] [--n-library 300]
        [--crops winter_wheat summer_maize] [--folds 5] [--cuts 100 30 10 3 0] [--seed 0]
        [--gap 0.85] [--repeats 2] [--library fresh|shipped] [--pooled] [--shared-sky]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd

from cropyield.cropmodel import simulate_seasons
from cropyield.series import smooth_series
from cropyield.yieldmodel import canopy_ceiling, fit_yield_model
from cropyield.yieldmodel.simulation import train_on_simulations
from cropyield.yieldmodel.skill import _group_folds
from cropyield.yieldmodel.windows import INDICES


def score(y, p10, p50, p90) -> dict:
    y, p50 = np.asarray(y, float), np.asarray(p50, float)
    ok = np.isfinite(y) & np.isfinite(p50)
    e = p50[ok] - y[ok]
    sst = np.sum((y[ok] - y[ok].mean()) ** 2)
    cov = np.mean((y[ok] >= np.asarray(p10)[ok]) & (y[ok] <= np.asarray(p90)[ok]))
    return {"r2": float(1 - np.sum(e ** 2) / sst), "rmse": float(np.sqrt(np.mean(e ** 2))),
            "bias": float(np.mean(e)), "coverage": float(cov), "n": int(ok.sum()),
            "n_nan": int((~ok).sum())}


def _pred(model, ser, seasons, truth):
    p = model.predict(ser, seasons).merge(truth[["field_id", "yield_t_ha"]], on="field_id")
    return p


def _log(crop, t0, what):
    sys.stderr.write(f"[{crop} {time.time() - t0:6.0f} s] {what}\n")
    sys.stderr.flush()


def run_crop(crop: str, args) -> dict:
    t0 = time.time()
    real = simulate_seasons(crop, args.n, seed=args.seed, shared_sky=args.shared_sky)
    lib = simulate_seasons(crop, args.n_library, seed=args.seed + 1000,
                           fresh=args.library == "fresh")
    _log(crop, t0, "simulated")
    keep = ~lib.truth["run_id"].isin(set(real.truth["run_id"]))
    lib_ids = set(lib.truth.loc[keep, "field_id"])
    library = SimpleNamespace(truth=lib.truth[keep].reset_index(drop=True),
                              observations=lib.observations[
                                  lib.observations["field_id"].isin(lib_ids)],
                              canopy=None, seed=lib.seed,
                              weather=lib.weather[lib.weather["field_id"].isin(lib_ids)])
    truth = real.truth.assign(yield_t_ha=real.truth["yield_t_ha"] * args.gap,
                              crop=crop).reset_index(drop=True)
    idx = [k for k in INDICES if k in real.observations.columns]
    ser = smooth_series(real.observations, index=idx)
    seasons = truth[["field_id", "season", "crop", "sos", "eos"]]
    wy = truth["weather_year"].to_numpy()
    folds = _group_folds(wy, args.folds, args.seed)
    out: dict = {"crop": crop, "n": len(truth), "n_weather_years": int(len(set(wy))),
                 "n_library": int(keep.sum()), "library_runs_dropped": int((~keep).sum()),
                 "indices": idx, "gap": args.gap,
                 "shared_sky": bool(args.shared_sky)}
    obs = truth[["field_id", "season", "yield_t_ha"]]
    # ---- canopy ceiling and CV of lue / empirical (fit_yield_model's own grouped CV)
    can = real.canopy.merge(truth[["field_id"]], on="field_id")
    _log(crop, t0, "smoothed")
    out["ceiling"] = canopy_ceiling(can, truth.assign(), groups=wy, n_splits=args.folds,
                                    seed=args.seed, seasons=seasons)
    wx = real.weather
    if not args.no_weather:
        out["ceiling_weather"] = canopy_ceiling(can, truth.assign(), groups=wy,
                                                n_splits=args.folds, seed=args.seed,
                                                seasons=seasons, weather=wx)
        _log(crop, t0, "ceilings")
    runs = [("lue", dict(method="lue", seasons=seasons)),
            ("empirical", dict(method="empirical", seasons=seasons)),
            ("empirical_phenology", dict(method="empirical"))]
    if not args.no_weather:
        runs += [("empirical_weather", dict(method="empirical", seasons=seasons, weather=wx)),
                 ("empirical_phenology_weather", dict(method="empirical", weather=wx))]
    if args.crop_model:
        # the crop-model weather index: WOFOST under each weather year's station record
        # (not the warped weather along the crop), crop calendar emergence, reference
        # management; one covariate per field (its station-season)
        from cropyield.cropmodel import reference_yield, station_weather

        st = station_weather(crop, truth.assign(year=pd.to_datetime(truth["eos"]).dt.year))
        cmi = reference_yield(st, truth.assign(pos=truth["sos"] + (truth["eos"] - truth["sos"])
                                               / 2), crop, lat=args.crop_model_lat)
        cov = pd.DataFrame({"field_id": cmi["field_id"],
                            "wx_cm_yield_t_ha": cmi["cm_yield_t_ha"]})
        yr = pd.DataFrame({"y": truth["yield_t_ha"], "c": cov["wx_cm_yield_t_ha"],
                           "g": wy}).groupby("g").mean()
        out["crop_model_year_r"] = float(np.corrcoef(yr["y"], yr["c"])[0, 1])
        _log(crop, t0, "crop-model index")
        wkw = {} if args.no_weather else {"weather": wx}
        out["ceiling_cropmodel"] = canopy_ceiling(can, truth.assign(), groups=wy,
                                                  n_splits=args.folds, seed=args.seed,
                                                  seasons=seasons, covariates=cov,
                                                  **({} if args.no_weather else
                                                     {"weather": wx}))
        runs += [("empirical_cropmodel", dict(method="empirical", seasons=seasons,
                                              covariates=cov, **wkw)),
                 ("empirical_phenology_cropmodel", dict(method="empirical", covariates=cov,
                                                        **wkw))]
    if args.pooled:
        # opt-in pooled group features: one group = the fields of one weather year (the
        # county and season of these seasons); each field's estimate uses the others' imagery
        pool = dict(zip(truth["field_id"], truth["weather_year"]))
        wkw = {} if args.no_weather else {"weather": wx}
        runs += [("empirical_pooled", dict(method="empirical", seasons=seasons, pool_by=pool,
                                           **wkw)),
                 ("empirical_phenology_pooled", dict(method="empirical", pool_by=pool,
                                                     **wkw))]
    for name, kw in runs:
        try:
            m = fit_yield_model(ser, obs, crop=crop, groups=wy, n_splits=args.folds,
                                seed=args.seed, **kw)
            cv = m.cv_
            out[name] = {"r2": cv["r2"], "rmse": cv["rmse_t_ha"], "bias": cv["bias_t_ha"],
                         "coverage": cv["coverage_p10_p90"], "n": cv["n"]}
            if name.startswith("empirical"):
                out[name]["learner"] = {k: m.learner.get(k) for k in
                                        ("name", "params", "target", "column_set")}
        except Exception as exc:  # report, do not hide
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        _log(crop, t0, name)
    if args.skip_simulation:
        out["seconds"] = round(time.time() - t0, 1)
        return out
    # ---- simulation: one library model, levelled per fold on the training years' yields
    core = train_on_simulations(library, crop=crop, indices=idx, n_splits=args.folds,
                                season_source="truth",
                                seed=args.seed)
    _log(crop, t0, "library model")
    core_wx = None
    if not args.no_weather:
        core_wx = train_on_simulations(library, crop=crop, indices=idx, n_splits=args.folds,
                                       season_source="truth", seed=args.seed, weather=True)
        out["library_cv_weather"] = {k: core_wx.cv_.get(k) for k in ("r2", "rmse_t_ha",
                                                                      "coverage_p10_p90", "n")}
        out["library_cv_weather"]["column_set"] = core_wx.learner.get("column_set")
        _log(crop, t0, "library model with weather")
    out["library_cv"] = {k: core.cv_.get(k) for k in ("r2", "rmse_t_ha", "coverage_p10_p90",
                                                      "n", "n_weather_years")}
    rng = np.random.default_rng(args.seed)
    rows = []
    sim_all, sim_wx, sim_cm = [], [], []
    core_cm = None
    if args.crop_model:
        # SCYM with the index: the library's seasons get their weather year's shipped index
        core_cm = train_on_simulations(library, crop=crop, indices=idx, n_splits=args.folds,
                                       season_source="truth", seed=args.seed,
                                       weather=None if args.no_weather else library.weather,
                                       covariates=True)
        out["library_cv_cropmodel"] = {k: core_cm.cv_.get(k) for k in ("r2", "rmse_t_ha")}
        out["library_cv_cropmodel"]["column_set"] = core_cm.learner.get("column_set")
        _log(crop, t0, "library model with the crop-model index")
    for fi, te in enumerate(folds):
        tr = np.setdiff1d(np.arange(len(truth)), te)
        te_seas = seasons.iloc[te]
        te_truth = truth.iloc[te]
        m = fit_yield_model(ser, obs.iloc[tr], crop=crop, method="simulation",
                            simulated=core, seasons=seasons.iloc[tr])
        sim_all.append(_pred(m, ser, te_seas, te_truth))
        if core_wx is not None:
            mw = fit_yield_model(ser, obs.iloc[tr], crop=crop, method="simulation",
                                 simulated=core_wx, seasons=seasons.iloc[tr], weather=wx)
            sim_wx.append(mw.predict(ser, te_seas, weather=wx).merge(
                te_truth[["field_id", "yield_t_ha"]], on="field_id"))
        if core_cm is not None:
            mm = fit_yield_model(ser, obs.iloc[tr], crop=crop, method="simulation",
                                 simulated=core_cm, seasons=seasons.iloc[tr], weather=wx,
                                 covariates=cov)
            sim_cm.append(mm.predict(ser, te_seas, weather=wx, covariates=cov).merge(
                te_truth[["field_id", "yield_t_ha"]], on="field_id"))
        county = float(te_truth["yield_t_ha"].mean())
        for n_cuts in args.cuts:
            for rep in range(args.repeats):
                pick = rng.choice(tr, size=min(n_cuts, len(tr)), replace=False)
                cuts = obs.iloc[pick]
                rec = {"fold": fi, "n_cuts": n_cuts, "rep": rep}
                if n_cuts >= 5:
                    try:
                        me = fit_yield_model(ser, cuts, crop=crop, method="empirical",
                                             seasons=seasons.iloc[pick],
                                             groups=wy[pick], n_splits=args.folds)
                        rec["empirical"] = _pred(me, ser, te_seas, te_truth)
                    except Exception as exc:
                        rec["empirical_error"] = str(exc)
                if n_cuts > 0:
                    ms = fit_yield_model(ser, cuts, crop=crop, method="simulation",
                                         simulated=core,
                                         seasons=seasons.iloc[pick])
                    rec["simulation_cuts"] = _pred(ms, ser, te_seas, te_truth)
                mc = fit_yield_model(ser, cuts if n_cuts else None, crop=crop,
                                     method="simulation", simulated=core, seasons=te_seas,
                                     county_mean_t_ha=county)
                rec["simulation_county"] = _pred(mc, ser, te_seas, te_truth)
                rows.append(rec)
            _log(crop, t0, f"fold {fi} cuts {n_cuts}")
    p = pd.concat(sim_all)
    out["simulation"] = score(p["yield_t_ha"], p["yield_t_ha_p10"], p["yield_t_ha_p50"],
                              p["yield_t_ha_p90"])
    if sim_cm:
        p = pd.concat(sim_cm)
        out["simulation_cropmodel"] = score(p["yield_t_ha"], p["yield_t_ha_p10"],
                                            p["yield_t_ha_p50"], p["yield_t_ha_p90"])
    if sim_wx:
        p = pd.concat(sim_wx)
        out["simulation_weather"] = score(p["yield_t_ha"], p["yield_t_ha_p10"],
                                          p["yield_t_ha_p50"], p["yield_t_ha_p90"])
    curve = {}
    for n_cuts in args.cuts:
        curve[n_cuts] = {}
        for key in ("empirical", "simulation_cuts", "simulation_county"):
            per_rep = []
            for rep in range(args.repeats):
                parts = [r[key] for r in rows if r["n_cuts"] == n_cuts and r["rep"] == rep
                         and key in r]
                if len(parts) == len(folds):
                    q = pd.concat(parts)
                    per_rep.append(score(q["yield_t_ha"], q["yield_t_ha_p10"],
                                         q["yield_t_ha_p50"], q["yield_t_ha_p90"]))
            if per_rep:
                curve[n_cuts][key] = {k: float(np.mean([s[k] for s in per_rep]))
                                      for k in ("r2", "rmse", "bias", "coverage")}
    out["curve"] = curve
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _f(x, fmt="{:.2f}"):
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def report(results: list[dict], cmd: str) -> str:
    lines = [f"Command: `{cmd}`", "",
             "| crop | model | R² | R² / ceiling | RMSE t/ha | bias t/ha | P10–P90 coverage | n |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["ceiling"]["r2"]
        lines.append(f"| {r['crop']} | canopy ceiling | {_f(c)} | 1 | {_f(r['ceiling']['rmse'])}"
                     f" | – | – | {r['ceiling']['n']} |")
        if "ceiling_weather" in r:
            cw = r["ceiling_weather"]
            lines.append(f"| {r['crop']} | canopy + weather ceiling | {_f(cw['r2'])} | "
                         f"{_f(cw['r2'] / c)} | {_f(cw['rmse'])} | – | – | {cw['n']} |")
        if "ceiling_cropmodel" in r:
            cw = r["ceiling_cropmodel"]
            lines.append(f"| {r['crop']} | canopy + weather + crop-model index ceiling | "
                         f"{_f(cw['r2'])} | {_f(cw['r2'] / c)} | {_f(cw['rmse'])} | – | – | "
                         f"{cw['n']} |")
        for name in ("lue", "empirical", "empirical_phenology", "simulation",
                     "empirical_weather", "empirical_phenology_weather",
                     "simulation_weather", "empirical_pooled", "empirical_phenology_pooled",
                     "empirical_cropmodel", "empirical_phenology_cropmodel",
                     "simulation_cropmodel"):
            if name not in r:
                continue
            s = r.get(name, {})
            if "error" in s:
                lines.append(f"| {r['crop']} | {name} | error: {s['error'][:60]} |||||")
                continue
            lines.append(f"| {r['crop']} | {name} | {_f(s['r2'])} | {_f(s['r2'] / c)} | "
                         f"{_f(s['rmse'])} | {_f(s['bias'], '{:+.2f}')} | "
                         f"{_f(s['coverage'])} | {s['n']} |")
    lines += ["", "Crop-cut curve (R² / bias t/ha / coverage, held-out weather years):", "",
              "| crop | crop cuts | empirical | simulation (cuts) | simulation (cuts + county) |",
              "|---|---|---|---|---|"]
    for r in results:
        for n_cuts, d in r.get("curve", {}).items():
            cells = []
            for key in ("empirical", "simulation_cuts", "simulation_county"):
                s = d.get(key)
                cells.append("n/a" if s is None else
                             f"{_f(s['r2'])} / {_f(s['bias'], '{:+.2f}')} / {_f(s['coverage'])}")
            lines.append(f"| {r['crop']} | {n_cuts} | " + " | ".join(cells) + " |")
    for r in results:
        lines.append(f"\n{r['crop']}: {r['n']} seasons, {r['n_weather_years']} weather years, "
                     f"indices {r['indices']}, library {r['n_library']} seasons "
                     f"({r['library_runs_dropped']} shared runs dropped), library CV "
                     f"{ {k: _f(v) if isinstance(v, float) else v for k, v in r.get('library_cv', {}).items()} }, "
                     f"empirical learner {r.get('empirical', {}).get('learner', {}).get('name')} "
                     f"{r.get('empirical', {}).get('learner', {}).get('params')}, "
                     f"feature sets chosen: "
                     f"{ {k: r[k]['learner'].get('column_set') for k in r if k.startswith('empirical') and 'learner' in r[k]} }, "
                     f"library with weather {r.get('library_cv_weather')}, {r['seconds']} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crops", nargs="+", default=["winter_wheat", "summer_maize"])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--n-library", type=int, default=300)
    ap.add_argument("--crop-model", action="store_true",
                    help="add the crop-model weather index (cropmodel.reference_yield on the "
                         "weather years' station records) as a season covariate: rows "
                         "empirical_cropmodel, empirical_phenology_cropmodel (needs pcse)")
    ap.add_argument("--crop-model-lat", type=float, default=51.97,
                    help="latitude of the crop-model runs (default: Wageningen's, where "
                         "the weather was recorded)")
    ap.add_argument("--skip-simulation", action="store_true",
                    help="skip the SCYM rows and the crop-cut curve")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cuts", type=int, nargs="+", default=[100, 30, 10, 3, 0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gap", type=float, default=0.85)
    ap.add_argument("--library", choices=["fresh", "shipped"], default="fresh",
                    help="SCYM library: fresh WOFOST runs with new management draws (needs "
                         "PCSE) or the shipped runs (those shared with the test seasons are "
                         "dropped)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--pooled", action="store_true",
                    help="add the opt-in pooled group features (fit_yield_model(pool_by=): "
                         "group = weather year) rows, with weather unless --no-weather")
    ap.add_argument("--shared-sky", action="store_true",
                    help="the scored seasons of one weather year share acquisition dates, "
                         "cloudy dates, haze and atmospheric noise (simulate_seasons("
                         "shared_sky=True)); the SCYM library keeps per-field skies")
    ap.add_argument("--no-weather", action="store_true",
                    help="skip the weather-covariate rows (cropyield.yieldmodel.weather)")
    args = ap.parse_args(argv)
    cmd = "PYTHONPATH=src python scripts/validate_yield.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    results = []
    for c in args.crops:
        results.append(run_crop(c, args))
        sys.stderr.write(json.dumps(results[-1], default=str)[:3000] + "\n")
    print(report(results, cmd))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
