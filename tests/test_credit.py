"""Credit adapter: decisions, limits, declared-data checks, monitoring, properties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cropyield import credit
from cropyield.credit import CreditProfile, Policy
from cropyield.errors import CreditInputError, CropYieldError

ROOT = Path(__file__).resolve().parents[1]
PRICE = {"winter_wheat": 2380.0, "summer_maize": 2300.0, "fallow": 0.0}
HARVEST = {"winter_wheat": "2025-06-10", "summer_maize": "2025-10-01"}
SCENES = "S2B_50SKC_20250416_0_L2A,S2A_50SKC_20250421_0_L2A"


# --------------------------------------------------------------------------- builders
def est_row(field_id, farmer_id, crop="winter_wheat", area_ha=0.6, y10=5.0, y50=6.0, y90=7.0,
            **over):
    """One realistic estimates row (columns of docs/contracts.md 'estimates')."""
    price = PRICE.get(crop, 2300.0)
    row = {
        "field_id": field_id, "farmer_id": farmer_id, "season": 2025, "crop": crop,
        "crop_prob": 0.93, "area_ha": area_ha, "area_mu": area_ha * 15.0,
        "declared_area_mu": round(area_ha * 15.0, 1),
        "yield_basis": "grain@12.5%" if crop == "winter_wheat" else "grain@14%",
        "yield_t_ha_p10": y10, "yield_t_ha_p50": y50, "yield_t_ha_p90": y90,
        "production_t_p10": y10 * area_ha, "production_t_p50": y50 * area_ha,
        "production_t_p90": y90 * area_ha, "price_cny_per_t": price,
        "price_record": json.dumps({"crop": crop, "region": "north_china_plain",
                                    "price": price / 1000.0, "unit": "CNY/kg",
                                    "type": "MSP" if crop == "winter_wheat" else "market",
                                    "valid_from": "2025-01-01", "source": "NDRC 2024-1405"}),
        "value_cny_p10": y10 * area_ha * price, "value_cny_p50": y50 * area_ha * price,
        "value_cny_p90": y90 * area_ha * price,
        "sos": pd.Timestamp("2025-03-01"), "pos": pd.Timestamp("2025-04-25"),
        "eos": pd.Timestamp("2025-06-01"),
        "harvest_date": pd.Timestamp(HARVEST.get(crop, "2025-06-10")),
        "n_obs": 18, "quality": 0.82, "model_version": "lue-0.1.0",
        "calibration": json.dumps({"factor": 0.62, "region": "north_china_plain",
                                   "source": "NBS 2024 provincial yields"}),
        "flags": "", "scene_ids": SCENES,
    }
    row.update(over)
    return row


def table(*rows) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    df["n_obs"] = df["n_obs"].astype("int64")
    return df


def two_field_farmer(**over2):
    """Hand-computable farmer A: 9 mu of wheat and 6 mu of maize."""
    return table(
        est_row("F1", "A", "winter_wheat", 0.6, 5.0, 6.0, 7.0),
        est_row("F2", "A", "summer_maize", 0.4, 6.0, 7.5, 9.0, **over2),
    )


AS_OF = "2025-04-30"


def one(profiles, farmer="A") -> CreditProfile:
    return next(p for p in profiles if p.farmer_id == farmer)


def codes(p: CreditProfile, effect=None) -> set[str]:
    return {r.code for r in p.reasons if effect is None or r.effect == effect}


# --------------------------------------------------------------------------- golden cases
def test_golden_two_fields_ltv_binds():
    p = one(credit.assess(two_field_farmer(), as_of=AS_OF))
    # P10 value: 0.6*5*2380 + 0.4*6*2300 = 7140 + 5520 = 12660 CNY
    # P50 value: 0.6*6*2380 + 0.4*7.5*2300 = 8568 + 6900 = 15468 CNY
    # caps: stage 500*(9+6) = 7500; LTV 0.5*12660 = 6330; insurance 0.8*15468 = 12374.4
    assert p.decision == "approve"
    assert p.suggested_limit_cny == 6300
    f = p.factors
    assert f.stage_cost_cap_cny == pytest.approx(7500.0)
    assert f.ltv_cap_cny == pytest.approx(6330.0)
    assert f.insurance_cap_cny == pytest.approx(12374.4)
    assert f.binding_cap == "ltv" and f.haircut == 1.0 and f.haircut_flag is None
    assert p.downside_value_cny_p10 == pytest.approx(12660.0)
    assert p.expected_value_cny_p50 == pytest.approx(15468.0)
    assert p.total_area_mu == pytest.approx(15.0) and p.total_area_ha == pytest.approx(1.0)
    assert p.repayment_start == "2025-06-10" and p.repayment_end == "2025-10-31"
    assert "CAP_LTV" in codes(p, "cap") and "APPROVED" in codes(p)
    assert p.as_of == AS_OF and p.currency == "CNY" and p.schema_version == "2.0.0"


@pytest.mark.parametrize("policy, limit, binding", [
    (Policy(ltv=0.8), 7500, "stage_cost"),                 # 0.8*12660 = 10128 > 7500
    (Policy(insurance_fraction=0.3), 4600, "insurance"),   # 0.3*15468 = 4640.4
    (Policy(max_limit_cny=5000.0), 5000, "max_limit"),
    (Policy(limit_step_cny=1000), 6000, "ltv"),
])
def test_golden_each_cap_binds(policy, limit, binding):
    p = one(credit.assess(two_field_farmer(), as_of=AS_OF, policy=policy))
    assert (p.decision, p.suggested_limit_cny, p.factors.binding_cap) == ("approve", limit,
                                                                          binding)


def test_haircut_is_min_over_flags():
    # CROP_UNCERTAIN 0.7 on F2 and FIELD_TOO_SMALL 0.7 + LOW_OBS 0.5 on F2 -> min 0.5
    p = one(credit.assess(two_field_farmer(flags="CROP_UNCERTAIN"), as_of=AS_OF))
    assert p.factors.haircut == 0.7 and p.factors.haircut_flag == "CROP_UNCERTAIN"
    assert p.suggested_limit_cny == 4400  # floor(6330*0.7 = 4431 / 100) * 100
    p = one(credit.assess(two_field_farmer(flags="CLOUDY_SEASON,LOW_OBS"), as_of=AS_OF))
    assert p.factors.haircut == 0.5 and p.suggested_limit_cny == 3100  # 3165
    assert {"CLOUDY_SEASON", "LOW_OBS"} <= codes(p, "haircut")


# --------------------------------------------------------------------------- fail-closed
@pytest.mark.parametrize("column", ["value_cny_p10", "value_cny_p50", "crop_prob", "quality",
                                    "harvest_date", "area_mu", "crop"])
def test_missing_value_refers_without_limit(column):
    df = two_field_farmer()
    df[column] = df[column].astype(object)
    df.loc[1, column] = None if column in ("crop", "harvest_date") else np.nan
    if column == "area_mu":
        df.loc[1, "area_ha"] = np.nan
    p = one(credit.assess(df, as_of=AS_OF))
    assert p.decision == "refer" and p.suggested_limit_cny is None
    r = next(r for r in p.reasons if r.code == "MISSING_DATA")
    assert r.field_id == "F2" and column in r.message and r.effect == "refer"


@pytest.mark.parametrize("flag", ["CROP_MISMATCH", "NO_SEASON", "READ_FAILED", "NO_PRICE",
                                  "OUT_OF_RANGE", "SEASON_INCOMPLETE"])
def test_forced_refer_flags(flag):
    p = one(credit.assess(two_field_farmer(flags=f"LOW_OBS,{flag}"), as_of=AS_OF))
    assert p.decision == "refer" and p.suggested_limit_cny is None
    assert flag in codes(p, "refer")
    assert p.factors is not None  # the arithmetic is still shown to the reviewer


def test_quality_crop_prob_and_interval_checks():
    assert "LOW_QUALITY" in codes(one(credit.assess(two_field_farmer(quality=0.3),
                                                    as_of=AS_OF)), "refer")
    assert "LOW_CROP_CONFIDENCE" in codes(one(credit.assess(two_field_farmer(crop_prob=0.4),
                                                            as_of=AS_OF)), "refer")
    bad = two_field_farmer(value_cny_p10=99999.0)  # P10 > P50
    assert "INCONSISTENT_INTERVAL" in codes(one(credit.assess(bad, as_of=AS_OF)), "refer")


def test_data_age_checks():
    df = two_field_farmer()
    p = one(credit.assess(df, as_of="2025-08-01"))  # imagery of 2025-04-21: 102 days old
    assert p.decision == "refer" and "STALE_DATA" in codes(p, "refer")
    p = one(credit.assess(df, as_of="2025-04-01"))  # imagery after as_of: look-ahead
    assert "EVIDENCE_AFTER_AS_OF" in codes(p, "refer")
    undated = two_field_farmer(scene_ids="")
    p = one(credit.assess(undated, as_of=AS_OF))
    assert p.decision == "refer" and "DATA_AGE_UNKNOWN" in codes(p, "refer")
    dated = two_field_farmer(scene_ids="", last_obs_date=pd.Timestamp("2025-04-20"))
    dated.loc[0, "last_obs_date"] = pd.Timestamp("2025-04-25")
    assert one(credit.assess(dated, as_of=AS_OF)).decision == "approve"


def test_default_as_of_is_latest_imagery_and_needed():
    p = one(credit.assess(two_field_farmer()))
    assert p.as_of == "2025-04-21"
    undated = two_field_farmer(scene_ids="").assign(scene_ids="")
    p = one(credit.assess(undated))  # falls back to the latest expected harvest, refers
    assert p.as_of == "2025-10-01" and p.decision == "refer"
    assert "DATA_AGE_UNKNOWN" in codes(p, "refer")
    p = one(credit.assess(undated, as_of=AS_OF, policy=Policy(require_imagery_date=False)))
    assert p.decision == "approve" and p.suggested_limit_cny == 6300
    with pytest.raises(CreditInputError, match="as_of"):
        credit.assess(undated.assign(harvest_date=pd.NaT))


def test_past_harvest_rolls_repayment_forward():
    p = one(credit.assess(two_field_farmer(), as_of="2025-06-15",
                          policy=Policy(max_data_age_days=90)))
    assert p.decision == "approve"
    assert "PAST_SEASON" in codes(p, "info")
    assert p.repayment_start == "2025-10-01"  # maize this year
    assert p.repayment_end == "2026-07-10"    # wheat rolls to 2026-06-10, + 30 days


# --------------------------------------------------------------------------- declared data
def test_area_mismatch_haircut_then_refer():
    p = one(credit.assess(two_field_farmer(declared_area_mu=7.8), as_of=AS_OF))  # +30 %
    assert p.decision == "approve" and "AREA_MISMATCH" in codes(p, "haircut")
    assert p.factors.haircut == 0.8
    p = one(credit.assess(two_field_farmer(declared_area_mu=4.2), as_of=AS_OF))  # -30 %
    # cost need uses min(measured, declared): 500 * (9 + 4.2) = 6600 < LTV 6330? no: LTV binds
    assert p.factors.area_mu == pytest.approx(13.2)
    p = one(credit.assess(two_field_farmer(declared_area_mu=10.0), as_of=AS_OF))  # +67 %
    assert p.decision == "refer" and "AREA_MISMATCH" in codes(p, "refer")


def test_declared_crop_checks():
    ok = two_field_farmer(declared_crop="maize")  # family token matches summer_maize
    assert one(credit.assess(ok, as_of=AS_OF)).decision == "approve"
    bad = two_field_farmer(declared_crop="rice_single")
    p = one(credit.assess(bad, as_of=AS_OF))
    assert p.decision == "refer" and "CROP_MISMATCH" in codes(p, "refer")
    farmers = pd.DataFrame({"field_id": ["F1", "F2"], "farmer_id": ["A", "A"],
                            "declared_crop": ["winter_wheat", "soybean"]})
    p = one(credit.assess(two_field_farmer(), farmers=farmers, as_of=AS_OF))
    assert [r.field_id for r in p.reasons if r.code == "CROP_MISMATCH"] == ["F2"]


# --------------------------------------------------------------------------- policy 1.1.0
V11 = Policy.preset("1.1.0")


def three_field_farmer(**over3):
    """Farmer A: 9 mu wheat (F1), 6 mu maize (F2), 3 mu maize (F3, the one in doubt)."""
    return table(
        est_row("F1", "A", "winter_wheat", 0.6, 5.0, 6.0, 7.0),
        est_row("F2", "A", "summer_maize", 0.4, 6.0, 7.5, 9.0),
        est_row("F3", "A", "summer_maize", 0.2, 6.0, 7.5, 9.0, **over3),
    )


@pytest.mark.parametrize("over, why", [
    ({"crop_prob": 0.45}, "FIELD_EXCLUDED_CROP_DOUBT"),              # LOW_CROP_CONFIDENCE
    ({"declared_crop": "soybean", "crop_prob": 0.95},                # confident mismatch,
     "FIELD_EXCLUDED_CROP_DOUBT"),                                   # not the main field
    ({"declared_crop": "soybean", "crop_prob": 0.55, "flags": "LOW_OBS"},  # both + a flag
     "FIELD_EXCLUDED_CROP_DOUBT"),
    ({"quality": 0.3, "flags": "FIELD_TOO_SMALL"}, "FIELD_EXCLUDED_LOW_QUALITY"),
])
def test_v11_doubtful_field_left_out_of_limit(over, why):
    df = three_field_farmer(**over)
    assert one(credit.assess(df, as_of=AS_OF)).decision == "refer"  # policy 1.0.0
    p = one(credit.assess(df, as_of=AS_OF, policy=V11))
    # limit from F1 + F2 only: Σ P10 = 0.6*5*2380 + 0.4*6*2300 = 12660; LTV 6330 binds
    # (stage cost 500 * 15 = 7500; insurance 0.8 * 15468 = 12374.4); F3's LOW_OBS unused
    assert p.decision == "approve" and p.suggested_limit_cny == 6300
    assert p.policy_version == "1.1.0" and p.excluded_fields == ("F3",)
    assert p.factors.downside_value_cny == pytest.approx(12660.0)
    assert p.factors.area_mu == pytest.approx(15.0) and p.factors.haircut == 1.0
    assert p.downside_value_cny_p10 == pytest.approx(12660.0)
    assert p.total_area_mu == pytest.approx(18.0)  # every claimed field is still listed
    assert [e.field_id for e in p.fields] == ["F1", "F2", "F3"]
    ex = [r for r in p.reasons if r.code.startswith("FIELD_EXCLUDED_")]
    assert [r.code for r in ex] == [why]
    assert [(r.field_id, r.effect) for r in ex] == [("F3", "info")]
    assert ex[0].factor == pytest.approx(3.0)  # its area, mu
    assert not [r for r in p.reasons if r.field_id == "F3" and r.effect != "info"]
    assert CreditProfile.from_json(p.to_json()) == p


def test_v11_only_doubtful_fields_refers():
    df = table(est_row("F1", "A", "winter_wheat", 0.6, crop_prob=0.5),
               est_row("F2", "A", "summer_maize", 0.4, declared_crop="soybean"))
    p = one(credit.assess(df, as_of=AS_OF, policy=V11))
    assert p.decision == "refer" and p.suggested_limit_cny is None
    assert "MOSTLY_EXCLUDED" in codes(p, "refer") and p.excluded_fields == ("F1", "F2")


def test_v11_mostly_doubtful_refers_and_share_is_area_weighted():
    # doubtful F1 (9 mu) is 60 % of 15 mu > 50 %: refer; doubtful F2 (6 mu, 40 %): approve
    df = two_field_farmer().assign(crop_prob=[0.5, 0.93])
    p = one(credit.assess(df, as_of=AS_OF, policy=V11))
    r = next(r for r in p.reasons if r.code == "MOSTLY_EXCLUDED")
    assert p.decision == "refer" and r.factor == pytest.approx(0.6)
    p = one(credit.assess(df.assign(crop_prob=[0.93, 0.5]), as_of=AS_OF, policy=V11))
    assert p.decision == "approve" and p.excluded_fields == ("F2",)
    # 0.6 ha wheat: 0.5 * 0.6 * 5 * 2380 = 3570 -> 3500
    assert p.suggested_limit_cny == 3500
    p = one(credit.assess(df, as_of=AS_OF, policy=Policy.preset("1.1.0",
                                                                 max_excluded_share=0.7)))
    assert p.decision == "approve" and p.suggested_limit_cny == 2700  # 0.5 * 5520 -> 2700


def test_v11_main_field_confident_mismatch_refers():
    # F1 (9 mu, the largest) declared soybean, imagery says wheat with p 0.93 >= 0.8
    farmers = pd.DataFrame({"field_id": ["F1", "F2", "F3"], "farmer_id": ["A"] * 3,
                            "declared_crop": ["soybean", "maize", "maize"]})
    df = three_field_farmer()
    df.loc[0, "area_ha"], df.loc[0, "area_mu"] = 0.5, 7.5  # 7.5 of 16.5 mu: < 50 %
    p = one(credit.assess(df, farmers=farmers.assign(declared_area_mu=[7.5, 6.0, 3.0]),
                          as_of=AS_OF, policy=V11))
    assert p.decision == "refer" and codes(p, "refer") == {"MAIN_FIELD_MISMATCH"}
    assert p.excluded_fields == ("F1",)
    # the same mismatch read with p 0.7 (< 0.8) is doubt, not evidence: excluded only
    df.loc[0, "crop_prob"] = 0.7
    p = one(credit.assess(df, farmers=farmers.assign(declared_area_mu=[7.5, 6.0, 3.0]),
                          as_of=AS_OF, policy=V11))
    assert p.decision == "approve" and p.excluded_fields == ("F1",)


@pytest.mark.parametrize("over, code", [
    ({"crop_prob": 0.45, "value_cny_p10": np.nan}, "MISSING_DATA"),
    ({"crop_prob": 0.45, "flags": "NO_PRICE"}, "NO_PRICE"),
    ({"crop_prob": 0.45, "value_cny_p10": 1e6}, "INCONSISTENT_INTERVAL"),
    ({"quality": 0.3, "harvest_date": pd.NaT}, "MISSING_DATA"),
    ({"crop_prob": 0.45, "last_obs_date": pd.Timestamp("2025-01-05")}, "STALE_DATA"),
    ({"value_cny_p50": -5.0}, "INVALID_ESTIMATE"),
])
def test_v11_fail_closed_missing_or_invalid_data_still_refers(over, code):
    """Only crop-identity doubt leaves a field out; anything else on it refers the farmer."""
    p = one(credit.assess(three_field_farmer(**over), as_of=AS_OF, policy=V11))
    assert p.decision == "refer" and p.suggested_limit_cny is None
    assert code in codes(p, "refer") and p.excluded_fields == ()


def test_v11_policy_rejects_excluding_missing_data():
    from cropyield.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot leave a field out"):
        Policy(exclude_codes=("MISSING_DATA",))
    with pytest.raises(ConfigError, match="no policy preset"):
        Policy.preset("9.9.9")
    assert Policy().exclude_codes == () and Policy.preset("1.0.0") == Policy()
    assert set(credit.EXCLUDABLE_CODES.values()) <= set(credit.REASON_CODES)


def test_duplicate_claim_refers_both_farmers():
    df = table(est_row("F1", "A"), est_row("F2", "A"), est_row("F3", "B"))
    farmers = pd.DataFrame({"field_id": ["F1", "F2", "F3", "F2"],
                            "farmer_id": ["A", "A", "B", "B"]})
    ps = credit.assess(df, farmers=farmers, as_of=AS_OF)
    assert [p.farmer_id for p in ps] == ["A", "B"]
    for p in ps:
        assert p.decision == "refer" and p.suggested_limit_cny is None
        assert [r.field_id for r in p.reasons if r.code == "DUPLICATE_CLAIM"] == ["F2"]
    # the same conflict carried in the estimates' own farmer_id column
    df2 = table(est_row("F1", "A"), est_row("F1", "B"), est_row("F3", "B"))
    assert {p.decision for p in credit.assess(df2, as_of=AS_OF)} == {"refer"}


def test_farmers_mapping_and_missing_estimate():
    df = table(est_row("F1", None), est_row("F2", None))
    ps = credit.assess(df, farmers={"F1": "A", "F2": "A", "F9": "B"}, as_of=AS_OF)
    assert one(ps, "A").decision == "approve"
    b = one(ps, "B")
    assert b.decision == "refer" and "MISSING_ESTIMATE" in codes(b) and b.fields == ()


def test_unassigned_fields_get_no_profile(caplog):
    df = table(est_row("F1", "A"), est_row("F2", None))
    with caplog.at_level("WARNING", logger="cropyield"):
        ps = credit.assess(df, as_of=AS_OF)
    assert [p.farmer_id for p in ps] == ["A"]
    assert "F2" in caplog.text


# --------------------------------------------------------------------------- decline
def test_decline_rules():
    fallow = table(est_row("F1", "A", "fallow", 0.5, 0, 0, 0, value_cny_p10=np.nan,
                           value_cny_p50=np.nan, value_cny_p90=np.nan, harvest_date=pd.NaT,
                           quality=0.0, flags="NO_MODEL,NO_SEASON"))
    p = one(credit.assess(fallow, as_of=AS_OF))
    assert p.decision == "decline" and "ALL_FALLOW" in codes(p, "decline")
    assert p.suggested_limit_cny is None
    tiny = table(est_row("F1", "A", "winter_wheat", 0.05))  # P10 value 595 CNY
    p = one(credit.assess(tiny, as_of=AS_OF))
    assert p.decision == "decline" and "LOW_DOWNSIDE_VALUE" in codes(p, "decline")
    small = table(est_row("F1", "A", "winter_wheat", 0.1))  # LTV cap 595 -> 500, haircut 0.5
    p = one(credit.assess(small.assign(flags="LOW_OBS"), as_of=AS_OF))
    assert p.decision == "decline" and "LIMIT_BELOW_MINIMUM" in codes(p, "decline")
    # a fallow field still fails on what matters: a read failure, a declared crop
    p = one(credit.assess(fallow.assign(flags="READ_FAILED"), as_of=AS_OF))
    assert p.decision == "refer" and "READ_FAILED" in codes(p, "refer")
    p = one(credit.assess(fallow.assign(declared_crop="winter_wheat"), as_of=AS_OF))
    assert p.decision == "refer" and "CROP_MISMATCH" in codes(p, "refer")
    assert credit.assess(fallow.iloc[:0], as_of=AS_OF) == []
    # fallow fields add nothing but do not block the others
    mixed = pd.concat([two_field_farmer(), fallow.assign(field_id="F3")], ignore_index=True)
    p = one(credit.assess(mixed, as_of=AS_OF))
    assert p.decision == "approve" and p.suggested_limit_cny == 6300
    assert p.total_area_mu == pytest.approx(22.5)


# --------------------------------------------------------------------------- boundary types
def _only_json_types(obj):
    if isinstance(obj, dict):
        return all(type(k) is str and _only_json_types(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_only_json_types(v) for v in obj)
    return obj is None or type(obj) in (str, int, float, bool)


def _only_stdlib(obj):
    if isinstance(obj, tuple):
        return all(_only_stdlib(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return all(_only_stdlib(getattr(obj, k)) for k in obj.__dataclass_fields__)
    return obj is None or type(obj) in (str, int, float, bool)


def test_no_numpy_or_pandas_types_leak():
    df = two_field_farmer()
    df["quality"] = df["quality"].astype(np.float32)
    df["season"] = [2025, 2025]
    p = one(credit.assess(df, as_of=pd.Timestamp(AS_OF, tz="UTC")))
    assert _only_stdlib(p) and _only_json_types(p.to_dict())
    e = p.fields[0]
    assert e.season == 2025 and type(e.season) is int
    assert e.n_obs == 18 and type(e.n_obs) is int
    assert e.harvest_date == "2025-06-10" and e.last_obs_date == "2025-04-21"
    assert e.price.price_cny_per_t == 2380.0 and e.price.price_type == "MSP"
    assert e.price.valid_from == "2025-01-01"
    assert json.loads(e.price.extra) == {"price": 2.38, "unit": "CNY/kg"}
    assert json.loads(e.calibration)["factor"] == 0.62
    assert e.scene_ids == tuple(sorted(SCENES.split(",")))


def test_input_errors():
    with pytest.raises(CreditInputError, match="value_cny_p10"):
        credit.assess(two_field_farmer().drop(columns=["value_cny_p10"]), as_of=AS_OF)
    with pytest.raises(CreditInputError, match="farmer_id"):
        credit.assess(two_field_farmer().drop(columns=["farmer_id"]), as_of=AS_OF)
    with pytest.raises(CreditInputError):
        credit.assess(two_field_farmer(), farmers=["F1"], as_of=AS_OF)
    with pytest.raises(CreditInputError, match="as_of"):
        credit.assess(two_field_farmer(), as_of="not a date")
    with pytest.raises(CropYieldError):
        credit.assess(two_field_farmer().to_dict("records"), as_of=AS_OF)


def test_deterministic_and_order_independent():
    df = pd.concat([two_field_farmer(), table(est_row("F3", "C", flags="LOW_OBS"),
                                              est_row("F4", "B", "summer_maize", 1.2))],
                   ignore_index=True)
    a = credit.assess(df, as_of=AS_OF)
    b = credit.assess(df.sample(frac=1.0, random_state=3).reset_index(drop=True), as_of=AS_OF)
    assert [p.farmer_id for p in a] == ["A", "B", "C"]
    assert [p.to_json() for p in a] == [p.to_json() for p in b]


# --------------------------------------------------------------------------- properties
CROPS = ("winter_wheat", "summer_maize")
FLAG_CHOICES = ("", "LOW_OBS", "CLOUDY_SEASON", "FIELD_TOO_SMALL", "CROP_UNCERTAIN",
                "EXTRAPOLATED", "LOW_OBS,CROP_UNCERTAIN")


@st.composite
def farmer_tables(draw, max_fields=4):
    n = draw(st.integers(1, max_fields))
    rows = []
    for i in range(n):
        crop = draw(st.sampled_from(CROPS))
        ha = draw(st.floats(0.1, 1.5))
        y50 = draw(st.floats(4.0, 9.0))
        f10 = draw(st.floats(0.5, 1.0))
        rows.append(est_row(f"F{i}", "A", crop, ha, y50 * f10, y50, y50 * 1.2,
                            flags=draw(st.sampled_from(FLAG_CHOICES)),
                            declared_area_mu=ha * 15 * draw(st.floats(0.85, 1.15))))
    return table(*rows)


policies = st.builds(Policy, ltv=st.floats(0.1, 0.9), insurance_fraction=st.floats(0.2, 0.8),
                     max_limit_cny=st.floats(2000, 50000),
                     limit_step_cny=st.sampled_from([1, 100, 500]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=farmer_tables(), policy=policies)
def test_property_limit_never_exceeds_any_cap(df, policy):
    p = one(credit.assess(df, as_of=AS_OF, policy=policy))
    assert p.decision in ("approve", "decline")
    if p.decision == "approve":
        f = p.factors
        lim = p.suggested_limit_cny
        assert 0 < lim <= f.stage_cost_cap_cny + 1e-6
        assert lim <= f.ltv_cap_cny + 1e-6 and lim <= f.insurance_cap_cny + 1e-6
        assert lim <= policy.max_limit_cny and lim % policy.limit_step_cny == 0
        assert lim <= min(f.stage_cost_cap_cny, f.ltv_cap_cny, f.insurance_cap_cny) \
            * f.haircut + 1e-6
        assert f.ltv_cap_cny == pytest.approx(policy.ltv * p.downside_value_cny_p10)
    else:
        assert p.suggested_limit_cny is None


def _limit(p):
    return p.suggested_limit_cny if p.decision == "approve" else 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=farmer_tables(), a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_property_limit_monotone_in_downside_value(df, a, b):
    lo, hi = sorted((a, b))

    def at(k):
        d = df.copy()  # P10 value moves between 0 and P50; nothing else changes
        d["value_cny_p10"] = d["value_cny_p50"] * k
        return one(credit.assess(d, as_of=AS_OF))

    p_lo, p_hi = at(lo), at(hi)
    assert p_lo.decision != "refer" and p_hi.decision != "refer"
    assert _limit(p_lo) <= _limit(p_hi)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=farmer_tables(), data=st.data())
def test_property_missing_or_forced_never_approves(df, data):
    i = data.draw(st.integers(0, len(df) - 1))
    kind = data.draw(st.sampled_from(["nan", "flag", "quality", "drop_dates"]))
    col = data.draw(st.sampled_from(["value_cny_p10", "value_cny_p50", "crop_prob", "quality",
                                     "area_mu"]))
    d = df.copy()
    if kind == "nan":
        d.loc[i, col] = np.nan
        if col == "area_mu":
            d.loc[i, "area_ha"] = np.nan
    elif kind == "flag":
        d.loc[i, "flags"] = data.draw(st.sampled_from(Policy().refer_flags))
    elif kind == "quality":
        d.loc[i, "quality"] = data.draw(st.floats(0.0, 0.49))
    else:
        d.loc[i, "scene_ids"] = ""
    p = one(credit.assess(d, as_of=AS_OF))
    assert p.decision == "refer" and p.suggested_limit_cny is None
    assert any(r.effect == "refer" for r in p.reasons)


@settings(max_examples=25, deadline=None)
@given(df=farmer_tables(), seed=st.integers(0, 2**16))
def test_property_deterministic(df, seed):
    a = credit.assess(df, as_of=AS_OF)
    b = credit.assess(df.sample(frac=1.0, random_state=seed), as_of=AS_OF)
    assert a == b and [p.to_json() for p in a] == [p.to_json() for p in b]


# --------------------------------------------------------------------------- monitoring
MON_AS_OF = pd.Timestamp("2025-04-30")


def _curve(days, sos, amp=0.6, base=0.2):
    d = (days - sos).days.to_numpy(float)
    return base + amp / (1.0 + np.exp(-(d - 25.0) / 6.0))


def monitoring_world(seed=1):
    """Winter wheat fields on the North China Plain, daily smoothed NDVI up to 2025-05-20.

    P1..P6 normal; W weak canopy; N never sown; E harvested early (mid-April collapse);
    S no clear observation for the last 25 days; O sown five weeks late; M maize (not yet
    in season, no alert expected).
    """
    rng = np.random.default_rng(seed)
    days = pd.date_range("2025-01-15", "2025-05-20", freq="D")
    spec = {f"P{i}": ("2025-03-01", 0.6) for i in range(1, 7)}
    spec.update(W=("2025-03-02", 0.3), E=("2025-02-28", 0.6), S=("2025-03-03", 0.6),
                O=("2025-04-08", 0.6), N=(None, 0.0), M=(None, 0.0))
    sos_jit = {f"P{i}": int(j) for i, j in zip(range(1, 7), rng.integers(-4, 5, 6), strict=True)}
    frames, est = [], []
    for fid, (sos, amp) in spec.items():
        s = None if sos is None else pd.Timestamp(sos) + pd.Timedelta(days=sos_jit.get(fid, 0))
        ndvi = np.full(len(days), 0.18) if s is None else _curve(days, s, amp)
        ndvi = ndvi + rng.normal(0, 0.01, len(days))
        gap = (np.arange(len(days)) % 5).astype(float)  # a clear view every 5 days
        if fid == "E":
            t = (days - pd.Timestamp("2025-04-15")).days.to_numpy(float)
            ndvi = np.where(t > 0, np.maximum(0.22, ndvi - 0.06 * t), ndvi)
        if fid == "S":
            late = days > pd.Timestamp("2025-04-05")
            gap[late] = (days[late] - pd.Timestamp("2025-04-05")).days
        if fid == "P1":  # a collapse after as_of must not be seen (no look-ahead)
            ndvi = np.where(days > MON_AS_OF, 0.2, ndvi)
        frames.append(pd.DataFrame({"field_id": fid, "time": days, "ndvi": ndvi,
                                    "support": 1.0, "gap_days": gap}))
        crop = "summer_maize" if fid == "M" else "winter_wheat"
        est.append({"field_id": fid, "farmer_id": f"farmer_{fid}", "season": 2025,
                    "crop": crop, "region": "north_china_plain", "sos": s if s is not None
                    else pd.NaT, "eos": pd.Timestamp("2025-06-01") if s is not None else pd.NaT,
                    "harvest_date": pd.Timestamp(HARVEST[crop])})
    return pd.concat(frames, ignore_index=True), pd.DataFrame(est)


def test_monitor_alerts_one_per_problem_field():
    series, est = monitoring_world()
    alerts = credit.monitor(series, est, as_of=MON_AS_OF)
    assert list(alerts.columns) == list(credit.ALERT_COLUMNS)
    got = {(r.field_id, r.code) for r in alerts.itertuples()}
    assert got == {("W", "VIGOUR_DROP"), ("N", "NOT_SOWN"), ("E", "EARLY_HARVEST"),
                   ("S", "STALE_DATA"), ("O", "PEER_OUTLIER")}
    by = alerts.set_index("field_id")
    assert by.loc["W", "expected"] == pytest.approx(0.8, abs=0.03)   # peers at day ~60
    assert by.loc["W", "value"] == pytest.approx(0.5, abs=0.03)
    assert by.loc["S", "value"] == 25 and by.loc["S", "expected"] == 15
    assert by.loc["E", "value"] < 0.3 and by.loc["E", "expected"] > 0.75
    assert by.loc["N", "value"] < 0.1 and by.loc["N", "expected"] > 0.5
    assert by.loc["W", "farmer_id"] == "farmer_W"
    assert (alerts["as_of"] == MON_AS_OF).all()
    assert set(alerts["severity"]) <= {"warning", "high"}
    assert alerts.attrs["rules"]["max_gap_days"] == 15.0
    assert all(r.field_id in r.message for r in alerts.itertuples())


def test_monitor_uses_phenology_and_is_deterministic():
    series, est = monitoring_world()
    phen = est[["field_id", "season", "sos", "eos"]].copy()
    a = credit.monitor(series, est, as_of=MON_AS_OF)
    b = credit.monitor(series.sample(frac=1.0, random_state=0),
                       est.drop(columns=["sos", "eos"]), as_of=MON_AS_OF, phenology=phen)
    pd.testing.assert_frame_equal(a, b)


def test_monitor_no_alert_on_healthy_or_extrapolated_values():
    series, est = monitoring_world()
    healthy = est[est["field_id"].str.startswith("P")]
    s = series[series["field_id"].isin(healthy["field_id"])]
    assert credit.monitor(s, healthy, as_of=MON_AS_OF).empty
    # the series stops on 2025-04-05 for P2: at as_of the value is extrapolated -> STALE only
    s2 = s[~((s["field_id"] == "P2") & (s["time"] > pd.Timestamp("2025-04-05")))]
    a = credit.monitor(s2, healthy, as_of=MON_AS_OF)
    assert list(zip(a["field_id"], a["code"], strict=True)) == [("P2", "STALE_DATA")]
    assert a["value"].iloc[0] == pytest.approx(25.0 + (pd.Timestamp("2025-04-05")
                                                       - pd.Timestamp("2025-01-15")).days % 5)
    # a field in the estimates but absent from the series
    a = credit.monitor(s, pd.concat([healthy, est[est["field_id"] == "M"].assign(
        field_id="Z")]), as_of=MON_AS_OF)
    z = a[a["field_id"] == "Z"]
    assert list(z["code"]) == ["STALE_DATA"] and np.isnan(z["value"].iloc[0])


def test_monitor_input_errors():
    series, est = monitoring_world()
    with pytest.raises(CreditInputError, match="gap_days"):
        credit.monitor(series.drop(columns=["gap_days"]), est, as_of=MON_AS_OF)
    with pytest.raises(CreditInputError, match="duplicate"):
        credit.monitor(pd.concat([series, series.head(3)]), est, as_of=MON_AS_OF)
    with pytest.raises(CreditInputError, match="as_of"):
        credit.monitor(series, est, as_of="soon")
    with pytest.raises(CreditInputError, match="crop"):
        credit.monitor(series, est.drop(columns=["crop"]), as_of=MON_AS_OF)


def test_price_record_from_value_price_table_lookup():
    rec = {"price_cny_per_kg": 2.38, "price_cny_per_t": 2380.0,
           "rule": "conservative: max(MSP, 0.9 x market)",
           "records": [{"crop": "winter_wheat", "region": "china", "price": 2.38,
                        "unit": "CNY/kg", "type": "minimum_purchase", "valid_from": "2024-10-01",
                        "source": "NDRC 1405"},
                       {"crop": "winter_wheat", "region": "china", "price": 2.5,
                        "unit": "CNY/kg", "type": "market", "valid_from": "2025-03-01",
                        "source": "sunsirs"}]}
    df = two_field_farmer()
    df["price_record"] = json.dumps(rec)
    df["price_cny_per_t"] = np.nan  # taken from the record then
    e = one(credit.assess(df, as_of=AS_OF)).fields[0]
    assert e.price.price_cny_per_t == 2380.0 and e.price.crop == "winter_wheat"
    assert e.price.price_type == "minimum_purchase+market"
    assert e.price.valid_from == "2025-03-01" and e.price.source == "NDRC 1405; sunsirs"
    assert json.loads(e.price.extra)["records"] == rec["records"]
    df["price_record"] = "{not json"
    e = one(credit.assess(df, as_of=AS_OF)).fields[0]
    assert json.loads(e.price.extra) == {"raw": "{not json"} and e.price.price_cny_per_t is None


def test_one_crop_year_of_evidence_per_field():
    """Wheat 2024 and 2025 plus maize 2025 on F1: 2024 is history, not collateral."""
    old = est_row("F1", "A", "winter_wheat", 0.6, 5.0, 6.0, 7.0, season=2024,
                  harvest_date=pd.Timestamp("2024-06-08"), flags="NO_PRICE")
    df = pd.concat([two_field_farmer(), table(old)], ignore_index=True)
    p = one(credit.assess(df, as_of=AS_OF))
    assert p.decision == "approve" and p.suggested_limit_cny == 6300  # as without 2024
    assert [r.field_id for r in p.reasons if r.code == "HISTORY_SEASON"] == ["F1"]
    assert {e.season for e in p.fields} == {2025}
    # double cropping on one field: both seasons of the crop year count
    dbl = table(est_row("F1", "A", "winter_wheat", 0.6, 5.0, 6.0, 7.0, season=1),
                est_row("F1", "A", "summer_maize", 0.6, 6.0, 7.5, 9.0, season=2))
    p = one(credit.assess(dbl, as_of=AS_OF))
    assert len(p.fields) == 2 and p.total_area_mu == pytest.approx(9.0)
    assert p.factors.stage_cost_cap_cny == pytest.approx(500 * 9 * 2)  # two seasons' inputs
    assert p.downside_value_cny_p10 == pytest.approx(0.6 * 5 * 2380 + 0.6 * 6 * 2300)


def test_season_filter():
    df = pd.concat([two_field_farmer(), table(est_row("F1", "A", season=2024,
                                                      flags="READ_FAILED"))],
                   ignore_index=True)
    p = one(credit.assess(df, as_of=AS_OF))  # the 2024 row (same harvest date) counts
    assert p.decision == "refer" and "READ_FAILED" in codes(p, "refer")
    p = one(credit.assess(df, as_of=AS_OF, season=2025))
    assert p.decision == "approve" and {e.season for e in p.fields} == {2025}
    assert one(credit.assess(df, as_of=AS_OF, season="2025")) == p  # a label of digits too


def test_season_is_an_integer():
    """Schema 2.0.0: the season is the estimates table's integer; digits and integral floats
    read as that integer, any other label is refused with a message."""
    for v in (2025, np.int64(2025), 2025.0, "2025", " 2025 "):
        e = credit.field_evidence(est_row("F1", "A", season=v))
        assert e.season == 2025 and type(e.season) is int
    assert credit.field_evidence(est_row("F1", "A", season=np.nan)).season is None
    for bad in ("2025b", 2025.5, "summer"):
        with pytest.raises(CreditInputError, match="not an integer"):
            credit.assess(table(est_row("F1", "A", season=bad)), as_of=AS_OF)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stale=st.sets(st.sampled_from(["P1", "P2", "P3", "W", "E", "O"]), min_size=1),
       gap=st.floats(15.5, 200.0))
def test_property_monitor_extrapolated_values_only_give_stale(stale, gap):
    series, est = monitoring_world()
    s = series.copy()
    at = (s["time"] == MON_AS_OF) & s["field_id"].isin(stale)
    s.loc[at, "gap_days"] = gap
    a = credit.monitor(s, est, as_of=MON_AS_OF)
    for fid in stale:
        rows = a[a["field_id"] == fid]
        assert list(rows["code"]) == ["STALE_DATA"] and rows["value"].iloc[0] == gap


def test_monitor_not_sown_from_crop_calendar():
    """Too few peers with an SOS: the registry calendar gives the expected window."""
    from cropyield.crops import Crop, CropCalendar, CropRegistry

    cal = CropCalendar(region="north_china_plain", sow_doy=(274, 298), sos_doy=(285, 75),
                       peak_doy=(95, 135), eos_doy=(138, 166), harvest_doy=(145, 170),
                       season_length_days=(225, 255))
    reg = CropRegistry({"winter_wheat": Crop(id="winter_wheat", name="winter wheat",
                                             calendars={"north_china_plain": cal})}, raw={})
    series, est = monitoring_world()
    keep = ["N", "P1"]
    s, e = series[series["field_id"].isin(keep)], est[est["field_id"].isin(keep)]
    a = credit.monitor(s, e, as_of=MON_AS_OF, registry=reg)
    assert list(zip(a["field_id"], a["code"], strict=True)) == [("N", "NOT_SOWN")]
    assert "2025-03-16" in a["message"].iloc[0]  # day 75, the latest expected green-up
    # before the window closes (+20 days margin) there is nothing to say
    early = credit.monitor(s, e, as_of="2025-03-30", registry=reg)
    assert early.empty
    # summer maize calendar (green-up by early July): not expected yet at the end of April
    cal_m = CropCalendar(region="north_china_plain", sow_doy=(155, 178), sos_doy=(168, 200),
                         peak_doy=(210, 250), eos_doy=(250, 285), harvest_doy=(262, 285),
                         season_length_days=(100, 118))
    reg_m = CropRegistry({"summer_maize": Crop(id="summer_maize", name="summer maize",
                                               calendars={"north_china_plain": cal_m})}, raw={})
    m = est[est["field_id"] == "M"]
    assert credit.monitor(series[series["field_id"] == "M"], m, as_of=MON_AS_OF,
                          registry=reg_m).empty
    late = credit.monitor(series[series["field_id"] == "M"], m, as_of="2025-05-20",
                          registry=reg_m)
    assert late.empty  # doy 140: still before the window (ends doy 200)


@st.composite
def doubtful_tables(draw, max_fields=5):
    """Farmer A with fields of random crop probability, some missing a value."""
    n = draw(st.integers(1, max_fields))
    rows = []
    for i in range(n):
        ha = draw(st.floats(0.1, 1.5))
        over = {"crop_prob": draw(st.sampled_from([0.3, 0.55, 0.7, 0.95]))}
        if draw(st.integers(0, 9)) == 0:
            over["value_cny_p10"] = np.nan
        rows.append(est_row(f"F{i}", "A", draw(st.sampled_from(CROPS)), ha, 5.0, 6.0, 7.0,
                            **over))
    return table(*rows)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=doubtful_tables())
def test_property_v11_limit_rests_only_on_confident_fields(df):
    p = one(credit.assess(df, as_of=AS_OF, policy=V11))
    doubtful = set(df.loc[df["crop_prob"] < V11.min_crop_prob, "field_id"])
    # a field with missing data is not excluded: it refers
    missing = set(df.loc[df["value_cny_p10"].isna(), "field_id"])
    assert set(p.excluded_fields) == doubtful - missing
    if df["value_cny_p10"].isna().any():  # missing data is never excluded, never approved
        assert p.decision == "refer" and "MISSING_DATA" in codes(p, "refer")
    if p.decision == "approve":
        kept = df[~df["field_id"].isin(doubtful)]
        assert doubtful != set(df["field_id"])
        assert df.loc[df["field_id"].isin(doubtful), "area_mu"].sum() \
            <= V11.max_excluded_share * df["area_mu"].sum() + 1e-9
        assert p.suggested_limit_cny <= V11.ltv * kept["value_cny_p10"].sum() + 1e-6
        assert p.factors.downside_value_cny == pytest.approx(kept["value_cny_p10"].sum())
    else:
        assert p.suggested_limit_cny is None
