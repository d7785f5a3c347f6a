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

from cropyield.classify import LEVEL_GAIN, LEVEL_OFFSET, CropClassifier, adapt_class_priors

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


# Level augmentation (the default since issue 16's transfer work; sizes LEVEL_GAIN and
# LEVEL_OFFSET of cropyield.classify) from the between-region differences of same-class
# index levels (not from any accuracy): per index and class shared by Corsica and Flanders
# with >= 5 parcels in each, the least-squares gain and the mean offset mapping one region's
# class-median quantiles (min, q10, q50, q90, max) onto the other's; the median over the 15
# (index, class) pairs is |log gain| 0.20 and |offset| 0.22 of the index's spread (median
# q90 - q10). With the Uganda/South Sudan pairs too (50 pairs; savanna "grassland" against
# meadows): 0.37 and 0.46 ("level-wide", a sensitivity check). ``--level-sizes`` prints them.
# FORMER = the defaults before level augmentation: the rows measured before it keep it.
FORMER = {"augment_gain": (1.0, 1.0), "augment_offset": 0.0}
LEVEL = {"augment_gain": LEVEL_GAIN, "augment_offset": LEVEL_OFFSET}
LEVEL_WIDE = {"augment_gain": (float(np.exp(-0.37)), float(np.exp(0.37))),
              "augment_offset": 0.46}
BAL = {"class_weight": "balanced"}
AUG24 = {"augment_days": (-24, -12, 12, 24)}

VARIANTS = {
    "default": ({}, None, False),
    "former-default": (FORMER, None, False),
    "balanced": ({**FORMER, **BAL}, None, False),
    "shallow": ({**FORMER, "num_leaves": 4, "min_child_samples": 20, "learning_rate": 0.05},
                None, False),
    "ff0.2": ({**FORMER, "feature_fraction": 0.2}, None, False),
    "aug24": ({**FORMER, **AUG24}, None, False),
    "em": (FORMER, None, True),
    "shape+level": (FORMER, lambda F: shape(F, True), False),
    "shape-only": (FORMER, lambda F: shape(F, False), False),
    "centred": (FORMER, centre, False),
    "standardised": (FORMER, standardise, False),
    "centred+balanced": ({**FORMER, **BAL}, centre, False),
    "centred+aug24": ({**FORMER, **AUG24}, centre, False),
    "centred+em": (FORMER, centre, True),
    "centred-no-bins": (FORMER, lambda F: centre(no_bins(F)), False),
    "rf-blend": (FORMER, None, "blend"),
    # level augmentation: one gain/offset per field for every index (= the default) ...
    "level-shared": (LEVEL, None, False),
    "level-shared+2": ({**LEVEL, "augment_level_copies": 2}, None, False),
    # ... or independent draws per index (private switch)
    "level": ({**LEVEL, "_level_per_index": True}, None, False),
    "level+2": ({**LEVEL, "_level_per_index": True, "augment_level_copies": 2}, None, False),
    "level-wide": ({**LEVEL_WIDE, "_level_per_index": True}, None, False),
    "level-shared+centred": (LEVEL, centre, False),
}


def lgb_forest(X: np.ndarray, yi: np.ndarray, n_class: int, seed: int):
    """LightGBM in random-forest mode (a bagged, unboosted member for soft voting)."""
    import lightgbm as lgb

    params = {"objective": "multiclass", "num_class": n_class, "boosting": "rf",
              "bagging_fraction": 0.632, "bagging_freq": 1, "feature_fraction": 0.3,
              "num_leaves": 63, "min_data_in_leaf": 2, "verbose": -1, "seed": seed,
              "deterministic": True, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(X, yi), num_boost_round=300)


def make(kw, **more) -> CropClassifier:
    """CropClassifier with a variant's keywords (private ``_`` switches set afterwards)."""
    m = CropClassifier(**{k: v for k, v in kw.items() if not k.startswith("_")}, **more)
    for k, v in kw.items():
        if k.startswith("_"):
            setattr(m, k, v)
    return m


