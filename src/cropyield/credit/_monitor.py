"""In-season monitoring: alerts when a field departs from its expected trajectory or peers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, SupportsFloat

import numpy as np
import pandas as pd

from .._log import logger
from ..errors import CreditInputError
from ._assess import _date, _str

__all__ = ["monitor", "MonitorRules", "ALERT_CODES", "ALERT_COLUMNS"]

#: Columns of the alerts table returned by :func:`monitor`.
ALERT_COLUMNS = ("field_id", "farmer_id", "as_of", "code", "severity", "message", "value",
                 "expected")

#: Alert codes and what they mean (``value``/``expected`` units in brackets).
ALERT_CODES: dict[str, str] = {
    "STALE_DATA": "no clear observation near as_of; index values there are extrapolated "
                  "[days to the nearest clear observation / allowed days]",
    "NOT_SOWN": "past the crop's expected start of season without green-up [index amplitude "
                "since the expected sowing / peers' median amplitude]",
    "EARLY_HARVEST": "the index collapsed well before the expected end of season [current "
                     "index / the field's peak so far]",
    "VIGOUR_DROP": "index below the crop's expected trajectory at the same day of season "
                   "[current index / peers' median at the same day of season]",
    "PEER_OUTLIER": "index far below fields of the same crop and region on the same date "
                    "[current index / peers' median on as_of]",
}


@dataclass(frozen=True)
class MonitorRules:
    """Thresholds of :func:`monitor` (index units are those of ``index``, e.g. NDVI).

    Attributes
    ----------
    max_gap_days : a value is *observed* when the nearest clear observation is at most this
        many days away (``gap_days`` of the series); otherwise it is extrapolated.
    min_peers : minimum number of peer fields (same crop and region) for a peer statistic.
    drop : VIGOUR_DROP when the index is more than ``drop`` below the expected value ...
    z : ... and the robust z-score (median/MAD of peers) is below ``-z``.
    min_spread : floor of the robust spread (1.4826 x MAD), index units.
    outlier_drop, outlier_z : the same two thresholds for PEER_OUTLIER.
    sos_margin_days : NOT_SOWN when ``as_of`` is this many days past the latest expected SOS.
    greenup : minimum index amplitude that counts as green-up.
    eos_margin_days : EARLY_HARVEST only when ``as_of`` is this many days before the expected
        end of season.
    collapse_fraction, collapse_min : EARLY_HARVEST when the index fell by more than this
        fraction of the season amplitude and by at least ``collapse_min``.
    loo_max_peers : leave the field itself out of its peer statistics for groups up to this
        size (larger groups include it; the effect on a median is negligible there).
    """

    max_gap_days: float = 15.0
    min_peers: int = 3
    drop: float = 0.15
    z: float = 2.0
    min_spread: float = 0.05
    outlier_drop: float = 0.2
    outlier_z: float = 3.0
    sos_margin_days: int = 20
    greenup: float = 0.15
    eos_margin_days: int = 20
    collapse_fraction: float = 0.5
    collapse_min: float = 0.2
    loo_max_peers: int = 200


def _empty(as_of: pd.Timestamp) -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in ALERT_COLUMNS})
    df["as_of"] = pd.Series(dtype="datetime64[ns]")
    df["value"] = pd.Series(dtype=float)
    df["expected"] = pd.Series(dtype=float)
    return df


def _robust(v: np.ndarray, rules: MonitorRules) -> tuple[float, float, int]:
    """Median, robust spread (1.4826 MAD, >= min_spread) and count of the finite values."""
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, 0
    med = float(np.median(v))
    spread = max(1.4826 * float(np.median(np.abs(v - med))), rules.min_spread)
    return med, spread, int(v.size)


def _peer_stats(values: np.ndarray, rules: MonitorRules, *, robust: bool = True,
                only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per member of a peer group: median, spread and count of the *other* members' finite
    values (leave-one-out up to ``rules.loo_max_peers`` peers; larger groups include the
    member itself, which moves a median negligibly). ``only``: members to compute."""
    k = len(values)
    med, spr, cnt = np.full(k, np.nan), np.full(k, np.nan), np.zeros(k, dtype=int)
    todo = np.arange(k) if only is None else np.asarray(only, dtype=int)
    if k - 1 <= rules.loo_max_peers:
        for i in todo:
            others = np.delete(values, i)
            if robust:
                med[i], spr[i], cnt[i] = _robust(others, rules)
            else:
                o = others[np.isfinite(others)]
                med[i], cnt[i] = (float(np.median(o)) if o.size else np.nan), o.size
    else:
        if robust:
            m, sp, c = _robust(values, rules)
        else:
            o = values[np.isfinite(values)]
            m, sp, c = (float(np.median(o)) if o.size else np.nan), np.nan, o.size
        med[todo], spr[todo], cnt[todo] = m, sp, c
    return med, spr, cnt


