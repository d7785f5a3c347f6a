"""Measurement helpers behind docs/method.md's figures and the kernel timings (not library
code; moved here from ``cropyield.indices``).

* :func:`_centre_vs_exact` — exact coverage weighting vs the pixel-centre rule vs each
  parcel's own NDVI on a rendered smallholder mosaic.
* :func:`_bench_kernels` — coverage and per-date statistics timings on synthetic fields.
* :func:`_parcel_mosaic`, :func:`_psf` — the mosaic and the sensor-PSF stand-in they use.

Run from the repository root::

    python benchmarks/_zonal_helpers.py centre     # _centre_vs_exact(), then psf_sigma=0
    python benchmarks/_zonal_helpers.py kernels    # _bench_kernels()
"""

from __future__ import annotations

import sys

import numpy as np

from cropyield._geo import Grid
from cropyield.coverage import coverage_fractions
from cropyield.indices import compute_index, reflectance
from cropyield.masks import invalid_mask
from cropyield.zonal import coverage_stats, zonal_stats


def _parcel_mosaic(size_px: int = 200, *, seed: int = 0, sub: int = 10, mean_px: float = 40.0):
    """A smallholder landscape: Voronoi parcels (3-200 px) separated by ~1 m bunds, on a 10 m
    grid of ``size_px`` squared pixels, with a fine ``sub``-times sub-grid for rendering.
    Returns ``(grid, fields, fine_ids, fine_transform)``."""
    import geopandas as gpd
    import shapely
    from affine import Affine
    from rasterio.features import rasterize


    rng = np.random.default_rng(seed)
    x0, y0, res = 500000.0, 4000000.0, 10.0
    g = Grid("EPSG:32650", Affine(res, 0, x0, 0, -res, y0), (size_px, size_px))
    n = int(size_px * size_px / mean_px)
    pts = shapely.multipoints(np.c_[rng.uniform(x0, x0 + size_px * res, n),
                                    rng.uniform(y0 - size_px * res, y0, n)])
    cells = shapely.get_parts(shapely.voronoi_polygons(
        pts, extend_to=shapely.box(x0, y0 - size_px * res, x0 + size_px * res, y0)))
    cells = shapely.intersection(cells, shapely.box(x0 + 5, y0 - size_px * res + 5,
                                                    x0 + size_px * res - 5, y0 - 5))
    cells = shapely.buffer(cells, -0.6, join_style="mitre")  # bunds and paths between plots
    area_px = shapely.area(cells) / (res * res)
    keep = (area_px >= 3) & (area_px <= 200) & shapely.is_valid(cells) & \
        (shapely.get_type_id(cells) == 3)
    cells = cells[keep]
    fields = gpd.GeoDataFrame({"field_id": np.arange(len(cells))}, geometry=cells,
                              crs="EPSG:32650")
    ft = Affine(res / sub, 0, x0, 0, -res / sub, y0)
    ids = rasterize(((c, i + 1) for i, c in enumerate(cells)),
                    out_shape=(size_px * sub, size_px * sub), transform=ft, fill=0,
                    dtype="int32")
    return g, fields, ids, ft


