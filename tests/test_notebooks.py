"""The offline notebooks in ``notebooks/`` run end to end (tiny synthetic world, ~1 min each).

Executed with nbclient (the engine nbmake uses) so that a plain ``python -m pytest`` runs them;
``pytest --nbmake notebooks/quickstart.ipynb`` does the same for one notebook. Notebooks whose
metadata say ``cropyield.needs_internet`` are never run here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


def _needs_internet(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return bool(nb.metadata.get("cropyield", {}).get("needs_internet"))


OFFLINE = [p for p in ALL if not _needs_internet(p)]


def test_notebook_set():
    names = {p.stem for p in ALL}
    assert {"quickstart", "calibration_validation", "credit_integration"} <= {p.stem for p in OFFLINE}
    assert "real_area_earth_search" in names and "real_area_earth_search" not in {p.stem for p in OFFLINE}


@pytest.mark.slow
@pytest.mark.parametrize("path", OFFLINE, ids=[p.stem for p in OFFLINE])
def test_notebook_runs(path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    src = str(Path(__file__).resolve().parents[1] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
