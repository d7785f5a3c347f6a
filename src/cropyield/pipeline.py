"""The whole chain in one call: scenes → observations → series → phenology → crops →
yield and value → credit profiles.

``estimate`` is what the demo runs and what a notebook user calls when they do not need
each stage separately. Every intermediate table is kept on the result so that nothing
the credit decision relied on is hidden.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ._geo import validate_fields
from ._log import logger

__all__ = ["estimate", "PipelineResult", "partition_fields", "DEFAULT_PARTITION_FIELDS"]

#: Indices computed by default: NDVI drives series and yield; NDRE and NDMI feed crop
#: identification (red-edge and moisture separate crops with similar NDVI calendars);
#: EVI2 (Jiang et al. 2008, Remote Sens. Environ. 112:3833) saturates less than NDVI over a
#: dense canopy and reads the same bands (B04, B08: no extra bytes). It gave the demo's
#: crop-model-trained summer maize yield +0.02 to +0.06 R² on each of four training draws
#: (docs/validation_yield.md, "EVI2 in the default indices").
DEFAULT_INDICES = ("ndvi", "evi2", "ndre", "ndmi")


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
    #: the :class:`cropyield.store.ResultStore` of a stored run (None otherwise)
    store: Any = None
    #: partitions a resumed run found complete and did not redo
    skipped: list = field(default_factory=list)
    #: run summary of a partitioned run (what ``summary.json`` holds)
    summary: dict = field(default_factory=dict)

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

        from ._io import atomic_write, atomic_write_path, with_small_attrs
        from ._version import __version__

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        manifest_path = out / "manifest.json"
        manifest_path.unlink(missing_ok=True)  # no manifest while files are being replaced
        paths: dict[str, Path] = {}
        tables = {name: getattr(self, name) for name in
                  ("observations", "series", "phenology", "crops", "estimates")
                  if getattr(self, name) is not None}   # None: left in the store
        tables["scenes"] = self.scenes.to_dataframe()
        for name, df in tables.items():
            df = with_small_attrs(df)
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
        self.names, self.progress = list(names), progress
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn: Callable, *args, **kwargs):
        i = self.names.index(name) + 1
        if self.progress is not None:
            self.progress(i, len(self.names), name)
        logger.info("stage %d/%d: %s", i, len(self.names), name)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = round(time.perf_counter() - t0, 3)
        return out


#: Fields per partition when the work is split (a spatial block of fields is one dask task;
#: its memory is that of reading and reducing these fields' pixels for every scene).
DEFAULT_PARTITION_FIELDS = 2000

#: Testing hook (``after:N`` or ``before:N``): pause for ever after the N-th partition is
#: committed to the store, or after its files are written but before its commit, so that a
#: test can kill the process at a known point (SIGKILL) instead of racing a timer.
_PAUSE_ENV = "CROPYIELD_TEST_PAUSE"


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
    client: Any = None,
    store: Any = None,
    partition_size: int | None = None,
    restart: bool = False,
    collect: bool = True,
    env: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress_bar: bool | None = None,
    weather: pd.DataFrame | None = None,
    covariates: pd.DataFrame | None = None,
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
        Called as ``progress(step, n_steps, stage_name)`` before each stage (one step per
        partition when the work is partitioned).
    client : distributed.Client, optional
        Run the partitions as tasks on this dask cluster (``[distributed]`` extra). GDAL
        options (``env``) are pushed to the workers with a worker plugin and numba uses as
        many threads as the worker has. Results are identical to a local run.
    store : path, fsspec URL or :class:`cropyield.store.ResultStore`, optional
        Write each partition's tables there as it completes (see :mod:`cropyield.store`)
        and, at the end, the consolidated tables (``estimates.parquet`` as GeoParquet,
        ``observations``, ``series``, ``phenology``, ``crops``, ``scenes``),
        ``credit_profiles.json`` and ``summary.json``. Calling again with the same inputs
        resumes: completed partitions are skipped (``result.skipped``).
    partition_size : int, optional
        Most fields per partition (default :data:`DEFAULT_PARTITION_FIELDS` when ``client``
        or ``store`` is given). Partitions are spatial blocks that follow the COG block grid
        of the scenes' tiles (read from one header per tile; longitude/latitude quadtree
        cells when it cannot be read), see :func:`partition_fields`; each field is in
        exactly one partition, and each partition reads every scene of every acquisition for
        its fields, so a field on a tile border is merged once, as in a single run. A COG
        block holding more fields than this is read again by each partition that holds
        some of them: keep it at or above the fields per block (a 1 024 px block at 10 m is
        about 105 km²).
    restart : bool
        With ``store``: discard what the store holds and start over.
    collect : bool
        Load every stage table into the result (default). With ``False`` and a store, only
        ``estimates`` and ``profiles`` are loaded; the other tables stay in the store
        (their result attributes are None), so memory does not grow with the county.
    env : dict, optional
        Extra GDAL options for reads (see :func:`cropyield.read.gdal_env`), set on the
        workers too (credentials, e.g. ``AWS_NO_SIGN_REQUEST``, go here).
    storage_options : dict, optional
        fsspec options for a ``store`` URL.
    progress_bar : bool, optional
        Show a tqdm bar on stderr (fields done, field-scene rows, MB read, ETA). Default:
        only when stderr is a terminal.
    weather, covariates : DataFrame, optional
        For yield models fitted with them (``fit_yield_model(weather=, covariates=)``):
        daily weather per field (``field_id, time, tmin_c, tmax_c, radiation_mj_m2,
        rain_mm``) and season covariates (``field_id[, season][, crop]``, ``wx_*`` columns,
        e.g. the crop-model index of :func:`cropyield.cropmodel.reference_yield`), keyed by
        the values of ``id_col``; passed to :func:`cropyield.estimate_yield` (each partition
        gets its own fields' rows) and part of a store's run fingerprint. A model that
        needs them raises :class:`~cropyield.errors.ModelError` without them.

    Returns
    -------
    PipelineResult
        ``estimates`` is a GeoDataFrame: one row per (field, season) with the field's
        geometry in the CRS of ``fields``.

    Raises
    ------
    cropyield.store.StoreMismatchError
        ``store`` holds a run with other inputs (pass ``restart=True``).

    Examples
    --------
    The whole chain for the fields of a file (needs the internet); results go to a
    resumable store:

    >>> import geopandas as gpd
    >>> import cropyield as cy
    >>> fields = gpd.read_file("fields.gpkg")  # doctest: +SKIP
    >>> result = cy.estimate(fields, "2024-10-01", "2025-06-30", catalog="earth-search",
    ...                      store="results/")  # doctest: +SKIP
    >>> result.estimates[["field_id", "season", "crop", "yield_t_ha_p50",
    ...                   "value_cny_p50"]].head()  # doctest: +SKIP
    >>> [p.decision for p in result.profiles][:5]  # doctest: +SKIP
    >>> result.write("out/")   # Parquet tables, credit JSON, manifest  # doctest: +SKIP
    """
    fields = validate_fields(fields, id_col=id_col)
    if "ndvi" not in indices:
        raise ValueError("indices must include 'ndvi' (it drives the series and the yield model)")
    weather = _field_table(weather, "weather", ("time",))
    covariates = _field_table(covariates, "covariates", ())
    opts = _Options(indices=tuple(indices), region=region, model=model, prices=prices,
                    as_of=as_of, on_error=on_error, declared_prior_odds=declared_prior_odds,
                    min_coverage_frac=min_coverage_frac, id_col=id_col,
                    env=dict(env or {}), window=(str(start), str(end)))
    if client is not None or store is not None or partition_size is not None:
        return _estimate_partitioned(
            fields, start, end, opts, catalog=catalog, collection=collection, scenes=scenes,
            max_cloud=max_cloud, policy=policy, progress=progress, client=client, store=store,
            partition_size=partition_size or DEFAULT_PARTITION_FIELDS, restart=restart,
            collect=collect, storage_options=storage_options, progress_bar=progress_bar,
            weather=weather, covariates=covariates)

    from . import credit
    from .catalogs import search_scenes
    from .identify import identify_crops
    from .observations import field_observations
    from .seasons import phenology
    from .series import smooth_series
    from .value import estimate_yield

    stages = _Stages(
        ["search", "observations", "series", "phenology", "crops", "yield", "credit"], progress
    )
    if scenes is None:
        scenes = stages.run("search", search_scenes, fields, start, end, catalog=catalog,
                            collection=collection, max_cloud=max_cloud)
    bar = None
    if read_progress is None and _want_bar(progress_bar):
        bar = _tqdm(total=len(scenes), unit="scene", desc="cropyield")
        read_progress = bar
    try:
        obs = stages.run("observations", field_observations, scenes, fields,
                         indices=tuple(indices), on_error=on_error, id_col=id_col,
                         progress=read_progress, min_coverage_frac=min_coverage_frac,
                         env=opts.env or None)
    finally:
        if bar is not None:
            bar.close()
    series = stages.run("series", _smooth_all, smooth_series, obs, indices)
    phen = stages.run("phenology", phenology, series, index="ndvi", as_of=as_of)
    declared = fields.set_index(id_col)["crop"] if "crop" in fields.columns else None
    crops = stages.run("crops", identify_crops, phen, region=region, declared=declared,
                       declared_prior_odds=declared_prior_odds)
    estimates = stages.run("yield", estimate_yield, series, fields, model=model, prices=prices,
                           phenology=phen, crops=crops, region=region, as_of=as_of,
                           id_col=id_col, weather=weather, covariates=covariates)
    estimates = _with_geometry(estimates, fields, id_col)
    profiles = stages.run("credit", credit.assess, estimates, policy=policy, as_of=as_of)
    return PipelineResult(scenes, obs, series, phen, crops, estimates, profiles, stages.timings)