def _pick_rows(est: pd.DataFrame, as_of: pd.Timestamp, *, start_col: str = "sos",
               end_col: str = "eos") -> pd.DataFrame:
    """One row per field: the season in progress at ``as_of``, else the nearest one.

    A season is in progress when its start is on or before ``as_of`` and its end (``eos``,
    else the expected ``harvest_date``) is unknown or not before it; among several (a double-
    cropped field whose first season has no end yet) the one that started last wins. Without
    one in progress, the season whose [start, end] is nearest to ``as_of`` is used; ties go to
    the later start, then the later season label.
    """
    nat = pd.Series(pd.NaT, index=est.index, dtype="datetime64[ns]")
    start = est[start_col] if start_col in est else nat
    end = est[end_col] if end_col in est else nat
    if "harvest_date" in est:
        end = end.fillna(est["harvest_date"])
    before = (start - as_of).dt.days.clip(lower=0)
    after = (as_of - end).dt.days.clip(lower=0)
    dist = before.fillna(0) + after.fillna(0)
    dist = dist.where(start.notna() | end.notna(), 10**6)
    running = (start.notna() & (start <= as_of) & (end.isna() | (end >= as_of))).to_numpy()
    # later start first (NaT last): negative ns, NaT -> +inf
    start_key = np.where(start.notna().to_numpy(),
                         -start.to_numpy("datetime64[ns]").astype("int64").astype(float),
                         np.inf)
    season = est["season"].astype(str) if "season" in est else pd.Series("", index=est.index)
    order = est.assign(_run=(~running).astype(int), _dist=dist.to_numpy(), _start=start_key,
                       _season=season.to_numpy())
    order = order.sort_values(["field_id", "_run", "_dist", "_start", "_season"],
                              ascending=[True, True, True, True, False], kind="mergesort")
    return order.drop_duplicates("field_id").drop(columns=["_run", "_dist", "_start",
                                                           "_season"])


def _ids(col: pd.Series) -> np.ndarray:
    """Field ids as str (object array), converting each distinct value once."""
    codes, uniq = pd.factorize(col, use_na_sentinel=True)
    names = np.array([_str(v) for v in uniq] + [None], dtype=object)
    return names[codes]  # code -1 (missing) picks the trailing None


def _naive_dates(s: pd.Series) -> pd.Series:
    s = pd.to_datetime(s)
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.dt.normalize()


