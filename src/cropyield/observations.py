"""Per-field observations: one row per (field, acquisition) with coverage-weighted index stats.

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
4. **Bands.** The reflectance bands of each scene are read only for the blocks where a
   field assigned to it has a clear pixel, gathered as 1-D vectors, converted to
   reflectance with each band's own scale/offset (so pre- and post-04.00 products agree),
   turned into indices by the numba kernels and reduced per field with weights
   ``coverage fraction x validity``.

Memory: only the pixels under the fields of at most ``threads + 2`` acquisitions are held;
rows are accumulated as NumPy arrays and one DataFrame is built at the end.
"""

from __future__ import annotations

import threading
import time as _time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ._geo import Grid
from ._log import logger, redact
from .read import _as_scene_list, _solar_day  # noqa: F401  (re-exported helpers)
from .errors import AssetReadError, AuthExpiredError, ConfigError, CropYieldError

__all__ = ["field_observations", "observations_to_xarray", "OBSERVATION_COLUMNS"]

#: Leading columns of the observations table (then ``<index>``, ``<index>_std``, ``flags``).
OBSERVATION_COLUMNS = ("field_id", "time", "scene_id", "tile", "coverage", "valid_fraction")

# per-pixel codes after the SCL pass
_OUTSIDE, _MASKED, _CLEAR = 0, 1, 2

# row flag bits
_B_NO_OVERLAP, _B_ALL_MASKED, _B_LOW_VALID, _B_READ_FAILED, _B_AUTH = 1, 2, 4, 8, 16
_BIT_CODES = {_B_NO_OVERLAP: "NO_OVERLAP", _B_ALL_MASKED: "ALL_MASKED",
              _B_LOW_VALID: "LOW_VALID_FRACTION", _B_READ_FAILED: "READ_FAILED",
              _B_AUTH: "AUTH_EXPIRED"}


# --------------------------------------------------------------------------------------------
# scene helpers


def _baseline(scene) -> float:
    try:
        return float(scene.processing_baseline)
    except (TypeError, ValueError):
        return -1.0


def _factor(band_grid: Grid, ref: Grid, what: str) -> int:
    """Integer nesting factor of ``band_grid`` into ``ref`` (same CRS and origin)."""
    k = band_grid.resolution / ref.resolution
    ki = int(round(k))
    if (ki < 1 or abs(k - ki) > 1e-9 or not band_grid.crs.equals(ref.crs)
            or abs(band_grid.transform.c - ref.transform.c) > 1e-6
            or abs(band_grid.transform.f - ref.transform.f) > 1e-6):
        raise CropYieldError(
            f"band {what} does not nest into the {ref.resolution:g} m grid of its scene (CRS, "
            f"origin or resolution ratio differ); Sentinel-2 grids must share their origin. "
            f"Check the item's proj:transform metadata")
    return ki


# --------------------------------------------------------------------------------------------
# per-grid context (coverage computed once, unique pixels, coarse maps)


