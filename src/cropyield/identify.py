"""Crop identification: knowledge-based (calendars, no training data) and a trained classifier.

:func:`identify_crops` scores every field-season against each crop's regional calendar in the
registry (``data/crops.toml``): the SOS, peak and EOS days of year and the season length
should fall in the crop's windows and the peak index value in its range. Each criterion
contributes a log-likelihood that is 0 inside the window and falls off as a Gaussian of the
distance outside it; crop priors (regional area weights) and rotation context (a crop that
usually follows the previous season's crop, e.g. summer maize after winter wheat) are added,
and a softmax gives probabilities.

:class:`CropClassifier` (defined in :mod:`cropyield.classify`, re-exported here) is for users
with labelled parcels: LightGBM on cloud-, cadence- and year-robust features with calibrated
probabilities; JSON save/load; grouped cross-validation. Its probabilities can feed
:func:`identify_crops` (``classifier=``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ._log import logger
from .classify import CropClassifier
from .crops import CropRegistry, load_registry
from .errors import CropYieldError, join_flags, split_flags

__all__ = ["identify_crops", "CropClassifier", "IdentifyError"]


class IdentifyError(CropYieldError, ValueError):
    """Inputs of crop identification are invalid (unknown region, missing columns...)."""


_WINDOWS = (("sos", "sos_doy"), ("pos", "peak_doy"), ("eos", "eos_doy"))


def _circ_outside(doy: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Days between ``doy`` and the window [lo, hi] on a 365-day circle (0 inside)."""
    doy = np.asarray(doy, dtype=float)
    if lo <= hi:
        inside = (doy >= lo) & (doy <= hi)
    else:
        inside = (doy >= lo) | (doy <= hi)
    d_lo = np.abs(doy - lo) % 365.0
    d_lo = np.minimum(d_lo, 365.0 - d_lo)
    d_hi = np.abs(doy - hi) % 365.0
    d_hi = np.minimum(d_hi, 365.0 - d_hi)
    return np.where(inside, 0.0, np.minimum(d_lo, d_hi))


