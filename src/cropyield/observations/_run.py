"""The per-call orchestrator of :func:`cropyield.observations.field_observations`.

:func:`_run_acquisitions` opens a :class:`~cropyield.read.BlockReader`, builds the
streaming plan of every grid (:mod:`._plan`) and runs the acquisitions, a few in flight;
:class:`_Run` holds the state shared by them and reduces one acquisition: SCL first, one
scene per field (:meth:`_Run.group`), then the reflectance bands streamed through the
kernels of :mod:`._kernels` into one block of rows per scene (:meth:`_Run.scene_rows`).
"""

from __future__ import annotations

import threading
import time as _time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._geo import Grid
from .._log import logger, redact
from ..errors import AssetReadError, AuthExpiredError, CropYieldError
from . import _kernels
from ._kernels import (_ACC_FIRST, _ACC_WIDTH, _CLEAR, _MASKED, _OUTSIDE, _accumulate,
                       _blocks_needed, _codes_at, _footprint_sum, _fused_kernel, _gather_valid,
                       _merge_slots)
from ._plan import _grid_ctx, _GridCtx, _Stream
from ._table import _B_AUTH, _B_NO_OVERLAP, _B_READ_FAILED, _BIT_CODES, _with_scene_flags

def _run_acquisitions(scene_list, fields, ref_grids, groups, order, specs, bands_needed,
                      classes, dilate, min_valid_fraction, on_error, min_coverage_frac,
                      id_col: str, progress: Any, threads: int,
                      env: Mapping[str, Any] | None, signer: Callable[[str], str] | None,
                      max_attempts: int, deadline: float | None = None,
                      pre_failed: dict[int, Any] | None = None, make_valid: bool = False,
                      ) -> tuple[list[Any], dict[str, Any], "_Run"]:
    """Read and reduce every acquisition of ``order`` (``groups``: acquisition -> scene
    positions); returns the per-acquisition row blocks (in ``order``), the reader's byte
    and request counts, and the :class:`_Run` (its ``failures``)."""
    from ..read import BlockReader

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
                     max_attempts=max_attempts, deadline=deadline) as reader:
        # the reader threads open the first acquisitions' files while this thread computes
        # the coverage (remote opens are latency-bound requests): SCL first, as they are
        # read. Only single-scene acquisitions: of several overlapping tiles, some may
        # have no field or be assigned none, and their files are never opened
        first = [scene_list[groups[k][0]] for k in order[:threads + 2]
                 if len(groups[k]) == 1]
        reader.prefetch_meta([s.bands["SCL"].href for s in first if "SCL" in s.bands]
                             + [s.bands[b].href for s in first for b in bands_needed])
        ctxs: dict[Grid, _GridCtx] = {}
        for g in ref_grids:
            if g not in ctxs:
                ctxs[g] = _grid_ctx(fields, g, id_col, make_valid)
        state = _Run(scene_list, ref_grids, ctxs, specs, bands_needed, classes, int(dilate),
                     float(min_valid_fraction), on_error, float(min_coverage_frac))
        state.reader = reader
        state.fields = fields
        state.pre_failed = dict(pre_failed or {})

        def run_group(gi):
            results[gi] = state.group([i for i in groups[order[gi]]])
            tick()

        # a few acquisitions in flight so that the reader pool always has blocks to decode
        # while other acquisitions are masked and reduced (memory: pixels under the fields
        # of at most threads + 2 acquisitions)
        with ThreadPoolExecutor(threads + 2, thread_name_prefix="cropyield-obs") as coord:
            # build each grid's streaming order while the first SCL blocks are decoded
            firsts: dict[int, Any] = {}
            for i, g in enumerate(ref_grids):
                firsts.setdefault(g, i)
            for i in firsts.values():
                coord.submit(state.prepare_stream, i)
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
    return results, stats, state

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


def _crs_name(crs) -> str:
    """``EPSG:<code>`` when the CRS has one, else its WKT (for messages)."""
    if crs is None:
        return "none"
    code = crs.to_epsg()
    return f"EPSG:{code}" if code is not None else crs.to_wkt()


