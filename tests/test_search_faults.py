"""search_scenes against a real STAC API (rustac) behind a fault-injecting proxy: every fault
ends in the right scenes after retries, or in a clear CatalogError -- never a partial result."""

from __future__ import annotations

import logging
import time

import pytest

from cropyield.catalogs import search_scenes
from cropyield.errors import CatalogError
from cropyield.servers import FaultScript, serve_stac

BBOX = (113.0, 34.0, 115.0, 35.5)
PERIOD = ("2021-01-01", "2024-12-31")
EXPECTED = ["S2B_49SGU_20210601_0_L2A", "S2B_49SGU_20240501_0_L2A", "S2B_49SGV_20240501_0_L2A",
            "S2B_49SGU_20240506_0_L2A", "S2B_49SGU_20240511_1_L2A"]


@pytest.fixture(scope="module")
def api(s2_world_dir):
    with serve_stac(s2_world_dir / "collection.json", s2_world_dir / "items.ndjson") as (stac, px):
        yield px


@pytest.fixture
def proxy(api):
    api.faults = FaultScript()
    api.wait_idle()
    api.reset_log()
    yield api
    api.faults = FaultScript()
    api.wait_idle(10)


def _search(proxy, **kw):
    kw.setdefault("timeout", 5)
    kw.setdefault("backoff_factor", 0.05)
    return search_scenes(BBOX, *PERIOD, catalog=proxy.url, **kw)


def _searches(proxy):
    proxy.wait_idle()
    return [r for r in proxy.requests if r.path == "/search"]


def test_baseline_without_faults(proxy):
    scenes = _search(proxy, limit=2)
    assert [s.id for s in scenes] == EXPECTED
    assert len(_searches(proxy)) == 3  # 6 items, 2 per page


def test_503_twice_then_ok(proxy):
    proxy.faults = FaultScript({"POST /search": ["503", "503"]})
    scenes = _search(proxy, retries=3)
    assert [s.id for s in scenes] == EXPECTED
    assert [r.status for r in _searches(proxy)] == [503, 503, 200]


def test_error_on_second_page_is_retried(proxy):
    proxy.faults = FaultScript({"POST /search": ["ok", "502", "500"]})
    scenes = _search(proxy, limit=2, retries=3)
    assert [s.id for s in scenes] == EXPECTED
    assert [r.status for r in _searches(proxy)] == [200, 502, 500, 200, 200]


def test_persistent_500_gives_catalog_error_after_bounded_retries(proxy):
    proxy.faults = FaultScript({"POST /search": ["500"] * 20})
    with pytest.raises(CatalogError, match=r"(?i)retries|500"):
        _search(proxy, retries=2)
    assert len(_searches(proxy)) == 3  # first try + 2 retries, no more


def test_429_retry_after_is_honoured(proxy):
    proxy.faults = FaultScript({"POST /search": ["429:1"]})
    t0 = time.monotonic()
    scenes = _search(proxy, retries=2, backoff_factor=0.0)
    waited = time.monotonic() - t0
    assert [s.id for s in scenes] == EXPECTED
    reqs = _searches(proxy)
    assert [r.status for r in reqs] == [429, 200]
    gap = reqs[1].started - reqs[0].started
    assert 1.0 <= gap < 2.5 and waited >= 1.0


def test_retry_after_is_capped(proxy):
    proxy.faults = FaultScript({"POST /search": ["503:120"]})
    t0 = time.monotonic()
    scenes = _search(proxy, retries=2, max_retry_after=0.5)
    assert len(scenes) == 5 and time.monotonic() - t0 < 5


def test_stall_once_is_retried(proxy):
    proxy.faults = FaultScript({"POST /search": ["sleep:1.5"]})
    scenes = _search(proxy, timeout=0.5, retries=2)
    assert [s.id for s in scenes] == EXPECTED


