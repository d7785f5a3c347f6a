"""How much the crop-model weather index rests on the crop model being right
(docs/validation_yield.md section 10): the index from each weather year's station record
with one soil, a late or early calendar, another latitude, or a random error per weather
year added, on the section 6 seasons (true season dates, rain/Tmax pair + index, feature set
/ target / learner chosen by grouped CV inside each of the 5 folds of whole weather years);
``--warped``: instead from each field's own (time-warped) weather from its start of season.

Usage (needs pcse; 3 min)::

    PYTHONPATH=src .venv/bin/python scripts/diag_crop_model_index.py winter_wheat field 0
    PYTHONPATH=src .venv/bin/python scripts/diag_crop_model_index.py winter_wheat shared 0
"""
import os
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(__file__))
import diag_wheat_screens as D  # noqa: E402
from cropyield import cropmodel as cm  # noqa: E402
from cropyield.cropmodel import simulate_seasons  # noqa: E402
from cropyield.series import smooth_series  # noqa: E402
from cropyield.yieldmodel.empirical import _design, model_features  # noqa: E402
from cropyield.yieldmodel.fit import default_feature_names  # noqa: E402
from cropyield.yieldmodel.learners import predict_yield, select_model  # noqa: E402
from cropyield.yieldmodel.skill import _group_folds  # noqa: E402
from cropyield.yieldmodel.weather import column_sets  # noqa: E402

crop, shared, seed = sys.argv[1], sys.argv[2] == "shared", int(sys.argv[3])
warped = "--warped" in sys.argv
t0 = time.time()
s = simulate_seasons(crop, 250, seed=seed, shared_sky=shared)
tr = s.truth
ser = smooth_series(s.observations, index=D.IDX)
f = model_features(ser, tr[["field_id", "season", "crop", "sos", "eos"]], crop=crop)
f = f.merge(tr[["field_id", "yield_t_ha", "weather_year"]], on="field_id")
names = default_feature_names(f)
y, g = f["yield_t_ha"].to_numpy(), f["weather_year"].to_numpy()
folds = _group_folds(g, 5, seed)
Xo = _design(f, names)
wx = s.weather.assign(time=D._naive(s.weather["time"]))
W = {k: d.set_index("time").sort_index() for k, d in wx.groupby("field_id")}
fill = []
for fid, a in zip(f["field_id"], D._naive(f["pos"])):
    d = W[fid].loc[a:a + pd.Timedelta(days=35)]
    fill.append([d.rain_mm.mean(), d.tmax_c.mean()])
fill = np.array(fill)
ym = pd.Series(y).groupby(g).transform("mean").to_numpy()
def r2(p):
    return round(float(1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2)), 3)
def oof(X, sets):
    p = np.full(len(y), np.nan)
    for te in folds:
        trn = np.setdiff1d(np.arange(len(y)), te)
        fit = select_model(X[trn], y[trn], g[trn], n_splits=5, column_sets=sets)
        p[te] = predict_yield(fit, X[te])[0]
    return r2(p)
def screen(label, extra):
    nm = names + [f"wx_{i}" for i in range(extra.shape[1])]
    X = np.hstack([Xo, extra])
    cs = column_sets(nm)
    full_x = next(k for k in cs if k.startswith("full+"))
    print(f"{label}: chosen {oof(X, cs)}, forced {full_x} {oof(X, {full_x: cs[full_x]})}", flush=True)
print("obs only", oof(Xo, {"full": list(range(len(names)))}))
screen("rain+tmax (main)", fill)
c = cm.WOFOST_CROPS[crop]
st = cm.load_weather(c)
years = sorted(set(g))
base = "01-01" if c == "wheat" else "06-01"
def index(offset, lat, soils):
    rows = []
    for yr in years:
        e = pd.Timestamp(f"{yr}-{base}") + pd.Timedelta(days=offset)
        ww = st.loc[e - pd.Timedelta(days=15): e + pd.Timedelta(days=330)].rename_axis("time").reset_index()
        rows.append(ww.assign(field_id=str(yr)))
    sea = pd.DataFrame({"field_id": [str(v) for v in years], "season": 1,
                        "sos": [pd.Timestamp(f"{yr}-{base}") + pd.Timedelta(days=offset) for yr in years]})
    r = cm.reference_yield(pd.concat(rows), sea, crop, lat=lat, soils=soils)
    m = dict(zip(years, r["cm_yield_t_ha"]))
    return np.array([m[v] for v in g])[:, None]
rng = np.random.default_rng(1)
for label, off, lat, soils in (("calendar, lat 52, 3 soils", 0, 51.97, cm.REFERENCE_SOILS),
                               ("calendar, medium soil", 0, 51.97, ("medium",)),
                               ("calendar +20 d", 20, 51.97, cm.REFERENCE_SOILS),
                               ("calendar -20 d", -20, 51.97, cm.REFERENCE_SOILS),
                               ("lat 36", 0, 36.0, cm.REFERENCE_SOILS)):
    t1 = time.time()
    x = index(off, lat, soils)
    yr_x = pd.Series(x[:, 0]).groupby(g).first()
    yr_y = pd.Series(y).groupby(g).mean()
    print(f"{label}: {time.time()-t1:.0f}s, year-level r {np.corrcoef(yr_x, yr_y)[0,1]:.3f}", flush=True)
    screen("  cm", x)
    screen("  rain+tmax+cm", np.hstack([fill, x]))
    if label.startswith("calendar, lat 52, 3"):
        for noise in (0.5, 1.0):
            yrs = {v: rng.normal(0, noise) for v in years}
            xn = x + np.array([yrs[v] for v in g])[:, None]
            yr_n = pd.Series(xn[:, 0]).groupby(g).first()
            print(f"  + year noise sd {noise} t/ha: year-level r {np.corrcoef(yr_n, yr_y)[0,1]:.3f}")
            screen("    rain+tmax+cm noisy", np.hstack([fill, xn]))
if warped:
    for sh in (0, 30):
        sea = f[["field_id", "season"]].assign(sos=D._naive(f["sos"]) + pd.Timedelta(days=sh))
        x = cm.reference_yield(s.weather, sea, crop, lat=cm.WEATHER_LAT, emergence="sos")
        x = x["cm_yield_t_ha"].to_numpy()[:, None]
        print(f"warped weather, emergence SOS + {sh} d: r with yield "
              f"{np.corrcoef(x[:, 0], y)[0, 1]:.3f}", flush=True)
        screen("  rain+tmax+cm", np.hstack([fill, x]))
print("done", round(time.time() - t0))
