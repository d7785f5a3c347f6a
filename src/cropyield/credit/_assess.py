"""Farmer-level credit assessment: estimates table in, :class:`CreditProfile` list out."""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections import defaultdict
from typing import Any, Iterable, Literal, Mapping

import numpy as np
import pandas as pd

from .._io import loads_json
from .._log import logger
from .._version import __version__
from ..errors import FLAGS, CreditInputError, split_flags
from ._records import (
    EXCLUDABLE_CODES,
    CreditProfile,
    Factors,
    FieldEvidence,
    Policy,
    PriceRecord,
    Reason,
    canonical_json,
)

__all__ = ["assess", "field_evidence", "REASON_CODES"]

#: Reason codes produced by :func:`assess` (besides flag codes from
#: :data:`cropyield.errors.FLAGS`, which appear under their own name).
REASON_CODES: dict[str, str] = {
    "MISSING_DATA": "a number needed for the decision is missing (NaN/None)",
    "MISSING_ESTIMATE": "a claimed field has no estimate",
    "INCONSISTENT_INTERVAL": "P10 > P50 or P50 > P90, or a negative value",
    "LOW_QUALITY": "data quality below the policy minimum",
    "LOW_CROP_CONFIDENCE": "crop probability below the policy minimum",
    "CROP_MISMATCH": "the declared crop disagrees with the identified crop",
    "AREA_MISMATCH": "declared area differs from the measured area beyond tolerance",
    "DUPLICATE_CLAIM": "the same field (and season) is claimed twice",
    "STALE_DATA": "the latest imagery is older than the policy allows at as_of",
    "DATA_AGE_UNKNOWN": "no date of the imagery behind the estimate is known",
    "EVIDENCE_AFTER_AS_OF": "the estimate uses imagery dated after as_of (look-ahead)",
    "HISTORY_SEASON": "an older season of the field (before its latest crop year); not used",
    "PAST_SEASON": "the expected harvest is before as_of: repayment rolls to the next year",
    "FALLOW_FIELD": "the field is fallow: no value, no cost need",
    "ALL_FALLOW": "every field is fallow",
    "LOW_DOWNSIDE_VALUE": "downside output value below the policy minimum",
    "LIMIT_BELOW_MINIMUM": "the limit after haircut and rounding is below the policy minimum",
    "CAP_STAGE_COST": "the limit is bound by the stage cost need",
    "CAP_LTV": "the limit is bound by loan-to-value on the downside value",
    "CAP_INSURANCE": "the limit is bound by the insurable share of expected value",
    "CAP_MAX_LIMIT": "the limit is bound by the policy maximum",
    "APPROVED": "every field passed; limit computed",
    "FIELD_EXCLUDED_CROP_DOUBT": "the field's crop identity is in doubt (CROP_MISMATCH or "
                                 "LOW_CROP_CONFIDENCE): it is left out of the limit "
                                 "(policy exclude_codes)",
    "FIELD_EXCLUDED_LOW_QUALITY": "the field's data quality is below the minimum: it is left "
                                  "out of the limit (policy exclude_codes)",
    "FIELD_EXCLUDED_AREA_DOUBT": "the field's declared area is far off the measured one: it "
                                 "is left out of the limit (policy exclude_codes)",
    "MOSTLY_EXCLUDED": "excluded fields make up more than max_excluded_share of the cropped "
                       "area (or all of it): the farmer is referred",
    "MAIN_FIELD_MISMATCH": "the largest cropped field is a confident crop mismatch: the "
                           "declaration itself is in doubt, the farmer is referred",
    "INVALID_ESTIMATE": "a number in the estimates is outside its valid range (negative yield, "
                        "value, price or area; probability or quality outside [0, 1]) or not "
                        "a number; it is dropped from the evidence",
}

#: Valid range (inclusive; None = unbounded) of each numeric estimates column. A value
#: outside it refers the field (``INVALID_ESTIMATE``) and is left out of the evidence (None),
#: so that every profile :func:`assess` returns passes its own JSON Schema.
ESTIMATE_RANGES: dict[str, tuple[float, float | None]] = {
    "crop_prob": (0.0, 1.0), "quality": (0.0, 1.0),
    "area_ha": (0.0, None), "area_mu": (0.0, None), "declared_area_mu": (0.0, None),
    "yield_t_ha_p10": (0.0, None), "yield_t_ha_p50": (0.0, None),
    "yield_t_ha_p90": (0.0, None),
    "value_cny_p10": (0.0, None), "value_cny_p50": (0.0, None), "value_cny_p90": (0.0, None),
    "price_cny_per_t": (0.0, None), "n_obs": (0.0, None),
}

_EFFECT_ORDER = {"refer": 0, "decline": 1, "cap": 2, "haircut": 3, "info": 4}
_REQUIRED = ("field_id", "crop", "crop_prob", "value_cny_p10", "value_cny_p50", "quality",
             "harvest_date")
_DATE8 = re.compile(r"(?<!\d)(20\d{2})(\d{2})(\d{2})(?!\d)")
_FALLOW = "fallow"
#: Flags that a fallow field is expected to carry (nothing grows, nothing is valued).
_FALLOW_EXPECTED = frozenset({"NO_MODEL", "NO_PRICE", "NO_SEASON", "SEASON_INCOMPLETE",
                              "OUT_OF_RANGE"})
_Cap = Literal["stage_cost", "ltv", "insurance", "max_limit"]  # Factors.binding_cap