def _range_outside(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return np.where(x < lo, lo - x, np.where(x > hi, x - hi, 0.0))


def _circ_mid(lo: float, hi: float) -> float:
    span = (hi - lo) % 365.0
    return (lo + span / 2.0) % 365.0


def _expected_length(cal) -> tuple[float, float]:
    """SOS→EOS length range implied by the calendar (sow→harvest minus the lags)."""
    lag_in = (_circ_mid(*cal.sos_doy) - _circ_mid(*cal.sow_doy)) % 365.0
    lag_out = (_circ_mid(*cal.harvest_doy) - _circ_mid(*cal.eos_doy)) % 365.0
    if lag_in > 180:
        lag_in = 0.0
    if lag_out > 180:
        lag_out = 0.0
    lo, hi = cal.season_length_days
    return max(20.0, lo - lag_in - lag_out), max(30.0, hi - lag_in - lag_out)


def _doy(t: pd.Series) -> np.ndarray:
    t = pd.to_datetime(t)
    return np.where(t.notna(), t.dt.day_of_year.to_numpy(dtype=float, na_value=np.nan), np.nan)


def _parse_declared(declared, ids) -> dict[Any, set[str]]:
    if declared is None:
        return {}
    if isinstance(declared, pd.DataFrame):
        raise IdentifyError("declared must be a Series or mapping field_id -> crop id")
    items = declared.items() if hasattr(declared, "items") else dict(declared).items()
    out: dict[Any, set[str]] = {}
    for k, v in items:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
            continue
        out[k] = {c.strip() for c in str(v).replace(",", "+").split("+") if c.strip()}
    return out


def identify_crops(
    series_or_phenology: pd.DataFrame,
    *,
    region: str,
    declared: Mapping[Any, str] | pd.Series | None = None,
    year: int | None = None,
    registry: CropRegistry | None = None,
    index: str = "ndvi",
    sigma_days: float = 10.0,
    sigma_value: float = 0.05,
    sigma_base: float = 0.03,
    rotation_boost: float = 4.0,
    min_prob: float = 0.5,
    mismatch_llr: float = 4.0,
    min_fit_loglik: float = -8.0,
    declared_prior_odds: float = 1.0,
    id_col: str = "field_id",
    classifier: CropClassifier | None = None,
    crop_proba: pd.DataFrame | None = None,
    min_classifier_prob: float = 1e-3,
) -> pd.DataFrame:
    """Most likely crops per field-season from calendar and phenology knowledge.

    Parameters
    ----------
    series_or_phenology : DataFrame
        The output of :func:`cropyield.phenology` (one row per field-season), or a daily
        series (:func:`cropyield.smooth_series` output) that is passed through it first.
    region : str
        Calendar region of the registry (``north_china_plain``, ``northeast``, ``yangtze``,
        ``south``, or any region a user registry defines). Only crops with a calendar in the
        region are candidates (plus ``fallow``).
    declared : Series or mapping, optional
        ``field_id`` → declared crop id; several crops of one year may be joined with
        ``+`` (``"winter_wheat+summer_maize"``). A season whose identified crop is
        confident (≥ ``min_prob``) and whose evidence (likelihood, priors left out) favours
        it over every declared crop by a log-likelihood ratio ≥ ``mismatch_llr`` gets
        ``CROP_MISMATCH`` with the evidence. Priors never create a mismatch on their own.
    year : int, optional
        Keep only seasons whose peak (or SOS/EOS when the peak is unknown) falls in this
        calendar year.
    registry : CropRegistry, optional
        Default: the packaged registry.
    index : str
        Index of the phenology (its peak is compared with ``index_ranges[index]``).
    sigma_days, sigma_value, sigma_base
        Fall-off (days; index units) of the likelihood outside a window, the peak range
        and the pre-season base range (``<index>_base``; a smoothed minimum is measured
        more precisely than a peak, and a flooded paddy's base below ~0.1 NDVI is a strong
        rice signature).
    rotation_boost : float
        Prior multiplier for a crop whose calendar lists the previous season's crop in
        ``after`` (previous season of the same field within 365 days).
    min_prob : float
        Below this top probability the row gets ``CROP_UNCERTAIN``.
    mismatch_llr : float
        See ``declared`` (4.0 ≈ evidence 55 times stronger for the identified crop).
    min_fit_loglik : float
        When even the best crop's log-likelihood (priors left out) is below this, no
        calendar fits the season (e.g. a crop the registry lacks): ``CROP_UNCERTAIN``,
        whatever the normalised probability says. -8 ≈ four σ outside one window.
    declared_prior_odds : float
        Prior odds multiplier for the declared crops (1.0: declarations only drive the
        ``CROP_MISMATCH`` check). A lender whose planting records are mostly right can pass
        e.g. 10 so that the declaration decides between crops the imagery cannot tell apart
        (summer soybean vs summer maize share a calendar), while strong contrary evidence
        still wins and is flagged. Accuracy measured this way is no longer image-only.

    classifier : CropClassifier, optional
        A fitted classifier whose calibrated probabilities join the calendar evidence
        (needs a daily series as the first argument; same as passing
        ``crop_proba=classifier.predict_proba(series)``).
    crop_proba : DataFrame, optional
        Per-field class probabilities (index ``field_id``, one column per class, e.g.
        :meth:`CropClassifier.predict_proba`). A class may be a rotation
        (``"winter_wheat+summer_maize"``): each of its crops receives its probability.
        Every season of the field adds ``log max(p(crop), min_classifier_prob)`` to each
        candidate's log-likelihood, so the classifier's calibrated probabilities drive
        ``crop_prob``, ``CROP_UNCERTAIN`` and the ``CROP_MISMATCH`` likelihood ratio
        together with the calendar; fields missing from it keep the calendar alone.
    min_classifier_prob : float
        Floor of a classifier probability (keeps one confident classifier from vetoing
        a crop outright).

    Returns
    -------
    DataFrame
        ``field_id, season, crop, crop_prob, crop_2, crop_2_prob, declared, flags,
        evidence`` (evidence: compact JSON with the DOYs, peak, length and the best crop's
        windows). Fields without a season get ``crop = "fallow"`` (or an evergreen perennial
        when the index stays high all year); fields without data get ``crop = None`` with
        ``NO_DATA, CROP_UNCERTAIN``.

    Raises
    ------
    IdentifyError
        Unknown region (no crop has a calendar there) or missing columns.

    Examples
    --------
    ``ph`` from :func:`cropyield.phenology` (a daily series works too):

    >>> import cropyield as cy
    >>> crops = cy.identify_crops(ph, region="north_china_plain",
    ...                           declared={"F1": "winter_wheat"})  # doctest: +SKIP
    >>> crops[["field_id", "season", "crop", "crop_prob", "flags"]]  # doctest: +SKIP
    """
    reg = registry if registry is not None else load_registry()
    phen = series_or_phenology
    if classifier is not None:
        if crop_proba is not None:
            raise IdentifyError("pass classifier or crop_proba, not both")
        if "pos" in phen.columns:
            raise IdentifyError("classifier= needs the daily series (smooth_series output), "
                                "not a phenology table; or pass crop_proba=")
        crop_proba = classifier.predict_proba(phen)
    if "pos" not in phen.columns or "season" not in phen.columns:
        from .seasons import phenology
        phen = phenology(phen, index=index, id_col=id_col)
    need = [id_col, "season", "sos", "pos", "eos", "peak", "flags"]
    missing = [c for c in need if c not in phen.columns]
    if missing:
        raise IdentifyError(f"phenology table lacks {missing}; pass cropyield.phenology output")
    cands = [c for c in reg.values() if c.calendar(region) is not None]
    if not cands:
        known = sorted({r for c in reg.values() for r in c.calendars})
        raise IdentifyError(f"no crop has a calendar for region {region!r}; known regions: "
                            f"{known}")
    phen = phen.sort_values([id_col, "season"]).reset_index(drop=True)
    if year is not None:
        ref = phen["pos"].fillna(phen["eos"]).fillna(phen["sos"])
        keep = ref.isna() | (pd.to_datetime(ref).dt.year == int(year))
        phen = phen.loc[keep].reset_index(drop=True)
    n = len(phen)
    names = [c.id for c in cands]
    cals = [cal for c in cands if (cal := c.calendar(region)) is not None]  # all of cands
    k = len(cands)

    sos_d, pos_d, eos_d = _doy(phen["sos"]), _doy(phen["pos"]), _doy(phen["eos"])
    length = ((pd.to_datetime(phen["eos"]) - pd.to_datetime(phen["sos"])).dt.days
              .to_numpy(dtype=float, na_value=np.nan))
    peak = phen["peak"].to_numpy(dtype=float, na_value=np.nan)
    base_l = (phen["base_left"].to_numpy(dtype=float, na_value=np.nan)
              if "base_left" in phen.columns else np.full(n, np.nan))
    doys = {"sos": sos_d, "pos": pos_d, "eos": eos_d}
    ll = np.zeros((n, k))
    for j, (crop, cal) in enumerate(zip(cands, cals)):
        for col, win in _WINDOWS:
            d = _circ_outside(doys[col], *getattr(cal, win))
            ll[:, j] += np.where(np.isfinite(d), -0.5 * (d / sigma_days) ** 2, 0.0)
        lo, hi = _expected_length(cal)
        d = _range_outside(length, lo, hi)
        ll[:, j] += np.where(np.isfinite(d), -0.5 * (d / (1.5 * sigma_days)) ** 2, 0.0)
        rng_ = crop.index_ranges.get(index)
        if rng_ is not None:
            d = _range_outside(peak, *rng_)
            ll[:, j] += np.where(np.isfinite(d), -0.5 * (d / sigma_value) ** 2, 0.0)
        rng_ = crop.index_ranges.get(f"{index}_base")
        if rng_ is not None:   # pre-season level, e.g. flooded paddies before transplanting
            d = _range_outside(base_l, *rng_)
            ll[:, j] += np.where(np.isfinite(d), -0.5 * (d / sigma_base) ** 2, 0.0)
    log_prior = np.log(np.array([max(c.prior, 1e-6) for c in cals]))
    if crop_proba is not None:
        ll += _classifier_loglik(crop_proba, phen[id_col].to_numpy(), names,
                                 min_classifier_prob)

    flags_in = phen["flags"].astype(str).to_numpy()
    no_season = np.array(["NO_SEASON" in f for f in flags_in])
    no_data = np.array(["NO_DATA" in f for f in flags_in])
    fids = phen[id_col].to_numpy()
    seasons = phen["season"].to_numpy()
    pos_t = pd.to_datetime(phen["pos"]).to_numpy()

    crop_out = np.empty(n, dtype=object)
    p1 = np.full(n, np.nan)
    crop2 = np.empty(n, dtype=object)
    p2 = np.full(n, np.nan)
    probs_all = np.zeros((n, k))
    prev_crop: dict[Any, tuple[Any, str]] = {}
    after_sets = [set(c.after) for c in cals]
    decl = _parse_declared(declared, fids)
    name_ix = {c: j for j, c in enumerate(names)}
    if declared_prior_odds <= 0:
        raise IdentifyError(f"declared_prior_odds must be > 0, got {declared_prior_odds}")
    log_decl_odds = math.log(declared_prior_odds)
    # rows in season order so the previous season's crop is known (rotation context)
    for r in range(n):
        if no_season[r]:
            continue
        lp = log_prior.copy()
        if log_decl_odds:
            for c in decl.get(fids[r], ()):
                if c in name_ix:
                    lp[name_ix[c]] += log_decl_odds
        pc = prev_crop.get(fids[r])
        if pc is not None and rotation_boost != 1.0:
            prev_t, prev_id = pc
            if (pd.isna(prev_t) or pd.isna(pos_t[r])
                    or (pos_t[r] - prev_t) / np.timedelta64(1, "D") <= 365):
                for j in range(k):
                    if prev_id in after_sets[j]:
                        lp[j] += math.log(rotation_boost)
        score = ll[r] + lp
        score = score - score.max()
        pr = np.exp(score)
        pr /= pr.sum()
        probs_all[r] = pr
        order = np.argsort(-pr, kind="stable")
        crop_out[r], p1[r] = names[order[0]], pr[order[0]]
        if k > 1:
            crop2[r], p2[r] = names[order[1]], pr[order[1]]
        prev_crop[fids[r]] = (pos_t[r], names[order[0]])

    # fields without a season: fallow, or an evergreen perennial when the index stays high
    mean_v = (phen["mean_value"].to_numpy(dtype=float, na_value=np.nan)
              if "mean_value" in phen.columns else np.full(n, np.nan))
    per = [c for c in cands if c.group == "perennial" and f"{index}_base" in c.index_ranges]
    cal_of = {c.id: cal for c, cal in zip(cands, cals, strict=True)}
    fallow_rng = reg["fallow"].index_ranges.get(f"{index}_base", (0.0, 0.35)) \
        if "fallow" in reg else (0.0, 0.35)
    for r in map(int, np.flatnonzero(no_season)):
        if no_data[r]:
            crop_out[r] = None
            continue
        nm = ["fallow"] + [c.id for c in per]
        s = np.array([-0.5 * (_range_outside(mean_v[r], *fallow_rng) / sigma_value) ** 2]
                     + [-0.5 * (_range_outside(mean_v[r], *c.index_ranges[f"{index}_base"])
                                / sigma_value) ** 2 + math.log(max(cal_of[c.id].prior, 1e-6))
                        for c in per])
        s = np.nan_to_num(s, nan=0.0)
        pr = np.exp(s - s.max())
        pr /= pr.sum()
        o = np.argsort(-pr, kind="stable")
        crop_out[r], p1[r] = nm[o[0]], pr[o[0]]
        if len(nm) > 1:
            crop2[r], p2[r] = nm[o[1]], pr[o[1]]

    unknown_decl = sorted({c for v in decl.values() for c in v if c not in reg})
    if unknown_decl:
        logger.warning("identify_crops: declared crop ids not in the registry: %s",
                       unknown_decl)
    flags = []
    evidence = []
    declared_col = []
    for r in range(n):
        fl = []
        ev: dict[str, Any] = {}
        if no_data[r]:
            fl += ["NO_DATA", "CROP_UNCERTAIN"]
        elif no_season[r]:
            fl.append("NO_SEASON")
            ev["mean_" + index] = _r(mean_v[r], 3)
        else:
            ev.update(sos_doy=_r(sos_d[r]), pos_doy=_r(pos_d[r]), eos_doy=_r(eos_d[r]),
                      length_days=_r(length[r]), peak=_r(peak[r], 3))
            j = name_ix[crop_out[r]]
            cal = cals[j]
            ev["windows"] = {"sos": list(cal.sos_doy), "pos": list(cal.peak_doy),
                             "eos": list(cal.eos_doy),
                             "length": [round(x) for x in _expected_length(cal)],
                             "peak": list(cands[j].index_ranges.get(index, ()))}
        if not no_data[r] and p1[r] < min_prob:
            fl.append("CROP_UNCERTAIN")
        weak = {"LOW_OBS", "CLOUDY_SEASON"} & set(split_flags(flags_in[r]))
        if weak:   # too little clear imagery: the dates and levels are weak evidence
            fl.append("CROP_UNCERTAIN")
            ev["weak_evidence"] = sorted(weak)
        if not no_season[r]:
            best_ll = float(ll[r, name_ix[crop_out[r]]])
            ev["loglik"] = round(max(best_ll, -99.0), 1)
            if best_ll < min_fit_loglik:
                fl.append("CROP_UNCERTAIN")
        dset = decl.get(fids[r])
        declared_col.append("+".join(sorted(dset)) if dset else None)
        if dset and not no_data[r]:
            if no_season[r]:
                p_decl = float(p1[r]) if crop_out[r] in dset else 0.0
                if "fallow" not in dset and crop_out[r] == "fallow" and p1[r] >= min_prob:
                    fl.append("CROP_MISMATCH")
                    ev["declared"] = sorted(dset)
            else:
                p_decl = float(sum(probs_all[r, name_ix[c]] for c in dset if c in name_ix))
                lld = max((ll[r, name_ix[c]] for c in dset if c in name_ix), default=-np.inf)
                llr = ll[r, name_ix[crop_out[r]]] - lld
                if crop_out[r] not in dset and p1[r] >= min_prob and llr >= mismatch_llr \
                        and any(c in reg for c in dset):
                    fl.append("CROP_MISMATCH")
                    ev["declared"] = sorted(dset)
                    ev["declared_prob"] = round(p_decl, 3)
                    ev["llr"] = round(float(min(llr, 99.0)), 1)
        flags.append(join_flags(fl))
        evidence.append(json.dumps(ev, separators=(",", ":"), ensure_ascii=False))
    out = pd.DataFrame({
        id_col: fids, "season": seasons, "crop": crop_out, "crop_prob": p1,
        "crop_2": crop2, "crop_2_prob": p2, "declared": declared_col, "flags": flags,
        "evidence": evidence,
    })
    out.attrs.update(region=region, index=index, sigma_days=sigma_days,
                     candidates=names)
    return out


def _classifier_loglik(proba: pd.DataFrame, fids: np.ndarray, names: list[str],
                       floor: float) -> np.ndarray:
    """Rows × candidates log-probabilities from per-field class probabilities (0 if unknown)."""
    if not isinstance(proba, pd.DataFrame):
        raise IdentifyError("crop_proba must be a DataFrame indexed by field_id with one "
                            "column per class (CropClassifier.predict_proba output)")
    if not 0 < floor < 1:
        raise IdentifyError(f"min_classifier_prob must be in (0, 1), got {floor}")
    P = np.zeros((len(proba), len(names)))
    name_ix = {c: j for j, c in enumerate(names)}
    hit = False
    for col in proba.columns:
        v = proba[col].to_numpy(dtype=float, na_value=np.nan)
        for crop in {c.strip() for c in str(col).split("+")}:
            if crop in name_ix:
                P[:, name_ix[crop]] += np.nan_to_num(v)
                hit = True
    if not hit:
        raise IdentifyError(f"no class of crop_proba ({list(proba.columns)[:6]}) is a "
                            f"candidate crop of this region ({names[:6]} ...)")
    L = np.log(np.maximum(np.minimum(P, 1.0), floor))
    pos = proba.index.get_indexer(fids)
    out = np.where((pos >= 0)[:, None], L[np.maximum(pos, 0)], 0.0)
    return out


def _r(x, nd: int = 0):
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), nd) if nd else int(round(float(x)))


# CropClassifier lives in cropyield.classify (features + learner); re-exported here.
