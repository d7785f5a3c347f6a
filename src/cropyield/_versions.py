"""``cropyield.show_versions()``: the versions that matter when reporting a problem."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
from typing import IO

__all__ = ["show_versions", "versions"]

#: Optional packages reported when installed (distribution name, import name).
_OPTIONAL = (
    ("scikit-learn", "sklearn"),
    ("lightgbm", "lightgbm"),
    ("pcse", "pcse"),
    ("matplotlib", "matplotlib"),
    ("rustac", "rustac"),
    ("exactextract", "exactextract"),
    ("planetary-computer", "planetary_computer"),
)


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _numba_info() -> dict[str, str | None]:
    out: dict[str, str | None] = {"numba": _dist_version("numba"), "numba threading layer": None}
    try:
        import numba

        layer = str(getattr(numba.config, "THREADING_LAYER", "default"))
        try:  # the layer actually in use is only known after a parallel kernel ran
            layer_in_use = numba.threading_layer()
            layer = f"{layer_in_use} (in use)"
        except ValueError:
            layer = f"{layer} (configured; none initialised yet)"
        out["numba threading layer"] = layer
        out["numba threads"] = str(getattr(numba.config, "NUMBA_NUM_THREADS", "?"))
    except ImportError:  # pragma: no cover - numba is a hard dependency
        pass
    return out


def _gdal_proj() -> dict[str, str | None]:
    out: dict[str, str | None] = {"GDAL": None, "PROJ": None, "PROJ (rasterio)": None}
    try:
        import rasterio

        out["GDAL"] = rasterio.__gdal_version__
        out["PROJ (rasterio)"] = getattr(rasterio, "__proj_version__", None)
    except Exception:  # noqa: BLE001 - reporting must never fail
        pass
    try:
        import pyproj

        out["PROJ"] = f"{pyproj.proj_version_str} (pyproj {pyproj.__version__})"
    except Exception:  # noqa: BLE001
        pass
    return out


def versions() -> dict[str, str | None]:
    """Return the versions reported by :func:`show_versions` as a dict.

    Returns
    -------
    dict of str to str or None
        Name → version string; ``None`` where a package is not installed.

    Examples
    --------
    >>> import cropyield as cy
    >>> v = cy._versions.versions()
    >>> sorted(k for k in ("cropyield", "Python", "GDAL") if k in v)
    ['GDAL', 'Python', 'cropyield']
    """
    from ._version import __version__

    info: dict[str, str | None] = {
        "cropyield": __version__,
        "Python": sys.version.replace("\n", " "),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    info.update(_gdal_proj())
    for dist in ("rasterio", "pyproj", "shapely", "geopandas", "numpy", "pandas", "pyarrow",
                 "xarray"):
        info[dist] = _dist_version(dist)
    info.update(_numba_info())
    for dist in ("dask", "distributed", "pystac", "pystac-client"):
        info[dist] = _dist_version(dist)
    for dist, _mod in _OPTIONAL:
        v = _dist_version(dist)
        if v is not None:
            info[dist] = v
    return info


def show_versions(file: IO[str] | None = None) -> None:
    """Print cropyield, Python, platform and dependency versions (for bug reports).

    Lists GDAL, PROJ, rasterio, numba and its threading layer, dask/distributed,
    pystac-client, and scikit-learn, lightgbm, pcse and other optional extras when installed.

    Parameters
    ----------
    file : text stream, optional
        Where to write (default ``sys.stdout``).

    Examples
    --------
    >>> import cropyield as cy
    >>> cy.show_versions()  # doctest: +ELLIPSIS
    cropyield ...
    """
    file = sys.stdout if file is None else file
    info = versions()
    width = max(map(len, info))
    for name, value in info.items():
        print(f"{name:<{width}} : {value if value is not None else 'not installed'}", file=file)