def _same_crs(file_crs, grid_crs) -> bool:
    """Whether a file's CRS (rasterio, read from the file) is the item's (pyproj). A file
    without a CRS passes: there is nothing to compare, and the item's CRS is the one used.
    EPSG codes are compared when both have one (cheap: 0.01-0.02 ms each, cached by
    rasterio and pyproj), else the definitions."""
    if file_crs is None or not file_crs:
        return True
    a, b = file_crs.to_epsg(), grid_crs.to_epsg()
    if a is not None and b is not None:
        return a == b
    from pyproj import CRS

    return CRS.from_user_input(file_crs.to_wkt()).equals(grid_crs, ignore_axis_order=True)




def _masked_dn_flags(acc: np.ndarray, st: _Stream, fi: np.ndarray, flags) -> Any:
    """``SATURATED`` / ``REFLECTANCE_OUT_OF_RANGE`` on the fields (``fi``) whose slots
    counted such masked pixels (per slot, not per pixel: free when there are none)."""
    from ..errors import join_flags

    cols = ((_kernels._ACC_SAT, "SATURATED"), (_kernels._ACC_OOR, "REFLECTANCE_OUT_OF_RANGE"))
    hit = [(c, code) for c, code in cols if acc[:, c].any()]
    if not hit:
        return flags
    nf_all = len(st.fslot_off) - 1
    owner = np.repeat(np.arange(nf_all), np.diff(st.fslot_off))
    flags = np.asarray(flags, dtype=object).copy()
    for c, code in hit:
        per_field = np.bincount(owner, weights=acc[st.fslot, c], minlength=nf_all)[fi]
        for k in np.flatnonzero(per_field > 0):
            flags[k] = join_flags(flags[k], code)
    return flags


#: dark-object test of scenes whose metadata say offset 0: every _DARK_STEP-th row and column
#: of the windows read are histogrammed; when the _DARK_QUANTILE of the darkest band is at
#: or above reflectance _DARK_REFL (DN 1000 at scale 1e-4), the DN look like they carry the
#: +1000 offset of baseline >= 04.00 (without it, dark targets -- water, shadow, dense
#: vegetation in red -- lie near reflectance 0-0.05)
_DARK_STEP, _DARK_QUANTILE, _DARK_REFL, _DARK_MIN_PIXELS = 4, 0.01, 0.1, 200


def _offset_missing(hists: list[np.ndarray], fine) -> bool:
    """Whether the dark-object DN statistics contradict an offset of 0 (see _DARK_REFL)."""
    h = np.sum(hists, axis=0)
    low = []
    for j, (_, band, _) in enumerate(fine):
        hj = h[j].copy()
        if band.nodata is not None and 0 <= float(band.nodata) < hj.shape[0]:
            hj[int(band.nodata)] = 0
        hj[_kernels._DN_SATURATED] = 0
        n = int(hj.sum())
        if n < _DARK_MIN_PIXELS:
            return False
        q = int(np.searchsorted(np.cumsum(hj), _DARK_QUANTILE * n))
        low.append(q * float(band.scale))
    return bool(low) and min(low) >= _DARK_REFL - 1e-9


_SCRATCH = threading.local()


