"""numba compilation with an on-disk cache where one can be written.

Compiling the kernels of a pipeline takes seconds per process. ``cache=True`` lets later
processes load them from disk (numba invalidates the cache when the source file changes),
but numba refuses to decorate a function when it finds no writable cache location (e.g. a
read-only install without a writable home); :func:`njit` then compiles per process as
plain ``numba.njit`` does. ``CROPYIELD_NUMBA_CACHE=0`` turns caching off.

Only module-level functions can be cached: numba gives closures made by factories a new
cache entry in every process, so those use ``numba.njit`` directly. numba invalidates a
cached function when *its own* source file changes, not when a kernel it calls in another
module does, so a cached kernel calls only kernels of its own module (checked by
``tests/test_package.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numba

__all__ = ["njit"]


def njit(**options: Any) -> Callable[[Callable], Any]:
    """``numba.njit(cache=True, **options)``, or without the cache when none can be used."""

    def decorate(fn: Callable) -> Any:
        if os.environ.get("CROPYIELD_NUMBA_CACHE", "1") != "0":
            try:
                return numba.njit(cache=True, **options)(fn)
            except RuntimeError:      # "cannot cache function ...: no locator available"
                pass
        return numba.njit(**options)(fn)

    return decorate
