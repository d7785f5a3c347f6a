"""Per-field observations: one row per (field, acquisition) with coverage-weighted index stats.

Entry point: :func:`field_observations` (below); :func:`observations_to_xarray` gives a
``(field, time)`` Dataset. The machinery lives beside it: ``_kernels`` (numba kernels and
their NumPy twins), ``_plan`` (coverage and streaming order per grid), ``_run`` (the
orchestrator, one acquisition at a time) and ``_table`` (flags and table assembly).

:func:`field_observations` glues the stages together for a list of scenes:

1. **Coverage once per grid.** Exact coverage fractions (:func:`cropyield.coverage_fractions`)
   are computed once per (fields, tile grid) on the scene's finest needed grid (10 m for
   NDVI) and reused for every date on that grid. 20 m bands are gathered through the exact
   2 x 2 nesting of Sentinel-2 grids (10 m pixel ``(r, c)`` lies in 20 m pixel
   ``(r // 2, c // 2)``).
2. **SCL first.** For every scene the SCL blocks under the fields are read (with
   ``dilate`` pixels of padding when cloud/shadow dilation is asked) and turned into a
   per-pixel code: outside the valid swath (SCL 0), masked, or clear.
3. **One grid per field and acquisition.** Scenes are grouped by acquisition (solar day at
   the scene centre). A field seen by several scenes of the same acquisition (overlapping
   MGRS tiles, neighbouring UTM zones, reprocessed duplicates) is assigned to the single
   scene that covers it best: largest share of the field inside the valid swath, then
   largest share inside the grid, then most clear coverage (shares rounded to 0.1 % so
   that the same field measured in two UTM projections ties), then the newest processing
   baseline (reprocessed duplicates), then the first scene in (tile, id) order. It is never
   counted twice.
4. **Bands, streamed.** The reflectance bands of each scene are read only for the blocks
   where a field assigned to it has a clear pixel. Each run of blocks is reduced by the
   reader thread that decoded it: reflectance with each band's own scale/offset (so pre-
   and post-04.00 products agree), the index (numba), and weighted sums per (block, field)
   slot with weights ``coverage fraction x validity``; slots are merged per field at the
   end of the scene (``docs/method.md``, "streaming").

Memory: one decoded run window per reader thread, SCL codes of the pixels under the fields
and small per-slot accumulators for at most ``threads + 2`` acquisitions in flight; rows are
accumulated as NumPy arrays and one DataFrame is built at the end.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, CropYieldError
from ..read import _as_scene_list, _solar_day  # noqa: F401  (re-exported helpers)
from ..read._blocks import deadline_seconds
from ._run import _baseline, _run_acquisitions
from ._table import OBSERVATION_COLUMNS, _assemble, merge_observations, observations_to_xarray

__all__ = ["field_observations", "observations_to_xarray", "merge_observations",
           "OBSERVATION_COLUMNS"]


def field_observations(scenes, fields, *, indices: Sequence[str] = ("ndvi",),
                       scl_classes: Iterable[int] | None = None, dilate: int = 0,
                       min_valid_fraction: float = 0.0, id_col: str = "field_id",
                       on_error: str = "raise", progress: Any = None, threads: int = 2,
                       min_coverage_frac: float = 0.0,
                       env: Mapping[str, Any] | None = None,
                       signer: Callable[[str], str] | None = None,
                       max_attempts: int = 4,
                       read_deadline: float | str | None = "auto",
                       verify_checksums: bool = False,
                       repair_geometry: bool = False) -> pd.DataFrame:
    """Coverage-weighted vegetation-index statistics per (field, acquisition).

    Parameters
    ----------
    scenes : Scenes, or iterable of Scene / pystac.Item / STAC item dict
        Sentinel-2 L2A scenes (hrefs may be local paths or http(s) URLs). Items are
        normalised with :func:`cropyield.normalize_item`.
    fields : geopandas.GeoDataFrame
        Field polygons with a CRS and a unique ``id_col`` (any CRS; reprojected per grid).
    indices : sequence of str
        Index names from :data:`cropyield.INDICES` (``"ndvi"``, ``"evi"``, ``"ndre"``...).
    scl_classes : iterable of int, optional
        SCL classes treated as invalid (default 0, 1, 3, 8, 9, 10, 11).
    dilate : int
        Dilate cloud and shadow masks by this many SCL pixels (20 m each).
    min_valid_fraction : float
        Rows whose valid fraction is below this get NaN values and ``LOW_VALID_FRACTION``.
    min_coverage_frac : float
        Pixels covered by less than this fraction of their area are left out of the index
        means and stds (exactextract's ``min_coverage_frac``); ``coverage`` and
        ``valid_fraction`` still count every pixel. Mixed edge pixels bias small fields
        towards their neighbours (``docs/method.md``), so ~0.5 suits yield work; a field with
        no such pixel gets NaN and ``FIELD_TOO_SMALL``. Default 0: exact area weighting.
    id_col : str
        Field identifier column.
    on_error : {"raise", "flag"}
        ``"raise"``: a failed read raises :class:`~cropyield.errors.AssetReadError` (or
        ``CorruptAssetError`` / ``AuthExpiredError``) with a redacted href. ``"flag"``: the
        affected rows get NaN values and ``READ_FAILED`` / ``AUTH_EXPIRED`` and the failure
        is listed in ``df.attrs["read_failures"]``.
    progress : None, True, callable or tqdm-like
        ``True`` logs progress at INFO on the ``cropyield`` logger; a tqdm-like object
        gets ``.update(1)`` per acquisition; a callable is called as ``progress(done, total)``.
    threads : int
        Reader threads (each with its own GDAL handles). Default 2.
    env : dict, optional
        Extra GDAL configuration options (see :func:`cropyield.read.gdal_env`).
    signer : callable, optional
        ``signer(href) -> signed href`` for remote assets (e.g. ``planetary_computer.sign``);
        a scene attribute ``signer`` is used when this is None. Re-called once on HTTP 403.
    max_attempts : int
        Attempts per block read for transient failures.
    read_deadline : float, "auto" or None
        Total seconds for all reads of this call (counted from its start; the downloads of
        ``verify_checksums`` included). After it no read is started or retried: with
        ``on_error="raise"`` the next read raises :class:`~cropyield.errors.AssetReadError`
        (``reason="deadline"``); with ``"flag"`` the rows of every scene not read by then
        get NaN values and ``READ_FAILED``, and ``attrs["read_failures"]`` lists them with
        ``reason="deadline"``. The deadline is strict within 1 s
        (:data:`cropyield.read._blocks.DEADLINE_SLACK`), also when a server stalls a request
        in flight: handles opened near it get GDAL timeouts cut to the time left, and a read
        still in flight 1 s after it is abandoned (it ends in the background; its values are
        dropped, never used). ``"auto"`` (default): 600 s + 120 s per scene, ample for
        healthy servers (a scene's blocks under the fields take seconds) yet a stalled server
        costs minutes, not ~20 minutes per scene. None: no deadline.
    repair_geometry : bool
        Repair invalid polygons (e.g. self-intersecting "bow-ties") with
        :func:`shapely.make_valid`, keeping their polygonal parts, and flag their rows
        ``GEOMETRY_REPAIRED``. Default False: such fields get ``INVALID_GEOMETRY`` rows
        without numbers (a repaired outline may not be the field the farmer means).
    verify_checksums : bool
        Fetch every needed asset whose item states ``file:checksum`` (a multihash) in full
        and compare digests before reading (:func:`cropyield.read.verify_checksum`). A
        mismatch raises :class:`~cropyield.errors.CorruptAssetError` (``reason="checksum"``)
        or, with ``on_error="flag"``, flags the scene's rows ``READ_FAILED``. Default
        False: only the tiles under the fields are fetched, so damage elsewhere in a file
        goes unseen, a damaged DEFLATE tile fails to decode, and a damaged uncompressed
        tile is caught only where its reflectance leaves the physical range
        (``REFLECTANCE_OUT_OF_RANGE``).

    Returns
    -------
    pandas.DataFrame
        One row per (field, acquisition), every field included (see Notes), sorted by
        field (input order) then time. Columns: ``field_id``, ``time``
        (``datetime64[ns, UTC]``), ``scene_id``, ``tile``, ``coverage`` (sum of coverage
        fractions in the grid, pixels of the finest band), ``covered_fraction`` (coverage
        / field area in pixels, 0..1: the share of the field inside the scene's grid;
        below 1 the row is flagged ``PARTIAL_COVERAGE``), ``valid_fraction`` (clear
        coverage / coverage, 0..1; pixels masked as saturated or outside the physical
        reflectance range count as not clear: ``SATURATED``,
        ``REFLECTANCE_OUT_OF_RANGE``), per index ``<index>`` (weighted mean, dimensionless)
        and ``<index>_std`` (weighted population standard deviation), ``flags``.
        ``attrs``: ``requests``, ``bytes_read``, ``blocks_read``, ``retries``,
        ``read_failures`` (list of dicts with redacted href), ``scene_ids``, ``indices``.

    Notes
    -----
    Every field comes out: a field with no pixel in any scene's grid gets ``NO_OVERLAP``
    rows, one whose geometry cannot be measured (empty, not polygonal, self-intersecting,
    non-finite vertices) ``INVALID_GEOMETRY`` rows, one per acquisition, with NaN values.

    Chunks: the one-scene-per-field rule holds within a call. Calling this per chunk of
    scenes (dask, threads) must not split the scenes of one acquisition between chunks,
    or the chunks' tables must be combined with :func:`merge_observations`, which drops
    the duplicate field-days.

    Raises
    ------
    MissingCRSError, InvalidFieldsError
        Bad fields table.
    AssetReadError
        With ``on_error="raise"``, when a read fails after retries, or when a file's shape,
        transform or CRS differs from its item's ``proj:`` metadata (reason
        ``grid_mismatch``: the fields would land on the wrong pixels).

    Examples
    --------
    ``scenes`` from :func:`cropyield.search_scenes`; the reads need the internet.

    >>> import geopandas as gpd
    >>> import cropyield as cy
    >>> fields = gpd.read_file("fields.gpkg")   # polygons with a field_id column  # doctest: +SKIP
    >>> obs = cy.field_observations(scenes, fields, indices=("ndvi", "ndre"))  # doctest: +SKIP
    >>> obs[["field_id", "time", "ndvi", "valid_fraction", "flags"]].head()  # doctest: +SKIP
    """
    from .. import indices as ix
    from .._geo import validate_fields

    if on_error not in ("raise", "flag"):
        raise ConfigError(f"on_error must be 'raise' or 'flag', got {on_error!r}")
    if isinstance(indices, str):
        indices = (indices,)
    indices = tuple(indices)
    if not indices:
        raise ConfigError("indices is empty; ask for at least one index, e.g. ('ndvi',)")
    specs = {}
    for name in indices:
        get = getattr(ix, "get_index", None)
        spec = get(name) if get is not None else ix.INDICES.get(name)
        if spec is None:
            raise ConfigError(f"unknown index {name!r}; known: {sorted(ix.INDICES)}")
        specs[name] = spec
    bands_needed = sorted({b for s in specs.values() for b in s.bands})
    classes = tuple(ix.DEFAULT_SCL_INVALID if scl_classes is None else scl_classes)
    if dilate < 0:
        raise ConfigError("dilate must be >= 0 (pixels)")
    if not 0.0 <= float(min_valid_fraction) <= 1.0:
        raise ConfigError("min_valid_fraction must be within [0, 1]")
    if not 0.0 <= float(min_coverage_frac) <= 1.0:
        raise ConfigError("min_coverage_frac must be within [0, 1]")
    fields = validate_fields(fields, id_col=id_col)
    scene_list = _as_scene_list(scenes)
    read_deadline = deadline_seconds(read_deadline, len(scene_list))
    for s in scene_list:
        missing = [b for b in bands_needed if b not in s.bands]
        if missing:
            raise CropYieldError(f"scene {s.id} lacks bands {missing} needed for {indices}; "
                                 f"available: {sorted(s.bands)}")

    # reference grid per scene: finest of the needed bands (+SCL)
    ref_grids = []
    for s in scene_list:
        names = bands_needed + (["SCL"] if "SCL" in s.bands else [])
        ref_grids.append(min((s.bands[b].grid for b in names), key=lambda g: g.resolution))
    # acquisitions
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(scene_list):
        groups.setdefault(_solar_day(s), []).append(i)
    for members in groups.values():
        # ties in the assignment go to the newest processing (reprocessed duplicates), then
        # to the first tile/id in order
        members.sort(key=lambda i: (-_baseline(scene_list[i]), scene_list[i].tile,
                                    scene_list[i].id))
    order = sorted(groups, key=lambda k: (k, min(scene_list[i].datetime for i in groups[k])))
    field_ids = np.asarray(fields[id_col].to_numpy())
    t_end = None if read_deadline is None else _time.monotonic() + read_deadline
    pre_failed = (_verify_checksums(scene_list, bands_needed, on_error, signer, t_end)
                  if verify_checksums else {})
    results, stats, state = _run_acquisitions(
        scene_list, fields, ref_grids, groups, order, specs, bands_needed, classes,
        int(dilate), float(min_valid_fraction), on_error, float(min_coverage_frac), id_col,
        progress, threads, env, signer, max_attempts,
        None if t_end is None else max(t_end - _time.monotonic(), 1e-3), pre_failed,
        bool(repair_geometry))
    return _assemble(results, scene_list, field_ids, indices, stats, state.failures, classes,
                     dilate, fields=fields, acquisitions=[groups[k][0] for k in order],
                     repaired=_repaired(fields) if repair_geometry else None)


def _asset_checksum(scene, band) -> str | None:
    """The ``file:checksum`` of a band's asset on the scene's STAC item (None: none)."""
    item = getattr(scene, "item", None)
    key = getattr(band, "asset_key", None)
    if item is None or key is None:
        return None
    asset = getattr(item, "assets", {}).get(key)
    if asset is None:
        return None
    extra = getattr(asset, "extra_fields", None) or {}
    value = extra.get("file:checksum")
    return str(value) if value else None


def _verify_checksums(scene_list, bands_needed, on_error: str, signer,
                      t_end: float | None = None) -> dict[int, Any]:
    """Verify the ``file:checksum`` of every needed asset; ``{scene position: (band,
    error)}`` of the failures (``on_error="flag"``), else raise the first. ``t_end``: the
    read deadline (a ``time.monotonic()`` value) that bounds every download."""
    from ..errors import AssetReadError
    from ..read import verify_checksum

    failed: dict[int, Any] = {}
    for i, s in enumerate(scene_list):
        for b in list(bands_needed) + (["SCL"] if "SCL" in s.bands else []):
            band = s.bands[b]
            cs = _asset_checksum(s, band)
            if cs is None:
                continue
            try:
                verify_checksum(band.href, cs, signer=signer or getattr(s, "signer", None),
                                deadline=None if t_end is None else t_end - _time.monotonic())
            except AssetReadError as exc:
                if on_error == "raise":
                    raise
                failed[i] = (b, exc)
                break
    return failed


def _repaired(fields) -> np.ndarray:
    """Positions of the fields that ``make_valid`` repairs (invalid, non-empty)."""
    import shapely

    g = np.asarray(fields.geometry.values, dtype=object)
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(~shapely.is_valid(g) & ~shapely.is_empty(g))
