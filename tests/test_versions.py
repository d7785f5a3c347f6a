"""cropyield.show_versions(): the report a bug needs."""

import io
import platform
import sys

import numba
import rasterio

import cropyield as cy


def test_show_versions_lists_the_stack():
    buf = io.StringIO()
    cy.show_versions(file=buf)
    text = buf.getvalue()
    lines = dict(line.split(" : ", 1) for line in text.splitlines())
    lines = {k.strip(): v for k, v in lines.items()}
    assert lines["cropyield"] == cy.__version__
    assert lines["Python"].startswith(platform.python_version())
    assert lines["GDAL"] == rasterio.__gdal_version__
    assert lines["rasterio"] == rasterio.__version__
    assert lines["numba"] == numba.__version__
    for key in ("PROJ", "numba threading layer", "dask", "distributed", "pystac-client",
                "platform"):
        assert key in lines and lines[key] not in ("", "not installed"), key
    # optional packages appear only when installed
    assert ("lightgbm" in lines) == ("lightgbm" in sys.modules or _installed("lightgbm"))


def test_show_versions_reports_the_threading_layer_in_use():
    from cropyield import _versions

    @numba.njit(parallel=True)
    def _touch(n):
        s = 0
        for i in numba.prange(n):
            s += i
        return s

    _touch(10)
    assert _versions.versions()["numba threading layer"].endswith("(in use)")


def _installed(dist):
    import importlib.metadata

    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False
