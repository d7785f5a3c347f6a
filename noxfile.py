"""nox sessions: ``tests`` (the README test command), ``bench`` (benchmarks, never timed
tests), ``lint`` (ruff).

    nox -s tests
    nox -s bench            # both benchmarks (~20 min on 2 cores, data generated once)
    nox -s bench -- zonal   # only benchmarks/bench_zonal.py (issue 4 item 7)
    nox -s bench -- http    # only benchmarks/bench_http.py (issue 3 item 7)
    nox -s bench -- jit     # only benchmarks/bench_jit.py (first-call compilation)
    nox -s bench -- scale   # only benchmarks/bench_scale.py --size reduced (issue 19 item 7)
    nox -s bench_scale -- --size county   # the county-sized run (>= 100 000 fields)
    nox -s docs             # Sphinx HTML in docs/_build/html, warnings are errors
    nox -s typecheck        # mypy on the public API
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite as the README says (``pip install -e .[test]`` then pytest)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run the benchmarks and print their tables (copy them into docs/benchmarks.md)."""
    session.install("-e", ".[bench]")
    which = set(session.posargs) or {"zonal", "http", "jit"}
    if "zonal" in which:
        session.run("python", "benchmarks/bench_zonal.py", "--repeat", "3")
    if "http" in which:
        session.run("python", "benchmarks/bench_http.py")
    if "jit" in which:
        session.run("python", "benchmarks/bench_jit.py", "--repeat", "3")
    if "scale" in which:
        session.run("python", "benchmarks/bench_scale.py", "--size", "reduced")


@nox.session(python=PYTHON)
def bench_scale(session: nox.Session) -> None:
    """Scaling benchmark on a dask LocalCluster (1 and 2 workers, 50 ms COG latency);
    ``-- --size county`` for the county-sized world (docs/scaling.md)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/bench_scale.py", *(session.posargs or ["--size", "reduced"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Static checks with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors (notebooks are shown, not executed)."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html",
                *session.posargs)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy on the package (configuration: [tool.mypy] in pyproject.toml).

    Installs the package with its ``[typecheck]`` extra: mypy only. numpy ships its own
    annotations; pandas, geopandas, rasterio, numba, pystac-client and the other libraries
    without inline types are treated as untyped (``ignore_missing_imports``): pandas-stubs
    3.1 is not installed, it reports ~220 stub-strictness errors at ~45 sites (scalars of
    ``itertuples``/``iterrows`` rows typed as a 12-member union) that need their own pass.
    Same check without nox: ``.venv/bin/python -m mypy``.
    """
    session.install("-e", ".[typecheck]")
    session.run("mypy", *session.posargs)
