"""Hostile JSON wherever the library parses JSON (issue 18): integers beyond float range,
5 000-digit integers and 100 000 nested brackets end in the library's own clear error
(CreditSchemaError, ModelError...), never RecursionError/ValueError/OverflowError."""

from __future__ import annotations

import json

import pytest

from cropyield import credit
from cropyield._io import loads_json
from cropyield.credit import CreditProfile, Policy, PriceRecord
from cropyield.errors import ConfigError, CreditSchemaError, ModelError

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "9" * 5000
BEYOND_FLOAT = "1" + "0" * 400   # 1e400 as an integer literal


def test_loads_json_bounds():
    with pytest.raises(ConfigError, match="more than 200 deep"):
        loads_json(DEEP)
    with pytest.raises(ConfigError, match="5,000 digits"):
        loads_json(f'{{"a": {HUGE_INT}}}')
    with pytest.raises(ConfigError, match="401 digits"):
        loads_json(f"[{BEYOND_FLOAT}]")
    with pytest.raises(ConfigError, match="not valid JSON.*line 1"):
        loads_json('{"a": ')
    # brackets inside strings do not count; ordinary documents parse as json.loads does
    text = json.dumps({"s": "[" * 500 + '\\"' + "{" * 500, "x": [1, 2.5, -3, None, [[]]]})
    assert loads_json(text) == json.loads(text)
    assert loads_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}


@pytest.mark.parametrize("payload, match", [
    (DEEP, "deep"), (HUGE_INT, "5,000 digits"), (BEYOND_FLOAT, "401 digits"),
])
def test_credit_records_from_json(payload, match):
    good = Policy().to_json()
    bad = good.replace('"ltv": 0.5', f'"ltv": {payload}', 1) if payload != DEEP else DEEP
    assert bad != good
    for cls in (Policy, CreditProfile, PriceRecord):
        with pytest.raises(CreditSchemaError, match=match):
            cls.from_json(bad)


def test_credit_from_dict_with_integers_beyond_float_range():
    d = Policy().to_dict()
    d["max_limit_cny"] = 10 ** 400
    with pytest.raises(CreditSchemaError, match="beyond float range"):
        Policy.from_dict(d)
    d = Policy().to_dict()
    d["limit_step_cny"] = 10 ** 400
    with pytest.raises(CreditSchemaError, match="beyond float range"):
        Policy.from_dict(d)


def test_credit_json_text_fields_are_bounded():
    with pytest.raises(CreditSchemaError, match="deep"):
        PriceRecord(price_cny_per_t=1.0, extra=DEEP)
    with pytest.raises(CreditSchemaError, match="digits"):
        PriceRecord(price_cny_per_t=1.0, extra=f'{{"n": {HUGE_INT}}}')


def test_estimates_json_columns_are_kept_as_text():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_credit import AS_OF, est_row, table

    row = est_row("F1", "A", price_record=DEEP, calibration=f'{{"n": {HUGE_INT}}}')
    p = credit.assess(table(row), as_of=AS_OF)[0]
    assert CreditProfile.from_json(p.to_json()) == p


@pytest.mark.parametrize("payload, match", [
    (DEEP, "deep"), (f'{{"kind": "lue", "x": {HUGE_INT}}}', "5,000 digits"),
])
def test_model_files(tmp_path, payload, match):
    from cropyield.identify import CropClassifier
    from cropyield.yieldmodel import YieldModel

    path = tmp_path / "model.json"
    path.write_text(payload)
    with pytest.raises(ModelError, match=match):
        YieldModel.from_json(path)
    with pytest.raises(ModelError, match=match):
        CropClassifier.load(path)
