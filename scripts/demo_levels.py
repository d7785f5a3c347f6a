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
    rng = np.random.default_rng(a.seed)
    ids = np.array(sorted(fields["field_id"]))
    calib = sorted(rng.choice(ids, size=max(3, int(len(ids) * 0.1)), replace=False).tolist())
    pairs = demo._match_seasons(phen, truth)
    cuts = pairs[pairs["field_id"].isin(calib)].merge(
        truth[["field_id", "season", "crop", "true_yield_t_ha"]].rename(
            columns={"season": "true_season"}), on=["field_id", "true_season"])
    s = demo.CROP_CUT_SIGMA
    cut_rng = np.random.default_rng([a.seed, 17])
    cuts["true_yield_t_ha"] = cuts["true_yield_t_ha"] * np.exp(
        cut_rng.normal(0.0, s, len(cuts)) - 0.5 * s ** 2)
    area = pd.DataFrame({"field_id": fields["field_id"].to_numpy(),
                         "area_ha": fields.geometry.area.to_numpy() / 1e4,
                         "perimeter_m": fields.geometry.length.to_numpy(),
                         "lat": fields.to_crs(4326).geometry.representative_point().y
                         .to_numpy()})
    county = {c: float(g["true_production_t"].sum() / g["area_ha"].sum())
              for c, g in truth.groupby("crop")}
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
