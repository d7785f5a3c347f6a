"""Small file and parsing helpers with no cropyield dependencies besides the errors:
:func:`atomic_write` (temporary name in the same folder, then rename) and
:func:`loads_json` (a JSON loader with bounds on size, nesting depth and integer digits).

Both guard against faults found under fault injection (issue 18): a process killed in the
middle of a write must never leave a truncated file at the final path, and hostile JSON
(100 000 nested brackets, 5 000-digit integers, integers beyond float range) must end in a
clear error, not a ``RecursionError``/``ValueError``/``OverflowError`` from deep inside.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError

__all__ = ["atomic_write", "loads_json", "MAX_JSON_DEPTH", "MAX_INT_DIGITS", "MAX_JSON_BYTES"]

#: Deepest nesting of arrays/objects accepted by :func:`loads_json`.
MAX_JSON_DEPTH = 200
#: Most digits of a JSON integer accepted by :func:`loads_json` (float range is ~309 digits).
MAX_INT_DIGITS = 300
#: Largest JSON text accepted by :func:`loads_json` (bytes), unless the caller says otherwise.
MAX_JSON_BYTES = 512 * 1024 * 1024

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _too_deep(text: str, max_depth: int) -> int | None:
    """The deepest nesting of arrays/objects when it exceeds ``max_depth``, else None.

    Strings are blanked with one regex pass; the depth is then the running sum of +1/-1
    bracket steps (NumPy), so the check costs a few C-speed passes over the text.
    """
    import numpy as np

    blank = _STRING.sub('""', text).encode("utf-8", errors="replace")
    b = np.frombuffer(blank, dtype=np.uint8)
    step = ((b == 91) | (b == 123)).astype(np.int32) - ((b == 93) | (b == 125)).astype(np.int32)
    if not step.size:
        return None
    depth = int(np.cumsum(step).max())
    return depth if depth > max_depth else None


def loads_json(text: str | bytes, *, what: str = "JSON", error: type[Exception] = ConfigError,
               max_depth: int = MAX_JSON_DEPTH, max_int_digits: int = MAX_INT_DIGITS,
               max_bytes: int | None = MAX_JSON_BYTES) -> Any:
    """Parse JSON text with bounds, raising ``error`` with a message that says what to do.

    Parameters
    ----------
    text : str or bytes
        The JSON document.
    what : str
        What is being read, for messages (e.g. ``"YieldModel file model.json"``).
    error : exception class
        Raised on any problem (default :class:`~cropyield.errors.ConfigError`).
    max_depth : int
        Deepest nesting of arrays/objects (default :data:`MAX_JSON_DEPTH`).
    max_int_digits : int
        Most digits in an integer literal (default :data:`MAX_INT_DIGITS`: integers beyond
        float range are refused, since every number the library reads is used as a float).
    max_bytes : int or None
        Largest accepted text (default :data:`MAX_JSON_BYTES`).

    Returns
    -------
    object
        The parsed value. ``NaN``/``Infinity`` literals are accepted as Python does; floats
        beyond range parse as ``inf`` (callers check finiteness where it matters).
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise error(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(text, str):
        raise error(f"{what}: expected JSON text, got {type(text).__name__}")
    if max_bytes is not None and len(text) > max_bytes:
        raise error(f"{what} is {len(text):,} characters, more than the {max_bytes:,} accepted; "
                    "check that it is the right file")
    # the scan runs only when there are enough brackets to be too deep (str.count is C-fast)
    deep = (_too_deep(text, max_depth)
            if text.count("[") + text.count("{") > max_depth else None)
    if deep is not None:
        raise error(f"{what} nests arrays/objects more than {max_depth} deep; it is not a file "
                    "cropyield wrote (check its origin)")

    def parse_int(s: str) -> int:
        digits = len(s) - (s[0] == "-")
        if digits > max_int_digits:
            raise error(f"{what} has an integer of {digits:,} digits (more than "
                        f"{max_int_digits}, beyond float range); check its origin")
        return int(s)

    try:
        return json.loads(text, parse_int=parse_int)
    except error:
        raise
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column "
                    f"{exc.colno})") from None
    except (RecursionError, ValueError, OverflowError) as exc:
        raise error(f"{what} cannot be parsed ({type(exc).__name__}: {str(exc)[:120]})") from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None
                 ) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``.

    A process killed (or an exception raised) inside the ``with`` block leaves ``path``
    untouched -- either the old file or none -- and no partial file under the final name;
    the temporary file (``.<name>.tmp-*``) is removed on exceptions. ``os.replace`` is
    atomic on POSIX and Windows within one file system.

    Examples
    --------
    >>> with atomic_write("out.json", "w", encoding="utf-8") as fh:  # doctest: +SKIP
    ...     fh.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_path(path: str | os.PathLike, writer) -> Path:
    """Call ``writer(tmp_path)`` (e.g. ``df.to_parquet``) then rename ``tmp_path`` to ``path``.

    For libraries that want a path rather than a file object. The temporary name keeps the
    suffix of ``path`` (some writers choose the format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but not ours (or cannot tell): alive
        return True
    return True


def work_dir_prefix(prefix: str) -> str:
    """``prefix`` + this process id + ``-``: names :func:`clean_stale_dirs` can judge."""
    return f"{prefix}{os.getpid()}-"


def clean_stale_dirs(parent: str | os.PathLike, prefix: str, *,
                     max_age_s: float = 24 * 3600.0) -> list[Path]:
    """Remove leftover work folders ``parent/<prefix>*`` of interrupted runs.

    A folder named by :func:`work_dir_prefix` (``<prefix><pid>-...``) is stale when that
    process no longer exists on this machine; any folder (also of the older ``<prefix>xyz``
    form, or whose pid was reused) is stale when it was last modified more than
    ``max_age_s`` seconds ago. Folders of live processes younger than that are kept.
    Errors (a folder removed meanwhile, permissions) are ignored.

    Returns
    -------
    list of Path
        The folders removed.
    """
    import shutil
    import time

    parent = Path(parent)
    removed: list[Path] = []
    try:
        entries = list(parent.glob(f"{prefix}*"))
    except OSError:
        return removed
    now = time.time()
    for d in entries:
        try:
            if not d.is_dir() or d.is_symlink():
                continue
            head = d.name[len(prefix):].split("-", 1)[0]
            dead = head.isdigit() and "-" in d.name[len(prefix):] and not _pid_alive(int(head))
            old = now - d.stat().st_mtime > max_age_s
        except OSError:
            continue
        if dead or old:
            shutil.rmtree(d, ignore_errors=True)
            if not d.exists():
                removed.append(d)
    return removed


#: Largest JSON size (bytes) of one ``DataFrame.attrs`` entry written into a Parquet file's
#: metadata; larger entries (per-scene lists, read-failure logs) stay in memory only.
MAX_ATTR_BYTES = 2048


def with_small_attrs(df):
    """``df`` (a shallow copy) keeping only the ``attrs`` entries small enough for Parquet
    metadata (pandas writes all of ``attrs`` into every file otherwise)."""
    keep = {}
    for k, v in df.attrs.items():
        try:
            if len(json.dumps(v, default=str)) <= MAX_ATTR_BYTES:
                keep[k] = v
        except (TypeError, ValueError):
            continue
    out = df.copy(deep=False)
    out.attrs = keep
    return out
