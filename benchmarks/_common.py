"""Shared helpers of the cropyield benchmarks: synthetic Sentinel-2-like COGs, smallholder
fields, hand-built Scenes, and a subprocess runner that measures wall time and peak RSS.

Everything is generated from seeds; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EPSG = 32650
X0, Y0 = 400000.0, 4200000.0


def write_cog(path, arr, transform, *, blocksize=512, epsg=EPSG):
    """Single-band DEFLATE COG without overviews."""
    import rasterio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", driver="COG", width=arr.shape[1], height=arr.shape[0], count=1,
                       dtype=arr.dtype, crs=f"EPSG:{epsg}", transform=transform, nodata=0,
                       blocksize=blocksize, compress="deflate", overviews="NONE",
                       num_threads=2) as dst:
        dst.write(arr, 1)
    os.replace(tmp, path)


def smooth_field(shape, rng, cells=64):
    """A smooth random surface in [0, 1] (bilinear up-sampling of a coarse random grid)."""
    from scipy.ndimage import zoom

    coarse = rng.random((cells, cells))
    z = zoom(coarse, (shape[0] / cells, shape[1] / cells), order=1)
    return z[: shape[0], : shape[1]]


def make_dates(root, n_dates, size, *, seed=0, blocksize=512, bands=("B04", "B08", "SCL"),
               cloud=True):
    """Write ``n_dates`` dates of B04/B08 (10 m) and SCL (20 m) COGs; returns the folder.

    Reflectance-like DNs (post-04.00: DN = 10000 * refl + 1000) with a smooth vegetation
    pattern, per-date phenology and sensor noise; SCL vegetation/bare with cloud and shadow
    discs on some dates. Files are reused when they exist.
    """
    from rasterio.transform import from_origin

    root = Path(root)
    rng = np.random.default_rng(seed)
    veg = smooth_field((size, size), rng)
    soil = smooth_field((size, size), rng, cells=32)
    h2 = size // 2
    yy, xx = np.mgrid[0:h2, 0:h2]
    for d in range(n_dates):
        folder = root / f"d{d:02d}"
        if all((folder / f"{b}.tif").exists() for b in bands):
            continue
        r = np.random.default_rng(seed + 1000 + d)
        season = 0.2 + 0.7 * np.sin(np.pi * (d + 0.5) / max(n_dates, 1)) ** 2
        ndvi = np.clip(0.1 + 0.8 * veg * season, 0.02, 0.95)
        red = 0.03 + 0.12 * soil * (1 - ndvi)
        nir = red * (1 + ndvi) / (1 - ndvi)
        if "B04" in bands:
            b04 = (red * 10000 + 1000 + r.normal(0, 25, red.shape)).clip(1, 65535)
            write_cog(folder / "B04.tif", b04.astype(np.uint16), from_origin(X0, Y0, 10, 10),
                      blocksize=blocksize)
        if "B08" in bands:
            b08 = (nir * 10000 + 1000 + r.normal(0, 25, red.shape)).clip(1, 65535)
            write_cog(folder / "B08.tif", b08.astype(np.uint16), from_origin(X0, Y0, 10, 10),
                      blocksize=blocksize)
        if "SCL" in bands:
            scl = np.where(soil[::2, ::2] > 0.7, 5, 4).astype(np.uint8)
            if cloud and d % 3 == 1:
                for _ in range(r.integers(3, 12)):
                    cy, cx, rad = r.integers(0, h2), r.integers(0, h2), r.integers(20, h2 // 6)
                    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2
                    shadow = (yy - cy - rad // 2) ** 2 + (xx - cx - rad) ** 2 < rad ** 2
                    scl[shadow & ~disc] = 3
                    scl[disc] = 9 if r.random() < 0.5 else 8
            write_cog(folder / "SCL.tif", scl, from_origin(X0, Y0, 20, 20),
                      blocksize=blocksize)
    return root


def smallholder_fields(n, size_px, *, seed=0, clusters=None, cluster_radius_px=400,
                       res=10.0):
    """``n`` rotated rectangular fields (median 0.4 ha, 0.03–3 ha) on the tile.

    ``clusters``: number of village clusters (fields drawn around cluster centres),
    otherwise uniform over the tile. Returns a GeoDataFrame (EPSG:32650, ``field_id``).
    """
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(seed)
    margin = 30
    if clusters:
        centres = rng.uniform(margin + cluster_radius_px, size_px - margin - cluster_radius_px,
                              (clusters, 2))
        which = rng.integers(0, clusters, n)
        off = rng.normal(0, cluster_radius_px / 2.5, (n, 2)).clip(-cluster_radius_px,
                                                                   cluster_radius_px)
        cxy = centres[which] + off
    else:
        cxy = rng.uniform(margin, size_px - margin, (n, 2))
    area_px = np.exp(rng.normal(np.log(40.0), 0.8, n)).clip(3, 300)   # 10 m pixels
    aspect = rng.uniform(1.0, 3.0, n)
    w = np.sqrt(area_px * aspect) * res
    h = np.sqrt(area_px / aspect) * res
    ang = rng.uniform(0, np.pi, n)
    cx = X0 + cxy[:, 0] * res
    cy = Y0 - cxy[:, 1] * res
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]])
    px = corners[None, :, 0] * w[:, None]
    py = corners[None, :, 1] * h[:, None]
    ca, sa = np.cos(ang)[:, None], np.sin(ang)[:, None]
    X = cx[:, None] + px * ca - py * sa
    Y = cy[:, None] + px * sa + py * ca
    polys = shapely.polygons(np.stack([X, Y], axis=-1))
    return gpd.GeoDataFrame({"field_id": np.arange(n)}, geometry=polys, crs=f"EPSG:{EPSG}")


def scenes_for(root, n_dates, *, href_base=None, start="2024-04-01"):
    """Hand-built cropyield Scenes for the dates under ``root`` (offset -0.1, scale 1e-4)."""
    import pandas as pd
    import rasterio

    from cropyield._geo import Grid
    from cropyield.catalogs import Band, Scene, Scenes

    out = []
    t0 = pd.Timestamp(start, tz="UTC") + pd.Timedelta(hours=3)
    for d in range(n_dates):
        folder = Path(root) / f"d{d:02d}"
        bands = {}
        for fn in sorted(folder.glob("*.tif")):
            if fn.name.endswith(".tmp.tif"):
                continue
            name = fn.stem
            with rasterio.open(fn) as ds:
                grid = Grid(ds.crs, ds.transform, ds.shape)
                res = float(ds.transform.a)
            href = str(fn) if href_base is None else \
                f"{href_base}/{fn.relative_to(root).as_posix()}"
            scl = name == "SCL"
            bands[name] = Band(name, href, res, grid, 0, 1.0 if scl else 1e-4,
                               0.0 if scl else -0.1, "uint8" if scl else "uint16")
        out.append(Scene(id=f"S2B_50SKE_{d:02d}", datetime=t0 + pd.Timedelta(days=5 * d),
                         collection="sentinel-2-l2a", tile="50SKE", platform="sentinel-2b",
                         processing_baseline="05.10", cloud_cover=None, bands=bands,
                         offset_source="baseline"))
    return Scenes(out)


def run_child(argv, env=None):
    """Run ``python argv...`` in a fresh subprocess; return its JSON result.

    The child reports its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``), which counts
    GDAL's native allocations too (tracemalloc would not see them); one process per run
    keeps the figure per method.
    """
    proc = subprocess.run([sys.executable, *argv], capture_output=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({' '.join(map(str, argv))}):\n"
                           f"{proc.stderr.decode()[-3000:]}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def maxrss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result):
    """Print a child's JSON result line (stdout; the parent parses the last line)."""
    result["maxrss_mib"] = maxrss_mib()
    sys.stdout.write(json.dumps(result) + "\n")


class Timer:
    def __enter__(self):
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t
