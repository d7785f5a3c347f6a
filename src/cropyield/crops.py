"""The crop registry: calendars, phenology windows, index ranges and yield parameters.

Data live in TOML files shipped with the package (``data/crops.toml`` for calendars and
phenology, ``data/crop_yield.toml`` for yield parameters); sources are cited there.
Every value can be overridden with a dict or a TOML file (:func:`load_registry`).

Stable crop ids: ``winter_wheat summer_maize spring_maize rice_single rice_early rice_late
soybean peanut cotton rapeseed potato sugarcane orchard tea vegetables`` (+ ``fallow``).
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field, fields as dc_fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

__all__ = [
    "Crop", "CropCalendar", "YieldParams", "CropRegistry", "load_registry", "get_crop",
    "REGIONS",
]

#: Region ids used by calendars and prices.
REGIONS = ("north_china_plain", "northeast", "yangtze", "south")


@dataclass(frozen=True)
class CropCalendar:
    """Typical calendar of a crop in one region (day-of-year windows, 1..366).

    ``sos_doy``/``peak_doy``/``eos_doy`` are ``(earliest, latest)`` windows; a window may
    wrap the new year (winter crops: sowing in October, harvest in June), in which case
    ``earliest > latest``.
    """

    region: str
    sow_doy: tuple[int, int]
    sos_doy: tuple[int, int]
    peak_doy: tuple[int, int]
    eos_doy: tuple[int, int]
    harvest_doy: tuple[int, int]
    season_length_days: tuple[int, int]
    source: str = ""
    # --- added for identify (issue 5) ---
    #: relative area weight of the crop in the region (prior of crop identification; only
    #: ratios between crops of one region matter).
    prior: float = 1.0
    #: crops that typically precede this one in the same field and year (rotation context,
    #: e.g. summer maize after winter wheat on the North China Plain).
    after: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("sow_doy", "sos_doy", "peak_doy", "eos_doy", "harvest_doy"):
            w = getattr(self, name)
            if len(w) != 2 or not all(1 <= int(d) <= 366 for d in w):
                raise ConfigError(f"calendar {self.region}: {name} must be two day-of-year "
                                  f"values in 1..366, got {w!r}")
        lo, hi = self.season_length_days
        if not 0 < lo <= hi:
            raise ConfigError(f"calendar {self.region}: season_length_days must be "
                              f"0 < low <= high, got {self.season_length_days!r}")
        if not self.prior >= 0:
            raise ConfigError(f"calendar {self.region}: prior must be >= 0, got {self.prior}")

    def contains(self, name: str, doy: float) -> bool:
        """Whether day of year ``doy`` lies in window ``name`` (e.g. ``"peak_doy"``), wrapping."""
        a, b = getattr(self, name)
        return a <= doy <= b if a <= b else (doy >= a or doy <= b)


@dataclass(frozen=True)
class YieldParams:
    """Parameters of the light-use-efficiency yield model for one crop.

    Attributes
    ----------
    rue_g_mj : float
        Radiation-use efficiency, g above-ground dry matter per MJ absorbed PAR.
    harvest_index : float
        Harvestable dry matter / above-ground dry matter (dimensionless).
    moisture : float
        Moisture fraction of the reported yield (e.g. 0.14 for maize grain).
    yield_basis : str
        One of ``"grain"``, ``"lint"``, ``"pods"``, ``"fresh"``, ``"seed"``, ``"value_only"``.
    product_fraction : float
        Fraction of the harvested dry product that is reported (lint of seed cotton; 1.0
        otherwise).
    fapar : mapping
        fAPAR relation, e.g. ``{"index": "ndvi", "slope": 1.1638, "intercept": -0.1426}``.
    sanity_t_ha : tuple of float
        Plausible field-level yield range at reporting basis, t/ha (flag, never clip).
    calibration : mapping
        Default calibration factor per region, with its source.
    """

    rue_g_mj: float
    harvest_index: float
    moisture: float
    yield_basis: str
    product_fraction: float = 1.0
    fapar: Mapping[str, Any] = field(default_factory=dict)
    sanity_t_ha: tuple[float, float] = (0.0, float("inf"))
    calibration: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    # --- added for yieldmodel/value (issue 6) ---
    #: day of year from which light use is accumulated (winter crops: after spring green-up,
    #: dormant-season APAR adds no yield); None = from the season start.
    active_from_doy: int | None = None
    #: benchmark yield per region (t/ha at reporting basis) for ``yield_basis="value_only"``
    #: crops (orchards, tea, vegetables), with a ``"default"`` key; see docs/references.md.
    benchmark_t_ha: Mapping[str, float] = field(default_factory=dict)
    #: prior relative spread (log-scale sigma) of the uncalibrated model: P10/P90 =
    #: P50 × exp(∓1.2816 σ) before any residual calibration.
    prior_sigma: float = 0.25
    #: ``value_only`` crops: prior elasticity of yield to the vigour ratio (P50 = benchmark
    #: × level × ratio ** elasticity; 1.0: yield in proportion to season-mean fAPAR) and its
    #: prior standard deviation; crop cuts update it (:func:`cropyield.fit_yield_model`).
    vigour_elasticity: float = 1.0
    vigour_elasticity_sd: float = 0.5


@dataclass(frozen=True)
class Crop:
    """One crop class of the registry."""

    id: str
    name: str
    name_zh: str = ""
    group: str = "field"                   # field | perennial | fallow
    seasons_per_year: int = 1
    calendars: Mapping[str, CropCalendar] = field(default_factory=dict)
    index_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # peak ranges
    yield_params: YieldParams | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def calendar(self, region: str) -> CropCalendar | None:
        return self.calendars.get(region)


class CropRegistry(Mapping[str, Crop]):
    """A read-only mapping ``crop id -> Crop``."""

    def __init__(self, crops: Mapping[str, Crop], raw: Mapping[str, Any]):
        self._crops = dict(crops)
        self.raw = raw

    def __getitem__(self, key: str) -> Crop:
        try:
            return self._crops[key]
        except KeyError:
            raise KeyError(f"unknown crop id {key!r}; known: {sorted(self._crops)}") from None

    def __iter__(self):
        return iter(self._crops)

    def __len__(self) -> int:
        return len(self._crops)

    def __repr__(self) -> str:
        return f"<CropRegistry {sorted(self._crops)}>"


def _read_toml(source: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    try:
        with open(source, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read crop overrides from {source}: {exc}") from exc


def _packaged(name: str) -> dict[str, Any]:
    path = resources.files("cropyield") / "data" / name
    if not path.is_file():
        return {}
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) \
            else copy.deepcopy(v)
    return out


def _tuple(v):
    return tuple(v) if isinstance(v, list) else v


def _build(cls, data: Mapping[str, Any], what: str):
    known = {f.name for f in dc_fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{what}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    try:
        return cls(**{k: _tuple(v) for k, v in data.items()})
    except TypeError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


def load_registry(overrides: str | Path | Mapping[str, Any] | None = None) -> CropRegistry:
    """Load the packaged registry, optionally merged with user overrides.

    Parameters
    ----------
    overrides : dict, path to a TOML file, or None
        Same structure as the packaged files: ``{crop_id: {...}}`` with optional
        ``yield`` and ``calendars.<region>`` sub-tables. Keys override packaged values;
        unknown keys raise :class:`~cropyield.errors.ConfigError`.
    """
    raw = _deep_merge(_packaged("crops.toml").get("crop", {}),
                      {k: {"yield": v} for k, v in _packaged("crop_yield.toml").get("crop", {}).items()})
    user = _read_toml(overrides)
    raw = _deep_merge(raw, user.get("crop", user))
    crops: dict[str, Crop] = {}
    for cid, d in raw.items():
        d = dict(d)
        cal = {r: _build(CropCalendar, {"region": r, **c}, f"crop {cid} calendar {r}")
               for r, c in d.pop("calendars", {}).items()}
        yp = d.pop("yield", None)
        yp = _build(YieldParams, yp, f"crop {cid} yield") if yp else None
        ranges = {k: tuple(v) for k, v in d.pop("index_ranges", {}).items()}
        crops[cid] = _build(Crop, {"id": cid, **d, "calendars": cal, "yield_params": yp,
                                   "index_ranges": ranges}, f"crop {cid}")
    return CropRegistry(crops, raw)


@lru_cache(maxsize=1)
def _default_registry() -> CropRegistry:
    return load_registry()


def get_crop(crop_id: str, registry: CropRegistry | None = None) -> Crop:
    """Return the :class:`Crop` for ``crop_id`` from ``registry`` (default: packaged)."""
    return (registry or _default_registry())[crop_id]
