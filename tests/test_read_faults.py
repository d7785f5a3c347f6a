"""HTTP reads through cropyield.servers.RangeServer (127.0.0.1) with scripted faults.

Every fault ends in correct values after retries, or in a clear error / flagged row: never
zeros, never a silent NaN. Signed query strings never reach errors, attrs or our logs.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta

import numpy as np
import pytest
from rasterio.transform import from_origin
from test_read import X0, Y0, ensure_indices, make_scene, ramp, write_cog

from cropyield.errors import AssetReadError, AuthExpiredError, CorruptAssetError
from cropyield.servers import RangeServer

ensure_indices()

ROWS = np.array([10, 300, 590, 12])
COLS = np.array([10, 300, 590, 500])
FAST = {"GDAL_HTTP_RETRY_DELAY": 0.05, "GDAL_HTTP_TIMEOUT": 1, "GDAL_HTTP_CONNECTTIMEOUT": 1}


@pytest.fixture()
def cog(tmp_path):
    arr = ramp((600, 600), 4)
    write_cog(tmp_path / "b.tif", arr, from_origin(X0, Y0, 10, 10))
    return tmp_path, arr


def _read(url, env=None, **kw):
    from cropyield.read import BlockReader

    with BlockReader(threads=2, backoff=0.05, env={**FAST, **(env or {})}, **kw) as rd:
        vals = rd.read(url, ROWS, COLS)
        return vals, rd.stats


def _actions(srv):
    srv.wait_idle()
    return [(r.status, r.action) for r in srv.requests]


def test_plain_http_read_counts_requests_and_bytes(cog):
    root, arr = cog
    with RangeServer(root) as srv:
        vals, st = _read(srv.url_for("b.tif"))
        srv.wait_idle()
        get_bytes = sum(r.bytes_sent for r in srv.requests if r.method == "GET")
        n_get = sum(r.method == "GET" for r in srv.requests)
    np.testing.assert_array_equal(vals, arr[ROWS, COLS])
    assert st.blocks_read == 4 and st.runs == 3          # (0,0),(0,1) merged; (1,1); (2,2)
    # the server sent at least the tile bytes we account for, rounded up to GDAL chunks
    tile_bytes = st.bytes_read - st.opens * 16384
    assert tile_bytes <= get_bytes <= st.bytes_read + 16384 * (st.runs + st.opens)
    assert n_get <= st.requests + st.opens


def test_retry_after_503_does_not_replay_gdal_negative_cache(cog):
    """Plain rasterio replays a cached 503; our retry clears the cache and reaches the server."""
    import rasterio

    root, arr = cog
    with RangeServer(root, faults={"b.tif": ["503"]}) as srv:
        # a URL no earlier test can have left in GDAL's process-wide cache (ports get reused)
        url = srv.url_for("b.tif") + "?probe=" + uuid.uuid4().hex
        with rasterio.Env(GDAL_HTTP_MAX_RETRY=0, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            for _ in range(2):
                with pytest.raises(rasterio.errors.RasterioIOError, match="503"):
                    rasterio.open("/vsicurl/" + url)
        srv.wait_idle()
        assert len(srv.requests) == 1                   # the second failure came from cache
    with RangeServer(root, faults={"b.tif": ["503", "503"]}) as srv:
        vals, st = _read(srv.url_for("b.tif"), env={"GDAL_HTTP_MAX_RETRY": 0})
        acts = _actions(srv)
    np.testing.assert_array_equal(vals, arr[ROWS, COLS])
    assert st.retries >= 1
    assert [a for a in acts if a[1] == "503"] == [(503, "503")] * 2
    assert all(s in (200, 206) for s, _ in acts[2:])   # later tries reached the server


@pytest.mark.parametrize("n", [1, 6])
def test_n_503_then_ok(cog, n):
    """GDAL retries twice itself (GDAL_HTTP_MAX_RETRY=2); beyond that our retries take over."""
    root, arr = cog
    with RangeServer(root, faults={"b.tif": ["ok"] + ["503"] * n}) as srv:
        vals, st = _read(srv.url_for("b.tif"), max_attempts=4)
        acts = _actions(srv)
    np.testing.assert_array_equal(vals, arr[ROWS, COLS])
    assert acts.count((503, "503")) == n
    assert st.retries == (0 if n <= 2 else (n - 1) // 3)


def test_503_forever_raises_asset_read_error_with_attempts(cog):
    root, _ = cog
    with RangeServer(root, faults={"b.tif": ["503"] * 60}) as srv:
        with pytest.raises(AssetReadError) as ei:
            _read(srv.url_for("b.tif"), max_attempts=2)
    assert ei.value.attempts == 2 and ei.value.reason == "transient"
    assert "503" in str(ei.value) and "retry later" in str(ei.value)


def test_429_with_retry_after(cog):
    root, arr = cog
    with RangeServer(root, faults={"b.tif": ["ok", "429:1", "429:1", "429:1"]}) as srv:
        t0 = time.perf_counter()
        vals, st = _read(srv.url_for("b.tif"), max_attempts=3)
        took = time.perf_counter() - t0
        acts = _actions(srv)
    np.testing.assert_array_equal(vals, arr[ROWS, COLS])
    assert acts.count((429, "429:1")) == 3
    assert took < 20


def test_stall_longer_than_timeout_is_retried(cog):
    root, arr = cog
    with RangeServer(root, faults={"b.tif": ["ok", "sleep:3"]}) as srv:
        t0 = time.perf_counter()
        vals, _ = _read(srv.url_for("b.tif"))
        took = time.perf_counter() - t0
        srv.wait_idle(5)
    np.testing.assert_array_equal(vals, arr[ROWS, COLS])
    assert took < 3.0                                   # did not wait for the stalled answer


def test_stall_on_every_request_is_an_asset_read_error(cog):
    root, _ = cog
    with RangeServer(root, faults={"b.tif": ["sleep:1.5"] * 8}) as srv:
        with pytest.raises(AssetReadError) as ei:
            _read(srv.url_for("b.tif"), env={"GDAL_HTTP_MAX_RETRY": 0}, max_attempts=2)
        srv.wait_idle(10)
    assert "timed out" in str(ei.value).lower() or "timeout" in str(ei.value).lower()


@pytest.mark.parametrize("action", ["truncate", "reset", "corrupt", "ignore_range"])
def test_damaged_responses_give_correct_values_after_retry(cog, action):
    root, arr = cog
    with RangeServer(root, faults={"b.tif": ["ok", "ok", action]}) as srv:
        vals, st = _read(srv.url_for("b.tif"))
        acts = _actions(srv)
    assert any(a == action for _, a in acts)
    np.testing.assert_array_equal(vals, arr[ROWS, COLS])


def test_persistent_truncation_is_an_error_never_zeros(cog):
    root, _ = cog
    with RangeServer(root, faults={"b.tif": ["ok"] + ["truncate"] * 200}) as srv:
        with pytest.raises(AssetReadError) as ei:
            _read(srv.url_for("b.tif"), env={"GDAL_HTTP_MAX_RETRY": 0}, max_attempts=2)
    assert ei.value.attempts == 2


def test_persistently_corrupt_body_is_corrupt_or_read_error(cog):
    root, _ = cog
    with RangeServer(root, faults={"b.tif": ["ok"] + ["corrupt"] * 200}) as srv:
        with pytest.raises(AssetReadError):
            _read(srv.url_for("b.tif"), max_attempts=2)


# ---------------------------------------------------------------------------------------------
# through field_observations


def _scene(root, base, sid="S1", when="2024-06-01T03:00"):
    b04 = ramp((64, 64), 1, 1300, 2500)
    b08 = ramp((64, 64), 2, 3000, 6000)
    scl = np.full((32, 32), 4, np.uint8)
    return make_scene(root, sid, when=when, href_base=base, blocksize=256,
                      bands={"B04": (b04, 10), "B08": (b08, 10), "SCL": (scl, 20)})


def _fields():
    import geopandas as gpd
    import shapely

    geoms = [shapely.box(X0 + 50, Y0 - 200, X0 + 150, Y0 - 100),
             shapely.box(X0 + 300, Y0 - 500, X0 + 420, Y0 - 380)]
    return gpd.GeoDataFrame({"field_id": ["a", "b"]}, geometry=geoms, crs="EPSG:32650")


def test_404_raises_or_flags_read_failed(tmp_path, caplog):
    from cropyield.observations import field_observations

    with RangeServer(tmp_path) as srv:
        good = _scene(tmp_path, srv.url, "S1", "2024-06-01T03:00")
        bad = _scene(tmp_path, srv.url, "S2", "2024-06-06T03:00")
        (tmp_path / "S2" / "B08.tif").unlink()
        with pytest.raises(AssetReadError) as ei:
            field_observations([good, bad], _fields(), env=FAST)
        assert "404" in str(ei.value) and not isinstance(ei.value, CorruptAssetError)
        df = field_observations([good, bad], _fields(), on_error="flag", env=FAST)
    s2 = df[df.scene_id == "S2"]
    assert len(df) == 4 and len(s2) == 2
    assert s2["flags"].eq("READ_FAILED").all() and s2["ndvi"].isna().all()
    assert df[df.scene_id == "S1"]["ndvi"].notna().all()
    (fail,) = df.attrs["read_failures"]
    assert fail["scene_id"] == "S2" and fail["band"] == "B08"
    assert fail["error"] == "AssetReadError" and fail["href"].endswith("S2/B08.tif")


def _signer(srv, first, later):
    """A fake SAS signer: the first token of each href is valid ``first`` seconds, then ``later``."""
    calls = []

    def sign(href):
        n = sum(h == href for h in calls)
        se = (srv.now + timedelta(seconds=first if n == 0 else later)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        calls.append(href)
        return f"{href}?se={se}&sp=r&sig=TOPSECRET{len(calls)}"

    return sign, calls


def test_403_after_token_expiry_resigns_once_then_succeeds(tmp_path, caplog):
    from cropyield.observations import field_observations

    caplog.set_level(logging.DEBUG, logger="cropyield")
    with RangeServer(tmp_path, token_expiry=True) as srv:
        sc = _scene(tmp_path, srv.url)
        # first token already expired (as microsoft/PlanetaryComputer#463), then valid ones
        sign, calls = _signer(srv, -60, 3600)
        df = field_observations([sc], _fields(), signer=sign, env=FAST)
        acts = _actions(srv)
    assert df["ndvi"].notna().all() and df["flags"].eq("").all()
    assert len(calls) == 6                       # 3 hrefs signed, then re-signed once each
    assert any(a == "token_expired" for _, a in acts)
    text = caplog.text + repr(df.attrs)
    assert "TOPSECRET" not in text                # rasterio's GDAL-error log lines included


def test_403_persisting_after_resign_is_auth_expired(tmp_path, caplog):
    from cropyield.observations import field_observations

    caplog.set_level(logging.DEBUG, logger="cropyield")
    with RangeServer(tmp_path, token_expiry=True) as srv:
        sc = _scene(tmp_path, srv.url)
        sign, calls = _signer(srv, -60, -60)
        with pytest.raises(AuthExpiredError) as ei:
            field_observations([sc], _fields(), signer=sign, env=FAST)
        df = field_observations([sc], _fields(), signer=sign, env=FAST, on_error="flag")
    msg = str(ei.value)
    assert "403" in msg and "TOPSECRET" not in msg
    assert ei.value.reason == "auth_expired"
    assert df["flags"].eq("AUTH_EXPIRED").all() and df["ndvi"].isna().all()
    assert df.attrs["read_failures"][0]["error"] == "AuthExpiredError"
    assert "TOPSECRET" not in caplog.text + repr(df.attrs)


def test_http_and_local_reads_agree(tmp_path):
    from cropyield.observations import field_observations

    with RangeServer(tmp_path) as srv:
        remote = _scene(tmp_path, srv.url)
        local = _scene(tmp_path, None)
        a = field_observations([remote], _fields(), env=FAST)
        b = field_observations([local], _fields())
    np.testing.assert_array_equal(a["ndvi"].to_numpy(), b["ndvi"].to_numpy())
    assert a.attrs["blocks_read"] == b.attrs["blocks_read"] == 3


def test_run_of_large_tiles_is_fetched_exactly_once(tmp_path):
    """Regression: a run of eight 1024-px tiles (> GDAL's default 10 MB raw block cache) used
    to end with GDAL's read-ahead fetching ~2 MB of the next block row."""
    import rasterio

    rng = np.random.default_rng(0)
    arr = rng.integers(1, 65535, (2048, 8192), dtype=np.uint16)   # incompressible: ~2 MB tiles
    write_cog(tmp_path / "big.tif", arr, from_origin(X0, Y0, 10, 10), blocksize=1024)
    with rasterio.open(tmp_path / "big.tif") as src:
        tile_bytes = sum(src.block_size(1, 0, j) for j in range(8))
    rows = np.full(8, 5)
    cols = np.arange(8) * 1024 + 7                                   # one pixel per tile, row 0
    from cropyield.read import BlockReader

    with RangeServer(tmp_path) as srv:
        with BlockReader(threads=1, backoff=0.05, env=FAST) as rd:
            vals = rd.read(srv.url_for("big.tif"), rows, cols)
        srv.wait_idle()
        sent = sum(r.bytes_sent for r in srv.requests if r.method == "GET")
    np.testing.assert_array_equal(vals, arr[rows, cols])
    assert tile_bytes > 10 * 2**20
    assert sent <= tile_bytes + 256 * 1024     # the tiles + the header reads, nothing more


def test_vsi_cache_is_on_for_remote_opens_and_off_for_local_ones(cog, monkeypatch):
    """VSI_CACHE (read by GDAL at open) helps remote reads but only adds a copy layer to
    local ones: the reader opens local files without it unless it is configured."""
    import threading

    import rasterio
    from rasterio._env import get_gdal_config

    from cropyield.read import BlockReader

    root, arr = cog
    seen = []
    real = rasterio.open

    def spy(path, *a, **kw):
        seen.append((str(path).startswith("/vsicurl/"), str(get_gdal_config("VSI_CACHE")),
                     threading.current_thread().name))
        return real(path, *a, **kw)

    monkeypatch.setattr(rasterio, "open", spy)
    local = str(root / "b.tif")
    with RangeServer(root) as srv:
        with BlockReader(threads=1, env=FAST) as rd:
            for href in (local, srv.url_for("b.tif"), local):
                np.testing.assert_array_equal(rd.read(href, ROWS, COLS), arr[ROWS, COLS])
                rd.release(href)
        assert [s[:2] for s in seen] == [(False, "FALSE"), (True, "TRUE"), (False, "FALSE")]
        assert all(s[2].startswith("cropyield-read") for s in seen)
        seen.clear()
        with BlockReader(threads=1, env={**FAST, "VSI_CACHE": "TRUE"}) as rd:
            rd.read(local, ROWS, COLS)
        assert [s[:2] for s in seen] == [(False, "TRUE")]


def test_stalled_server_costs_the_read_deadline_then_rows_are_flagged(tmp_path):
    """Issue 18: a COG server that stalls every request would cost max_attempts x the GDAL
    timeouts per block run (~20 minutes per scene at the defaults); the total read
    deadline ends it, and the scene's rows come out flagged READ_FAILED (reason in attrs)."""
    from cropyield.observations import field_observations

    env = {**FAST, "GDAL_HTTP_MAX_RETRY": 0}
    with RangeServer(tmp_path, faults={"*/S2/B08.tif": ["sleep:1.5"] * 10_000}) as srv:
        good = _scene(tmp_path, srv.url, "S1", "2024-06-01T03:00")
        bad = _scene(tmp_path, srv.url, "S2", "2024-06-06T03:00")
        field_observations([good], _fields(), env=env)           # compile the kernels first
        df = field_observations([good, bad], _fields(), on_error="flag", env=env,
                                max_attempts=10_000, read_deadline=4)
        with pytest.raises(AssetReadError) as ei:
            field_observations([bad], _fields(), env=env, max_attempts=10_000,
                               read_deadline=2)
        srv.wait_idle(10)
    assert ei.value.reason == "deadline" and "deadline" in str(ei.value)
    assert len(df) == 4                                   # every field and date
    s2 = df[df.scene_id == "S2"]
    assert s2["flags"].eq("READ_FAILED").all() and s2["ndvi"].isna().all()
    reasons = {(f["scene_id"], f["reason"]) for f in df.attrs["read_failures"]}
    assert ("S2", "deadline") in reasons
    s1 = df[df.scene_id == "S1"]
    assert (s1["ndvi"].notna() | s1["flags"].eq("READ_FAILED")).all()


def test_read_deadline_must_be_positive(tmp_path):
    from cropyield.errors import ConfigError
    from cropyield.observations import field_observations

    sc = _scene(tmp_path, None)
    for bad in (0, -1, "soon"):
        with pytest.raises(ConfigError, match="read_deadline"):
            field_observations([sc], _fields(), read_deadline=bad)


# ---------------------------------------------------------------------------------------------
# the read deadline is strict (issue 18): requests in flight do not outlast it


def _reader_threads():
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("cropyield-read")]


