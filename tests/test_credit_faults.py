"""Credit under hostile estimates (issue 18): out-of-range numbers are referred with a reason
code, never approved, and every profile assess returns passes its own schema and from_dict;
in-season monitoring of double-cropped fields follows the season in progress."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cropyield import credit
from cropyield.credit import CreditProfile, FieldEvidence

sys.path.insert(0, str(Path(__file__).parent))
from test_credit import AS_OF, est_row, table  # noqa: E402

jsonschema = pytest.importorskip("jsonschema")
VALIDATOR = jsonschema.Draft202012Validator(credit.json_schema())


def _check(profiles):
    for p in profiles:
        d = p.to_dict()
        VALIDATOR.validate(d)
        assert CreditProfile.from_dict(d) == p
        assert CreditProfile.from_json(p.to_json()) == p


@pytest.mark.parametrize("over, named", [
    (dict(yield_t_ha_p10=-5.0, yield_t_ha_p50=-4.0, yield_t_ha_p90=-3.0), "yield_t_ha_p10 -5"),
    (dict(price_cny_per_t=-2300.0), "price_cny_per_t -2300"),
    (dict(crop_prob=7.0), "crop_prob 7 is outside [0, 1]"),
    (dict(quality=9.0), "quality 9 is outside [0, 1]"),
    (dict(value_cny_p10=-1.0), "value_cny_p10 -1"),
    (dict(area_ha=-0.6, area_mu=-9.0), "area_ha -0.6"),
    (dict(value_cny_p50="lots"), "value_cny_p50 'lots' is not a finite number"),
    (dict(harvest_date="June-ish"), "harvest_date 'June-ish' is not a date"),
])
def test_out_of_range_estimates_are_referred_with_a_reason(over, named):
    ok = credit.assess(table(est_row("F1", "A")), as_of=AS_OF)[0]
    assert ok.decision == "approve"  # the same row without the fault is approved
    p = credit.assess(table(est_row("F1", "A", **over)), as_of=AS_OF)[0]
    assert p.decision == "refer" and p.suggested_limit_cny is None
    bad = [r for r in p.reasons if r.code == "INVALID_ESTIMATE"]
    assert bad and bad[0].effect == "refer" and bad[0].field_id == "F1"
    assert named in bad[0].message and "re-run" in bad[0].message
    _check([p])


def test_field_evidence_leaves_out_invalid_numbers():
    e = credit.field_evidence(est_row("F1", "A", crop_prob=7.0, yield_t_ha_p50=-4.0,
                                      price_cny_per_t=-1.0))
    assert e.crop_prob is None and e.yield_t_ha_p50 is None
    assert e.price is None or e.price.price_cny_per_t is None or e.price.price_cny_per_t >= 0
    assert FieldEvidence.from_dict(e.to_dict()) == e


def test_negative_declared_area_from_farmers_table_is_referred():
    farmers = pd.DataFrame({"field_id": ["F1"], "farmer_id": ["A"], "declared_area_mu": [-3.0]})
    p = credit.assess(table(est_row("F1", "A")), farmers=farmers, as_of=AS_OF)[0]
    assert p.decision == "refer" and any("declared_area_mu -3" in r.message for r in p.reasons)
    _check([p])


_NUMS = ["crop_prob", "quality", "area_ha", "area_mu", "declared_area_mu", "yield_t_ha_p10",
         "yield_t_ha_p50", "yield_t_ha_p90", "value_cny_p10", "value_cny_p50", "value_cny_p90",
         "price_cny_per_t", "n_obs"]
_hostile = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-10, 10), st.integers(-10**6, 10**6), st.just(None),
    st.sampled_from(["", "abc", "-1", "1e400", "7"]),
)


@st.composite
def hostile_tables(draw):
    rows = []
    for i in range(draw(st.integers(1, 4))):
        over = draw(st.dictionaries(st.sampled_from(_NUMS), _hostile, max_size=4))
        if draw(st.booleans()):
            over["harvest_date"] = draw(st.sampled_from(
                ["2025-06-10", "not a date", None, "1900-01-01", "2999-12-31"]))
        if draw(st.booleans()):
            over["flags"] = draw(st.sampled_from(["", "LOW_OBS", "NO_PRICE,OUT_OF_RANGE", "X"]))
        row = est_row(f"F{i}", draw(st.sampled_from(["A", "B"])))
        row.update(over)
        rows.append(row)
    df = pd.DataFrame(rows)
    return df


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=hostile_tables())
def test_property_every_profile_passes_its_schema(df):
    profiles = credit.assess(df, as_of=AS_OF)
    _check(profiles)
    for p in profiles:
        if p.decision == "approve":
            for e in p.fields:
                for col in ("crop_prob", "quality"):
                    v = getattr(e, col)
                    assert v is not None and 0 <= v <= 1
                assert e.value_cny_p10 is not None and e.value_cny_p10 >= 0
                assert np.isfinite(e.value_cny_p50)


# --------------------------------------------------------------------------- monitoring
DC_AS_OF = pd.Timestamp("2025-08-20")


def _sig(d, centre, width):
    return 1.0 / (1.0 + np.exp(-(d - centre) / width))


def double_crop_world(seed=3):
    """Wheat (sown ~15 Nov 2024, harvested ~5 June) then summer maize (sown ~12 July 2025)
    on the same fields; W's maize is weak. Daily smoothed NDVI up to as_of (20 August)."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("2024-10-01", DC_AS_OF, freq="D")
    frames, phen, est = [], [], []
    for k, fid in enumerate(["P1", "P2", "P3", "P4", "P5", "P6", "W"]):
        jit = int(rng.integers(-3, 4))
        sos1 = pd.Timestamp("2024-11-15") + pd.Timedelta(days=jit)
        eos1 = pd.Timestamp("2025-06-05") + pd.Timedelta(days=jit)
        sos2 = pd.Timestamp("2025-07-12") + pd.Timedelta(days=jit)
        d1 = (days - sos1).days.to_numpy(float)
        d2 = (days - sos2).days.to_numpy(float)
        dh = (days - eos1).days.to_numpy(float)
        amp2 = 0.3 if fid == "W" else 0.6
        ndvi = (0.2 + 0.55 * _sig(d1, 120, 10) * (1 - _sig(dh, -10, 4))
                + amp2 * _sig(d2, 25, 5) + rng.normal(0, 0.01, len(days)))
        gap = (np.arange(len(days)) % 5).astype(float)
        frames.append(pd.DataFrame({"field_id": fid, "time": days, "ndvi": ndvi,
                                    "support": 1.0, "gap_days": gap}))
        phen += [{"field_id": fid, "season": 1, "sos": sos1, "eos": eos1},
                 {"field_id": fid, "season": 2, "sos": sos2, "eos": pd.NaT}]
        est.append({"field_id": fid, "farmer_id": f"farmer_{fid}", "crop": "summer_maize",
                    "region": "north_china_plain"})
    return pd.concat(frames, ignore_index=True), pd.DataFrame(phen), pd.DataFrame(est)


