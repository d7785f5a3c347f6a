"""The local servers: RangeServer (Range, HEAD, 416, faults, tokens, GDAL reads), StacApiServer
(rustac process life cycle), FaultProxy and serve_world. Everything on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import numpy as np
import pytest

from conftest import _write_cog
from cropyield.errors import ConfigError
from cropyield.servers import (
    FaultProxy,
    FaultScript,
    RangeServer,
    StacApiServer,
    find_rustac,
    rewrite_hrefs,
    serve_stac,
)

GDAL_ENV = dict(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".tif",
                VSI_CACHE="FALSE", GDAL_HTTP_MAX_RETRY="3", GDAL_HTTP_RETRY_DELAY="0.1",
                CPL_VSIL_CURL_NON_CACHED="/vsicurl/http://127.0.0.1")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(3)
    payload = rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (root / "blob.bin").write_bytes(payload)
    (root / "sub").mkdir()
    (root / "sub" / "x.json").write_text('{"a": 1}')
    from affine import Affine

    arr = (np.arange(256 * 256, dtype=np.uint32) * 7 % 60000 + 1).astype("uint16").reshape(256, 256)
    _write_cog(root / "cog.tif", arr, Affine(10, 0, 700000, 0, -10, 3850000), 32649)
    secret = root.parent / f"{root.name}-secret.txt"
    secret.write_text("do not serve")
    return root, payload, arr


def _get(url, headers=None, method="GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _raw(port, path, headers=""):
    """A raw HTTP/1.1 request (no client-side path normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


# ---------------------------------------------------------------- RangeServer: HTTP semantics


def test_range_single_suffix_open_ended(files):
    root, payload, _ = files
    with RangeServer(root) as srv:
        st, h, body = _get(f"{srv.url}/blob.bin", {"Range": "bytes=1000-1999"})
        assert st == 206 and body == payload[1000:2000]
        assert h["Content-Range"] == f"bytes 1000-1999/{len(payload)}"
        assert h["Content-Length"] == "1000"
        st, h, body = _get(f"{srv.url}/blob.bin", {"Range": "bytes=-300"})
        assert st == 206 and body == payload[-300:]
        st, h, body = _get(f"{srv.url}/blob.bin", {"Range": "bytes=99990-"})
        assert st == 206 and body == payload[99990:]
        # an end past EOF is clipped
        st, h, body = _get(f"{srv.url}/blob.bin", {"Range": "bytes=99000-200000"})
        assert st == 206 and body == payload[99000:] and h["Content-Range"].endswith("/100000")
        st, h, body = _get(f"{srv.url}/blob.bin")
        assert st == 200 and body == payload and h["Accept-Ranges"] == "bytes"
        srv.wait_idle()
        log = srv.requests
        assert [r.status for r in log] == [206, 206, 206, 206, 200]
        assert srv.bytes_sent == 1000 + 300 + 10 + 1000 + len(payload)
        assert srv.n_requests == 5
        srv.reset_log()
        assert srv.n_requests == 0 and srv.bytes_sent == 0


def test_multi_range_multipart(files):
    root, payload, _ = files
    with RangeServer(root) as srv:
        st, h, body = _get(f"{srv.url}/blob.bin", {"Range": "bytes=0-9,500-599,-5"})
        assert st == 206
        assert h["Content-Type"].startswith("multipart/byteranges; boundary=")
        assert int(h["Content-Length"]) == len(body)
        msg = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {h['Content-Type']}\r\n\r\n".encode() + body)
        parts = list(msg.iter_parts())
        assert [p["Content-Range"] for p in parts] == [
            "bytes 0-9/100000", "bytes 500-599/100000", "bytes 99995-99999/100000"]
        assert [p.get_payload(decode=True) for p in parts] == [
            payload[:10], payload[500:600], payload[-5:]]


def test_head_416_404_traversal_and_method(files):
    root, payload, _ = files
    with RangeServer(root) as srv:
        st, h, body = _get(f"{srv.url}/blob.bin", method="HEAD")
        assert st == 200 and body == b"" and h["Content-Length"] == str(len(payload))
        assert h["Accept-Ranges"] == "bytes"
        st, h, _ = _get(f"{srv.url}/blob.bin", {"Range": f"bytes={len(payload)}-"})
        assert st == 416 and h["Content-Range"] == f"bytes */{len(payload)}"
        assert _get(f"{srv.url}/missing.tif")[0] == 404
        assert _get(f"{srv.url}/sub")[0] == 404  # folders are not listed
        assert _get(f"{srv.url}/sub/x.json")[2] == b'{"a": 1}'
        secret = f"{root.name}-secret.txt"
        for path in (f"/../{secret}", f"/%2e%2e/{secret}", f"/sub/../../{secret}"):
            status, body = _raw(srv.port, path)
            assert status == 403 and b"do not serve" not in body
        st, _, _ = _get(f"{srv.url}/blob.bin", method="DELETE")
        assert st == 405
        # a malformed Range is ignored (RFC 9110): whole file
        st, _, body = _get(f"{srv.url}/blob.bin", {"Range": "bytes=abc"})
        assert st == 200 and body == payload


def test_loopback_only_and_bad_root(files, tmp_path):
    root, _, _ = files
    with pytest.raises(ConfigError, match="loopback"):
        RangeServer(root, host="0.0.0.0")
    with pytest.raises(ConfigError, match="not a folder"):
        RangeServer(tmp_path / "nope")
    srv = RangeServer(root)
    with pytest.raises(RuntimeError, match="not running"):
        _ = srv.url
    with srv:
        assert srv.url.startswith("http://127.0.0.1:")
    srv.stop()  # idempotent
    assert not srv.running


# ---------------------------------------------------------------- fault scripts


def test_fault_script_order_and_matching():
    fs = FaultScript({"*/B04.tif": ["503", "429:1"], "SCL.tif": ["reset"],
                      "POST /search": ["500"]})
    assert fs.next("/a/B08.tif") is None
    assert fs.next("/a/B04.tif") == "503"
    assert fs.next("/b/B04.tif") == "429:1"
    assert fs.next("/a/B04.tif") is None
    assert fs.next("/x/y/SCL.tif") == "reset"  # basename pattern
    assert fs.next("/search", "GET") is None     # method-specific
    assert fs.next("/search", "POST") == "500"
    assert fs.exhausted and fs.applied[0] == ("/a/B04.tif", "503")
    with pytest.raises(ConfigError, match="unknown fault action"):
        FaultScript({"*": ["explode"]})


def test_status_faults_then_ok(files):
    root, payload, _ = files
    faults = FaultScript({"/blob.bin": ["503", "500", "429:2", "404", "403"]})
    with RangeServer(root, faults=faults) as srv:
        got = [_get(f"{srv.url}/blob.bin", {"Range": "bytes=0-99"}) for _ in range(6)]
        assert [g[0] for g in got] == [503, 500, 429, 404, 403, 206]
        assert got[2][1]["Retry-After"] == "2"
        assert got[5][2] == payload[:100]
        srv.wait_idle()
        assert [r.action for r in srv.requests] == ["503", "500", "429:2", "404", "403", None]
        assert all(r.bytes_sent > 0 for r in srv.requests)


def test_sleep_truncate_reset_ignore_range_corrupt(files):
    root, payload, _ = files
    faults = {"/blob.bin": ["sleep:0.4", "truncate", "reset", "ignore_range", "corrupt"]}
    with RangeServer(root, faults=faults) as srv:
        t0 = time.monotonic()
        st, _, body = _get(f"{srv.url}/blob.bin", {"Range": "bytes=0-999"})
        assert st == 206 and body == payload[:1000] and time.monotonic() - t0 >= 0.4
        with pytest.raises(http.client.IncompleteRead):
            _get(f"{srv.url}/blob.bin", {"Range": "bytes=0-999"})
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected, urllib.error.URLError)):
            _get(f"{srv.url}/blob.bin", {"Range": "bytes=0-999"})
        st, _, body = _get(f"{srv.url}/blob.bin", {"Range": "bytes=0-999"})
        assert st == 200 and body == payload  # Range ignored: the whole file
        st, _, body = _get(f"{srv.url}/blob.bin", {"Range": "bytes=0-999"})
        assert st == 206 and len(body) == 1000 and body == bytes(b ^ 0xFF for b in payload[:1000])
        srv.wait_idle()
        log = srv.requests
        assert [r.action for r in log] == ["sleep:0.4", "truncate", "reset", "ignore_range",
                                           "corrupt"]
        assert log[1].bytes_sent == 500  # half of what was announced
        assert log[2].status == 0 and log[2].bytes_sent == 0


