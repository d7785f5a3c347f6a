"""Can the calibrated yield models recover PCSE/WOFOST yields from a simulated NDVI series?

A SCYM-style check (science.md §4): a process crop model that cropyield did not write
(PCSE/WOFOST 7.2, Wageningen; EUPL-1.2, ``pip install pcse`` - optional extra ``[pcse]``)
simulates many seasons with varied weather years, start dates, soils and water regimes. Its
daily LAI becomes NDVI through a canopy relation, is sampled like Sentinel-2 (5-day revisit,
cloud losses, noise), smoothed with :func:`cropyield.series.smooth_series` and segmented with
:func:`cropyield.seasons.phenology`. The LUE and empirical models are then fitted on part of
the seasons (grouped by weather year) and scored on the rest against WOFOST's grain yield.

Everything runs offline from data shipped in the PCSE wheel:

* crop parameters: the demo database (crop 1 "WINTER WHEAT", crop 2 "GRAIN MAIZE", the
  varieties of grid 31031), soil and site of grid 31031;
* weather: wheat on the Wageningen CABO files ``NL1.977``-``NL1.999`` (51.97°N; the 1990
  and 1991 files have gaps: seasons that need them are skipped);
  maize on the demo grid 31031 (Spain, 2000 and 2001 seasons) because the demo maize variety
  does not mature in Dutch weather.

Canopy relation (documented assumption, not fitted to WOFOST):
``NDVI = ndvi_soil + (ndvi_veg - ndvi_soil) (1 - exp(-k LAI))`` with ndvi_soil 0.15,
ndvi_veg 0.90, k 0.5 (a Beer's-law ground-cover form, e.g. Carlson & Ripley 1997; it
saturates above LAI ≈ 4 like real NDVI). Yield at reporting basis = TWSO (kg DM/ha) / 1000 /
(1 - moisture), moisture 0.125 wheat / 0.14 maize.

Run (about 3-6 minutes on a shared 2-core machine)::

    .venv/bin/python examples/wofost_validation.py [--quick] [--seed 0] [--json out.json]

PCSE builds its demo database under ``$HOME/.pcse`` on first import; this script points HOME
at a temporary directory so nothing is written to the user's home.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sqlite3
import sys
import tempfile
import time

import numpy as np
import pandas as pd

NDVI_SOIL, NDVI_VEG, K_CANOPY = 0.15, 0.90, 0.5
MOISTURE = {"winter_wheat": 0.125, "spring_maize": 0.14}
log = logging.getLogger("wofost_validation")


def _pcse():
    os.environ["HOME"] = tempfile.mkdtemp(prefix="pcse_home_")
    from cropyield._extras import require
    pcse = require("pcse", "pcse", "the WOFOST validation example")
    return pcse


def ndvi_from_lai(lai):
    """Canopy relation LAI -> NDVI (module docstring)."""
    lai = np.nan_to_num(np.asarray(lai, dtype=float), nan=0.0)
    return NDVI_SOIL + (NDVI_VEG - NDVI_SOIL) * (1.0 - np.exp(-K_CANOPY * lai))


def _irrad(wdp, day) -> float:
    """WOFOST daily global radiation, MJ m-2 d-1 (NaN where the weather file has no day)."""
    try:
        return wdp(day).IRRAD / 1e6                                # J m-2 d-1 -> MJ m-2 d-1
    except Exception:  # pcse raises its WeatherDataProviderError outside the record
        return float("nan")


def simulate(quick: bool, seed: int):
    """Run WOFOST for every scenario; returns (runs table, daily LAI/NDVI table, radiation)."""
    pcse = _pcse()
    import yaml
    from pcse.base import ParameterProvider
    from pcse.input import CABOWeatherDataProvider
    from pcse.models import Wofost72_PP, Wofost72_WLP_CWB
    from pcse.settings import settings
    from pcse.start_wofost import namedtuple_factory
    from pcse.tests.db_input import (GridWeatherDataProvider, fetch_cropdata, fetch_sitedata,
                                     fetch_soildata)

    db = sqlite3.connect(os.path.join(settings.PCSE_USER_HOME, "pcse.db"))
    db.row_factory = namedtuple_factory
    site = fetch_sitedata(db, 31031, 2000)
    soil0 = fetch_soildata(db, 31031)
    crops = {"winter_wheat": fetch_cropdata(db, 31031, 2000, 1),
             "spring_maize": fetch_cropdata(db, 31031, 2000, 2)}
    wdir = os.path.join(os.path.dirname(pcse.__file__), "tests", "test_data")
    nl = CABOWeatherDataProvider("NL1", fpath=wdir)
    es = GridWeatherDataProvider(db, grid_no=31031)
    soils = {"shallow": 30.0, "medium": 60.0, "deep": 100.0}   # RDMSOL, cm
    scen = []
    w_years = [y for y in range(1977, 2000, 2 if quick else 1) if y not in (1990, 1991)]
    for y in w_years:
        for e_off in ((0,) if quick else (-20, 10)):
            for mode in ("wlp", "pp"):
                for sname in (("shallow", "deep") if mode == "wlp" else ("medium",)):
                    scen.append(("winter_wheat", "NL1", y, dt.date(y, 1, 1)
                                 + dt.timedelta(days=e_off), mode, sname))
    for y in (2000, 2001):
        for sow in ((dt.date(y, 4, 20), dt.date(y, 5, 20)) if quick else
                    tuple(dt.date(y, 4, 10) + dt.timedelta(days=10 * k) for k in range(6))):
            for n_irr in ((0, 4, 10) if quick else (0, 2, 4, 6, 8, 12)):
                for sname in (("medium",) if quick else ("shallow", "deep")):
                    scen.append(("spring_maize", "ES31031", y, sow, "wlp", sname, n_irr))
            scen.append(("spring_maize", "ES31031", y, sow, "pp", "deep", 0))
    scen = [sc if len(sc) == 7 else sc + (0,) for sc in scen]
    runs, daily, rad = [], [], []
    for i, (crop, wname, year, start, mode, sname, n_irr) in enumerate(scen):
        wdp = nl if wname == "NL1" else es
        # irrigation management: n_irr applications of 4 cm every 8 days from 35 days after
        # emergence (PCSE "irrigate" timed events, 70 % efficiency)
        irr = "null" if n_irr == 0 else (
            "\n        - event_signal: irrigate\n          name: irrigation\n"
            "          comment: management\n          events_table:\n" + "".join(
                f"            - {start + dt.timedelta(days=35 + 8 * k)}: "
                "{amount: 4.0, efficiency: 0.7}\n" for k in range(n_irr)))
        agro = yaml.safe_load(f"""
