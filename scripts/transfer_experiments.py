"""Cross-region transfer experiments for CropClassifier (issue 16; docs/validation_crops.md).

Trains on Corsica 2022 and tests on Flanders 2021 and the reverse (leave-one-region-out over
the two regions that share classes), on the classes both hold, as
``scripts/validate_crops.py`` does, for feature and learner variants; prints CropClassifier
and stock RandomForest accuracy on the same (transformed) feature table. The variants that
did not help are kept here so that their figures can be rerun.

Usage::

    PYTHONPATH=src python scripts/transfer_experiments.py [--variants default,centred,...]
        [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier

from cropyield.classify import CropClassifier, adapt_class_priors

_spec = importlib.util.spec_from_file_location(
    "validate_crops", Path(__file__).resolve().parent / "validate_crops.py")
vc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vc)

BINS = re.compile(r"[a-z0-9]+_[bo]\d\d")


def centre(F):
    """Region alignment: every feature minus its median over the region's fields."""
    med = F[0].median()
    return {s: f - med for s, f in F.items()}


def standardise(F):
    med = F[0].median()
    iqr = (F[0].quantile(0.75) - F[0].quantile(0.25)).replace(0, np.nan)
    return {s: (f - med) / iqr for s, f in F.items()}


def shape(F, keep_level=True):
    """Per-parcel normalised bins: (bin − median) / (q90 − q10) of the same index."""
    out = {}
    for s, f in F.items():
        new = {}
        for ix in vc.INDICES:
            sc = (f[f"{ix}_q90"] - f[f"{ix}_q10"]).clip(lower=0.02)
            for c in [c for c in f.columns if re.fullmatch(ix + r"_[bo]\d\d", c)]:
                new["n_" + c] = (f[c] - f[f"{ix}_q50"]) / sc
        g = f if keep_level else f.drop(columns=[c for c in f.columns if BINS.fullmatch(c)])
        out[s] = pd.concat([g, pd.DataFrame(new, index=f.index)], axis=1)
    return out


def no_bins(F):
    return {s: f.drop(columns=[c for c in f.columns if BINS.fullmatch(c)]) for s, f in F.items()}


VARIANTS = {
    "default": ({}, None, False),
    "balanced": ({"class_weight": "balanced"}, None, False),
    "shallow": ({"num_leaves": 4, "min_child_samples": 20, "learning_rate": 0.05}, None, False),
    "ff0.2": ({"feature_fraction": 0.2}, None, False),
    "aug24": ({"augment_days": (-24, -12, 12, 24)}, None, False),
    "em": ({}, None, True),
    "shape+level": ({}, lambda F: shape(F, True), False),
    "shape-only": ({}, lambda F: shape(F, False), False),
    "centred": ({}, centre, False),
    "standardised": ({}, standardise, False),
    "centred+balanced": ({"class_weight": "balanced"}, centre, False),
    "centred+aug24": ({"augment_days": (-24, -12, 12, 24)}, centre, False),
    "centred+em": ({}, centre, True),
    "centred-no-bins": ({}, lambda F: centre(no_bins(F)), False),
    "rf-blend": ({}, None, "blend"),
}


def lgb_forest(X: np.ndarray, yi: np.ndarray, n_class: int, seed: int):
    """LightGBM in random-forest mode (a bagged, unboosted member for soft voting)."""
    import lightgbm as lgb

    params = {"objective": "multiclass", "num_class": n_class, "boosting": "rf",
              "bagging_fraction": 0.632, "bagging_freq": 1, "feature_fraction": 0.3,
              "num_leaves": 63, "min_data_in_leaf": 2, "verbose": -1, "seed": seed,
              "deterministic": True, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(X, yi), num_boost_round=300)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=vc.DEFAULT_DATA)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=0,
                    help="CropClassifier seed (the stock RF keeps random_state=0)")
    a = ap.parse_args(argv)
    print("command: PYTHONPATH=src python scripts/transfer_experiments.py "
          + " ".join(sys.argv[1:] if argv is None else argv))
    S, Y = {}, {}
    for reg in ("corsica", "flanders"):
        s, lab, _ = vc.region_series(a.data, reg)
        g = lab.map(vc.group_code)
        S[reg], Y[reg] = s, g[g.notna()]
    feats = {}
    for reg in S:
        m = CropClassifier(year_start=vc.YEAR_START[reg])
        m.indices_ = m._resolve_indices(S[reg])
        feats[reg] = {sh: m.features(S[reg], shift_days=sh) for sh in (0, -24, -12, 12, 24)}
    print("| variant | Corsica → Flanders CC / RF | Flanders → Corsica CC / RF | pooled CC / RF |")
    print("|---|---|---|---|")
    for name in a.variants.split(","):
        kw, tf, em = VARIANTS[name]
        cells, tot = [], np.zeros(3)
        for src, dst in (("corsica", "flanders"), ("flanders", "corsica")):
            shared = [c for c in sorted(set(Y[src]) & set(Y[dst]))
                      if (Y[src] == c).sum() >= 3 and (Y[dst] == c).sum() >= 3]
            ytr, yte = Y[src][Y[src].isin(shared)], Y[dst][Y[dst].isin(shared)]
            A = feats[src] if tf is None else tf(feats[src])
            B = feats[dst] if tf is None else tf(feats[dst])
            shifts = (0,) + tuple(x for x in kw.get("augment_days", (-12, 12)) if x)
            fs = {sh: pd.concat([A[sh].loc[ytr.index], B[sh].loc[yte.index]]) for sh in shifts}
            m = CropClassifier(year_start=vc.YEAR_START[src], seed=a.seed, **kw)
            m.indices_ = vc.INDICES
            m._fit_sets(fs, pd.Index(ytr.index), ytr.to_numpy())
            P = m._proba_matrix(fs[0].loc[yte.index])
            if em == "blend":   # equal-weight soft vote with a LightGBM random forest
                ci = {c: i for i, c in enumerate(m.classes_)}
                X = np.vstack([fs[sh].loc[ytr.index, m.feature_names_].to_numpy(float)
                               for sh in shifts])
                forest = lgb_forest(X, np.tile(ytr.map(ci).to_numpy(), len(shifts)),
                                    len(ci), a.seed)
                P = 0.5 * P + 0.5 * forest.predict(
                    fs[0].loc[yte.index, m.feature_names_].to_numpy(float))
            elif em:
                P, _ = adapt_class_priors(P, m.class_prior_)
            cls = np.asarray(m.classes_, dtype=object)
            cc = float(np.mean(cls[P.argmax(1)] == yte.to_numpy()))
            cols = [c for c in m.feature_names_ if fs[0].loc[ytr.index, c].notna().any()]
            rf = RandomForestClassifier(random_state=0).fit(
                fs[0].loc[ytr.index, cols].to_numpy(float), ytr.to_numpy())
            rfa = float(np.mean(rf.predict(fs[0].loc[yte.index, cols].to_numpy(float))
                                == yte.to_numpy()))
            cells.append(f"{cc:.3f} / {rfa:.3f}")
            tot += np.array([cc, rfa, 1.0]) * len(yte)
        cells.append(f"{tot[0] / tot[2]:.3f} / {tot[1] / tot[2]:.3f}")
        print(f"| {name} {kw or ''} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
