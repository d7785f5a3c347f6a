"""Refit the demo's LUE / value-only crops on one demo run's tables and score them.

Reuses ``cropyield demo --out OUT`` (series, phenology, crops) and the cached demo world;
draws the demo's crop cuts and county statistics exactly as ``run_demo`` does, fits
``fit_yield_model(..., method="lue", county_mean_t_ha=...)`` per crop (optionally with the
registry's ``vigour_elasticity`` overridden) and prints R², bias, RMSE and P10-P90 coverage
on the seasons the demo scores (identified as the crop they are, crop-cut fields left out).

    PYTHONPATH=src python scripts/demo_levels.py --out /tmp/demo_dy_new --crop vegetables --elasticity 0 0.5 1
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def main(argv=None):
    from cropyield import demo, synthetic
    from cropyield.yieldmodel import fit_yield_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="folder of a finished demo run")
    ap.add_argument("--crop", nargs="+", default=["vegetables"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--elasticity", type=float, nargs="*", default=[],
                    help="value-only crops: vigour elasticities to try (default: registry)")
    a = ap.parse_args(argv)
    out = __import__("pathlib").Path(a.out)
    world = demo.demo_world(synthetic.WorldConfig(seed=a.seed, **demo.DEMO_SIZES["small"]))
    series = pd.read_parquet(out / "series.parquet")
    phen = pd.read_parquet(out / "phenology.parquet")
    crops = pd.read_parquet(out / "crops.parquet")
    fields, truth = world.fields, world.seasons
    calib, cuts = demo.demo_crop_cuts(world, phen, seed=a.seed)
    pairs = demo._match_seasons(phen, truth)
    s = demo.CROP_CUT_SIGMA
    area = demo.field_shape_table(fields)
    county = demo.demo_county_means(world)
    for crop in a.crop:
        g = cuts[cuts["crop"] == crop]
        obs = g.rename(columns={"true_yield_t_ha": "yield_t_ha"})[
            ["field_id", "season", "yield_t_ha"]]
        cs = phen.merge(crops.loc[crops["crop"] == crop, ["field_id", "season", "crop"]],
                        on=["field_id", "season"]).merge(area, on="field_id", how="left")
        for e in a.elasticity or [None]:
            ov = None if e is None else {crop: {"yield": {"vigour_elasticity": e}}}
            m = fit_yield_model(series, obs, crop=crop, method="lue", seasons=cs,
                                county_mean_t_ha=county[crop], cut_error_sd=s, overrides=ov)
            est = m.predict(series, cs).merge(pairs, on=["field_id", "season"]).merge(
                truth[["field_id", "season", "crop", "true_yield_t_ha"]].rename(
                    columns={"season": "true_season", "crop": "true_crop"}),
                on=["field_id", "true_season"])
            est = est[(est["true_crop"] == crop) & ~est["field_id"].isin(calib)
                      & np.isfinite(est["yield_t_ha_p50"])]
            y, p = est["true_yield_t_ha"].to_numpy(), est["yield_t_ha_p50"].to_numpy()
            cover = np.mean((y >= est["yield_t_ha_p10"]) & (y <= est["yield_t_ha_p90"]))
            print(f"{crop}: elasticity {m.vigour.get(crop, {}).get('elasticity', '-')}, "
                  f"{len(obs)} cuts, county {county[crop]:.2f} t/ha, n {len(y)}, "
                  f"R2 {1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2):.3f}, "
                  f"bias {np.mean(p - y):+.2f}, RMSE {np.sqrt(np.mean((y - p) ** 2)):.2f}, "
                  f"coverage {cover:.2f}, mean truth {y.mean():.2f}")


if __name__ == "__main__":
    main()
