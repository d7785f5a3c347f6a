"""Held-out validation of the yield models on the synthetic world (issue 6, validation b).

For each world seed: simulate cloudy Sentinel-2 observations of the registered fields
(:func:`cropyield.synthetic.simulate_observations`), smooth them
(:func:`cropyield.series.smooth_series`), detect seasons (:func:`cropyield.seasons.phenology`),
match each detected season to the true season with the nearest peak (crop label from the
truth, to score the yield model alone), then fit the LUE calibration and the empirical model
on half of the farmers and score the other half against the synthetic true yields, which come
from a separate stress/harvest-index process, not from a light-use-efficiency model.

Also reports the uncalibrated LUE default against NBS 2024 national means on the true canopy.

Run::

    .venv/bin/python examples/synthetic_yield_validation.py --seeds 0 1 2 3 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
import pandas as pd

NBS_2024 = {"winter_wheat": 5.94, "summer_maize": 6.592, "rice_single": 7.155}
CROPS = ("winter_wheat", "summer_maize")


def match_seasons(ph: pd.DataFrame, truth: pd.DataFrame, max_days: int = 40) -> pd.DataFrame:
    """Detected seasons joined to the true season whose peak is nearest (within max_days)."""
    t = truth.rename(columns={"season": "true_season", "sos": "true_sos", "eos": "true_eos",
                              "pos": "true_pos"})
    m = ph[ph["pos"].notna()].merge(t[["field_id", "true_season", "true_pos", "crop",
                                       "true_yield_t_ha"]], on="field_id")
    m["d"] = (m["pos"] - m["true_pos"]).abs().dt.days
    m = m[m["d"] <= max_days].sort_values("d").drop_duplicates(["field_id", "season"])
    return m.drop_duplicates(["field_id", "true_season"]).reset_index(drop=True)


def score(y, p10, p50, p90) -> dict:
    ok = np.isfinite(p50)
    y, p10, p50, p90 = y[ok], p10[ok], p50[ok], p90[ok]
    sse = float(np.sum((y - p50) ** 2))
    return {"n": int(ok.sum()), "r2": 1 - sse / float(np.sum((y - y.mean()) ** 2)),
            "rmse_t_ha": float(np.sqrt(sse / len(y))),
            "rmse_pct": float(100 * np.sqrt(sse / len(y)) / y.mean()),
            "bias_t_ha": float(np.mean(p50 - y)),
            "coverage_p10_p90": float(np.mean((y >= p10) & (y <= p90))),
            "mean_rel_width": float(np.mean((p90 - p10) / p50))}


def run_seed(seed: int) -> dict:
    from cropyield import synthetic as syn
    from cropyield.seasons import phenology
    from cropyield.series import smooth_series
    from cropyield.yieldmodel import LUEModel, fit_yield_model

    cfg = syn.WorldConfig(seed=seed)
    lat = cfg.center_lonlat[1]
    fields = syn.make_fields(cfg)
    truth = syn.true_seasons(fields, cfg)
    canopy = syn.true_canopy(fields, cfg)
    out: dict = {"seed": seed, "n_fields": len(fields)}
    unc = LUEModel().predict(canopy, truth, lat=lat)
    out["uncalibrated_vs_nbs"] = {
        c: {"mean_t_ha": float(unc.loc[unc["crop"] == c, "yield_t_ha_p50"].mean()),
            "nbs_t_ha": v, "n": int((unc["crop"] == c).sum())}
        for c, v in NBS_2024.items() if (unc["crop"] == c).any()}
    ser = smooth_series(syn.simulate_observations(fields, cfg, indices=("ndvi", "ndre")),
                        index=["ndvi", "ndre"])
    seasons = match_seasons(phenology(ser), truth)
    farmer = dict(zip(fields["field_id"], fields["farmer_id"]))
    seasons["farmer"] = seasons["field_id"].map(farmer)
    farmers = np.array(sorted(seasons["farmer"].unique()))
    np.random.default_rng(seed).shuffle(farmers)
    train = seasons["farmer"].isin(set(farmers[::2]))
    out["models"] = {}
    for crop in CROPS:
        tr = seasons[train & (seasons["crop"] == crop)]
        te = seasons[~train & (seasons["crop"] == crop)]
        obs = tr[["field_id", "season", "true_yield_t_ha"]].rename(
            columns={"true_yield_t_ha": "yield_t_ha"})
        res = {}
        for method in ("lue", "empirical"):
            m = fit_yield_model(ser, obs, crop=crop, method=method, seasons=tr,
                                groups=tr["farmer"].to_numpy(), lat=lat, seed=seed)
            p = m.predict(ser, te.drop(columns=["true_yield_t_ha", "crop"]).assign(crop=crop),
                          lat=lat).merge(te[["field_id", "season", "true_yield_t_ha"]],
                                         on=["field_id", "season"])
            res[method] = {"cv": m.cv_, "test": score(
                p["true_yield_t_ha"].to_numpy(), *(p[f"yield_t_ha_{q}"].to_numpy()
                                                   for q in ("p10", "p50", "p90"))),
                "test_rows": p[["true_yield_t_ha", "yield_t_ha_p10", "yield_t_ha_p50",
                                "yield_t_ha_p90"]].to_numpy().tolist()}
        out["models"][crop] = res
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="held-out yield validation on the synthetic world")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.time()
    per_seed = []
    for s in args.seeds:
        try:
            per_seed.append(run_seed(s))
        except Exception as exc:   # a world that cannot be generated is reported, not hidden
            per_seed.append({"seed": s, "error": f"{type(exc).__name__}: {exc}"})
    pooled = {}
    for crop in CROPS:
        for method in ("lue", "empirical"):
            rows = np.array([r for ps in per_seed if "models" in ps
                             for r in ps["models"][crop][method]["test_rows"]], dtype=float)
            pooled[f"{crop}/{method}"] = score(*rows.T)
    for method in ("lue", "empirical"):
        rows = np.array([r for ps in per_seed if "models" in ps for crop in CROPS
                         for r in ps["models"][crop][method]["test_rows"]], dtype=float)
        pooled[f"all/{method}"] = score(*rows.T)
    for ps in per_seed:
        for crop in ps.get("models", {}):
            for method in ps["models"][crop]:
                ps["models"][crop][method].pop("test_rows")
    res = {"seeds": args.seeds, "pooled_test": pooled, "per_seed": per_seed,
           "seconds": round(time.time() - t0, 1)}
    text = json.dumps(res, indent=1, default=str)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text)
    sys.stdout.write(json.dumps({"pooled_test": pooled, "uncalibrated_vs_nbs": [
        ps.get("uncalibrated_vs_nbs", ps.get("error")) for ps in per_seed]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
