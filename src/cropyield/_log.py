"""Logging and redaction of secrets (signed query strings, tokens) in text."""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

logger = logging.getLogger("cropyield")
logger.addHandler(logging.NullHandler())

#: Query parameters whose values are secrets (Azure SAS, AWS pre-signed, generic tokens).
SECRET_PARAMS = frozenset(
    {"sig", "se", "st", "sp", "sv", "sr", "skoid", "sktid", "skt", "ske", "sks", "skv", "spr",
     "token", "access_token", "subscription-key", "key", "signature", "policy", "key-pair-id",
     "apikey", "api_key", "api-key", "client_secret", "password", "passwd", "secret",
     "refresh_token", "id_token", "auth", "code"}
)
#: Query-parameter prefixes whose values are secrets (AWS SigV4, Google Cloud V4 signing).
SECRET_PREFIXES = ("x-amz-", "x-goog-")


def _is_secret(name: str) -> bool:
    k = name.lower()
    return k in SECRET_PARAMS or k.startswith(SECRET_PREFIXES)
_URL_RE = re.compile(r"(?:/vsicurl/)?https?://[^\s'\"<>]+")
# credentials in the authority of any URL: scheme://user:password@host or scheme://token@host
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s'\"<>@]+@")
# secret query values anywhere in text, also in bare paths such as "/x?sig=..."
_SECRET_QS_RE = re.compile(
    r"(?i)([?&](?:" + "|".join(re.escape(k) for k in sorted(SECRET_PARAMS)) +
    r"|x-amz-[a-z-]+|x-goog-[a-z-]+)=)[^&\s'\"<>)]*"
)
_BEARER_RE = re.compile(
    r"(?i)(authorization|ocp-apim-subscription-key|bearer)([\"':= ]+)((?:bearer|basic|token)\s+)?"
    r"([^\s'\",}]+)"
)


def redact_url(url: str) -> str:
    """Return ``url`` with secret query values and credentials replaced by ``REDACTED``.

    Secret parameters: :data:`SECRET_PARAMS` and any ``X-Amz-*``/``X-Goog-*`` (signed URLs
    of AWS and Google Cloud); ``user:password@`` in the authority becomes ``REDACTED@``.
    Parameters that are not secrets are kept so that errors stay useful.
    """
    url = _USERINFO_RE.sub(lambda m: m.group(1) + "REDACTED@", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.query:
        return url
    query = [
        (k, "REDACTED" if _is_secret(k) else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/:")))


def redact(text: str) -> str:
    """Redact every URL's secret query values and any bearer token in free text."""
    text = _URL_RE.sub(lambda m: redact_url(m.group(0)), str(text))
    text = _USERINFO_RE.sub(lambda m: m.group(1) + "REDACTED@", text)
    text = _SECRET_QS_RE.sub(lambda m: m.group(1) + "REDACTED", text)
    return _BEARER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}REDACTED", text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from records (installed on the cropyield logger)."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003
        try:
            message = record.getMessage()
        except Exception:  # pragma: no cover - malformed record, leave it alone
            return True
        record.msg, record.args = redact(message), None
        return True


#: Installed on our logger and on the third-party HTTP loggers that print full URLs, headers
#: and payloads at DEBUG level (pystac-client, urllib3).
REDACTING_FILTER = RedactingFilter()
for _name in ("cropyield", "pystac_client.stac_api_io", "urllib3.connectionpool",
              "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(REDACTING_FILTER)