# --------------------------------------------------------------------------- boundary
def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, (float, np.floating)):
        return bool(np.isnan(v))
    try:
        return bool(pd.isna(v)) if np.ndim(v) == 0 else False
    except (TypeError, ValueError):
        return False


def _num(v: Any) -> float | None:
    """numpy/pandas scalar -> float; NaN/None -> None."""
    if _is_missing(v):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _int(v: Any) -> int | None:
    x = _num(v)
    return None if x is None else int(round(x))


def _season(v: Any, field_id: Any = None) -> int | None:
    """The integer season of an estimates row (an int, an integral float or digits)."""
    if _is_missing(v):
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"[0-9]+", v.strip()):
        return int(v.strip())
    raise CreditInputError(
        f"field {field_id}: season {str(v)[:40]!r} is not an integer; the estimates table's "
        "season column holds the integer season (cropyield.value.estimate_yield output)")


def _max_or_none(vals: list[float | None]) -> float | None:
    """The largest value, or None when any is None."""
    known = [v for v in vals if v is not None]
    return None if len(known) < len(vals) else max(known)


def _in_range(x: float | None, col: str) -> float | None:
    """``x`` when inside :data:`ESTIMATE_RANGES` of ``col`` (or unknown column), else None."""
    if x is None or col not in ESTIMATE_RANGES:
        return x
    lo, hi = ESTIMATE_RANGES[col]
    return x if (x >= lo and (hi is None or x <= hi)) else None


def _rnum(row: Mapping[str, Any], col: str) -> float | None:
    return _in_range(_num(row.get(col)), col)


def _range_problems(row: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                    ) -> list[str]:
    """Human-readable problems with the numbers of one estimates row (empty when fine)."""
    out: list[str] = []
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    for col, (lo, hi) in ESTIMATE_RANGES.items():
        raw = over.get(col, row.get(col))
        if _is_missing(raw) or (isinstance(raw, str) and not raw.strip()):
            continue
        x = _num(raw)
        rng = f"[{lo:g}, {'inf' if hi is None else f'{hi:g}'}]"
        if x is None:
            out.append(f"{col} {str(raw)[:40]!r} is not a finite number")
        elif _in_range(x, col) is None:
            out.append(f"{col} {x:g} is outside {rng}")
    for col in ("harvest_date", "last_obs_date"):
        raw = row.get(col)
        if not _is_missing(raw) and _date(raw) is None:
            out.append(f"{col} {str(raw)[:40]!r} is not a date")
    rec = _json_obj(row.get("price_record"), "price_record")
    for key in ("price_cny_per_t", "price"):
        x = _num(rec.get(key)) if key in rec else None
        if key in rec and (x is None or x < 0):
            out.append(f"price_record {key} {str(rec.get(key))[:40]!r} is not a price >= 0")
    return out


def _str(v: Any) -> str | None:
    if _is_missing(v):
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))  # 2024.0 -> "2024"
    s = str(v).strip()
    return s or None


def _date(v: Any) -> _dt.date | None:
    """Timestamp/datetime/date/ISO string -> date; NaT/None/unparseable -> None."""
    if _is_missing(v):
        return None
    if isinstance(v, _dt.datetime):
        return v.date()
    if isinstance(v, _dt.date):
        return v
    try:
        ts = pd.Timestamp(v)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(ts) else ts.date()


def _iso(d: _dt.date | None) -> str | None:
    return None if d is None else d.isoformat()


def _json_obj(v: Any, what: str) -> dict[str, Any]:
    if _is_missing(v) or v == "":
        return {}
    if isinstance(v, Mapping):
        obj: Any = dict(v)
    else:
        try:
            obj = loads_json(str(v), what=what, error=CreditInputError, max_bytes=1 << 20)
        except CreditInputError as exc:
            logger.warning("%s; kept as text", exc)
            return {"raw": str(v)[:2000]}
    if not isinstance(obj, dict):
        return {"value": obj}
    try:
        return json.loads(canonical_json(obj))
    except (TypeError, ValueError, RecursionError, OverflowError):  # NaN, non-JSON, too deep
        return {"raw": str(v)[:2000]}


def _scene_date(scene_id: str) -> _dt.date | None:
    """Acquisition date in a Sentinel-2 item id (first valid YYYYMMDD token)."""
    for m in _DATE8.finditer(scene_id):
        try:
            return _dt.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            continue
    return None


def _price_record(row: Mapping[str, Any]) -> PriceRecord | None:
    rec = _json_obj(row.get("price_record"), "price_record")
    price = _rnum(row, "price_cny_per_t")  # the column the value was computed with
    if price is None:
        price = _in_range(_num(rec.get("price_cny_per_t")), "price_cny_per_t")
    rec_price = _num(rec.get("price"))
    if price is None and rec_price is not None:
        unit = str(rec.get("unit", "CNY/t")).replace(" ", "")
        scale = {"CNY/t": 1.0, "CNY/kg": 1000.0, "CNY/50kg": 20.0}.get(unit)
        price = None if scale is None else _in_range(rec_price * scale, "price_cny_per_t")
    if not rec and price is None:
        return None
    taken = {"price_cny_per_t", "crop", "region", "type", "price_type", "valid_from", "source"}
    # cropyield.value's PriceTable.lookup gives {"price_cny_per_t", "rule", "records": [...]};
    # describe the price by its underlying record(s), keep everything else in ``extra``
    subs = [r for r in rec.get("records", []) if isinstance(r, Mapping)] \
        if isinstance(rec.get("records"), list) else []
    parts = subs or [rec]

    def joined(key: str) -> str | None:
        vals = list(dict.fromkeys(v for v in (_str(r.get(key)) for r in parts) if v))
        return "+".join(vals) if key != "source" else "; ".join(vals) if vals else None

    valid = [d for d in (_date(r.get("valid_from")) for r in parts) if d is not None]
    return PriceRecord(
        price_cny_per_t=price,
        crop=joined("crop") or None,
        region=joined("region") or None,
        price_type=(joined("type") or joined("price_type")) or None,
        valid_from=_iso(max(valid)) if valid else None,
        source=joined("source") or None,
        extra=canonical_json({k: v for k, v in rec.items() if k not in taken}),
    )


