"""Screens of parametric / raw-observation post-peak features for winter wheat (issue 17,
docs/validation_yield.md section 9, "Post-peak features from the raw observations").

Section 7 found that wheat's observations lose the year-level post-peak (grain-fill /
senescence) signal: the window features read from the Whittaker-smoothed series
(``*_fill1``, ``*_intpost``, ``*_slope``) correlate only 0.84 / 0.71 / 0.38 with their
noise-free values. This screen asks whether features that describe the decline directly from
the *raw* observations recover more of it:

``logit``
    a logistic decline ``v(t) = vmin + (vmax - vmin) / (1 + exp(r (t - A)))`` fitted to the
    observations from POS - 30 d to EOS + 30 d (``t`` in days from the detected POS; bounded
    ``scipy.optimize.curve_fit``, weights ``valid_fraction²``, three upper-envelope passes
    with bisquare weights on negative residuals, scale 0.15 × amplitude): ``A`` (the
    half-amplitude down-crossing, senescence date, days after POS) and ``r`` (1/d);
``logit clear``
    the same fitted to the clear observations only (``valid_fraction`` ≥ 0.9, equal
    weights);
``dbl``
    the double logistic of Beck et al. (2006, Remote Sens. Environ. 100:321)
    ``vmin + (vmax - vmin) (1/(1 + exp(-mS (t - S))) + 1/(1 + exp(mA (t - A))) - 1)`` fitted
    the same way from POS - 100 d (spring green-up) to EOS + 30 d: ``A`` (days after POS),
    ``mA`` (1/d) and the green duration ``A - S`` (d);
``rawwin``
    means of the clear observations (``valid_fraction`` ≥ 0.9) over POS .. POS + 20 d and
    POS + 20 .. POS + 40 d (the fitted logistic's mean over the window where a window has no
    clear date) and their Theil-Sen slope over POS .. POS + 40 d (index units per day; the
    fitted logistic's mean slope with fewer than 2 clear dates).

Each for NDVI and GCVI. Same seasons, folds and screen as ``scripts/diag_wheat_screens.py``
(``simulate_seasons(crop, 250, seed=0)``, shipped library, observation features on true
season dates from ``smooth_series``, detected POS, weather rain + Tmax over POS .. POS + 35
d; out-of-fold over the 5 grouped folds of whole weather years, feature set / target /
learner chosen by ``select_model`` inside each training fold). Candidates: today's sets
(``full``, ``compact``, ``+weather``) plus ``full+weather+<new>`` and
``compact+weather+<new>`` (chosen), and the forced
``full+weather+<new>`` against the forced ``full+weather``. ``--groups`` screens a subset
of :data:`GROUPS`. Before the screens the script prints each new feature's correlation with
log yield and with its noise-free value (the same feature on the daily canopy with windows on
the canopy's own peak or on the detected POS, and from the noise-free canopy values on the
observed dates only); ``--only-diag`` stops there.

The observation process is varied as ``scripts/diag_sky_draws.py`` does: ``--sky field
--draw S`` redraws the per-field skies with ``default_rng(S)`` (``--draw 0``: the section's
draw), ``--sky shared --draw N`` draws the shared skies (one per weather year) from
``(seed + N, weather_year)``; ``--sky canopy`` computes every feature on the noise-free
daily canopy (the ceiling analogue). Usage::

    PYTHONPATH=src python scripts/diag_wheat_postpeak.py --sky field --draw 0
    PYTHONPATH=src python scripts/diag_wheat_postpeak.py --sky shared --draw 1000
    PYTHONPATH=src python scripts/diag_wheat_postpeak.py --sky canopy
    PYTHONPATH=src python scripts/diag_wheat_postpeak.py --crop summer_maize --sky field
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

import cropyield.cropmodel as cm
from cropyield.series import smooth_series
from cropyield.yieldmodel.empirical import _design, model_features
from cropyield.yieldmodel.fit import default_feature_names
from cropyield.yieldmodel.learners import predict_yield, select_model
from cropyield.yieldmodel.skill import _group_folds
from cropyield.yieldmodel.weather import column_sets

IDX = ["ndvi", "evi2", "gcvi", "ndre", "ndmi"]
PP_IDX = ("ndvi", "gcvi")
D = pd.Timedelta


def _naive(x) -> pd.Series:
    t = pd.Series(pd.to_datetime(x))
    return t.dt.tz_localize(None) if t.dt.tz is not None else t


def _logistic(t, vmin, vmax, a, r):
    return vmin + (vmax - vmin) / (1.0 + np.exp(np.clip(r * (t - a), -50, 50)))


def _dbl(t, vmin, vmax, s, ms, a, ma):
    up = 1.0 / (1.0 + np.exp(np.clip(-ms * (t - s), -50, 50)))
    dn = 1.0 / (1.0 + np.exp(np.clip(ma * (t - a), -50, 50)))
    return vmin + (vmax - vmin) * (up + dn - 1.0)


def _robust_fit(f, t, v, w, p0, lo, hi, amp, iters=3):
    """Weighted bounded least squares with upper-envelope reweighting (negative residuals
    keep a bisquare share of their weight, scale 0.15 × amplitude)."""
    ww = np.asarray(w, float).copy()
    p = np.asarray(p0, float)
    for _ in range(iters + 1):
        sig = 1.0 / np.sqrt(np.maximum(ww, 1e-3))
        try:
            p, _ = curve_fit(f, t, v, p0=np.clip(p, lo, hi), sigma=sig, bounds=(lo, hi),
                             maxfev=2000)
        except (RuntimeError, ValueError):
            return None
        r = v - f(t, *p)
        sc = 0.15 * amp
        k = np.where(r < 0, np.maximum((1 - np.minimum((r / sc) ** 2, 1)) ** 2, 0.05), 1.0)
        ww = w * k
    return p


def _theil_sen(t, v) -> float:
    i, j = np.triu_indices(len(t), 1)
    dt = t[j] - t[i]
    ok = dt > 0
    return float(np.median((v[j] - v[i])[ok] / dt[ok])) if ok.any() else np.nan


def postpeak_features(obs: pd.DataFrame, seasons: pd.DataFrame, indices=PP_IDX,
                      clear_vf: float = 0.9) -> pd.DataFrame:
    """Per field: logistic / double-logistic / raw-window post-peak features (module
    docstring). ``obs``: ``field_id, time, valid_fraction`` and the index columns;
    ``seasons``: ``field_id, sos, pos, eos``."""
    o = obs.assign(time=_naive(obs["time"]).to_numpy())
    groups = {k: d for k, d in o.groupby("field_id")}
    rows = []
    for fid, sos, pos, eos in zip(seasons["field_id"], _naive(seasons["sos"]),
                                  _naive(seasons["pos"]), _naive(seasons["eos"])):
        d = groups[fid]
        tt = ((d["time"] - pos) / D(days=1)).to_numpy(float)
        vf = d["valid_fraction"].to_numpy(float)
        e = float((eos - pos) / D(days=1))
        row = {"field_id": fid}
        for ix in indices:
            v = d[ix].to_numpy(float)
            fin = np.isfinite(v)
            # logistic decline
            m = fin & (tt >= -30) & (tt <= e + 30)
            t1, v1, w1 = tt[m], v[m], vf[m] ** 2
            amp = max(float(np.percentile(v1, 95) - np.percentile(v1, 5)), 1e-3)
            lo = [np.min(v1) - amp, np.min(v1), -10.0, 0.01]
            hi = [np.max(v1), np.max(v1) + 0.5 * amp, e + 30.0, 1.0]
            p = _robust_fit(_logistic, t1, v1, w1,
                            [np.percentile(v1, 5), np.percentile(v1, 95), max(e - 10, 0), 0.1],
                            lo, hi, amp)
            if p is None:
                p = [np.nan] * 4
            row[f"{ix}_lg_sen"], row[f"{ix}_lg_rate"] = p[2], p[3]
            # the same on the clear observations only (valid fraction >= clear_vf, equal
            # weights): hazy dates left out of the rate
            mc = m & (vf >= clear_vf)
            pc = (_robust_fit(_logistic, tt[mc], v[mc], np.ones(int(mc.sum())),
                              np.clip(p, lo, hi) if np.all(np.isfinite(p)) else
                              [np.percentile(v1, 5), np.percentile(v1, 95), max(e - 10, 0),
                               0.1], lo, hi, amp) if mc.sum() >= 5 else None)
            if pc is None:
                pc = [np.nan] * 4
            row[f"{ix}_lc_sen"], row[f"{ix}_lc_rate"] = pc[2], pc[3]
            # double logistic (spring green-up and senescence)
            m = fin & (tt >= -100) & (tt <= e + 30)
            t2, v2, w2 = tt[m], v[m], vf[m] ** 2
            amp2 = max(float(np.percentile(v2, 95) - np.percentile(v2, 5)), 1e-3)
            lo2 = [np.min(v2) - amp2, np.min(v2), -100.0, 0.01, -10.0, 0.01]
            hi2 = [np.max(v2), np.max(v2) + 0.5 * amp2, 0.0, 1.0, e + 30.0, 1.0]
            q = _robust_fit(_dbl, t2, v2, w2, [np.percentile(v2, 5), np.percentile(v2, 95),
                                               -40.0, 0.1, max(e - 10, 0), 0.1], lo2, hi2, amp2)
            if q is None:
                q = [np.nan] * 6
            row[f"{ix}_dl_sen"], row[f"{ix}_dl_rate"] = q[4], q[5]
            row[f"{ix}_dl_green"] = q[4] - q[2]
            # raw clear-observation windows
            c = fin & (vf >= clear_vf)
            grid = np.arange(0, 40.0)
            fitted = _logistic(grid, *p) if np.all(np.isfinite(p)) else np.full(40, np.nan)
            for lab, a, b in (("w1", 0, 20), ("w2", 20, 40)):
                k = c & (tt >= a) & (tt < b)
                row[f"{ix}_raw_{lab}"] = (float(np.mean(v[k])) if k.any()
                                          else float(np.mean(fitted[a:b])))
            k = c & (tt >= 0) & (tt <= 40)
            row[f"{ix}_raw_slope"] = (_theil_sen(tt[k], v[k]) if k.sum() >= 2
                                      else float((fitted[-1] - fitted[0]) / 39.0))
            row[f"{ix}_raw_n"] = float(k.sum())
        rows.append(row)
    return pd.DataFrame(rows)


GROUPS = {
    "logit": ["lg_sen", "lg_rate"],
    "dbl": ["dl_sen", "dl_rate", "dl_green"],
    "rawwin": ["raw_w1", "raw_w2", "raw_slope"],
    "logit+rawwin": ["lg_sen", "lg_rate", "raw_w1", "raw_w2", "raw_slope"],
    "logit ndvi": ["lg_sen", "lg_rate"],
    "logit clear": ["lc_sen", "lc_rate"],
    "logit clear ndvi": ["lc_sen", "lc_rate"],
    "raw w1": ["raw_w1"],
    "dbl green": ["dl_green"],
    "raw w1 + dbl green": ["raw_w1", "dl_green"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crop", default="winter_wheat")
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sky", choices=("field", "shared", "canopy"), default="field")
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only-diag", action="store_true",
                    help="stop after the correlation diagnostics")
    ap.add_argument("--groups", nargs="*", default=None,
                    help="feature groups to screen (default: all of GROUPS)")
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.sky == "field" and args.draw:
        _observe = cm._observe
        cm._observe = (lambda refl, days_of, fids, rng, **kw:
                       _observe(refl, days_of, fids, np.random.default_rng(args.draw), **kw))
    if args.sky == "shared" and args.draw:
        _plan = cm._shared_sky_plan
        cm._shared_sky_plan = (lambda groups, Dd, days_of, seed, **kw:
                               _plan(groups, Dd, days_of, seed + args.draw, **kw))
    s = cm.simulate_seasons(args.crop, args.n, seed=args.seed,
                            shared_sky=args.sky == "shared")
    tr = s.truth
    if args.sky == "canopy":
        ser = s.canopy.drop(columns=["lai"])
        obs = ser.assign(valid_fraction=1.0)
    else:
        ser = smooth_series(s.observations, index=IDX)
        obs = s.observations
    f = model_features(ser, tr[["field_id", "season", "crop", "sos", "eos"]], crop=args.crop)
    f = f.merge(tr[["field_id", "yield_t_ha", "weather_year"]], on="field_id")
    names = default_feature_names(f)
    y, g = f["yield_t_ha"].to_numpy(), f["weather_year"].to_numpy()
    folds = _group_folds(g, 5, args.seed)
    Xo = _design(f, names)
    wx = s.weather.assign(time=_naive(s.weather["time"]))
    W = {k: d.set_index("time").sort_index() for k, d in wx.groupby("field_id")}
    pos = _naive(f["pos"])
    wrows = []
    for fid, a in zip(f["field_id"], pos):
        d = W[fid].loc[a:a + D(days=35)]
        wrows.append([d.rain_mm.mean(), d.tmax_c.mean()])
    Xw = np.asarray(wrows)
    wnames = ["wx_fill_rain_mm_d", "wx_fill_tmax_c"]
    pp = postpeak_features(obs, f[["field_id", "sos", "pos", "eos"]])
    pp = f[["field_id"]].merge(pp, on="field_id", how="left")
    sys.stdout.write(f"# {args.crop} sky={args.sky} draw={args.draw}: features in "
                     f"{time.time() - t0:.0f} s; NaN share of new features "
                     f"{float(pp.drop(columns='field_id').isna().mean().mean()):.3f}\n")

    def r2(p):
        return round(float(1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2)), 3)

    def oof(X, sets):
        p = np.full(len(y), np.nan)
        for te in folds:
            trn = np.setdiff1d(np.arange(len(y)), te)
            fit = select_model(X[trn], y[trn], g[trn], n_splits=5, column_sets=sets)
            p[te] = predict_yield(fit, X[te])[0]
        return r2(p)

    base_names = names + wnames
    Xb = np.hstack([Xo, Xw])
    cs = column_sets(base_names)
    res = {"crop": args.crop, "sky": args.sky, "draw": args.draw,
           "base_chosen": oof(Xb, cs), "base_forced": oof(Xb, {"full+weather":
                                                               cs["full+weather"]})}
    sys.stdout.write(f"full+weather (today): chosen {res['base_chosen']}, forced "
                     f"{res['base_forced']}\n")
    # correlation of the new features with log yield and (observations) year-mean level
    ly = np.log(y)
    cors = {}
    for c in pp.columns[1:]:
        v = pp[c].to_numpy(float)
        ok = np.isfinite(v)
        cors[c] = round(float(np.corrcoef(v[ok], ly[ok])[0, 1]), 2) if ok.sum() > 3 else None
    sys.stdout.write("r with log yield: " + json.dumps(cors) + "\n")
    res["r_logyield"] = cors
    if args.sky != "canopy":
        # how well the observations recover each feature's noise-free value (the same
        # feature on the daily canopy, windows on the canopy's own peak), per season and
        # per weather-year mean
        cser = s.canopy.drop(columns=["lai"])
        cf = model_features(cser, tr[["field_id", "season", "crop", "sos", "eos"]],
                            crop=args.crop)
        cpp = postpeak_features(cser.assign(valid_fraction=1.0),
                                cf[["field_id", "sos", "pos", "eos"]])
        cpp = f[["field_id"]].merge(cpp, on="field_id", how="left")
        rn, ry = {}, {}
        for c in [c for c in pp.columns[1:] if not c.endswith("_raw_n")]:
            a, b = pp[c].to_numpy(float), cpp[c].to_numpy(float)
            ok = np.isfinite(a) & np.isfinite(b)
            rn[c] = round(float(np.corrcoef(a[ok], b[ok])[0, 1]), 2)
            am = pd.Series(a).groupby(g).mean().to_numpy()
            bm = pd.Series(b).groupby(g).mean().to_numpy()
            ry[c] = round(float(np.corrcoef(am, bm)[0, 1]), 2)
        for c in ("ndvi_fill1", "ndvi_intpost", "ndvi_slope"):
            a, b = f[c].to_numpy(float), cf[c].to_numpy(float)
            rn[c] = round(float(np.corrcoef(a, b)[0, 1]), 2)
            ry[c] = round(float(np.corrcoef(pd.Series(a).groupby(g).mean(),
                                            pd.Series(b).groupby(g).mean())[0, 1]), 2)
        # the same, with noise-free canopy values on the observed dates (valid fractions
        # kept): what the revisit and the cloudy dates alone leave of each feature
        cv = s.canopy.assign(time=_naive(s.canopy["time"]).dt.normalize())
        so = s.observations[["field_id", "time", "valid_fraction"]].assign(
            time=_naive(s.observations["time"]).dt.normalize())
        spp = postpeak_features(so.merge(cv, on=["field_id", "time"], how="left"),
                                f[["field_id", "sos", "pos", "eos"]])
        spp = f[["field_id"]].merge(spp, on="field_id", how="left")
        rs = {}
        for c in [c for c in pp.columns[1:] if not c.endswith("_raw_n")]:
            a, b = spp[c].to_numpy(float), cpp[c].to_numpy(float)
            ok = np.isfinite(a) & np.isfinite(b)
            rs[c] = round(float(np.corrcoef(a[ok], b[ok])[0, 1]), 2)
        sys.stdout.write("r of noise-free values on the observed dates with the daily "
                         "ones (season): " + json.dumps(rs) + "\n")
        # daily noise-free canopy, windows on the detected POS of the observations (the
        # anchor's error removed from the comparison)
        app = postpeak_features(cser.assign(valid_fraction=1.0),
                                f[["field_id", "sos", "pos", "eos"]])
        app = f[["field_id"]].merge(app, on="field_id", how="left")
        ra, rsa = {}, {}
        for c in [c for c in pp.columns[1:] if not c.endswith("_raw_n")]:
            b = app[c].to_numpy(float)
            for dst, a in ((ra, pp[c].to_numpy(float)), (rsa, spp[c].to_numpy(float))):
                ok = np.isfinite(a) & np.isfinite(b)
                dst[c] = round(float(np.corrcoef(a[ok], b[ok])[0, 1]), 2)
        sys.stdout.write("same anchor (detected POS), r of observations with the daily "
                         "noise-free values: " + json.dumps(ra) + "\n")
        sys.stdout.write("same anchor, r of noise-free values on the observed dates with the "
                         "daily ones: " + json.dumps(rsa) + "\n")
        res["r_same_anchor"], res["r_same_anchor_sampled"] = ra, rsa
        res["r_sampled_noise_free"] = rs
        sys.stdout.write("r with noise-free value (season): " + json.dumps(rn) + "\n")
        sys.stdout.write("r with noise-free value (year mean): " + json.dumps(ry) + "\n")
        res["r_noise_free"], res["r_noise_free_year"] = rn, ry
    sys.stdout.flush()
    if args.only_diag:
        return 0
    for label, sufs in GROUPS.items():
        if args.groups and label not in args.groups:
            continue
        ixs = ("ndvi",) if label.endswith("ndvi") else PP_IDX
        cols = [f"{ix}_{sf}" for ix in ixs for sf in sufs]
        Xn = pp[cols].to_numpy(float)
        # a failed fit (NaN) takes the training-free median of the column
        med = np.nanmedian(Xn, axis=0)
        Xn = np.where(np.isfinite(Xn), Xn, med)
        X = np.hstack([Xb, Xn])
        new = list(range(Xb.shape[1], X.shape[1]))
        sets = dict(cs)
        sets["full+weather+pp"] = cs["full+weather"] + new
        sets["compact+weather+pp"] = cs["compact+weather"] + new
        ch, fo = oof(X, sets), oof(X, {"full+weather+pp": sets["full+weather+pp"]})
        res[label] = {"chosen": ch, "forced": fo}
        sys.stdout.write(f"full+weather+{label} ({len(cols)}): chosen {ch} "
                         f"({ch - res['base_chosen']:+.3f}), forced {fo} "
                         f"({fo - res['base_forced']:+.3f})\n")
        sys.stdout.flush()
    sys.stdout.write(f"# {time.time() - t0:.0f} s\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    warnings.simplefilter("ignore", OptimizeWarning)
    sys.exit(main())