@dataclass(frozen=True)
class _Options:
    """What every partition needs besides its fields and the scenes."""

    indices: tuple
    region: str
    model: Any
    prices: Any
    as_of: Any
    on_error: str
    declared_prior_odds: float
    min_coverage_frac: float
    id_col: str
    env: dict
    window: tuple | None = None


def _field_table(table, name: str, need: tuple) -> pd.DataFrame | None:
    """``weather=`` / ``covariates=`` of :func:`estimate` as a DataFrame with ``field_id``."""
    if table is None:
        return None
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name}= must be a pandas DataFrame, got {type(table).__name__}")
    miss = [c for c in ("field_id", *need) if c not in table.columns]
    if miss:
        raise ValueError(f"{name}= needs columns {miss} (field_id holds the fields' id_col "
                         "values)")
    return table


def _rows_of(table: pd.DataFrame | None, fields, id_col: str) -> pd.DataFrame | None:
    """The rows of a per-field table that belong to ``fields`` (one partition's)."""
    if table is None:
        return None
    return table[table["field_id"].isin(set(fields[id_col]))]


def _table_digest(table: pd.DataFrame | None) -> str | None:
    """Content digest of a per-field table, for the run fingerprint."""
    if table is None:
        return None
    import hashlib

    h = hashlib.sha256("\x00".join(map(str, table.columns)).encode())
    h.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _want_bar(progress_bar: bool | None) -> bool:
    if progress_bar is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress_bar)


