"""Can the yield models recover PCSE/WOFOST yields from simulated Sentinel-2 series?

A SCYM-style check (Lobell et al. 2015, Remote Sens. Environ. 164:324-333) on seasons of a
process crop model that cropyield did not write: PCSE/WOFOST 7.2 (de Wit et al. 2019; EUPL-1.2)
through :func:`cropyield.cropmodel.simulate_seasons`. Weather years, soils (rooting depth),
emergence dates, nitrogen supply and irrigation all vary per field (the module docstring of
:mod:`cropyield.cropmodel` lists every assumption); the simulated daily canopy becomes NDVI,
EVI2, GCVI, NDRE and NDMI through the synthetic world's reflectance model and is sampled like
Sentinel-2 (5-day revisit, clouds, undetected haze, noise). The series are smoothed with
:func:`cropyield.series.smooth_series` and segmented with :func:`cropyield.seasons.phenology`;
the yield models are fitted on some weather years and scored on WHOLE weather years held out,
beside the canopy ceiling (:func:`cropyield.yieldmodel.canopy_ceiling`: the same regression on
the noise-free daily canopy of the same training seasons).

By default the seasons are sampled from the library of WOFOST runs shipped with cropyield (no
PCSE needed); ``--fresh`` runs WOFOST now with freshly drawn management (extra ``[pcse]``).

Run (about 1-3 minutes on a shared 2-core machine)::

    .venv/bin/python examples/wofost_validation.py [--n 300] [--seed 0] [--fresh] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
import pandas as pd

INDICES = ("ndvi", "evi2", "gcvi", "ndre", "ndmi")
log = logging.getLogger("wofost_validation")


def _score(y, p10, p50, p90):
    ok = np.isfinite(p50)
    y, p10, p50, p90 = y[ok], p10[ok], p50[ok], p90[ok]
    sse = np.sum((y - p50) ** 2)
    return {"n": int(ok.sum()), "r2": float(1 - sse / np.sum((y - y.mean()) ** 2)),
            "rmse_t_ha": float(np.sqrt(sse / len(y))),
            "rmse_pct": float(100 * np.sqrt(sse / len(y)) / y.mean()),
            "bias_t_ha": float(np.mean(p50 - y)),
            "coverage_p10_p90": float(np.mean((y >= p10) & (y <= p90)))}


def _series(obs: pd.DataFrame) -> pd.DataFrame:
    from cropyield.series import smooth_series

    out = None
    for ix in INDICES:
        s = smooth_series(obs, index=ix)
        keep = [c for c in s.columns if out is None or c not in out.columns
                or c in ("field_id", "time")]
        out = s if out is None else out.merge(s[keep], on=["field_id", "time"], how="left")
    return out


def validate(crop: str, n: int, seed: int, fresh: bool, test_share: float = 0.3) -> dict:
    """Fit on some weather years, score on the others, for one crop."""
    from cropyield.cropmodel import simulate_seasons
    from cropyield.errors import ModelError
    from cropyield.seasons import phenology
    from cropyield.yieldmodel import canopy_ceiling, fit_yield_model

    sim = simulate_seasons(crop, n, seed=seed, fresh=fresh)
    ser = _series(sim.observations)
    ph = phenology(ser, index="ndvi")
    ph = ph[ph["sos"].notna() & ph["eos"].notna()]
    ph = ph.sort_values("peak", ascending=False).drop_duplicates("field_id")  # main season
    truth = sim.truth.drop(columns=["season", "sos", "eos"])
    s = ph[["field_id", "season", "sos", "eos", "n_obs", "flags"]].merge(truth, on="field_id")
    # crop failures (< 0.5 t/ha) cannot be scored on a relative scale: counted, left out
    failed = int((s["yield_t_ha"] < 0.5).sum())
    s = s[s["yield_t_ha"] >= 0.5]
    years = np.array(sorted(s["weather_year"].unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(years)
    test_years = set(years[: max(1, int(round(test_share * len(years))))].tolist())
    tr = s[~s["weather_year"].isin(test_years)]
    te = s[s["weather_year"].isin(test_years)]
    res = {"n_simulated": n, "n_seasons": int(len(s)), "n_failed_excluded": failed,
           "n_train": int(len(tr)), "n_test": int(len(te)),
           "test_weather_years": sorted(int(y) for y in test_years),
           "mean_t_ha": float(s["yield_t_ha"].mean()),
           "cv_pct": float(100 * s["yield_t_ha"].std() / s["yield_t_ha"].mean()),
           "management": {"n_kg_ha": [float(s["n_kg_ha"].min()), float(s["n_kg_ha"].max())],
                          "soils": sorted(s["soil"].unique()),
                          "irrigations": sorted(int(v) for v in s["irrigations"].unique())}}
    # canopy ceiling: fit on the training seasons' noise-free canopy, scored on the test years
    can = sim.canopy.assign(season=1)
    obs_tr = tr[["field_id", "yield_t_ha"]].assign(season=1)
    try:
        res["ceiling_cv"] = canopy_ceiling(can, obs_tr, groups=tr["weather_year"].to_numpy(),
                                           seed=seed)
    except ModelError as exc:
        res["ceiling_cv"] = {"error": str(exc)}
    obs = tr[["field_id", "season", "yield_t_ha"]]
    te_in = te.drop(columns=["yield_t_ha"])
    y = te["yield_t_ha"].to_numpy()
    for method in ("lue", "empirical", "simulation"):
        try:
            m = fit_yield_model(ser, obs, crop=crop, method=method, seasons=tr,
                                groups=tr["weather_year"].to_numpy(), seed=seed)
        except ModelError as exc:
            res[method] = {"error": str(exc)}
            continue
        p = m.predict(ser, te_in)
        p = te[["field_id"]].merge(p, on="field_id", how="left")
        res[method] = {"cv": m.cv_, "test": _score(y, *(
            p[f"yield_t_ha_{q}"].to_numpy(float) for q in ("p10", "p50", "p90")))}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="field-seasons per crop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="run WOFOST now (extra [pcse])")
    ap.add_argument("--crops", default="winter_wheat,summer_maize")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.time()
    results = {"seed": args.seed, "fresh": args.fresh, "indices": list(INDICES), "crops": {}}
    for crop in args.crops.split(","):
        results["crops"][crop] = validate(crop, args.n, args.seed, args.fresh)
    results["total_s"] = round(time.time() - t0, 1)
    text = json.dumps(results, indent=1, default=str)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