def field_evidence(row: Mapping[str, Any], *, farmer_id: str | None = None,
                   declared_crop: str | None = None,
                   declared_area_mu: float | None = None) -> FieldEvidence:
    """Convert one estimates row (a mapping) to a :class:`FieldEvidence`.

    numpy numbers become ``float``/``int``, NaN/NaT/None become ``None``, Timestamps ISO
    dates, comma-separated ``flags``/``scene_ids`` tuples and JSON-string columns objects.
    ``farmer_id``/``declared_*`` override the row's columns when given. Numbers outside
    their valid range (:data:`ESTIMATE_RANGES`: negative yields, values, prices or areas,
    probabilities or quality outside [0, 1]) become ``None`` (logged), so the record always
    passes the schema; :func:`assess` refers such fields with ``INVALID_ESTIMATE``.
    """
    problems = _range_problems(row, {"declared_area_mu": declared_area_mu})
    if problems:
        logger.warning("field %s: %s; left out of the evidence", _str(row.get("field_id")),
                       "; ".join(problems))
    area_ha = _rnum(row, "area_ha")
    area_mu = _rnum(row, "area_mu")
    if area_mu is None and area_ha is not None:
        area_mu = area_ha * 15.0
    if area_ha is None and area_mu is not None:
        area_ha = area_mu / 15.0
    scene_ids = tuple(s for s in (_str(row.get("scene_ids")) or "").split(",") if s.strip())
    scene_ids = tuple(sorted({s.strip() for s in scene_ids}))
    last = _date(row.get("last_obs_date"))
    if last is None:
        dates = [d for d in map(_scene_date, scene_ids) if d is not None]
        last = max(dates) if dates else None
    if declared_area_mu is None:
        declared_area_mu = _num(row.get("declared_area_mu"))
    declared_area_mu = _in_range(_num(declared_area_mu), "declared_area_mu")
    if declared_crop is None:
        declared_crop = _str(row.get("declared_crop"))
    return FieldEvidence(
        field_id=str(_str(row.get("field_id"))),
        farmer_id=farmer_id if farmer_id is not None else _str(row.get("farmer_id")),
        season=_season(row.get("season"), row.get("field_id")),
        crop=_str(row.get("crop")),
        crop_prob=_rnum(row, "crop_prob"),
        declared_crop=declared_crop,
        area_ha=area_ha,
        area_mu=area_mu,
        declared_area_mu=declared_area_mu,
        yield_basis=_str(row.get("yield_basis")),
        yield_t_ha_p10=_rnum(row, "yield_t_ha_p10"),
        yield_t_ha_p50=_rnum(row, "yield_t_ha_p50"),
        yield_t_ha_p90=_rnum(row, "yield_t_ha_p90"),
        value_cny_p10=_rnum(row, "value_cny_p10"),
        value_cny_p50=_rnum(row, "value_cny_p50"),
        value_cny_p90=_rnum(row, "value_cny_p90"),
        price=_price_record(row),
        harvest_date=_iso(_date(row.get("harvest_date"))),
        last_obs_date=_iso(last),
        n_obs=None if _rnum(row, "n_obs") is None else _int(row.get("n_obs")),
        quality=_rnum(row, "quality"),
        flags=tuple(split_flags(row.get("flags"))),
        scene_ids=scene_ids,
        model_version=_str(row.get("model_version")),
        calibration=canonical_json(_json_obj(row.get("calibration"), "calibration")),
    )


# --------------------------------------------------------------------------- claims
def _claims(estimates: pd.DataFrame, farmers: Any) -> pd.DataFrame:
    """Table of (field_id, farmer_id[, declared_crop, declared_area_mu]) claims."""
    if farmers is None:
        if "farmer_id" not in estimates.columns:
            raise CreditInputError(
                "estimates has no 'farmer_id' column; pass farmers= (a mapping field_id -> "
                "farmer_id or a table with field_id and farmer_id columns)")
        claims = estimates[["field_id", "farmer_id"]].drop_duplicates()
        claims = claims.assign(_src="estimates")
    elif isinstance(farmers, pd.DataFrame):
        missing = {"field_id", "farmer_id"} - set(farmers.columns)
        if missing:
            raise CreditInputError(f"farmers table lacks columns {sorted(missing)}")
        cols = [c for c in ("field_id", "farmer_id", "declared_crop", "declared_area_mu")
                if c in farmers.columns]
        claims = farmers[cols].copy().assign(_src="farmers")
    elif isinstance(farmers, Mapping):
        claims = pd.DataFrame({"field_id": list(farmers.keys()),
                               "farmer_id": list(farmers.values()), "_src": "farmers"})
    else:
        raise CreditInputError(f"farmers must be a mapping or a DataFrame, got "
                               f"{type(farmers).__name__}")
    claims = claims.assign(field_id=[_str(v) for v in claims["field_id"]],
                           farmer_id=[_str(v) for v in claims["farmer_id"]])
    unassigned = claims["farmer_id"].isna() if len(claims) else pd.Series([], dtype=bool)
    if unassigned.any():
        ids = sorted(claims.loc[unassigned, "field_id"].astype(str))
        logger.warning("%d field(s) have no farmer_id and get no credit profile: %s",
                       len(ids), ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else ""))
    return claims[~unassigned]


