"""Search STAC catalogs for Sentinel-2 L2A scenes and normalise their items.

Owner of: :func:`search_scenes`, :func:`normalize_item`, :class:`Scene`, :class:`Scenes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ._geo import Grid

__all__ = ["Band", "Scene", "Scenes", "search_scenes", "normalize_item", "CANONICAL_BANDS"]

#: Canonical band names, whatever the catalog calls them.
CANONICAL_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "SCL")


@dataclass(frozen=True)
class Band:
    """One band asset of a scene, ready to read.

    ``reflectance = DN * scale + offset`` for reflectance bands; SCL has scale 1, offset 0.
    """

    name: str                 # canonical name, e.g. "B04"
    href: str                 # unsigned href (local path or URL)
    resolution: float         # metres
    grid: Grid                # the asset's own grid
    nodata: float | None      # DN nodata value (0 for L2A)
    scale: float
    offset: float
    dtype: str = "uint16"


@dataclass(frozen=True)
class Scene:
    """A normalised Sentinel-2 L2A item."""

    id: str
    datetime: pd.Timestamp            # tz-aware UTC
    collection: str
    tile: str                         # MGRS tile, e.g. "50SKE"
    platform: str                     # "sentinel-2a" / "sentinel-2b"
    processing_baseline: str | None   # "04.00"
    cloud_cover: float | None         # tile-level eo:cloud_cover, percent
    bands: dict[str, Band]
    offset_source: str                # "raster:bands" | "baseline" | "none" | "override"
    flags: tuple[str, ...] = ()       # e.g. ("OFFSET_INCONSISTENT",)
    properties: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    item: Any = field(default=None, compare=False, repr=False)   # the pystac.Item

    @property
    def crs(self):
        return next(iter(self.bands.values())).grid.crs


class Scenes(Sequence[Scene]):
    """An ordered collection of :class:`Scene` plus the lineage of how it was found."""

    def __init__(self, scenes: Iterable[Scene], lineage: dict[str, Any] | None = None):
        self._scenes = sorted(scenes, key=lambda s: (s.datetime, s.tile, s.id))
        self.lineage: dict[str, Any] = dict(lineage or {})

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Scenes(self._scenes[i], self.lineage)
        return self._scenes[i]

    def __len__(self) -> int:
        return len(self._scenes)

    def __iter__(self) -> Iterator[Scene]:
        return iter(self._scenes)

    def __repr__(self) -> str:
        return f"<Scenes n={len(self)} tiles={sorted({s.tile for s in self})}>"

    @classmethod
    def from_items(cls, items: Iterable[Any], **kwargs) -> "Scenes":
        """Normalise pystac Items or item dicts (local hrefs allowed)."""
        return cls([normalize_item(it, **kwargs) for it in items])

    def to_dataframe(self) -> pd.DataFrame:
        """One row per scene: id, datetime, tile, platform, baseline, cloud cover, offset source."""
        return pd.DataFrame(
            [
                {"scene_id": s.id, "time": s.datetime, "tile": s.tile, "platform": s.platform,
                 "processing_baseline": s.processing_baseline, "cloud_cover": s.cloud_cover,
                 "offset_source": s.offset_source, "flags": ",".join(s.flags)}
                for s in self
            ]
        )


def normalize_item(item, **kwargs) -> Scene:  # pragma: no cover - implemented by issue 3
    raise NotImplementedError


def search_scenes(aoi, start, end, *, catalog="earth-search", collection=None, max_cloud=None,
                  max_items=None, client=None) -> Scenes:  # pragma: no cover - issue 3
    raise NotImplementedError
