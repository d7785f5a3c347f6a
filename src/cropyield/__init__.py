"""cropyield: Sentinel-2 imagery to per-field crop yield, output value and credit inputs.

The pipeline, one module per stage (imports flow down this list only)::

    catalogs   search_scenes, normalize_item, Scenes
    read       field-centric COG block reads (threads, retries, byte accounting), load_cube
    coverage   coverage_fractions (exact pixel-coverage fractions, numba)
    indices    index registry + numba kernels, formulas; masks (SCL); zonal: zonal_stats
    observations field_observations (per field x scene statistics)
    series     smooth_series (weighted Whittaker)
    seasons    phenology (seasons, SOS/POS/EOS, integrals, growth stage)
    crops      crop registry; identify: identify_crops, CropClassifier
    yieldmodel LUEModel, EmpiricalModel, fit_yield_model
    value      estimate_yield (area, production, output value)
    credit     FieldEvidence, CreditProfile, Policy, assess, monitor
    pipeline   estimate (the whole chain; partitioned, resumable, local or dask.distributed)
    store      ResultStore (partitioned results, manifest, atomic writes)

Public names are imported lazily so that ``import cropyield`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AssetReadError,
    CatalogError,
    CropYieldError,
    CropYieldWarning,
    MissingCRSError,
    NoScenesError,
    UnknownCollectionError,
)

_LAZY: dict[str, str] = {
    "search_scenes": "catalogs",
    "normalize_item": "catalogs",
    "Scene": "catalogs",
    "Scenes": "catalogs",
    "Grid": "_geo",
    "load_cube": "read",
    "coverage_fractions": "coverage",
    "INDICES": "indices",
    "zonal_stats": "zonal",
    "compute_index": "indices",
    "register_index": "indices",
    "field_observations": "observations",
    "observations_to_xarray": "observations",
    "smooth_series": "series",
    "fit_double_logistic": "series",
    "phenology": "seasons",
    "load_registry": "crops",
    "get_crop": "crops",
    "identify_crops": "identify",
    "CropClassifier": "identify",
    "YieldModel": "yieldmodel",
    "LUEModel": "yieldmodel",
    "EmpiricalModel": "yieldmodel",
    "fit_yield_model": "yieldmodel",
    "estimate_yield": "value",
    "PriceTable": "value",
    "estimate": "pipeline",
    "show_versions": "_versions",
}
_SUBMODULES = ("credit", "synthetic", "servers", "radiation", "plot", "errors", "store")

__all__ = [
    "__version__",
    "AssetReadError",
    "CatalogError",
    "CropYieldError",
    "CropYieldWarning",
    "MissingCRSError",
    "NoScenesError",
    "UnknownCollectionError",
    *_LAZY,
    *_SUBMODULES,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cropyield' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from . import credit, servers, synthetic  # noqa: F401
    from ._geo import Grid  # noqa: F401
    from .catalogs import Scene, Scenes, normalize_item, search_scenes  # noqa: F401
    from .coverage import coverage_fractions  # noqa: F401
    from .identify import CropClassifier, identify_crops  # noqa: F401
    from .indices import INDICES, compute_index, register_index  # noqa: F401
    from .observations import field_observations, observations_to_xarray  # noqa: F401
    from .pipeline import estimate  # noqa: F401
    from .read import load_cube  # noqa: F401
    from .seasons import phenology  # noqa: F401
    from .series import smooth_series  # noqa: F401
    from .value import PriceTable, estimate_yield  # noqa: F401
    from .yieldmodel import EmpiricalModel, LUEModel, YieldModel, fit_yield_model  # noqa: F401
    from ._versions import show_versions  # noqa: F401
    from .zonal import zonal_stats  # noqa: F401
