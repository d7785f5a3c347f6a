"""A synthetic Sentinel-2 L2A world with known truth, for demos, tests and validation.

Deterministic from a seed. Phase A (tables, no rasters): :func:`make_fields`,
:func:`true_canopy`, :func:`true_seasons`, :func:`simulate_observations`.
Rasters and STAC: :func:`make_world` / :class:`World`.
"""

from __future__ import annotations

from ._canopy import BANDS, CROPS, SYSTEMS
from ._config import SceneSpec, TileSpec, WorldConfig
from ._truth import make_fields, simulate_observations, true_canopy, true_seasons
from ._world import World, make_world

__all__ = [
    "WorldConfig", "TileSpec", "SceneSpec", "SYSTEMS", "CROPS", "BANDS",
    "make_fields", "true_canopy", "true_seasons", "simulate_observations",
    "World", "make_world",
]