def _crop_matches(declared: str, crop: str) -> bool:
    """Declared crop agrees with the identified one (same id or same family token).

    ``"maize"`` matches ``"summer_maize"``; ``"wheat"`` matches ``"winter_wheat"``.
    """
    d, c = declared.strip().lower(), crop.strip().lower()
    return d == c or d in c.split("_") or c in d.split("_")


# --------------------------------------------------------------------------- assess
def _resolve_as_of(as_of: Any, evidence: Iterable[FieldEvidence]) -> _dt.date:
    if as_of is not None:
        d = _date(as_of)
        if d is None:
            raise CreditInputError(f"as_of={as_of!r} is not a date; pass e.g. '2025-05-01'")
        return d
    evidence = list(evidence)
    dates = [_dt.date.fromisoformat(e.last_obs_date) for e in evidence if e.last_obs_date]
    if dates:
        return max(dates)
    dates = [_dt.date.fromisoformat(e.harvest_date) for e in evidence if e.harvest_date]
    if dates:
        logger.warning("assess: as_of not given and no imagery date known; using the latest "
                       "expected harvest %s (pass as_of= explicitly)", max(dates))
        return max(dates)
    raise CreditInputError(
        "as_of was not given and no date is known (no last_obs_date, no dated scene_ids, no "
        "harvest_date); pass as_of= explicitly")


def _field_reasons(e: FieldEvidence, policy: Policy, as_of: _dt.date) -> tuple[
        list[Reason], dict[str, float]]:
    """Reasons about one field-season and the haircut flags that apply to it."""
    rs: list[Reason] = []
    haircuts: dict[str, float] = {}
    fid = e.field_id
    fallow = e.crop == _FALLOW
    needed = {"crop": e.crop, "crop_prob": e.crop_prob, "area_mu": e.area_mu}
    if not fallow:  # a fallow field adds nothing: its value/quality do not matter
        needed |= {"value_cny_p10": e.value_cny_p10, "value_cny_p50": e.value_cny_p50,
                   "harvest_date": e.harvest_date, "quality": e.quality}
    missing = sorted(k for k, v in needed.items() if v is None)
    if missing:
        rs.append(Reason("MISSING_DATA", f"field {fid}: missing {', '.join(missing)}; "
                         "re-run the estimate or check the flags", "refer", fid))
    v10, v50, v90 = e.value_cny_p10, e.value_cny_p50, e.value_cny_p90
    if (v10 is not None and v50 is not None and v10 > v50) or (
            v50 is not None and v90 is not None and v50 > v90):
        rs.append(Reason("INCONSISTENT_INTERVAL", f"field {fid}: value interval not ordered "
                         f"(P10 {v10}, P50 {v50}, P90 {v90})", "refer", fid))
    if e.quality is not None and e.quality < policy.min_quality and not fallow:
        rs.append(Reason("LOW_QUALITY", f"field {fid}: data quality {e.quality:.2f} below "
                         f"{policy.min_quality:.2f}", "refer", fid, e.quality))
    if e.crop_prob is not None and e.crop_prob < policy.min_crop_prob:
        rs.append(Reason("LOW_CROP_CONFIDENCE", f"field {fid}: crop {e.crop} identified with "
                         f"probability {e.crop_prob:.2f} < {policy.min_crop_prob:.2f}", "refer",
                         fid, e.crop_prob))
    refer = set(policy.refer_flags)
    for flag in e.flags:
        text = FLAGS.get(flag, "flag not described in cropyield.errors.FLAGS")
        if fallow and flag in _FALLOW_EXPECTED:
            rs.append(Reason(flag, f"field {fid}: {text} (expected for a fallow field)",
                             "info", fid))
        elif flag in refer:
            rs.append(Reason(flag, f"field {fid}: {text}", "refer", fid))
        else:
            h = policy.haircut(flag)
            haircuts[flag] = h
            rs.append(Reason(flag, f"field {fid}: {text} (keeps {h:.0%} of the limit)",
                             "haircut" if h < 1.0 else "info", fid, h))
    # declared-data checks
    if e.declared_crop and e.crop and not _crop_matches(e.declared_crop, e.crop) \
            and "CROP_MISMATCH" not in e.flags:
        rs.append(Reason("CROP_MISMATCH", f"field {fid}: declared {e.declared_crop}, imagery "
                         f"shows {e.crop}", "refer", fid))
    if e.declared_area_mu is not None and e.area_mu:
        rel = abs(e.declared_area_mu - e.area_mu) / e.area_mu
        if rel > policy.area_refer_tolerance:
            rs = [r for r in rs if not (r.code == "AREA_MISMATCH")]
            haircuts.pop("AREA_MISMATCH", None)
            rs.append(Reason("AREA_MISMATCH", f"field {fid}: declared {e.declared_area_mu:.2f} mu"
                             f" vs measured {e.area_mu:.2f} mu ({rel:.0%} > "
                             f"{policy.area_refer_tolerance:.0%})", "refer", fid, rel))
        elif rel > policy.area_tolerance and "AREA_MISMATCH" not in e.flags:
            h = policy.haircut("AREA_MISMATCH")
            if "AREA_MISMATCH" in refer:
                rs.append(Reason("AREA_MISMATCH", f"field {fid}: declared {e.declared_area_mu:.2f}"
                                 f" mu vs measured {e.area_mu:.2f} mu ({rel:.0%})", "refer", fid,
                                 rel))
            else:
                haircuts["AREA_MISMATCH"] = h
                rs.append(Reason("AREA_MISMATCH", f"field {fid}: declared "
                                 f"{e.declared_area_mu:.2f} mu vs measured {e.area_mu:.2f} mu "
                                 f"({rel:.0%} > {policy.area_tolerance:.0%}; keeps {h:.0%})",
                                 "haircut", fid, h))
    # data age
    if e.last_obs_date is None:
        if not fallow and policy.require_imagery_date:
            rs.append(Reason("DATA_AGE_UNKNOWN", f"field {fid}: no imagery date (no "
                             "last_obs_date, no dated scene id); cannot rule out stale data",
                             "refer", fid))
    else:
        last = _dt.date.fromisoformat(e.last_obs_date)
        age = (as_of - last).days
        if age < 0:
            rs.append(Reason("EVIDENCE_AFTER_AS_OF", f"field {fid}: imagery of {last} is after "
                             f"as_of {as_of}", "refer", fid, float(age)))
        elif age > policy.max_data_age_days:
            rs.append(Reason("STALE_DATA", f"field {fid}: latest imagery {last} is {age} days "
                             f"old (> {policy.max_data_age_days})", "refer", fid, float(age)))
    if fallow:
        rs.append(Reason("FALLOW_FIELD", f"field {fid}: fallow (no value, no cost need)",
                         "info", fid))
    return rs, haircuts


