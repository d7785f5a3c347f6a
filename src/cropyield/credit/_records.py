"""Frozen, stdlib-only credit records with exact JSON round-trip and a JSON Schema.

Every record is a frozen :func:`dataclasses.dataclass` whose fields hold only ``str``,
``int``, ``float``, ``bool``, ``None``, tuples and other records. Serialisation, parsing and
the JSON Schema are all derived from the same field declarations (type hints plus
``metadata``), so they cannot drift apart.

Versioning rules (semver on :data:`SCHEMA_VERSION`)
--------------------------------------------------
* patch: documentation only;
* minor: new *optional* fields (declared with ``since="1.x.0"`` and a default); older minor
  versions are accepted by :meth:`from_dict` and upgraded; records of a newer minor version
  are accepted too and keys unknown to this version are ignored (logged);
* major: anything else; :meth:`from_dict` reads the current major version and the ones in
  :data:`_READABLE_MAJORS` (upgraded on reading, see below) and rejects any other with
  :class:`~cropyield.errors.CreditSchemaError`.

History
-------
* 2.0.0: ``FieldEvidence.season`` is an integer (the ``season`` column of the estimates
  table) instead of a string label. 1.x records are read and upgraded: a season label of
  digits (``"2025"``, ``"1"``) becomes that integer; any other label is refused with
  :class:`~cropyield.errors.CreditSchemaError`.
* 1.1.0: ``CreditProfile.excluded_fields`` and the policy's exclusion settings.
* 1.0.0: first layout.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Literal, Mapping

from .._io import loads_json
from .._log import logger
from ..errors import FLAGS, ConfigError, CreditSchemaError

__all__ = [
    "SCHEMA_VERSION",
    "PriceRecord",
    "FieldEvidence",
    "Reason",
    "Factors",
    "CreditProfile",
    "Policy",
    "EXCLUDABLE_CODES",
    "POLICY_PRESETS",
    "json_schema",
    "schema_document",
    "schema_text",
    "write_json_schema",
]

#: Version of every credit record's layout (semver, see module docstring).
SCHEMA_VERSION = "2.0.0"
#: Older major versions that :meth:`_Record.from_dict` still reads (and upgrades).
_READABLE_MAJORS = (1,)
_SCHEMA_ID = "https://cropyield.invalid/schemas/credit/{version}/credit_schema.json"
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


# --------------------------------------------------------------------------- field helpers
def _f(desc: str, *, default: Any = MISSING, unit: str | None = None, fmt: str | None = None,
       minimum: float | None = None, maximum: float | None = None, kind: str | None = None,
       since: str = "1.0.0", default_factory: Any = MISSING) -> Any:
    """Declare a record field with the metadata used by (de)serialisation and the schema.

    ``kind`` is ``"json"`` for a free JSON object kept as canonical JSON text, ``"mapping"``
    for a ``{str: number}`` object kept as a sorted tuple of pairs.
    """
    md = {"description": desc, "unit": unit, "format": fmt, "minimum": minimum,
          "maximum": maximum, "kind": kind, "since": since}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=md)
    if default is MISSING:
        return field(metadata=md)
    return field(default=default, metadata=md)


def _parse_version(v: Any, what: str) -> tuple[int, int, int]:
    m = _VERSION_RE.match(v) if isinstance(v, str) else None
    if not m:
        raise CreditSchemaError(
            f"{what}: schema_version must be a 'MAJOR.MINOR.PATCH' string, got {v!r}")
    return int(m[1]), int(m[2]), int(m[3])


def canonical_json(obj: Any) -> str:
    """Canonical JSON text of ``obj`` (sorted keys, no spaces, NaN refused)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False)


def _hints(cls) -> dict[str, Any]:
    cache = cls.__dict__.get("_hints_cache")
    if cache is None:
        cache = typing.get_type_hints(cls)
        type.__setattr__(cls, "_hints_cache", cache)
    return cache


@functools.lru_cache(maxsize=None)
def _origin_args(tp) -> tuple[Any, tuple]:
    return typing.get_origin(tp), typing.get_args(tp)


