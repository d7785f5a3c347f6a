"""The common interface of yield models (:class:`YieldModel`) and its JSON persistence.

``predict(series, seasons, ...)`` returns one row per (field_id, season) with P10/P50/P90,
flags and quality; ``to_json`` / ``YieldModel.from_json`` store and load any fitted model as
JSON (``schema_version``, ``kind``, parameters, ``cv``); never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .._version import __version__
from ..crops import CropRegistry, load_registry
from .._io import loads_json
from ..errors import ConfigError, ModelError, join_flags
from .intervals import quality_scale

__all__ = ["SCHEMA_VERSION", "YieldModel"]

#: Version of the JSON layout written by :meth:`YieldModel.to_json`.
SCHEMA_VERSION = 5
#: model kind -> class, filled as subclasses are defined (used by ``from_dict``).
_KINDS: dict[str, type] = {}


class YieldModel:
    """Common interface of yield models.

    ``predict(series, seasons, ...)`` returns one row per (field_id, season) with
    ``yield_t_ha_p10``, ``yield_t_ha_p50``, ``yield_t_ha_p90`` (t/ha at the crop's reporting
    basis), ``yield_basis``, ``model_version``, ``calibration`` (JSON string), ``quality``
    (0..1), ``interval_scale``, ``n_obs``, ``max_gap_days`` and ``flags``. Seasons without
    enough data get NaN and flags explaining why; numbers are never extrapolated.
    """

    kind = "base"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _KINDS[cls.kind] = cls
    #: cross-validation report filled by :func:`fit_yield_model`.
    cv_: dict[str, Any] | None = None

    # quality thresholds (documented defaults)
    min_obs: int = 3          # fewer clear observations in the season -> NaN + LOW_OBS
    low_obs: int = 6          # fewer -> LOW_OBS flag (>= 6 clear observations per season; docs/references.md)
    max_gap_days: float = 75  # longer gap in the active window -> NaN + CLOUDY_SEASON
    cloudy_gap_days: float = 40  # longer gap -> CLOUDY_SEASON flag, wider interval
    max_extrapolated_days: int = 20  # more extrapolated days in the window -> NaN + EXTRAPOLATED

    def predict(self, series: pd.DataFrame, seasons, *, lat=None, region: str | None = None,
                radiation=None, crop: str | None = None,
                climatology=None) -> pd.DataFrame:  # pragma: no cover
        raise NotImplementedError

    # -- serialisation
    def _params(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (``schema_version``, ``kind``, parameters, ``cv``)."""
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind,
                "cropyield_version": __version__, "params": self._params(),
                "cv": _jsonable(self.cv_)}

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON (and write to ``path`` when given). Never pickle."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, indent=1)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @staticmethod
    def from_json(text_or_path: str | Path) -> "YieldModel":
        """Load a model written by :meth:`to_json` (a JSON string or a path).

        Files of schema 1 (before the window features), 2 (before the linear target), 3
        (before weather covariates), 4 (before pooled group features) and 5 load; a newer
        schema, another layout or unknown parameters raise :class:`~cropyield.errors.ModelError` saying so.
        """
        p = Path(str(text_or_path)) if not str(text_or_path).lstrip().startswith("{") else None
        try:
            text = p.read_text(encoding="utf-8") if p is not None else str(text_or_path)
            d = loads_json(text, what="yield model JSON", error=ModelError)
        except ModelError:
            raise
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read a yield model from {str(text_or_path)[:80]!r}: {exc}"
                             ) from exc
        return YieldModel.from_dict(d)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "YieldModel":
        if not isinstance(d, Mapping) or "kind" not in d:
            raise ModelError("not a cropyield yield model (no 'kind')")
        if int(d.get("schema_version", -1)) > SCHEMA_VERSION:
            raise ModelError(f"model schema_version {d.get('schema_version')} is newer than "
                             f"this cropyield supports ({SCHEMA_VERSION}); upgrade cropyield")
        cls = _KINDS.get(d["kind"])
        if cls is None:
            raise ModelError(f"unknown model kind {d['kind']!r}")
        if int(d.get("schema_version", -1)) < 1 or not isinstance(d.get("params"), Mapping):
            raise ModelError("not a cropyield yield model JSON (schema_version 1 to 5 with "
                             "'params' expected); refit the model with fit_yield_model")
        try:
            m = cls(**d["params"])
        except TypeError as exc:
            raise ModelError(f"cannot load a {d['kind']!r} model: {exc}; the file was written "
                             "by an incompatible cropyield - refit it") from exc
        m.cv_ = d.get("cv")
        return m

    @property
    def model_version(self) -> str:
        """``<kind>/<cropyield version>/<hash of parameters>`` - identifies the fitted model."""
        h = hashlib.sha256(json.dumps(_jsonable(self._params()), sort_keys=True).encode()
                           ).hexdigest()[:10]
        return f"{self.kind}/{__version__}/{h}"

    def report(self) -> str:
        """Human-readable summary of the calibration and cross-validation."""
        lines = [f"{type(self).__name__} {self.model_version}"]
        cv = self.cv_ or {}
        if not cv:
            lines.append("  not cross-validated (default parameters or aggregate calibration)")
        else:
            lines.append(f"  grouped {cv.get('n_splits')}-fold CV on n={cv.get('n')} seasons "
                         f"({cv.get('n_groups')} groups)")
            lines.append(f"  R2={cv.get('r2'):.3f}  RMSE={cv.get('rmse_t_ha'):.3f} t/ha "
                         f"({cv.get('rmse_pct'):.1f} %)  bias={cv.get('bias_t_ha'):+.3f} t/ha")
            if cv.get("coverage_p10_p90") is not None:
                lines.append(f"  out-of-fold P10-P90 coverage={cv['coverage_p10_p90']:.3f}")
        return "\n".join(lines)

    # -- shared post-processing
    def _finish(self, feats: pd.DataFrame, p50: np.ndarray,
                quant: Sequence[Mapping[str, Any] | None], basis: list[str], calib: list[str],
                extra_flags: list[list[str]],
                sanity: Sequence[tuple[float, ...]]) -> pd.DataFrame:
        n = len(feats)
        n_obs = feats["n_obs"].to_numpy(float)
        gap = feats["max_gap_days"].to_numpy(float)
        nextra = feats["n_extrapolated"].to_numpy(float)
        s = quality_scale(n_obs, gap)
        p10, p50o, p90 = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        flags_out, quality = [], np.zeros(n)
        for i in range(n):
            fl = list(extra_flags[i]) + [f for f in str(feats["feature_flags"].iloc[i]
                                                         ).split(",") if f and f != "nan"]
            bad = any(f in ("NO_SEASON", "NO_DATA", "NO_MODEL", "SEASON_INCOMPLETE", "NO_WEATHER")
                      for f in fl)
            if np.isfinite(n_obs[i]):
                if n_obs[i] < self.min_obs:
                    fl.append("LOW_OBS")
                    bad = True
                elif n_obs[i] < self.low_obs:
                    fl.append("LOW_OBS")
            if np.isfinite(gap[i]):
                if gap[i] > self.max_gap_days:
                    fl.append("CLOUDY_SEASON")
                    bad = True
                elif gap[i] > self.cloudy_gap_days:
                    fl.append("CLOUDY_SEASON")
            if np.isfinite(nextra[i]) and nextra[i] > self.max_extrapolated_days:
                fl.append("EXTRAPOLATED")
                bad = True
            q = quant[i]
            if not bad and np.isfinite(p50[i]) and p50[i] == 0 and q is not None:
                # no light absorbed at all (bare soil all season): a zero yield, not a gap
                p10[i] = p50o[i] = p90[i] = 0.0
                fl.append("OUT_OF_RANGE")
                quality[i] = float(np.clip(1.0 / s[i], 0.0, 1.0))
            elif not bad and np.isfinite(p50[i]) and p50[i] > 0 and q is not None:
                p10[i] = p50[i] * math.exp(q["q10"] * s[i])
                p50o[i] = p50[i] * math.exp(q["q50"] * s[i])
                p90[i] = p50[i] * math.exp(q["q90"] * s[i])
                lo, hi = sanity[i]
                if not (lo <= p50o[i] <= hi):
                    fl.append("OUT_OF_RANGE")
                quality[i] = float(np.clip(1.0 / s[i], 0.0, 1.0))
            else:
                quality[i] = 0.0
                if not fl:  # a NaN always travels with a flag
                    fl.append("NO_DATA")
            flags_out.append(join_flags(fl))
        out = feats[["field_id", "season", "crop"]].copy()
        out["yield_basis"] = basis
        out["yield_t_ha_p10"] = p10
        out["yield_t_ha_p50"] = p50o
        out["yield_t_ha_p90"] = p90
        out["model_version"] = self.model_version
        out["calibration"] = calib
        out["quality"] = quality
        out["interval_scale"] = s
        for c in ("n_obs", "max_gap_days", "sos", "pos", "eos", "apar_mj_m2", "par_mj_m2",
                  "radiation_source"):
            out[c] = feats[c].to_numpy() if c in feats.columns else np.nan
        out["flags"] = flags_out
        return out


def _jsonable(obj):
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return _jsonable(float(obj))
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    raise ModelError(f"cannot store {type(obj).__name__} in a model JSON")


def _registry_from(overrides) -> tuple[CropRegistry, dict[str, Any] | None]:
    if overrides is None:
        return load_registry(), None
    if isinstance(overrides, (str, Path)):
        import tomllib
        try:
            with open(overrides, "rb") as fh:
                overrides = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read crop overrides from {overrides}: {exc}") from exc
    return load_registry(overrides), _jsonable(dict(overrides))


