"""One type per column across every output table (issue 20 item 6).

A small synthetic run (simulated field observations, no rasters) through series,
phenology, crop identification, estimates and credit; the tables are checked as returned
and after a Parquet round trip, the credit JSON after ``to_json``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pandas.api import types as pdt

import cropyield as cy
from cropyield import credit
from cropyield.series import smooth_series
from cropyield.value import estimate_yield
from cropyield.yieldmodel import LUEModel

syn = pytest.importorskip("cropyield.synthetic")


@pytest.fixture(scope="module")
def tables():
    cfg = syn.WorldConfig(n_fields=40, seed=5)
    fields = syn.make_fields(cfg)
    obs = syn.simulate_observations(fields, cfg, indices=("ndvi", "ndre", "ndmi"))
    series = smooth_series(obs, index=("ndvi", "ndre", "ndmi"))
    phen = cy.phenology(series)
    crops = cy.identify_crops(phen, region="north_china_plain")
    est = estimate_yield(series, fields, model=LUEModel(), phenology=phen, crops=crops)
    return {"observations": obs, "series": series, "phenology": phen, "crops": crops,
            "estimates": est}


def _roundtrip(df: pd.DataFrame, tmp_path, name: str) -> pd.DataFrame:
    df = pd.DataFrame(df)
    if "geometry" in df.columns:
        df = df.drop(columns="geometry")
    path = tmp_path / f"{name}.parquet"
    df.to_parquet(path)
    return pd.read_parquet(path)


# column -> dtype check, for every table that has the column
COUNTS = ("n_obs", "n_pixels", "n_pure", "n_valid", "n_scenes")


def _check(name: str, df: pd.DataFrame) -> None:
    for col in df.columns:
        if col == "season":
            assert pdt.is_integer_dtype(df[col]) and not pdt.is_bool_dtype(df[col]), \
                f"{name}.season is {df[col].dtype}, not an integer"
            assert df[col].notna().all(), f"{name}.season has missing values"
        elif col in COUNTS:
            assert pdt.is_integer_dtype(df[col]), f"{name}.{col} is {df[col].dtype}, not an " \
                                                 "integer count"
            assert (df[col].dropna() >= 0).all()
        elif col in ("time", "sos", "pos", "eos", "sos50", "eos50", "harvest_date"):
            assert pdt.is_datetime64_any_dtype(df[col]), f"{name}.{col} is {df[col].dtype}"
        elif col in ("field_id", "flags", "crop", "scene_id"):
            vals = df[col].dropna()
            assert vals.map(type).isin([str]).all(), f"{name}.{col} holds non-strings"


@pytest.mark.parametrize("name", ["observations", "series", "phenology", "crops",
                                  "estimates"])
def test_output_tables_one_type_per_column(tables, tmp_path, name):
    df = tables[name]
    assert len(df)
    _check(name, df)
    _check(name + " (Parquet)", _roundtrip(df, tmp_path, name))


def test_season_and_counts_agree_across_tables(tables):
    ph, est, crops = tables["phenology"], tables["estimates"], tables["crops"]
    assert ph["n_obs"].dtype == np.int64
    assert est["n_obs"].dtype == "Int64"  # nullable: <NA> only when nothing counted
    assert est["season"].dtype == ph["season"].dtype == crops["season"].dtype == np.int64
    # the estimates' count is the phenology's count of the same season
    m = est.merge(ph[["field_id", "season", "n_obs"]], on=["field_id", "season"],
                  suffixes=("", "_ph"))
    assert len(m) == len(est)
    known = m["n_obs"].notna()
    assert known.all()
    assert (m.loc[known, "n_obs"].astype(int) == m.loc[known, "n_obs_ph"]).all()


def test_credit_json_season_is_the_tables_integer(tables):
    est = pd.DataFrame(tables["estimates"]).copy()
    est["farmer_id"] = "A"
    profiles = credit.assess(est, as_of="2025-05-01")
    assert profiles
    for p in profiles:
        d = json.loads(p.to_json())
        for f in d["fields"]:
            assert type(f["season"]) is int
            assert f["n_obs"] is None or type(f["n_obs"]) is int
    seasons = {(f.field_id, f.season) for p in profiles for f in p.fields}
    assert seasons <= set(zip(est["field_id"], est["season"].astype(int)))
