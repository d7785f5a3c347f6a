"""search_scenes and normalize_item against hostile catalogs (issue 18): a scripted STAC API
on 127.0.0.1 whose pages are empty-with-next, id-less, trickled a byte per second or
malformed, and crafted items with bad projection, datetime or cloud metadata. Each case ends
in the right scenes or a clear CatalogError naming the problem -- never lost items or a hang."""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cropyield.catalogs import Scenes, normalize_item, search_scenes
from cropyield.errors import CatalogError

BBOX = (113.0, 34.0, 115.0, 35.5)
PERIOD = ("2021-01-01", "2024-12-31")


class ScriptedStac:
    """A minimal STAC API: ``pages`` is a list of feature lists served as /search?page=i with
    ``next`` links between them (POST for the first page, GET for the rest); with
    ``trickle_s`` every /search body is sent one byte per ``trickle_s`` seconds, and the
    connection is dropped after ``trickle_max_s`` (so that a client without a total deadline
    fails in bounded time instead of hanging the test run). ``stall="headers"`` makes every
    /search request wait ``stall_s`` seconds before answering anything; ``stall="body"``
    sends the headers and half the body, then waits ``stall_s`` seconds and closes; a stall
    ends early when the server stops."""

    def __init__(self, pages, *, trickle_s: float | None = None, trickle_bytes: int = 40,
                 trickle_max_s: float = 8.0, stall: str | None = None, stall_s: float = 60.0):
        self.trickle_max_s = trickle_max_s
        self.stall, self.stall_s = stall, stall_s
        self.pages = pages
        self.trickle_s = trickle_s
        self.trickle_bytes = trickle_bytes
        self.requests: list[str] = []
        self._stop = threading.Event()
        owner = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                owner._handle(self)

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                owner._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def _landing(self):
        return {
            "type": "Catalog", "id": "scripted", "description": "scripted", "stac_version": "1.0.0",
            "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                           "https://api.stacspec.org/v1.0.0/item-search"],
            "links": [{"rel": "self", "href": self.url + "/"},
                      {"rel": "root", "href": self.url + "/"},
                      {"rel": "search", "href": self.url + "/search", "method": "POST",
                       "type": "application/geo+json"},
                      {"rel": "search", "href": self.url + "/search", "method": "GET",
                       "type": "application/geo+json"}],
        }

    def _page(self, i):
        page = {"type": "FeatureCollection", "features": self.pages[i], "links": []}
        if i + 1 < len(self.pages):
            page["links"].append({"rel": "next", "href": f"{self.url}/search?page={i + 1}",
                                  "method": "GET", "type": "application/geo+json"})
        return page

    def _handle(self, h):
        self.requests.append(f"{h.command} {h.path}")
        path, _, query = h.path.partition("?")
        if path == "/search":
            i = int(query.split("page=")[1]) if "page=" in query else 0
            body = json.dumps(self._page(i)).encode()
        elif path in ("/", ""):
            body = json.dumps(self._landing()).encode()
        else:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if path == "/search" and self.stall == "headers":
            self._stop.wait(self.stall_s)
            h.close_connection = True
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if path == "/search" and self.stall == "body":
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            try:
                h.wfile.write(body[:len(body) // 2])
                h.wfile.flush()
            except OSError:
                return
            self._stop.wait(self.stall_s)
            h.close_connection = True
            return
        if path == "/search" and self.trickle_s:
            body = body + b" " * self.trickle_bytes  # a valid body, just very slow
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            t_end = time.monotonic() + self.trickle_max_s
            try:
                for k in range(len(body)):
                    if self._stop.is_set() or time.monotonic() > t_end:
                        h.close_connection = True
                        return
                    h.wfile.write(body[k:k + 1])
                    h.wfile.flush()
                    time.sleep(self.trickle_s)
            except OSError:
                return
            return
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


@pytest.fixture(scope="module")
def items(s2_world_dir):
    lines = (s2_world_dir / "items.ndjson").read_text().splitlines()
    return [json.loads(ln) for ln in lines if ln.strip()]


def _search(url, **kw):
    kw.setdefault("timeout", 5)
    kw.setdefault("backoff_factor", 0.05)
    kw.setdefault("retries", 1)
    return search_scenes(BBOX, *PERIOD, catalog=url, dedupe=False, **kw)


# ---------------------------------------------------------------------- paging


def test_empty_page_with_next_link_is_followed(items):
    pages = [items[:2], [], [], items[2:]]
    with ScriptedStac(pages) as srv:
        scenes = _search(srv.url)
    assert sorted(s.id for s in scenes) == sorted(it["id"] for it in items)
    assert sum(r.startswith(("GET /search", "POST /search")) for r in srv.requests) == 4


def test_first_page_empty_with_next_link_is_followed(items):
    with ScriptedStac([[], items]) as srv:
        scenes = _search(srv.url)
    assert len(scenes) == len(items)


def test_endless_empty_pages_are_bounded(items):
    with ScriptedStac([[]] * 30 + [items]) as srv:
        with pytest.raises(CatalogError, match="more than 10 result pages"):
            _search(srv.url, max_pages=10)


def test_items_without_id_do_not_collapse(items):
    a, b = copy.deepcopy(items[0]), copy.deepcopy(items[1])
    del a["id"]
    del b["id"]
    with ScriptedStac([[a, b]]) as srv:
        with pytest.raises(CatalogError, match=r"no usable 'id'"):
            _search(srv.url)


def test_feature_that_is_not_an_object(items):
    with ScriptedStac([[items[0], "oops", 3]]) as srv:
        with pytest.raises(CatalogError, match=r"feature 1 of page 1 is a str"):
            _search(srv.url)


# ---------------------------------------------------------------------- deadline


def test_trickling_server_hits_the_total_deadline(items):
    """1 byte/s never trips the 5 s per-read timeout; the 2 s deadline ends the search."""
    with ScriptedStac([items[:1]], trickle_s=1.0) as srv:
        with pytest.raises(CatalogError, match=r"deadline of 2 s.*Raise deadline="):
            _search(srv.url, deadline=2)


@pytest.mark.parametrize("stall", ["headers", "body"])
def test_deadline_holds_against_a_stalled_server(stall):
    """A server that never answers /search (or stops in mid-body) for 60 s, with the default
    timeout (30 s per socket read) and retries (5): each urllib3 retry used to wait a full
    read timeout again (~33 s for a 3 s deadline). The search now ends by the deadline (+
    slack), and the abandoned request thread ends once the server goes away."""
    import threading

    with ScriptedStac([[]], stall=stall, stall_s=60) as srv:
        t0 = time.monotonic()
        with pytest.raises(CatalogError, match=r"deadline of 3 s"):
            search_scenes(BBOX, *PERIOD, catalog=srv.url, dedupe=False, deadline=3)
        took = time.monotonic() - t0
    for t in threading.enumerate():
        if t.name.startswith("cropyield-stac"):
            t.join(10)
    assert took < 3 + 10, f"search_scenes took {took:.1f} s with deadline=3"
    assert not [t for t in threading.enumerate() if t.name.startswith("cropyield-stac")]


def test_deadline_must_be_positive(items):
    with pytest.raises(Exception, match="deadline"):
        _search("http://127.0.0.1:9", deadline=0)


# ---------------------------------------------------------------------- crafted items


@pytest.fixture
def item(items):
    it = copy.deepcopy(items[0])
    for a in it["assets"].values():  # absolute URLs: nothing is read from disk
        if not a["href"].startswith("http"):
            a["href"] = "https://example.test/" + a["href"]
    return it


def test_epsg_as_string_code_is_accepted(item):
    item["properties"]["proj:epsg"] = "EPSG:32649"
    scene = normalize_item(item)
    assert scene.crs.to_epsg() == 32649
    item["properties"]["proj:epsg"] = 32649.0
    assert normalize_item(item).crs.to_epsg() == 32649


@pytest.mark.parametrize("epsg", ["abc", 4326.5, 99999, [32650], True])
def test_bad_epsg_is_a_catalog_error_naming_the_item(item, epsg):
    item["properties"]["proj:epsg"] = epsg
    with pytest.raises(CatalogError, match=rf"{item['id']}.*proj:epsg.*fix the item"):
        normalize_item(item)


def test_unknown_proj_code_is_a_catalog_error(item):
    item["properties"]["proj:code"] = "EPSG:1"
    with pytest.raises(CatalogError, match=rf"{item['id']}.*proj:code"):
        normalize_item(item)


@pytest.mark.parametrize("when", ["yesterday", "2024-13-45T00:00:00Z", 20240501, ["2024"]])
def test_unparseable_datetime_is_a_catalog_error(item, when):
    item["properties"]["datetime"] = when
    with pytest.raises(CatalogError, match=rf"{item['id']}.*datetime.*RFC 3339"):
        normalize_item(item)


@pytest.mark.parametrize("transform", [["a", 0, 1, 0, -10, 2], "10,0,0,0,-10,0", [10, 0]])
def test_non_numeric_transform_is_a_catalog_error(item, transform):
    item["assets"]["red"]["proj:transform"] = transform
    with pytest.raises(CatalogError, match=rf"{item['id']}.*B04 proj:transform"):
        normalize_item(item)


@pytest.mark.parametrize("cloud", ["cloudy", [3], float("nan"), 250])
def test_bad_cloud_cover_is_a_catalog_error(item, cloud):
    item["properties"]["eo:cloud_cover"] = cloud
    with pytest.raises(CatalogError, match=rf"{item['id']}.*eo:cloud_cover"):
        normalize_item(item)
    item["properties"]["eo:cloud_cover"] = "12.5"  # a numeric string is fine
    assert normalize_item(item).cloud_cover == 12.5


def test_item_without_id_is_a_catalog_error(item):
    del item["id"]
    with pytest.raises(CatalogError, match="no usable 'id'"):
        normalize_item(item)
    with pytest.raises(CatalogError, match="no usable 'id'"):
        Scenes.from_items([item, dict(item)])


def test_features_that_are_not_objects_are_a_catalog_error(item):
    with pytest.raises(CatalogError, match="cannot normalise a str"):
        Scenes.from_items({"type": "FeatureCollection", "features": [item, "x"]})


def test_scene_item_keeps_unsigned_hrefs_only(item):
    """Signed hrefs must not survive on Scene.item (they leak when users save/log items)."""
    import pystac

    item["assets"]["red"]["href"] += "?st=2024&se=2030-01-01&sp=r&sig=SECRETSIG%3D"
    item["assets"]["nir"]["href"] += "?X-Amz-Signature=AMZSECRET&X-Amz-Expires=3600&v=1"
    item["links"] = [{"rel": "self", "href": "https://example.test/item.json?token=TOKSECRET"}]
    for given in (item, pystac.Item.from_dict(copy.deepcopy(item))):
        scene = normalize_item(given)
        text = json.dumps(scene.item.to_dict() if hasattr(scene.item, "to_dict") else scene.item)
        for secret in ("SECRETSIG", "AMZSECRET", "TOKSECRET", "2030-01-01"):
            assert secret not in text
        assert "v=1" in text  # parameters that are not secrets are kept
        assert "SECRETSIG" not in scene.bands["B04"].href