def _psf(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in pixels, edges replicated): a sensor PSF stand-in."""
    if sigma <= 0:
        return a
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        p = np.pad(a, [(r, r) if ax == axis else (0, 0) for ax in (0, 1)], mode="edge")
        a = sum(k[j] * np.take(p, np.arange(j, j + a.shape[axis]), axis=axis)
                for j in range(2 * r + 1))
    return a


def _centre_vs_exact(*, size_px: int = 200, n_dates: int = 6, seed: int = 0,
                     cloud: float = 0.2, psf_sigma: float = 0.5) -> dict:
    """Measure how exact coverage weighting differs from the pixel-centre rule, and how both
    compare with each parcel's own NDVI, on a rendered smallholder mosaic (docs/method.md).

    Each date gives every parcel its own NDVI (crop stage), adds within-parcel texture,
    renders red/NIR reflectance on a 1 m sub-grid (bunds at NDVI 0.2), averages reflectance
    to 10 m (linear mixing), blurs by a Gaussian PSF of ``psf_sigma`` 10 m pixels (Sentinel-2's
    MTF at Nyquist is ~0.2-0.3, i.e. sigma ~0.4-0.5 px) and masks ~``cloud`` of the 20 m SCL
    pixels.
    """
    import pandas as pd
    from rasterio.features import rasterize

    rng = np.random.default_rng(seed + 1)
    g, fields, ids, _ = _parcel_mosaic(size_px, seed=seed)
    h, w = g.shape
    sub = ids.shape[0] // h
    nf = len(fields)
    cov = coverage_fractions(fields, g, cache=False)
    labels = rasterize(((geom, i + 1) for i, geom in enumerate(fields.geometry)),
                       out_shape=g.shape, transform=g.transform, fill=0, dtype="int32")
    rows = []
    for d in range(n_dates):
        nd_parcel = np.concatenate([[0.2], rng.uniform(0.12, 0.9, nf)])
        nd_fine = np.clip(nd_parcel[ids] + rng.normal(0, 0.03, ids.shape), -0.2, 0.95)
        red_f = 0.03 + 0.12 * (1 - nd_fine) / 1.2
        nir_f = red_f * (1 + nd_fine) / (1 - nd_fine)
        red = _psf(red_f.reshape(h, sub, w, sub).mean(axis=(1, 3)), psf_sigma)
        nir = _psf(nir_f.reshape(h, sub, w, sub).mean(axis=(1, 3)), psf_sigma)
        # truth: NDVI of each parcel's own mean reflectance (fine pixels inside it)
        cnt = np.bincount(ids.ravel(), minlength=nf + 1)[1:]
        tr = np.bincount(ids.ravel(), weights=red_f.ravel(), minlength=nf + 1)[1:] / cnt
        tn = np.bincount(ids.ravel(), weights=nir_f.ravel(), minlength=nf + 1)[1:] / cnt
        truth = (tn - tr) / (tn + tr)
        dn = {"B04": np.round(red * 1e4 + 1000).astype(np.uint16),
              "B08": np.round(nir * 1e4 + 1000).astype(np.uint16)}
        cl = rng.random((h // 2, w // 2))
        scl = np.where(cl < cloud, 9, 4).astype(np.uint8)
        out = {}
        for label, mcf in (("exact", 0.0), ("half", 0.5), ("pure", 1.0)):
            df = zonal_stats(dn, g, fields, scl=scl, offsets=-0.1, coverage=cov,
                             min_coverage_frac=mcf, include_empty=True)
            out[label] = df["ndvi"].to_numpy()
        # pixel-centre rule: unweighted mean over valid pixels whose centre is inside
        ndvi = compute_index("ndvi", {"B04": reflectance(dn["B04"], 1e-4, -0.1),
                                      "B08": reflectance(dn["B08"], 1e-4, -0.1)})
        ok = ~invalid_mask(np.repeat(np.repeat(scl, 2, 0), 2, 1)) & ~np.isnan(ndvi) & \
            (labels > 0)
        s = np.bincount(labels[ok], weights=ndvi[ok], minlength=nf + 1)[1:]
        c = np.bincount(labels[ok], minlength=nf + 1)[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["centre"] = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        rows.append(pd.DataFrame({"date": d, "field_id": np.arange(nf),
                                  "area_px": cov.area_px, "truth": truth, **out}))
    t = pd.concat(rows, ignore_index=True)
    both = t.dropna(subset=["exact", "centre"])
    diff = (both["exact"] - both["centre"]).abs()
    size = pd.cut(both["area_px"], [0, 10, 50, 200], labels=["3-10 px", "10-50 px",
                                                              "50-200 px"])
    res = {
        "fields": nf, "field_dates": int(len(both)),
        "share_diff_gt_0.01": float((diff > 0.01).mean()),
        "median_abs_diff": float(diff.median()), "p95_abs_diff": float(diff.quantile(0.95)),
        "max_abs_diff": float(diff.max()),
        "share_by_size": {str(k): float(v) for k, v in
                          (diff > 0.01).groupby(size, observed=True).mean().items()},
        "n_no_centre_pixel": int(t["centre"].isna().sum() - t["exact"].isna().sum()),
    }
    for col in ("exact", "centre", "half", "pure"):
        e = (t[col] - t["truth"]).abs()
        res[f"mae_vs_truth_{col}"] = float(e.mean())
        res[f"coverage_{col}"] = float(t[col].notna().mean())
    return res


def _bench_kernels(*, n_fields: int = 20_000, size: int = 4096, n_dates: int = 24,
                   seed: int = 0, repeat: int = 3) -> dict:
    """Time coverage (cold, best of ``repeat``) for ``n_fields`` smallholder polygons of
    3-200 px on a ``size`` squared 10 m grid, then the per-date statistics (gather,
    reflectance, SCL mask, NDVI + EVI, weighted stats) for ``n_dates`` in-memory dates, and
    the statistics alone on pre-gathered pixels. Seconds, wall clock."""
    import time

    import geopandas as gpd
    import shapely
    from affine import Affine


    rng = np.random.default_rng(seed)
    x0, y0, res = 500000.0, 4000000.0, 10.0
    g = Grid("EPSG:32650", Affine(res, 0, x0, 0, -res, y0), (size, size))
    area = rng.uniform(3, 200, n_fields) * res * res
    asp = rng.uniform(1, 4, n_fields)
    th = rng.uniform(0, np.pi, n_fields)
    cx = rng.uniform(x0 + 200, x0 + size * res - 200, n_fields)
    cy = rng.uniform(y0 - size * res + 200, y0 - 200, n_fields)
    k = 8
    ang = np.linspace(0, 2 * np.pi, k, endpoint=False)
    polys = []
    for i in range(n_fields):
        a = np.sqrt(area[i] * asp[i] / (0.5 * k * np.sin(2 * np.pi / k)))
        rr = rng.uniform(0.85, 1.0, k)
        x, y = a * rr * np.cos(ang), a / asp[i] * rr * np.sin(ang)
        ct, st = np.cos(th[i]), np.sin(th[i])
        polys.append(shapely.Polygon(np.c_[cx[i] + ct * x - st * y, cy[i] + st * x + ct * y]))
    fields = gpd.GeoDataFrame({"field_id": np.arange(n_fields)}, geometry=polys,
                              crs="EPSG:32650")
    coverage_fractions(fields.iloc[:5], g, cache=False)  # compile
    t_covs = []
    for _ in range(max(int(repeat), 1)):
        t0 = time.perf_counter()
        cov = coverage_fractions(fields, g, cache=False)
        t_covs.append(time.perf_counter() - t0)
    t_cov = min(t_covs)
    b = {"B02": rng.integers(1100, 2000, (size, size), dtype=np.uint16),
         "B04": rng.integers(1100, 3000, (size, size), dtype=np.uint16),
         "B08": rng.integers(2000, 6000, (size, size), dtype=np.uint16)}
    scl = rng.choice(np.array([4, 4, 4, 5, 8, 9, 3], np.uint8), (size // 2, size // 2))
    zonal_stats(b, g, fields.iloc[:5], scl=scl, offsets=-0.1, indices=("ndvi", "evi"))
    t0 = time.perf_counter()
    for _ in range(n_dates):
        zonal_stats(b, g, fields, scl=scl, offsets=-0.1, indices=("ndvi", "evi"),
                    coverage=cov)
    t_stats = time.perf_counter() - t0
    # the kernels alone on already-gathered pixels (what field_observations adds per date)
    rows, cols = cov.rows, cov.cols
    refl = {k2: reflectance(v[rows, cols], 1e-4, -0.1) for k2, v in b.items()}
    valid = ~invalid_mask(scl)[rows // 2, cols // 2]
    t_each = []
    for _ in range(n_dates):
        t0 = time.perf_counter()
        coverage_stats(cov, refl, valid, indices=("ndvi", "evi"))
        t_each.append(time.perf_counter() - t0)
    t_kern = float(np.sum(t_each))
    return {"n_fields": n_fields, "nnz": cov.nnz, "mean_px": float(cov.n_pixels.mean()),
            "coverage_s": t_cov, "coverage_s_median": float(np.median(t_covs)),
            "zonal_stats_s_per_date": t_stats / n_dates, "zonal_stats_s_total": t_stats,
            "coverage_stats_s_per_date": t_kern / n_dates,
            "coverage_stats_s_per_date_min": float(np.min(t_each)),
            "coverage_stats_s_total": t_kern}


def _main(argv: list[str]) -> None:
    what = argv[0] if argv else ""
    if what == "centre":
        print(_centre_vs_exact())
        print(_centre_vs_exact(psf_sigma=0))
    elif what == "kernels":
        print(_bench_kernels())
    else:
        print(__doc__)
        raise SystemExit(0 if what in ("-h", "--help") else 2)


if __name__ == "__main__":
    _main(sys.argv[1:])