@functools.lru_cache(maxsize=None)
def _optional_inner(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _float(v: int | float, where: str) -> float:
    """``float(v)``; an integer beyond float range is a CreditSchemaError, not OverflowError."""
    try:
        return float(v)
    except OverflowError:
        n = len(str(abs(v))) if abs(v) < 10 ** 4000 else "> 4000"
        raise CreditSchemaError(f"{where}: an integer of {n} digits is beyond float range; "
                                "the record is corrupt or not from cropyield") from None


def _check_number(x: float, md: Mapping[str, Any], where: str) -> None:
    if not math.isfinite(x):
        raise CreditSchemaError(f"{where}: {x!r} is not a finite number; use null for missing")
    lo, hi = md.get("minimum"), md.get("maximum")
    if lo is not None and x < lo or hi is not None and x > hi:
        raise CreditSchemaError(f"{where}: {x!r} outside [{lo}, {hi}]")


def _value_in(tp, value: Any, md: Mapping[str, Any], where: str,
              ver: tuple[int, int, int] | None) -> Any:
    """Convert a JSON value to the Python value of a field of type ``tp`` (strict)."""
    optional, inner = _optional_inner(tp)
    if value is None:
        if optional:
            return None
        raise CreditSchemaError(f"{where}: null is not allowed here")
    tp = inner
    kind = md.get("kind")
    if kind == "json":
        if isinstance(value, str):
            value = loads_json(value, what=where, error=CreditSchemaError)
        if not isinstance(value, dict):
            raise CreditSchemaError(f"{where}: expected a JSON object, got {type(value).__name__}")
        try:
            return canonical_json(value)
        except (ValueError, RecursionError, OverflowError) as exc:
            raise CreditSchemaError(f"{where}: {type(exc).__name__}: {str(exc)[:120]}") from None
    if kind == "mapping":
        if not isinstance(value, Mapping):
            raise CreditSchemaError(f"{where}: expected an object of numbers")
        out = []
        for k in sorted(value):
            v = value[k]
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise CreditSchemaError(f"{where}.{k}: expected a number, got {v!r}")
            fv = _float(v, f"{where}.{k}")
            _check_number(fv, md, f"{where}.{k}")
            out.append((k, fv))
        return tuple(out)
    origin, args = _origin_args(tp)
    if origin is Literal:
        if value not in args:
            raise CreditSchemaError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        (item_tp, _ell) = args
        if not isinstance(value, (list, tuple)):
            raise CreditSchemaError(f"{where}: expected an array, got {type(value).__name__}")
        return tuple(_value_in(item_tp, v, {}, f"{where}[{i}]", ver)
                     for i, v in enumerate(value))
    if isinstance(tp, type) and issubclass(tp, _Record):
        if not isinstance(value, Mapping):
            raise CreditSchemaError(f"{where}: expected an object, got {type(value).__name__}")
        return tp._from_mapping(value, where, ver)
    if tp is bool:
        if not isinstance(value, bool):
            raise CreditSchemaError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CreditSchemaError(f"{where}: expected an integer, got {value!r}")
        _check_number(_float(value, where), md, where)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CreditSchemaError(f"{where}: expected a number, got {value!r}")
        value = _float(value, where)
        _check_number(value, md, where)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise CreditSchemaError(f"{where}: expected a string, got {value!r}")
        if md.get("format") == "date":
            try:
                if not _DATE_RE.match(value):
                    raise ValueError
                _dt.date.fromisoformat(value)
            except ValueError:
                raise CreditSchemaError(
                    f"{where}: expected an ISO date 'YYYY-MM-DD', got {value!r}") from None
        return value
    raise TypeError(f"unsupported field type {tp!r} at {where}")  # pragma: no cover


def _value_out(tp, value: Any, md: Mapping[str, Any]) -> Any:
    if value is None:
        return None
    kind = md.get("kind")
    if kind == "json":
        return json.loads(value)
    if kind == "mapping":
        return {k: v for k, v in value}
    _, tp = _optional_inner(tp)
    origin, args = _origin_args(tp)
    if origin is tuple:
        item_tp = args[0]
        return [_value_out(item_tp, v, {}) for v in value]
    if isinstance(value, _Record):
        return value.to_dict()
    return value


def _schema_of(tp, md: Mapping[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    optional, inner = _optional_inner(tp)
    kind = md.get("kind")
    if kind == "json":
        s: dict[str, Any] = {"type": "object"}
    elif kind == "mapping":
        num: dict[str, Any] = {"type": "number"}
        if md.get("minimum") is not None:
            num["minimum"] = md["minimum"]
        if md.get("maximum") is not None:
            num["maximum"] = md["maximum"]
        s = {"type": "object", "additionalProperties": num}
    elif typing.get_origin(inner) is Literal:
        s = {"type": "string", "enum": list(typing.get_args(inner))}
    elif typing.get_origin(inner) is tuple:
        s = {"type": "array", "items": _schema_of(typing.get_args(inner)[0], {}, defs)}
    elif isinstance(inner, type) and issubclass(inner, _Record):
        inner._register_schema(defs)
        s = {"$ref": f"#/$defs/{inner.__name__}"}
    else:
        s = {"type": {str: "string", int: "integer", float: "number", bool: "boolean"}[inner]}
        if md.get("format"):
            s["format"] = md["format"]
            if md["format"] == "date":
                s["pattern"] = _DATE_RE.pattern
        for key in ("minimum", "maximum"):
            if md.get(key) is not None:
                s[key] = md[key]
    if optional:
        if "$ref" in s:
            s = {"anyOf": [s, {"type": "null"}]}
        else:
            s = dict(s)
            s["type"] = [s["type"], "null"]
            if "enum" in s:
                s["enum"] = [*s["enum"], None]
    desc = md.get("description")
    if desc:
        unit = md.get("unit")
        s = {"description": f"{desc} [{unit}]" if unit else desc, **s}
    return s


class _Record:
    """Mixin: dict/JSON round-trip and JSON Schema for frozen dataclass records."""

    _versioned: ClassVar[bool] = False  # records carrying a top-level schema_version
    _doc: ClassVar[str] = ""
    if typing.TYPE_CHECKING:  # every subclass is a dataclass (dataclasses.fields applies)
        __dataclass_fields__: ClassVar[dict[str, Any]]

    def __post_init__(self) -> None:
        # canonical forms, so that equal content means equal records (exact round-trip)
        for f in fields(self):
            kind = f.metadata.get("kind")
            value = getattr(self, f.name)
            if kind == "json" and value is not None:
                obj = (loads_json(value, what=f"{type(self).__name__}.{f.name}",
                                  error=CreditSchemaError) if isinstance(value, str) else value)
                if not isinstance(obj, Mapping):
                    raise CreditSchemaError(f"{type(self).__name__}.{f.name} must be a JSON "
                                            f"object, got {value!r}")
                object.__setattr__(self, f.name, canonical_json(dict(obj)))
            elif _origin_args(_hints(type(self))[f.name])[0] is tuple and not kind \
                    and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    # ---- output
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (str/int/float/bool/None/list/dict only)."""
        hints = _hints(type(self))
        return {f.name: _value_out(hints[f.name], getattr(self, f.name), f.metadata)
                for f in fields(self)}

    def to_json(self, *, indent: int | None = None) -> str:
        """JSON text of :meth:`to_dict` (keys in declaration order, NaN refused)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)

    # ---- input
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build the record from :meth:`to_dict` output (strict types, version checked).

        Raises
        ------
        CreditSchemaError
            A key is missing, unknown, of the wrong type or out of range, or the record's
            ``schema_version`` has an unsupported major version.
        """
        if not isinstance(data, Mapping):
            raise CreditSchemaError(
                f"{cls.__name__}: expected an object, got {type(data).__name__}")
        return cls._from_mapping(data, cls.__name__, None)

    @classmethod
    def from_json(cls, text: str | bytes):
        """Inverse of :meth:`to_json`."""
        data = loads_json(text, what=f"{cls.__name__} JSON", error=CreditSchemaError)
        return cls.from_dict(data)

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], where: str,
                      ver: tuple[int, int, int] | None):
        """``ver``: version of the enclosing record (None: standalone, i.e. current)."""
        cur = _parse_version(SCHEMA_VERSION, "library")
        if "schema_version" in data:
            own = _parse_version(data["schema_version"], where)
            if own[0] != cur[0] and own[0] not in _READABLE_MAJORS:
                raise CreditSchemaError(
                    f"{where}: schema_version {data['schema_version']} is not supported by "
                    f"this cropyield (reads "
                    f"{' and '.join(f'{m}.x.y' for m in (*_READABLE_MAJORS, cur[0]))} "
                    "records); convert the record or "
                    f"install a cropyield release that reads major version {own[0]}")
            ver = own if ver is None else max(ver, own)
        elif cls._versioned:
            raise CreditSchemaError(f"{where}: missing 'schema_version' (expected "
                                    f"{cur[0]}.x.y)")
        ver = ver or cur
        newer = ver[0] == cur[0] and ver[:2] > cur[:2]
        if ver[0] < cur[0]:
            data = cls._upgrade(data, ver, where)
        hints = _hints(cls)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            if newer:
                logger.info("%s: ignoring keys %s of a newer minor schema version",
                            where, unknown)
            else:
                raise CreditSchemaError(f"{where}: unknown keys {unknown}; allowed: "
                                        f"{sorted(known)}")
        kwargs: dict[str, Any] = {}
        for name, f in known.items():
            if name == "schema_version":
                continue  # upgraded to the current version
            if name not in data:
                since = _parse_version(f.metadata.get("since", "1.0.0"), "since")
                if since[:2] > ver[:2] and (f.default is not MISSING
                                            or f.default_factory is not MISSING):
                    continue  # added by a later minor version than the record's: default
                raise CreditSchemaError(f"{where}: missing key {name!r}")
            kwargs[name] = _value_in(hints[name], data[name], f.metadata, f"{where}.{name}",
                                     ver)
        try:
            return cls(**kwargs)
        except (ConfigError, ValueError, TypeError) as exc:
            if isinstance(exc, CreditSchemaError):
                raise
            raise CreditSchemaError(f"{where}: {exc}") from None

    @classmethod
    def _upgrade(cls, data: Mapping[str, Any], ver: tuple[int, int, int],
                 where: str) -> Mapping[str, Any]:
        """The keys of a record of an older major version ``ver``, as the current one."""
        return data

    # ---- schema
    @classmethod
    def _register_schema(cls, defs: dict[str, Any]) -> None:
        if cls.__name__ in defs:
            return
        defs[cls.__name__] = {}  # placeholder against recursion
        hints = _hints(cls)
        props = {f.name: _schema_of(hints[f.name], f.metadata, defs) for f in fields(cls)}
        major = _parse_version(SCHEMA_VERSION, "library")[0]
        if "schema_version" in props:
            props["schema_version"] = {
                "description": "semver of the record layout; readers accept the same major "
                               "(and older majors they upgrade)",
                "type": "string", "pattern": rf"^{major}\.\d+\.\d+$"}
        # required: the fields every record of this major version carries (x.0 and older)
        required = [f.name for f in fields(cls)
                    if _parse_version(f.metadata.get("since", "1.0.0"), "since")[:2]
                    <= (major, 0)]
        doc = " ".join((cls._doc or (cls.__doc__ or "").strip().split("\n\n")[0]).split())
        defs[cls.__name__] = {"type": "object", "description": doc, "properties": props,
                              "required": required, "additionalProperties": False,
                              **cls._schema_extra()}

    @classmethod
    def _schema_extra(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON Schema (draft 2020-12) of this record's :meth:`to_dict` output."""
        return _document(cls)


def schema_document(root: str = "CreditProfile") -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the credit records, rooted at ``root``.

    All records are in ``$defs``; the document validates one ``root`` record (use
    ``{"type": "array", "items": {"$ref": "...#/$defs/CreditProfile"}}`` for a list).
    """
    classes = {c.__name__: c for c in (CreditProfile, FieldEvidence, Policy, PriceRecord,
                                       Reason, Factors)}
    if root not in classes:
        raise CreditSchemaError(f"unknown record {root!r}; known: {sorted(classes)}")
    return _document(classes[root])


def _document(root_cls) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    for c in (CreditProfile, FieldEvidence, Policy, PriceRecord, Reason, Factors, root_cls):
        c._register_schema(defs)
    root = root_cls.__name__
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": _SCHEMA_ID.format(version=SCHEMA_VERSION),
        "title": f"cropyield credit record: {root}",
        "description": f"cropyield credit records, schema_version {SCHEMA_VERSION}. "
                       "Money in CNY (see 'currency'), areas in ha and mu (1 mu = 1/15 ha), "
                       "yields in t/ha at the stated basis, dates ISO 'YYYY-MM-DD'.",
        "x-schema-version": SCHEMA_VERSION,
        "$ref": f"#/$defs/{root}",
        "$defs": {k: defs[k] for k in sorted(defs)},
    }


def json_schema(root: str = "CreditProfile") -> dict[str, Any]:
    """Alias of :func:`schema_document` (the published ``docs/credit_schema.json``)."""
    return schema_document(root)


def schema_text(root: str = "CreditProfile") -> str:
    """The text of ``docs/credit_schema.json`` (2-space indent, trailing newline)."""
    return json.dumps(schema_document(root), indent=2, ensure_ascii=False) + "\n"


def write_json_schema(path: str, root: str = "CreditProfile") -> None:
    """Write :func:`schema_text` to ``path`` (regenerates ``docs/credit_schema.json``)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(schema_text(root))


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class PriceRecord(_Record):
    """The price used to value a field's production, with where it came from."""

    price_cny_per_t: float | None = _f("price per tonne at the yield basis", unit="CNY/t",
                                       minimum=0.0, default=None)
    crop: str | None = _f("crop id the price is for", default=None)
    region: str | None = _f("region id the price is for", default=None)
    price_type: str | None = _f("'MSP' (minimum support price), 'market', 'contract'...",
                                default=None)
    valid_from: str | None = _f("first day the price applies", fmt="date", default=None)
    source: str | None = _f("citation of the price source", default=None)
    extra: str = _f("other keys of the upstream price record", kind="json", default="{}")


@dataclass(frozen=True)
class Reason(_Record):
    """One reason code with a human-readable message and what it did to the decision."""

    code: str = _f("machine-readable reason code (see docs/credit.md)")
    message: str = _f("human-readable explanation")
    effect: Literal["refer", "decline", "haircut", "cap", "info"] = _f(
        "what the reason did: forced 'refer', caused 'decline', applied a 'haircut', was the "
        "binding 'cap', or 'info' only", default="info")
    field_id: str | None = _f("field the reason is about (null: the whole profile)",
                              default=None)
    factor: float | None = _f("the number behind the reason (haircut, ratio, days...)",
                              default=None)


@dataclass(frozen=True)
class FieldEvidence(_Record):
    """Evidence for one field and season: crop, area, yield and value intervals, lineage."""

    field_id: str = _f("field identifier")
    farmer_id: str | None = _f("farmer (applicant) identifier", default=None)
    season: int | None = _f("season of the estimate: the integer season column of the "
                            "estimates table (a string label before schema 2.0.0)",
                            default=None)
    crop: str | None = _f("identified crop id (registry id)", default=None)
    crop_prob: float | None = _f("probability of the identified crop", minimum=0.0,
                                 maximum=1.0, default=None)
    declared_crop: str | None = _f("crop declared by the farmer", default=None)
    area_ha: float | None = _f("measured area", unit="ha", minimum=0.0, default=None)
    area_mu: float | None = _f("measured area", unit="mu", minimum=0.0, default=None)
    declared_area_mu: float | None = _f("declared (land-rights) area", unit="mu", minimum=0.0,
                                        default=None)
    yield_basis: str | None = _f("reporting basis of yields, e.g. 'grain@12.5%'", default=None)
    yield_t_ha_p10: float | None = _f("yield, 10th percentile", unit="t/ha", minimum=0.0,
                                      default=None)
    yield_t_ha_p50: float | None = _f("yield, median", unit="t/ha", minimum=0.0, default=None)
    yield_t_ha_p90: float | None = _f("yield, 90th percentile", unit="t/ha", minimum=0.0,
                                      default=None)
    value_cny_p10: float | None = _f("output value, 10th percentile (downside)", unit="CNY",
                                     minimum=0.0, default=None)
    value_cny_p50: float | None = _f("output value, median (expected)", unit="CNY",
                                     minimum=0.0, default=None)
    value_cny_p90: float | None = _f("output value, 90th percentile", unit="CNY", minimum=0.0,
                                     default=None)
    price: PriceRecord | None = _f("price record used for the value", default=None)
    harvest_date: str | None = _f("expected harvest date", fmt="date", default=None)
    last_obs_date: str | None = _f("date of the latest imagery behind the estimate",
                                   fmt="date", default=None)
    n_obs: int | None = _f("clear observations in the season", minimum=0, default=None)
    quality: float | None = _f("data quality score", minimum=0.0, maximum=1.0, default=None)
    flags: tuple[str, ...] = _f("data flags (see cropyield.errors.FLAGS), sorted",
                                default=())
    scene_ids: tuple[str, ...] = _f("STAC item ids used (lineage)", default=())
    model_version: str | None = _f("yield model version (lineage)", default=None)
    calibration: str = _f("yield calibration record (lineage)", kind="json", default="{}")
    schema_version: str = _f("record layout version", default=SCHEMA_VERSION)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "flags", tuple(sorted(set(self.flags))))

    @classmethod
    def _upgrade(cls, data: Mapping[str, Any], ver: tuple[int, int, int],
                 where: str) -> Mapping[str, Any]:
        """1.x: ``season`` was a string label; digits become the integer (2.0.0)."""
        season = data.get("season")
        if ver[0] >= 2 or not isinstance(season, str):
            return data
        if not re.fullmatch(r"[0-9]{1,9}", season.strip()):
            raise CreditSchemaError(
                f"{where}.season: the {'.'.join(map(str, ver))} season label {season!r} is not "
                "an integer; schema 2.0.0 stores the estimates table's integer season. Set "
                "'season' to that integer (or null) and read the record again")
        return {**data, "season": int(season.strip())}


@dataclass(frozen=True)
class Factors(_Record):
    """The limit arithmetic, every number of it (CNY unless stated)."""

    area_mu: float = _f("area used for the stage-cost need (min of measured and declared)",
                        unit="mu", minimum=0.0)
    stage_cost_cap_cny: float = _f("stage cost need: sum of cost per mu x area", unit="CNY",
                                   minimum=0.0)
    downside_value_cny: float = _f("sum of field value P10", unit="CNY", minimum=0.0)
    ltv: float = _f("loan-to-value on the downside value", minimum=0.0, maximum=1.0)
    ltv_cap_cny: float = _f("ltv x downside value", unit="CNY", minimum=0.0)
    expected_value_cny: float = _f("sum of field value P50", unit="CNY", minimum=0.0)
    insurance_fraction: float = _f("insurable fraction of output value", minimum=0.0,
                                   maximum=1.0)
    insurance_cap_cny: float = _f("insurance_fraction x expected value", unit="CNY",
                                  minimum=0.0)
    binding_cap: Literal["stage_cost", "ltv", "insurance", "max_limit"] = _f(
        "the smallest cap (ties: stage_cost, ltv, insurance, max_limit order)")
    haircut: float = _f("quality haircut (min over flag haircuts)", minimum=0.0, maximum=1.0)
    haircut_flag: str | None = _f("flag that set the haircut (null: none)")
    max_limit_cny: float = _f("policy maximum limit", unit="CNY", minimum=0.0)
    limit_before_rounding_cny: float = _f("min(caps) x haircut, capped at max_limit",
                                          unit="CNY", minimum=0.0)
    limit_step_cny: int = _f("limits are rounded down to a multiple of this", unit="CNY",
                             minimum=1)


@dataclass(frozen=True)
class CreditProfile(_Record):
    """Farmer-level credit profile: evidence, decision, limit, reasons, repayment window.

    ``suggested_limit_cny`` is set only when ``decision == "approve"`` (fail-closed: a
    referred or declined profile never carries a limit).
    """

    farmer_id: str = _f("farmer (applicant) identifier")
    as_of: str = _f("date the profile was assessed for", fmt="date")
    decision: Literal["approve", "refer", "decline"] = _f(
        "'approve' (limit given), 'refer' (a person must look: evidence incomplete or "
        "suspicious), 'decline' (complete evidence below policy minimums)")
    suggested_limit_cny: int | None = _f("suggested credit limit; null unless approved",
                                         unit="CNY", minimum=0)
    currency: str = _f("currency of every money amount")
    policy_id: str = _f("id of the policy applied")
    policy_version: str = _f("version of the policy applied")
    total_area_ha: float | None = _f("total measured area (null if any is missing)", unit="ha",
                                     minimum=0.0)
    total_area_mu: float | None = _f("total measured area (null if any is missing)", unit="mu",
                                     minimum=0.0)
    expected_value_cny_p50: float | None = _f("sum of field value P50 (null if any missing)",
                                              unit="CNY", minimum=0.0)
    downside_value_cny_p10: float | None = _f("sum of field value P10 (null if any missing)",
                                              unit="CNY", minimum=0.0)
    repayment_start: str | None = _f("earliest expected harvest", fmt="date")
    repayment_end: str | None = _f("latest expected harvest + grace days", fmt="date")
    factors: Factors | None = _f("limit arithmetic (null when a number is missing)")
    reasons: tuple[Reason, ...] = _f("reason codes, most severe first")
    fields: tuple[FieldEvidence, ...] = _f("evidence per field and season")
    library_version: str = _f("cropyield version that produced the profile", default="")
    excluded_fields: tuple[str, ...] = _f(
        "fields left out of the limit (policy exclude_codes; the FIELD_EXCLUDED_* reasons say "
        "why), sorted", default=(), since="1.1.0")
    schema_version: str = _f("record layout version", default=SCHEMA_VERSION)

    _versioned: ClassVar[bool] = True

    @classmethod
    def _schema_extra(cls) -> dict[str, Any]:
        # fail-closed in the schema too: a limit only on approval
        return {"if": {"properties": {"decision": {"const": "approve"}}},
                "then": {"properties": {"suggested_limit_cny": {"type": "integer"}}},
                "else": {"properties": {"suggested_limit_cny": {"type": "null"}}}}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decision != "approve" and self.suggested_limit_cny is not None:
            raise CreditSchemaError(
                f"farmer {self.farmer_id}: a {self.decision!r} profile must not carry a limit "
                "(fail-closed); set suggested_limit_cny to None")
        if self.decision == "approve" and self.suggested_limit_cny is None:
            raise CreditSchemaError(f"farmer {self.farmer_id}: an approved profile needs a limit")


# Flag haircuts: fraction of the limit kept when the flag is present (min over flags).
_DEFAULT_HAIRCUTS = {
    "LOW_OBS": 0.5, "CLOUDY_SEASON": 0.5, "FIELD_TOO_SMALL": 0.7, "CROP_UNCERTAIN": 0.7,
    "AREA_MISMATCH": 0.8, "EXTRAPOLATED": 0.8, "OFFSET_INCONSISTENT": 0.8,
    "LOW_VALID_FRACTION": 0.9, "PARTIAL_SEASON": 0.7, "BENCHMARK_YIELD": 0.7,
    "CROP_DECLARED": 0.7,
}
# Flags that force a referral: the numbers behind the field cannot be trusted.
_DEFAULT_REFER = ("ALL_MASKED", "AUTH_EXPIRED", "CROP_MISMATCH", "FIT_FAILED", "INVALID_GEOMETRY",
                  "INVALID_INDEX", "NO_DATA", "NO_MODEL", "NO_OVERLAP", "NO_PRICE", "NO_SEASON",
                  "OUT_OF_RANGE", "READ_FAILED", "SEASON_INCOMPLETE", "SUBPIXEL_FIELD")
#: Field-level referral codes a policy may turn into "leave the field out of the limit"
#: (``Policy.exclude_codes``), with the reason code that then names the excluded field.
#: Doubt about *what* or *how much* is grown on one field; never missing or invalid data.
EXCLUDABLE_CODES: dict[str, str] = {
    "CROP_MISMATCH": "FIELD_EXCLUDED_CROP_DOUBT",
    "LOW_CROP_CONFIDENCE": "FIELD_EXCLUDED_CROP_DOUBT",
    "LOW_QUALITY": "FIELD_EXCLUDED_LOW_QUALITY",
    "AREA_MISMATCH": "FIELD_EXCLUDED_AREA_DOUBT",
}
# Stage cost need per mu and season (seed, fertiliser, pesticide, machinery, services):
# ~500 CNY/mu/season, [Hengfeng] bank case (docs/references.md). Replace with the
# NDRC cost-benefit compendium figures for a province when available. Fallow needs nothing.
_DEFAULT_STAGE_COST = {
    "winter_wheat": 500.0, "summer_maize": 500.0, "spring_maize": 500.0,
    "rice_single": 500.0, "rice_early": 500.0, "rice_late": 500.0, "soybean": 500.0,
    "peanut": 500.0, "rapeseed": 500.0, "fallow": 0.0,
}


@dataclass(frozen=True)
class Policy(_Record):
    """A lender's credit policy (defaults are illustrative, not advice).

    Mapping-valued fields (``stage_cost_cny_per_mu``, ``flag_haircuts``) may be given as
    dicts; they are stored as sorted tuples of ``(key, value)`` pairs so that the policy
    stays immutable and hashable.
    """

    policy_id: str = _f("policy identifier", default="cropyield-default")
    policy_version: str = _f("policy version", default="1.0.0")
    currency: str = _f("currency of every amount", default="CNY")
    ltv: float = _f("loan-to-value on the downside value (sum of P10)", minimum=0.0,
                    maximum=1.0, default=0.5)
    insurance_fraction: float = _f("insurable fraction of expected output value (China: at "
                                   "most 0.8)", minimum=0.0, maximum=1.0, default=0.8)
    stage_cost_cny_per_mu: tuple[tuple[str, float], ...] = _f(
        "stage cost need per crop per season", unit="CNY/mu", kind="mapping", minimum=0.0,
        default_factory=lambda: tuple(sorted(_DEFAULT_STAGE_COST.items())))
    default_stage_cost_cny_per_mu: float = _f("stage cost need for crops not in the table",
                                              unit="CNY/mu", minimum=0.0, default=500.0)
    min_quality: float = _f("fields below this quality force a referral", minimum=0.0,
                            maximum=1.0, default=0.5)
    min_crop_prob: float = _f("fields below this crop probability force a referral",
                              minimum=0.0, maximum=1.0, default=0.6)
    flag_haircuts: tuple[tuple[str, float], ...] = _f(
        "fraction of the limit kept per flag; the profile haircut is the minimum over the "
        "flags of all its fields", kind="mapping", minimum=0.0, maximum=1.0,
        default_factory=lambda: tuple(sorted(_DEFAULT_HAIRCUTS.items())))
    default_flag_haircut: float = _f("haircut of a flag neither in flag_haircuts nor in "
                                     "refer_flags", minimum=0.0, maximum=1.0, default=0.8)
    refer_flags: tuple[str, ...] = _f("flags that force a referral", default=_DEFAULT_REFER)
    area_tolerance: float = _f("relative declared-vs-measured area difference above which "
                               "AREA_MISMATCH applies", minimum=0.0, default=0.2)
    area_refer_tolerance: float = _f("relative area difference above which the profile is "
                                     "referred", minimum=0.0, default=0.5)
    min_downside_value_cny: float = _f("decline when the sum of value P10 is below this",
                                       unit="CNY", minimum=0.0, default=1000.0)
    min_limit_cny: float = _f("decline when the rounded limit is below this", unit="CNY",
                              minimum=0.0, default=500.0)
    max_limit_cny: float = _f("maximum limit per farmer", unit="CNY", minimum=0.0,
                              default=300000.0)
    limit_step_cny: int = _f("limits are rounded down to a multiple of this", unit="CNY",
                             minimum=1, default=100)
    repayment_grace_days: int = _f("days after the latest expected harvest to repay",
                                   unit="days", minimum=0, default=30)
    max_data_age_days: int = _f("refer when the latest imagery is older than this at as_of",
                                unit="days", minimum=0, default=60)
    evidence_window_days: int = _f("per field, only seasons whose expected harvest is within "
                                   "this many days before the field's latest one are "
                                   "evidence (one crop year, double cropping included); "
                                   "older seasons are history", unit="days", minimum=1,
                                   default=300)
    require_imagery_date: bool = _f("refer a field whose imagery date is unknown (no "
                                    "last_obs_date, no dated scene id)", default=True)
    exclude_codes: tuple[str, ...] = _f(
        "field-level referral codes that leave the field out of the limit instead of "
        "referring the farmer (empty: every such field refers the farmer, policy 1.0.0); only "
        "codes of EXCLUDABLE_CODES are allowed (missing or invalid data always refers)",
        default=(), since="1.1.0")
    max_excluded_share: float = _f(
        "refer the farmer when the excluded fields make up more than this share of the "
        "cropped measured area", minimum=0.0, maximum=1.0, default=0.5, since="1.1.0")
    main_field_mismatch_prob: float = _f(
        "refer the farmer when the largest cropped field is excluded for CROP_MISMATCH and "
        "its identified crop has at least this probability (a confident contrary reading "
        "of the main declaration)", minimum=0.0, maximum=1.0, default=0.8, since="1.1.0")
    schema_version: str = _f("record layout version", default=SCHEMA_VERSION)

    _versioned: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, lo, hi in (("stage_cost_cny_per_mu", 0.0, math.inf),
                             ("flag_haircuts", 0.0, 1.0)):
            value = getattr(self, name)
            items = value.items() if isinstance(value, Mapping) else value
            try:
                pairs = tuple(sorted((str(k), float(v)) for k, v in items))
            except (TypeError, ValueError):
                raise ConfigError(f"Policy.{name} must map names to numbers, got {value!r}") \
                    from None
            for k, v in pairs:
                if not (lo <= v <= hi):
                    raise ConfigError(f"Policy.{name}[{k!r}] = {v} is outside [{lo}, {hi}]")
            object.__setattr__(self, name, pairs)
        object.__setattr__(self, "refer_flags", tuple(sorted(set(self.refer_flags))))
        object.__setattr__(self, "exclude_codes", tuple(sorted(set(self.exclude_codes))))
        bad = set(self.exclude_codes) - set(EXCLUDABLE_CODES)
        if bad:
            raise ConfigError(f"Policy.exclude_codes {sorted(bad)} cannot leave a field out "
                              f"of the limit (allowed: {sorted(EXCLUDABLE_CODES)}); missing "
                              "or invalid data always refers the farmer")
        for name in ("ltv", "insurance_fraction", "min_quality", "min_crop_prob",
                     "default_flag_haircut", "max_excluded_share", "main_field_mismatch_prob"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"Policy.{name} must be a number in [0, 1], got {v!r}")
        if self.insurance_fraction > 0.8:
            logger.warning("Policy.insurance_fraction %.2f exceeds China's 80 %% cap on insured "
                           "output value", self.insurance_fraction)
        if self.area_refer_tolerance < self.area_tolerance:
            raise ConfigError("Policy.area_refer_tolerance must be >= area_tolerance")
        if not isinstance(self.limit_step_cny, int) or self.limit_step_cny < 1:
            raise ConfigError("Policy.limit_step_cny must be a positive integer")
        for name in ("min_downside_value_cny", "min_limit_cny", "max_limit_cny",
                     "area_tolerance", "default_stage_cost_cny_per_mu"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    math.isfinite(v) and v >= 0):
                raise ConfigError(f"Policy.{name} must be a finite number >= 0, got {v!r}")
        if isinstance(self.evidence_window_days, bool) or not isinstance(
                self.evidence_window_days, int) or self.evidence_window_days < 1:
            raise ConfigError("Policy.evidence_window_days must be an integer >= 1")
        if not isinstance(self.require_imagery_date, bool):
            raise ConfigError("Policy.require_imagery_date must be true or false")
        for name in ("repayment_grace_days", "max_data_age_days"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"Policy.{name} must be an integer >= 0, got {v!r}")
        overlap = set(self.refer_flags) & {k for k, _ in self.flag_haircuts}
        if overlap:
            raise ConfigError(f"Policy: flags {sorted(overlap)} are both refer_flags and "
                              "flag_haircuts; keep each flag in one of them")

    @classmethod
    def preset(cls, version: str = "1.1.0", **overrides: Any) -> "Policy":
        """The library's default policy of ``version`` (see :data:`POLICY_PRESETS`).

        ``"1.0.0"``: any doubtful field refers the whole farmer (``Policy()``).
        ``"1.1.0"``: a field whose crop identity or estimate is in doubt (only
        ``CROP_MISMATCH``, ``LOW_CROP_CONFIDENCE``, ``LOW_QUALITY``) is left out of the
        limit and named (``FIELD_EXCLUDED_CROP_DOUBT``, ``FIELD_EXCLUDED_LOW_QUALITY``);
        the farmer is still referred when such fields are more than
        ``max_excluded_share`` of the cropped area or the main field is a confident
        mismatch. ``overrides`` replace any field.
        """
        if version not in POLICY_PRESETS:
            raise ConfigError(f"no policy preset {version!r}; known: {sorted(POLICY_PRESETS)}")
        return cls(**{**POLICY_PRESETS[version], "policy_version": version, **overrides})

    # convenience look-ups
    def stage_cost(self, crop: str) -> float:
        """Stage cost need of ``crop`` (CNY/mu/season)."""
        return dict(self.stage_cost_cny_per_mu).get(crop, self.default_stage_cost_cny_per_mu)

    def haircut(self, flag: str) -> float:
        """Fraction of the limit kept when ``flag`` is present (1.0: no effect)."""
        return dict(self.flag_haircuts).get(flag, self.default_flag_haircut)


def _known_flag_text(code: str) -> str:
    return FLAGS.get(code, "flag not described in cropyield.errors.FLAGS")


#: Settings of each library policy version that differ from ``Policy()`` (1.0.0).
POLICY_PRESETS: dict[str, dict[str, Any]] = {
    "1.0.0": {},
    "1.1.0": {"exclude_codes": ("CROP_MISMATCH", "LOW_CROP_CONFIDENCE", "LOW_QUALITY"),
              "max_excluded_share": 0.5, "main_field_mismatch_prob": 0.8},
}
