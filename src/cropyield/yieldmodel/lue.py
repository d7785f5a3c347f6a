"""Light-use-efficiency yield model (:class:`LUEModel`), calibration-free by default.

``yield = HI × Σ_season(RUE × fAPAR × PAR) × 0.01 / (1 − moisture) × product_fraction ×
calibration`` (t/ha at the crop's reporting basis), with fAPAR from a vegetation index through
the crop's relation (clipped to [0, 0.95]) and PAR from FAO-56 radiation
(:mod:`cropyield.radiation`). The calibration factor (per crop and region) and its source are
always reported.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..crops import YieldParams
from .base import YieldModel, _jsonable, _registry_from
from .features import season_features
from .intervals import _prior_quantiles

__all__ = ["LUEModel"]


class LUEModel(YieldModel):
    """Light-use-efficiency yield model with per-crop, per-region calibration.

    ``yield [t/ha] = HI × RUE [g DM/MJ APAR] × Σ(fAPAR × PAR) [MJ m-2] × 0.01 / (1 − moisture)
    × product_fraction × factor``, accumulated from ``sos`` (or the crop's green-up day,
    ``active_from_doy``) to ``eos``. Crops with ``yield_basis = "value_only"`` (orchards, tea,
    vegetables) get the regional benchmark yield × a vigour ratio (season-mean fAPAR relative
    to the median of the same crop in the batch, clipped to [0.7, 1.3], when >= 5 seasons).

    Parameters
    ----------
    overrides : dict or path, optional
        Crop-registry overrides (see :func:`cropyield.crops.load_registry`).
    index : str
        Index column of the series used for fAPAR (default ``"ndvi"``).
    fapar : mapping, optional
        fAPAR relation for all crops, overriding the registry.
    region : str
        Default region (calibration, climatology) when seasons carry no ``region`` column.
    calibration : mapping, optional
        ``{crop: {region: {"factor": float, "source": str, ...}}}`` overriding the registry's
        default factors (set by :func:`fit_yield_model`).
    residuals : mapping, optional
        ``{crop: {"q10", "q50", "q90", "n", "method"}}`` normalised log-residual quantiles for
        the intervals (set by :func:`fit_yield_model`); default: the crop's prior sigma.
    """

    kind = "lue"

    def __init__(self, *, overrides=None, index: str = "ndvi",
                 fapar: Mapping[str, Any] | None = None, region: str = "north_china_plain",
                 calibration: Mapping[str, Any] | None = None,
                 residuals: Mapping[str, Any] | None = None):
        self.registry, self.overrides = _registry_from(overrides)
        self.index = index
        self.fapar = dict(fapar) if fapar else None
        self.region = region
        self.calibration = {c: {r: dict(v) for r, v in d.items()}
                            for c, d in (calibration or {}).items()}
        self.residuals = {c: dict(v) for c, v in (residuals or {}).items()}
        self.cv_ = None

    def _params(self) -> dict[str, Any]:
        return {"overrides": self.overrides, "index": self.index, "fapar": self.fapar,
                "region": self.region, "calibration": _jsonable(self.calibration),
                "residuals": _jsonable(self.residuals)}

    def yield_params(self, crop: str) -> YieldParams | None:
        if crop is None or crop not in self.registry:
            return None
        return self.registry[crop].yield_params

    def factor(self, crop: str, region: str) -> dict[str, Any]:
        """Calibration ``{"factor", "source", "region", "kind"}`` for ``crop`` in ``region``.

        Order: a fitted/user calibration for (crop, region), then for (crop, "default"), then
        the registry's regional factor, then the registry's ``default`` factor, else 1.0 with
        source ``"none"``.
        """
        user = self.calibration.get(crop, {})
        for key in (region, "default"):
            if key in user:
                d = dict(user[key])
                d.setdefault("region", key)
                d.setdefault("kind", "fitted")
                return d
        yp = self.yield_params(crop)
        cal = dict(yp.calibration) if yp is not None else {}
        for key in (region, "default"):
            if key in cal:
                v = cal[key]
                d = dict(v) if isinstance(v, Mapping) else {"factor": float(v)}
                d.setdefault("source", "crop registry")
                d["region"] = key
                d["kind"] = "default"
                return d
        return {"factor": 1.0, "source": "none (raw textbook parameters)", "region": region,
                "kind": "none"}

    def raw_yield(self, feats: pd.DataFrame) -> np.ndarray:
        """Uncalibrated LUE yield (factor 1) per feature row, t/ha at reporting basis."""
        out = np.full(len(feats), np.nan)
        for i, (c, apar) in enumerate(zip(feats["crop"], feats["apar_mj_m2"].to_numpy(float))):
            yp = self.yield_params(c)
            if yp is None or yp.yield_basis == "value_only" or not np.isfinite(apar):
                continue
            out[i] = (yp.harvest_index * yp.rue_g_mj * apar * 0.01 / (1.0 - yp.moisture)
                      * yp.product_fraction)
        return out

    def features(self, series, seasons, *, lat=None, region=None, radiation=None,
                 crop=None, climatology=None) -> pd.DataFrame:
        return season_features(series, seasons, index=self.index, registry=self.registry,
                               crop=crop, region=region or self.region, lat=lat,
                               radiation=radiation, fapar=self.fapar, climatology=climatology)

    def predict(self, series: pd.DataFrame, seasons, *, lat=None, region: str | None = None,
                radiation=None, crop: str | None = None, climatology=None) -> pd.DataFrame:
        """Yield P10/P50/P90 per (field_id, season); see :class:`YieldModel`.

        Parameters
        ----------
        series, seasons : DataFrame
            Daily series and seasons table (module docstring).
        lat : float or mapping field_id -> degrees, optional
            Latitude for radiation (default: seasons ``lat`` column, else the region's).
        region : str, optional
            Region when seasons have no ``region`` column (default: the model's).
        radiation : DataFrame, optional
            Daily ``time, rs_mj_m2`` (+ ``field_id``) measured radiation, MJ m-2 d-1.
        crop : str, optional
            Crop when seasons have no ``crop`` column.
        """
        feats = self.features(series, seasons, lat=lat, region=region, radiation=radiation,
                              crop=crop, climatology=climatology)
        raw = self.raw_yield(feats)
        n = len(feats)
        p50 = np.full(n, np.nan)
        quant: list[Mapping[str, Any] | None] = []
        basis, calib, extra = [], [], []
        sanity: list[tuple[float, ...]] = []
        # vigour reference for value-only crops
        vig_ref: dict[str, float] = {}
        for c, g in feats.groupby("crop"):
            fm = g["fapar_mean"].to_numpy(float)
            fm = fm[np.isfinite(fm)]
            if len(fm) >= 5:
                vig_ref[c] = float(np.median(fm))
        for i in range(n):
            c = feats["crop"].iloc[i]
            rg = feats["region"].iloc[i]
            yp = self.yield_params(c)
            if yp is None:
                quant.append(None)
                basis.append("")
                calib.append(json.dumps({"kind": "none", "reason": f"no yield parameters for "
                                         f"crop {c!r}"}))
                extra.append(["NO_MODEL"])
                sanity.append((0.0, math.inf))
                continue
            basis.append(yp.yield_basis)
            sanity.append(tuple(yp.sanity_t_ha))
            q = self.residuals.get(c) or _prior_quantiles(yp.prior_sigma)
            quant.append(q)
            if yp.yield_basis == "value_only":
                bench = dict(yp.benchmark_t_ha)
                b = bench.get(rg, bench.get("default"))
                fl = ["BENCHMARK_YIELD"]
                vr = 1.0
                fm = feats["fapar_mean"].iloc[i]
                if c in vig_ref and np.isfinite(fm) and vig_ref[c] > 0:
                    vr = float(np.clip(fm / vig_ref[c], 0.7, 1.3))
                if b is None:
                    fl.append("NO_MODEL")
                else:
                    p50[i] = float(b) * vr
                calib.append(json.dumps({"kind": "benchmark", "benchmark_t_ha": b,
                                         "vigour_ratio": vr, "region": rg,
                                         "source": yp.source, "interval": q.get("method", "")},
                                        ensure_ascii=False))
                extra.append(fl)
                continue
            f = self.factor(c, rg)
            p50[i] = raw[i] * float(f["factor"])
            calib.append(json.dumps({**_jsonable(f), "interval": q.get("method", "conformal")},
                                    ensure_ascii=False, sort_keys=True))
            extra.append([])
        return self._finish(feats, p50, quant, basis, calib, extra, sanity)