def _exclusions(farmer_id: str, ev: list[FieldEvidence], reasons: list[Reason],
                policy: Policy) -> set[str]:
    """Fields left out of the limit under ``policy.exclude_codes`` (edits ``reasons``).

    A field is excluded when every ``refer`` reason about it (any season) has a code in
    ``policy.exclude_codes``; its refer and haircut reasons become ``info`` and a
    ``FIELD_EXCLUDED_*`` reason names it. Fail-closed: any other refer reason on the field
    (missing or invalid data, stale imagery, a refer flag, a duplicate claim...) keeps
    referring the farmer. The farmer is still referred (``MOSTLY_EXCLUDED``) when the
    excluded fields exceed ``max_excluded_share`` of the cropped measured area (or its
    area is unknown), and (``MAIN_FIELD_MISMATCH``) when the largest cropped field is
    excluded for a ``CROP_MISMATCH`` read with crop probability >= ``main_field_mismatch_prob``.
    """
    allowed = set(policy.exclude_codes)
    if not allowed or not ev:
        return set()
    refer_codes: dict[str, set[str]] = defaultdict(set)
    for r in reasons:
        if r.effect == "refer" and r.field_id is not None:
            refer_codes[r.field_id].add(r.code)
    excluded = {fid for fid, codes in refer_codes.items() if codes and codes <= allowed}
    if not excluded:
        return set()
    why: dict[str, list[str]] = {fid: sorted(refer_codes[fid]) for fid in excluded}
    for i, r in enumerate(reasons):
        if r.field_id in excluded and r.effect in ("refer", "haircut"):
            reasons[i] = Reason(r.code, r.message + " (field left out of the limit)", "info",
                                r.field_id, r.factor)
    # measured area of each cropped (or excluded) field; None when any season lacks it
    seasons: dict[str, list[FieldEvidence]] = defaultdict(list)
    for e in ev:
        if e.crop != _FALLOW or e.field_id in excluded:
            seasons[e.field_id].append(e)
    area: dict[str, float | None] = {fid: _max_or_none([e.area_mu for e in es])
                                     for fid, es in seasons.items()}
    prob = {fid: max((e.crop_prob for e in es if e.crop_prob is not None), default=0.0)
            for fid, es in seasons.items()}
    for fid in sorted(excluded):
        out_code = sorted({EXCLUDABLE_CODES[c] for c in why[fid]})
        for code in out_code:
            reasons.append(Reason(code, f"field {fid}: {', '.join(why[fid])}; left out of the "
                                  "limit (its value, cost need and flags are not used)", "info",
                                  fid, area.get(fid)))
    known = [a for a in area.values() if a is not None]
    total = float(math.fsum(known)) if len(known) == len(area) else None
    ex_area = float(math.fsum(area.get(fid) or 0.0 for fid in excluded))
    if total is None or total <= 0.0 or ex_area / total > policy.max_excluded_share \
            or excluded >= set(area):
        share = f"{ex_area / total:.0%}" if total else "an unknown share"
        reasons.append(Reason("MOSTLY_EXCLUDED", f"farmer {farmer_id}: excluded fields "
                              f"{', '.join(sorted(excluded))} are {share} of the cropped area "
                              f"(> {policy.max_excluded_share:.0%}); too little confident "
                              "evidence left", "refer", None,
                              ex_area / total if total else None))
    elif area:
        main = max(sorted(area), key=lambda f: area[f] or 0.0)
        if main in excluded and "CROP_MISMATCH" in why[main] \
                and prob[main] >= policy.main_field_mismatch_prob:
            reasons.append(Reason("MAIN_FIELD_MISMATCH", f"field {main} (the largest) is "
                                  f"declared as another crop than the imagery shows with "
                                  f"probability {prob[main]:.2f} >= "
                                  f"{policy.main_field_mismatch_prob:.2f}", "refer", main,
                                  prob[main]))
    return excluded