def _scratch(n_bands: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-thread reusable (reflectance, position) buffers for one block run: fresh
    multi-MiB arrays per run would pay their page faults on every run."""
    refl = getattr(_SCRATCH, "refl", None)
    if refl is None or refl.size < n_bands * n:
        refl = _SCRATCH.refl = np.empty(max(n_bands * n, 1 << 16))
    pos = getattr(_SCRATCH, "pos", None)
    if pos is None or pos.size < n:
        pos = _SCRATCH.pos = np.empty(max(n, 1 << 16), np.int64)
    return refl[:n_bands * n].reshape(n_bands, n), pos[:n]



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
        self.fields = None          # the fields table (set by _run_acquisitions)
        self.pre_failed: dict[int, Any] = {}    # scene -> (band, error) found before reading
        self._fields_ll = None

    @property
    def fields_ll(self) -> np.ndarray:
        """Field geometries in EPSG:4326 (for item footprints; computed once, on demand)."""
        with self._lock:
            if self._fields_ll is None:
                self._fields_ll = np.asarray(self.fields.to_crs(4326).geometry.values,
                                             dtype=object)
            return self._fields_ll

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

    def _check_grid(self, band, scene=None) -> None:
        """The file's shape, transform and CRS must match the item's metadata (else pixels
        shift, or the fields land in the wrong UTM zone)."""
        m = self.reader.meta(band.href)
        t, g = m.transform, band.grid.transform
        if (tuple(m.shape) != tuple(band.grid.shape)
                or any(abs(a - b) > 1e-6 for a, b in zip(tuple(t)[:6], tuple(g)[:6]))
                or not _same_crs(m.crs, band.grid.crs)):
            href = redact(band.href)
            item = f"item {scene.id}: " if scene is not None else ""
            raise AssetReadError(
                f"{item}{href} has shape {tuple(m.shape)}, transform {tuple(t)[:6]} and CRS "
                f"{_crs_name(m.crs)} but the item says {tuple(band.grid.shape)}, "
                f"{tuple(g)[:6]} and {_crs_name(band.grid.crs)}; the STAC metadata "
                f"(proj:shape / proj:transform / proj:epsg or proj:code) is wrong for this "
                f"asset: fix or drop the item", href=href, reason="grid_mismatch")

    def prepare_stream(self, si: int) -> None:
        """Build the streaming order of scene ``si``'s grid ahead of need (best effort:
        a failure here is met again, and reported, by the scene's own pass)."""
        scene, ref = self.scenes[si], self.ref_grids[si]
        try:
            for b in self.bands:
                band = scene.bands[b]
                if _factor(band.grid, ref, b) == 1:
                    shape = self.reader.meta(band.href).block_shape
                    self.ctxs[ref].stream(ref.shape, shape)
                    return
        except Exception:  # noqa: BLE001 - best effort, see docstring
            logger.debug("stream preparation for %s deferred", scene.id, exc_info=True)

    # -- SCL pass ----------------------------------------------------------------------------
    def scl_codes(self, si: int, want_u: np.ndarray) -> tuple[np.ndarray | None, int]:
        """Per unique pixel code (outside/masked/clear) for scene ``si``; (None, bits) on failure."""
        from ..masks import invalid_mask

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
            self._check_grid(band, scene)
            if dilate == 0 and np.dtype(self.reader.meta(band.href).dtype) == np.uint8:
                # no neighbourhood needed: gather the raw classes, then look the codes up
                # on the pixel vector only (unread pixels: class 0 -> _OUTSIDE, the fill)
                raw = self.reader.read(band.href, brow, bcol, want=want_b, fill=0,
                                       dtype=np.uint8)
                codes = _codes_at(raw, lut, inv_k)
            else:
                codes = self.reader.read(band.href, brow, bcol, want=want_b,
                                         fill=_OUTSIDE, dtype=np.uint8, pad=dilate,
                                         window_fn=to_codes)[inv_k]
        except AssetReadError as exc:
            return None, self._fail(scene, "SCL", exc)
        finally:
            self.reader.release(band.href)
        return codes, 0

    # -- one acquisition ---------------------------------------------------------------------
    def group(self, members: list[int]) -> list[dict]:
        ctxs = [self.ctxs[self.ref_grids[i]] for i in members]
        cand = [c.cov_sum > 0 for c in ctxs]
        codes: list[Any] = []
        fail_bits: list[int] = []
        score: list[Any] = []
        out: list[Any] = []
        for i, ctx, cm in zip(members, ctxs, cand):
            if not cm.any():
                # no field in this scene's grid: make sure that is not the item's metadata
                # placing the grid elsewhere (wrong proj:epsg / transform), which would make
                # the scene vanish silently
                bad = self._grid_failure(i, ctx)
                if bad is not None:
                    out.append(bad)
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
        for j, i in enumerate(members):
            if not assigned[j].any():
                continue
            out.append(self.scene_rows(i, ctxs[j], assigned[j], codes[j], fail_bits[j]))
        return out

    def _grid_failure(self, si: int, ctx: _GridCtx) -> dict | None:
        """Check the grid of scene ``si`` (no field in it) against its file; on a mismatch
        raise (``on_error="raise"``) or return ``READ_FAILED`` rows for the fields inside
        the item's footprint (its ``bbox``; every field when it has none)."""
        scene = self.scenes[si]
        band = scene.bands.get("SCL") or scene.bands[self.bands[0]]
        try:
            self._check_grid(band, scene)
        except AssetReadError as exc:
            bits = self._fail(scene, band.name, exc)
        else:
            return None
        finally:
            self.reader.release(band.href)
        fi = self._fields_in_footprint(scene)
        nan = np.full(len(fi), np.nan)
        return self._rows(si, ctx, fi, np.zeros(len(fi)), nan.copy(),
                          np.full(len(fi), bits, np.int64),
                          {n: nan.copy() for n in self.specs},
                          {n: nan.copy() for n in self.specs})

    def _fields_in_footprint(self, scene) -> np.ndarray:
        """Positions of the fields that intersect the item's WGS84 ``bbox`` (all fields
        when the item has none)."""
        import shapely

        item = getattr(scene, "item", None)
        bbox = getattr(item, "bbox", None) if item is not None else None
        n = len(self.fields_ll)
        if not bbox or len(bbox) not in (4, 6):
            return np.arange(n)
        b = [float(v) for v in bbox]
        box = shapely.box(b[0], b[1], b[3], b[4]) if len(b) == 6 else shapely.box(*b)
        return np.flatnonzero(shapely.intersects(self.fields_ll, box))

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
        from ..coverage import bits_to_flags
        from ..zonal import _stat_bits

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
        # bands on the reference grid sharing the first one's block shape and dtype are
        # streamed block run by block run; the others (20 m bands of a 10 m grid) are
        # gathered first as reflectance per unique pixel
        fine: list[tuple[str, Any, Any]] = []
        coarse: list[tuple[str, Any, int]] = []
        fail = 0
        if si in self.pre_failed:                # e.g. file:checksum mismatch
            b, exc = self.pre_failed[si]
            return self._rows(si, ctx, fi, cov, vf, bits | self._fail(scene, b, exc), means,
                              stds)
        for b in self.bands:
            band = scene.bands[b]
            k = _factor(band.grid, ref, b)
            try:
                self._check_grid(band, scene)
                m = self.reader.meta(band.href)
            except AssetReadError as exc:
                fail |= self._fail(scene, b, exc)
                continue
            if k == 1 and (not fine or (m.block_shape, np.dtype(m.dtype)) == (
                    fine[0][2].block_shape, np.dtype(fine[0][2].dtype))):
                fine.append((b, band, m))
            else:
                coarse.append((b, band, k))
        coarse_r = np.empty((len(coarse), len(ctx.urows)))
        if coarse and not fail:
            want_u = self._want(ctx, assigned, code_u)
            for j, (b, band, k) in enumerate(coarse):
                try:
                    coarse_r[j] = self._coarse_reflectance(ctx, band, k, want_u)
                except AssetReadError as exc:
                    fail |= self._fail(scene, b, exc)
                finally:
                    self.reader.release(band.href)
        st = ctx.stream(ref.shape, fine[0][2].block_shape if fine else ref.shape)
        nidx = len(self.specs)
        acc = np.zeros((st.n_slots, _ACC_FIRST + _ACC_WIDTH * nidx))
        dark: list[np.ndarray] = []
        if not fail:
            fail = self._stream_fine(scene, st, fine, coarse, coarse_r, assigned, code_u, acc,
                                     has_px=ctx.cov_sum > 0, dark=dark)
        if fail:
            for b in self.bands:              # handles opened for metadata only
                self.reader.release(scene.bands[b].href)
            emask = assigned[ctx.pf]
            pf_sub = np.repeat(np.arange(nf), np.diff(ctx.cov.offsets)[fi])
            swath = np.bincount(pf_sub, weights=ctx.cov.fractions[emask]
                                * (code_u[ctx.inv[emask]] > _OUTSIDE), minlength=nf)
            bits |= fail
            bits[swath <= 0] |= _B_NO_OVERLAP
            return self._rows(si, ctx, fi, cov, vf, bits, means, stds)
        vsum, isum = np.empty(nf), np.empty(nf)
        mean, std, wsum = np.empty((nidx, nf)), np.empty((nidx, nf)), np.empty((nidx, nf))
        _merge_slots(acc, st.fslot_off, st.fslot, fi, vsum, isum, mean, std, wsum)
        # the footprint sum only tells NO_OVERLAP from ALL_MASKED for fields without a
        # valid pixel; elsewhere it is >= the valid sum > 0
        fsum = vsum.copy()
        empty = vsum <= 0
        if empty.any():
            fsum[empty] = _footprint_sum(ctx.cov.offsets, ctx.inv, ctx.cov.fractions, code_u,
                                         fi[empty])
        vfrac, sbits, codes = _stat_bits(ctx.cov, fi, vsum, fsum, isum, wsum, mean, std,
                                         self.min_vf, self.min_cf)
        flags: list[str] | np.ndarray = bits_to_flags(sbits, codes)
        flags = _masked_dn_flags(acc, st, fi, flags)
        if dark and _offset_missing(dark, fine):
            logger.warning("scene %s: its metadata say no radiometric offset but 1 %% of its "
                           "darkest band's pixels are brighter than reflectance %.2f, as if "
                           "they carried the +1000 DN offset of baseline 04.00; rows flagged "
                           "OFFSET_INCONSISTENT (check the item, or pass offset_override=)",
                           scene.id, _DARK_REFL)
            flags = _with_scene_flags(np.asarray(flags, dtype=object), ("OFFSET_INCONSISTENT",))
        for j, name in enumerate(self.specs):
            means[name] = mean[j]
            stds[name] = std[j]
        flags = _with_scene_flags(np.asarray(flags, dtype=object), scene.flags)
        return {"fi": fi, "scene": si, "cov": cov, "vf": vfrac, "flags": flags,
                "mean": means, "std": stds, "area": ctx.area_px[fi]}

    @staticmethod
    def _want(ctx: _GridCtx, assigned: np.ndarray, code_u: np.ndarray) -> np.ndarray:
        """Unique pixels that are clear and under an assigned field."""
        if np.array_equal(assigned, ctx.cov_sum > 0):
            return ctx.want_cand & (code_u == _CLEAR)
        einv = ctx.inv[assigned[ctx.pf]]
        want_u = np.zeros(len(ctx.urows), bool)
        want_u[einv[code_u[einv] == _CLEAR]] = True
        return want_u

    def _coarse_reflectance(self, ctx: _GridCtx, band, k: int, want_u) -> np.ndarray:
        """Reflectance (NaN: nodata or unread) of a band at every unique pixel of ``ctx``,
        read through the 1/k grid nesting."""
        from ..indices import reflectance
        from ..zonal import _reflectance_valid

        brow, bcol, inv_k = ctx.pixels(k)
        nod = band.nodata if band.nodata is not None else 0
        dn = self.reader.read(band.href, brow, bcol, want=ctx.want_on(k, want_u), fill=nod)
        plain = (dn.dtype.kind in "ui" and not (isinstance(nod, float) and np.isnan(nod))
                 and float(nod) == int(nod)
                 and np.iinfo(dn.dtype).min <= int(nod) <= np.iinfo(dn.dtype).max)
        if not plain:
            r = np.asarray(reflectance(dn[inv_k], band.scale, band.offset, nodata=nod), float)
        else:
            r = np.empty(len(inv_k))
            _reflectance_valid(dn, inv_k, float(band.scale), float(band.offset),
                               dn.dtype.type(int(nod)), True, np.ones(len(inv_k), bool), r)
        # outside the physical range: +inf (saturated DN) or -inf, which the kernels mask
        # and count (see _kernels._ACC_SAT)
        lo, hi = _kernels._REFL_RANGE
        with np.errstate(invalid="ignore"):
            bad = (r < lo) | (r > hi)
        if bad.any():
            r[bad] = np.where(dn[inv_k[bad]] == _kernels._DN_SATURATED, np.inf, -np.inf)
        return r

    def _stream_fine(self, scene, st: _Stream, fine, coarse, coarse_r, assigned, code_u,
                     acc, has_px, dark: list | None = None) -> int:
        """Read the fine bands block run by block run and accumulate the statistics of
        every run in the reader thread that decoded it (``has_px``: the fields with an
        entry on this grid). Returns failure bits (0: done). When every fine band says
        offset 0 (16-bit DN), a DN histogram of a sample of the windows read is appended
        to ``dark`` (one per reader thread; see :func:`_offset_missing`)."""
        from ..indices import _apply
        from ..zonal import _min_frac_threshold
        from ..read import _runs_of

        need = _blocks_needed(st.ekey, st.eu, st.ef, code_u, assigned, st.n_blocks)
        run_row, run_c0, run_c1, _, _ = _runs_of(st.ublocks[need[st.ublocks]], st.nbc,
                                                 self.reader.max_run)
        names = [b for b, _, _ in fine] + [b for b, _, _ in coarse]
        scale = np.array([float(band.scale) for _, band, _ in fine])
        offset = np.array([float(band.offset) for _, band, _ in fine])
        nodata = np.array([float(band.nodata if band.nodata is not None else 0)
                           for _, band, _ in fine])
        specs = list(self.specs.values())
        min_frac = _min_frac_threshold(self.min_cf)

        if (all(spec.scalar is not None for spec in specs)
                and max(len(fine), len(coarse)) <= _kernels._FUSED_MAX_BANDS):
            # built-in indices: one fused pass per index, the first also counts validity
            # a single-scene acquisition is assigned every field with a pixel, i.e. the
            # field of every entry: the kernels then skip the per-entry lookup
            all_assigned = bool(np.all(assigned | ~has_px))
            fused = [(_fused_kernel(spec.scalar, [names.index(b) for b in spec.bands],
                                    len(fine), len(coarse)),
                      float(spec.valid_range[0]), float(spec.valid_range[1]))
                     for spec in specs]

            def consume(k: int, r0: int, c0: int, win: np.ndarray) -> None:
                for j, (kern, lo, hi) in enumerate(fused):
                    kern(win, r0, c0, st.row_start, st.ec, st.eu, st.ef, st.efr, st.eslot,
                         assigned, all_assigned, code_u, scale, offset, nodata, coarse_r, lo,
                         hi, min_frac, _ACC_FIRST + _ACC_WIDTH * j, j == 0, acc)
        else:
            # formula indices: gather the valid reflectances, apply, accumulate
            def consume(k: int, r0: int, c0: int, win: np.ndarray) -> None:
                h = win.shape[1]
                refl, pos = _scratch(len(names), int(st.row_start[r0 + h] - st.row_start[r0]))
                m = _gather_valid(win, r0, c0, st.row_start, st.ec, st.eu, st.ef, assigned,
                                  code_u, scale, offset, nodata, coarse_r, refl, pos)
                if m == 0:
                    return
                bands = {b: refl[j, :m] for j, b in enumerate(names)}
                vals = np.empty((len(specs), m))
                for j, spec in enumerate(specs):
                    vals[j] = _apply(spec, bands)
                _accumulate(vals, pos, m, st.efr, st.eslot, min_frac, acc)

        if (dark is not None and fine
                and all(float(band.offset) == 0.0 for _, band, _ in fine)
                and np.dtype(fine[0][2].dtype) == np.uint16):
            local = threading.local()
            inner = consume

            def consume(k: int, r0: int, c0: int, win: np.ndarray) -> None:  # noqa: F811
                inner(k, r0, c0, win)
                h = getattr(local, "hist", None)
                if h is None:
                    h = local.hist = np.zeros((len(fine), 65536), np.int64)
                    with self._lock:
                        dark.append(h)
                _kernels._dn_histogram(win, _DARK_STEP, h)

        if not fine:                     # nothing to decode here: every band was gathered
            (bh, bw), (H, W) = st.block_shape, st.shape
            for k in range(len(run_row)):
                r0, c0 = int(run_row[k]) * bh, int(run_c0[k]) * bw
                h, w = min(bh, H - r0), min((int(run_c1[k]) + 1) * bw, W) - c0
                consume(k, r0, c0, np.zeros((0, h, w), np.uint16))
            return 0
        hrefs = [band.href for _, band, _ in fine]
        try:
            self.reader.read_windows(hrefs, run_row, run_c0, run_c1, consume)
        except AssetReadError as exc:
            failed = next((b for b, band, _ in fine if redact(band.href) == exc.href),
                          fine[0][0])
            return self._fail(scene, failed, exc)
        finally:
            for h in hrefs:
                self.reader.release(h)
        return 0

    def _rows(self, si, ctx, fi, cov, vf, bits, means, stds) -> dict:
        """Rows without statistics (read failures): bits + coverage flags + scene flags."""
        from ..errors import join_flags

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
                "std": stds, "area": ctx.area_px[fi]}
