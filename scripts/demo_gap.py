"""Decompose the demo's gap between the SCYM yield model and its canopy ceiling.

Reuses the tables of one demo run (``cropyield demo --out OUT``) and the cached demo world;
applies the demo's crop-model-trained core (``cropyield.demo.simulation_core``) to

* ``canopy/true``: the world's noise-free daily true canopy on the true season dates,
* ``series/true``: the pipeline's smoothed series on the true season dates,
* ``series/detected``: the pipeline's smoothed series on the detected (``phenology``)
  seasons - what the demo scores,

each levelled the way the demo levels it (county mean + the same crop cuts), and reports R²,
squared correlation, bias and P10-P90 coverage on the demo's scored seasons (identified as
the crop they are, crop-cut fields left out); ``--pure`` splits by field size. It also
compares the observation statistics of the simulated library with those of the demo's
observations (deviation of each observation from the true canopy of that day).

    PYTHONPATH=src python scripts/demo_gap.py --out /tmp/demo --crop summer_maize
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def r2(y, p):
    return float(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))


def scores(y, est):
    p = est["yield_t_ha_p50"].to_numpy(float)
    ok = np.isfinite(p) & np.isfinite(y)
    y, p = y[ok], p[ok]
    lo, hi = est["yield_t_ha_p10"].to_numpy(float)[ok], est["yield_t_ha_p90"].to_numpy(float)[ok]
    return {"n": int(ok.sum()), "r2": r2(y, p), "corr2": float(np.corrcoef(y, p)[0, 1] ** 2),
            "r2_oracle_level": r2(y, p * y.mean() / p.mean()),
            "rmse": float(np.sqrt(np.mean((y - p) ** 2))), "bias": float(np.mean(p - y)),
            "coverage": float(np.mean((y >= lo) & (y <= hi))),
            "sd_ratio": float(np.std(p) / np.std(y))}


def obs_stats(obs, canopy, crop, *, start=None, end=None):
    """Observation statistics against the true canopy of the same day: share of
    acquisitions kept, partly valid rows, NDVI deviation sd on clear rows and the per-field
    mean deviation at NDVI > 0.8 by field size (pixels)."""
    o = obs.assign(day=pd.to_datetime(obs["time"]).dt.tz_localize(None).dt.normalize())
    c = canopy.assign(day=pd.to_datetime(canopy["time"]).dt.normalize())
    if "crop" in c.columns:
        c = c[c["crop"] == crop]
    j = o.merge(c[["field_id", "day", "ndvi"]], on=["field_id", "day"], suffixes=("", "_t"))
    if start is not None:
        j = j[(j["day"] >= j["field_id"].map(start)) & (j["day"] <= j["field_id"].map(end))]
    ok = np.isfinite(j["ndvi"]) & (j["valid_fraction"] > 0.05)
    vf = j["valid_fraction"]
    clear = j[ok & (vf >= 0.95)]
    dense = clear[clear["ndvi_t"] > 0.8]
    pf = dense.assign(d=dense["ndvi"] - dense["ndvi_t"]).groupby("field_id").agg(
        d=("d", "mean"), px=("coverage", "median"))
    by = pf.groupby(pd.cut(pf["px"], [0, 15, 25, 40, 70, 1e4]), observed=True)["d"].mean()
    kept = j[ok].drop_duplicates(["field_id", "day"]).groupby("field_id").size()
    if start is not None:
        slots = ((end - start).dt.days / 5.0).reindex(kept.index)
    else:
        slots = j.groupby("field_id")["day"].agg(lambda d: (d.max() - d.min()).days / 5 + 1)
    return {"kept_share": float(kept.sum() / slots.sum()),
            "partly_valid_share": float(((vf > 0.05) & (vf < 0.95) & ok).mean()),
            "clear_ndvi_dev_sd": float((clear["ndvi"] - clear["ndvi_t"]).std()),
            "dense_dev_by_px": {str(k): round(float(v), 3) for k, v in by.items()},
            "px_q10_50_90": np.round(o.groupby("field_id")["coverage"].median().quantile(
                [0.1, 0.5, 0.9]).to_numpy(), 1).tolist()}


def main(argv=None):
    from cropyield import demo, synthetic
    from cropyield.yieldmodel import fit_yield_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="folder of a finished demo run")
    ap.add_argument("--crop", default="summer_maize")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sky", default=None, choices=["uniform", "sentinel2"],
                    help="train a fresh core on simulations observed with this sky model "
                         "(default: the demo's cached core)")
    ap.add_argument("--cloud-fraction", type=float, default=None)
    ap.add_argument("--n-sim", type=int, default=300)
    ap.add_argument("--obs-stats", action="store_true",
                    help="compare the observation statistics of the world and the library")
    ap.add_argument("--compact", action="store_true",
                    help="train the fresh core on the compact window features only")
    ap.add_argument("--cut-draws", type=int, default=0,
                    help="also redraw the crop-cut sample this many times and report the "
                         "mean coverage with and without cut_error_sd")
    ap.add_argument("--core-seed", type=int, default=None,
                    help="seed of the simulated training seasons (default --seed)")
    a = ap.parse_args(argv)
    out = __import__("pathlib").Path(a.out)
    config = synthetic.WorldConfig(seed=a.seed)
    world = demo.demo_world(config)
    series = pd.read_parquet(out / "series.parquet")
    phen = pd.read_parquet(out / "phenology.parquet")
    crops = pd.read_parquet(out / "crops.parquet")
    fields = world.fields
    truth = world.seasons
    crop = a.crop
    # the demo's crop cuts and county mean, exactly as run_demo draws them
    calib, cuts = demo.demo_crop_cuts(world, phen, seed=a.seed)
    pairs = demo._match_seasons(phen, truth)
    s = demo.CROP_CUT_SIGMA
    ids = np.array(sorted(fields["field_id"]))
    g = cuts[cuts["crop"] == crop]
    county = demo.demo_county_means(world)[crop]
    indices = [c for c in ("ndvi", "evi2", "gcvi", "ndre", "ndmi") if c in series.columns]
    if a.sky is None:
        core = demo.simulation_core(crop, indices=indices, seed=a.seed)
    else:
        from cropyield.cropmodel import simulate_seasons
        from cropyield.yieldmodel.simulation import train_on_simulations

        from cropyield.yieldmodel.windows import COMPACT_SUFFIXES

        cs = a.seed if a.core_seed is None else a.core_seed

        core = train_on_simulations(
            simulate_seasons(crop, a.n_sim, seed=cs, sky=a.sky,
                             cloud_fraction=a.cloud_fraction),
            crop=crop, indices=indices, seed=cs,
            features=[f"{i}_{x}" for i in indices for x in COMPACT_SUFFIXES]
            if a.compact else None)
        print("core cv", {k: core.cv_.get(k) for k in ("r2", "n")})
    # the field's area, perimeter (edge covariate) and latitude, as the demo levels with
    area = demo.field_shape_table(fields)
    # scored seasons: detected seasons identified as `crop` whose matched truth is `crop`
    det = phen.merge(crops.loc[crops["crop"] == crop, ["field_id", "season", "crop"]],
                     on=["field_id", "season"]).merge(area, on="field_id", how="left")
    m = det.merge(pairs, on=["field_id", "season"]).merge(
        truth[["field_id", "season", "crop", "true_yield_t_ha", "sos", "eos"]].rename(
            columns={"season": "true_season", "crop": "true_crop", "sos": "t_sos",
                     "eos": "t_eos"}), on=["field_id", "true_season"])
    m = m[(m["true_crop"] == crop) & ~m["field_id"].isin(calib)]
    # seasons on the truth's dates (keyed by the detected season number, so cuts match)
    tru_all = det.merge(pairs, on=["field_id", "season"]).merge(
        truth[["field_id", "season", "sos", "eos"]].rename(
            columns={"season": "true_season", "sos": "t_sos", "eos": "t_eos"}),
        on=["field_id", "true_season"])
    tru_all = tru_all.drop(columns=["sos", "eos"]).rename(columns={"t_sos": "sos",
                                                                   "t_eos": "eos"})
    can = world.canopy
    can = can.assign(time=pd.to_datetime(can["time"]).dt.tz_localize("UTC"))[
        ["field_id", "time"] + indices]
    obs = g.rename(columns={"true_yield_t_ha": "yield_t_ha"})[["field_id", "season",
                                                              "yield_t_ha"]]
    y = m["true_yield_t_ha"].to_numpy(float)
    keys = m[["field_id", "season"]]
    rows = {}
    for name, ser, seas in (("canopy/true", can, tru_all), ("series/true", series, tru_all),
                            ("canopy/detected", can, det), ("series/detected", series, det)):
        model = fit_yield_model(ser, obs, crop=crop, method="simulation", seasons=seas,
                                indices=indices, seed=a.seed, simulated=core,
                                county_mean_t_ha=county,
                                cut_error_sd=s)
        est = model.predict(ser, seas[seas["field_id"].isin(set(m["field_id"]))])
        est = keys.merge(est, on=["field_id", "season"], how="left")
        rows[name] = scores(y, est)
        rows[name]["level"] = round(model.level["factor"], 3)
    sm = fields.set_index("field_id")["area_ha"].reindex(m["field_id"]).to_numpy()
    small = sm < np.median(sm)
    model = fit_yield_model(series, obs, crop=crop, method="simulation", seasons=det,
                            indices=indices, seed=a.seed, simulated=core, county_mean_t_ha=county,
                                cut_error_sd=s)
    est = keys.merge(model.predict(series, det), on=["field_id", "season"], how="left")
    rq = model.residuals
    zt = np.log(y / est["yield_t_ha_p50"].to_numpy(float)) / est["interval_scale"].to_numpy(float)
    print("interval quantiles", {k: round(float(rq[k]), 3) for k in ("q10", "q50", "q90")},
          "shrink", rq.get("cut_error_shrink"), "| true scores q10/q50/q90",
          np.round(np.nanquantile(zt + rq["q50"], [0.1, 0.5, 0.9]), 3))
    for nm, sel in (("series/detected small half", small), ("series/detected large half",
                                                            ~small)):
        rows[nm] = scores(y[sel], est[sel])
    # the observation limit: the same regression family fitted to the world's own series
    # and TRUE yields of every scored season (5-fold CV; truth the lender does not have)
    allm = m[["field_id", "season", "true_yield_t_ha"]].rename(
        columns={"true_yield_t_ha": "yield_t_ha"})
    for name, ser, seas in (("oracle empirical: canopy/detected", can, det),
                            ("oracle empirical: series/detected", series, det),
                            ("oracle empirical: series/true", series, tru_all)):
        emp = fit_yield_model(ser, allm, crop=crop, method="empirical",
                              seasons=seas[seas["field_id"].isin(set(m["field_id"]))],
                              indices=indices, seed=a.seed)
        rows[name] = {"n": emp.cv_["n"], "r2": emp.cv_["r2"], "rmse": emp.cv_["rmse_t_ha"],
                      "coverage": emp.cv_["coverage_p10_p90"]}
    if a.obs_stats:
        from cropyield.cropmodel import simulate_seasons

        wo = pd.read_parquet(out / "observations.parquet")
        tc = truth[truth["crop"] == crop].set_index("field_id")
        wo = wo[wo["field_id"].isin(set(tc.index))]
        print("world", obs_stats(wo, world.canopy, crop, start=tc["sow_date"],
                                 end=tc["harvest_date"]))
        for sky in ("uniform", "sentinel2"):
            sim = simulate_seasons(crop, 300, seed=a.seed, sky=sky)
            tr = sim.truth.set_index("field_id")
            print(f"library sky={sky}", obs_stats(sim.observations, sim.canopy, crop,
                                                  start=tr["sowing_date"],
                                                  end=tr["harvest_date"]))
    if a.cut_draws:
        res = {True: [], False: []}
        scored = m[["field_id", "season", "true_yield_t_ha", "t_sos"]]
        pool = det.merge(pairs, on=["field_id", "season"]).merge(
            truth[["field_id", "season", "crop", "true_yield_t_ha"]].rename(
                columns={"season": "true_season", "crop": "true_crop"}),
            on=["field_id", "true_season"])
        for d in range(a.cut_draws):
            rd = np.random.default_rng([a.seed, 1000 + d])
            cid = set(rd.choice(ids, size=max(3, int(len(ids) * 0.1)), replace=False))
            cc = pool[pool["field_id"].isin(cid) & (pool["true_crop"] == crop)]
            cobs = cc[["field_id", "season"]].assign(yield_t_ha=cc["true_yield_t_ha"].to_numpy()
                                                     * np.exp(rd.normal(0, s, len(cc))
                                                              - 0.5 * s ** 2))
            sc = scored[~scored["field_id"].isin(cid)]
            for rm in (False, True):
                mm = fit_yield_model(series, cobs, crop=crop, method="simulation",
                                     seasons=det, indices=indices, seed=a.seed,
                                     simulated=core, county_mean_t_ha=county,
                                     cut_error_sd=s if rm else None)
                e = sc[["field_id", "season"]].merge(mm.predict(series, det),
                                                     on=["field_id", "season"], how="left")
                res[rm].append({"n_cuts": len(cobs), **scores(
                    sc["true_yield_t_ha"].to_numpy(float), e)})
        for rm in (False, True):
            t = pd.DataFrame(res[rm])
            print(f"{a.cut_draws} cut draws, cut_error_sd {'removed' if rm else 'kept'}: "
                  f"coverage mean {t['coverage'].mean():.3f} (sd {t['coverage'].std():.3f}), "
                  f"R2 mean {t['r2'].mean():.3f}, n_cuts mean {t['n_cuts'].mean():.1f}")
    print(f"{crop}: {len(m)} scored seasons, {len(obs)} crop cuts, county {county:.2f} t/ha")
    print(pd.DataFrame(rows).T.round(3).to_string())


if __name__ == "__main__":
    main()
