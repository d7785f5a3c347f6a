"""Invalid-pixel masks from the Sentinel-2 Scene Classification Layer (SCL), with dilation.

Public entry points
-------------------
:func:`invalid_mask`
    Boolean mask of pixels that must not be used (clouds, shadows, snow, no data ...) from
    an SCL raster, optionally growing the cloud and shadow classes by a few pixels.
:func:`dilate_mask`
    Square dilation of a 2-D boolean mask (a numba kernel, equal to
    ``scipy.ndimage.binary_dilation`` with a square structure).
:data:`DEFAULT_SCL_INVALID`, :data:`SCL_DILATE_CLASSES`
    The default invalid classes and the classes grown by ``dilate``.

SCL classes (ESA L2A): 0 no data, 1 saturated/defective, 2 dark area, 3 cloud shadow,
4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 8 cloud medium, 9 cloud high,
10 thin cirrus, 11 snow. Values outside 0..11 are always invalid.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ._jit import njit

__all__ = [
    "DEFAULT_SCL_INVALID",
    "SCL_DILATE_CLASSES",
    "invalid_mask",
    "dilate_mask",
]

#: SCL classes invalid by default: 0 no data, 1 saturated/defective, 3 cloud shadow,
#: 8 cloud medium, 9 cloud high, 10 thin cirrus, 11 snow.
DEFAULT_SCL_INVALID = (0, 1, 3, 8, 9, 10, 11)
#: SCL classes grown by ``dilate``: cloud shadow and the three cloud classes.
SCL_DILATE_CLASSES = (3, 8, 9, 10)


def invalid_mask(scl, classes: Iterable[int] | None = DEFAULT_SCL_INVALID, dilate: int = 0, *,
                 dilate_classes: Iterable[int] = SCL_DILATE_CLASSES) -> np.ndarray:
    """Boolean mask of invalid pixels from a Sentinel-2 Scene Classification Layer.

    Parameters
    ----------
    scl : array_like of int, 2-D
        SCL classes (0 no data ... 11 snow).
    classes : iterable of int or None
        Invalid classes; default :data:`DEFAULT_SCL_INVALID` ``(0, 1, 3, 8, 9, 10, 11)``.
        Class 0 (no data) and values outside 0..11 are always invalid.
    dilate : int
        Grow the invalid pixels of the cloud and shadow classes (``dilate_classes`` that
        are in ``classes``; default 3, 8, 9, 10) by this many pixels of the SCL raster
        (20 m for L2A), with a square structuring element.
    dilate_classes : iterable of int

    Returns
    -------
    numpy.ndarray of bool
        True where the pixel must not be used.
    """
    a = np.asarray(scl)
    if a.ndim != 2:
        raise ValueError(f"scl must be a 2-D array, got shape {a.shape}")
    if dilate is None or int(dilate) < 0:
        raise ValueError(f"dilate must be >= 0 pixels, got {dilate!r}")
    bad = _scl_lookup(a, _scl_lut(classes))
    d = int(dilate)
    if d > 0:
        grow = _scl_lut(classes, only=dilate_classes)
        seed = _scl_lookup(a, grow)
        if seed.any():
            bad |= dilate_mask(seed, d)
    return bad


def dilate_mask(mask, radius: int) -> np.ndarray:
    """Grow a 2-D boolean mask by ``radius`` pixels in every direction (square, i.e.
    Chebyshev distance <= radius; equals ``scipy.ndimage.binary_dilation`` with a
    ``(2r+1, 2r+1)`` structure of ones)."""
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool))
    r = int(radius)
    if r < 0:
        raise ValueError(f"dilation radius must be >= 0 pixels, got {radius!r}")
    if r == 0 or m.size == 0:
        return m.copy()
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    return _dilate_square(m, r)


def _scl_lut(classes=DEFAULT_SCL_INVALID, only=None) -> np.ndarray:
    """Lookup table (256 bools) of invalid SCL values; values >= 12 are invalid unless
    ``only`` restricts the table to the given classes (used for dilation seeds)."""
    cls = set(DEFAULT_SCL_INVALID if classes is None else (int(c) for c in classes))
    cls.add(0)
    lut = np.zeros(256, dtype=bool)
    if only is not None:
        cls &= {int(c) for c in only}
        lut[sorted(c for c in cls if 0 <= c < 256)] = True
        return lut
    lut[sorted(c for c in cls if 0 <= c < 256)] = True
    lut[12:] = True  # not an SCL class (0..11): treat as invalid
    return lut


def _scl_lookup(a: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[a]`` for any integer array, out-of-range values mapped to ``lut[255]``-style
    invalid (True unless the table is a dilation seed table)."""
    if a.dtype == np.uint8:
        return lut[a]
    ai = np.asarray(a)
    if ai.dtype.kind == "f":
        ai = np.where(np.isnan(ai), 255, ai)
    ai = ai.astype(np.int64, copy=False)
    inrange = (ai >= 0) & (ai < 256)
    return np.where(inrange, lut[np.clip(ai, 0, 255)], lut[255])


@njit(nogil=True)
def _dilate_square(mask, radius):
    """Binary dilation by a (2r+1) x (2r+1) square (separable running windows)."""
    h, w = mask.shape
    tmp = np.zeros((h, w), dtype=np.bool_)
    for i in range(h):
        last = -(radius + 1) * 2  # column of the last True seen
        # forward pass: any True in [j - r, j]
        for j in range(w):
            if mask[i, j]:
                last = j
            if j - last <= radius:
                tmp[i, j] = True
        last = w + (radius + 1) * 2
        for j in range(w - 1, -1, -1):
            if mask[i, j]:
                last = j
            if last - j <= radius:
                tmp[i, j] = True
    out = np.zeros((h, w), dtype=np.bool_)
    for j in range(w):
        last = -(radius + 1) * 2
        for i in range(h):
            if tmp[i, j]:
                last = i
            if i - last <= radius:
                out[i, j] = True
        last = h + (radius + 1) * 2
        for i in range(h - 1, -1, -1):
            if tmp[i, j]:
                last = i
            if last - i <= radius:
                out[i, j] = True
    return out
