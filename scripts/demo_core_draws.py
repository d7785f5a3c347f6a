"""The demo's SCYM core over library draws: with/without the edge covariate, bagged or not.

Reuses one demo run's tables (``cropyield demo --out OUT``) and the cached demo world; for
each library draw (``--core-seeds``) simulates the demo's library
(``simulate_seasons(crop, N_SIMULATED, seed, sky=SIMULATION_SKY)``), trains the core as
``demo.simulation_core`` does (weather covariates) - with the fields' ``area_ha`` /
``perimeter_m`` (edge covariate ``perimeter_area_m``) or without them (``--edge off``), with
``n_bags`` of ``--bags``, the library's edge pixels seeing ``--neighbour-share`` of
canopy-carrying neighbours (``simulate_seasons(neighbour_canopy_share=)``) - levels it
exactly as the demo (county mean + the demo's crop cuts, cut error removed) and scores the demo's seasons of the crop (identified as the crop they
are, crop-cut fields left out), with the bias on the smaller and the larger half of the
fields. Paired rows (same draw) cancel the draw-to-draw variance.

    PYTHONPATH=src python scripts/demo_core_draws.py --out /tmp/demo_dy_new --crop summer_maize --core-seeds 0 1 2 3 --edge on off
    PYTHONPATH=src python scripts/demo_core_draws.py --out /tmp/demo_dy_new --crop summer_maize --core-seeds 0 1 2 3 --edge off --bags 1 5
    PYTHONPATH=src python scripts/demo_core_draws.py --out /tmp/demo_base --crop winter_wheat --core-seeds 0 1 2 --edge on --neighbour-share 1 0.58
    PYTHONPATH=src python scripts/demo_core_draws.py --out /tmp/demo_cm1 --crop winter_wheat --core-seeds 0 1 2 3 --edge on --crop-model off on

``--crop-model on`` offers the crop-model weather index (``demo.demo_crop_model_index``;
``train_on_simulations(covariates=True)``) as the demo does since issue 17's section 10.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import pandas as pd


def main(argv=None):
    from cropyield import demo, synthetic
    from cropyield.cropmodel import simulate_seasons
    from cropyield.yieldmodel import fit_yield_model
    from cropyield.yieldmodel.simulation import train_on_simulations

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="folder of a finished demo run")
    ap.add_argument("--crop", default="summer_maize")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--core-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--bags", type=int, nargs="+", default=[1])
    ap.add_argument("--edge", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--neighbour-share", type=float, nargs="+", default=[None],
                    help="neighbour_canopy_share of the library (simulate_seasons; default: "
                         "cropmodel.NEIGHBOUR_CANOPY_SHARE of the crop); several: paired rows")
    ap.add_argument("--index-sets", nargs="+", default=None,
                    help="comma-separated index sets for the cores (default: every index of "
                         "the demo's series), e.g. ndvi,ndre,ndmi ndvi,evi2,ndre,ndmi")
    ap.add_argument("--n-simulated", type=int, default=0,
                    help="seasons per library draw (default: demo.N_SIMULATED)")
    ap.add_argument("--ensemble", type=int, default=0,
                    help="K > 1: also score ensembles of K consecutive draws (mean log P50 "
                         "of their levelled models) of the last index set, edge and bags")
    ap.add_argument("--crop-model", nargs="+", default=["on"], choices=["on", "off"],
                    help="offer the crop-model weather index (on: as the demo); several: "
                         "paired rows")
    a = ap.parse_args(argv)
    out = __import__("pathlib").Path(a.out)
    world = demo.demo_world(synthetic.WorldConfig(seed=a.seed, **demo.DEMO_SIZES["small"]))
    series = pd.read_parquet(out / "series.parquet")
    phen = pd.read_parquet(out / "phenology.parquet")
    crops = pd.read_parquet(out / "crops.parquet")
    fields, truth, crop = world.fields, world.seasons, a.crop
    calib, cuts = demo.demo_crop_cuts(world, phen, seed=a.seed)
    pairs = demo._match_seasons(phen, truth)
    s = demo.CROP_CUT_SIGMA
    g = cuts[cuts["crop"] == crop]
    obs = g.rename(columns={"true_yield_t_ha": "yield_t_ha"})[["field_id", "season",
                                                              "yield_t_ha"]]
    area = demo.field_shape_table(fields)
    county = demo.demo_county_means(world)[crop]
    idx_all = [c for c in ("ndvi", "evi2", "gcvi", "ndre", "ndmi") if c in series.columns]
    index_sets = [x.split(",") for x in a.index_sets] if a.index_sets else [idx_all]
    cs = phen.merge(crops.loc[crops["crop"] == crop, ["field_id", "season", "crop"]],
                    on=["field_id", "season"]).merge(area, on="field_id", how="left")
    runs = [(c, sh) for c in a.core_seeds for sh in a.neighbour_share]
    last: dict[int, pd.DataFrame] = {}
    for cseed, share in runs:
        sim0 = simulate_seasons(crop, a.n_simulated or demo.N_SIMULATED, seed=cseed, sky=demo.SIMULATION_SKY,
                                neighbour_canopy_share=share)
        for edge, idx in [(e_, i_) for e_ in a.edge for i_ in index_sets]:
            sim = sim0 if edge != "off" else dataclasses.replace(
                sim0, truth=sim0.truth.drop(columns=["area_ha", "perimeter_m"],
                                            errors="ignore"))
            for nb, cmi in [(b_, c_) for b_ in a.bags for c_ in a.crop_model]:
                cov = demo.demo_crop_model_index(world) if cmi == "on" else None
                t0 = time.perf_counter()
                core = train_on_simulations(sim, crop=crop, indices=idx, seed=cseed,
                                            weather=True, n_bags=nb,
                                            covariates=True if cov is not None else None)
                t_train = time.perf_counter() - t0
                m = fit_yield_model(series, obs, crop=crop, method="simulation", seasons=cs,
                                    indices=idx, seed=a.seed, simulated=core,
                                    county_mean_t_ha=county, cut_error_sd=s,
                                    weather=world.weather, covariates=cov)
                kw = {"covariates": cov} if cov is not None else {}
                e = m.predict(series, cs, weather=world.weather, **kw).merge(
                    pairs, on=["field_id", "season"]).merge(
                    truth[["field_id", "season", "crop", "true_yield_t_ha"]].rename(
                        columns={"season": "true_season", "crop": "true_crop"}),
                    on=["field_id", "true_season"])
                e = e[(e["true_crop"] == crop) & ~e["field_id"].isin(calib)
                      & np.isfinite(e["yield_t_ha_p50"])]
                y, p = e["true_yield_t_ha"].to_numpy(), e["yield_t_ha_p50"].to_numpy()
                ar = e["field_id"].map(area.set_index("field_id")["area_ha"]).to_numpy()
                sm = ar < np.median(ar)
                cover = np.mean((y >= e["yield_t_ha_p10"]) & (y <= e["yield_t_ha_p90"]))
                last[cseed] = e.set_index(["field_id", "season"])
                print(f"{crop} draw {cseed} edge {edge} bags {nb} crop-model index {cmi} "
                      f"indices {'+'.join(idx)}"
                      + (f" neighbour share {share}" if share is not None else "")
                      + f": n {len(y)} "
                      f"R2 {1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2):.3f} "
                      f"bias {np.mean(p - y):+.2f} (smaller half {np.mean(p[sm] - y[sm]):+.2f},"
                      f" larger {np.mean(p[~sm] - y[~sm]):+.2f}) coverage {cover:.2f} "
                      f"core CV R2 {core.cv_['r2']:.3f} set {core.learner['column_set']} "
                      f"train {t_train:.0f} s", flush=True)
    k = int(a.ensemble)
    seeds = list(last)
    for i in range(0, len(seeds) - k + 1, k) if k > 1 else ():
        grp = seeds[i:i + k]
        common = last[grp[0]].index
        for g_ in grp[1:]:
            common = common.intersection(last[g_].index)
        y = last[grp[0]].loc[common, "true_yield_t_ha"].to_numpy()
        p = np.exp(np.mean([np.log(last[g_].loc[common, "yield_t_ha_p50"].to_numpy())
                            for g_ in grp], axis=0))
        print(f"{crop} ensemble of draws {grp}: n {len(y)} "
              f"R2 {1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2):.3f}", flush=True)


if __name__ == "__main__":
    main()
