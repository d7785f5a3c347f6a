"""Screens of weather and pooled features for winter wheat (docs/validation_yield.md section 9).

On the section 6 seasons (``simulate_seasons(crop, 250, seed=0)``, shipped library,
observations smoothed with ``smooth_series``, true season dates): the empirical window
features plus candidate extras, scored out-of-fold over the 5 grouped folds of
``fit_yield_model`` (whole weather years held out), feature set / target / learner chosen by
:func:`cropyield.yieldmodel.learners.select_model` inside each training fold. Prints, per
candidate, the R² chosen by CV and forced onto the ``full+<extras>`` set. Weather windows
are anchored on the detected POS unless named after the true LAI peak (``lai``: not
observable, a reference) or an index's own peak in the smoothed series.

Usage::

    PYTHONPATH=src .venv/bin/python scripts/diag_wheat_screens.py [--crop winter_wheat] [--n 250]
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
from cropyield.yieldmodel.pooled import pooled_feature_names
from cropyield.yieldmodel.skill import _group_folds
from cropyield.yieldmodel.weather import column_sets
from cropyield.yieldmodel.windows import feature_column_sets

IDX = ["ndvi", "evi2", "gcvi", "ndre", "ndmi"]
D = pd.Timedelta


def _naive(x) -> pd.Series:
    t = pd.Series(pd.to_datetime(x))
    return t.dt.tz_localize(None) if t.dt.tz is not None else t


def _et0(d: pd.DataFrame) -> pd.Series:
    """Hargreaves-Samani radiation form (mm/d; FAO-56 eq. 50 family)."""
    return 0.0135 * ((d.tmin_c + d.tmax_c) / 2 + 17.8) * d.radiation_mj_m2 / 2.45


def _bucket(d: pd.DataFrame, cap: float = 100.0, skip: int = 90) -> float:
    """Mean water-stress factor (1 = no stress) of a soil-water bucket of ``cap`` mm, full at
    the window start, ET reduced linearly below half of it; days after ``skip``."""
    s, out = cap, []
    for r, e in zip(d.rain_mm.to_numpy(), _et0(d).to_numpy()):
        s = min(cap, max(0.0, s + r - e * min(1.0, s / (0.5 * cap))))
        out.append(min(1.0, s / (0.5 * cap)))
    return float(np.mean(out[skip:]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crop", default="winter_wheat")
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    s = simulate_seasons(args.crop, args.n, seed=args.seed)
    tr = s.truth
    ser = smooth_series(s.observations, index=IDX)
    f = model_features(ser, tr[["field_id", "season", "crop", "sos", "eos"]], crop=args.crop)
    f = f.merge(tr[["field_id", "yield_t_ha", "weather_year", "maturity"]], on="field_id")
    can = s.canopy
    f = f.merge(can.loc[can.groupby("field_id")["lai"].idxmax(), ["field_id", "time"]]
                .rename(columns={"time": "lai_peak"}), on="field_id")
    names = default_feature_names(f)
    y, g = f["yield_t_ha"].to_numpy(), f["weather_year"].to_numpy()
    folds = _group_folds(g, 5, args.seed)
    Xo = _design(f, names)
    wx = s.weather.assign(time=_naive(s.weather["time"]))
    W = {k: d.set_index("time").sort_index() for k, d in wx.groupby("field_id")}
    S = {k: d.assign(time=_naive(d["time"])).set_index("time") for k, d in
         ser.groupby("field_id")}

    def window(a, b, hot=30.0):
        rows = []
        for fid, aa, bb in zip(f["field_id"], _naive(a), _naive(b)):
            d = W[fid].loc[aa:bb]
            rows.append({"tmin": d.tmin_c.mean(), "tmax": d.tmax_c.mean(),
                         "rad": d.radiation_mj_m2.mean(), "rain": d.rain_mm.mean(),
                         "hot": float((d.tmax_c > hot).mean()),
                         "pet": float((d.rain_mm - _et0(d)).mean())})
        return pd.DataFrame(rows)

    def r2(p):
        return round(float(1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2)), 3)

    def oof(X, sets):
        p = np.full(len(y), np.nan)
        for te in folds:
            trn = np.setdiff1d(np.arange(len(y)), te)
            fit = select_model(X[trn], y[trn], g[trn], n_splits=5, column_sets=sets)
            p[te] = predict_yield(fit, X[te])[0]
        return r2(p)

    def screen(label, extra: np.ndarray, kind: str = "wx", sets_only=None):
        pre = "wx_" if kind == "wx" else "pool_"
        nm = names + [f"{pre}{i}" for i in range(extra.shape[1])]
        X = np.hstack([Xo, extra])
        cs = column_sets(nm)
        if sets_only is not None:
            cs = {k: cs[k] for k in sets_only}
        full_x = next(k for k in cs if k.startswith("full+"))
        sys.stdout.write(f"{label}: chosen {oof(X, cs)}, forced {full_x} "
                         f"{oof(X, {full_x: cs[full_x]})}\n")
        sys.stdout.flush()

    pos, lp = _naive(f["pos"]), _naive(f["lai_peak"])
    mat, eos = _naive(f["maturity"]), _naive(f["eos"])
    five = ["tmin", "tmax", "rad", "rain", "hot"]
    fill = window(pos, pos + D(days=35))
    fill["bucket"] = [_bucket(W[fid].loc[a - D(days=90):a + D(days=35)])
                      for fid, a in zip(f["field_id"], pos)]
    sys.stdout.write(f"observations only: {oof(Xo, {'full': list(range(len(names)))})}\n")
    screen("five statistics, POS+35", fill[five].to_numpy())
    screen("rain + Tmax, POS+35 (taken)", fill[["rain", "tmax"]].to_numpy())
    screen("rain + Tmax + bucket", fill[["rain", "tmax", "bucket"]].to_numpy())
    screen("rain - ET0 + Tmax", fill[["pet", "tmax"]].to_numpy())
    screen("bucket alone", fill[["bucket"]].to_numpy())
    screen("five statistics + bucket", fill[five + ["bucket"]].to_numpy())
    screen("rain + Tmax, true LAI peak (reference)",
           window(lp, lp + D(days=35))[["rain", "tmax"]].to_numpy())
    peaks = {}
    for ix in ("evi2", "gcvi", "ndre"):
        peaks[ix] = pd.Series([S[fid].loc[a:b, ix].idxmax() for fid, a, b in
                               zip(f["field_id"], _naive(f["sos"]), eos)])
    for ix in ("gcvi", "ndre"):
        a = peaks[ix]
        screen(f"rain + Tmax, {ix} peak", window(a, a + D(days=35))[["rain", "tmax"]].to_numpy())
    a = pd.Series(pd.to_datetime(np.mean([peaks[k].astype("int64") for k in peaks], axis=0)))
    screen("rain + Tmax, mean index peak", window(a, a + D(days=35))[["rain", "tmax"]]
           .to_numpy())
    mar1 = pd.to_datetime(pos.dt.year.astype(str) + "-03-01")
    for label, anchor, end in (("true LAI peak", lp, mat), ("POS", pos, eos)):
        w15 = pd.concat([window(mar1, anchor, 25.0)[five], window(anchor, anchor + D(days=35),
                                                                  25.0)[five],
                         window(anchor, end, 25.0)[five]], axis=1)
        screen(f"15 run-calendar features, {label}", w15.to_numpy())
    pn = pooled_feature_names(IDX)
    P = pd.DataFrame(Xo[:, [names.index(n[5:]) for n in pn]]).groupby(g).transform(
        "mean").to_numpy()
    comp = feature_column_sets(names)["compact"]
    Pc = pd.DataFrame(Xo[:, comp]).groupby(g).transform("mean").to_numpy()
    screen("pooled only", P, "pool")
    screen("pooled compact levels only", Pc, "pool")
    both = np.hstack([P, fill[["rain", "tmax"]].to_numpy()])
    nm = names + pn + ["wx_fill_tmax_c", "wx_fill_rain_mm_d"]
    X = np.hstack([Xo, both])
    cs = column_sets(nm)
    old = dict(cs)
    old.update({k + "+weather": v + list(range(len(names) + len(pn), len(nm)))
                for k, v in feature_column_sets(names).items()})
    sys.stdout.write(f"pooled + rain + Tmax (taken): chosen {oof(X, cs)}; offered beside the "
                     f"weather-only sets: chosen {oof(X, old)}\n")
    yy = pd.Series(y).groupby(g).transform("mean").to_numpy()[:, None]
    screen("oracle: the year's mean yield", yy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
