"""Radiometric offset rules of Sentinel-2 L2A items: processing baseline -> BOA offset, and
which offset a band uses (override, ``raster:bands``, baseline rule, or none).

``reflectance = DN * scale + offset``. Processing baseline >= 04.00 (products from 25 January
2022) has BOA_ADD_OFFSET = -1000 DN, i.e. -0.1 at scale 1e-4; earlier baselines 0. Earth
Search v1 states the offset in ``raster:bands``; the Planetary Computer gives only
``s2:processing_baseline``. Entry point: :func:`baseline_offset`; :func:`_band_offset` and
:func:`_offset_source` are the rules :func:`cropyield.catalogs.normalize_item` applies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_DEFAULT_SCALE = 1e-4
_OFFSET_TOL = 1e-9
_BASELINE_RE = re.compile(r"_N(\d{2})\.?(\d{2})(?:_|\.|$)")


def baseline_offset(baseline: str | float | None) -> float | None:
    """BOA offset in reflectance units implied by a processing baseline.

    ``>= 04.00`` (products from 25 January 2022, and reprocessed older ones) gives -0.1
    (BOA_ADD_OFFSET = -1000 DN at scale 1e-4); earlier baselines give 0; None gives None.
    """
    b = _baseline_float(baseline)
    if b is None:
        return None
    return -0.1 if b >= 4.0 - 1e-9 else 0.0


#: First acquisition day of processing baseline 04.00 (BOA_ADD_OFFSET introduced, ESA
#: Sentinel-2 L2A product change of 25 January 2022): the offset rule for items that state
#: no baseline at all.
OFFSET_START = "2022-01-25"


def _offset_rule(baseline: str | None,
                 props: Mapping[str, Any]) -> tuple[float | None, str]:
    """Offset of an item's reflectance bands by rule: from its processing baseline, or,
    when the item states none, from its acquisition date (-0.1 from
    :data:`OFFSET_START`, else 0). None when neither is known. Reprocessed archives
    (baseline 04.00+ for older dates) state their baseline, so the date is only a
    fallback; :func:`cropyield.field_observations` also checks the pixels (dark-object
    test, ``OFFSET_INCONSISTENT``). Returns ``(offset, source)``, source ``"baseline"``
    or ``"acquisition_date"``."""
    rule = baseline_offset(baseline)
    if rule is not None:
        return rule, "baseline"
    dt = props.get("datetime") or props.get("start_datetime")
    if not isinstance(dt, str) or len(dt) < 10:
        return None, "baseline"
    day = dt[:10]
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        return None, "baseline"
    return (-0.1 if day >= OFFSET_START else 0.0), "acquisition_date"


def _baseline_float(baseline) -> float | None:
    if baseline is None:
        return None
    try:
        return float(baseline)
    except (TypeError, ValueError):
        return None


def _baseline_of(d: Mapping[str, Any], props: Mapping[str, Any]) -> str | None:
    b = props.get("s2:processing_baseline")
    if b is not None and _baseline_float(b) is not None:
        return f"{float(b):05.2f}"
    for key in ("s2:product_uri", "s2:tile_id", "s2:granule_id", "s2:datatake_id"):
        m = _BASELINE_RE.search(str(props.get(key, "")))
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def _band_offset(name: str, meta_offset, offset_override: float | Mapping[str, float] | None,
                 rule: float | None,
                 rule_source: str = "baseline") -> tuple[float, str, str | None]:
    """Offset of reflectance band ``name``, where it came from, and the disagreement between
    its ``raster:bands`` offset and the baseline ``rule`` (None when they agree)."""
    override = (offset_override.get(name) if isinstance(offset_override, Mapping)
                else offset_override)
    if override is not None:
        offset, source = float(override), "override"
    elif meta_offset is not None:
        offset, source = float(meta_offset), "raster:bands"
    elif rule is not None:
        offset, source = rule, rule_source
    else:
        offset, source = 0.0, "none"
    disagreement = None
    if meta_offset is not None and rule is not None and rule_source == "baseline" and \
            abs(float(meta_offset) - rule) > _OFFSET_TOL:
        disagreement = f"{name}: raster:bands {float(meta_offset):g}"
    return offset, source, disagreement


def _offset_source(sources: set[str]) -> str:
    """A scene's ``offset_source`` from the sources of its bands' offsets."""
    if "override" in sources:
        return "override"
    if len(sources) == 1:
        return next(iter(sources))
    if not sources:  # only SCL
        return "none"
    # some bands from raster:bands, others from the rule: report the weakest
    if "none" in sources:
        return "none"
    return "acquisition_date" if "acquisition_date" in sources else "baseline"
