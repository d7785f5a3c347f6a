"""Year-level signal of the pooled window features, per-field vs shared sky (issue 17).

Winter wheat, 250 seasons of ``simulate_seasons(seed=0)`` (20 weather years), with one sky
per field (``shared_sky=False``) and one sky per weather year (``shared_sky=True``): the
correlation over the weather years of the year mean of each observed window feature
(smoothed observations, true season dates) with its noise-free year mean (canopy), and of
both with the year-mean yield. docs/validation_yield.md section 9.

Usage::

    PYTHONPATH=src python scripts/diag_shared_sky.py      # ~1 min
"""

import numpy as np
import pandas as pd

from cropyield.cropmodel import simulate_seasons
from cropyield.series import smooth_series
from cropyield.yieldmodel import window_features
from cropyield.yieldmodel.windows import INDICES
feats = [f"{k}_{s}" for k in INDICES for s in ("int", "fill1", "intpost")]
rows = {}
for sh in (False, True):
    s = simulate_seasons("winter_wheat", 250, seed=0, shared_sky=sh)
    t = s.truth
    seas = t[["field_id", "season", "sos", "eos"]]
    ser = smooth_series(s.observations, index=list(INDICES))
    fo = window_features(ser, seas, indices=list(INDICES)).merge(
        t[["field_id", "weather_year", "yield_t_ha"]], on="field_id")
    fc = window_features(s.canopy[["field_id", "time", *INDICES]], seas,
                         indices=list(INDICES)).merge(t[["field_id", "weather_year"]],
                                                      on="field_id")
    yo = fo.groupby("weather_year")[feats + ["yield_t_ha"]].mean()
    yc = fc.groupby("weather_year")[feats].mean()
    r_true = [np.corrcoef(yo[f], yc[f])[0, 1] for f in feats]
    r_y = [np.corrcoef(yo[f], yo["yield_t_ha"])[0, 1] for f in feats]
    r_yc = [np.corrcoef(yc[f], yo["yield_t_ha"])[0, 1] for f in feats]
    rows[sh] = pd.DataFrame({"r_obs_vs_true": r_true, "r_obs_vs_yield": r_y,
                             "r_true_vs_yield": r_yc}, index=feats)
out = pd.concat(rows, axis=1, names=["shared_sky"])
print(out.round(2).to_string())
print(out.groupby(lambda i: i.split("_", 1)[1]).mean().round(2).to_string())