def level_sizes(F, Y) -> None:
    """Between-region differences of same-class index levels (the basis of LEVEL)."""
    import itertools

    qs = ("min", "q10", "q50", "q90", "max")
    rows = []
    for ix in vc.INDICES:
        spread = {r: float((F[r][0][f"{ix}_q90"] - F[r][0][f"{ix}_q10"]).median()) for r in F}
        for c in sorted(set().union(*[set(Y[r]) for r in Y])):
            med = {}
            for r in F:
                ids = Y[r][Y[r] == c].index.intersection(F[r][0].index)
                if len(ids) >= 5:
                    med[r] = np.array([F[r][0].loc[ids, f"{ix}_{q}"].median() for q in qs])
            for r1, r2 in itertools.combinations(sorted(med), 2):
                x, y = med[r1], med[r2]
                g = np.polyfit(x, y, 1)[0]
                o = abs(y.mean() - x.mean()) / ((spread[r1] + spread[r2]) / 2)
                rows.append((ix, c, r1, r2, abs(np.log(g)), o))
    d = pd.DataFrame(rows, columns=["index", "class", "a", "b", "abs_log_gain", "abs_offset"])
    eu = d[(d["a"] == "corsica") & (d["b"] == "flanders")]
    print(d.round(3).to_string())
    print(f"Corsica-Flanders ({len(eu)} pairs): median |log gain| "
          f"{eu['abs_log_gain'].median():.3f}, |offset|/spread {eu['abs_offset'].median():.3f}")
    print(f"all region pairs ({len(d)}): median |log gain| {d['abs_log_gain'].median():.3f}, "
          f"|offset|/spread {d['abs_offset'].median():.3f}")


def within(name, kw, tf, feats, Y, seed) -> str:
    """Random stratified 3-fold within each region (as scripts/validate_crops.py)."""
    cells = []
    for reg in ("corsica", "flanders", "uganda"):
        F = feats[reg] if tf is None else tf(feats[reg])
        y = Y[reg][Y[reg].map(Y[reg].value_counts()) >= 5]
        shifts = (0,) + tuple(x for x in kw.get("augment_days", (-12, 12)) if x)
        rng = np.random.default_rng(seed)
        folds = np.empty(len(y), dtype=int)
        for c in y.unique():
            mm = np.flatnonzero(y.to_numpy() == c)
            folds[rng.permutation(mm)] = np.arange(len(mm)) % 3
        ok = np.zeros(2)
        for f in range(3):
            te = folds == f
            tr_ids, te_ids = y.index[~te], y.index[te]
            m = make(kw, year_start=vc.YEAR_START[reg], seed=seed)
            m.indices_ = vc.INDICES
            fs = {sh: F[sh] for sh in shifts}
            m._fit_sets(fs, pd.Index(tr_ids), y.loc[tr_ids].to_numpy())
            P = m._proba_matrix(F[0].loc[te_ids])
            pred = np.asarray(m.classes_, dtype=object)[P.argmax(1)]
            cols = [c for c in m.feature_names_ if F[0].loc[tr_ids, c].notna().any()]
            rf = RandomForestClassifier(random_state=seed).fit(
                F[0].loc[tr_ids, cols].to_numpy(float), y.loc[tr_ids].to_numpy())
            ok += [np.sum(pred == y.loc[te_ids].to_numpy()),
                   np.sum(rf.predict(F[0].loc[te_ids, cols].to_numpy(float))
                          == y.loc[te_ids].to_numpy())]
        cells.append(f"{ok[0] / len(y):.3f} / {ok[1] / len(y):.3f}")
    return f"| {name} within | " + " | ".join(cells) + " |"


