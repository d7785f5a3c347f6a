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


def _benchmark_yield(yp: YieldParams, region: str) -> float | None:
    """A ``value_only`` crop's benchmark yield (t/ha) for ``region``: the registry's
    regional figure, else its ``default``; None when it has neither."""
    bench = dict(yp.benchmark_t_ha)
    b = bench.get(region, bench.get("default"))
    return None if b is None else float(b)


#: Fewest seasons of a crop whose median fAPAR may serve as its vigour reference.
MIN_VIGOUR_SEASONS = 5


def batch_vigour_reference(fapar_mean) -> float | None:
    """Median season-mean fAPAR of one crop's seasons (dimensionless), or None with fewer
    than :data:`MIN_VIGOUR_SEASONS` finite values."""
    fm = np.asarray(fapar_mean, dtype=float)
    fm = fm[np.isfinite(fm)]
    return float(np.median(fm)) if len(fm) >= MIN_VIGOUR_SEASONS else None


class LUEModel(YieldModel):
    """Light-use-efficiency yield model with per-crop, per-region calibration.

    ``yield [t/ha] = HI × RUE [g DM/MJ APAR] × Σ(fAPAR × PAR) [MJ m-2] × 0.01 / (1 − moisture)
    × product_fraction × factor``, accumulated from ``sos`` (or the crop's green-up day,
    ``active_from_doy``) to ``eos``. Crops with ``yield_basis = "value_only"`` (orchards, tea,
    vegetables) get ``benchmark × level × ratio ** elasticity``: the regional benchmark yield
    (registry), a fitted level (``calibration``: a county statistic and/or crop cuts,
    :func:`cropyield.fit_yield_model`; 1 before fitting) and the vigour ratio (season-mean
    fAPAR relative to a reference fAPAR of the crop, clipped to [0.7, 1.3]) raised to the
    crop's vigour elasticity (``vigour``; default the registry's prior ``vigour_elasticity``,
    updated by crop cuts when fitted). The reference is the median season-mean fAPAR of the
    crop's seasons the model was fitted on (``vigour_reference``, pinned by
    :func:`cropyield.fit_yield_model`), so that a fitted model gives a field the same estimate
    whatever other fields are estimated with it; an unfitted model falls back to the median
    of the crop's seasons in the batch (>= 5; a ratio of 1 otherwise).

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
    vigour : mapping, optional
        ``{crop: {"elasticity", "sd", "n_cuts", "source"}}`` vigour elasticity of
        ``value_only`` crops (set by :func:`fit_yield_model`); default: the registry's prior
        (``vigour_elasticity``, ``vigour_elasticity_sd``).
    vigour_reference : mapping, optional
        ``{crop: {"fapar": float, "n_seasons": int}}`` reference season-mean fAPAR
        (dimensionless) of ``value_only`` crops' vigour ratios (set by
        :func:`fit_yield_model`); default: the batch median.
    """

    kind = "lue"

    def __init__(self, *, overrides=None, index: str = "ndvi",
                 fapar: Mapping[str, Any] | None = None, region: str = "north_china_plain",
                 calibration: Mapping[str, Any] | None = None,
                 residuals: Mapping[str, Any] | None = None,
                 vigour: Mapping[str, Any] | None = None,
                 vigour_reference: Mapping[str, Any] | None = None):
        self.registry, self.overrides = _registry_from(overrides)
        self.index = index
        self.fapar = dict(fapar) if fapar else None
        self.region = region
        self.calibration = {c: {r: dict(v) for r, v in d.items()}
                            for c, d in (calibration or {}).items()}
        self.residuals = {c: dict(v) for c, v in (residuals or {}).items()}
        self.vigour = {c: dict(v) for c, v in (vigour or {}).items()}
        self.vigour_reference = {c: dict(v) for c, v in (vigour_reference or {}).items()}
        self.cv_ = None

    def _params(self) -> dict[str, Any]:
        d = {"overrides": self.overrides, "index": self.index, "fapar": self.fapar,
             "region": self.region, "calibration": _jsonable(self.calibration),
             "residuals": _jsonable(self.residuals)}
        if self.vigour:  # absent from files written before it existed; they still load
            d["vigour"] = _jsonable(self.vigour)
        if self.vigour_reference:
            d["vigour_reference"] = _jsonable(self.vigour_reference)
        return d

    def vigour_elasticity(self, crop: str) -> dict[str, Any]:
        """Vigour elasticity of a ``value_only`` crop: ``{"elasticity", "sd", "n_cuts",
        "source"}`` - the fitted one (``vigour``) or the registry's prior."""
        if crop in self.vigour:
            return dict(self.vigour[crop])
        yp = self.yield_params(crop)
        e = float(yp.vigour_elasticity) if yp is not None else 1.0
        sd = float(yp.vigour_elasticity_sd) if yp is not None else 0.5
        return {"elasticity": e, "sd": sd, "n_cuts": 0, "source": "crop registry prior"}

    def vigour_ratios(self, feats: pd.DataFrame) -> np.ndarray:
        """Vigour ratio per feature row: season-mean fAPAR / the crop's reference fAPAR,
        clipped to [0.7, 1.3]. The reference is the pinned one (``vigour_reference``) when
        the model was fitted for the crop, else the median of the crop's seasons in
        ``feats`` (>= 5 finite); 1.0 where there is none (an unfitted model and fewer than 5
        seasons of the crop) or the season has no fAPAR."""
        out = np.ones(len(feats))
        fm_all = feats["fapar_mean"].to_numpy(float)
        crops = feats["crop"].to_numpy()
        for c in pd.unique(crops):
            sel = crops == c
            fm = fm_all[sel]
            ok = np.isfinite(fm)
            ref = self.vigour_reference.get(c, {}).get("fapar")
            if ref is None:
                ref = batch_vigour_reference(fm)
            if ref is None or not ref > 0:
                continue
            out[sel] = np.where(ok, np.clip(fm / float(ref), 0.7, 1.3), 1.0)
        return out

    def _fitted_factor(self, crop: str, region: str) -> dict[str, Any] | None:
        user = self.calibration.get(crop, {})
        for key in (region, "default"):
            if key in user:
                return {"region": key, **dict(user[key])}
        return None

    def _base_yield(self, feats: pd.DataFrame) -> np.ndarray:
        """Yield before the fitted level: the raw LUE yield, or for ``value_only`` crops the
        benchmark × vigour ratio ** elasticity (t/ha); NaN where neither applies."""
        out = self.raw_yield(feats)
        vr = self.vigour_ratios(feats)
        for i, (c, rg) in enumerate(zip(feats["crop"], feats["region"] if "region" in feats
                                        else [self.region] * len(feats))):
            yp = self.yield_params(c)
            if yp is None or yp.yield_basis != "value_only":
                continue
            b = _benchmark_yield(yp, rg)
            if b is not None:
                out[i] = float(b) * vr[i] ** float(self.vigour_elasticity(c)["elasticity"])
        return out

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
        fitted = self._fitted_factor(crop, region)
        if fitted is not None:
            fitted.setdefault("kind", "fitted")
            return fitted
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
        vrs = self.vigour_ratios(feats)
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
                b = _benchmark_yield(yp, rg)
                fl = ["BENCHMARK_YIELD"]
                vr = float(vrs[i])
                ve = self.vigour_elasticity(c)
                lev = self._fitted_factor(c, rg)
                fac = float(lev["factor"]) if lev is not None else 1.0
                if b is None:
                    fl.append("NO_MODEL")
                else:
                    p50[i] = float(b) * fac * vr ** float(ve["elasticity"])
                rec = {"kind": "benchmark", "benchmark_t_ha": b, "vigour_ratio": vr,
                       "vigour_elasticity": float(ve["elasticity"]),
                       "vigour_source": ve.get("source", ""), "region": rg,
                       "source": yp.source, "interval": q.get("method", "")}
                if lev is not None:
                    rec["level"] = _jsonable(lev)
                calib.append(json.dumps(rec, ensure_ascii=False))
                extra.append(fl)
                continue
            f = self.factor(c, rg)
            p50[i] = raw[i] * float(f["factor"])
            calib.append(json.dumps({**_jsonable(f), "interval": q.get("method", "conformal")},
                                    ensure_ascii=False, sort_keys=True))
            extra.append([])
        return self._finish(feats, p50, quant, basis, calib, extra, sanity)


