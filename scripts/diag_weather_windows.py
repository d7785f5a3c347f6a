"""Which weather windows help the yield regression? (docs/validation_yield.md section 8)

On ``simulate_seasons(crop, n, seed)`` (shipped WOFOST library): the empirical features of the
smoothed observations on the true season dates, plus weather covariates
(:func:`cropyield.yieldmodel.weather_features` on ``SimulatedSeasons.weather``) over windows
anchored on the detected peak (POS, from the series) and the true end of season; grouped
5-fold CV over weather years, feature set / target / learner chosen by
:func:`cropyield.yieldmodel.learners.select_model` inside each training fold. Prints the
correlation of each window's statistics with yield and the out-of-fold R² of observation
features alone, observation + weather forced ("full+weather") and chosen by CV.

Usage::

    PYTHONPATH=src .venv/bin/python scripts/diag_weather_windows.py [--crop winter_wheat] [--n 250]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from cropyield.cropmodel import simulate_seasons
from cropyield.series import smooth_series
from cropyield.yieldmodel.empirical import _design, model_features
from cropyield.yieldmodel.fit import default_feature_names
from cropyield.yieldmodel.learners import predict_yield, select_model
from cropyield.yieldmodel.skill import _group_folds
from cropyield.yieldmodel.weather import column_sets, weather_features


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crop", default="winter_wheat")
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    s = simulate_seasons(args.crop, args.n, seed=args.seed)
    tr = s.truth
    ser = smooth_series(s.observations, index=["ndvi", "evi2", "gcvi", "ndre", "ndmi"])
    seas = tr[["field_id", "season", "crop", "sos", "eos"]]
    f = model_features(ser, seas, crop=args.crop).merge(
        tr[["field_id", "yield_t_ha", "weather_year"]], on="field_id")
    names = default_feature_names(f)
    y = f["yield_t_ha"].to_numpy()
    g = f["weather_year"].to_numpy()
    folds = _group_folds(g, 5, args.seed)

    def oof(X, nm, force=None):
        p = np.full(len(y), np.nan)
        for te in folds:
            trn = np.setdiff1d(np.arange(len(y)), te)
            cs = column_sets(nm)
            cs = cs if force is None else {force: cs[force]}
            fit = select_model(X[trn], y[trn], g[trn], n_splits=5, column_sets=cs)
            p[te] = predict_yield(fit, X[te])[0]
        return round(float(1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2)), 3)

    def naive(x):
        t = pd.to_datetime(x)
        return t.dt.tz_localize(None) if t.dt.tz is not None else t

    pos, eos, sos = naive(f["pos"]), naive(f["eos"]), naive(f["sos"])
    D = pd.Timedelta
    windows = {"sos_pos": (sos, pos), "pre40": (pos - D(days=40), pos),
               "fill35": (pos, pos + D(days=35)), "fill22": (pos, pos + D(days=22)),
               "fill_eos": (pos, eos)}
    W = {}
    for k, (a, b) in windows.items():
        wf = weather_features(s.weather, pd.DataFrame({"field_id": f["field_id"], "season": 1,
                                                       "sos": a, "pos": b}))
        w = wf[[c for c in wf.columns if c.startswith("wx_veg")]]
        W[k] = w.rename(columns=lambda c, k=k: c.replace("wx_veg", "wx_" + k))
        sys.stdout.write(f"{k}: r with yield " + str(
            {c.split('_', 2)[-1]: round(float(np.corrcoef(W[k][c].fillna(W[k][c].mean()),
                                                          y)[0, 1]), 2)
             for c in W[k].columns}) + "\n")
    Xo = _design(f, names)
    sys.stdout.write(f"observations only: R2 {oof(Xo, names)}\n")
    for combo in (["fill35"], ["fill22"], ["fill_eos"], ["sos_pos", "fill35"],
                  ["pre40", "fill35"]):
        Wm = pd.concat([W[k] for k in combo], axis=1)
        X = np.hstack([Xo, Wm.to_numpy()])
        nm = names + list(Wm.columns)
        sys.stdout.write(f"{'+'.join(combo)}: forced full+weather R2 "
                         f"{oof(X, nm, 'full+weather')}, chosen by CV {oof(X, nm)}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