def _tqdm(**kwargs):
    from tqdm.auto import tqdm

    try:
        cols = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        cols = 0
    if cols <= 0:  # a terminal that does not say its size (some ptys): fixed width
        return tqdm(file=sys.stderr, ncols=100, nrows=50, **kwargs)
    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


def _with_geometry(estimates: pd.DataFrame, fields, id_col: str):
    """``estimates`` as a GeoDataFrame with each field's geometry in the fields' CRS."""
    import geopandas as gpd

    est = pd.DataFrame(estimates)
    est = est.drop(columns=[c for c in ("geometry",) if c in est.columns])
    geom = fields.set_index(id_col).geometry
    key = "field_id" if "field_id" in est.columns else id_col
    out = gpd.GeoDataFrame(est, geometry=geom.reindex(est[key].to_numpy()).to_numpy(),
                           crs=fields.crs)
    out.attrs = dict(getattr(estimates, "attrs", {}))
    return out


# ------------------------------------------------------------------------------------------
# Partitions: spatial blocks of fields


def partition_fields(fields, *, max_fields: int = DEFAULT_PARTITION_FIELDS,
                     id_col: str = "field_id", grids: Sequence[Any] | None = None,
                     block_px: int | tuple[int, int] = 1024) -> pd.Series:
    """Assign each field to one spatial block of at most ``max_fields`` fields.

    Without ``grids``, blocks are cells of a quadtree over longitude/latitude (the whole
    globe, so a field's block does not depend on which other fields are in the run beyond its
    cell's count): a cell with more than ``max_fields`` fields is split into four, down to
    ~5 m cells. A field belongs to the cell of its representative point (a point inside the
    polygon), so it is in exactly one partition even when it straddles a block or tile border.

    With ``grids`` (the pixel grids of the scenes' tiles) and ``block_px`` (their COG block
    size), partitions follow the COG block grid instead, so that partitions do not read the
    same blocks again: a field belongs to the first grid (in a fixed order) that holds its
    representative point and to the block of that grid holding the point. A quadtree over
    each grid's blocks is split where a cell holds more than ``max_fields`` fields; the
    children of a split cell that hold at most ``max_fields`` fields are merged with their
    neighbours in Z order while the total stays within ``max_fields``; a single block holding
    more than ``max_fields`` fields is cut into ``ceil(n / max_fields)`` runs of equal size
    along a Z-order curve (those runs read their block again: the fewest possible re-reads
    at this partition size). Every partition is then a set of whole blocks, or one part of a
    block, and only fields that straddle a partition border read blocks of another partition.
    Fields outside every grid use the longitude/latitude quadtree.

    Parameters
    ----------
    fields : GeoDataFrame
        Fields with a CRS.
    max_fields : int
        Most fields per block (more only where >= ``max_fields`` points share a ~5 m cell).
    id_col : str
        Field id column (unused by the split; kept for a uniform signature).
    grids : sequence of cropyield Grid, optional
        Pixel grids to align the partitions with (see above).
    block_px : int or (int, int)
        COG block (tile) size in pixels of ``grids``, (rows, columns) or one number for both.

    Returns
    -------
    pandas.Series
        Partition id per field, indexed like ``fields``: a string like ``"q0312"`` (the
        quadtree path over longitude/latitude) or, aligned to grid ``k``, ``"g<k>q<path>"``
        followed by ``"m"`` (merged neighbour cells) or ``"r<i>"`` (the i-th run of a block).
    """
    import numpy as np

    if max_fields < 1:
        raise ValueError("max_fields must be >= 1")
    out = np.empty(len(fields), dtype=object)
    if not len(fields):
        return pd.Series(out, index=fields.index, name="partition")
    rest = np.ones(len(fields), bool)
    if grids:
        if isinstance(block_px, (int, np.integer)):
            bh = bw = int(block_px)
        else:
            bh, bw = (int(v) for v in block_px)
        if bh < 1 or bw < 1:
            raise ValueError("block_px must be >= 1")
        pts_native = fields.geometry.representative_point()
        ordered = sorted(set(grids), key=lambda g: (g.crs.to_string(), g.transform.c,
                                                     g.transform.f, g.transform.a, g.shape))
        by_crs: dict = {}
        for k, g in enumerate(ordered):
            key = g.crs.to_string()
            if key not in by_crs:
                p = pts_native.to_crs(g.crs)
                by_crs[key] = (p.x.to_numpy(), p.y.to_numpy())
            x, y = by_crs[key]
            t = g.transform
            col = np.floor((x - t.c) / t.a)
            row = np.floor((y - t.f) / t.e)
            inside = rest & (col >= 0) & (col < g.shape[1]) & (row >= 0) & (row < g.shape[0])
            if not inside.any():
                continue
            idx = np.flatnonzero(inside)
            r, c = row[idx].astype(np.int64), col[idx].astype(np.int64)
            nbr = -(-g.shape[0] // int(bh))
            nbc = -(-g.shape[1] // int(bw))
            lb = max(1, int(np.ceil(np.log2(max(nbr, nbc, 2)))))
            lp = max(1, int(np.ceil(np.log2(max(int(bh), int(bw), 2)))))
            bkey = _morton(r // int(bh), c // int(bw), lb)
            pkey = _morton(r % int(bh), c % int(bw), lp)
            ids = _split_aligned(bkey, pkey, lb, max_fields, f"g{k}q")
            out[idx] = ids
            rest[idx] = False
    if rest.any():
        idx = np.flatnonzero(rest)
        pts = fields.geometry.iloc[idx].representative_point().to_crs(4326)
        levels = 22
        n = 1 << levels
        x = np.clip(((pts.x.to_numpy() + 180.0) / 360.0 * n).astype(np.int64), 0, n - 1)
        y = np.clip(((pts.y.to_numpy() + 90.0) / 180.0 * n).astype(np.int64), 0, n - 1)
        out[idx] = _split_quadtree(_morton(y, x, levels), levels, max_fields, "q")
    return pd.Series(out, index=fields.index, name="partition")


def _morton(row, col, levels: int):
    """Z-order (Morton) key interleaving ``levels`` bits of ``col`` (even) and ``row`` (odd)."""
    import numpy as np

    key = np.zeros(len(row), dtype=np.uint64)
    row = np.asarray(row, np.int64)
    col = np.asarray(col, np.int64)
    for b in range(levels):  # a quadtree cell is a contiguous key range
        key |= ((col >> b) & 1).astype(np.uint64) << np.uint64(2 * b)
        key |= ((row >> b) & 1).astype(np.uint64) << np.uint64(2 * b + 1)
    return key


def _split_quadtree(key, levels: int, max_fields: int, prefix: str):
    """Quadtree cells (path strings) of Morton keys: split while > ``max_fields``."""
    import numpy as np

    order = np.argsort(key, kind="stable")
    skey = key[order]
    out = np.empty(len(key), dtype=object)

    def split(lo: int, hi: int, level: int, path: str) -> None:
        if hi - lo <= max_fields or level == levels:
            out[order[lo:hi]] = prefix + path
            return
        shift = np.uint64(2 * (levels - level - 1))
        cells = (skey[lo:hi] >> shift) & np.uint64(3)
        bounds = np.searchsorted(cells, np.arange(5, dtype=np.uint64))
        for q in range(4):
            a, b = lo + int(bounds[q]), lo + int(bounds[q + 1])
            if b > a:
                split(a, b, level + 1, path + str(q))

    split(0, len(key), 0, "")
    return out


def _split_aligned(bkey, pkey, levels: int, max_fields: int, prefix: str):
    """Partition ids of fields keyed by block (``bkey``, Morton over ``levels`` bits per
    axis) and by position inside the block (``pkey``); see :func:`partition_fields`."""
    import numpy as np

    order = np.lexsort((pkey, bkey))          # by block, then Z order inside the block
    sb = bkey[order]
    out = np.empty(len(bkey), dtype=object)

    def split(lo: int, hi: int, level: int, path: str) -> None:
        n = hi - lo
        if n <= max_fields:
            out[order[lo:hi]] = prefix + path
            return
        if level == levels:                   # one block: equal runs along the Z curve
            k = -(-n // max_fields)
            cuts = lo + (np.arange(k + 1) * n) // k
            width = len(str(k - 1))
            for i in range(k):
                out[order[cuts[i]:cuts[i + 1]]] = f"{prefix}{path}r{i:0{width}d}"
            return
        shift = np.uint64(2 * (levels - level - 1))
        cells = (sb[lo:hi] >> shift) & np.uint64(3)
        bounds = lo + np.searchsorted(cells, np.arange(5, dtype=np.uint64))
        group: list[int] = []                 # consecutive small children, merged

        def flush() -> None:
            if group:
                a, b = int(bounds[group[0]]), int(bounds[group[-1] + 1])
                tag = "" if len(group) == 1 else "m"
                out[order[a:b]] = prefix + path + str(group[0]) + tag
                group.clear()

        for q in range(4):
            a, b = int(bounds[q]), int(bounds[q + 1])
            if b == a:
                continue
            if b - a > max_fields:
                flush()
                split(a, b, level + 1, path + str(q))
                continue
            if group and b - int(bounds[group[0]]) > max_fields:
                flush()
            group.append(q)
        flush()

    split(0, len(bkey), 0, "")
    return out


def _fields_fingerprint(fields, id_col: str) -> str:
    import hashlib

    import shapely

    h = hashlib.sha256()
    h.update(str(fields.crs.to_string() if fields.crs else None).encode())
    h.update("\x00".join(map(str, fields[id_col])).encode())
    for wkb in shapely.to_wkb(fields.geometry.to_numpy(), hex=False):
        h.update(wkb)
    cols = [c for c in ("farmer_id", "crop", "declared_area_mu") if c in fields.columns]
    if cols:
        h.update(pd.util.hash_pandas_object(pd.DataFrame(fields[cols]), index=False)
                 .to_numpy().tobytes())
    return h.hexdigest()[:16]


def _describe(x: Any) -> Any:
    """A JSON-able description of an option, for the run fingerprint."""
    import hashlib

    if x is None or isinstance(x, (bool, int, float)):
        return x
    if isinstance(x, (str, Path)):
        p = Path(x)
        try:
            if p.is_file():
                return {"file": str(x), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        except OSError:
            pass
        return str(x)
    if isinstance(x, Mapping):
        return {str(k): _describe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_describe(v) for v in x]
    to_dict = getattr(x, "to_dict", None)
    if callable(to_dict):
        try:
            return {"type": type(x).__name__, "value": to_dict()}
        except Exception:  # noqa: BLE001 - best effort
            pass
    url = getattr(x, "url", None) or getattr(getattr(x, "self_href", None), "__str__", None)
    return {"type": type(x).__name__, "url": str(url) if url else None}


def _run_partition(pid: str, scenes, fields, opts: _Options, store, weather=None,
                   covariates=None) -> dict[str, Any]:
    """One partition: observations → series → phenology → crops → yield (on a worker or
    locally). Writes its tables to ``store`` (when given) or returns them. ``weather`` and
    ``covariates``: the partition's rows of :func:`estimate`'s tables."""
    _worker_setup()
    tables, info = _partition_tables(scenes, fields, opts, weather, covariates)
    info["partition"] = pid
    info["n_fields"] = int(len(fields))
    if store is not None:
        info["rows"] = store.write_partition(pid, tables)
    else:
        info["tables"] = tables
    return info


def _worker_setup() -> None:
    """On a dask worker: numba uses as many threads as the worker runs tasks (no
    oversubscription); GDAL options come from the worker plugin (``configure_rio``)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    n = getattr(worker, "nthreads", None) or getattr(getattr(worker, "state", None),
                                                     "nthreads", 1)
    if n is None:
        return
    try:
        import numba

        limit = int(getattr(numba.config, "NUMBA_NUM_THREADS"))  # set at import from the env
        numba.set_num_threads(max(1, min(int(n), limit)))
    except Exception:  # noqa: BLE001 - numba threading is an optimisation only
        pass


def _partition_tables(scenes, fields, o: _Options, weather=None,
                      covariates=None) -> tuple[dict[str, pd.DataFrame], dict]:
    from .identify import identify_crops
    from .observations import field_observations
    from .seasons import phenology
    from .series import smooth_series
    from .value import estimate_yield

    stages = _Stages(["observations", "series", "phenology", "crops", "yield"], None)
    obs = stages.run("observations", field_observations, scenes, fields, indices=o.indices,
                     on_error=o.on_error, id_col=o.id_col,
                     min_coverage_frac=o.min_coverage_frac, env=o.env or None)
    read: dict[str, Any] = {k: int(obs.attrs.get(k, 0) or 0)
                            for k in ("requests", "bytes_read", "blocks_read", "retries")}
    read["read_failures"] = list(obs.attrs.get("read_failures", []) or [])
    series = stages.run("series", _smooth_all, smooth_series, obs, o.indices, o.window)
    phen = stages.run("phenology", phenology, series, index="ndvi", as_of=o.as_of)
    declared = fields.set_index(o.id_col)["crop"] if "crop" in fields.columns else None
    crops = stages.run("crops", identify_crops, phen, region=o.region, declared=declared,
                       declared_prior_odds=o.declared_prior_odds)
    est = stages.run("yield", estimate_yield, series, fields, model=o.model, prices=o.prices,
                     phenology=phen, crops=crops, region=o.region, as_of=o.as_of,
                     id_col=o.id_col, weather=weather, covariates=covariates)
    est = _with_geometry(est, fields, o.id_col)
    tables = {"observations": obs, "series": series, "phenology": phen, "crops": crops,
              "estimates": est}
    for name, df in tables.items():  # attrs are run-level: they are summed by the driver
        df = df.copy(deep=False)
        df.attrs = {}
        tables[name] = df
    return tables, {"timings_s": stages.timings, "read": read,
                    "n_observations": int(len(obs))}


def _pause_hook(when: str, n: int) -> None:
    spec = os.environ.get(_PAUSE_ENV, "")
    if spec and spec == f"{when}:{n}":
        sys.stderr.write(f"cropyield: test pause {spec}\n")
        sys.stderr.flush()
        while True:  # pragma: no cover - killed by the test
            time.sleep(60)


def _estimate_partitioned(fields, start, end, o: _Options, *, catalog, collection, scenes,
                          max_cloud, policy, progress, client, store, partition_size, restart,
                          collect, storage_options, progress_bar, weather=None,
                          covariates=None) -> PipelineResult:
    from ._version import __version__
    from .catalogs import Scenes, search_scenes
    from .store import ResultStore, fingerprint

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    st = None
    if store is not None:
        st = store if isinstance(store, ResultStore) else ResultStore(
            store, storage_options=storage_options)
    # the scenes come first: the partitions follow their tiles' COG block grid
    t0 = time.perf_counter()
    found = scenes
    if found is None and st is not None and not restart and st.exists("scenes.json"):
        from .catalogs import PlanetaryComputerSigner

        items = st.read_json("scenes.json")
        signer = PlanetaryComputerSigner() if "planetary" in str(catalog) else None
        found = Scenes.from_items(items, signer=signer)
    elif found is None:
        found = search_scenes(fields, start, end, catalog=catalog, collection=collection,
                              max_cloud=max_cloud)
    timings["search"] = round(time.perf_counter() - t0, 3)
    grids, block = _block_grids(found, o)
    parts = partition_fields(fields, max_fields=partition_size, id_col=o.id_col,
                             grids=grids, block_px=block or 1024)
    pids = sorted(set(parts))
    run = {
        "cropyield_version": __version__,
        "fields": _fields_fingerprint(fields, o.id_col), "n_fields": int(len(fields)),
        "start": str(start), "end": str(end),
        "catalog": _describe(catalog), "collection": collection, "max_cloud": max_cloud,
        "scenes": None if scenes is None else sorted(s.id for s in scenes),
        "indices": list(o.indices), "region": o.region, "model": _describe(o.model),
        "prices": _describe(o.prices), "policy": _describe(policy), "as_of": str(o.as_of),
        "on_error": o.on_error, "declared_prior_odds": o.declared_prior_odds,
        "min_coverage_frac": o.min_coverage_frac, "id_col": o.id_col,
        "partition_size": int(partition_size), "n_partitions": len(pids),
        "partition_block_px": None if block is None else list(block),
    }
    if weather is not None or covariates is not None:  # runs without them keep their print
        run["weather"] = _table_digest(weather)
        run["covariates"] = _table_digest(covariates)
    run["fingerprint"] = fingerprint(run)
    done: dict[str, Any] = st.begin(run, restart=restart) if st is not None else {}
    done = {k: v for k, v in done.items() if k in set(pids)}
    if done and st is not None:
        n_done_fields = sum(int(v.get("n_fields", 0)) for v in done.values())
        logger.info("resuming %s: skipping %d of %d partitions already complete "
                       "(%d of %d fields)", st.url, len(done), len(pids), n_done_fields,
                       len(fields))

    scenes = found
    if st is not None and not st.exists("scenes.json"):
        st.write_json("scenes.json", [_item_dict(s) for s in scenes])

    from .read import configure_rio

    if o.env:
        configure_rio(client=client, **o.env)
    elif client is not None:
        configure_rio(client=client)

    todo = [p for p in pids if p not in done]
    groups = {pid: g for pid, g in fields.groupby(parts, sort=True)}
    bar = None
    if _want_bar(progress_bar):
        bar = _tqdm(total=len(fields), unit="field", desc="cropyield",
                    initial=sum(int(v.get("n_fields", 0)) for v in done.values()))
    infos: dict[str, dict] = dict(done)
    stats = {"requests": 0, "bytes_read": 0, "blocks_read": 0, "retries": 0, "obs": 0}
    n_committed = 0

    def finished(info: dict) -> None:
        nonlocal n_committed
        pid = info["partition"]
        tables = info.pop("tables", None)
        if tables is not None:
            infos[pid] = {**info, "tables": tables}
        else:
            infos[pid] = info
        _pause_hook("before", n_committed + 1)
        if st is not None:
            st.commit(pid, {k: v for k, v in info.items() if k != "tables"})
        n_committed += 1
        for k in ("requests", "bytes_read", "blocks_read", "retries"):
            stats[k] += info["read"][k]
        stats["obs"] += info["n_observations"]
        if progress is not None:
            progress(len(infos), len(pids), f"partition {pid}")
        if bar is not None:
            bar.set_postfix_str(f"parts {len(infos)}/{len(pids)} field-scenes {stats['obs']} "
                                f"read {stats['bytes_read'] / 1e6:.0f} MB", refresh=False)
            bar.update(info["n_fields"])
        _pause_hook("after", n_committed)

    t0 = time.perf_counter()
    try:
        if client is None:
            for pid in todo:
                finished(_run_partition(pid, scenes, groups[pid], o, st,
                                        _rows_of(weather, groups[pid], o.id_col),
                                        _rows_of(covariates, groups[pid], o.id_col)))
        else:
            from distributed import as_completed

            [scen] = client.scatter([scenes], broadcast=True)
            # largest partitions first, so that the last task to finish is a small one
            # (the workers' busy times end close together)
            futs = [client.submit(_run_partition, pid, scen, groups[pid], o, st,
                                  _rows_of(weather, groups[pid], o.id_col),
                                  _rows_of(covariates, groups[pid], o.id_col),
                                  key=f"cropyield-partition-{pid}-{run['fingerprint']}",
                                  pure=False, retries=1, priority=len(groups[pid]))
                    for pid in todo]
            for fut in as_completed(futs):
                finished(fut.result())
                fut.release()
    finally:
        if bar is not None:
            bar.close()
    timings["partitions"] = round(time.perf_counter() - t0, 3)

    # ---------------------------------------------------------------- gather and finish
    t0 = time.perf_counter()
    names = ("observations", "series", "phenology", "crops", "estimates")
    if st is not None:
        if collect:
            tables = {n: st.read(n) for n in names}
        else:
            tables = {n: None for n in names}
            tables["estimates"] = st.read("estimates")
    else:
        from .store import _concat

        tables = {n: _concat([infos[p]["tables"][n] for p in pids]) for n in names}
    est = tables["estimates"]
    if not len(est.columns):
        est = _with_geometry(pd.DataFrame({"field_id": []}), fields, o.id_col)
    profiles = _assess(pd.DataFrame(est).drop(columns="geometry", errors="ignore"),
                       policy=policy, as_of=o.as_of, client=client)
    timings["credit"] = round(time.perf_counter() - t0, 3)
    stage_t: dict[str, float] = {}
    for info in infos.values():
        for k, v in info.get("timings_s", {}).items():
            stage_t[k] = round(stage_t.get(k, 0.0) + v, 3)
    read_totals = {k: sum(int(i.get("read", {}).get(k, 0)) for i in infos.values())
                   for k in ("requests", "bytes_read", "blocks_read", "retries")}
    failures = [f for i in infos.values() for f in i.get("read", {}).get("read_failures", [])]
    obs = tables["observations"]
    if obs is not None:
        obs.attrs.update(read_totals, read_failures=failures, indices=list(o.indices),
                         scene_ids=[s.id for s in scenes])
    if tables["series"] is not None and obs is not None:
        valid = obs[obs["valid_fraction"].fillna(0) > 0] if "valid_fraction" in obs else obs
        tables["series"].attrs["scene_ids"] = {
            fid: sorted(set(g)) for fid, g in valid.groupby("field_id")["scene_id"]}
    skipped = sorted(done)
    result = PipelineResult(scenes, obs, tables["series"], tables["phenology"],
                            tables["crops"], est, profiles,
                            {**timings, **{f"{k} (sum over partitions)": v
                                           for k, v in stage_t.items()}})
    result.store = st
    result.skipped = skipped
    result.summary = {
        "cropyield_version": __version__,
        "run": run,
        "n_fields": int(len(fields)),
        "n_farmers": int(fields["farmer_id"].nunique()) if "farmer_id" in fields else None,
        "n_scenes": len(scenes),
        "n_partitions": len(pids),
        "partitions_skipped": skipped,
        "n_partitions_skipped": len(skipped),
        "n_fields_skipped": sum(int(done[p].get("n_fields", 0)) for p in skipped),
        "n_observations": sum(int(i.get("n_observations", 0)) for i in infos.values()),
        **read_totals,
        "read_failures": len(failures),
        "n_estimates": int(len(est)),
        "decisions": pd.Series([p.decision for p in profiles], dtype=object)
        .value_counts().to_dict(),
        "timings_s": result.timings_s,
    }
    if st is not None:
        t0 = time.perf_counter()
        _write_outputs(st, result, pids)
        result.timings_s["write"] = round(time.perf_counter() - t0, 3)
        result.summary["timings_s"] = result.timings_s
        result.summary["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
        st.write_json("summary.json", result.summary)
    return result


#: Fewest estimate rows per credit task on a cluster (below: one call on the driver).
_CREDIT_CHUNK_ROWS = 2000


def _assess(est: pd.DataFrame, *, policy, as_of, client) -> list:
    """``credit.assess`` on all estimates; on a cluster, farmer by farmer on the workers.

    ``assess`` is farmer-level (pure Python, ~5 ms per field: minutes for a county on the
    driver alone, after every partition). With a client and enough rows, the farmers are
    cut into contiguous chunks (in ``farmer_id`` order, so concatenating the chunks'
    profiles keeps ``assess``'s order) that run as tasks. The one input shared by all
    farmers, the assessment date when ``as_of`` is None (the latest imagery date over all
    evidence, else the latest harvest), is first resolved from every chunk's dates exactly
    as ``assess`` resolves it, and then passed to every chunk. Tables where a field is
    claimed by more than one farmer (duplicate claims are checked across farmers) run in
    one call."""
    from . import credit

    if (client is None or len(est) < 2 * _CREDIT_CHUNK_ROWS or "farmer_id" not in est.columns
            or est.groupby("field_id")["farmer_id"].nunique(dropna=True).gt(1).any()):
        return credit.assess(est, policy=policy, as_of=as_of)
    import numpy as np

    from .credit._assess import _str

    farmer = pd.Series([_str(v) for v in est["farmer_id"]], index=est.index)
    order = sorted(set(farmer.dropna()))
    if len(order) < 2:
        return credit.assess(est, policy=policy, as_of=as_of)
    n_chunks = min(len(order), max(2, -(-len(est) // _CREDIT_CHUNK_ROWS)))
    rank = {f: i for i, f in enumerate(order)}
    # rows without a farmer go with the first chunk (assess logs and skips them)
    chunk_of = np.array([0 if f is None else rank[f] * n_chunks // len(order)
                         for f in farmer])
    chunks = [est[chunk_of == k] for k in range(n_chunks) if (chunk_of == k).any()]
    logger.info("credit: %d farmers in %d chunks on the cluster", len(order), len(chunks))
    futs = client.scatter(chunks)
    if as_of is None:
        dates = client.gather([client.submit(_evidence_dates, f, pure=False) for f in futs])
        last = [d for d, _ in dates if d is not None]
        harvest = [h for _, h in dates if h is not None]
        if last:
            as_of = max(last)
        elif harvest:
            logger.warning("assess: as_of not given and no imagery date known; using the "
                           "latest expected harvest %s (pass as_of= explicitly)", max(harvest))
            as_of = max(harvest)
        else:
            return credit.assess(est, policy=policy, as_of=None)   # raises its own error
    parts = client.gather([client.submit(credit.assess, f, policy=policy, as_of=as_of,
                                         pure=False) for f in futs])
    return [p for part in parts for p in part]


def _evidence_dates(est: pd.DataFrame) -> tuple[Any, Any]:
    """Latest imagery date and latest harvest date over the evidence ``credit.assess``
    builds from ``est`` (rows with a farmer; dates taken as ``field_evidence`` takes them):
    what it resolves ``as_of`` from."""
    from .credit._assess import _date, _scene_date, _str

    last, harvest = None, None
    has_last = "last_obs_date" in est.columns
    has_ids = "scene_ids" in est.columns
    has_h = "harvest_date" in est.columns
    for rec in est.to_dict("records"):
        if _str(rec.get("farmer_id")) is None:
            continue
        d = _date(rec.get("last_obs_date")) if has_last else None
        if d is None and has_ids:
            ids = {x.strip() for x in (_str(rec.get("scene_ids")) or "").split(",")
                   if x.strip()}
            dates = [v for v in map(_scene_date, ids) if v is not None]
            d = max(dates) if dates else None
        if d is not None:
            last = d if last is None else max(last, d)
        h = _date(rec.get("harvest_date")) if has_h else None
        if h is not None:
            harvest = h if harvest is None else max(harvest, h)
    return last, harvest


def _block_grids(scenes, o: _Options) -> tuple[list | None, tuple[int, int] | None]:
    """The reference pixel grids of the scenes' tiles (finest needed band, as the
    observations use) and their COG block shape, read from one header per grid: what
    :func:`partition_fields` aligns the partitions with. (None, None) when there are no
    scenes or a header cannot be read (the partitions then follow longitude/latitude)."""
    if not len(scenes):
        return None, None
    try:
        from .indices import INDICES as REG
        from .read import BlockReader

        needed = sorted({b for ix in o.indices for b in REG[ix].bands})
        firsts: dict = {}
        for sc in scenes:
            names = [b for b in needed + ["SCL"] if b in sc.bands]
            band = min((sc.bands[b] for b in names), key=lambda b: b.grid.resolution)
            firsts.setdefault(band.grid, (band.href, getattr(sc, "signer", None)))
        shapes = set()
        for href, signer in firsts.values():
            with BlockReader(threads=1, env=o.env or None, signer=signer,
                             max_attempts=2) as rd:
                shapes.add(tuple(int(v) for v in rd.meta(href).block_shape))
        bh, bw = max(h for h, _ in shapes), max(w for _, w in shapes)
        return list(firsts), (bh, bw)
    except Exception as exc:  # noqa: BLE001 - alignment is an optimisation only
        logger.info("partitions follow longitude/latitude: COG block grid not read (%s)",
                    type(exc).__name__)
        return None, None


def _item_dict(scene) -> dict:
    item = getattr(scene, "item", None)
    if item is None:
        raise ValueError(f"scene {scene.id} carries no STAC item; cannot store it for resume")
    return item if isinstance(item, dict) else item.to_dict()


def _write_outputs(st, result: PipelineResult, pids: Sequence[str]) -> None:
    """The consolidated tables (streamed, one partition in memory at a time), the scenes,
    the credit profiles."""
    import io
    import json

    for name in ("observations", "series", "phenology", "crops", "estimates"):
        st.consolidate(name, partitions=pids)
    buf = io.BytesIO()
    result.scenes.to_dataframe().to_parquet(buf, index=False)
    st.write_bytes("scenes.parquet", buf.getvalue())
    st.write_bytes("credit_profiles.json", json.dumps(
        [p.to_dict() for p in result.profiles], indent=1, sort_keys=True).encode())


def _smooth_all(smooth_series, obs: pd.DataFrame, indices: Sequence[str],
                window: tuple | None = None) -> pd.DataFrame:
    """Smooth every index and join them into one daily table keyed by (field_id, time).

    ``window`` (start, end) is used only when ``obs`` is empty (a partition whose fields no
    scene covers): an empty series, so that those fields get flagged estimate rows."""
    out: pd.DataFrame | None = None
    span = {} if len(obs) or window is None else {"start": window[0], "end": window[1]}
    for ix in indices:
        s = smooth_series(obs, index=ix, **span)
        if out is None:
            out = s
        else:
            keep = [c for c in s.columns if c not in out.columns or c in ("field_id", "time")]
            out = out.merge(s[keep], on=["field_id", "time"], how="left")
    if out is None:
        raise ValueError("no index to smooth: indices is empty")
    # lineage: the scenes that gave each field a valid observation travel with the series,
    # so estimates and credit profiles can name (and date) the imagery they rest on
    valid = obs[obs["valid_fraction"].fillna(0) > 0] if "valid_fraction" in obs else obs
    out.attrs["scene_ids"] = {
        fid: sorted(set(g)) for fid, g in valid.groupby("field_id")["scene_id"]
    }
    return out
