"""Data loss and leftovers (issue 18): PipelineResult.write killed mid-way never leaves a
truncated file at a final path and writes its manifest last; interrupted world builds'
``.building-*`` folders are cleaned up."""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pandas as pd
import pytest

from cropyield import demo
from cropyield._io import _pid_alive, atomic_write, clean_stale_dirs
from cropyield.catalogs import Scenes
from cropyield.pipeline import PipelineResult


def _result(seed: int) -> PipelineResult:
    rng = np.random.default_rng(seed)
    n = 2000
    obs = pd.DataFrame({"field_id": [f"f{i % 50}" for i in range(n)],
                        "scene_id": [f"S2B_49SGU_2024{i % 12 + 1:02d}01_0_L2A" for i in range(n)],
                        "ndvi_mean": rng.uniform(0.1, 0.9, n), "flags": ""})
    series = pd.DataFrame({"field_id": [f"f{i % 50}" for i in range(n)],
                           "time": pd.date_range("2024-01-01", periods=n, freq="h"),
                           "ndvi": rng.uniform(0.1, 0.9, n)})
    small = pd.DataFrame({"field_id": ["f0", "f1"], "season": [1, 1], "value": [seed, seed]})
    return PipelineResult(scenes=Scenes([]), observations=obs, series=series, phenology=small,
                          crops=small, estimates=small, profiles=[])


def test_write_has_a_manifest_that_matches_the_files(tmp_path):
    paths = _result(1).write(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert paths["manifest"] == tmp_path / "manifest.json"
    assert set(manifest["files"]) == {"observations", "series", "phenology", "crops",
                                      "estimates", "scenes", "credit_profiles"}
    for entry in manifest["files"].values():
        data = (tmp_path / entry["path"]).read_bytes()
        assert len(data) == entry["bytes"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_write_killed_mid_way_leaves_no_truncated_file(tmp_path, monkeypatch):
    old = _result(1)
    old.write(tmp_path)
    real = pd.DataFrame.to_parquet

    def dying_to_parquet(self, path, *a, **kw):
        if "ndvi" in self.columns and "time" in self.columns:  # the series table
            real(self, path, *a, **kw)
            data = open(path, "rb").read()
            with open(path, "wb") as fh:  # half a file, then the process "dies"
                fh.write(data[: len(data) // 2])
            raise KeyboardInterrupt("killed while writing series")
        return real(self, path, *a, **kw)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dying_to_parquet)
    with pytest.raises(KeyboardInterrupt):
        _result(2).write(tmp_path)
    monkeypatch.undo()
    # the final path still holds the complete older file, readable
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "series.parquet"), old.series)
    # no manifest: the folder mixes two runs (observations is new, the rest old)
    assert not (tmp_path / "manifest.json").exists()
    assert pd.read_parquet(tmp_path / "observations.parquet")["ndvi_mean"].iloc[0] == \
        _result(2).observations["ndvi_mean"].iloc[0]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # a complete rewrite restores a consistent folder with a manifest
    _result(2).write(tmp_path)
    assert (tmp_path / "manifest.json").exists()


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(p, "w", encoding="utf-8") as fh:
        fh.write("new but incomplete")
        raise RuntimeError("boom")
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]


def _dead_pid() -> int:
    pid = 4_000_000
    while _pid_alive(pid):
        pid += 1
    return pid


def test_stale_building_folders_are_cleaned(tmp_path, monkeypatch):
    monkeypatch.setenv("CROPYIELD_CACHE_DIR", str(tmp_path))
    worlds = tmp_path / "worlds"
    worlds.mkdir()
    dead = worlds / f".building-{_dead_pid()}-abc123"   # its process died (kill -9)
    old = worlds / ".building-q1w2e3"                    # older naming, two days old
    live = worlds / f".building-{os.getpid()}-zz9"       # a build in progress right now
    for d in (dead, old, live):
        (d / "tiles").mkdir(parents=True)
        (d / "tiles" / "B04.tif").write_bytes(b"x" * 100)
    two_days = time.time() - 2 * 86400
    os.utime(old, (two_days, two_days))

    class Config:
        def key(self):
            return "cfg-1"

    def fake_make_world(root, config, progress=None):
        (root / "world.json").write_text("{}")

    monkeypatch.setattr("cropyield.synthetic.make_world", fake_make_world)
    monkeypatch.setattr("cropyield.synthetic.World.open", staticmethod(lambda root: root))
    root = demo.demo_world(Config())
    assert root == worlds / "cfg-1" and (root / "world.json").is_file()
    assert not dead.exists() and not old.exists()
    assert live.exists()  # a live build is never touched
    assert not [d for d in worlds.iterdir() if d.name.startswith(".building-") and d != live]
    # the helper itself: nothing stale left, the live folder kept
    assert clean_stale_dirs(worlds, ".building-") == [] and live.exists()


def test_parquet_files_carry_no_oversized_attrs(tmp_path):
    """pandas writes DataFrame.attrs into every Parquet file; large entries (per-scene lists)
    stay out of the files, small ones (the smoothing λ) are kept (issue 20)."""
    import pyarrow.parquet as pq

    from cropyield._io import MAX_ATTR_BYTES, with_small_attrs

    df = pd.DataFrame({"field_id": ["a", "b"], "ndvi": [0.5, 0.6]})
    df.attrs = {"lam": 200.0, "scenes": [f"S2A_49SGU_2024{i:04d}" for i in range(5000)]}
    slim = with_small_attrs(df)
    assert slim.attrs == {"lam": 200.0} and "scenes" in df.attrs   # the input is untouched
    slim.to_parquet(tmp_path / "t.parquet")
    meta = pq.read_schema(tmp_path / "t.parquet").metadata
    assert sum(len(v) for v in meta.values()) < 4 * MAX_ATTR_BYTES
