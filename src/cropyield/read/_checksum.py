"""``file:checksum`` verification: multihash digests of whole assets (STAC file extension).

The block reader fetches only the tiles under the fields, so a damaged *uncompressed* tile
can decode to plausible numbers; a DEFLATE tile fails to decode instead. Where an item
states ``file:checksum`` (a hex multihash: varint hash code, varint length, digest), the
whole file can be fetched and compared, at the cost of reading all of it
(:func:`verify_checksum`; ``field_observations(verify_checksums=True)``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from .._deadline import call_with_deadline
from .._log import redact
from ..errors import AssetReadError, CorruptAssetError

#: multihash codes -> hashlib names (https://github.com/multiformats/multicodec)
_MULTIHASH = {0x11: "sha1", 0x12: "sha256", 0x13: "sha512", 0x14: "sha3_512",
              0x16: "sha3_256", 0xD5: "md5", 0xB220: "blake2b", 0xB240: "blake2b"}


def _varint(b: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(b) or shift > 63:
            raise ValueError("truncated varint")
        byte = b[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def parse_multihash(checksum: str) -> tuple[str, bytes]:
    """``(hashlib name, digest)`` of a hex multihash such as ``1220<64 hex digits>``.

    Raises
    ------
    ValueError
        Not hex, truncated, or a hash function not in :data:`_MULTIHASH`.
    """
    raw = bytes.fromhex(str(checksum).strip())
    code, i = _varint(raw, 0)
    length, i = _varint(raw, i)
    digest = raw[i:]
    if code not in _MULTIHASH:
        raise ValueError(f"unsupported multihash code 0x{code:x}")
    if len(digest) != length:
        raise ValueError(f"multihash digest has {len(digest)} bytes, header says {length}")
    return _MULTIHASH[code], digest


def _hasher(name: str, size: int):
    return hashlib.blake2b(digest_size=size) if name == "blake2b" else hashlib.new(name)


def verify_checksum(href: str, checksum: str, *, signer: Callable[[str], str] | None = None,
                    timeout: float = 60.0, chunk: int = 1 << 20,
                    deadline: float | None = None) -> None:
    """Fetch the whole of ``href`` (local path or http(s) URL) and compare its digest with
    the multihash ``checksum``.

    Parameters
    ----------
    href : str
        Local path, ``file://`` URL or http(s) URL (unsigned).
    checksum : str
        Hex multihash (``file:checksum``).
    signer : callable, optional
        ``signer(href) -> signed href`` for http(s) URLs.
    timeout : float
        Seconds per socket operation (connect, each read).
    chunk : int
        Bytes read at a time.
    deadline : float, optional
        Total seconds for the download: a server that trickles or stalls cannot hold the
        call longer (it returns within about 0.1 s of it; the abandoned download stops at
        its next chunk or socket timeout, in a daemon thread). None: no limit.

    Raises
    ------
    CorruptAssetError
        The digest differs (``reason="checksum"``): the asset is damaged or stale.
    AssetReadError
        The file could not be fetched (``reason="transient"``), not within ``deadline``
        (``reason="deadline"``), or the checksum is malformed (``reason="bad_checksum"``).
    """
    safe = redact(href)
    try:
        name, want = parse_multihash(checksum)
    except ValueError as exc:
        raise AssetReadError(f"file:checksum of {safe} is not a supported multihash ({exc}); "
                             "fix the item or read without verify_checksums",
                             href=safe, reason="bad_checksum") from None
    h = _hasher(name, len(want))
    overdue = False
    try:
        if href.startswith(("http://", "https://")):
            url = signer(href) if signer is not None else href
            if deadline is None:
                _fetch(url, h, timeout, chunk, None, None)
            else:
                t_end = time.monotonic() + float(deadline)
                cancel = threading.Event()
                try:
                    call_with_deadline(lambda: _fetch(url, h, timeout, chunk, t_end, cancel),
                                       float(deadline), name="cropyield-checksum",
                                       cancel=cancel)
                except (_Overdue, TimeoutError):
                    # call_with_deadline gave up (cancel set), or a socket read cut to the
                    # time left timed out; another socket timeout is a transient failure
                    if not (cancel.is_set() or time.monotonic() >= t_end - 0.05):
                        raise
                    overdue = True
        else:
            path = href[7:] if href.startswith("file://") else href
            with open(path, "rb") as fh:
                while block := fh.read(chunk):
                    h.update(block)
    except (OSError, _Overdue) as exc:
        raise AssetReadError(f"could not fetch {safe} to verify its checksum: "
                             f"{redact(str(exc))}", href=safe, reason="transient") from None
    if overdue and deadline is not None:  # only a deadline makes a download overdue
        raise AssetReadError(f"fetching {safe} to verify its checksum did not finish within "
                             f"the read deadline of {float(deadline):g} s; the server is "
                             "stalled or too slow. Retry later, raise the deadline "
                             "(read_deadline=) or read without verify_checksums",
                             href=safe, reason="deadline")
    if h.digest() != want:
        raise CorruptAssetError(
            f"{safe} does not match its file:checksum ({name}); the asset is damaged or not "
            "the one the item describes: re-download it or exclude the scene",
            href=safe, reason="checksum")


class _Overdue(Exception):
    """The checksum download ran past its deadline."""


def _fetch(url: str, h, timeout: float, chunk: int, t_end: float | None,
           cancel: threading.Event | None) -> None:
    """Stream ``url`` into the hasher ``h``; with ``t_end`` (a ``time.monotonic()`` value)
    each socket read waits at most the time left, and the download stops (:class:`_Overdue`)
    once it has passed or ``cancel`` is set."""
    import urllib.request

    def left() -> float:
        if t_end is None:
            return timeout
        rest = t_end - time.monotonic()
        if rest <= 0 or (cancel is not None and cancel.is_set()):
            raise _Overdue("deadline passed")
        return min(timeout, rest)

    with urllib.request.urlopen(url, timeout=left()) as resp:  # noqa: S310
        while block := resp.read1(chunk):
            h.update(block)
            left()
