"""Credit records: exact round-trip, JSON Schema, versioning and backward compatibility."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cropyield import credit
from cropyield.credit import (
    CreditProfile,
    FieldEvidence,
    Policy,
    PriceRecord,
    Reason,
    _records,
)
from cropyield.errors import ConfigError, CreditSchemaError

sys.path.insert(0, str(Path(__file__).parent))
from test_credit import AS_OF, est_row, farmer_tables, table, two_field_farmer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "credit"
GOLDEN = DATA / "profiles_v1.0.0.json"


# --------------------------------------------------------------------------- mini validator
def validate(instance, schema, root=None, path="$"):
    """Tiny JSON Schema (2020-12) validator for the keywords our schema uses.

    Independent of the library's own from_dict checks; ``jsonschema`` is used as well
    when installed (test below).
    """
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        validate(instance, root["$defs"][name], root, path)
    types = schema.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        ok = {
            "object": isinstance(instance, dict), "array": isinstance(instance, list),
            "string": isinstance(instance, str), "null": instance is None,
            "boolean": isinstance(instance, bool),
            "integer": isinstance(instance, int) and not isinstance(instance, bool),
            "number": isinstance(instance, (int, float)) and not isinstance(instance, bool),
        }
        assert any(ok[t] for t in types), f"{path}: {instance!r} is not {types}"
    if "enum" in schema:
        assert instance in schema["enum"], f"{path}: {instance!r} not in {schema['enum']}"
    if "const" in schema:
        assert instance == schema["const"], f"{path}: {instance!r} != {schema['const']!r}"
    if isinstance(instance, (int, float)) and not isinstance(instance, bool):
        if "minimum" in schema:
            assert instance >= schema["minimum"], f"{path}: {instance} < minimum"
        if "maximum" in schema:
            assert instance <= schema["maximum"], f"{path}: {instance} > maximum"
    if isinstance(instance, str) and "pattern" in schema:
        assert re.search(schema["pattern"], instance), f"{path}: {instance!r} !~ pattern"
    if "anyOf" in schema:
        errors = []
        for sub in schema["anyOf"]:
            try:
                validate(instance, sub, root, path)
                break
            except AssertionError as exc:
                errors.append(str(exc))
        else:
            raise AssertionError(f"{path}: no anyOf branch matched: {errors}")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in instance, f"{path}: missing required {key!r}"
        for key, value in instance.items():
            if key in props:
                validate(value, props[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                raise AssertionError(f"{path}: unexpected key {key!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(value, schema["additionalProperties"], root, f"{path}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, v in enumerate(instance):
            validate(v, schema["items"], root, f"{path}[{i}]")
    if "if" in schema:
        try:
            validate(instance, schema["if"], root, path)
            matched = True
        except AssertionError:
            matched = False
        branch = schema.get("then" if matched else "else")
        if branch:
            validate(instance, branch, root, path)


def _profiles():
    df = pd.concat([
        two_field_farmer(),
        table(est_row("F3", "B", "summer_maize", 1.2, flags="LOW_OBS", declared_area_mu=14.0)),
        table(est_row("F4", "C", "winter_wheat", 0.3, value_cny_p10=np.nan, flags="NO_PRICE")),
        table(est_row("F5", "D", "winter_wheat", 0.05)),
    ], ignore_index=True)
    return credit.assess(df, as_of=AS_OF)


# --------------------------------------------------------------------------- round-trip
def test_round_trip_all_records():
    ps = _profiles()
    assert [p.decision for p in ps] == ["approve", "approve", "refer", "decline"]
    for p in ps:
        d = p.to_dict()
        assert CreditProfile.from_dict(d) == p
        assert CreditProfile.from_json(p.to_json()) == p
        assert CreditProfile.from_json(p.to_json()).to_dict() == d
        assert json.loads(p.to_json()) == d
        for e in p.fields:
            assert FieldEvidence.from_json(e.to_json()) == e
    pol = Policy(ltv=0.6, flag_haircuts={"LOW_OBS": 0.4}, stage_cost_cny_per_mu={"x": 800})
    assert Policy.from_json(pol.to_json()) == pol and hash(pol) == hash(Policy.from_dict(
        pol.to_dict()))
    assert pol.haircut("LOW_OBS") == 0.4 and pol.stage_cost("x") == 800.0
    assert pol.stage_cost("unknown_crop") == pol.default_stage_cost_cny_per_mu


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=farmer_tables(), nan_at=st.integers(-1, 3))
def test_property_round_trip_and_schema_valid(df, nan_at):
    if 0 <= nan_at < len(df):
        df.loc[nan_at, "value_cny_p90"] = np.nan
        df.loc[nan_at, "crop_prob"] = np.nan
    schema = credit.json_schema()
    for p in credit.assess(df, as_of=AS_OF):
        d = p.to_dict()
        validate(d, schema)
        assert CreditProfile.from_json(p.to_json()) == p


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e12),
       st.text(max_size=20), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
def test_property_float_and_text_exact(x, text, extra):
    r = PriceRecord(price_cny_per_t=x, source=text, extra=extra)
    back = PriceRecord.from_json(r.to_json())
    assert back == r and back.price_cny_per_t == x and json.loads(back.extra) == extra


def test_jsonschema_library_agrees():
    jsonschema = pytest.importorskip("jsonschema")
    schema = credit.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    for p in _profiles():
        v.validate(p.to_dict())
    pv = jsonschema.Draft202012Validator(credit.json_schema("Policy"))
    pv.validate(Policy().to_dict())
    bad = _profiles()[2].to_dict()
    bad["suggested_limit_cny"] = 1000  # a referred profile with a limit
    assert not v.is_valid(bad)
    with pytest.raises(CreditSchemaError, match="fail-closed"):
        CreditProfile.from_dict(bad)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("decision"), "missing key 'decision'"),
    (lambda d: d.update(decision="maybe"), "not one of"),
    (lambda d: d.update(surprise=1), "unknown keys"),
    (lambda d: d.update(total_area_ha="1.0"), "expected a number"),
    (lambda d: d.update(suggested_limit_cny=6300.5), "expected an integer"),
    (lambda d: d.update(as_of="30/04/2025"), "ISO date"),
    (lambda d: d["fields"][0].update(crop_prob=1.5), "outside"),
    (lambda d: d["fields"][0].update(flags="LOW_OBS"), "expected an array"),
    (lambda d: d["reasons"][0].update(effect="shrug"), "not one of"),
    (lambda d: d.update(factors=[]), "expected an object"),
    (lambda d: d.update(total_area_ha=True), "expected a number"),
])
def test_from_dict_is_strict(mutate, message):
    d = copy.deepcopy(_profiles()[0].to_dict())
    mutate(d)
    with pytest.raises(CreditSchemaError, match=message):
        CreditProfile.from_dict(d)
    schema_ok = True
    try:
        validate(d, credit.json_schema())
    except AssertionError:
        schema_ok = False
    assert not schema_ok  # the published schema rejects it too


def test_records_are_frozen_and_hashable():
    p = _profiles()[0]
    with pytest.raises(AttributeError):
        p.decision = "refer"  # type: ignore[misc]
    assert isinstance(hash(p), int)
    assert FieldEvidence(field_id="x", flags=("B", "A", "B")).flags == ("A", "B")


def test_policy_validation():
    with pytest.raises(ConfigError, match="ltv"):
        Policy(ltv=1.5)
    with pytest.raises(ConfigError, match="flag_haircuts"):
        Policy(flag_haircuts={"LOW_OBS": 2.0})
    with pytest.raises(ConfigError, match="both"):
        Policy(refer_flags=("LOW_OBS",))
    with pytest.raises(ConfigError, match="area_refer_tolerance"):
        Policy(area_tolerance=0.6, area_refer_tolerance=0.5)
    with pytest.raises(CreditSchemaError, match="Policy.ltv"):
        Policy.from_dict({**Policy().to_dict(), "ltv": 3})


# --------------------------------------------------------------------------- versions
def test_unknown_major_version_rejected():
    d = _profiles()[0].to_dict()
    for v in ("3.0.0", "0.9.1"):
        with pytest.raises(CreditSchemaError, match="not supported"):
            CreditProfile.from_dict({**d, "schema_version": v})
    with pytest.raises(CreditSchemaError, match="MAJOR.MINOR.PATCH"):
        CreditProfile.from_dict({**d, "schema_version": "1.0"})
    with pytest.raises(CreditSchemaError, match="schema_version"):
        CreditProfile.from_dict({k: v for k, v in d.items() if k != "schema_version"})
    with pytest.raises(CreditSchemaError, match="not supported"):
        Policy.from_dict({**Policy().to_dict(), "schema_version": "3.1.0"})


def test_newer_minor_version_accepted_unknown_keys_ignored():
    d = _profiles()[0].to_dict()
    newer = {**copy.deepcopy(d), "schema_version": "2.7.0", "risk_score": 0.3}
    newer["fields"][0]["soil_moisture"] = 0.2
    p = CreditProfile.from_dict(newer)
    assert p == CreditProfile.from_dict(d)


def test_older_minor_version_accepted(monkeypatch):
    """Pretend the library is at 2.3.0 with a field added in 2.2.0: v1.0.0 records load,
    the new field takes its default; a 1.3.0 record must carry it."""
    monkeypatch.setattr(_records, "SCHEMA_VERSION", "2.3.0")
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Reason13(Reason):
        confidence: float | None = _records._f("added in 2.2.0", default=None,
                                               since="2.2.0")

    @dataclass(frozen=True)
    class Profile13(CreditProfile):
        overdue_days: int = _records._f("added in 2.2.0", default=0, since="2.2.0")

    d = json.loads(GOLDEN.read_text())[0]
    assert d["schema_version"] == "1.0.0"
    p = Profile13.from_dict(d)
    assert p.overdue_days == 0 and p.farmer_id == d["farmer_id"]
    assert p.suggested_limit_cny == d["suggested_limit_cny"]
    assert Reason13._from_mapping(d["reasons"][0], "r", (1, 0, 0)).confidence is None
    with pytest.raises(CreditSchemaError, match="missing key 'overdue_days'"):
        Profile13.from_dict(_upgraded(d, "2.3.0"))
    with pytest.raises(CreditSchemaError, match="missing key 'confidence'"):
        Reason13._from_mapping(d["reasons"][0], "r", (2, 3, 0))
    # v1.0 fields stay required in a v1.0 record
    with pytest.raises(CreditSchemaError, match="missing key 'library_version'"):
        CreditProfile.from_dict({k: v for k, v in d.items() if k != "library_version"})
    # and the schema marks only fields up to x.0 of the major version as required
    req = Profile13.json_schema()["$defs"]["Profile13"]["required"]
    assert "overdue_days" not in req and "decision" in req


# --------------------------------------------------------------------------- golden files
GOLDEN_11 = DATA / "profiles_v1.1.0.json"
GOLDEN_20 = DATA / "profiles_v2.0.0.json"


def _upgraded(d, version=None):
    """What a v1.x record reads as today: current schema_version everywhere, the fields
    added in 1.1.0 with their defaults, season labels of digits as integers (2.0.0)."""
    version = version or credit.SCHEMA_VERSION
    if isinstance(d, list):
        return [_upgraded(x, version) for x in d]
    if not isinstance(d, dict):
        return d
    out = {k: _upgraded(v, version) for k, v in d.items()}
    if "schema_version" in out:
        out["schema_version"] = version
    if isinstance(out.get("season"), str):
        out["season"] = int(out["season"])
    if "decision" in out:
        out.setdefault("excluded_fields", [])
    if "refer_flags" in out:
        for k, v in Policy().to_dict().items():
            out.setdefault(k, v)
    return out


def _profiles_v11():
    """The v1.0.0 golden inputs plus farmers with doubtful fields, under policy 1.1.0."""
    df = pd.concat([
        two_field_farmer(),
        table(est_row("F3", "B", "summer_maize", 1.2, flags="LOW_OBS", declared_area_mu=14.0)),
        table(est_row("F4", "C", "winter_wheat", 0.3, value_cny_p10=np.nan, flags="NO_PRICE")),
        table(est_row("F5", "D", "winter_wheat", 0.05)),
        # E: one doubtful field (crop probability 0.45) among two confident ones
        table(est_row("F6", "E", "winter_wheat", 0.6), est_row("F7", "E", "summer_maize", 0.5),
              est_row("F8", "E", "summer_maize", 0.2, crop_prob=0.45)),
        # G: its only field is doubtful
        table(est_row("F9", "G", "winter_wheat", 0.6, crop_prob=0.5)),
    ], ignore_index=True)
    return credit.assess(df, as_of=AS_OF, policy=Policy.preset("1.1.0"))


def test_golden_v1_profiles_still_load_exactly():
    """v1.0.0 records (an older minor version) load; they read as their 1.1.0 upgrade."""
    golden = json.loads(GOLDEN.read_text())
    assert {d["decision"] for d in golden} == {"approve", "refer", "decline"}
    for d in golden:
        assert d["schema_version"] == "1.0.0"
        assert isinstance(d["fields"][0]["season"], str)  # a 1.x label
        validate(_upgraded(d), credit.json_schema())
        assert CreditProfile.from_dict(d).to_dict() == _upgraded(d)
    pol = json.loads((DATA / "policy_v1.0.0.json").read_text())
    p = Policy.from_dict(pol)
    assert p.to_dict() == _upgraded(pol)
    assert p.exclude_codes == ()  # a stored 1.0.0 policy keeps referring doubtful fields


def test_golden_v1_profiles_reproduced_by_assess():
    """Same inputs, same profiles: a diff here is a behaviour change (regenerate on purpose
    and bump the policy/schema version as appropriate). Policy() is still policy 1.0.0."""
    golden = json.loads(GOLDEN.read_text())
    now = [p.to_dict() for p in _profiles()]
    for g, n in zip(_upgraded(golden), now, strict=True):
        g, n = dict(g), dict(n)
        g.pop("library_version"), n.pop("library_version")
        assert n == g


def test_golden_v11_profiles_load_and_reproduce():
    golden = json.loads(GOLDEN_11.read_text())
    for d in golden:
        assert d["schema_version"] == "1.1.0" and d["policy_version"] == "1.1.0"
        validate(_upgraded(d), credit.json_schema())
        assert CreditProfile.from_dict(d).to_dict() == _upgraded(d)
    now = [p.to_dict() for p in _profiles_v11()]
    for g, n in zip(_upgraded(golden), now, strict=True):
        g, n = dict(g), dict(n)
        g.pop("library_version"), n.pop("library_version")
        assert n == g
    by = {d["farmer_id"]: d for d in golden}
    assert by["E"]["decision"] == "approve" and by["E"]["excluded_fields"] == ["F8"]
    assert by["G"]["decision"] == "refer" and by["G"]["suggested_limit_cny"] is None
    pol = json.loads((DATA / "policy_v1.1.0.json").read_text())
    assert Policy.from_dict(pol).to_dict() == _upgraded(pol) == Policy.preset("1.1.0").to_dict()


def test_golden_v20_profiles_load_and_reproduce():
    """Schema 2.0.0: integer seasons; the file is what assess writes today."""
    golden = json.loads(GOLDEN_20.read_text())
    for d in golden:
        assert d["schema_version"] == "2.0.0"
        assert all(type(f["season"]) is int for f in d["fields"])
        validate(d, credit.json_schema())
        assert CreditProfile.from_dict(d).to_dict() == d
    now = [p.to_dict() for p in _profiles_v11()]
    for g, n in zip(golden, now, strict=True):
        g, n = dict(g), dict(n)
        g.pop("library_version"), n.pop("library_version")
        assert n == g


def test_v1_season_label_that_is_not_an_integer_is_refused():
    d = json.loads(GOLDEN_11.read_text())[0]
    d["fields"][0]["season"] = "2025b"
    with pytest.raises(CreditSchemaError, match=r"season.*'2025b' is not an integer"):
        CreditProfile.from_dict(d)
    d["fields"][0]["season"] = "2025"
    assert CreditProfile.from_dict(d).fields[0].season == 2025
    # a 2.x record must carry the integer
    d2 = CreditProfile.from_dict(d).to_dict()
    d2["fields"][0]["season"] = "2025"
    with pytest.raises(CreditSchemaError, match="season"):
        CreditProfile.from_dict(d2)


def test_published_schema_is_up_to_date():
    published = (ROOT / "docs" / "credit_schema.json").read_text(encoding="utf-8")
    assert published == credit.schema_text(), (
        "docs/credit_schema.json is stale: run `python -m cropyield.credit schema "
        "docs/credit_schema.json`")
    doc = json.loads(published)
    assert doc["x-schema-version"] == credit.SCHEMA_VERSION
    assert set(doc["$defs"]) == {"CreditProfile", "FieldEvidence", "Policy", "PriceRecord",
                                 "Reason", "Factors"}
    # every money and area field states its unit in the description
    fe = doc["$defs"]["FieldEvidence"]["properties"]
    assert "[CNY]" in fe["value_cny_p10"]["description"]
    assert "[t/ha]" in fe["yield_t_ha_p50"]["description"]


def test_schema_cli_writes_same_text(tmp_path):
    out = tmp_path / "s.json"
    subprocess.run([sys.executable, "-m", "cropyield.credit", "schema", str(out)], check=True,
                   timeout=60)
    assert out.read_text(encoding="utf-8") == credit.schema_text()


def test_import_does_not_need_pandas():
    code = ("import sys; import cropyield.credit as c; "
            "c.Policy(); assert 'pandas' not in sys.modules, 'pandas imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- risk service
def test_example_risk_service_runs_on_demo_like_output(tmp_path):
    ps = _profiles()
    (tmp_path / "credit_profiles.json").write_text(
        json.dumps([p.to_dict() for p in ps], indent=1, sort_keys=True))
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "risk_service.py"),
                          str(tmp_path), "--portfolio-cap", "8000"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    by = {d["farmer_id"]: d for d in out["decisions"]}
    assert by["A"]["bank_decision"] == "approve" and by["A"]["amount_cny"] == 6300
    # B was approved for 3400 by the library, but the portfolio cap leaves 1700
    assert by["B"]["bank_decision"] == "approve" and by["B"]["amount_cny"] == 1700
    assert by["C"]["bank_decision"] == "refer" and by["C"]["amount_cny"] == 0
    assert by["D"]["bank_decision"] == "decline"
    assert out["portfolio_total_cny"] == 8000


def test_example_risk_service_rejects_tampered_profile(tmp_path):
    d = _profiles()[2].to_dict()
    d["suggested_limit_cny"] = 99999  # a referral with a limit smuggled in
    (tmp_path / "credit_profiles.json").write_text(json.dumps([d]))
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "risk_service.py"),
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "fail-closed" in res.stderr


def test_example_risk_service_from_estimates_parquet(tmp_path):
    df = two_field_farmer()
    df.to_parquet(tmp_path / "estimates.parquet", index=False)
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "risk_service.py"),
                          str(tmp_path), "--as-of", AS_OF], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["decisions"][0]["amount_cny"] == 6300
