"""Public truth tables: fields, daily canopy, seasons; and simulated observations."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._geo import MU_PER_HA
from ..errors import join_flags
from ._canopy import (BANDS, CLOUD, CROP_IDS, CROPS, compute_indices, canopy_state,
                      reflectance_from_state, weather_wetness)
from ._clouds import sky_on_date
from ._config import WorldConfig, rng_for
from ._fields import landscape

__all__ = ["make_fields", "true_canopy", "true_seasons", "simulate_observations",
           "field_weather"]

TRUTH_INDICES = ("ndvi", "evi2", "gcvi", "ndre", "ndmi")
_CHUNK = 2000   # fields per block of daily canopy arrays (bounds memory on county worlds)


def _cfg(config) -> WorldConfig:
    return WorldConfig() if config is None else config


def _registered(config):
    ls = landscape(config)
    p = ls.parcels[ls.parcels["registered"]].copy()
    p = p.sort_values(["farmer", "parcel"]).reset_index(drop=True)
    p["field_id"] = [f"F{i:06d}" for i in range(len(p))]
    return ls, p


def make_fields(config: WorldConfig | None = None):
    """Smallholder fields registered with the lender, with their truth.

    Parameters
    ----------
    config : WorldConfig, optional
        World parameters (default: the demo world).

    Returns
    -------
    geopandas.GeoDataFrame
        In the world's UTM CRS (EPSG:32650 for the default), one row per field:
        ``field_id`` (``"F000123"``), ``farmer_id`` (``"H00012"``; 1-10 plots each), ``crop``
        (the DECLARED crop system, ~5 % deliberately wrong), ``true_crop`` (crop system id:
        crop ids joined with ``+`` in season order, e.g. ``"winter_wheat+summer_maize"``;
        ``"fallow"`` for no crop), ``declared_area_mu`` (farmer's declaration: measured area
        rounded to 0.5 mu with noise, a few large misdeclarations), ``area_ha`` (true),
        ``variety`` (per season, joined with ``+``), ``sow_date`` (first season, tz-naive),
        ``edge_case`` (``""``, ``"sliver"``, ``"subpixel"`` or ``"straddle"`` when the
        field crosses a tile edge) and ``geometry``. Same seed, same table.
    """
    import geopandas as gpd

    config = _cfg(config)
    ls, p = _registered(config)
    seasons = ls.seasons
    rng = rng_for(config.seed, "fields", 99)
    start = pd.Timestamp(config.start)
    first = seasons[seasons["season"] == 1].set_index("parcel")
    v1 = seasons.loc[seasons["season"] == 1].set_index("parcel")["variety"]
    v2 = seasons.loc[seasons["season"] == 2].set_index("parcel")["variety"]
    var = v1.astype(object).copy()
    both = v2.index.intersection(v1.index)
    var.loc[both] = v1.loc[both].astype(object) + "+" + v2.loc[both].astype(object)
    area_ha = p.geometry.area.to_numpy() / 10_000.0
    mu = area_ha * MU_PER_HA
    decl = np.round(mu * np.exp(rng.normal(0, 0.05, len(p))) * 2) / 2
    decl = np.maximum(decl, 0.5)
    big = rng.random(len(p)) < 0.03
    decl[big] = np.round(mu[big] * rng.choice([0.5, 1.6, 2.0, 3.0], big.sum()) * 2) / 2
    t_sow = first["t_sow"].reindex(p["parcel"].to_numpy()).to_numpy()
    sow = start + pd.to_timedelta(t_sow, unit="D")
    out = gpd.GeoDataFrame({
        "field_id": p["field_id"].to_numpy(),
        "farmer_id": [f"H{int(f):05d}" for f in p["farmer"]],
        "crop": p["declared"].astype(str).to_numpy(),
        "true_crop": p["system"].astype(str).to_numpy(),
        "declared_area_mu": decl,
        "area_ha": area_ha,
        "variety": var.reindex(p["parcel"].to_numpy()).fillna("").astype(str).to_numpy(),
        "sow_date": pd.DatetimeIndex(sow).as_unit("ns").to_numpy(),
        "edge_case": p["edge_case"].astype(str).to_numpy(),
    }, geometry=p.geometry.to_numpy(), crs=p.crs)
    out.attrs["seed"] = config.seed
    out.attrs["config_key"] = config.key()
    return out


def _field_canopy(config, ls, p, t, lai_scale=1.0):
    """Reflectance, fcover and state of registered parcels on days t (since start)."""
    st = canopy_state(ls.seasons, p["parcel"].to_numpy(), t, lai_scale=lai_scale)
    wet_all = weather_wetness(config)
    wet = wet_all[np.clip(np.asarray(t, dtype=int), 0, len(wet_all) - 1)]
    k = _k_of(ls, p, st)
    refl, fc = reflectance_from_state(st, k=k, soil_brightness=p["soil_brightness"].to_numpy(),
                                      wetness=wet)
    return st, refl, fc


def _k_of(ls, p, st):
    kk = np.array([CROPS[c]["k"] for c in CROP_IDS])
    k = np.where(st["crop_idx"] >= 0, kk[np.maximum(st["crop_idx"], 0)], 0.5)
    return k


def true_canopy(fields=None, config: WorldConfig | None = None) -> pd.DataFrame:
    """Daily true canopy of each field from the canopy reflectance model.

    Parameters
    ----------
    fields : GeoDataFrame, optional
        Output of :func:`make_fields` (only its ``field_id`` column is used, to subset).
    config : WorldConfig, optional

    Returns
    -------
    pandas.DataFrame
        ``field_id, time`` (tz-naive midnight), ``season`` (1, 2; 0 when no crop is in the
        ground), ``crop`` (crop id of the season, "" when bare), ``lai`` (green leaf area
        index, m2/m2), ``fcover`` (canopy ground cover, 0-1, green + senescent leaves),
        ``ndvi, evi2, ndre, ndmi`` computed from simulated band reflectances
        (ndre = (B8A-B05)/(B8A+B05), ndmi = (B08-B11)/(B08+B11)).
    """
    config = _cfg(config)
    ls, p = _registered(config)
    if fields is not None:
        p = p[p["field_id"].isin(set(fields["field_id"]))].reset_index(drop=True)
    days = config.days
    t = np.arange(len(days), dtype=float)
    crop_names = np.array(("",) + CROP_IDS, dtype=object)
    parts = []
    for a in range(0, max(len(p), 1), _CHUNK):
        pc = p.iloc[a:a + _CHUNK]
        st, refl, fc = _field_canopy(config, ls, pc, t)
        idx = compute_indices(refl, TRUTH_INDICES)
        n, m = len(pc), len(days)
        parts.append(pd.DataFrame({
            "field_id": np.repeat(pc["field_id"].to_numpy(), m),
            "time": np.tile(days.to_numpy().astype("datetime64[ns]"), n),
            "season": st["season"].reshape(-1).astype(np.int8),
            "crop": crop_names[st["crop_idx"].reshape(-1).astype(int) + 1],
            "lai": st["lai_green"].reshape(-1),
            "fcover": fc.reshape(-1),
            **{k: v.reshape(-1) for k, v in idx.items()},
        }))
    df = pd.concat(parts, ignore_index=True)
    df.attrs["seed"] = config.seed
    return df


def true_seasons(fields=None, config: WorldConfig | None = None) -> pd.DataFrame:
    """True seasons and yields, one row per (field_id, season); fallow fields have none.

    Seasons that overlap the world's dates are listed; their dates and peak are computed over
    the whole season even where it starts before ``config.start`` or ends after ``end``.

    Returns
    -------
    pandas.DataFrame
        ``field_id, season, crop, variety, sow_date, sos, pos, eos, harvest_date`` (tz-naive
        dates; sos/eos where the true NDVI crosses 20 % of the season's amplitude above the
        left/right base, pos at the NDVI peak), ``peak_ndvi``, ``peak_lai``,
        ``true_yield_t_ha`` (at the reporting basis in ``yield_basis``: ``grain@12.5%``
        wheat, ``grain@14%`` maize, ``grain@14.5%`` rice, ``grain@13%`` soybean,
        ``pods@10%`` peanut, ``lint`` cotton, ``fresh`` vegetables), ``area_ha``,
        ``true_production_t`` (t), ``yield_source`` (``"wofost"``: yield and canopy from one
        WOFOST run of :mod:`cropyield.cropmodel` - winter wheat, summer and spring maize;
        ``"parametric"``: the hand-made process), the crop-model drivers ``weather_year``
        (-1 when parametric), ``soil`` (rooting-depth class), ``n_kg_ha`` (nitrogen supply),
        ``irrigations``, and the drivers of the parametric process ``stress`` (post-peak
        stress factor, 1 = none), ``hi_factor`` (variety harvest-index factor), ``pest``
        (1 = none); all three are 1 on crop-model seasons.
    """
    config = _cfg(config)
    ls, p = _registered(config)
    if fields is not None:
        p = p[p["field_id"].isin(set(fields["field_id"]))].reset_index(drop=True)
    days = config.days
    # the whole of every season, even where it starts before or ends after the world's dates
    sea = ls.seasons
    t0 = min(0.0, float(np.floor(sea["t_sow"].min()))) if len(sea) else 0.0
    t1 = max(len(days) - 1.0, float(sea["t_harvest"].max()) + 10) if len(sea) else len(days) - 1.0
    t = np.arange(t0, t1 + 1.0)
    area = dict(zip(p["parcel"], p.geometry.area / 10_000.0))
    fid = dict(zip(p["parcel"], p["field_id"]))
    start = pd.Timestamp(config.start)
    parts = [_season_rows(config, ls, p.iloc[a0:a0 + _CHUNK], t, days, area, fid, start)
             for a0 in range(0, max(len(p), 1), _CHUNK)]
    df = pd.concat(parts, ignore_index=True)
    if len(df):
        df = df.sort_values(["field_id", "season"]).reset_index(drop=True)
    df.attrs["seed"] = config.seed
    return df


def field_weather(fields=None, config: WorldConfig | None = None, *,
                  margin_days: int = 10) -> pd.DataFrame:
    """Daily weather of the crop-model seasons of the world's fields, on the world calendar.

    Every winter wheat, summer maize and spring maize season of the world is one WOFOST run
    of the shipped library (:mod:`cropyield.cropmodel`) on one weather year (shared by a
    village block), placed on the world's calendar by a time warp
    (:func:`cropyield.synthetic._canopy.wofost_timing`). This is that run's weather mapped
    through the same warp (:func:`cropyield.cropmodel.warped_weather`): what a weather
    station beside the field would have recorded on the world's dates, as far as the crop
    model is concerned. Weather is given from ``margin_days`` before sowing to
    ``margin_days`` after harvest; where two seasons of a field overlap there, the later
    season's weather is kept. Every other day of the world's period (``margin_days`` more on
    each side), and every day of fields without a crop-model season, gets the weather of the
    field's village block's weather year on the same month and day, unwarped (the
    Wageningen record as is: a weather station with no crop to follow), so that a season
    found on a field of another crop still has weather.

    Parameters
    ----------
    fields : GeoDataFrame, optional
        Restrict to these ``field_id`` (default: every registered field).
    config : WorldConfig, optional
    margin_days : int
        Days of weather before sowing and after harvest.

    Returns
    -------
    pandas.DataFrame
        ``field_id, time`` (tz-naive days), ``tmin_c, tmax_c`` (degC), ``radiation_mj_m2``
        (MJ m-2 d-1), ``rain_mm`` (mm d-1), ``season`` (0 outside crop-model seasons),
        ``weather_year``.
    """
    from ..cropmodel import WEATHER_COLUMNS, _emergence, load_weather, warped_weather
    from ._canopy import WOFOST_WORLD, _wofost_library, block_weather_years

    config = _cfg(config)
    ls, p = _registered(config)
    if fields is not None:
        p = p[p["field_id"].isin(set(fields["field_id"]))].reset_index(drop=True)
    fid = dict(zip(p["parcel"], p["field_id"]))
    sea = ls.seasons
    sea = sea[sea["parcel"].isin(fid) & (sea["run"].to_numpy() >= 0)]
    start = pd.Timestamp(config.start)
    cols = ["field_id", "time", *WEATHER_COLUMNS, "season", "weather_year"]
    frames = []
    for crop, g in sea.groupby("crop", sort=True):
        c = WOFOST_WORLD[crop]
        lib = _wofost_library(c)
        runs = g["run"].to_numpy(dtype=int)
        em = [_emergence(c, int(y), float(o)) for y, o in
              zip(g["weather_year"].to_numpy(), lib["offset"][runs])]
        a = np.floor(g["t_sow"].to_numpy(float)) - margin_days
        b = g["t_harvest"].to_numpy(float) + margin_days
        t = np.arange(float(a.min()), float(b.max()) + 1.0)
        wx = warped_weather(c, em, g["t_a"].to_numpy(float), g["wscale"].to_numpy(float), t)
        keep = (t[None, :] >= a[:, None]) & (t[None, :] <= b[:, None])
        r, k = np.nonzero(keep)
        frames.append(pd.DataFrame({
            "field_id": np.array([fid[q] for q in g["parcel"]], dtype=object)[r],
            "time": (start + pd.to_timedelta(t[k], unit="D")).as_unit("ns"),
            **{v: wx[v][r, k] for v in WEATHER_COLUMNS},
            "season": g["season"].to_numpy(dtype=int)[r],
            "weather_year": g["weather_year"].to_numpy(dtype=int)[r]}))
    # the block's weather year on the calendar, unwarped, for every other day (as
    # assign_management draws it: one weather year per village block)
    ublocks = np.unique(ls.parcels["block"].to_numpy())
    block_year = dict(zip(ublocks, block_weather_years(config, ublocks)))
    days = pd.date_range(start - pd.Timedelta(days=margin_days),
                         pd.Timestamp(config.end) + pd.Timedelta(days=margin_days))
    crop_year = (start + pd.DateOffset(months=4)).year
    w = load_weather("wheat")
    by_year: dict[int, dict[str, np.ndarray]] = {}   # one weather year serves many fields
    for fid_, blk in zip(p["field_id"], p["block"]):
        wy = int(block_year[blk])
        if wy not in by_year:
            v = w.reindex(days + pd.DateOffset(years=wy - crop_year))
            by_year[wy] = {c: v[c].to_numpy(float) for c in WEATHER_COLUMNS}
        frames.insert(0, pd.DataFrame({
            "field_id": fid_, "time": days.as_unit("ns"), **by_year[wy],
            "season": 0, "weather_year": wy}))
    if not frames:
        return pd.DataFrame(columns=cols)
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(["field_id", "time", "season"], kind="stable")
    df = df.drop_duplicates(["field_id", "time"], keep="last").reset_index(drop=True)
    return df[cols]


def _season_rows(config, ls, p, t, days, area, fid, start) -> pd.DataFrame:
    """Season truth of a chunk of fields (vectorised over seasons)."""
    st, refl, fc = _field_canopy(config, ls, p, t)
    ndvi = compute_indices(refl, ("ndvi",))["ndvi"]
    pos_of = pd.Series(np.arange(len(p)), index=p["parcel"].to_numpy())
    r = ls.seasons[ls.seasons["parcel"].isin(pos_of.index)]
    D = len(t)
    a = (r["t_sow"].to_numpy() - t[0]).astype(int)
    b = np.minimum(r["t_harvest"].to_numpy() - t[0], D - 1).astype(int)
    n_days = len(days)
    keep = (b > a) & (r["t_harvest"].to_numpy() >= 0) & (r["t_sow"].to_numpy() <= n_days - 1)
    r, a, b = r[keep], a[keep], b[keep]
    i = pos_of.loc[r["parcel"].to_numpy()].to_numpy()
    nd = ndvi[i]                                  # (n_seasons, D)
    d = np.arange(D)[None, :]
    a_, b_ = a[:, None], b[:, None]
    win = (d >= a_) & (d <= b_)
    ip = np.argmax(np.where(win, nd, -np.inf), axis=1)
    peak = nd[np.arange(len(i)), ip]
    ip_ = ip[:, None]
    left = np.where((d >= a_) & (d <= ip_), nd, np.inf).min(axis=1)
    hi_end = np.minimum(b + 10, D - 1)[:, None]
    right_win = (d >= ip_) & (d <= hi_end)
    right = np.where(right_win, nd, np.inf).min(axis=1)
    up_ok = (d >= a_) & (d <= ip_) & (nd >= (left + 0.2 * (peak - left))[:, None])
    sos = np.argmax(up_ok, axis=1)
    dn_ok = right_win & (nd >= (right + 0.2 * (peak - right))[:, None])
    eos = D - 1 - np.argmax(dn_ok[:, ::-1], axis=1)
    # a failed crop (tiny amplitude) can stay "above" the post-harvest soil noise: the season
    # ends at harvest at the latest
    eos = np.minimum(eos, b)
    peak_lai = np.where(win, st["lai_green"][i], -np.inf).max(axis=1)
    day = lambda x: (start + pd.to_timedelta(np.asarray(x, dtype=float), unit="D")  # noqa: E731
                     ).as_unit("ns")
    ar = np.array([area[q] for q in r["parcel"]])
    y = r["yield_t_ha"].to_numpy()
    return pd.DataFrame(dict(
        field_id=[fid[q] for q in r["parcel"]], season=r["season"].to_numpy().astype(int),
        crop=r["crop"].to_numpy(), variety=r["variety"].to_numpy(),
        sow_date=day(r["t_sow"]), sos=day(sos + t[0]), pos=day(ip + t[0]),
        eos=day(eos + t[0]),
        harvest_date=day(r["t_harvest"]), peak_ndvi=peak, peak_lai=peak_lai,
        true_yield_t_ha=y, yield_basis=r["basis"].to_numpy(), area_ha=ar,
        true_production_t=y * ar, stress=r["stress"].to_numpy(),
        hi_factor=r["hi_factor"].to_numpy(), pest=r["pest"].to_numpy(),
        yield_source=np.where(r["run"].to_numpy() >= 0, "wofost", "parametric"),
        weather_year=r["weather_year"].to_numpy().astype(int), soil=r["soil"].to_numpy(),
        n_kg_ha=r["n_kg_ha"].to_numpy(dtype=float),
        irrigations=r["irrigations"].to_numpy().astype(int)))


def _field_cells(config, p):
    """Per registered field: world 20 m cell ids and weights (10 m pixels in each cell)."""
    from rasterio.features import rasterize

    H, W = config.world_shape
    lab = rasterize(((g, i + 1) for i, g in enumerate(p.geometry)), out_shape=(H, W),
                    transform=config.world_transform, fill=0, dtype="int32")
    r, c = np.nonzero(lab)
    f = lab[r, c] - 1
    cell = (r // 2) * (W // 2) + (c // 2)
    key = f.astype(np.int64) * (H * W) + cell
    uk, cnt = np.unique(key, return_counts=True)
    fi, ci = uk // (H * W), uk % (H * W)
    w = cnt.astype(float)
    missing = np.setdiff1d(np.arange(len(p)), fi)
    if len(missing):   # sub-pixel fields: the cell of the centroid
        tr = config.world_transform
        extra_f, extra_c, extra_w = [], [], []
        for i in missing:
            cpt = p.geometry.iloc[i].centroid
            cc, rr = (cpt.x - tr.c) / tr.a, (cpt.y - tr.f) / tr.e
            rr, cc = min(max(int(rr), 0), H - 1), min(max(int(cc), 0), W - 1)
            extra_f.append(i)
            extra_c.append((rr // 2) * (W // 2) + cc // 2)
            extra_w.append(max(p.geometry.iloc[i].area / 100.0, 0.01))
        fi = np.r_[fi, extra_f]
        ci = np.r_[ci, extra_c]
        w = np.r_[w, extra_w]
        o = np.lexsort((ci, fi))
        fi, ci, w = fi[o], ci[o], w[o]
    return fi.astype(np.int64), ci.astype(np.int64), w


def simulate_observations(fields=None, config: WorldConfig | None = None, *,
                          indices=("ndvi",)) -> pd.DataFrame:
    """Per-(field, scene) observations as :func:`cropyield.field_observations` would give them.

    Emulates the scenes of the world (5-day revisit, overlapping tiles, reprocessed
    duplicates) without writing rasters: per-date clouds (SCL 8/9/10), shadows and swath
    nodata mask part of each field; undetected haze near clouds biases indices LOW; edge
    pixels mix with the surroundings; sensor and atmospheric noise. Same seed, same table.

    Parameters
    ----------
    fields : GeoDataFrame, optional
        Output of :func:`make_fields` (used to subset by ``field_id``).
    config : WorldConfig, optional
    indices : sequence of str
        Any of ``ndvi, evi2, ndre, ndmi, gcvi``.

    Returns
    -------
    pandas.DataFrame
        ``field_id, time`` (tz-aware UTC), ``scene_id, tile, coverage`` (pixels, sum of
        10 m coverage fractions inside the tile), ``valid_fraction``, per index ``<index>``
        and ``<index>_std``, ``flags`` (``ALL_MASKED`` when nothing is valid, plus
        ``NO_OVERLAP`` when the field lies wholly beyond the swath edge; ``SUBPIXEL_FIELD``).
        ``attrs``: ``requests``, ``bytes_read``, ``read_failures`` (0), ``scene_ids``, ``seed``.
    """
    import shapely

    config = _cfg(config)
    indices = tuple(indices)
    compute_indices(np.zeros((1, len(BANDS))), indices)   # validates names
    ls, p = _registered(config)
    if fields is not None:
        p = p[p["field_id"].isin(set(fields["field_id"]))].reset_index(drop=True)
    n = len(p)
    H, W = config.world_shape
    fi, ci, w = _field_cells(config, p)
    geoms = p.geometry.to_numpy()
    area_px = shapely.area(geoms) / 100.0
    perim = shapely.length(geoms)
    mix = np.clip(0.6 * perim / np.maximum(shapely.area(geoms), 1.0), 0, 0.4)
    # coverage and cell membership per tile
    tiles = config.tiles
    cov_tile, in_tile = {}, {}
    crow, ccol = ci // (W // 2), ci % (W // 2)
    for tl in tiles:
        inter = shapely.intersection(geoms, shapely.box(*tl.bounds))
        cov_tile[tl.name] = shapely.area(inter) / 100.0
        r0, c0, side = tl.row0 // 2, tl.col0 // 2, tl.size_px // 2
        in_tile[tl.name] = ((crow >= r0) & (crow < r0 + side) & (ccol >= c0)
                            & (ccol < c0 + side))
    dates = config.dates
    t = np.asarray((dates - pd.Timestamp(config.start)).days, dtype=float)
    road = np.array([0.12, 0.14, 0.16, 0.18, 0.19, 0.20, 0.21, 0.22, 0.25, 0.23])
    rng = rng_for(config.seed, "obs")
    flag_table = np.array([join_flags(
        ["ALL_MASKED"] * bool(c & 1), ["NO_OVERLAP"] * bool(c & 2),
        ["SUBPIXEL_FIELD"] * bool(c & 4))
        for c in range(8)], dtype=object)
    scenes_by_date: dict[int, list] = {}
    for s in config.scenes:
        scenes_by_date.setdefault(s.date_index, []).append(s)
    frames = []
    for k in range(len(dates)):
        sky, haze = sky_on_date(config, k)
        # field reflectance on this date (mean vigour, and +-15 % LAI for the texture)
        tk = t[k:k + 1]
        refl_k = _field_canopy(config, ls, p, tk)[1][:, 0, :]
        lo_k = _field_canopy(config, ls, p, tk, lai_scale=0.85)[1][:, 0, :]
        hi_k = _field_canopy(config, ls, p, tk, lai_scale=1.15)[1][:, 0, :]
        land_mean = refl_k.mean(axis=0, keepdims=True) * 0.8 + 0.2 * road
        refl_k = (1 - mix[:, None]) * refl_k + mix[:, None] * land_mean
        tex_lo = compute_indices(lo_k, indices)
        tex_hi = compute_indices(hi_k, indices)
        skyc, hazec = sky.reshape(-1)[ci], haze.reshape(-1)[ci]
        valid_c = (skyc == 0)
        nodata_c = (skyc == 255)
        atm = rng.normal(0, 0.004, len(BANDS))
        pix_noise = rng.normal(0, 1, (n, len(BANDS)))
        for tl in tiles:
            sel = in_tile[tl.name]
            wv = np.bincount(fi[sel], weights=w[sel] * valid_c[sel], minlength=n)
            wt = np.bincount(fi[sel], weights=w[sel], minlength=n)
            wn = np.bincount(fi[sel], weights=w[sel] * nodata_c[sel], minlength=n)
            hz = np.bincount(fi[sel], weights=w[sel] * valid_c[sel] * hazec[sel], minlength=n)
            present = cov_tile[tl.name] > 1e-9
            if not present.any():
                continue
            vf = np.where(wt > 0, wv / np.maximum(wt, 1e-12), 0.0)
            h = np.where(wv > 0, hz / np.maximum(wv, 1e-12), 0.0)
            npx = np.maximum(vf * area_px, 0.5)
            r = refl_k * (1 - h[:, None]) + h[:, None] * CLOUD + atm
            r = r + pix_noise * 0.012 / np.sqrt(npx)[:, None]
            vals = compute_indices(r, indices)
            cols = {}
            for nm in indices:
                v = vals[nm].copy()
                sd = np.sqrt((np.abs(tex_hi[nm] - tex_lo[nm]) / 3.4) ** 2 + 0.012 ** 2
                             + (mix * 0.05) ** 2 + (h * 0.3) ** 2)
                bad = vf <= 0
                v[bad] = np.nan
                sd[bad] = np.nan
                cols[nm], cols[f"{nm}_std"] = v, sd
            masked = vf <= 0
            outside = masked & (wt > 0) & (wn >= wt - 1e-9)
            code = masked * 1 + outside * 2 + (area_px < 1.0) * 4
            flags = flag_table[code]
            base = pd.DataFrame({"field_id": p["field_id"].to_numpy(),
                                 "coverage": cov_tile[tl.name], "valid_fraction": vf,
                                 **cols, "flags": flags})[present]
            for s in scenes_by_date.get(k, []):
                if s.tile.name != tl.name:
                    continue
                fr = base.copy()
                fr.insert(1, "time", s.datetime)
                fr.insert(2, "scene_id", s.id)
                fr.insert(3, "tile", s.tile.name)
                frames.append(fr)
    if not frames:
        names = ["field_id", "time", "scene_id", "tile", "coverage", "valid_fraction",
                *[c for nm in indices for c in (nm, f"{nm}_std")], "flags"]
        frames = [pd.DataFrame({c: pd.Series(dtype=object if c in ("field_id", "scene_id",
                                                                      "tile", "flags")
                                             else float) for c in names})]
    df = pd.concat(frames, ignore_index=True)
    df["time"] = pd.to_datetime(df["time"], utc=True).astype("datetime64[ns, UTC]")
    df = df.sort_values(["field_id", "time", "scene_id"]).reset_index(drop=True)
    df.attrs.update(requests=0, bytes_read=0, read_failures=0,
                    scene_ids=[s.id for s in config.scenes], seed=config.seed,
                    config_key=config.key())
    return df