def synthetic_cv(kw, n_fields: int, seed: int) -> str:
    from cropyield import synthetic
    from cropyield.series import smooth_series

    cfg = synthetic.WorldConfig(seed=seed + 1, n_fields=n_fields)
    f2 = synthetic.make_fields(cfg).set_index("field_id")
    obs = synthetic.simulate_observations(f2.reset_index(), cfg,
                                          indices=("ndvi", "ndre", "ndmi"))
    s2 = smooth_series(obs, index=("ndvi", "ndre", "ndmi"), start=cfg.start, end=cfg.end)
    cv = make(kw, year_start="10-01", seed=seed).cross_validate(
        s2, f2["true_crop"], f2["farmer_id"], n_splits=5)
    return (f"synthetic {n_fields} fields, 5-fold grouped: {cv.attrs['accuracy']:.3f} (folds "
            f"{min(cv.attrs['fold_accuracy']):.3f}-{max(cv.attrs['fold_accuracy']):.3f}, "
            f"Brier {cv.attrs['brier']:.3f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=vc.DEFAULT_DATA)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=0,
                    help="CropClassifier seed (the stock RF keeps random_state=0)")
    ap.add_argument("--within", action="store_true",
                    help="also random 3-fold within Corsica / Flanders / Uganda (CC / RF; "
                         "the RF's random_state is --seed, as in validate_crops.py)")
    ap.add_argument("--no-cross", action="store_true", help="skip the cross-region rows")
    ap.add_argument("--synthetic-fields", type=int, default=0,
                    help="also the synthetic world's 5-fold CV with each variant (0: skip)")
    ap.add_argument("--level-sizes", action="store_true",
                    help="print the between-region level differences behind LEVEL, then stop")
    a = ap.parse_args(argv)
    print("command: PYTHONPATH=src python scripts/transfer_experiments.py "
          + " ".join(sys.argv[1:] if argv is None else argv))
    S, Y = {}, {}
    regions = ("corsica", "flanders", "uganda") if (a.within or a.level_sizes) \
        else ("corsica", "flanders")
    for reg in regions:
        s, lab, _ = vc.region_series(a.data, reg)
        g = lab.map(vc.group_code)
        S[reg], Y[reg] = s, g[g.notna()]
    feats = {}
    for reg in S:
        m = CropClassifier(year_start=vc.YEAR_START[reg])
        m.indices_ = m._resolve_indices(S[reg])
        feats[reg] = {sh: m.features(S[reg], shift_days=sh) for sh in (0, -24, -12, 12, 24)}
    if a.level_sizes:
        level_sizes(feats, Y)
        return 0
    print("| variant | Corsica → Flanders CC / RF | Flanders → Corsica CC / RF | pooled CC / RF |")
    print("|---|---|---|---|")
    for name in a.variants.split(","):
        kw, tf, em = VARIANTS[name]
        cells, tot = [], np.zeros(3)
        if a.within:
            print(within(name, kw, tf, feats, Y, a.seed) + "  (Corsica | Flanders | Uganda)",
                  flush=True)
        if a.synthetic_fields:
            print(f"| {name} | " + synthetic_cv(kw, a.synthetic_fields, a.seed) + " |",
                  flush=True)
        for src, dst in () if a.no_cross else (("corsica", "flanders"),
                                               ("flanders", "corsica")):
            shared = [c for c in sorted(set(Y[src]) & set(Y[dst]))
                      if (Y[src] == c).sum() >= 3 and (Y[dst] == c).sum() >= 3]
            ytr, yte = Y[src][Y[src].isin(shared)], Y[dst][Y[dst].isin(shared)]
            A = feats[src] if tf is None else tf(feats[src])
            B = feats[dst] if tf is None else tf(feats[dst])
            shifts = (0,) + tuple(x for x in kw.get("augment_days", (-12, 12)) if x)
            fs = {sh: pd.concat([A[sh].loc[ytr.index], B[sh].loc[yte.index]]) for sh in shifts}
            m = make(kw, year_start=vc.YEAR_START[src], seed=a.seed)
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
        if a.no_cross:
            continue
        cells.append(f"{tot[0] / tot[2]:.3f} / {tot[1] / tot[2]:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
