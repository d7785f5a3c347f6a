"""End to end: the demo chain on a tiny world, through real servers on 127.0.0.1."""

from __future__ import annotations

import json

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("CROPYIELD_CACHE_DIR", str(cache))
    from cropyield.demo import run_demo

    try:
        out1 = tmp_path_factory.mktemp("demo1")
        s1 = run_demo(out1, seed=3, size="tiny")
        out2 = tmp_path_factory.mktemp("demo2")
        s2 = run_demo(out2, seed=3, size="tiny")   # second run: world from the cache
    finally:
        mp.undo()
    return (out1, s1), (out2, s2), cache


def test_demo_writes_results(demo_runs):
    (out, summary), _, _ = demo_runs
    for name in ("estimates.parquet", "observations.parquet", "series.parquet",
                 "phenology.parquet", "credit_profiles.json", "summary.json"):
        assert (out / name).is_file(), name
    est = pd.read_parquet(out / "estimates.parquet")
    assert {"field_id", "season", "crop", "yield_t_ha_p10", "yield_t_ha_p50", "yield_t_ha_p90",
            "value_cny_p50", "flags"} <= set(est.columns)
    finite = est.dropna(subset=["yield_t_ha_p50"])
    assert len(finite) > 0
    assert (finite["yield_t_ha_p10"] <= finite["yield_t_ha_p50"]).all()
    assert (finite["yield_t_ha_p50"] <= finite["yield_t_ha_p90"]).all()
    # every withheld number says why
    nan_rows = est[est["yield_t_ha_p50"].isna()]
    assert (nan_rows["flags"].str.len() > 0).all()
    profiles = json.loads((out / "credit_profiles.json").read_text())
    assert profiles and {"farmer_id", "decision", "schema_version"} <= set(profiles[0])
    assert summary["n_scenes"] > 10 and summary["requests"] > 0
    acc = summary["accuracy"]
    assert acc["yield_n_estimated"] > 0
    assert 0.0 <= acc["p10_p90_coverage"] <= 1.0


def test_demo_is_deterministic_and_cached(demo_runs):
    (out1, s1), (out2, s2), cache = demo_runs
    assert s1["accuracy"] == s2["accuracy"]
    assert s1["decisions"] == s2["decisions"]
    e1 = pd.read_parquet(out1 / "estimates.parquet").drop(columns="geometry")
    e2 = pd.read_parquet(out2 / "estimates.parquet").drop(columns="geometry")
    pd.testing.assert_frame_equal(e1, e2)
    assert len(list((cache / "worlds").iterdir())) == 1   # generated once, reused


def test_cli_demo_exit_code(tmp_path, monkeypatch, capsys, demo_runs):
    _, _, cache = demo_runs
    monkeypatch.setenv("CROPYIELD_CACHE_DIR", str(cache))
    from cropyield.cli import main

    assert main(["demo", "--out", str(tmp_path / "o"), "--seed", "3", "--size", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "accuracy against the synthetic truth" in text
    assert "credit decisions per farmer" in text