def _next_harvest(harvest: _dt.date, as_of: _dt.date) -> _dt.date:
    """The first anniversary of ``harvest`` on or after ``as_of`` (29 Feb -> 28 Feb)."""
    year = harvest.year
    while True:
        try:
            h = harvest.replace(year=year)
        except ValueError:
            h = _dt.date(year, 2, 28)
        if h >= as_of:
            return h
        year += 1


def _sort_reasons(rs: Iterable[Reason]) -> tuple[Reason, ...]:
    uniq = {(r.code, r.field_id, r.effect, r.message): r for r in rs}
    return tuple(sorted(uniq.values(), key=lambda r: (_EFFECT_ORDER[r.effect], r.code,
                                                      r.field_id or "", r.message)))


def _profile(farmer_id: str, ev: list[FieldEvidence], reasons: list[Reason],
             policy: Policy, as_of: _dt.date) -> CreditProfile:
    field_hc: list[tuple[FieldEvidence, dict[str, float]]] = []
    for e in ev:
        rs, fhc = _field_reasons(e, policy, as_of)
        reasons.extend(rs)
        field_hc.append((e, fhc))
    excluded = _exclusions(farmer_id, ev, reasons, policy)
    haircuts: dict[str, float] = {}
    for e, field_haircuts in field_hc:
        if e.field_id in excluded:
            continue
        for k, v in field_haircuts.items():
            haircuts[k] = min(v, haircuts.get(k, 1.0))
    cropped = [e for e in ev if e.crop != _FALLOW and e.field_id not in excluded]

    def total(vals: list[float | None]) -> float | None:
        known = [v for v in vals if v is not None]
        return None if len(known) < len(vals) else float(math.fsum(known))

    by_field: dict[str, FieldEvidence] = {}
    for e in ev:
        by_field.setdefault(e.field_id, e)
    total_ha = total([e.area_ha for e in by_field.values()]) if ev else None
    total_mu = total([e.area_mu for e in by_field.values()]) if ev else None
    v50 = total([e.value_cny_p50 for e in cropped])
    v10 = total([e.value_cny_p10 for e in cropped])
    # repayment window from expected harvests (rolled to the next one after as_of)
    harvests = []
    for e in cropped:
        if e.harvest_date is None:
            continue
        h = _dt.date.fromisoformat(e.harvest_date)
        if h < as_of:
            reasons.append(Reason("PAST_SEASON", f"field {e.field_id}: expected harvest {h} is "
                                  f"before as_of {as_of}; repayment rolls to the next year's "
                                  "harvest", "info", e.field_id))
            h = _next_harvest(h, as_of)
        harvests.append(h)
    rep_start = min(harvests) if harvests else None
    rep_end = max(harvests) + _dt.timedelta(days=policy.repayment_grace_days) if harvests \
        else None
    # limit arithmetic (whenever every number is known, also to explain a referral)
    factors = None
    areas = [None if e.area_mu is None else
             (min(e.area_mu, e.declared_area_mu) if e.declared_area_mu is not None else e.area_mu)
             for e in cropped]
    known_areas = [a for a in areas if a is not None]
    crops = [e.crop for e in cropped if e.crop]
    if v10 is not None and v50 is not None and len(known_areas) == len(areas) \
            and len(crops) == len(cropped):
        area = float(math.fsum(known_areas))
        stage = float(math.fsum(policy.stage_cost(c) * a for c, a in
                                 zip(crops, known_areas, strict=True)))
        ltv_cap = policy.ltv * v10
        ins_cap = policy.insurance_fraction * v50
        caps: dict[_Cap, float] = {"stage_cost": stage, "ltv": ltv_cap, "insurance": ins_cap}
        binding: _Cap = min(caps, key=lambda k: caps[k])  # dict order breaks ties
        hflag = min(sorted(haircuts), key=lambda k: haircuts[k]) if haircuts else None
        hc = haircuts[hflag] if hflag else 1.0
        if hc >= 1.0:
            hflag = None
        raw = caps[binding] * hc
        if policy.max_limit_cny < raw:
            binding, raw = "max_limit", float(policy.max_limit_cny)
        factors = Factors(area_mu=area, stage_cost_cap_cny=stage, downside_value_cny=v10,
                          ltv=policy.ltv, ltv_cap_cny=ltv_cap, expected_value_cny=v50,
                          insurance_fraction=policy.insurance_fraction,
                          insurance_cap_cny=ins_cap, binding_cap=binding, haircut=hc,
                          haircut_flag=hflag, max_limit_cny=float(policy.max_limit_cny),
                          limit_before_rounding_cny=raw, limit_step_cny=policy.limit_step_cny)
    decision: Literal["approve", "refer", "decline"] = "refer"
    limit: int | None = None
    if not ev:
        reasons.append(Reason("MISSING_ESTIMATE", f"farmer {farmer_id}: no field evidence",
                              "refer"))
    if not any(r.effect == "refer" for r in reasons):
        if factors is None:  # cannot happen without a refer reason; fail closed anyway
            reasons.append(Reason("MISSING_DATA", "limit inputs incomplete", "refer"))
        elif not cropped:
            decision = "decline"
            reasons.append(Reason("ALL_FALLOW", f"farmer {farmer_id}: every field is fallow",
                                  "decline"))
        elif factors.downside_value_cny < policy.min_downside_value_cny:
            decision = "decline"
            reasons.append(Reason("LOW_DOWNSIDE_VALUE", f"downside value "
                                  f"{factors.downside_value_cny:,.0f} CNY < "
                                  f"{policy.min_downside_value_cny:,.0f}", "decline", None,
                                  factors.downside_value_cny))
        else:
            step = policy.limit_step_cny
            rounded = int(math.floor(factors.limit_before_rounding_cny / step + 1e-9)) * step
            if rounded < policy.min_limit_cny or rounded <= 0:
                decision = "decline"
                reasons.append(Reason("LIMIT_BELOW_MINIMUM", f"limit {rounded:,} CNY < minimum "
                                      f"{policy.min_limit_cny:,.0f}", "decline", None,
                                      float(rounded)))
            else:
                decision, limit = "approve", rounded
                cap_code = "CAP_" + factors.binding_cap.upper()
                cap_value = {"stage_cost": factors.stage_cost_cap_cny,
                             "ltv": factors.ltv_cap_cny,
                             "insurance": factors.insurance_cap_cny,
                             "max_limit": factors.max_limit_cny}[factors.binding_cap]
                reasons.append(Reason(cap_code, f"{REASON_CODES[cap_code]}: "
                                      f"{cap_value:,.0f} CNY", "cap", None, cap_value))
                hc_txt = (f" x haircut {factors.haircut:.2f} ({factors.haircut_flag})"
                          if factors.haircut_flag else "")
                reasons.append(Reason("APPROVED", f"limit {rounded:,} CNY = min(stage cost "
                                      f"{factors.stage_cost_cap_cny:,.0f}, LTV "
                                      f"{factors.ltv_cap_cny:,.0f}, insurance "
                                      f"{factors.insurance_cap_cny:,.0f}){hc_txt}, rounded down "
                                      f"to {step} CNY", "info", None, float(rounded)))
    return CreditProfile(
        farmer_id=farmer_id, as_of=as_of.isoformat(), decision=decision,
        suggested_limit_cny=limit, currency=policy.currency, policy_id=policy.policy_id,
        policy_version=policy.policy_version, total_area_ha=total_ha, total_area_mu=total_mu,
        expected_value_cny_p50=v50, downside_value_cny_p10=v10,
        repayment_start=_iso(rep_start), repayment_end=_iso(rep_end), factors=factors,
        reasons=_sort_reasons(reasons),
        fields=tuple(sorted(ev, key=lambda e: (e.field_id, -1 if e.season is None else e.season))),
        library_version=__version__, excluded_fields=tuple(sorted(excluded)),
    )


