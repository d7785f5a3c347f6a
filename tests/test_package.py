"""Package-level behaviour: public names, and secrets never reaching logs or messages."""

import logging

from cropyield._log import logger, redact, redact_url


def test_redact_url_keeps_harmless_parameters():
    url = "https://x.blob.core.windows.net/a/B04.tif?st=2024&se=2024-01-01T00%3A00Z&sig=abc%2Bdef&foo=1"
    out = redact_url(url)
    assert "abc" not in out and "2024-01-01" not in out
    assert "foo=1" in out and out.startswith("https://x.blob.core.windows.net/a/B04.tif?")


def test_redact_free_text_paths_headers_and_aws():
    text = ("GET /c/B04.tif?sig=s3cr3t&se=2030 failed; "
            "https://b/k?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA1&part=2 "
            "Authorization: Bearer tok123 {'Ocp-Apim-Subscription-Key': 'k999'}")
    out = redact(text)
    for secret in ("s3cr3t", "deadbeef", "AKIA1", "tok123", "k999"):
        assert secret not in out, secret
    assert "part=2" in out


def test_redact_google_signatures_api_keys_and_userinfo():
    text = ("https://storage.googleapis.com/b/B04.tif?X-Goog-Algorithm=GOOG4&"
            "X-Goog-Credential=svc%40p&X-Goog-Signature=g00gsig&tile=1 "
            "https://api.example.com/search?apikey=AK1&api_key=AK2&api-key=AK3&limit=10 "
            "failed: https://alice:pa55word@stac.example.com/v1 and "
            "/vsicurl/https://bob:hunter2@cog.example.com/B04.tif "
            "s3://AKIAKEY:SECRETKEY@bucket/B08.tif and /c/x.tif?X-Goog-Signature=g2")
    out = redact(text)
    for secret in ("g00gsig", "svc%40p", "AK1", "AK2", "AK3", "alice", "pa55word", "hunter2",
                   "AKIAKEY", "SECRETKEY", "g2"):
        assert secret not in out, secret
    assert "tile=1" in out and "limit=10" in out and "stac.example.com/v1" in out
    url = redact_url("https://u:p@h.example/x?api_key=K&page=2")
    assert url == "https://REDACTED@h.example/x?api_key=REDACTED&page=2"
    assert redact("write to bob@example.com") == "write to bob@example.com"


def test_logger_records_are_redacted(caplog):
    with caplog.at_level(logging.DEBUG, logger="cropyield"):
        logger.warning("retrying %s", "https://h/B04.tif?sig=topsecret&se=2030")
    assert "topsecret" not in caplog.text and "REDACTED" in caplog.text


def test_public_names_resolve():
    import cropyield as cy
    import cropyield.identify  # noqa: F401  (imports the phenology submodule internally)

    assert callable(cy.phenology) and cy.phenology.__name__ == "phenology"
    for name in cy.__all__:
        assert getattr(cy, name) is not None, name


def test_cached_kernels_call_only_kernels_of_their_own_module():
    """numba's on-disk cache is invalidated by the cached function's own source file: a
    cached kernel that inlined a kernel of another module would keep stale code."""
    import ast
    from pathlib import Path

    import cropyield

    root = Path(cropyield.__file__).parent
    jitted: dict[str, str] = {}
    calls: dict[tuple[str, str], set[str]] = {}
    for path in root.rglob("*.py"):                     # packages (read/, ...) included
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and any(
                    "njit" in ast.unparse(d) for d in node.decorator_list):
                jitted[node.name] = str(path.relative_to(root))
                calls[(str(path.relative_to(root)), node.name)] = {
                    c.func.id for c in ast.walk(node)
                    if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
    assert len(jitted) > 30
    cross = [(m, f, c) for (m, f), cs in calls.items() for c in cs
             if c in jitted and jitted[c] != m]
    assert cross == []
