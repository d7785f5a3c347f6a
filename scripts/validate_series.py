"""Validation of series, phenology and crop identification on the synthetic world.

Truth (daily canopy NDVI, true seasons and crops) comes from ``cropyield.synthetic``; the
methods only see the simulated observations (≈ half the dates cloudy, undetected haze that
biases indices low, mixed edge pixels, noise). Prints a Markdown table and the command.

Usage::

    .venv/bin/python scripts/validate_series.py [--seed 0] [--n-fields 400]
        [--classifier-fields 1200] [--speed] [--cloud-fraction 0.5]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd

from cropyield import synthetic
from cropyield.identify import CropClassifier, identify_crops
from cropyield.seasons import phenology
from cropyield.series import smooth_series


def match_seasons(ph: pd.DataFrame, truth: pd.DataFrame, max_days: int = 45) -> pd.DataFrame:
    """Pair every true season with the detected season of the same field nearest in peak date."""
    found = ph.dropna(subset=["pos"])
    by_field = {k: g for k, g in found.groupby("field_id")}
    rows = []
    for r in truth.itertuples():
        g = by_field.get(r.field_id)
        rec = {"field_id": r.field_id, "true_season": r.season, "true_crop": r.crop,
               "season": np.nan}
        if g is not None:
            d = (g["pos"] - r.pos).abs()
            j = d.idxmin()
            if d[j] <= pd.Timedelta(days=max_days):
                rec["season"] = g.loc[j, "season"]
                for c in ("sos", "pos", "eos"):
                    v = g.loc[j, c]
                    rec[f"{c}_err"] = (v - getattr(r, c)).days if pd.notna(v) else np.nan
        rows.append(rec)
    return pd.DataFrame(rows)


def run(seed: int, n_fields: int, clf_fields: int, speed: bool,
        cloud_fraction: float = 0.5) -> list[tuple[str, str, str]]:
    res: list[tuple[str, str, str]] = []
    cfg = synthetic.WorldConfig(seed=seed, n_fields=n_fields, cloud_fraction=cloud_fraction)
    fields = synthetic.make_fields(cfg)
    obs = synthetic.simulate_observations(fields, cfg, indices=("ndvi", "ndre", "ndmi"))
    canopy = synthetic.true_canopy(fields, cfg)
    truth = synthetic.true_seasons(fields, cfg)
    cloudy = (obs.groupby(["field_id", obs["time"].dt.floor("D")])["valid_fraction"].max()
              < 0.5).mean()
    res.append(("world", f"seed {seed}, {len(fields)} fields, {len(truth)} true seasons",
                f"{cloudy:.0%} of field-dates < 50 % valid"))

    t = time.perf_counter()
    s = smooth_series(obs, index=("ndvi", "ndre", "ndmi"), start=cfg.start, end=cfg.end)
    res.append(("smooth_series (3 indices)", f"{time.perf_counter() - t:.2f} s", ""))
    m = s.merge(canopy[["field_id", "time", "ndvi"]].rename(columns={"ndvi": "true"}),
                on=["field_id", "time"])
    err = m["ndvi"] - m["true"]
    per = np.sqrt((err ** 2).groupby(m["field_id"]).mean())
    res.append(("NDVI RMSE vs truth, median field", f"{per.median():.4f}", "target ≤ 0.04"))
    res.append(("NDVI RMSE vs truth, pooled", f"{np.sqrt(np.mean(err ** 2)):.4f}",
                f"P90 field {per.quantile(0.9):.4f}"))
    o = obs.assign(time=obs["time"].dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D"))
    o = o[o["valid_fraction"] > 0.9].merge(
        canopy[["field_id", "time", "ndvi"]].rename(columns={"ndvi": "true"}),
        on=["field_id", "time"])
    res.append(("raw clear obs (valid > 0.9) RMSE vs truth",
                f"{np.sqrt(np.mean((o['ndvi'] - o['true']) ** 2)):.4f}",
                "floor: edge mixing + noise"))
    s_raw = smooth_series(obs, start=cfg.start, end=cfg.end, envelope_iterations=0)
    e2 = s_raw.merge(canopy[["field_id", "time", "ndvi"]].rename(columns={"ndvi": "true"}),
                     on=["field_id", "time"])
    res.append(("  same, no envelope re-weighting",
                f"{np.sqrt(np.mean((e2['ndvi'] - e2['true']) ** 2)):.4f}", "pooled"))

    t = time.perf_counter()
    ph = phenology(s)
    res.append(("phenology", f"{time.perf_counter() - t:.2f} s", ""))
    mt = match_seasons(ph, truth)
    res.append(("true seasons matched (peak ± 45 d)", f"{mt['season'].notna().mean():.3f}", ""))
    for c in ("sos", "pos", "eos"):
        e = mt[f"{c}_err"].abs()
        res.append((f"{c.upper()} abs error, median (P90)",
                    f"{e.median():.1f} d ({e.quantile(0.9):.0f} d)",
                    "target ≤ 7 d"))
    n_true = truth.groupby("field_id")["season"].nunique()
    dbl = n_true[n_true >= 2].index
    n_found = ph.dropna(subset=["pos"]).groupby("field_id")["season"].nunique()
    rate = np.mean([n_found.get(f, 0) >= 2 for f in dbl])
    res.append(("double-cropped fields split in ≥ 2 seasons", f"{rate:.3f} ({len(dbl)} fields)",
                "target ≥ 0.95"))
    single = n_true[n_true == 1].index
    over = np.mean([n_found.get(f, 0) > 1 for f in single])
    res.append(("single-season fields over-split", f"{over:.3f} ({len(single)} fields)", ""))

    fl = fields.set_index("field_id")
    ic = identify_crops(ph, region="north_china_plain", declared=fl["crop"])
    mc = mt.merge(ic, on=["field_id", "season"], how="left")
    acc = (mc["crop"] == mc["true_crop"]).mean()
    res.append(("knowledge-based crop id, all true seasons", f"{acc:.3f}", "target ≥ 0.85"))
    per_crop = mc.assign(ok=mc["crop"] == mc["true_crop"]).groupby("true_crop")["ok"].agg(
        ["mean", "size"])
    for crop, r in per_crop.iterrows():
        wrong_as = mc.loc[(mc["true_crop"] == crop) & (mc["crop"] != crop), "crop"]
        top = wrong_as.fillna("not detected").value_counts().head(2)
        res.append((f"  {crop}", f"{r['mean']:.3f} ({int(r['size'])})",
                    ", ".join(f"{k} {v}" for k, v in top.items())))
    unc = mc["flags"].fillna("").str.contains("CROP_UNCERTAIN")
    res.append(("  accuracy of seasons not flagged CROP_UNCERTAIN",
                f"{(mc.loc[~unc, 'crop'] == mc.loc[~unc, 'true_crop']).mean():.3f}",
                f"{unc.mean():.0%} flagged uncertain"))
    fallow = sorted(set(fields["field_id"]) - set(truth["field_id"]))
    fa = ic[ic["field_id"].isin(fallow)].groupby("field_id")["crop"].agg(
        lambda x: set(x) == {"fallow"})
    res.append(("fallow fields identified as fallow", f"{fa.mean():.3f} ({len(fallow)})", ""))
    wrong = fl["crop"] != fl["true_crop"]
    flagged = ic.groupby("field_id")["flags"].agg(lambda x: any("CROP_MISMATCH" in f for f in x))
    flagged = flagged.reindex(fl.index, fill_value=False)
    res.append(("CROP_MISMATCH on wrongly declared fields",
                f"{flagged[wrong].mean():.3f} ({int(wrong.sum())} fields)",
                f"false alarms {flagged[~wrong].mean():.3f}"))

    # trained classifier, grouped by farmer, on a larger world (labels = true crop system)
    cfg2 = synthetic.WorldConfig(seed=seed + 1, n_fields=clf_fields,
                                 cloud_fraction=cloud_fraction)
    f2 = synthetic.make_fields(cfg2).set_index("field_id")
    obs2 = synthetic.simulate_observations(f2.reset_index(), cfg2,
                                           indices=("ndvi", "ndre", "ndmi"))
    s2 = smooth_series(obs2, index=("ndvi", "ndre", "ndmi"), start=cfg2.start, end=cfg2.end)
    for ind in (("ndvi",), ("ndvi", "ndre", "ndmi")):
        t = time.perf_counter()
        cv = CropClassifier(ind, year_start="10-01").cross_validate(
            s2, f2["true_crop"], f2["farmer_id"], n_splits=5)
        res.append((f"CropClassifier {'+'.join(ind)}, 5-fold grouped by farmer",
                    f"{cv.attrs['accuracy']:.3f}",
                    f"{len(f2)} fields, folds {min(cv.attrs['fold_accuracy']):.3f}-"
                    f"{max(cv.attrs['fold_accuracy']):.3f}, {time.perf_counter() - t:.1f} s; "
                    "target ≥ 0.93"))

    if speed:
        rng = np.random.default_rng(seed)
        nf, step = 20_000, 5
        d = np.arange(0, 400, step)
        ids = np.repeat(np.arange(nf), len(d))
        vf = np.where(rng.random(len(ids)) < 0.5, 0.0, rng.uniform(0.6, 1.0, len(ids)))
        big = pd.DataFrame({
            "field_id": ids, "valid_fraction": vf,
            "time": pd.Timestamp("2022-01-01", tz="UTC") + pd.to_timedelta(np.tile(d, nf), "D"),
            "ndvi": np.where(vf > 0, rng.uniform(0.1, 0.9, len(ids)), np.nan)})
        smooth_series(big.iloc[: len(d) * 10])   # compile
        t = time.perf_counter()
        sb = smooth_series(big)
        ts = time.perf_counter() - t
        t = time.perf_counter()
        phenology(sb)
        tp = time.perf_counter() - t
        res.append(("speed: smooth_series 20 000 fields × 396 days", f"{ts:.2f} s",
                    "2-core shared machine"))
        res.append(("speed: phenology 20 000 fields × 396 days", f"{tp:.2f} s", ""))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-fields", type=int, default=400)
    ap.add_argument("--classifier-fields", type=int, default=1200)
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--cloud-fraction", type=float, default=0.5,
                    help="probability that a date is cloudy (WorldConfig.cloud_fraction)")
    a = ap.parse_args(argv)
    res = run(a.seed, a.n_fields, a.classifier_fields, a.speed, a.cloud_fraction)
    out = ["| measure | value | note |", "|---|---|---|"]
    out += [f"| {m} | {v} | {n} |" for m, v, n in res]
    out.append("")
    out.append("command: `.venv/bin/python scripts/validate_series.py "
               + " ".join(sys.argv[1:] if argv is None else argv) + "`")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