def assess(estimates: pd.DataFrame, *, farmers: Any = None, policy: Policy | None = None,
           as_of: Any = None, season: Any = None) -> list[CreditProfile]:
    """Farmer-level credit profiles from the estimates table (fail-closed, deterministic).

    Parameters
    ----------
    estimates : DataFrame
        Output of :func:`cropyield.value.estimate_yield`, one row per (field_id, season).
        Required columns: ``field_id, crop, crop_prob, value_cny_p10, value_cny_p50,
        quality, harvest_date`` and ``area_mu`` or ``area_ha``; ``farmer_id`` unless
        ``farmers`` is given. Used when present: ``declared_area_mu``, ``declared_crop``,
        ``flags``, ``scene_ids``, ``last_obs_date``, ``price_cny_per_t``, ``price_record``,
        ``yield_*``, ``value_cny_p90``, ``n_obs``, ``model_version``, ``calibration``.
    farmers : mapping or DataFrame, optional
        Who claims which field: ``{field_id: farmer_id}`` or a table with ``field_id``,
        ``farmer_id`` and optionally ``declared_crop``, ``declared_area_mu`` (these override
        the estimates' columns). Replaces the estimates' ``farmer_id`` column. A field
        listed for two farmers gives ``DUPLICATE_CLAIM`` (both referred). Fields without a
        farmer get no profile (logged).
    policy : Policy, optional
        Default :class:`Policy()`.
    as_of : date-like, optional
        Assessment date. Default: the latest imagery date in the table (``last_obs_date``
        or the dates in ``scene_ids``); raises :class:`CreditInputError` when none is known.
    season : optional
        Keep only rows of this season.

    Returns
    -------
    list of CreditProfile
        One per farmer, sorted by ``farmer_id``.

    Notes
    -----
    * **Fail-closed.** Any missing number, quality or crop probability below the policy
      minimum, a flag in ``policy.refer_flags``, a declared crop that disagrees, an area
      difference beyond ``area_refer_tolerance``, a duplicate claim, a claimed field
      without estimate, imagery older than ``max_data_age_days`` or of unknown date, or
      imagery after ``as_of`` gives ``"refer"`` with **no limit**. One failing field refers
      the whole farmer (the bank may resubmit without it); so every approved limit rests on
      all the fields the farmer claimed.
    * **Limit** = ``min(Σ stage_cost(crop) × area_mu, ltv × Σ value_P10, insurance_fraction
      × Σ value_P50) × haircut``, capped at ``max_limit_cny`` and rounded down to
      ``limit_step_cny``. Area for the cost need is ``min(measured, declared)`` per field.
      The haircut is the **minimum** over the haircuts of every flag on any field (the
      worst problem; a product would count correlated flags such as LOW_OBS and
      CLOUDY_SEASON twice). Fallow fields add no value and no cost need.
    * **Decline** (complete evidence only): every field fallow, Σ value_P10 below
      ``min_downside_value_cny``, or a rounded limit below ``min_limit_cny``.
    * **Repayment window**: earliest expected harvest to latest + ``repayment_grace_days``;
      a harvest before ``as_of`` rolls forward by whole years (``PAST_SEASON``).

    Examples
    --------
    ``est`` as in the example of :func:`cropyield.value.estimate_yield` (synthetic fields
    carry a ``farmer_id``):

    >>> from cropyield import credit
    >>> profiles = credit.assess(est, as_of="2022-05-01",
    ...                          policy=credit.Policy.preset("1.1.0"))  # doctest: +SKIP
    >>> p = profiles[0]  # doctest: +SKIP
    >>> p.decision, p.suggested_limit_cny, [r.code for r in p.reasons]  # doctest: +SKIP
    >>> p.to_json()   # schema: docs/credit_schema.json  # doctest: +SKIP
    """
    if not isinstance(estimates, pd.DataFrame):
        raise CreditInputError(f"estimates must be a pandas DataFrame, got "
                               f"{type(estimates).__name__}")
    policy = policy or Policy()
    if not isinstance(policy, Policy):
        raise CreditInputError(f"policy must be a cropyield.credit.Policy, got "
                               f"{type(policy).__name__}")
    missing = [c for c in _REQUIRED if c not in estimates.columns]
    if "area_mu" not in estimates.columns and "area_ha" not in estimates.columns:
        missing.append("area_mu|area_ha")
    if missing:
        raise CreditInputError(f"estimates lacks columns {missing}; pass the output of "
                               "cropyield.value.estimate_yield")
    est = estimates
    if season is not None:
        est = est[est["season"].astype(str) == str(season)] if "season" in est.columns else est
    if est.empty:
        return []
    est = est.assign(field_id=[_str(v) for v in est["field_id"]])
    claims = _claims(est, farmers)
    rows_by_field: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in est.to_dict("records"):
        rows_by_field[rec["field_id"]].append(rec)

    evidence: dict[str, list[FieldEvidence]] = defaultdict(list)
    reasons: dict[str, list[Reason]] = defaultdict(list)
    claimants: dict[str, set[str]] = defaultdict(set)
    for c in claims.to_dict("records"):
        claimants[c["field_id"]].add(c["farmer_id"])
    for c in sorted(claims.to_dict("records"), key=lambda c: (c["farmer_id"], c["field_id"])):
        fid, farmer = c["field_id"], c["farmer_id"]
        rows = rows_by_field.get(fid, [])
        if farmers is None:  # the claim came from the rows themselves
            rows = [r for r in rows if _str(r.get("farmer_id")) == farmer]
        if not rows:
            reasons[farmer].append(Reason("MISSING_ESTIMATE", f"field {fid}: claimed but not "
                                          "in the estimates table", "refer", fid))
            continue
        dc = _str(c.get("declared_crop"))
        da = _num(c.get("declared_area_mu"))
        for r in rows:
            problems = _range_problems(r, {"declared_area_mu": da})
            if problems:
                reasons[farmer].append(Reason(
                    "INVALID_ESTIMATE", f"field {fid}: {'; '.join(problems)}. Fix the estimates "
                    "table (re-run cropyield.value.estimate_yield) and assess again", "refer",
                    fid))
            evidence[farmer].append(field_evidence(r, farmer_id=farmer, declared_crop=dc,
                                                   declared_area_mu=da))
    # duplicate claims: one field claimed by several farmers, or a (field, season) twice
    for fid, who in claimants.items():
        if len(who) > 1:
            for farmer in who:
                others = sorted(who - {farmer})
                reasons[farmer].append(Reason("DUPLICATE_CLAIM", f"field {fid} is also claimed "
                                              f"by {', '.join(others)}", "refer", fid,
                                              float(len(who))))
    for farmer, ev in evidence.items():
        seen: dict[tuple[str, int | None], int] = defaultdict(int)
        for e in ev:
            seen[(e.field_id, e.season)] += 1
        for (fid, s), n in seen.items():
            if n > 1:
                reasons[farmer].append(Reason("DUPLICATE_CLAIM", f"field {fid} season {s} appears "
                                              f"{n} times", "refer", fid, float(n)))
    as_of_d = _resolve_as_of(as_of, (e for ev in evidence.values() for e in ev))
    # one crop year of evidence per field: older seasons are history, not collateral
    for farmer, ev in evidence.items():
        latest: dict[str, _dt.date] = {}
        for e in ev:
            if e.harvest_date:
                h = _dt.date.fromisoformat(e.harvest_date)
                latest[e.field_id] = max(h, latest.get(e.field_id, h))
        keep = []
        for e in ev:
            if e.harvest_date and (latest[e.field_id] - _dt.date.fromisoformat(
                    e.harvest_date)).days >= policy.evidence_window_days:
                reasons[farmer].append(Reason(
                    "HISTORY_SEASON", f"field {e.field_id}: season {e.season} (harvest "
                    f"{e.harvest_date}) is older than the field's latest crop year; not used",
                    "info", e.field_id))
            else:
                keep.append(e)
        evidence[farmer] = keep
    farmers_sorted = sorted(set(evidence) | set(reasons))
    return [_profile(f, evidence.get(f, []), list(reasons.get(f, [])), policy, as_of_d)
            for f in farmers_sorted]
