"""``file:checksum`` verification: multihash digests of whole assets (STAC file extension).

The block reader fetches only the tiles under the fields, so a damaged *uncompressed* tile
can decode to plausible numbers; a DEFLATE tile fails to decode instead. Where an item
states ``file:checksum`` (a hex multihash: varint hash code, varint length, digest), the
whole file can be fetched and compared, at the cost of reading all of it
(:func:`verify_checksum`; ``field_observations(verify_checksums=True)``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

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
                    timeout: float = 60.0, chunk: int = 1 << 20) -> None:
    """Fetch the whole of ``href`` (local path or http(s) URL) and compare its digest with
    the multihash ``checksum``.

    Raises
    ------
    CorruptAssetError
        The digest differs (``reason="checksum"``): the asset is damaged or stale.
    AssetReadError
        The file could not be fetched, or the checksum is malformed (``reason`` says).
    """
    safe = redact(href)
    try:
        name, want = parse_multihash(checksum)
    except ValueError as exc:
        raise AssetReadError(f"file:checksum of {safe} is not a supported multihash ({exc}); "
                             "fix the item or read without verify_checksums",
                             href=safe, reason="bad_checksum") from None
    h = _hasher(name, len(want))
    try:
        if href.startswith(("http://", "https://")):
            import urllib.request

            url = signer(href) if signer is not None else href
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                while block := resp.read(chunk):
                    h.update(block)
        else:
            path = href[7:] if href.startswith("file://") else href
            with open(path, "rb") as fh:
                while block := fh.read(chunk):
                    h.update(block)
    except OSError as exc:
        raise AssetReadError(f"could not fetch {safe} to verify its checksum: "
                             f"{redact(str(exc))}", href=safe, reason="transient") from None
    if h.digest() != want:
        raise CorruptAssetError(
            f"{safe} does not match its file:checksum ({name}); the asset is damaged or not "
            "the one the item describes: re-download it or exclude the scene",
            href=safe, reason="checksum")