def monitor(series: pd.DataFrame, estimates: pd.DataFrame, *, as_of: Any,
            phenology: pd.DataFrame | None = None, index: str = "ndvi",
            rules: MonitorRules | None = None, registry: Any = None) -> pd.DataFrame:
    """In-season alerts per field at ``as_of``.

    Parameters
    ----------
    series : DataFrame
        Daily smoothed series (:func:`cropyield.series.smooth_series`): ``field_id, time,
        <index>, gap_days`` (``time`` daily dates; ``gap_days`` = days to the nearest clear
        observation). Rows after ``as_of`` are ignored (no look-ahead).
    estimates : DataFrame
        One row per (field_id, season) with ``crop`` (or ``declared_crop``, preferred),
        optional ``farmer_id``, ``region``, ``sos``, ``eos``, ``harvest_date`` (expected) and
        ``season``. Per field, the season in progress at ``as_of`` is used (started on or
        before it and not yet ended; of several, the one that started last -- the second
        crop of a double-cropped field), else the season whose [sos, eos] is nearest.
    as_of : date-like
        Monitoring date.
    phenology : DataFrame, optional
        ``field_id[, season], sos, eos``; fills ``sos``/``eos`` missing from ``estimates``
        (joined on ``season`` when both tables have it, else the phenology season in
        progress at ``as_of``).
    index : str
        Series column to monitor (index units; thresholds in ``rules`` are in these units).
    rules : MonitorRules, optional
        Thresholds (defaults for NDVI).
    registry : CropRegistry, optional
        Crop calendars used for NOT_SOWN when fewer than ``rules.min_peers`` peers have a
        start of season (default: the packaged registry, if it has the calendar).

    Returns
    -------
    DataFrame
        Columns :data:`ALERT_COLUMNS`: ``field_id, farmer_id, as_of`` (tz-naive date),
        ``code`` (see :data:`ALERT_CODES`), ``severity`` ("warning" or "high"),
        ``message``, ``value``, ``expected``; sorted by farmer, field and code.
        ``attrs["rules"]`` records the thresholds.

    Notes
    -----
    Peers are fields with the same crop (and ``region`` when the column exists). Expected
    values are leave-one-out peer medians and the spread is 1.4826 x MAD (floored at
    ``rules.min_spread``). Values with ``gap_days > rules.max_gap_days`` are extrapolated
    and never used: a field whose value at ``as_of`` is extrapolated gets ``STALE_DATA``
    and no index alert. Per field at most one index alert is emitted, the most specific:
    ``NOT_SOWN`` > ``EARLY_HARVEST`` > ``VIGOUR_DROP`` > ``PEER_OUTLIER``.
    """
    rules = rules or MonitorRules()
    as_of_d = _date(as_of)
    if as_of_d is None:
        raise CreditInputError(f"as_of={as_of!r} is not a date; pass e.g. '2025-05-01'")
    t0 = pd.Timestamp(as_of_d)
    for name, df, cols in (("series", series, ("field_id", "time", index, "gap_days")),
                           ("estimates", estimates, ("field_id",))):
        if not isinstance(df, pd.DataFrame):
            raise CreditInputError(f"{name} must be a DataFrame, got {type(df).__name__}")
        miss = [c for c in cols if c not in df.columns]
        if miss:
            raise CreditInputError(f"{name} lacks columns {miss}")
    if "crop" not in estimates and "declared_crop" not in estimates:
        raise CreditInputError("estimates needs a 'crop' or 'declared_crop' column")

    est = estimates.copy()
    est["field_id"] = _ids(est["field_id"])
    for c in ("sos", "eos", "harvest_date"):
        if c in est:
            est[c] = _naive_dates(est[c])
    if phenology is not None and len(phenology):
        keys = ["field_id", "season"] if "season" in phenology and "season" in est \
            else ["field_id"]
        ph = phenology[[*keys, *[c for c in ("sos", "eos") if c in phenology]]].copy()
        ph["field_id"] = _ids(ph["field_id"])
        if "season" in keys:
            ph["season"] = ph["season"].astype(str)
            est["season"] = est["season"].astype(str)
        for c in ("sos", "eos"):
            if c in ph:
                ph[c] = _naive_dates(ph[c])
        if "season" in keys:
            ph = ph.drop_duplicates(keys)
        else:  # no season to join on: the phenology season in progress at as_of, per field
            ph = _pick_rows(ph, t0)
        ph = ph.rename(columns={"sos": "_psos", "eos": "_peos"})
        est = est.merge(ph, on=keys, how="left")
        for c in ("sos", "eos"):
            if f"_p{c}" in est:
                est[c] = est[c].fillna(est[f"_p{c}"]) if c in est else est[f"_p{c}"]
        est = est.drop(columns=[c for c in ("_psos", "_peos") if c in est])
    est = _pick_rows(est, t0)
    crop = est["declared_crop"] if "declared_crop" in est else est["crop"]
    if "declared_crop" in est and "crop" in est:
        crop = crop.where(crop.notna(), est["crop"])
    region = est["region"].astype(str) if "region" in est else pd.Series("", index=est.index)
    info = pd.DataFrame({
        "field_id": est["field_id"].to_numpy(),
        "farmer_id": [_str(v) for v in est["farmer_id"]] if "farmer_id" in est else None,
        "crop": [_str(v) for v in crop],
        "region": region.to_numpy(),
        "sos": est["sos"].to_numpy() if "sos" in est else pd.NaT,
        "eos": est["eos"].to_numpy() if "eos" in est else pd.NaT,
        "harvest": est["harvest_date"].to_numpy() if "harvest_date" in est else pd.NaT,
    }).set_index("field_id")

    s = series[["field_id", "time", index, "gap_days"]].copy()
    s["field_id"] = _ids(s["field_id"])
    s["time"] = _naive_dates(s["time"])
    s = s[s["time"] <= t0]
    if s.duplicated(["field_id", "time"]).any():
        raise CreditInputError("series has duplicate (field_id, time) rows; pass the output of "
                               "smooth_series (one row per field and day)")
    V = s.pivot(index="field_id", columns="time", values=index)
    G = s.pivot(index="field_id", columns="time", values="gap_days")
    if len(V.columns):
        full = pd.date_range(V.columns.min(), V.columns.max(), freq="D")
        V, G = V.reindex(columns=full), G.reindex(columns=full)
    ids = sorted(set(info.index) | set(V.index))
    V, G = V.reindex(ids), G.reindex(ids)
    info = info.reindex(ids)
    dates = V.columns
    vals = np.array(V.to_numpy(float), copy=True)
    gaps = np.array(G.to_numpy(float), copy=True)
    sup = np.where(gaps <= rules.max_gap_days, vals, np.nan)  # observed-supported values
    n = len(ids)
    if len(dates):
        last = dates[-1]
        cur_v = vals[:, -1]
        # days from as_of to the nearest clear observation (series may end before as_of)
        cur_gap = gaps[:, -1] + (t0 - last).days
        # a series that stops earlier for some fields: use each field's last row
        has = ~np.isnan(vals)
        last_idx = np.where(has.any(axis=1), has.shape[1] - 1 - np.argmax(has[:, ::-1], axis=1), -1)
        for i in np.flatnonzero(last_idx < len(dates) - 1):
            j = last_idx[i]
            cur_v[i] = vals[i, j] if j >= 0 else np.nan
            cur_gap[i] = gaps[i, j] + (t0 - dates[j]).days if j >= 0 else np.inf
    else:
        cur_v = np.full(n, np.nan)
        cur_gap = np.full(n, np.inf)
    cur_gap = np.where(np.isnan(cur_gap), np.inf, cur_gap)
    fresh = cur_gap <= rules.max_gap_days
    cur_sup = np.where(fresh, cur_v, np.nan)

    n_days = len(dates)
    d0 = dates[0] if n_days else t0
    sos_ts = pd.to_datetime(info["sos"])
    # offset of each field's SOS from the first series day (may be negative), NaN if unknown
    sos_off = ((sos_ts - d0).dt.days).to_numpy(float)
    sown = (sos_ts.notna() & (sos_ts <= t0)).to_numpy()
    day_of_season = np.where(sown, (t0 - sos_ts).dt.days.to_numpy(float), np.nan)
    alerts: list[dict[str, Any]] = []
    farmer = info["farmer_id"].to_numpy(object) if "farmer_id" in info else [None] * n

    def add(i: int | np.integer, code: str, severity: str, message: str,
            value: SupportsFloat, expected: SupportsFloat) -> None:
        alerts.append({"field_id": ids[i], "farmer_id": farmer[i], "as_of": t0, "code": code,
                       "severity": severity, "message": f"field {ids[i]}: {message}",
                       "value": float(value), "expected": float(expected)})

    for i in np.flatnonzero(~fresh):
        gap = cur_gap[i]
        add(i, "STALE_DATA", "warning",
            "no series data up to as_of" if not np.isfinite(gap) else
            f"nearest clear observation {gap:.0f} days from {t0.date()} "
            f"(> {rules.max_gap_days:g}); index values are extrapolated",
            gap if np.isfinite(gap) else np.nan, rules.max_gap_days)

    group_keys: list[tuple[str, str]] = list(zip(info["crop"].fillna(""),
                                                 info["region"].fillna(""), strict=True))
    groups: dict[tuple[str, str], list[int]] = {}
    for row, key in enumerate(group_keys):
        if key[0] and key[0] != "fallow":
            groups.setdefault(key, []).append(row)
    for (crop_g, region_g), members in sorted(groups.items()):
        rows = np.asarray(members, dtype=int)
        # ---- NOT_SOWN: fresh fields without a start of season
        latest = _expected_sos_latest(info, rows, t0, rules, registry, crop_g, region_g)
        amp = None
        if latest is not None and t0 > latest + pd.Timedelta(days=rules.sos_margin_days):
            j0 = max(0, (latest - pd.Timedelta(days=60) - d0).days) if n_days else 0
            win = sup[rows, j0:]
            amp = np.full(len(rows), np.nan)
            ok = np.isfinite(win).any(axis=1) if win.shape[1] else np.zeros(len(rows), bool)
            if ok.any():
                amp[ok] = np.nanmax(win[ok], axis=1) - np.nanmin(win[ok], axis=1)
            amp_med, _, _ = _peer_stats(amp, rules)
        # ---- expected EOS (peers' median, else the field's expected harvest)
        eos_ns = pd.to_datetime(info["eos"]).to_numpy("datetime64[ns]")[rows].astype("int64")
        eos_ns = np.where(pd.isna(info["eos"].to_numpy()[rows]), np.nan, eos_ns.astype(float))
        eos_med, _, eos_cnt = _peer_stats(eos_ns, rules, robust=False)
        # ---- PEER_OUTLIER: same date
        cur_med, cur_spr, cur_cnt = _peer_stats(cur_sup[rows], rules)
        # ---- VIGOUR_DROP: same day of season, one pass per distinct day of season
        vd_med = np.full(len(rows), np.nan)
        vd_spr = np.full(len(rows), np.nan)
        vd_cnt = np.zeros(len(rows), dtype=int)
        dos = day_of_season[rows]
        for dval in np.unique(dos[np.isfinite(dos)]):
            day_col = sos_off[rows] + dval
            okc = np.isfinite(day_col) & (day_col >= 0) & (day_col < n_days)
            aligned = np.full(len(rows), np.nan)
            aligned[okc] = sup[rows[okc], day_col[okc].astype(int)]
            who = np.flatnonzero(dos == dval)
            med_d, spr_d, cnt_d = _peer_stats(aligned, rules, only=who)
            vd_med[who], vd_spr[who], vd_cnt[who] = med_d[who], spr_d[who], cnt_d[who]
        for k, i in enumerate(rows):
            if not fresh[i]:
                continue
            v = cur_sup[i]
            if not sown[i]:
                a = np.nan if amp is None else amp[k]
                if np.isfinite(a) and a < rules.greenup:
                    add(i, "NOT_SOWN", "high",
                        f"no green-up (index amplitude {a:.2f} < {rules.greenup:g}) "
                        f"{(t0 - latest).days} days after the latest expected start of "
                        f"season {latest.date()}", a, amp_med[k])
                continue
            if eos_cnt[k] >= rules.min_peers:
                exp_eos = pd.Timestamp(int(eos_med[k])).normalize()
            else:
                h = info["harvest"].iloc[i]
                exp_eos = pd.Timestamp(h).normalize() if pd.notna(h) else None
            if exp_eos is not None and t0 < exp_eos - pd.Timedelta(days=rules.eos_margin_days):
                j = int(sos_off[i]) if np.isfinite(sos_off[i]) else 0
                seg = sup[i, max(0, j):]
                pre = sup[i, max(0, j - 30):max(0, j) + 1]
                if np.isfinite(seg).any() and np.isfinite(pre).any():
                    peak, base = float(np.nanmax(seg)), float(np.nanmin(pre))
                    fall = peak - v
                    if fall > rules.collapse_min and fall > rules.collapse_fraction * (
                            peak - base):
                        add(i, "EARLY_HARVEST", "high",
                            f"index fell from {peak:.2f} to {v:.2f}, {(exp_eos - t0).days} "
                            f"days before the expected end of season {exp_eos.date()}",
                            v, peak)
                        continue
            if vd_cnt[k] >= rules.min_peers:
                zz = (v - vd_med[k]) / vd_spr[k]
                if vd_med[k] - v > rules.drop and zz < -rules.z:
                    add(i, "VIGOUR_DROP", "high" if zz < -2 * rules.z else "warning",
                        f"index {v:.2f} vs expected {vd_med[k]:.2f} at day {dos[k]:.0f} of "
                        f"season (z = {zz:.1f}, {vd_cnt[k]} peers)", v, vd_med[k])
                    continue
            if cur_cnt[k] >= rules.min_peers:
                zz = (v - cur_med[k]) / cur_spr[k]
                if cur_med[k] - v > rules.outlier_drop and zz < -rules.outlier_z:
                    add(i, "PEER_OUTLIER", "warning",
                        f"index {v:.2f} vs peers' median {cur_med[k]:.2f} on {t0.date()} "
                        f"(z = {zz:.1f}, {cur_cnt[k]} peers)", v, cur_med[k])
    if not alerts:
        out = _empty(t0)
    else:
        out = pd.DataFrame(alerts, columns=list(ALERT_COLUMNS))
        out["as_of"] = pd.to_datetime(out["as_of"])
        out = out.sort_values(["farmer_id", "field_id", "code"], na_position="last",
                              kind="mergesort").reset_index(drop=True)
    out.attrs["rules"] = asdict(rules)
    out.attrs["as_of"] = t0.date().isoformat()
    out.attrs["index"] = index
    logger.info("monitor: %d alert(s) on %d field(s) at %s", len(out), n, t0.date())
    return out


