"""STAC Collection and Items mirroring Earth Search v1 ``sentinel-2-l2a``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ._config import SceneSpec, WorldConfig

__all__ = ["ASSETS", "make_item", "make_collection", "STAC_EXTENSIONS"]

STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
]
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

#: Earth Search asset key -> (band file, title, common name, centre um, FWHM um, resolution m)
ASSETS = {
    "blue": ("B02", "Blue (band 2) - 10m", "blue", 0.49, 0.098, 10),
    "green": ("B03", "Green (band 3) - 10m", "green", 0.56, 0.045, 10),
    "red": ("B04", "Red (band 4) - 10m", "red", 0.665, 0.038, 10),
    "rededge1": ("B05", "Red edge 1 (band 5) - 20m", "rededge", 0.704, 0.019, 20),
    "rededge2": ("B06", "Red edge 2 (band 6) - 20m", "rededge", 0.74, 0.018, 20),
    "rededge3": ("B07", "Red edge 3 (band 7) - 20m", "rededge", 0.783, 0.028, 20),
    "nir": ("B08", "NIR 1 (band 8) - 10m", "nir", 0.842, 0.145, 10),
    "nir08": ("B8A", "NIR 2 (band 8A) - 20m", "nir08", 0.865, 0.033, 20),
    "swir16": ("B11", "SWIR 1 (band 11) - 20m", "swir16", 1.61, 0.143, 20),
    "swir22": ("B12", "SWIR 2 (band 12) - 20m", "swir22", 2.19, 0.242, 20),
    "scl": ("SCL", "Scene classification map (SCL)", None, None, None, 20),
}


def _iso(ts: pd.Timestamp) -> str:
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _footprint(config: WorldConfig, scene: SceneSpec, valid_frac_poly):
    """Valid-data footprint of the scene in lon/lat (polygon coords, bbox)."""
    from pyproj import Transformer

    tr = Transformer.from_crs(config.epsg, 4326, always_xy=True)
    g = valid_frac_poly
    xs, ys = g.exterior.coords.xy
    lon, lat = tr.transform(np.asarray(xs), np.asarray(ys))
    coords = [[float(a), float(b)] for a, b in zip(lon, lat)]
    return coords, [float(min(lon)), float(min(lat)), float(max(lon)), float(max(lat))]


def make_item(config: WorldConfig, scene: SceneSpec, hrefs: dict[str, str], stats: dict,
              footprint_utm, sun: tuple[float, float]) -> dict:
    """An Earth Search v1-shaped item dict for one rendered scene."""
    tile = scene.tile
    coords, bbox = _footprint(config, scene, footprint_utm)
    plat = "S2A" if scene.platform.endswith("a") else "S2B"
    dt = scene.datetime
    gen = scene.generation_time
    nb = scene.processing_baseline.replace(".", "")
    orbit = 32 if plat == "S2A" else 132
    product_uri = (f"{plat}_MSIL2A_{dt.strftime('%Y%m%dT%H%M%S')}_N{nb}_R{orbit:03d}_T{tile.name}_"
                   f"{gen.strftime('%Y%m%dT%H%M%S')}.SAFE")
    offset = -0.1 if scene.boa_offset_dn else 0.0
    assets = {}
    for key, (fname, title, common, cw, fwhm, res) in ASSETS.items():
        t = tile.transform(res)
        a: dict[str, Any] = {"href": hrefs[fname], "type": COG_TYPE, "title": title}
        if common is not None:
            a["eo:bands"] = [{"name": key, "common_name": common,
                              "description": title.split(" - ")[0],
                              "center_wavelength": cw, "full_width_half_max": fwhm}]
            a["gsd"] = res
        a["proj:shape"] = list(tile.shape(res))
        a["proj:transform"] = [t.a, t.b, t.c, t.d, t.e, t.f]
        if fname == "SCL":
            a["raster:bands"] = [{"nodata": 0, "data_type": "uint8", "spatial_resolution": res}]
        else:
            a["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15,
                                  "spatial_resolution": res, "scale": 0.0001, "offset": offset}]
        a["roles"] = ["data", "reflectance"]
        assets[key] = a
    cls = stats["classes"]
    created = _iso(gen + pd.Timedelta(hours=1))
    abs_orbit = 10_000 + scene.date_index * 71   # plausible-looking, stable
    dtk = f"G{plat}_{dt.strftime('%Y%m%dT%H%M%S')}_{abs_orbit:06d}_N{scene.processing_baseline}"
    gstamp = gen.strftime("%Y%m%dT%H%M%S")
    doy = dt.day_of_year
    rcf = 1.0 / (1.0 - 0.01672 * math.cos(math.radians(0.9856 * (doy - 4)))) ** 2
    props = {
        "created": created,
        "platform": scene.platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": round(stats["cloud_cover"], 6),
        "proj:epsg": config.epsg,
        "proj:code": f"EPSG:{config.epsg}",
        "mgrs:utm_zone": tile.utm_zone,
        "mgrs:latitude_band": tile.latitude_band,
        "mgrs:grid_square": tile.grid_square,
        "grid:code": f"MGRS-{tile.name}",
        "view:sun_azimuth": round(float(sun[0]), 6),
        "view:sun_elevation": round(float(sun[1]), 6),
        "s2:degraded_msi_data_percentage": 0,
        "s2:nodata_pixel_percentage": round(stats["nodata"], 6),
        "s2:saturated_defective_pixel_percentage": 0,
        "s2:dark_features_percentage": 0,
        "s2:cloud_shadow_percentage": round(cls[3], 6),
        "s2:vegetation_percentage": round(cls[4], 6),
        "s2:not_vegetated_percentage": round(cls[5], 6),
        "s2:water_percentage": round(cls[6], 6),
        "s2:medium_proba_clouds_percentage": round(cls[8], 6),
        "s2:high_proba_clouds_percentage": round(cls[9], 6),
        "s2:unclassified_percentage": 0,
        "s2:thin_cirrus_percentage": round(cls[10], 6),
        "s2:snow_ice_percentage": 0,
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": scene.processing_baseline,
        "s2:product_uri": product_uri,
        "s2:generation_time": gen.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "s2:datatake_id": dtk,
        "s2:datatake_type": "INS-NOBS",
        "s2:datastrip_id": (f"{plat}_OPER_MSI_L2A_DS_2BPS_{gstamp}_S{dt.strftime('%Y%m%dT%H%M%S')}"
                            f"_N{scene.processing_baseline}"),
        "s2:granule_id": (f"{plat}_OPER_MSI_L2A_TL_2BPS_{gstamp}_A{abs_orbit:06d}_T{tile.name}"
                          f"_N{scene.processing_baseline}"),
        "s2:reflectance_conversion_factor": rcf,
        "s2:mgrs_tile": tile.name,
        "datetime": _iso(dt),
        "s2:sequence": str(scene.sequence),
        "earthsearch:s3_path": (f"s3://sentinel-cogs/sentinel-s2-l2a-cogs/{tile.utm_zone}/"
                                f"{tile.latitude_band}/{tile.grid_square}/{dt.year}/{dt.month}/"
                                f"{scene.id}"),
        "earthsearch:payload_id": f"synthetic/{config.key()}/{scene.id}",
        "earthsearch:boa_offset_applied": bool(scene.boa_offset_dn),
        "processing:software": {"cropyield.synthetic": "1"},
        "updated": created,
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": list(STAC_EXTENSIONS),
        "id": scene.id,
        "collection": "sentinel-2-l2a",
        "geometry": {"type": "Polygon", "coordinates": [coords]},
        "bbox": bbox,
        "properties": props,
        "links": [],
        "assets": assets,
    }


def make_collection(config: WorldConfig, items: list[dict]) -> dict:
    """A ``sentinel-2-l2a`` collection like Earth Search's, with this world's extent."""
    bb = np.array([it["bbox"] for it in items]) if items else np.zeros((1, 4))
    times = sorted(it["properties"]["datetime"] for it in items)
    item_assets = {}
    for key, (fname, title, common, cw, fwhm, res) in ASSETS.items():
        ia: dict[str, Any] = {"type": COG_TYPE, "title": title,
                              "roles": ["data", "reflectance"]}
        if common is not None:
            ia["eo:bands"] = [{"name": key, "common_name": common,
                               "center_wavelength": cw, "full_width_half_max": fwhm}]
            ia["gsd"] = res
        item_assets[key] = ia
    return {
        "type": "Collection",
        "id": "sentinel-2-l2a",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/item-assets/v1.0.0/schema.json"],
        "title": "Sentinel-2 Level-2A (synthetic)",
        "description": ("Synthetic Sentinel-2 L2A scenes made by cropyield.synthetic "
                        f"(seed {config.seed}); metadata mirror Earth Search v1 sentinel-2-l2a."),
        "license": "proprietary",
        "keywords": ["sentinel", "earth observation", "esa", "synthetic"],
        "providers": [{"name": "cropyield.synthetic", "roles": ["producer", "processor"]}],
        "extent": {
            "spatial": {"bbox": [[float(bb[:, 0].min()), float(bb[:, 1].min()),
                                  float(bb[:, 2].max()), float(bb[:, 3].max())]]},
            "temporal": {"interval": [[times[0] if times else None,
                                       times[-1] if times else None]]},
        },
        "summaries": {"platform": ["sentinel-2a", "sentinel-2b"], "constellation": ["sentinel-2"],
                      "instruments": ["msi"], "gsd": [10, 20], "view:off_nadir": [0]},
        "item_assets": item_assets,
        "links": [],
    }