def test_read_deadline_holds_against_a_stall_longer_than_the_gdal_timeouts(tmp_path):
    """A server that stalls 60 s on every request of one band: at the default GDAL timeouts
    (30 s per request, 2 GDAL retries) a request in flight used to run ~90 s past a 3 s
    deadline. Now handles opened near the deadline get timeouts cut to the time left, the
    call returns by the deadline (+ slack), the stalled scene's rows are flagged, and no
    reader thread outlives the call by more than that (none would hold interpreter exit)."""
    from cropyield.observations import field_observations

    with RangeServer(tmp_path, faults={"*/S2/B08.tif": ["sleep:60"] * 50}) as srv:
        good = _scene(tmp_path, srv.url, "S1", "2024-06-01T03:00")
        bad = _scene(tmp_path, srv.url, "S2", "2024-06-06T03:00")
        field_observations([good], _fields())                # compile the kernels first
        t0 = time.monotonic()
        df = field_observations([good, bad], _fields(), on_error="flag", read_deadline=3)
        took = time.monotonic() - t0
        for t in _reader_threads():
            t.join(10)
        alive = _reader_threads()
    # (the server's stop ended its stalled requests)
    assert took < 3 + 10, f"field_observations took {took:.1f} s with read_deadline=3"
    assert not alive, f"reader threads still running: {alive}"
    assert len(df) == 4
    s2 = df[df.scene_id == "S2"]
    assert s2["flags"].eq("READ_FAILED").all() and s2["ndvi"].isna().all()
    assert ("S2", "deadline") in {(f["scene_id"], f["reason"])
                                  for f in df.attrs["read_failures"]}
    assert df[df.scene_id == "S1"]["ndvi"].notna().all()


