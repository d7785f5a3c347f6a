"""Credit adapter: what a bank's risk system consumes.

Records (frozen stdlib dataclasses, no pandas/numpy inside, exact JSON round-trip, JSON
Schema in ``docs/credit_schema.json``)::

    FieldEvidence   one field and season: crop, area, yield/value P10/P50/P90, lineage
    CreditProfile   one farmer: fields, totals, decision, limit, reasons, factors, window
    Policy          the lender's rules: LTV, stage cost per mu, insurance cap, haircuts...
    PriceRecord, Reason, Factors   parts of the above

Functions::

    assess(estimates, *, farmers=None, policy=None, as_of=None) -> list[CreditProfile]
    monitor(series, estimates, *, as_of, phenology=None) -> DataFrame of alerts
    json_schema(root="CreditProfile") -> dict (JSON Schema draft 2020-12)

Importing this package does not import pandas; :func:`assess` and :func:`monitor` do.
See ``docs/credit.md`` for the decision rules and reason codes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._records import (
    EXCLUDABLE_CODES,
    POLICY_PRESETS,
    SCHEMA_VERSION,
    CreditProfile,
    Factors,
    FieldEvidence,
    Policy,
    PriceRecord,
    Reason,
    json_schema,
    schema_document,
    schema_text,
    write_json_schema,
)

__all__ = [
    "SCHEMA_VERSION",
    "CreditProfile",
    "Factors",
    "FieldEvidence",
    "Policy",
    "EXCLUDABLE_CODES",
    "POLICY_PRESETS",
    "PriceRecord",
    "Reason",
    "json_schema",
    "schema_document",
    "schema_text",
    "write_json_schema",
    "assess",
    "field_evidence",
    "REASON_CODES",
    "monitor",
    "MonitorRules",
    "ALERT_CODES",
    "ALERT_COLUMNS",
]

_LAZY = {
    "assess": "_assess", "field_evidence": "_assess", "REASON_CODES": "_assess",
    "monitor": "_monitor", "MonitorRules": "_monitor", "ALERT_CODES": "_monitor",
    "ALERT_COLUMNS": "_monitor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cropyield.credit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from ._assess import REASON_CODES, assess, field_evidence  # noqa: F401
    from ._monitor import ALERT_CODES, ALERT_COLUMNS, MonitorRules, monitor  # noqa: F401