- {start - dt.timedelta(days=30)}:
    CropCalendar:
        crop_name: '{crop}'
        variety_name: 'demo'
        crop_start_date: {start}
        crop_start_type: emergence
        crop_end_date: null
        crop_end_type: maturity
        max_duration: 300
    TimedEvents: {irr}
    StateEvents: null
""")
        soil = dict(soil0, RDMSOL=soils[sname])
        params = ParameterProvider(cropdata=crops[crop], sitedata=site, soildata=soil)
        try:
            model = (Wofost72_PP if mode == "pp" else Wofost72_WLP_CWB)(params, wdp, agro)
            model.run_till_terminate()
        except Exception as exc:  # pcse WeatherDataProviderError: gaps in NL1.990/NL1.991
            log.info("run %d (%s %s) skipped: %s", i, crop, start, exc)
            continue
        out = pd.DataFrame(model.get_output())
        summ = model.get_summary_output()[0]
        if summ.get("DOM") is None:
            log.info("run %d (%s %s) did not mature; skipped", i, crop, start)
            continue
        fid = f"r{i:04d}"
        out["time"] = pd.to_datetime(out["day"])
        # pad 40 days of bare soil before and after the crop so phenology sees a full season
        days = pd.date_range(out["time"].min() - pd.Timedelta(days=40),
                             out["time"].max() + pd.Timedelta(days=40))
        lai = out.set_index("time")["LAI"].reindex(days).fillna(0.0).to_numpy()
        daily.append(pd.DataFrame({"field_id": fid, "time": days, "lai": lai,
                                   "ndvi_true": ndvi_from_lai(lai)}))
        rs = [_irrad(wdp, d.date()) for d in days]
        rad.append(pd.DataFrame({"field_id": fid, "time": days, "rs_mj_m2": rs}))
        twso = float(summ["TWSO"])
        runs.append({"field_id": fid, "crop": crop, "weather": wname, "year": year,
                     "start": pd.Timestamp(start), "mode": mode, "soil": sname,
                     "irrigations": n_irr,
                     "lat": float(wdp.latitude), "twso_kg_ha": twso,
                     "yield_t_ha": twso / 1000.0 / (1.0 - MOISTURE[crop]),
                     "maturity": pd.Timestamp(summ["DOM"]), "laimax": summ["LAIMAX"],
                     "group": f"{wname}-{year}"})
    return pd.DataFrame(runs), pd.concat(daily), pd.concat(rad)


def observe(daily: pd.DataFrame, seed: int, revisit: int = 5, cloud: float = 0.4,
            noise: float = 0.02) -> pd.DataFrame:
    """Sentinel-2-like sampling of the true NDVI: revisit, cloud losses, low-biased haze."""
    rng = np.random.default_rng(seed)
    rows = []
    for fid, g in daily.groupby("field_id"):
        g = g.iloc[int(rng.integers(revisit))::revisit]
        keep = rng.random(len(g)) > cloud
        v = g["ndvi_true"].to_numpy() + rng.normal(0, noise, len(g))
        haze = rng.random(len(g)) < 0.1
        v[haze] -= rng.uniform(0.1, 0.3, haze.sum())
        rows.append(pd.DataFrame({"field_id": fid, "time": g["time"].to_numpy()[keep],
                                  "ndvi": v[keep], "valid_fraction": 1.0, "flags": ""}))
    obs = pd.concat(rows, ignore_index=True)
    obs["time"] = pd.to_datetime(obs["time"]).dt.tz_localize("UTC")
    return obs


def _score(y, p10, p50, p90):
    ok = np.isfinite(p50)
    y, p10, p50, p90 = y[ok], p10[ok], p50[ok], p90[ok]
    sse = np.sum((y - p50) ** 2)
    return {"n": int(ok.sum()), "r2": float(1 - sse / np.sum((y - y.mean()) ** 2)),
            "rmse_t_ha": float(np.sqrt(sse / len(y))),
            "rmse_pct": float(100 * np.sqrt(sse / len(y)) / y.mean()),
            "bias_t_ha": float(np.mean(p50 - y)),
            "coverage_p10_p90": float(np.mean((y >= p10) & (y <= p90)))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer scenarios (~1 min)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results table here")
    ap.add_argument("--cache", help="folder: reuse/store the WOFOST runs as Parquet")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from cropyield.seasons import phenology
    from cropyield.series import smooth_series
    from cropyield.yieldmodel import LUEModel, fit_yield_model

    t0 = time.time()
    names = ("runs", "daily", "rad")
    if args.cache and all(os.path.exists(os.path.join(args.cache, f"{n}.parquet"))
                          for n in names):
        runs, daily, rad = (pd.read_parquet(os.path.join(args.cache, f"{n}.parquet"))
                            for n in names)
    else:
        runs, daily, rad = simulate(args.quick, args.seed)
        if args.cache:
            os.makedirs(args.cache, exist_ok=True)
            for n, df in zip(names, (runs, daily, rad)):
                df.to_parquet(os.path.join(args.cache, f"{n}.parquet"))
    t_sim = time.time() - t0
    ser = smooth_series(observe(daily, args.seed), index="ndvi")
    ph = phenology(ser, index="ndvi")
    ph = ph[ph["sos"].notna() & ph["eos"].notna()]
    # the main season of each run: the highest peak
    ph = ph.sort_values("peak", ascending=False).drop_duplicates("field_id")
    seasons = ph.merge(runs, on="field_id")[["field_id", "season", "sos", "eos", "n_obs",
                                              "crop", "lat", "yield_t_ha", "group", "flags"]]
    # crop failures (grain < 0.5 t/ha, e.g. rainfed maize in a Spanish summer) cannot be
    # scored on a relative scale; they are counted and left out
    failed = seasons["yield_t_ha"] < 0.5
    n_failed = seasons.loc[failed].groupby("crop").size().to_dict()
    seasons = seasons[~failed]
    results = {"n_runs": len(runs), "n_seasons_detected": len(seasons) + sum(n_failed.values()),
               "n_failed_crops_excluded": n_failed,
               "simulate_s": round(t_sim, 1), "seed": args.seed, "quick": args.quick,
               "canopy": {"ndvi_soil": NDVI_SOIL, "ndvi_veg": NDVI_VEG, "k": K_CANOPY},
               "crops": {}}
    rng = np.random.default_rng(args.seed)
    for crop, s in seasons.groupby("crop"):
        groups = np.array(sorted(s["group"].unique()))
        if len(groups) < 4:       # maize: 2 weather years -> hold out by (year, start) groups
            s = s.assign(group=s["field_id"].map(
                runs.set_index("field_id").apply(lambda r: f"{r.group}-{r.start.date()}",
                                                 axis=1)))
            groups = np.array(sorted(s["group"].unique()))
        rng.shuffle(groups)
        test_g = set(groups[: max(1, int(round(0.4 * len(groups))))])
        tr, te = s[~s["group"].isin(test_g)], s[s["group"].isin(test_g)]
        obs = tr[["field_id", "season", "yield_t_ha"]]
        lat = dict(zip(s["field_id"], s["lat"]))
        res = {"n_train": len(tr), "n_test": len(te), "n_groups": len(groups),
               "wofost_mean_t_ha": float(s["yield_t_ha"].mean()),
               "wofost_cv_pct": float(100 * s["yield_t_ha"].std() / s["yield_t_ha"].mean())}
        te_in = te.drop(columns=["yield_t_ha"])
        unc = LUEModel().predict(ser, te_in, lat=lat, radiation=rad)
        res["lue_uncalibrated"] = _score(te["yield_t_ha"].to_numpy(), *(
            unc[f"yield_t_ha_{q}"].to_numpy() for q in ("p10", "p50", "p90")))
        for method in ("lue", "empirical"):
            m = fit_yield_model(ser, obs, crop=crop, method=method, seasons=tr,
                                groups=tr["group"].to_numpy(), lat=lat, radiation=rad,
                                seed=args.seed)
            p = m.predict(ser, te_in, lat=lat, radiation=rad)
            res[method] = {"cv": m.cv_, "test": _score(te["yield_t_ha"].to_numpy(), *(
                p[f"yield_t_ha_{q}"].to_numpy() for q in ("p10", "p50", "p90")))}
            if method == "lue":
                res[method]["factor"] = m.factor(crop, "north_china_plain")["factor"]
        results["crops"][crop] = res
    results["total_s"] = round(time.time() - t0, 1)
    text = json.dumps(results, indent=1, default=str)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
