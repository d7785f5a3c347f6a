"""A synthetic Sentinel-2 L2A world with known truth, for demos, tests and validation.

Everything is deterministic from ``WorldConfig.seed``. The default world is the demo world:
two overlapping MGRS-like tiles (``50SLD``, ``50SMD``; 3.2 km each, EPSG:32650) near
Shangqiu, Henan, 80 dates from 2021-10-01 to 2022-10-31 (5-day revisit, S2A/S2B), ~4000
farmed parcels of which 400 are registered fields.

Tables without rasters (fast; what the series/phenology/yield stages need)::

    from cropyield import synthetic as sy
    cfg = sy.WorldConfig(seed=0)
    fields = sy.make_fields(cfg)                 # GeoDataFrame, declared + true crops
    canopy = sy.true_canopy(fields, cfg)         # daily LAI, fcover, NDVI/EVI2/NDRE/NDMI
    seasons = sy.true_seasons(fields, cfg)       # SOS/POS/EOS, true yield, production
    obs = sy.simulate_observations(fields, cfg, indices=("ndvi", "evi2"))

Rasters and STAC (COGs one file per band per scene, Earth Search v1 metadata)::

    world = sy.make_world("/tmp/world", cfg)     # cached by cfg.key()
    world.items()                                # item dicts, absolute local hrefs
    world.write_items("items.ndjson", href_base="http://127.0.0.1:8123")

Truth is produced by a process that is not the library's yield model. Winter wheat, summer
and spring maize come from PCSE/WOFOST 7.2 runs (the shipped library of
:mod:`cropyield.cropmodel`): each field gets one run - weather year (shared by a village
block), soil rooting depth, sowing date, nitrogen and irrigation - and the same run gives its
daily green LAI (which drives the reflectance model) and its yield (scaled by one constant
per crop to the NBS 2024 mean); no noise is added to that yield. The other crops (no WOFOST
parameters ship with PCSE) keep a hand-made process: post-peak stress, variety harvest index
and pests change yield far more than greenness.
"""

from __future__ import annotations

from ._canopy import BANDS, CROPS, SYSTEMS
from ._config import SceneSpec, TileSpec, WorldConfig
from ._truth import (field_weather, make_fields, simulate_observations, true_canopy,
                     true_seasons)
from ._world import World, make_world

__all__ = [
    "WorldConfig", "TileSpec", "SceneSpec", "SYSTEMS", "CROPS", "BANDS",
    "make_fields", "true_canopy", "true_seasons", "simulate_observations", "field_weather",
    "World", "make_world",
]
