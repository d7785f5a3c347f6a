"""Scalar numba functions of the built-in indices, their NumPy twins, and the factories that
turn a scalar function into an elementwise array kernel (with the valid-range rule) and its
NumPy reference. The registry in :mod:`cropyield.indices` pairs them into ``IndexSpec``s;
``tests/test_indices.py`` compares every kernel with its twin.

Scalar functions return NaN for a zero denominator; the array kernels also give NaN for NaN
inputs and for values outside the index's valid range. A cached function here calls only
functions of this module (see :mod:`cropyield._jit`).
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np

from ._jit import njit

__all__: list[str] = []

_nan = np.nan


@njit(nogil=True, inline="always")
def _nd(a, b):
    d = a + b
    if d == 0.0:
        return _nan
    return (a - b) / d


@njit(nogil=True)
def _f_ndvi(nir, red):
    return _nd(nir, red)


@njit(nogil=True)
def _f_evi(nir, red, blue):
    d = nir + 6.0 * red - 7.5 * blue + 1.0
    if d == 0.0:
        return _nan
    return 2.5 * (nir - red) / d


@njit(nogil=True)
def _f_evi2(nir, red):
    d = nir + 2.4 * red + 1.0
    if d == 0.0:
        return _nan
    return 2.5 * (nir - red) / d


@njit(nogil=True)
def _f_savi(nir, red):
    d = nir + red + 0.5
    if d == 0.0:
        return _nan
    return 1.5 * (nir - red) / d


@njit(nogil=True)
def _f_msavi2(nir, red):
    t = 2.0 * nir + 1.0
    arg = t * t - 8.0 * (nir - red)
    if not arg >= 0.0:
        return _nan
    return (t - np.sqrt(arg)) / 2.0


@njit(nogil=True)
def _f_ratio_m1(a, b):
    if b == 0.0:
        return _nan
    return a / b - 1.0


@njit(nogil=True)
def _f_mtci(b6, b5, b4):
    d = b5 - b4
    if d == 0.0:
        return _nan
    return (b6 - b5) / d


def _np_div(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0.0, np.nan, num / np.where(den == 0.0, 1.0, den))


def _np_nd(a, b):
    return _np_div(a - b, a + b)


def _np_evi(nir, red, blue):
    return _np_div(2.5 * (nir - red), nir + 6.0 * red - 7.5 * blue + 1.0)


def _np_evi2(nir, red):
    return _np_div(2.5 * (nir - red), nir + 2.4 * red + 1.0)


def _np_savi(nir, red):
    return _np_div(1.5 * (nir - red), nir + red + 0.5)


def _np_msavi2(nir, red):
    t = 2.0 * nir + 1.0
    arg = t * t - 8.0 * (nir - red)
    ok = arg >= 0.0
    return np.where(ok, (t - np.sqrt(np.where(ok, arg, 0.0))) / 2.0, np.nan)


def _np_ratio_m1(a, b):
    return _np_div(a, b) - 1.0


def _np_mtci(b6, b5, b4):
    return _np_div(b6 - b5, b5 - b4)


# ---------------------------------------------------------------------------------------------
# kernel factories (one loop per arity; the scalar function and range are compile-time constants)
# ---------------------------------------------------------------------------------------------
def _make_kernel(f, nargs: int, lo: float, hi: float):
    lo = float(lo)
    hi = float(hi)
    k: Callable[..., np.ndarray]
    if nargs == 1:
        def k1(a):
            n = a.size
            out = np.empty(n)
            for i in range(n):
                v = f(a[i])
                out[i] = v if (v >= lo and v <= hi) else _nan
            return out
        k = k1
    elif nargs == 2:
        def k2(a, b):
            n = a.size
            out = np.empty(n)
            for i in range(n):
                v = f(a[i], b[i])
                out[i] = v if (v >= lo and v <= hi) else _nan
            return out
        k = k2
    elif nargs == 3:
        def k3(a, b, c):
            n = a.size
            out = np.empty(n)
            for i in range(n):
                v = f(a[i], b[i], c[i])
                out[i] = v if (v >= lo and v <= hi) else _nan
            return out
        k = k3
    else:  # pragma: no cover - built-ins use 1..3 bands
        raise ValueError(nargs)
    return numba.njit(nogil=True)(k)


def _make_reference(f, lo: float, hi: float):
    def ref(*arrays):
        arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
        with np.errstate(all="ignore"):
            v = np.asarray(f(*arrays), dtype=np.float64)
        return np.where((v >= lo) & (v <= hi), v, np.nan)
    return ref
