"""The whole chain in one call: scenes → observations → series → phenology → crops →
yield and value → credit profiles.

``estimate`` is what the demo runs and what a notebook user calls when they do not need
each stage separately. Every intermediate table is kept on the result so that nothing
the credit decision relied on is hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ._geo import validate_fields
from ._log import logger

__all__ = ["estimate", "PipelineResult"]

#: Indices computed by default: NDVI drives series and yield; NDRE and NDMI feed crop
#: identification (red-edge and moisture separate crops with similar NDVI calendars).
DEFAULT_INDICES = ("ndvi", "ndre", "ndmi")


@dataclass
class PipelineResult:
    """Every table the chain produced, plus timings and lineage."""

    scenes: Any
    observations: pd.DataFrame
    series: pd.DataFrame
    phenology: pd.DataFrame
    crops: pd.DataFrame
    estimates: pd.DataFrame
    profiles: list
    timings_s: dict[str, float] = field(default_factory=dict)

    def write(self, out: str | Path) -> dict[str, Path]:
        """Write all tables (Parquet/GeoParquet) and the credit profiles (JSON) to ``out``.

        Every file is written under a temporary name in ``out`` and renamed into place when
        complete, so a run killed mid-way never leaves a truncated file at a final path.
        ``manifest.json`` (file names, sizes in bytes, SHA-256, library version, UTC time)
        is removed first and written last: a folder without a manifest holds an incomplete
        write (possibly files of two runs); trust the files only when it is present.

        Returns
        -------
        dict of str to Path
            Table name -> path, including ``"manifest"``.
        """
        import datetime as _dt
        import hashlib
        import json

        from ._io import atomic_write, atomic_write_path
        from ._version import __version__

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        manifest_path = out / "manifest.json"
        manifest_path.unlink(missing_ok=True)  # no manifest while files are being replaced
        paths: dict[str, Path] = {}
        tables = {name: getattr(self, name) for name in
                  ("observations", "series", "phenology", "crops", "estimates")}
        tables["scenes"] = self.scenes.to_dataframe()
        for name, df in tables.items():
            paths[name] = atomic_write_path(out / f"{name}.parquet",
                                            lambda tmp, df=df: df.to_parquet(tmp, index=False))
        p = out / "credit_profiles.json"
        with atomic_write(p, "w", encoding="utf-8") as fh:
            fh.write(json.dumps([pr.to_dict() for pr in self.profiles], indent=1,
                                sort_keys=True))
        paths["credit_profiles"] = p
        files = {}
        for name, path in paths.items():
            data = path.read_bytes()
            files[name] = {"path": path.name, "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {"library_version": __version__,
                    "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                    "files": files}
        with atomic_write(manifest_path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(manifest, indent=1, sort_keys=True))
        paths["manifest"] = manifest_path
        return paths


class _Stages:
    """Times each stage and reports progress as ``(step, n_steps, label)``."""

    def __init__(self, names: Sequence[str], progress: Callable | None):
        self.names, self.progress, self.timings = list(names), progress, {}

    def run(self, name: str, fn: Callable, *args, **kwargs):
        i = self.names.index(name) + 1
        if self.progress is not None:
            self.progress(i, len(self.names), name)
        logger.info("stage %d/%d: %s", i, len(self.names), name)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = round(time.perf_counter() - t0, 3)
        return out


def estimate(
    fields,
    start,
    end,
    *,
    catalog: Any = "earth-search",
    collection: str | None = None,
    scenes=None,
    indices: Sequence[str] = DEFAULT_INDICES,
    region: str = "north_china_plain",
    max_cloud: float | None = None,
    model=None,
    prices=None,
    policy=None,
    as_of=None,
    on_error: str = "flag",
    declared_prior_odds: float = 1.0,
    min_coverage_frac: float = 0.0,
    id_col: str = "field_id",
    progress: Callable[[int, int, str], None] | None = None,
    read_progress: Any = None,
) -> PipelineResult:
    """Run the whole chain for ``fields`` between ``start`` and ``end``.

    Parameters
    ----------
    fields : GeoDataFrame
        Field polygons with a CRS and a unique ``id_col``; optional ``farmer_id``, ``crop``
        (declared crop id) and ``declared_area_mu`` columns are used by the credit checks.
    start, end : date-like
        Search window (UTC dates, inclusive).
    catalog : str or pystac_client.Client
        ``"earth-search"``, ``"planetary-computer"``, a STAC API URL or a client.
    scenes : Scenes, optional
        Already searched scenes; skips the search.
    indices : sequence of str
        Indices computed per field and date; ``"ndvi"`` is required.
    region : str
        Crop-calendar and price region (see :data:`cropyield.crops.REGIONS`).
    on_error : {"flag", "raise"}
        Read failures become flagged rows (default, so that one bad COG cannot stop a county
        run and is still visible in every downstream table) or raise.
    declared_prior_odds : float
        Prior odds given to the declared ``crop`` in crop identification (1.0: imagery only;
        see :func:`cropyield.identify_crops`).
    min_coverage_frac : float
        Leave pixels covered by less than this fraction out of the field means (see
        :func:`cropyield.field_observations`; 0 = exact area weighting).
    progress : callable, optional
        Called as ``progress(step, n_steps, stage_name)`` before each stage.

    Returns
    -------
    PipelineResult
    """
    from . import credit
    from .catalogs import search_scenes
    from .identify import identify_crops
    from .observations import field_observations
    from .seasons import phenology
    from .series import smooth_series
    from .value import estimate_yield

    fields = validate_fields(fields, id_col=id_col)
    if "ndvi" not in indices:
        raise ValueError("indices must include 'ndvi' (it drives the series and the yield model)")
    stages = _Stages(
        ["search", "observations", "series", "phenology", "crops", "yield", "credit"], progress
    )
    if scenes is None:
        scenes = stages.run("search", search_scenes, fields, start, end, catalog=catalog,
                            collection=collection, max_cloud=max_cloud)
    obs = stages.run("observations", field_observations, scenes, fields, indices=tuple(indices),
                     on_error=on_error, id_col=id_col, progress=read_progress,
                     min_coverage_frac=min_coverage_frac)
    series = stages.run("series", _smooth_all, smooth_series, obs, indices)
    phen = stages.run("phenology", phenology, series, index="ndvi", as_of=as_of)
    declared = fields.set_index(id_col)["crop"] if "crop" in fields.columns else None
    crops = stages.run("crops", identify_crops, phen, region=region, declared=declared,
                       declared_prior_odds=declared_prior_odds)
    estimates = stages.run("yield", estimate_yield, series, fields, model=model, prices=prices,
                           phenology=phen, crops=crops, region=region, as_of=as_of)
    profiles = stages.run("credit", credit.assess, estimates, policy=policy, as_of=as_of)
    return PipelineResult(scenes, obs, series, phen, crops, estimates, profiles, stages.timings)


def _smooth_all(smooth_series, obs: pd.DataFrame, indices: Sequence[str]) -> pd.DataFrame:
    """Smooth every index and join them into one daily table keyed by (field_id, time)."""
    out = None
    for ix in indices:
        s = smooth_series(obs, index=ix)
        if out is None:
            out = s
        else:
            keep = [c for c in s.columns if c not in out.columns or c in ("field_id", "time")]
            out = out.merge(s[keep], on=["field_id", "time"], how="left")
    # lineage: the scenes that gave each field a valid observation travel with the series,
    # so estimates and credit profiles can name (and date) the imagery they rest on
    valid = obs[obs["valid_fraction"].fillna(0) > 0] if "valid_fraction" in obs else obs
    out.attrs["scene_ids"] = {
        fid: sorted(set(g)) for fid, g in valid.groupby("field_id")["scene_id"]
    }
    return out