@dataclass
class _GridCtx:
    cov: Any
    pf: np.ndarray          # field index of every CSR entry
    inv: np.ndarray         # CSR entry -> unique pixel index
    urows: np.ndarray
    ucols: np.ndarray
    cov_sum: np.ndarray     # per field, in pixels
    area_px: np.ndarray
    coarse: dict
    want_cand: np.ndarray = None    # unique pixels under fields with coverage > 0
    lock: Any = field(default_factory=threading.Lock)

    def pixels(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unique pixels on a grid ``k`` times coarser and the map unique fine -> coarse."""
        hit = self.coarse.get(k)
        if hit is not None:
            return hit
        with self.lock:
            return self._pixels(k)

    def want_on(self, k: int, want_u: np.ndarray) -> np.ndarray:
        """Pixels of the ``k`` times coarser grid holding a pixel of ``want_u`` (cached for
        ``want_cand``, the same for every date)."""
        if k == 1:
            return want_u
        if want_u is self.want_cand:
            hit = self.coarse.get(("want", k))
            if hit is not None:
                return hit
        brow, _, inv_k = self.pixels(k)
        want_b = np.zeros(len(brow), bool)
        want_b[inv_k[want_u]] = True
        if want_u is self.want_cand:
            self.coarse[("want", k)] = want_b
        return want_b

    def _pixels(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hit = self.coarse.get(k)
        if hit is None:
            if k == 1:
                hit = (self.urows, self.ucols, np.arange(len(self.urows)))
            else:
                w = int(self.ucols.max()) // k + 1 if len(self.ucols) else 1
                if len(self.urows) and np.all(self.urows[1:] >= self.urows[:-1]):
                    # urows/ucols come from a sorted unique flat index (row-major): one
                    # linear pass gives what np.unique of the coarse flat index gives
                    hit = _coarse_unique(self.urows, self.ucols, k, w)
                else:
                    flat = (self.urows // k) * w + self.ucols // k
                    u, inv = np.unique(flat, return_inverse=True)
                    hit = (u // w, u % w, inv.ravel())
            self.coarse[k] = hit
        return hit


def _coarse_unique_ref(urows, ucols, k, w):
    """NumPy twin of :func:`_coarse_unique`."""
    flat = (np.asarray(urows) // k) * w + np.asarray(ucols) // k
    u, inv = np.unique(flat, return_inverse=True)
    return u // w, u % w, inv.ravel()


def _make_coarse_unique():
    import numba

    @numba.njit(nogil=True)
    def _coarse_unique(urows, ucols, k, w):  # pragma: no cover - compiled
        """Unique pixels of the ``k`` times coarser grid (``w`` columns) of fine pixels
        sorted by (row, col), in (row, col) order, and the map fine -> coarse index."""
        n = urows.shape[0]
        slot = np.full(w, -1, np.int64)
        out_r = np.empty(n, np.int64)
        out_c = np.empty(n, np.int64)
        inv = np.empty(n, np.int64)
        nu = 0
        i = 0
        while i < n:
            cr = urows[i] // k
            j = i
            cmin = w
            cmax = -1
            while j < n and urows[j] // k == cr:
                cc = ucols[j] // k
                slot[cc] = 0
                if cc < cmin:
                    cmin = cc
                if cc > cmax:
                    cmax = cc
                j += 1
            for cc in range(cmin, cmax + 1):
                if slot[cc] == 0:
                    slot[cc] = nu + 1
                    out_r[nu] = cr
                    out_c[nu] = cc
                    nu += 1
            for t in range(i, j):
                inv[t] = slot[ucols[t] // k] - 1
            for cc in range(cmin, cmax + 1):
                slot[cc] = -1
            i = j
        return out_r[:nu].copy(), out_c[:nu].copy(), inv

    return _coarse_unique


_coarse_unique = _make_coarse_unique()


def _grid_ctx(fields, grid: Grid, id_col: str) -> _GridCtx:
    from .coverage import coverage_fractions

    cov = coverage_fractions(fields, grid, id_col=id_col)
    rows = np.asarray(cov.rows, np.int64)
    cols = np.asarray(cov.cols, np.int64)
    flat = rows * grid.shape[1] + cols
    if grid.shape[0] * grid.shape[1] < 2**31:
        flat = flat.astype(np.int32)      # same unique/inverse, faster sort
    u, inv = np.unique(flat, return_inverse=True)
    u = u.astype(np.int64)
    inv = inv.astype(np.int64, copy=False)
    n = len(cov.offsets) - 1
    pf = np.repeat(np.arange(n, dtype=np.int64), np.diff(cov.offsets))
    cov_sum = np.bincount(pf, weights=cov.fractions, minlength=n)
    inv = inv.ravel()
    want_cand = np.zeros(len(u), bool)
    want_cand[inv[(cov_sum > 0)[pf]]] = True
    return _GridCtx(cov, pf, inv, u // grid.shape[1], u % grid.shape[1], cov_sum,
                    np.asarray(cov.area_px, float), {}, want_cand, threading.Lock())


# --------------------------------------------------------------------------------------------
# the entry point


def field_observations(scenes, fields, *, indices: Sequence[str] = ("ndvi",),
                       scl_classes: Iterable[int] | None = None, dilate: int = 0,
                       min_valid_fraction: float = 0.0, id_col: str = "field_id",
                       on_error: str = "raise", progress: Any = None, threads: int = 2,
                       min_coverage_frac: float = 0.0,
                       env: Mapping[str, Any] | None = None,
                       signer: Callable[[str], str] | None = None,
                       max_attempts: int = 4) -> pd.DataFrame:
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

    Returns
    -------
    pandas.DataFrame
        One row per (field, acquisition) where the field has pixels in a scene's grid,
        sorted by field (input order) then time. Columns: ``field_id``, ``time``
        (``datetime64[ns, UTC]``), ``scene_id``, ``tile``, ``coverage`` (sum of coverage
        fractions in the grid, pixels of the finest band), ``valid_fraction`` (clear
        coverage / coverage, 0..1), per index ``<index>`` (weighted mean, dimensionless)
        and ``<index>_std`` (weighted population standard deviation), ``flags``.
        ``attrs``: ``requests``, ``bytes_read``, ``blocks_read``, ``retries``,
        ``read_failures`` (list of dicts with redacted href), ``scene_ids``, ``indices``.

    Raises
    ------
    MissingCRSError, InvalidFieldsError
        Bad fields table.
    AssetReadError
        With ``on_error="raise"``, when a read fails after retries.
    """
    from . import indices as ix
    from ._geo import validate_fields
    from .read import BlockReader

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
    ctxs: dict[Grid, _GridCtx] = {}
    for g in ref_grids:
        if g not in ctxs:
            ctxs[g] = _grid_ctx(fields, g, id_col)

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

    state = _Run(scene_list, ref_grids, ctxs, specs, bands_needed, classes, int(dilate),
                 float(min_valid_fraction), on_error, float(min_coverage_frac))
    reader_signer = signer
    if reader_signer is None:
        sig = {getattr(s, "signer", None) for s in scene_list} - {None}
        reader_signer = next(iter(sig)) if len(sig) == 1 else None
    results: list[Any] = [None] * len(order)
    done = 0
    lock = threading.Lock()
    t0 = _time.perf_counter()

    def tick():
        nonlocal done
        with lock:
            done += 1
            d = done
        if progress is None or progress is False:
            return
        if progress is True:
            logger.info("field_observations: %d/%d acquisitions (%.1fs)", d, len(order),
                        _time.perf_counter() - t0)
        elif hasattr(progress, "update"):
            progress.update(1)
        elif callable(progress):
            progress(d, len(order))

    with BlockReader(threads=threads, env=env, signer=reader_signer,
                     max_attempts=max_attempts) as reader:
        state.reader = reader

        def run_group(gi):
            results[gi] = state.group([i for i in groups[order[gi]]])
            tick()

        # a few acquisitions in flight so that the reader pool always has blocks to decode
        # while other acquisitions are masked and reduced (memory: pixels under the fields
        # of at most threads + 2 acquisitions)
        with ThreadPoolExecutor(threads + 2, thread_name_prefix="cropyield-obs") as coord:
            futs = [coord.submit(run_group, gi) for gi in range(len(order))]
            err = None
            for f in futs:
                try:
                    f.result()
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    if err is None:
                        err = exc
                        for g in futs:
                            g.cancel()
            if err is not None:
                raise err
        stats = reader.stats.as_dict()

    # ---- assemble one DataFrame
    parts = [p for r in results if r for p in r]
    cols: dict[str, list] = {k: [] for k in ("fi", "scene", "cov", "vf", "flags")}
    vals: dict[str, list] = {n: [] for n in indices}
    stds: dict[str, list] = {n: [] for n in indices}
    for p in parts:
        cols["fi"].append(p["fi"])
        cols["scene"].append(np.full(len(p["fi"]), p["scene"], np.int64))
        cols["cov"].append(p["cov"])
        cols["vf"].append(p["vf"])
        cols["flags"].append(np.asarray(p["flags"], dtype=object))
        for n in indices:
            vals[n].append(p["mean"][n])
            stds[n].append(p["std"][n])

    def cat(lst, dtype):
        return np.concatenate(lst) if lst else np.zeros(0, dtype)

    fi = cat(cols["fi"], np.int64)
    si = cat(cols["scene"], np.int64)
    srt = np.lexsort((si, fi)) if len(fi) else np.zeros(0, np.int64)
    fi, si = fi[srt], si[srt]
    flags = cat(cols["flags"], object)[srt]
    times = pd.DatetimeIndex([pd.Timestamp(s.datetime) for s in scene_list])
    if times.tz is None:
        times = times.tz_localize("UTC")
    times = times.tz_convert("UTC").as_unit("ns") if len(times) else times
    scene_ids = np.array([s.id for s in scene_list], dtype=object)
    tiles = np.array([s.tile for s in scene_list], dtype=object)
    data = {
        "field_id": field_ids[fi] if len(fi) else field_ids[:0],
        "time": times[si] if len(si) else pd.DatetimeIndex([], tz="UTC"),
        "scene_id": scene_ids[si],
        "tile": tiles[si],
        "coverage": cat(cols["cov"], float)[srt],
        "valid_fraction": cat(cols["vf"], float)[srt],
    }
    for n in indices:
        data[n] = cat(vals[n], float)[srt]
        data[f"{n}_std"] = cat(stds[n], float)[srt]
    data["flags"] = flags
    df = pd.DataFrame(data)
    df["flags"] = df["flags"].astype(object)
    df.attrs.update({
        "requests": stats["requests"], "bytes_read": stats["bytes_read"],
        "blocks_read": stats["blocks_read"], "retries": stats["retries"],
        "read_failures": list(state.failures),
        "scene_ids": [s.id for s in scene_list], "indices": list(indices),
        "scl_classes": list(classes), "dilate": int(dilate),
    })
    return df


class _Run:
    """Shared state of one :func:`field_observations` call (read-only after set-up)."""

    def __init__(self, scenes, ref_grids, ctxs, specs, bands, classes, dilate, min_vf,
                 on_error, min_cf=0.0):
        self.scenes, self.ref_grids, self.ctxs = scenes, ref_grids, ctxs
        self.specs, self.bands, self.classes = specs, bands, classes
        self.dilate, self.min_vf, self.on_error = dilate, min_vf, on_error
        self.min_cf = min_cf
        self.failures: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.reader = None

    # -- failure bookkeeping -----------------------------------------------------------------
    def _fail(self, scene, band: str, exc: AssetReadError) -> int:
        if self.on_error == "raise":
            raise exc
        rec = {"scene_id": scene.id, "band": band, "href": redact(exc.href or ""),
               "error": type(exc).__name__, "reason": exc.reason, "attempts": exc.attempts,
               "message": redact(str(exc))}
        with self._lock:
            self.failures.append(rec)
        logger.warning("read of %s band %s failed (%s); rows flagged", scene.id, band,
                       type(exc).__name__)
        return _B_AUTH if isinstance(exc, AuthExpiredError) else _B_READ_FAILED

    def _check_grid(self, band) -> None:
        """The file's shape/transform must match the item's metadata (else pixels shift)."""
        m = self.reader.meta(band.href)
        t, g = m.transform, band.grid.transform
        if tuple(m.shape) != tuple(band.grid.shape) or any(
                abs(a - b) > 1e-6 for a, b in zip(tuple(t)[:6], tuple(g)[:6])):
            href = redact(band.href)
            raise AssetReadError(
                f"{href} has shape {tuple(m.shape)} and transform {tuple(t)[:6]} but the item "
                f"says {tuple(band.grid.shape)} and {tuple(g)[:6]}; the STAC metadata "
                f"(proj:shape / proj:transform) is wrong for this asset: fix or drop the item",
                href=href, reason="grid_mismatch")

    # -- SCL pass ----------------------------------------------------------------------------
    def scl_codes(self, si: int, want_u: np.ndarray) -> tuple[np.ndarray | None, int]:
        """Per unique pixel code (outside/masked/clear) for scene ``si``; (None, bits) on failure."""
        from .indices import invalid_mask

        scene = self.scenes[si]
        ctx = self.ctxs[self.ref_grids[si]]
        band = scene.bands.get("SCL")
        if band is None:
            return np.full(len(ctx.urows), _CLEAR, np.uint8), 0
        k = _factor(band.grid, self.ref_grids[si], "SCL")
        brow, bcol, inv_k = ctx.pixels(k)
        want_b = ctx.want_on(k, want_u)
        classes, dilate = self.classes, self.dilate

        # class -> code table with the indices module's semantics (0 always invalid, unknown
        # classes invalid); with dilation the mask needs the 2-D neighbourhood
        lut_inv = np.asarray(invalid_mask(np.arange(256).reshape(16, 16), classes, 0),
                             bool).ravel()
        lut = np.where(lut_inv, _MASKED, _CLEAR).astype(np.uint8)
        lut[0] = _OUTSIDE

        def to_codes(scl):
            if dilate == 0 and scl.dtype == np.uint8:
                return lut[scl]
            inv = np.asarray(invalid_mask(scl, classes, dilate), bool)
            code = np.where(inv, _MASKED, _CLEAR).astype(np.uint8)
            code[scl == 0] = _OUTSIDE
            return code

        try:
            self._check_grid(band)
            if dilate == 0 and np.dtype(self.reader.meta(band.href).dtype) == np.uint8:
                # no neighbourhood needed: gather the raw classes, then look the codes up
                # on the pixel vector only (unread pixels: class 0 -> _OUTSIDE, the fill)
                raw = self.reader.read(band.href, brow, bcol, want=want_b, fill=0,
                                       dtype=np.uint8)
                codes_b = lut[raw]
            else:
                codes_b = self.reader.read(band.href, brow, bcol, want=want_b,
                                           fill=_OUTSIDE, dtype=np.uint8, pad=dilate,
                                           window_fn=to_codes)
        except AssetReadError as exc:
            return None, self._fail(scene, "SCL", exc)
        finally:
            self.reader.release(band.href)
        return codes_b[inv_k], 0

    # -- one acquisition ---------------------------------------------------------------------
    def group(self, members: list[int]) -> list[dict]:
        ctxs = [self.ctxs[self.ref_grids[i]] for i in members]
        cand = [c.cov_sum > 0 for c in ctxs]
        codes, fail_bits, score = [], [], []
        for i, ctx, cm in zip(members, ctxs, cand):
            if not cm.any():
                codes.append(None)
                fail_bits.append(0)
                score.append(None)
                continue
            # cm is cov_sum > 0: its pixels were collected once per grid
            code_u, fb = self.scl_codes(i, ctx.want_cand)
            codes.append(code_u)
            fail_bits.append(fb)
            if len(members) > 1:
                score.append(self._score(ctx, cm, code_u))
        # assignment
        if len(members) == 1:
            assigned = [cand[0]]
        else:
            n = len(cand[0])
            S = np.full((len(members), n), -2, np.int64)
            for j, sc in enumerate(score):
                if sc is not None:
                    S[j] = sc
            best = np.argmax(S, axis=0)
            anyc = np.zeros(n, bool)
            for c in cand:
                anyc |= c
            assigned = [(best == j) & cand[j] & anyc for j in range(len(members))]
        out = []
        for j, i in enumerate(members):
            if not assigned[j].any():
                continue
            out.append(self.scene_rows(i, ctxs[j], assigned[j], codes[j], fail_bits[j]))
        return out

    @staticmethod
    def _score(ctx: _GridCtx, cm: np.ndarray, code_u: np.ndarray | None) -> np.ndarray:
        area = np.where(np.isfinite(ctx.area_px) & (ctx.area_px > 0), ctx.area_px, 1.0)
        n = len(cm)
        ingrid = np.rint(np.clip(ctx.cov_sum / area, 0, 1) * 1000).astype(np.int64)
        if code_u is None:
            sc = np.full(n, -1, np.int64)
        else:
            e = code_u[ctx.inv]
            frac = ctx.cov.fractions
            swath = np.bincount(ctx.pf, weights=frac * (e > _OUTSIDE), minlength=n)
            clear = np.bincount(ctx.pf, weights=frac * (e == _CLEAR), minlength=n)
            sw = np.rint(np.clip(swath / area, 0, 1) * 1000).astype(np.int64)
            cl = np.rint(np.clip(clear / area, 0, 1) * 1000).astype(np.int64)
            sc = (sw * 1001 + ingrid) * 1001 + cl
        return np.where(cm, sc, -2)

    # -- band reads + statistics for the fields assigned to one scene -----------------------
    def scene_rows(self, si: int, ctx: _GridCtx, assigned: np.ndarray,
                   code_u: np.ndarray | None, bits0: int) -> dict:
        from .indices import _apply, _coverage_stats_sel, _reflectance_valid, reflectance

        scene = self.scenes[si]
        ref = self.ref_grids[si]
        fi = np.flatnonzero(assigned)
        nf = len(fi)
        cov = ctx.cov_sum[fi]
        bits = np.full(nf, bits0, np.int64)
        nan = np.full(nf, np.nan)
        means = {n: nan.copy() for n in self.specs}
        stds = {n: nan.copy() for n in self.specs}
        vf = nan.copy()
        if code_u is None:
            return self._rows(si, ctx, fi, cov, vf, bits, means, stds)
        if np.array_equal(assigned, ctx.cov_sum > 0):
            # every candidate field is assigned to this scene (the usual case)
            want_u = ctx.want_cand & (code_u == _CLEAR)
        else:
            emask = assigned[ctx.pf]
            einv = ctx.inv[emask]
            want_u = np.zeros(len(ctx.urows), bool)
            want_u[einv[code_u[einv] == _CLEAR]] = True
        # read the reflectance bands (only blocks with a clear pixel of an assigned field)
        refl: dict[str, np.ndarray] = {}
        dns: dict[str, tuple] = {}
        fail = 0
        for b in self.bands:
            band = scene.bands[b]
            k = _factor(band.grid, ref, b)
            brow, bcol, inv_k = ctx.pixels(k)
            want_b = ctx.want_on(k, want_u)
            nod = band.nodata if band.nodata is not None else 0
            try:
                self._check_grid(band)
                dn = self.reader.read(band.href, brow, bcol, want=want_b, fill=nod)
            except AssetReadError as exc:
                fail |= self._fail(scene, b, exc)
                continue
            finally:
                self.reader.release(band.href)
            dns[b] = (dn, None if k == 1 else inv_k, band, nod)
        if fail:
            emask = assigned[ctx.pf]
            pf_sub = np.repeat(np.arange(nf), np.diff(ctx.cov.offsets)[fi])
            swath = np.bincount(pf_sub, weights=ctx.cov.fractions[emask]
                                * (code_u[ctx.inv[emask]] > _OUTSIDE), minlength=nf)
            bits |= fail
            bits[swath <= 0] |= _B_NO_OVERLAP
            return self._rows(si, ctx, fi, cov, vf, bits, means, stds)
        # statistics with the same arithmetic as indices.coverage_stats (same numbers, same
        # flags), computed per unique pixel and read through ctx.inv for the assigned fields
        # only (no per-entry arrays)
        valid_u = code_u == _CLEAR
        for b in self.bands:
            dn, inv_k, band, nod = dns[b]
            scale, offset = float(band.scale), float(band.offset)
            plain = (nod is not None and dn.dtype.kind in "ui"
                     and not (isinstance(nod, float) and np.isnan(nod))
                     and float(nod) == int(nod)
                     and np.iinfo(dn.dtype).min <= int(nod) <= np.iinfo(dn.dtype).max)
            if plain:
                # reflectance + validity in one numba pass (same arithmetic as reflectance)
                r = np.empty(len(valid_u))
                _reflectance_valid(dn, np.zeros(0, np.int64) if inv_k is None else inv_k,
                                   scale, offset, dn.dtype.type(int(nod)), True, valid_u, r)
            else:
                r = np.asarray(reflectance(dn if inv_k is None else dn[inv_k], band.scale,
                                           band.offset, nodata=nod), float)
                valid_u &= np.isfinite(r)
            refl[b] = r
        vals_u = np.empty((len(self.specs), len(valid_u)))
        for j, spec in enumerate(self.specs.values()):
            if len(valid_u):
                vals_u[j] = _apply(spec, refl).reshape(-1)
        st = _coverage_stats_sel(ctx.cov, vals_u, ctx.inv, valid_u, code_u > _OUTSIDE, fi,
                                 self.min_vf, self.min_cf)
        for j, name in enumerate(self.specs):
            means[name] = st["mean"][j]
            stds[name] = st["std"][j]
        flags = _with_scene_flags(np.asarray(st["flags"], dtype=object), scene.flags)
        return {"fi": fi, "scene": si, "cov": st["coverage"], "vf": st["valid_fraction"],
                "flags": flags, "mean": means, "std": stds}

    def _rows(self, si, ctx, fi, cov, vf, bits, means, stds) -> dict:
        """Rows without statistics (read failures): bits + coverage flags + scene flags."""
        from .errors import join_flags

        cflags = np.asarray(ctx.cov.flags, dtype=object)[fi]
        cache: dict = {}
        out = np.empty(len(fi), dtype=object)
        for k, (b, c) in enumerate(zip(bits.tolist(), cflags.tolist())):
            key = (b, c)
            if key not in cache:
                cache[key] = join_flags([code for bit, code in _BIT_CODES.items() if b & bit],
                                        [x for x in str(c).split(",") if x != "NO_OVERLAP"],
                                        list(self.scenes[si].flags))
            out[k] = cache[key]
        return {"fi": fi, "scene": si, "cov": cov, "vf": vf, "flags": out, "mean": means,
                "std": stds}


def _with_scene_flags(flags: np.ndarray, scene_flags) -> np.ndarray:
    if not scene_flags:
        return flags
    from .errors import join_flags

    u, inv = np.unique(flags.astype(str), return_inverse=True)
    joined = np.array([join_flags(x, list(scene_flags)) for x in u], dtype=object)
    return joined[inv.ravel()]


def observations_to_xarray(df: pd.DataFrame):
    """Observations table -> ``xarray.Dataset`` with dims ``(field, time)``.

    Every numeric column becomes a variable; ``flags``, ``scene_id`` and ``tile`` become
    object variables (missing combinations are NaN / ""). ``time`` is tz-naive UTC.
    """
    import xarray as xr

    if df.empty:
        return xr.Dataset(coords={"field": [], "time": np.array([], "datetime64[ns]")})
    d = df.copy()
    t = pd.DatetimeIndex(d["time"])
    if t.tz is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    d["time"] = t
    d = d.rename(columns={"field_id": "field"}).set_index(["field", "time"])
    ds = xr.Dataset.from_dataframe(d)
    for c in ("flags", "scene_id", "tile"):
        if c in ds:
            ds[c] = ds[c].fillna("")
    ds.attrs.update({k: v for k, v in df.attrs.items() if isinstance(v, (int, float, str))})
    ds.attrs["time_zone"] = "UTC"
    return ds