def test_reads_in_flight_at_the_deadline_are_abandoned_and_their_values_dropped(
        cog, monkeypatch):
    """The safety net when a GDAL request outlasts even its cut timeout (here: timeouts not
    cut at all): read_windows stops waiting 1 s (DEADLINE_SLACK) after the deadline and
    raises reason="deadline"; the block that arrives later is never handed to ``consume``,
    close() does not wait for it, and the abandoned thread ends when its request does."""
    from cropyield.read import BlockReader

    root, arr = cog
    monkeypatch.setattr(BlockReader, "_capped_options",
                        lambda self, left: ({}, self._request_budget()), raising=False)
    calls = []
    # HEAD + header GET answered; the first block request is answered after 6 s
    with RangeServer(root, faults={"b.tif": ["ok", "ok", "sleep:6"]}) as srv:
        url = srv.url_for("b.tif")
        env = {"GDAL_HTTP_TIMEOUT": 30, "GDAL_HTTP_MAX_RETRY": 0}
        t0 = time.monotonic()
        rd = BlockReader(threads=1, env=env, deadline=2)
        with rd:
            rd.meta(url)
            with pytest.raises(AssetReadError) as ei:
                rd.read_windows([url], np.array([2]), np.array([2]), np.array([2]),
                                lambda k, r0, c0, win: calls.append(k))
        took = time.monotonic() - t0
        for t in _reader_threads():
            t.join(15)                   # the stalled answer comes at ~6 s
        alive = _reader_threads()
        srv.wait_idle(5)
        served = [(r.action, r.status) for r in srv.requests]
    assert ei.value.reason == "deadline" and "abandoned" in str(ei.value)
    assert took < 2 + 1 + 10                   # deadline + DEADLINE_SLACK + generous
    assert ("sleep:6", 206) in served          # the late block was delivered ...
    assert calls == []                         # ... and never consumed
    assert not alive
    assert rd.stats.failures and rd.stats.failures[0]["reason"] == "deadline"


def test_load_cube_read_deadline_holds_against_a_stalled_server(tmp_path):
    """load_cube had no deadline: a COG server stalling every request cost ~90 s per band
    read at the default GDAL timeouts (more with retries). read_deadline ends it."""
    from cropyield.errors import ConfigError
    from cropyield.read import load_cube

    with RangeServer(tmp_path, faults={"*/S1/B08.tif": ["sleep:60"] * 50}) as srv:
        sc = _scene(tmp_path, srv.url, "S1", "2024-06-01T03:00")
        aoi = _fields().to_crs(4326)
        t0 = time.monotonic()
        with pytest.raises(AssetReadError) as ei:
            load_cube([sc], aoi, bands=["B04", "B08"], read_deadline=3)
        took = time.monotonic() - t0
        for t in _reader_threads():
            t.join(10)
        alive = _reader_threads()
    assert ei.value.reason == "deadline"
    assert took < 3 + 10, f"load_cube took {took:.1f} s with read_deadline=3"
    assert not alive
    with pytest.raises(ConfigError, match="read_deadline"):
        load_cube([sc], aoi, bands=["B04"], read_deadline=0)
