"""End to end: the demo chain on a tiny world, through real servers on 127.0.0.1.

The same seed is run twice, once through the Python API (generating the world) and once
through the ``cropyield`` command (reusing the cached world): both must give identical numbers.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    from cropyield.cli import main
    from cropyield.demo import run_demo

    cache = tmp_path_factory.mktemp("cache")
    out1 = tmp_path_factory.mktemp("demo_api")
    out2 = tmp_path_factory.mktemp("demo_cli")
    mp = pytest.MonkeyPatch()
    mp.setenv("CROPYIELD_CACHE_DIR", str(cache))
    try:
        s1 = run_demo(out1, seed=3, size="tiny")
        rc = main(["demo", "--out", str(out2), "--seed", "3", "--size", "tiny"])
    finally:
        mp.undo()
    s2 = json.loads((out2 / "summary.json").read_text())
    return (out1, s1), (out2, s2, rc), cache


def test_demo_writes_results(demo_runs):
    (out, summary), _, _ = demo_runs
    for name in ("estimates.parquet", "observations.parquet", "series.parquet",
                 "phenology.parquet", "credit_profiles.json", "alerts.parquet", "summary.json",
                 "demo.png"):
        assert (out / name).is_file(), name
    # the manifest (written last) describes the GeoParquet estimates that are on disk
    import hashlib

    import geopandas as gpd

    man = json.loads((out / "manifest.json").read_text())
    assert man["files"]["estimates"]["sha256"] == hashlib.sha256(
        (out / "estimates.parquet").read_bytes()).hexdigest()
    assert gpd.read_parquet(out / "estimates.parquet").crs is not None
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
    assert {p["decision"] for p in profiles} <= {"approve", "refer", "decline"}
    for p in profiles:  # excluded fields are named, listed among the fields and explained
        assert set(p["excluded_fields"]) <= {f["field_id"] for f in p["fields"]}
        why = {r["field_id"] for r in p["reasons"] if r["code"].startswith("FIELD_EXCLUDED_")}
        assert why == set(p["excluded_fields"])
        assert not [r for r in p["reasons"]
                    if r["field_id"] in why and r["effect"] in ("refer", "haircut")]
    assert summary["n_scenes"] > 10 and summary["requests"] > 0
    alerts = pd.read_parquet(out / "alerts.parquet")
    assert {"field_id", "farmer_id", "as_of", "code", "severity", "message"} <= set(alerts.columns)
    assert sum(summary["alerts"].values()) == len(alerts)
    acc = summary["accuracy"]
    assert acc["yield_n_estimated"] > 0
    assert 0.0 <= acc["p10_p90_coverage"] <= 1.0
    assert acc["crop_id_accuracy"] > 0.5


def test_demo_is_deterministic_and_cached(demo_runs):
    (out1, s1), (out2, s2, rc), cache = demo_runs
    assert rc == 0
    assert s1["accuracy"] == s2["accuracy"]
    assert s1["decisions"] == s2["decisions"]
    e1 = pd.read_parquet(out1 / "estimates.parquet").drop(columns="geometry")
    e2 = pd.read_parquet(out2 / "estimates.parquet").drop(columns="geometry")
    pd.testing.assert_frame_equal(e1, e2)
    assert len(list((cache / "worlds").iterdir())) == 1   # generated once, reused
    # the crop-model-trained regressions: fitted once per crop, reused from JSON
    assert len(list((cache / "models").glob("simulation-*.json"))) == 3


def test_cli_prints_summary(demo_runs, capsys):
    from cropyield.cli import _print_summary

    (_, s1), (out2, _, _), _ = demo_runs
    _print_summary(s1, str(out2))
    text = capsys.readouterr().out
    assert "accuracy against the synthetic truth" in text
    assert "credit decisions per farmer" in text


def test_demo_scores_yield_and_loans_against_truth(demo_runs):
    (_, s), _, _ = demo_runs
    per_crop = s["accuracy"]["yield_per_crop"]
    assert per_crop
    for crop, v in per_crop.items():
        assert {"n", "r2", "r2_ceiling", "r2_ceiling_observed", "rmse_t_ha", "bias_t_ha",
                "p10_p90_coverage"} <= set(v)
        if v["r2_ceiling"] is not None:
            assert -1.0 < v["r2_ceiling"] <= 1.0 and v["n_ceiling"] >= 10
        # the oracle on the pipeline's own series: only for crops with >= 30 seasons
        if v["r2_ceiling_observed"] is not None:
            assert -1.0 < v["r2_ceiling_observed"] <= 1.0 and v["n"] >= 30
    # the crop-model crops always get a ceiling (their truth is WOFOST's)
    assert any(per_crop.get(c, {}).get("r2_ceiling") is not None
               for c in ("winter_wheat", "summer_maize"))
    assert 0.0 <= s["over_lending_share"] <= 1.0
    assert s["approved_n"] == s["decisions"].get("approve", 0)
    assert s["over_lending_n"] <= s["approved_n"]
    n_farmers = sum(s["decisions"].values())
    assert s["referral_rate"] == pytest.approx(s["decisions"].get("refer", 0) / n_farmers)
    # every referred farmer has at least one referring code, counted once per code
    assert sum(s["referral_reasons"].values()) >= s["referred_n"]
    assert sum(s["referral_sole_reasons"].values()) <= s["referred_n"]


def test_cli_prints_ceiling_and_loan_checks(demo_runs, capsys):
    from cropyield.cli import _print_summary

    (_, s1), (out2, _, _), _ = demo_runs
    _print_summary(s1, str(out2))
    text = capsys.readouterr().out
    assert "ceiling" in text and "over-lending share" in text and "referral rate" in text