def _day_of_season(alerts, fid):
    import re

    msg = alerts.set_index("field_id").loc[fid, "message"]
    return int(re.search(r"day (\d+) of season", msg).group(1))


def test_monitor_double_crop_uses_the_season_in_progress():
    series, phen, est = double_crop_world()
    sos2_w = phen[(phen["field_id"] == "W") & (phen["season"] == 2)]["sos"].iloc[0]
    # the estimates table has no season column: phenology's season in progress must be used
    alerts = credit.monitor(series, est, as_of=DC_AS_OF, phenology=phen)
    assert set(alerts["field_id"]) == {"W"} and alerts["code"].tolist() == ["VIGOUR_DROP"]
    assert _day_of_season(alerts, "W") == (DC_AS_OF - sos2_w).days  # ~39, not ~278
    # estimates per season, the first without an end date: the later season in progress wins
    est2 = pd.concat([est.assign(season=1, crop="winter_wheat"), est.assign(season=2)],
                     ignore_index=True)
    ph2 = phen.assign(eos=pd.NaT)
    alerts2 = credit.monitor(series, est2, as_of=DC_AS_OF, phenology=ph2)
    assert alerts2["code"].tolist() == ["VIGOUR_DROP"]
    assert _day_of_season(alerts2, "W") == (DC_AS_OF - sos2_w).days