def test_stall_longer_than_timeout_gives_catalog_error_in_bounded_time(proxy):
    proxy.faults = FaultScript({"POST /search": ["sleep:3"] * 4})
    t0 = time.monotonic()
    with pytest.raises(CatalogError, match=r"(?i)timed? ?out"):
        _search(proxy, timeout=0.4, retries=1)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.5  # 2 attempts x 0.4 s + backoff, not 2 x 3 s
    assert len(_searches(proxy)) == 2


def test_truncated_body_once_is_retried(proxy):
    proxy.faults = FaultScript({"POST /search": ["truncate"]})
    scenes = _search(proxy)
    assert [s.id for s in scenes] == EXPECTED


def test_truncated_body_always_gives_catalog_error(proxy):
    proxy.faults = FaultScript({"POST /search": ["truncate"] * 10})
    with pytest.raises(CatalogError):
        _search(proxy)


def test_truncated_later_page_never_gives_partial_result(proxy):
    proxy.faults = FaultScript({"POST /search": ["ok", "truncate", "ok", "truncate"]})
    with pytest.raises(CatalogError):
        _search(proxy, limit=2)
    proxy.faults = FaultScript({"POST /search": ["ok", "truncate"]})
    assert [s.id for s in _search(proxy, limit=2)] == EXPECTED  # whole search restarted


def test_garbled_json_gives_catalog_error(proxy):
    proxy.faults = FaultScript({"POST /search": ["corrupt"] * 4})
    with pytest.raises(CatalogError):
        _search(proxy)


def test_connection_reset_is_retried(proxy):
    proxy.faults = FaultScript({"POST /search": ["reset"]})
    assert [s.id for s in _search(proxy, retries=2)] == EXPECTED


def test_repeated_next_link_gives_catalog_error(proxy):
    proxy.faults = FaultScript({"POST /search": ["ok", "repeat_next"]})
    with pytest.raises(CatalogError, match="repeat"):
        _search(proxy, limit=2)
    assert len(_searches(proxy)) <= 4


def test_404_on_search_is_not_retried(proxy):
    proxy.faults = FaultScript({"POST /search": ["404"] * 5})
    with pytest.raises(CatalogError, match="404|[Nn]ot [Ff]ound|injected"):
        _search(proxy, retries=3)
    assert len(_searches(proxy)) == 1


def test_landing_page_failure(proxy):
    proxy.faults = FaultScript({"GET /": ["503"] * 10})
    with pytest.raises(CatalogError):
        _search(proxy, retries=1)


def test_signed_query_strings_never_leak(proxy, caplog):
    secret_url = f"{proxy.url}/?sig=SECRETSIG123&se=2030-01-01T00%3A00%3A00Z&token=TOKEN456"
    proxy.faults = FaultScript({"GET /": ["500"] * 10})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CatalogError) as info:
        search_scenes(BBOX, *PERIOD, catalog=secret_url, retries=1, backoff_factor=0.0,
                      timeout=5)
    text = str(info.value) + "".join(r.getMessage() for r in caplog.records)
    assert "SECRETSIG123" not in text and "TOKEN456" not in text and "2030-01-01" not in text
    assert "REDACTED" in str(info.value) or "sig" not in str(info.value)
    # a successful search records the catalog URL redacted in lineage and logs too
    proxy.faults = FaultScript()
    caplog.clear()
    scenes = search_scenes(BBOX, *PERIOD, catalog=secret_url, timeout=5)
    assert "SECRETSIG123" not in str(scenes.lineage) and "TOKEN456" not in str(scenes.lineage)
    assert not any("SECRETSIG123" in r.getMessage() for r in caplog.records)


def test_short_json_body_once_is_retried_twice_is_an_error(proxy):
    """A well-framed 200 whose JSON is cut (json.JSONDecodeError, not APIError)."""
    proxy.faults = FaultScript({"POST /search": ["short"]})
    assert [s.id for s in _search(proxy)] == EXPECTED
    proxy.faults = FaultScript({"POST /search": ["short", "short"]})
    with pytest.raises(CatalogError, match="JSONDecodeError|Expecting|Unterminated|delimiter"):
        _search(proxy)
