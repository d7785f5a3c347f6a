"""Shared test fixtures: a tiny Sentinel-2 L2A world (COGs + Earth-Search-like STAC items)
served by real servers on 127.0.0.1 (rustac STAC API, RangeServer for COGs).

Helpers other test files may use: :func:`make_s2_world` (write the tiny world to a folder),
fixtures ``s2_world_dir`` (session; the folder), ``served_s2_world`` (session;
``cropyield.servers.ServedWorld``), ``stac_fixture`` (load a real recorded STAC response).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"

#: Tile grid of the tiny world: EPSG:32649 (UTM 49N, Henan), 10 m, 256 x 256 px per tile (COG blocks 128 px).
TINY_EPSG = 32649
TINY_SIZE = 256
#: (tile, x0, y0) upper-left corners of the two overlapping tiles.
TINY_TILES = {"49SGU": (700000.0, 3850000.0), "49SGV": (701280.0, 3851280.0)}
#: (item suffix, tile, datetime, cloud cover, baseline, sequence, generation time)
TINY_ITEMS = [
    ("20240501_0", "49SGU", "2024-05-01T03:15:21.123000Z", 5.0, "05.10", 0, "2024-05-01T06:00:00Z"),
    ("20240506_0", "49SGU", "2024-05-06T03:15:19.000000Z", 62.0, "05.10", 0, "2024-05-06T06:00:00Z"),
    # reprocessed duplicate: same tile and datetime, older baseline / newer baseline
    ("20240511_0", "49SGU", "2024-05-11T03:15:20.500000Z", 18.0, "05.09", 0, "2024-05-11T06:00:00Z"),
    ("20240511_1", "49SGU", "2024-05-11T03:15:20.500000Z", 18.0, "05.10", 1, "2024-09-02T11:00:00Z"),
    ("20240501_0", "49SGV", "2024-05-01T03:15:24.000000Z", 12.0, "05.10", 0, "2024-05-01T06:00:00Z"),
    ("20210601_0", "49SGU", "2021-06-01T03:15:30.000000Z", 3.0, "03.00", 0, "2021-06-01T06:00:00Z"),
]
#: Earth Search asset key -> (canonical band, resolution m, dtype)
TINY_BANDS = {"red": ("B04", 10, "uint16"), "nir": ("B08", 10, "uint16"),
              "swir16": ("B11", 20, "uint16"), "scl": ("SCL", 20, "uint8")}


def _write_cog(path: Path, arr: np.ndarray, transform, epsg: int) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="COG", width=arr.shape[1], height=arr.shape[0], count=1,
                       dtype=arr.dtype, crs=f"EPSG:{epsg}", transform=transform, nodata=0,
                       blocksize=128, compress="deflate",
                       overview_resampling="nearest") as dst:
        dst.write(arr, 1)


def make_s2_world(root, *, href_base: str | None = None, seed: int = 7) -> Path:
    """Write the tiny world: COGs, ``collection.json``, ``items.ndjson`` and ``items.json``.

    Asset hrefs are relative to ``root`` unless ``href_base`` (a URL) is given. DN follow
    the baseline rule: products >= 04.00 carry +1000 (BOA_ADD_OFFSET -1000) and their
    ``raster:bands`` say offset -0.1; the 03.00 product says offset 0.
    """
    from affine import Affine
    from pyproj import Transformer

    root = Path(root)
    rng = np.random.default_rng(seed)
    to_ll = Transformer.from_crs(TINY_EPSG, 4326, always_xy=True)
    items = []
    for suffix, tile, dt, cloud, baseline, seq, gen in TINY_ITEMS:
        x0, y0 = TINY_TILES[tile]
        item_id = f"S2B_{tile}_{suffix}_L2A"
        offset = -0.1 if float(baseline) >= 4.0 else 0.0
        add = 1000 if offset else 0
        assets = {}
        for key, (band, res, dtype) in TINY_BANDS.items():
            n = TINY_SIZE * 10 // res
            transform = Affine(res, 0, x0, 0, -res, y0)
            if band == "SCL":
                arr = np.full((n, n), 4, dtype="uint8")
                arr[: n // 4, : n // 4] = 9
            else:
                refl = {"B04": 0.06, "B08": 0.35, "B11": 0.2}[band]
                arr = (refl * 10000 + add + rng.normal(0, 50, (n, n))).astype(dtype)
            arr[:, :2] = 0  # swath edge: nodata
            rel = f"{tile}/{suffix}/{band}.tif"
            _write_cog(root / rel, arr, transform, TINY_EPSG)
            rb = {"nodata": 0, "data_type": dtype, "spatial_resolution": res}
            if band != "SCL":
                rb.update(scale=0.0001, offset=offset)
            assets[key] = {
                "href": f"{href_base.rstrip('/')}/{rel}" if href_base else rel,
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"] + (["reflectance"] if band != "SCL" else []),
                "gsd": res, "proj:shape": [n, n], "proj:transform": list(transform)[:6],
                "raster:bands": [rb],
            }
        assets["thumbnail"] = {"href": "https://example.invalid/preview.jpg", "roles": ["thumbnail"]}
        x1, y1 = x0 + TINY_SIZE * 10, y0 - TINY_SIZE * 10
        ring = [to_ll.transform(x, y) for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
        lons, lats = [p[0] for p in ring], [p[1] for p in ring]
        items.append({
            "type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "collection": "sentinel-2-l2a",
            "stac_extensions": [
                "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            ],
            "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
            "bbox": [min(lons), min(lats), max(lons), max(lats)],
            "properties": {
                "datetime": dt, "platform": "sentinel-2b", "constellation": "sentinel-2",
                "eo:cloud_cover": cloud, "proj:epsg": TINY_EPSG,
                "mgrs:utm_zone": int(tile[:2]), "mgrs:latitude_band": tile[2],
                "mgrs:grid_square": tile[3:], "grid:code": f"MGRS-{tile}",
                "s2:processing_baseline": baseline, "s2:sequence": str(seq),
                "s2:generation_time": gen, "created": gen,
            },
            "links": [], "assets": assets,
        })
    lons = [v for it in items for v in it["bbox"][0::2]]
    lats = [v for it in items for v in it["bbox"][1::2]]
    collection = {
        "type": "Collection", "stac_version": "1.0.0", "id": "sentinel-2-l2a",
        "description": "tiny Sentinel-2 L2A test world", "license": "proprietary", "links": [],
        "extent": {"spatial": {"bbox": [[min(lons), min(lats), max(lons), max(lats)]]},
                   "temporal": {"interval": [["2021-01-01T00:00:00Z", "2024-12-31T23:59:59Z"]]}},
    }
    (root / "collection.json").write_text(json.dumps(collection))
    (root / "items.ndjson").write_text("".join(json.dumps(it) + "\n" for it in items))
    (root / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return root


@pytest.fixture(scope="session")
def s2_world_dir(tmp_path_factory) -> Path:
    """The tiny world written once per session (relative hrefs)."""
    return make_s2_world(tmp_path_factory.mktemp("s2world"))


@pytest.fixture(scope="session")
def served_s2_world(s2_world_dir):
    """The tiny world served: ``.stac_url`` (rustac) and ``.cog_url`` (RangeServer)."""
    from cropyield.servers import serve_world

    with serve_world(s2_world_dir) as srv:
        yield srv


def load_script(name: str):
    """Import ``scripts/<name>.py`` (validation scripts are not part of the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_stac_fixture(name: str) -> dict:
    """A real recorded STAC API response from ``tests/data/stac`` (see its README)."""
    return json.loads((DATA / "stac" / name).read_text())


@pytest.fixture(scope="session")
def stac_fixture():
    """``stac_fixture(name)`` loads a recorded response from ``tests/data/stac``."""
    return load_stac_fixture
