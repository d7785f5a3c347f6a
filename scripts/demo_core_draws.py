"""The demo's SCYM core over library draws: with/without the edge covariate, bagged or not.

Reuses one demo run's tables (``cropyield demo --out OUT``) and the cached demo world; for
each library draw (``--core-seeds``) simulates the demo's library
(``simulate_seasons(crop, N_SIMULATED, seed, sky=SIMULATION_SKY)``), trains the core as
``demo.simulation_core`` does (weather covariates) - with the fields' ``area_ha`` /
``perimeter_m`` (edge covariate ``perimeter_area_m``) or without them (``--edge off``), with
``n_bags`` of ``--bags`` - levels it exactly as the demo (county mean + the demo's crop cuts,
cut error removed) and scores the demo's seasons of the crop (identified as the crop they
are, crop-cut fields left out), with the bias on the smaller and the larger half of the
fields. Paired rows (same draw) cancel the draw-to-draw variance.

    PYTHONPATH=src python scripts/demo_core_draws.py --out /tmp/demo_dy_new --crop summer_maize --core-seeds 0 1 2 3 --edge on off
    PYTHONPATH=src python scripts/demo_core_draws.py --out /tmp/demo_dy_new --crop summer_maize --core-seeds 0 1 2 3 --edge off --bags 1 5
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
    from cropyield.yieldmodel import fit as fitmod
    from cropyield.yieldmodel import fit_yield_model
    from cropyield.yieldmodel.simulation import train_on_simulations

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="folder of a finished demo run")
    ap.add_argument("--crop", default="summer_maize")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--core-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--bags", type=int, nargs="+", default=[1])
    ap.add_argument("--edge", nargs="+", default=["on", "off"],
                    choices=["on", "off", "interact", "cand", "xmax"],
                    help="off: no field size; on: the linear edge term only (the sets without "
                         "'+edge_x'); interact: the edge interactions forced into every set "
                         "(only the '+edge_x' sets); cand: the library's choice (both); xmax: "
                         "forced, with only the <index>_max interactions")
    ap.add_argument("--same-crop-share", type=float, default=None,
                    help="experimental: share of a library field's neighbours in the same crop "
                         "(the rest bare soil) seen by its edge pixels "
                         "(cropmodel._EDGE_SAME_CROP_SHARE; default 1)")
    a = ap.parse_args(argv)
    if a.same_crop_share is not None:
        from cropyield import cropmodel

        cropmodel._EDGE_SAME_CROP_SHARE[a.crop] = a.same_crop_share
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
    idx = [c for c in ("ndvi", "evi2", "gcvi", "ndre", "ndmi") if c in series.columns]
    cs = phen.merge(crops.loc[crops["crop"] == crop, ["field_id", "season", "crop"]],
                    on=["field_id", "season"]).merge(area, on="field_id", how="left")
    library_sets = fitmod._column_sets
    for cseed in a.core_seeds:
        sim0 = simulate_seasons(crop, demo.N_SIMULATED, seed=cseed, sky=demo.SIMULATION_SKY)
        for edge in a.edge:
            sim = sim0 if edge != "off" else dataclasses.replace(
                sim0, truth=sim0.truth.drop(columns=["area_ha", "perimeter_m"],
                                            errors="ignore"))
            fitmod._column_sets = _edge_sets(library_sets, edge)
            for nb in a.bags:
                t0 = time.perf_counter()
                core = train_on_simulations(sim, crop=crop, indices=idx, seed=cseed,
                                            weather=True, n_bags=nb)
                t_train = time.perf_counter() - t0
                m = fit_yield_model(series, obs, crop=crop, method="simulation", seasons=cs,
                                    indices=idx, seed=a.seed, simulated=core,
                                    county_mean_t_ha=county, cut_error_sd=s,
                                    weather=world.weather)
                e = m.predict(series, cs, weather=world.weather).merge(
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
                chosen = core.learner["column_set"]
                print(f"{crop} draw {cseed} edge {edge} bags {nb}"
                      + (f" same-crop share {a.same_crop_share}" if a.same_crop_share is not None
                         else "") + f": n {len(y)} "
                      f"R2 {1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2):.3f} "
                      f"bias {np.mean(p - y):+.2f} (smaller half {np.mean(p[sm] - y[sm]):+.2f},"
                      f" larger {np.mean(p[~sm] - y[~sm]):+.2f}) coverage {cover:.2f} "
                      f"core CV R2 {core.cv_['r2']:.3f} set {chosen} "
                      f"train {t_train:.0f} s", flush=True)


def _edge_sets(library, edge):
    """The library's learner column sets restricted to one ``--edge`` variant."""
    def sets(names):
        out = library(names)
        if edge in ("on", "off"):
            return {k: v for k, v in out.items() if not k.endswith("+edge_x")}
        if edge == "cand":
            return out
        x = {k: v for k, v in out.items() if k.endswith("+edge_x")} or out
        if edge == "xmax":
            x = {k: [j for j in v if "*" not in names[j] or names[j].endswith("_max")]
                 for k, v in x.items()}
        return x
    return sets


if __name__ == "__main__":
    main()
