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
