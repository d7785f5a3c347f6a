"""Yield models: per-field yield P10/P50/P90 from a daily index series and a seasons table.

The two calls most users need::

    model = fit_yield_model(series, observed, crop="winter_wheat", method="empirical",
                            groups=observed["weather_year"])        # grouped CV, conformal P10-P90
    est = cropyield.estimate_yield(series, fields, model=model)    # area, production, value

(:func:`cropyield.value.estimate_yield` lives one stage down, in :mod:`cropyield.value`.)

Methods of :func:`fit_yield_model` (all share :class:`YieldModel`: P10/P50/P90, flags, quality,
JSON persistence, never pickle):

* ``"lue"`` - :class:`LUEModel`, light-use efficiency; needs no yields (default factors from
  national statistics) or calibrates its factor to crop cuts or an aggregate mean.
* ``"empirical"`` - :class:`EmpiricalModel`, a regularised scikit-learn regression of yield
  or log yield on phenological-window features of every index present (or their compact
  subset); target, feature set and learner chosen by grouped CV on the error in t/ha
  (:func:`cropyield.yieldmodel.learners.select_model`).
* ``"simulation"`` - :class:`SimulationModel`, the empirical regression trained on crop-model simulations
  (:class:`cropyield.cropmodel.SimulatedSeasons`, SCYM) and levelled to county statistics or
  a few crop cuts.

Weather covariates (SCYM uses them beside the imagery): :func:`weather_features` (means of
daily weather over SOS-POS and POS-POS+35 d); ``fit_yield_model(..., weather=)`` offers them
to the grouped-CV feature choice, and a model that chose them predicts with ``weather=``.
Opt-in pooled group features (:mod:`.pooled`, ``pool_by=``): group means of the post-peak
integrals over the fields of one county and season; one field's estimate then depends on
the others' imagery.

Skill: :func:`yield_skill` (R², RMSE, bias, P10-P90 coverage per crop) and
:func:`canopy_ceiling` (what a regression on the noise-free canopy reaches on the same seasons).

Modules: :mod:`.features` (season features), :mod:`.intervals` (quality scale, conformal
quantiles), :mod:`.base` (interface, JSON), :mod:`.lue`, :mod:`.empirical`, :mod:`.simulation`,
:mod:`.fit` (fitting and grouped CV), :mod:`.skill` (skill and ceiling), :mod:`.weather`
(weather covariates).
"""

from __future__ import annotations

from .base import SCHEMA_VERSION, YieldModel
from .empirical import DEFAULT_FEATURES, EmpiricalModel, ridge_fit
from .features import (FAPAR_MAX, FAPAR_RELATIONS, RED_EDGE_INDICES, fapar_from_index,
                       season_features)
from .fit import fit_yield_model
from .intervals import conformal_quantiles, quality_scale
from .lue import LUEModel
from .simulation import SimulationModel
from .skill import canopy_ceiling, yield_skill
from .weather import weather_features
from .windows import window_features

__all__ = [
    "fit_yield_model",
    "yield_skill",
    "canopy_ceiling",
    "window_features",
    "weather_features",
    "YieldModel",
    "LUEModel",
    "EmpiricalModel",
    "SimulationModel",
    "SCHEMA_VERSION",
    "FAPAR_RELATIONS",
    "season_features",
    "conformal_quantiles",
    "quality_scale",
]
# also importable here as before the split (not in __all__ then either):
# DEFAULT_FEATURES, FAPAR_MAX, RED_EDGE_INDICES, fapar_from_index, ridge_fit
_ = (DEFAULT_FEATURES, FAPAR_MAX, RED_EDGE_INDICES, fapar_from_index, ridge_fit)