def _expected_sos_latest(info, rows, t0, rules, registry, crop, region):
    """Latest expected start of the season under way at ``t0`` for a peer group, or None.

    From peers (>= ``min_peers`` fields with an SOS in the 300 days before ``t0``, and a
    median EOS, if known, after ``t0``): their 90th percentile SOS. Otherwise from the crop
    calendar: the latest-SOS day of year, when ``t0`` lies between it and the latest EOS
    day of year (windows may wrap the new year). Fields without an SOS (the candidates)
    do not enter the peer statistic.
    """
    sos = pd.to_datetime(info["sos"].iloc[rows])
    sos = sos[sos.notna() & (sos <= t0) & (sos > t0 - pd.Timedelta(days=300))]
    if len(sos) >= rules.min_peers:
        eos = pd.to_datetime(info["eos"].iloc[rows]).dropna()
        if len(eos) and pd.Timestamp(int(np.median(eos.to_numpy("datetime64[ns]").astype(
                "int64")))) < t0:
            return None  # peers are harvested: no season under way
        ns = np.sort(sos.to_numpy("datetime64[ns]").astype("int64"))
        return pd.Timestamp(int(np.quantile(ns, 0.9, method="higher"))).normalize()
    try:
        from ..crops import get_crop

        crop_obj = get_crop(crop, registry)
        cal = crop_obj.calendar(region) if region else None
        if cal is None and len(crop_obj.calendars) == 1:
            cal = next(iter(crop_obj.calendars.values()))
        if cal is None:
            return None
        latest, end = int(cal.sos_doy[1]), int(cal.eos_doy[1])
    except Exception as exc:  # noqa: BLE001 - the registry is optional here
        logger.debug("no calendar for %s/%s: %s", crop, region, exc)
        return None
    since = (t0.day_of_year - latest) % 365
    if since <= (end - latest) % 365:
        return (t0 - pd.Timedelta(days=since)).normalize()
    return None
