"""The ``Examples`` sections of the main public functions run as written.

Examples that need the internet or data files are marked ``# doctest: +SKIP`` in the
docstrings; everything else here is executed, so the examples cannot drift from the API.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

OBJECTS = [
    ("cropyield.catalogs", "search_scenes"),
    ("cropyield.observations", "field_observations"),
    ("cropyield.read._cube", "load_cube"),
    ("cropyield.zonal", "zonal_stats"),
    ("cropyield.series", "smooth_series"),
    ("cropyield.seasons", "phenology"),
    ("cropyield.identify", "identify_crops"),
    ("cropyield.classify", "CropClassifier"),
    ("cropyield.yieldmodel.fit", "fit_yield_model"),
    pytest.param("cropyield.value", "estimate_yield", marks=pytest.mark.slow,
                 id="estimate_yield"),   # builds a small synthetic world (~4 s)
    ("cropyield.value", "PriceTable"),
    ("cropyield.credit._assess", "assess"),
    ("cropyield.pipeline", "estimate"),
    ("cropyield.store", "ResultStore"),
]


@pytest.mark.parametrize("module,name", OBJECTS)
def test_docstring_examples_run(module, name):
    obj = getattr(importlib.import_module(module), name)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={})
    assert tests and "Examples" in (obj.__doc__ or ""), f"{name} has no Examples section"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        result = runner.run(t)
        assert result.failed == 0, f"{result.failed} example(s) of {name} failed (see above)"