def test_expiring_token(files):
    root, payload, _ = files
    with RangeServer(root, token_expiry=True) as srv:
        se = (srv.now + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        url = f"{srv.url}/blob.bin?se={se}&sig=abc"
        st, _, body = _get(url, {"Range": "bytes=0-9"})
        assert st == 206 and body == payload[:10]
        assert _get(f"{srv.url}/blob.bin", {"Range": "bytes=0-9"})[0] == 403   # unsigned
        srv.advance(3600)  # the token expires
        assert _get(url, {"Range": "bytes=0-9"})[0] == 403
        srv.set_clock(datetime(2020, 1, 1, tzinfo=timezone.utc))
        assert _get(url, {"Range": "bytes=0-9"})[0] == 206
        srv.wait_idle()
        assert srv.requests[-2].action == "token_expired"
    with RangeServer(root, faults={"*": ["expire_token"]}) as srv:
        assert _get(f"{srv.url}/blob.bin")[0] == 403
        assert _get(f"{srv.url}/blob.bin")[0] == 200


# ---------------------------------------------------------------- GDAL over /vsicurl/


def test_gdal_vsicurl_windowed_read_uses_ranges_only(files):
    import rasterio
    from rasterio.windows import Window

    root, _, arr = files
    with RangeServer(root) as srv, rasterio.Env(**GDAL_ENV):
        with rasterio.open(f"/vsicurl/{srv.url}/cog.tif") as ds:
            a = ds.read(1, window=Window(40, 70, 50, 30))
            assert ds.crs.to_epsg() == 32649
        np.testing.assert_array_equal(a, arr[70:100, 40:90])
        srv.wait_idle()
        gets = [r for r in srv.requests if r.method == "GET"]
        assert gets and all(r.range and r.status == 206 for r in gets)
        assert all(r.method in ("GET", "HEAD") for r in srv.requests)
        size = (root / "cog.tif").stat().st_size
        assert srv.bytes_sent < size  # only part of the file travelled


def test_gdal_retries_scripted_503_then_reads(files):
    import rasterio
    from rasterio.windows import Window

    root, _, arr = files
    with RangeServer(root, faults={"cog.tif": ["ok", "503", "503"]}) as srv, \
            rasterio.Env(**GDAL_ENV):
        with rasterio.open(f"/vsicurl/{srv.url}/cog.tif") as ds:
            a = ds.read(1, window=Window(0, 0, 64, 64))
        np.testing.assert_array_equal(a, arr[:64, :64])
        srv.wait_idle()
        assert [r.status for r in srv.requests].count(503) == 2


def test_gdal_ignore_range_gives_right_values_or_clear_error(files):
    """A server ignoring Range must never give wrong pixels: GDAL either uses the full body
    (small files) or fails with 'Range downloading not supported'."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    root, _, arr = files
    with RangeServer(root, faults={"cog.tif": ["ok", "ignore_range"]}) as srv, \
            rasterio.Env(**GDAL_ENV):
        try:
            with rasterio.open(f"/vsicurl/{srv.url}/cog.tif") as ds:
                a = ds.read(1, window=Window(10, 20, 30, 40))
        except RasterioIOError as exc:
            assert "ange" in str(exc)
        else:
            np.testing.assert_array_equal(a, arr[20:60, 10:40])
        srv.wait_idle()
        assert any(r.action == "ignore_range" and r.status == 200 for r in srv.requests)


# ---------------------------------------------------------------- rustac STAC API


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); check its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_stac_api_server_lifecycle(s2_world_dir):
    col, items = s2_world_dir / "collection.json", s2_world_dir / "items.ndjson"
    with StacApiServer(col, items) as stac:
        pid = stac.pid
        assert _pid_alive(pid)
        root = json.loads(urllib.request.urlopen(stac.url, timeout=5).read())
        assert any(c.endswith("/item-search") for c in root["conformsTo"])
        search = json.loads(urllib.request.urlopen(f"{stac.url}/search?limit=100", timeout=5).read())
        assert len(search["features"]) == 6
    assert stac.pid is None and not _pid_alive(pid)
    stac.stop()  # idempotent

    with pytest.raises(ZeroDivisionError):
        with StacApiServer(col, items) as stac:
            pid = stac.pid
            1 / 0
    assert not _pid_alive(pid)


def test_stac_api_server_errors(s2_world_dir, tmp_path, monkeypatch):
    col, items = s2_world_dir / "collection.json", s2_world_dir / "items.ndjson"
    with pytest.raises(ConfigError, match="does not exist"):
        StacApiServer(col, tmp_path / "missing.ndjson")
    with pytest.raises(ConfigError, match="loopback"):
        StacApiServer(col, items, host="0.0.0.0")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RuntimeError, match="rustac serve exited"):
        StacApiServer(bad, items, startup_timeout=10).start()
    # rustac missing: a clear ImportError naming the extra
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ImportError, match=r"cropyield\[demo\]"):
        find_rustac()


def test_advertised_url_points_links_at_proxy(s2_world_dir):
    col, items = s2_world_dir / "collection.json", s2_world_dir / "items.ndjson"
    with serve_stac(col, items) as (stac, proxy):
        assert stac.url == proxy.url != stac.bind_url
        root = json.loads(urllib.request.urlopen(proxy.url, timeout=5).read())
        assert {ln["href"].split("/")[2] for ln in root["links"]} == {proxy.url.split("/")[2]}
        proxy.faults = FaultScript({"/": ["503"]})
        assert _get(proxy.url + "/")[0] == 503
        assert _get(proxy.url + "/")[0] == 200
        # POST passes through with its body
        req = urllib.request.Request(f"{proxy.url}/search", method="POST",
                                     data=json.dumps({"limit": 2}).encode(),
                                     headers={"Content-Type": "application/json"})
        page = json.loads(urllib.request.urlopen(req, timeout=5).read())
        assert len(page["features"]) == 2
        proxy.faults = FaultScript({"/search": ["repeat_next"]})
        page = json.loads(urllib.request.urlopen(req, timeout=5).read())
        nxt = [ln for ln in page["links"] if ln["rel"] == "next"]
        assert nxt == [{"rel": "next", "href": f"{proxy.url}/search", "method": "POST",
                        "type": "application/geo+json", "body": {"limit": 2}, "merge": False}]
        proxy.wait_idle()
        assert [r.action for r in proxy.requests][-1] == "repeat_next"


def test_proxy_without_upstream_and_dead_upstream():
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    with FaultProxy(None) as px:
        assert _get(px.url + "/")[0] == 502
        px.upstream_url = dead
        assert _get(px.url + "/search")[0] == 502


# ---------------------------------------------------------------- serve_world


def test_serve_world_rewrites_hrefs_and_serves(served_s2_world):
    srv = served_s2_world
    search = json.loads(urllib.request.urlopen(f"{srv.stac_url}/search?limit=100", timeout=5).read())
    hrefs = [a["href"] for f in search["features"] for k, a in f["assets"].items()
             if k != "thumbnail"]
    assert hrefs and all(h.startswith(srv.cog_url + "/") for h in hrefs)
    st, _, body = _get(hrefs[0], {"Range": "bytes=0-3"})
    assert st == 206 and body in (b"II*\x00", b"MM\x00*")
    assert srv.collection_id == "sentinel-2-l2a"


def test_rewrite_hrefs_refuses_outside(tmp_path):
    item = {"assets": {"a": {"href": "x/B04.tif"}, "b": {"href": "https://h/y.tif"},
                       "c": {"href": str(tmp_path / "z.tif")}}}
    out = rewrite_hrefs(item, tmp_path, "http://127.0.0.1:9")
    assert out["assets"]["a"]["href"] == "http://127.0.0.1:9/x/B04.tif"
    assert out["assets"]["b"]["href"] == "https://h/y.tif"
    assert out["assets"]["c"]["href"] == "http://127.0.0.1:9/z.tif"
    assert item["assets"]["a"]["href"] == "x/B04.tif"  # input untouched
    with pytest.raises(ConfigError, match="outside"):
        rewrite_hrefs({"assets": {"a": {"href": "/etc/passwd"}}}, tmp_path, "http://127.0.0.1:9")


def test_rustac_dies_with_a_crashed_parent(s2_world_dir):
    """A test run killed hard must not leave rustac behind (Linux: parent-death signal)."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux-only")
    code = (
        "import os, sys\n"
        "from cropyield.servers import StacApiServer\n"
        f"s = StacApiServer({str(s2_world_dir / 'collection.json')!r}, "
        f"{str(s2_world_dir / 'items.ndjson')!r}).start()\n"
        "print(s.pid, flush=True)\n"
        "os._exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stderr
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 5
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(pid)


def test_serve_world_with_a_world_object(s2_world_dir):
    """Anything with ``root`` and ``write_items(path, href_base)`` (the synthetic World's
    interface) is served with the hrefs it writes."""
    from cropyield.servers import serve_world

    class MiniWorld:
        root = s2_world_dir

        def __init__(self):
            self.calls = []

        def write_items(self, path, href_base):
            self.calls.append(href_base)
            lines = (s2_world_dir / "items.ndjson").read_text().splitlines()
            items = [rewrite_hrefs(json.loads(ln), s2_world_dir, href_base) for ln in lines]
            Path(path).write_text("".join(json.dumps(it) + "\n" for it in items))
            return path

    world = MiniWorld()
    with serve_world(world) as srv:
        assert world.calls == [srv.cog_url]
        page = json.loads(urllib.request.urlopen(f"{srv.stac_url}/search?limit=100",
                                                 timeout=5).read())
        hrefs = [f["assets"]["red"]["href"] for f in page["features"]]
        assert len(hrefs) == 6 and all(h.startswith(srv.cog_url) for h in hrefs)
        assert _get(hrefs[0], {"Range": "bytes=0-1"})[0] == 206
        pid = srv.stac.pid
    assert not _pid_alive(pid) and not srv.cogs.running


def test_short_body_is_well_framed(files):
    root, payload, _ = files
    with RangeServer(root, faults={"blob.bin": ["short"]}) as srv:
        st, h, body = _get(f"{srv.url}/blob.bin", {"Range": "bytes=0-999"})
        assert st == 206 and body == payload[:500] and h["Content-Length"] == "500"


def test_fake_sas_signer_and_expiry(files):
    from cropyield.servers import FakeSasSigner

    root, payload, _ = files
    with RangeServer(root, token_expiry=True) as srv:
        signer = FakeSasSigner(srv, ttl_s=60)
        url = signer(f"{srv.url}/blob.bin")
        assert "sig=fake1" in url and _get(url, {"Range": "bytes=0-9"})[2] == payload[:10]
        srv.advance(120)
        assert _get(url, {"Range": "bytes=0-9"})[0] == 403   # expired
        fresh = signer(f"{srv.url}/blob.bin", refresh=True)
        assert _get(fresh, {"Range": "bytes=0-9"})[0] == 206  # re-signed
        assert len(signer.calls) == 2


def test_fault_tools_live_in_cropyield_testing_and_stay_importable_from_servers():
    import cropyield.servers as servers
    import cropyield.testing as testing

    for name in testing.__all__:
        assert getattr(servers, name) is getattr(testing, name), name
        assert name in servers.__all__
