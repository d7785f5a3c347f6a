"""Vegetation-index registry with numba kernels, SCL/nodata masks and per-field statistics.

Every index has a numba kernel (``njit(nogil=True)``, elementwise, NaN for invalid
denominators, NaN inputs and values outside the index's valid range; never 0 and never an
exception for bad pixels) and a plain NumPy reference twin used by the tests. Custom indices
are parsed from formula strings with an :mod:`ast` allow-list (never ``eval``) and run by a
small numba stack machine.

Units: reflectances are dimensionless surface reflectance (``DN * scale + offset``);
every index is dimensionless.
"""

from __future__ import annotations

import ast
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from ._jit import njit
from ._log import logger
from .coverage import Coverage, bits_to_flags, coverage_fractions
from .errors import IndexFormulaError, MissingBandError, UnknownIndexError

__all__ = [
    "IndexSpec",
    "INDICES",
    "BAND_ALIASES",
    "CANONICAL_BANDS",
    "DEFAULT_SCL_INVALID",
    "SCL_DILATE_CLASSES",
    "canonical_band",
    "reflectance",
    "compute_index",
    "get_index",
    "register_index",
    "custom_index",
    "invalid_mask",
    "dilate_mask",
    "weighted_field_stats",
    "coverage_stats",
    "zonal_stats",
]

#: Canonical Sentinel-2 L2A band names.
CANONICAL_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                   "B11", "B12", "SCL")
#: Common aliases (Earth Search v1 asset keys and colour names) -> canonical band.
BAND_ALIASES: dict[str, str] = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04",
    "rededge1": "B05", "rededge2": "B06", "rededge3": "B07", "re1": "B05", "re2": "B06",
    "re3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "narrownir": "B8A",
    "swir16": "B11", "swir22": "B12", "swir1": "B11", "swir2": "B12", "scl": "SCL",
    **{f"b{i}": f"B{i:02d}" for i in range(1, 13) if i != 10},
    **{f"b{i:02d}": f"B{i:02d}" for i in range(1, 13) if i != 10},
    "b8a": "B8A", "b08a": "B8A",
}

#: SCL classes invalid by default: 0 no data, 1 saturated/defective, 3 cloud shadow,
#: 8 cloud medium, 9 cloud high, 10 thin cirrus, 11 snow.
DEFAULT_SCL_INVALID = (0, 1, 3, 8, 9, 10, 11)
#: SCL classes grown by ``dilate``: cloud shadow and the three cloud classes.
SCL_DILATE_CLASSES = (3, 8, 9, 10)


def canonical_band(name: str) -> str:
    """Canonical band name (``'B08'``) for a band name or alias (``'nir'``, ``'b8'``).

    Raises
    ------
    MissingBandError
        If the name is not a known Sentinel-2 band or alias.
    """
    s = str(name).strip()
    if s.upper() in CANONICAL_BANDS:
        return s.upper()
    c = BAND_ALIASES.get(s.lower())
    if c is None:
        raise MissingBandError(
            f"unknown band {name!r}; use one of {', '.join(CANONICAL_BANDS)} or an alias "
            f"such as 'red', 'nir', 'swir16'"
        )
    return c


# =============================================================================================
# Reflectance
# =============================================================================================
def reflectance(dn, scale: float = 1e-4, offset: float = 0.0, nodata=0) -> np.ndarray:
    """Surface reflectance ``dn * scale + offset`` as float64, NaN where ``dn == nodata``.

    Parameters
    ----------
    dn : array_like
        Digital numbers (any shape; usually uint16).
    scale, offset : float
        Radiometric scale and offset from the normalised scene. Sentinel-2 L2A with
        processing baseline >= 04.00: ``scale=1e-4, offset=-0.1``; older baselines
        ``offset=0``.
    nodata : number or None
        DN value meaning "no data" (0 for Sentinel-2 L2A); NaN matches NaN; None: no nodata.

    Returns
    -------
    numpy.ndarray of float64
        Dimensionless reflectance; NaN at nodata and NaN inputs.
    """
    a = np.asarray(dn)
    out = a.astype(np.float64) * float(scale) + float(offset)
    if nodata is not None:
        if isinstance(nodata, float) and math.isnan(nodata):
            bad = np.isnan(out)
        else:
            bad = a == nodata
        if np.any(bad):
            out[bad] = np.nan
    return out


# =============================================================================================
# Built-in index formulas: scalar numba functions + NumPy twins
# =============================================================================================
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
    if nargs == 1:
        def k(a):
            n = a.size
            out = np.empty(n)
            for i in range(n):
                v = f(a[i])
                out[i] = v if (v >= lo and v <= hi) else _nan
            return out
    elif nargs == 2:
        def k(a, b):
            n = a.size
            out = np.empty(n)
            for i in range(n):
                v = f(a[i], b[i])
                out[i] = v if (v >= lo and v <= hi) else _nan
            return out
    elif nargs == 3:
        def k(a, b, c):
            n = a.size
            out = np.empty(n)
            for i in range(n):
                v = f(a[i], b[i], c[i])
                out[i] = v if (v >= lo and v <= hi) else _nan
            return out
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


# =============================================================================================
# Registry
# =============================================================================================
@dataclass(frozen=True)
class IndexSpec:
    """Definition of a spectral index.

    Attributes
    ----------
    name : str
        Lower-case registry name (``'ndvi'``).
    bands : tuple of str
        Canonical bands, in the order the kernel takes them.
    formula : str
        Human-readable formula.
    valid_range : (float, float)
        Closed range of meaningful values; values outside become NaN.
    source : str
        Citation.
    kernel : callable
        numba kernel: ``kernel(*bands)`` on 1-D float64 arrays -> 1-D float64 array.
    reference : callable
        Plain NumPy twin with the same signature (used by tests).
    description : str
    aliases : tuple of str
    """

    name: str
    bands: tuple[str, ...]
    formula: str
    valid_range: tuple[float, float]
    source: str
    kernel: Callable[..., np.ndarray] = field(repr=False)
    reference: Callable[..., np.ndarray] = field(repr=False)
    description: str = ""
    aliases: tuple[str, ...] = ()
    builtin: bool = True
    #: numba scalar function ``f(*band_values) -> float`` (built-ins; None for formulas),
    #: inlined by the streaming kernels of :func:`cropyield.field_observations`
    scalar: Callable[..., float] | None = field(default=None, repr=False, compare=False)

    def __call__(self, refl: Mapping[str, Any], *, engine: str = "numba") -> np.ndarray:
        """Compute the index from a mapping band -> reflectance (see :func:`compute_index`)."""
        return _apply(self, refl, engine=engine)


INDICES: dict[str, IndexSpec] = {}
_REG_LOCK = threading.Lock()


def _builtin(name, bands, formula, valid_range, source, f, ref, description, aliases=()):
    lo, hi = valid_range
    spec = IndexSpec(
        name=name, bands=tuple(bands), formula=formula, valid_range=(float(lo), float(hi)),
        source=source, kernel=_make_kernel(f, len(bands), lo, hi),
        reference=_make_reference(ref, lo, hi), description=description,
        aliases=tuple(aliases), builtin=True, scalar=f,
    )
    INDICES[name] = spec
    for a in aliases:
        INDICES[a] = spec


_builtin("ndvi", ("B08", "B04"), "(B08 - B04) / (B08 + B04)", (-1, 1),
         "Rouse et al. 1974, NASA SP-351; Tucker 1979, Remote Sens. Environ. 8:127-150",
         _f_ndvi, _np_nd, "Normalized Difference Vegetation Index")
_builtin("evi", ("B08", "B04", "B02"), "2.5 * (B08 - B04) / (B08 + 6 B04 - 7.5 B02 + 1)", (-1, 1),
         "Huete et al. 2002, Remote Sens. Environ. 83:195-213 (MODIS EVI)",
         _f_evi, _np_evi, "Enhanced Vegetation Index")
_builtin("evi2", ("B08", "B04"), "2.5 * (B08 - B04) / (B08 + 2.4 B04 + 1)", (-1, 1.25),
         "Jiang et al. 2008, Remote Sens. Environ. 112:3833-3845",
         _f_evi2, _np_evi2, "Two-band Enhanced Vegetation Index")
_builtin("savi", ("B08", "B04"), "1.5 * (B08 - B04) / (B08 + B04 + 0.5)", (-1, 1),
         "Huete 1988, Remote Sens. Environ. 25:295-309 (L = 0.5)",
         _f_savi, _np_savi, "Soil-Adjusted Vegetation Index")
_builtin("msavi2", ("B08", "B04"), "(2 B08 + 1 - sqrt((2 B08 + 1)^2 - 8 (B08 - B04))) / 2",
         (-1, 1), "Qi et al. 1994, Remote Sens. Environ. 48:119-126",
         _f_msavi2, _np_msavi2, "Modified SAVI (self-adjusting L)")
_builtin("gcvi", ("B08", "B03"), "B08 / B03 - 1", (-1, 50),
         "Gitelson et al. 2003, Geophys. Res. Lett. 30(5):1248 (green chlorophyll index)",
         _f_ratio_m1, _np_ratio_m1, "Green Chlorophyll Vegetation Index")
_builtin("ndre", ("B8A", "B05"), "(B8A - B05) / (B8A + B05)", (-1, 1),
         "Gitelson & Merzlyak 1994, J. Plant Physiol. 143:286-292; Barnes et al. 2000",
         _f_ndvi, _np_nd, "Normalized Difference Red-Edge index")
_builtin("cire", ("B07", "B05"), "B07 / B05 - 1", (-1, 50),
         "Gitelson et al. 2003/2005 (red-edge chlorophyll index, S2 form B7/B5 - 1)",
         _f_ratio_m1, _np_ratio_m1, "Red-edge Chlorophyll Index")
_builtin("mtci", ("B06", "B05", "B04"), "(B06 - B05) / (B05 - B04)", (-50, 50),
         "Dash & Curran 2004, Int. J. Remote Sens. 25:5403-5413",
         _f_mtci, _np_mtci, "MERIS Terrestrial Chlorophyll Index (S2 bands)")
_builtin("ndwi", ("B03", "B08"), "(B03 - B08) / (B03 + B08)", (-1, 1),
         "McFeeters 1996, Int. J. Remote Sens. 17:1425-1432", _f_ndvi, _np_nd,
         "Normalized Difference Water Index (open water)")
_builtin("ndmi", ("B08", "B11"), "(B08 - B11) / (B08 + B11)", (-1, 1),
         "Gao 1996, Remote Sens. Environ. 58:257-266; Xiao et al. 2004 (LSWI)",
         _f_ndvi, _np_nd, "Normalized Difference Moisture Index / Land Surface Water Index",
         aliases=("lswi",))
_builtin("nbr", ("B08", "B12"), "(B08 - B12) / (B08 + B12)", (-1, 1),
         "Key & Benson 2006, USDA RMRS-GTR-164-CD (Normalized Burn Ratio)", _f_ndvi, _np_nd,
         "Normalized Burn Ratio")

BUILTIN_INDICES = tuple(sorted({s.name for s in INDICES.values()}))


def get_index(name_or_formula: str | IndexSpec) -> IndexSpec:
    """Look up a registered index (case-insensitive) or compile a formula string.

    Raises
    ------
    UnknownIndexError
        If ``name`` is neither registered nor a formula using known bands.
    IndexFormulaError
        If it looks like a formula but uses something outside the allow-list.
    """
    if isinstance(name_or_formula, IndexSpec):
        return name_or_formula
    key = str(name_or_formula).strip()
    spec = INDICES.get(key.lower())
    if spec is not None:
        return spec
    if any(ch in key for ch in "+-*/()"):
        return custom_index(key)
    raise UnknownIndexError(
        f"unknown index {name_or_formula!r}; registered: {', '.join(sorted(INDICES))}. "
        "Pass a formula such as '(B08 - B04) / (B08 + B04)' or register one with "
        "cropyield.indices.register_index()"
    )


def _apply(spec: IndexSpec, refl: Mapping[str, Any], *, engine: str = "numba") -> np.ndarray:
    canon = _canon_mapping(refl)
    missing = [b for b in spec.bands if b not in canon]
    if missing:
        raise MissingBandError(
            f"index {spec.name!r} needs bands {list(spec.bands)}; missing {missing} "
            f"(given: {sorted(canon)})"
        )
    arrays = np.broadcast_arrays(*[np.asarray(canon[b], dtype=np.float64) for b in spec.bands])
    shape = arrays[0].shape
    flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    if engine == "numba":
        out = spec.kernel(*flat)
    elif engine == "numpy":
        out = spec.reference(*flat)
    else:
        raise ValueError(f"engine must be 'numba' or 'numpy', got {engine!r}")
    return np.asarray(out, dtype=np.float64).reshape(shape)


def _canon_mapping(refl: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in refl.items():
        try:
            out[canonical_band(k)] = v
        except MissingBandError:
            continue
    return out


def compute_index(name: str | IndexSpec, refl: Mapping[str, Any], *,
                  engine: str = "numba") -> np.ndarray:
    """Compute an index from reflectances.

    Parameters
    ----------
    name : str or IndexSpec
        Registered name (``'ndvi'``, ``'lswi'``...), a formula string
        (``'(B08 - B04) / (B08 + B04)'``) or an :class:`IndexSpec`.
    refl : mapping
        Band name or alias -> reflectance array (dimensionless; any broadcastable shape).
    engine : {'numba', 'numpy'}
        ``'numpy'`` runs the reference twin.

    Returns
    -------
    numpy.ndarray of float64
        Dimensionless index, same shape as the broadcast inputs; NaN where an input is NaN,
        the denominator is 0, or the value lies outside the index's valid range.

    Raises
    ------
    UnknownIndexError, IndexFormulaError, MissingBandError
    """
    return _apply(get_index(name), refl, engine=engine)


# =============================================================================================
# Custom indices: AST allow-list -> stack program run by one numba kernel
# =============================================================================================
_OP_BAND, _OP_CONST, _OP_ADD, _OP_SUB, _OP_MUL, _OP_DIV, _OP_POW, _OP_NEG = range(8)
_OP_SQRT, _OP_ABS, _OP_MIN, _OP_MAX, _OP_LOG, _OP_EXP = range(8, 14)
_FUNCS = {"sqrt": (_OP_SQRT, 1), "abs": (_OP_ABS, 1), "min": (_OP_MIN, 2),
          "max": (_OP_MAX, 2), "log": (_OP_LOG, 1), "exp": (_OP_EXP, 1)}
_BINOPS = {ast.Add: _OP_ADD, ast.Sub: _OP_SUB, ast.Mult: _OP_MUL, ast.Div: _OP_DIV,
           ast.Pow: _OP_POW}
_MAX_FORMULA_LEN = 2000
_MAX_PROGRAM = 512


@njit(nogil=True)
def _run_program(prog, consts, bands, lo, hi, maxdepth):
    """Evaluate a compiled formula for every pixel. ``bands`` is (n_bands, n) float64."""
    n = bands.shape[1]
    out = np.empty(n)
    stack = np.empty(maxdepth)
    m = prog.shape[0]
    for i in range(n):
        sp = 0
        for k in range(m):
            op = prog[k, 0]
            arg = prog[k, 1]
            if op == 0:
                stack[sp] = bands[arg, i]
                sp += 1
            elif op == 1:
                stack[sp] = consts[arg]
                sp += 1
            elif op == 7:
                stack[sp - 1] = -stack[sp - 1]
            elif op == 8:
                x = stack[sp - 1]
                stack[sp - 1] = np.sqrt(x) if x >= 0.0 else _nan
            elif op == 9:
                stack[sp - 1] = abs(stack[sp - 1])
            elif op == 12:
                x = stack[sp - 1]
                stack[sp - 1] = np.log(x) if x > 0.0 else _nan
            elif op == 13:
                stack[sp - 1] = np.exp(stack[sp - 1])
            else:
                b = stack[sp - 1]
                a = stack[sp - 2]
                sp -= 1
                if op == 2:
                    r = a + b
                elif op == 3:
                    r = a - b
                elif op == 4:
                    r = a * b
                elif op == 5:
                    r = a / b if b != 0.0 else _nan
                elif op == 6:
                    if a == 0.0 and b < 0.0:
                        r = _nan
                    elif a < 0.0 and b != np.floor(b):
                        r = _nan
                    else:
                        r = a ** b
                elif op == 10:
                    r = _nan if (a != a or b != b) else min(a, b)
                else:
                    r = _nan if (a != a or b != b) else max(a, b)
                stack[sp - 1] = r
        v = stack[0]
        out[i] = v if (v >= lo and v <= hi) else _nan
    return out


class _Compiler:
    def __init__(self, formula: str):
        self.formula = formula
        self.prog: list[tuple[int, int]] = []
        self.consts: list[float] = []
        self.bands: list[str] = []
        self.depth = 0
        self.maxdepth = 0

    def err(self, node, what):
        col = getattr(node, "col_offset", None)
        where = f" at column {col + 1}" if col is not None else ""
        raise IndexFormulaError(
            f"index formula {self.formula!r}: {what}{where} is not allowed. Formulas may use "
            "band names (B02..B12, B8A, or aliases like red, nir), numbers, + - * / ** , "
            "unary -, parentheses and the functions " + ", ".join(sorted(_FUNCS))
        )

    def push(self, op, arg=0, delta=1):
        self.prog.append((op, arg))
        self.depth += delta
        self.maxdepth = max(self.maxdepth, self.depth)
        if len(self.prog) > _MAX_PROGRAM:
            raise IndexFormulaError(f"index formula {self.formula!r} is too long")

    def visit(self, node):
        if isinstance(node, ast.Expression):
            return self.visit(node.body)
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                self.err(node, f"operator {type(node.op).__name__}")
            self.visit(node.left)
            self.visit(node.right)
            return self.push(op, 0, -1)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                self.visit(node.operand)
                return self.push(_OP_NEG, 0, 0)
            if isinstance(node.op, ast.UAdd):
                return self.visit(node.operand)
            self.err(node, f"unary operator {type(node.op).__name__}")
        if isinstance(node, ast.Constant):
            val = node.value
            if isinstance(val, bool) or not isinstance(val, (int, float)):
                self.err(node, f"constant {val!r}")
            self.consts.append(float(val))
            return self.push(_OP_CONST, len(self.consts) - 1, 1)
        if isinstance(node, ast.Name):
            try:
                band = canonical_band(node.id)
            except MissingBandError:
                self.err(node, f"name {node.id!r}")
            if band == "SCL":
                self.err(node, "the SCL band")
            if band not in self.bands:
                self.bands.append(band)
            return self.push(_OP_BAND, self.bands.index(band), 1)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
                self.err(node, "this function call")
            if node.keywords:
                self.err(node, "keyword arguments")
            op, arity = _FUNCS[node.func.id]
            if len(node.args) != arity or any(isinstance(a, ast.Starred) for a in node.args):
                self.err(node, f"{node.func.id}() with {len(node.args)} arguments "
                               f"(needs {arity})")
            for a in node.args:
                self.visit(a)
            return self.push(op, 0, 1 - arity)
        self.err(node, type(node).__name__)


def _numpy_eval(node, arrays: dict[str, np.ndarray]):
    """NumPy reference evaluation of an allow-listed AST (the twin of ``_run_program``)."""
    if isinstance(node, ast.Expression):
        return _numpy_eval(node.body, arrays)
    if isinstance(node, ast.BinOp):
        a = _numpy_eval(node.left, arrays)
        b = _numpy_eval(node.right, arrays)
        t = type(node.op)
        if t is ast.Add:
            return a + b
        if t is ast.Sub:
            return a - b
        if t is ast.Mult:
            return a * b
        if t is ast.Div:
            return _np_div(a, b)
        a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
        bad = ((a == 0.0) & (b < 0.0)) | ((a < 0.0) & (b != np.floor(b)))
        return np.where(bad, np.nan, np.power(np.where(bad, 1.0, a), b))
    if isinstance(node, ast.UnaryOp):
        v = _numpy_eval(node.operand, arrays)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return arrays[canonical_band(node.id)]
    if isinstance(node, ast.Call):
        args = [np.asarray(_numpy_eval(a, arrays), dtype=float) for a in node.args]
        fn = node.func.id
        if fn == "sqrt":
            return np.where(args[0] >= 0.0, np.sqrt(np.abs(args[0])), np.nan)
        if fn == "abs":
            return np.abs(args[0])
        if fn == "log":
            return np.where(args[0] > 0.0, np.log(np.where(args[0] > 0.0, args[0], 1.0)),
                            np.nan)
        if fn == "exp":
            return np.exp(args[0])
        if fn == "min":
            return np.minimum(args[0], args[1])  # propagates NaN
        return np.maximum(args[0], args[1])
    raise IndexFormulaError(f"unexpected node {type(node).__name__}")  # pragma: no cover


def _parse(formula: str):
    if not isinstance(formula, str) or not formula.strip():
        raise IndexFormulaError("index formula must be a non-empty string, e.g. "
                                "'(B08 - B04) / (B08 + B04)'")
    if len(formula) > _MAX_FORMULA_LEN:
        raise IndexFormulaError(f"index formula longer than {_MAX_FORMULA_LEN} characters")
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise IndexFormulaError(f"index formula {formula!r} is not a valid expression: {e}") \
            from None
    comp = _Compiler(formula)
    comp.visit(tree)
    if not comp.bands:
        raise IndexFormulaError(f"index formula {formula!r} uses no band")
    return tree, comp


def custom_index(formula: str, *, name: str | None = None,
                 valid_range: tuple[float, float] | None = None,
                 bands: Iterable[str] | None = None, source: str = "user formula",
                 description: str = "") -> IndexSpec:
    """Compile a formula string into an :class:`IndexSpec` (not registered).

    The formula is parsed with :mod:`ast` and checked against an allow-list: band names
    (``B02``..``B12``, ``B8A`` or aliases ``blue``, ``green``, ``red``, ``nir``, ``swir16``...),
    numeric constants, ``+ - * / **``, unary ``-``, parentheses and ``sqrt``, ``abs``,
    ``log``, ``exp``, ``min``, ``max``. Anything else (attributes, subscripts, other calls,
    lambdas, comparisons, names) raises :class:`~cropyield.errors.IndexFormulaError`. It is
    never passed to ``eval``.

    Division by zero, ``sqrt``/``log`` outside their domain and non-finite results give NaN;
    so do values outside ``valid_range`` (default: no limit).
    """
    tree, comp = _parse(formula)
    if bands is not None:
        order = [canonical_band(b) for b in bands]
        extra = [b for b in comp.bands if b not in order]
        if extra:
            raise IndexFormulaError(f"formula {formula!r} uses bands {extra} not listed in "
                                    f"bands={list(order)}")
        remap = [order.index(b) for b in comp.bands]
        prog_bands = order
    else:
        remap = list(range(len(comp.bands)))
        prog_bands = list(comp.bands)
    prog = np.array([(op, remap[arg] if op == _OP_BAND else arg) for op, arg in comp.prog],
                    dtype=np.int64).reshape(-1, 2)
    consts = np.array(comp.consts if comp.consts else [0.0], dtype=np.float64)
    lo, hi = (-np.inf, np.inf) if valid_range is None else (float(valid_range[0]),
                                                            float(valid_range[1]))
    maxdepth = max(comp.maxdepth, 1)
    nb = len(prog_bands)

    def kernel(*arrays):
        if len(arrays) != nb:
            raise MissingBandError(f"formula {formula!r} needs {nb} band arrays")
        n = np.asarray(arrays[0]).size
        stack = np.empty((nb, n), dtype=np.float64)
        for j, a in enumerate(arrays):
            stack[j] = np.asarray(a, dtype=np.float64).reshape(-1)
        return _run_program(prog, consts, stack, lo, hi, maxdepth)

    def reference(*arrays):
        arrs = {b: np.asarray(a, dtype=np.float64) for b, a in zip(prog_bands, arrays)}
        with np.errstate(all="ignore"):
            v = np.asarray(_numpy_eval(tree, arrs), dtype=np.float64)
            v = np.broadcast_to(v, np.asarray(arrays[0]).shape).astype(np.float64)
        v = np.where(np.isfinite(v), v, np.nan)
        return np.where((v >= lo) & (v <= hi), v, np.nan)

    # non-finite results (overflow, exp) -> NaN in the kernel too
    def kernel_finite(*arrays):
        out = kernel(*arrays)
        out[~np.isfinite(out)] = np.nan
        return out

    return IndexSpec(
        name=name.strip().lower() if name else formula.strip(),
        bands=tuple(prog_bands), formula=formula.strip(), valid_range=(lo, hi),
        source=source, kernel=kernel_finite, reference=reference, description=description,
        builtin=False,
    )


def register_index(name: str, formula: str, bands: Iterable[str] | None = None,
                   valid_range: tuple[float, float] | None = None, *,
                   source: str = "user formula", description: str = "",
                   overwrite: bool = False) -> IndexSpec:
    """Compile ``formula`` (see :func:`custom_index`) and add it to :data:`INDICES`.

    Raises
    ------
    IndexFormulaError
        If the formula is not allowed, or ``name`` is taken by a built-in index, or taken
        by another custom index and ``overwrite`` is False.
    """
    key = str(name).strip().lower()
    if not key.isidentifier():
        raise IndexFormulaError(f"index name {name!r} must be an identifier like 'my_index'")
    spec = custom_index(formula, name=key, valid_range=valid_range, bands=bands,
                        source=source, description=description)
    with _REG_LOCK:
        old = INDICES.get(key)
        if old is not None and (old.builtin or not overwrite):
            raise IndexFormulaError(
                f"index name {key!r} is already registered"
                + (" as a built-in" if old.builtin else "; pass overwrite=True to replace it")
            )
        INDICES[key] = spec
    logger.info("registered custom index %r = %s", key, spec.formula)
    return spec


def unregister_index(name: str) -> None:
    """Remove a custom index from :data:`INDICES` (built-ins cannot be removed)."""
    key = str(name).strip().lower()
    with _REG_LOCK:
        spec = INDICES.get(key)
        if spec is None:
            return
        if spec.builtin:
            raise IndexFormulaError(f"{key!r} is a built-in index and cannot be removed")
        del INDICES[key]


# =============================================================================================
# Masks
# =============================================================================================
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


# =============================================================================================
# Per-field weighted statistics
# =============================================================================================
@njit(nogil=True)
def _weighted_stats(values, weights, offsets, mean, std, wsum):
    nf = offsets.shape[0] - 1
    for f in range(nf):
        s = offsets[f]
        e = offsets[f + 1]
        sw = 0.0
        swx = 0.0
        for k in range(s, e):
            w = weights[k]
            x = values[k]
            if w > 0.0 and x == x:
                sw += w
                swx += w * x
        if sw > 0.0:
            m = swx / sw
            ss = 0.0
            for k in range(s, e):
                w = weights[k]
                x = values[k]
                if w > 0.0 and x == x:
                    d = x - m
                    ss += w * d * d
            mean[f] = m
            std[f] = np.sqrt(ss / sw)
            wsum[f] = sw
        else:
            mean[f] = _nan
            std[f] = _nan
            wsum[f] = 0.0


@njit(nogil=True)
def _multi_field_stats(vals, fractions, valid, foot, offsets, min_frac, vsum, fsum, isum,
                       mean, std, wsum):
    """One pass over the CSR entries of every field for all indices at once.

    Weights are ``fraction`` where ``valid`` (and ``fraction >= min_frac``), per index also
    requiring a non-NaN value. Per field: valid weight ``vsum``, footprint weight ``fsum``,
    thresholded weight ``isum``; per index and field: weighted mean, population std and
    weight sum (NaN mean/std when the weight sum is 0). This is
    :func:`_multi_field_stats_sel` over every field with entries read directly (one kernel,
    so the in-memory and the reader paths share their arithmetic).
    """
    _multi_field_stats_sel(vals, np.arange(fractions.shape[0]), fractions, valid, foot, offsets,
                           np.arange(offsets.shape[0] - 1), min_frac, vsum, fsum, isum, mean,
                           std, wsum)


@njit(nogil=True)
def _weighted_stats_idx(values, index, weights, offsets, mean, std, wsum):
    nf = offsets.shape[0] - 1
    for f in range(nf):
        s = offsets[f]
        e = offsets[f + 1]
        sw = 0.0
        swx = 0.0
        for k in range(s, e):
            w = weights[k]
            x = values[np.uintp(index[k])]
            if w > 0.0 and x == x:
                sw += w
                swx += w * x
        if sw > 0.0:
            m = swx / sw
            ss = 0.0
            for k in range(s, e):
                w = weights[k]
                x = values[np.uintp(index[k])]
                if w > 0.0 and x == x:
                    d = x - m
                    ss += w * d * d
            mean[f] = m
            std[f] = np.sqrt(ss / sw)
            wsum[f] = sw
        else:
            mean[f] = _nan
            std[f] = _nan
            wsum[f] = 0.0


def weighted_field_stats(values, weights, offsets, *, index=None):
    """Per-field weighted mean, weighted population standard deviation and weight sum.

    Parameters
    ----------
    values : array_like of float64, shape (n,) or (m,) with ``index``
        Pixel values in CSR order (e.g. an index gathered at ``Coverage.rows/cols``).
        NaN values are skipped. With ``index``, entry ``k`` reads ``values[index[k]]``
        (e.g. values computed once per unique pixel), without materialising the gather.
    weights : array_like of float64, shape (n,)
        Weights, usually coverage fraction x validity (0 or 1). Weights <= 0 or NaN are
        skipped.
    offsets : array_like of int64, shape (n_fields + 1,)
        CSR offsets (``Coverage.offsets``).

    Returns
    -------
    mean, std, weight_sum : numpy.ndarray of float64, shape (n_fields,)
        ``mean = Σ w x / Σ w``; ``std = sqrt(Σ w (x - mean)² / Σ w)`` (population, same
        definition as exactextract's ``stdev`` with coverage weights); both NaN where
        ``weight_sum == 0``. ``weight_sum`` is in the units of ``weights`` (pixels).
    """
    v = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    w = np.ascontiguousarray(weights, dtype=np.float64).reshape(-1)
    o = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
    if index is not None:
        idx = np.ascontiguousarray(index, dtype=np.int64).reshape(-1)
        if idx.shape != w.shape:
            raise ValueError(f"index and weights differ in length ({idx.size} vs {w.size})")
        if idx.size and (idx.min() < 0 or idx.max() >= v.size):
            raise ValueError(f"index out of range for {v.size} values")
    elif v.shape != w.shape:
        raise ValueError(f"values and weights differ in length ({v.size} vs {w.size})")
    if o.size < 1 or o[0] != 0 or o[-1] != w.size or np.any(np.diff(o) < 0):
        raise ValueError("offsets must start at 0, be non-decreasing and end at len(weights)")
    nf = o.size - 1
    mean = np.empty(nf)
    std = np.empty(nf)
    wsum = np.empty(nf)
    if index is None:
        _weighted_stats(v, w, o, mean, std, wsum)
    else:
        _weighted_stats_idx(v, idx, w, o, mean, std, wsum)
    return mean, std, wsum


def weighted_field_stats_reference(values, weights, offsets):
    """Plain NumPy twin of :func:`weighted_field_stats` (for tests)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    o = np.asarray(offsets, dtype=np.int64)
    nf = len(o) - 1
    mean, std, wsum = np.full(nf, np.nan), np.full(nf, np.nan), np.zeros(nf)
    for f in range(nf):
        vv, ww = v[o[f]:o[f + 1]], w[o[f]:o[f + 1]]
        ok = (ww > 0) & ~np.isnan(vv)
        if ok.any():
            m = np.average(vv[ok], weights=ww[ok])
            mean[f] = m
            std[f] = np.sqrt(np.average((vv[ok] - m) ** 2, weights=ww[ok]))
            wsum[f] = ww[ok].sum()
    return mean, std, wsum


# =============================================================================================
# Row builder shared by zonal_stats and observations.field_observations
# =============================================================================================
def coverage_stats(cov: Coverage, refl: Mapping[str, np.ndarray], valid, *,
                   indices: Iterable[str] = ("ndvi",), footprint=None,
                   min_valid_fraction: float = 0.0, min_coverage_frac: float = 0.0,
                   include_empty: bool = False, id_col: str = "field_id"):
    """Per-field statistics from reflectances gathered at a coverage's pixels.

    Parameters
    ----------
    cov : Coverage
        Coverage fractions on the grid the reflectances were read on.
    refl : mapping
        Band -> float64 reflectance of shape ``(cov.nnz,)`` aligned with ``cov.rows/cols``
        (NaN for nodata).
    valid : array_like of bool, shape (cov.nnz,)
        Pixel validity (not masked by SCL, not nodata).
    indices : iterable of str
        Registered names or formulas.
    footprint : array_like of bool, shape (cov.nnz,), optional
        Pixels inside the scene's data footprint (not nodata). A field without any such
        pixel is flagged ``NO_OVERLAP`` rather than ``ALL_MASKED``. Default: all True.
    min_valid_fraction : float
        Rows whose ``valid_fraction`` is below this get NaN statistics and the flag
        ``LOW_VALID_FRACTION``.
    min_coverage_frac : float
        Pixels covered by less than this fraction get no weight in the index statistics
        (exactextract's ``min_coverage_frac``; ``coverage`` and ``valid_fraction`` still use
        every pixel). 0 (default) gives exact area weighting; 0.5 or 1.0 drop mixed edge
        pixels, which is closer to a field's own signal on small fields (docs/method.md).
        A field left without weight is flagged ``FIELD_TOO_SMALL``.
    include_empty : bool
        Also return rows for fields without any pixel on the grid (flag ``NO_OVERLAP``).
        Fields with invalid geometry always get a row (NaN, ``INVALID_GEOMETRY``).

    Returns
    -------
    pandas.DataFrame
        ``field_id, coverage, valid_fraction, <index>, <index>_std, n_pixels, n_pure,
        flags``; ``coverage`` in pixels, ``valid_fraction`` in [0, 1].
    """
    import pandas as pd

    indices = list(indices)
    specs = [get_index(i) for i in indices]
    names = [_column_name(i, sp) for i, sp in zip(indices, specs)]
    n = cov.nnz
    valid = np.asarray(valid, dtype=bool).reshape(-1)
    if valid.size != n:
        raise ValueError(f"valid has {valid.size} entries, coverage has {n}")
    nf = cov.n_fields
    covsum = cov.coverage
    foot = valid if footprint is None else np.asarray(footprint, dtype=bool).reshape(-1)
    if foot.size != n:
        raise ValueError(f"footprint has {foot.size} entries, coverage has {n}")
    mcf = float(min_coverage_frac)
    nidx = len(specs)
    vals = np.empty((nidx, n))
    for j, spec in enumerate(specs):
        if n:
            vals[j] = _apply(spec, refl).reshape(-1)
    vsum, fsum, isum = np.empty(nf), np.empty(nf), np.empty(nf)
    mean, std, wsum = np.empty((nidx, nf)), np.empty((nidx, nf)), np.empty((nidx, nf))
    _multi_field_stats(vals, cov.fractions, valid, foot, cov.offsets, _min_frac_threshold(mcf),
                       vsum, fsum, isum, mean, std, wsum)
    if footprint is None:
        fsum = covsum
    vfrac, bits, codes = _stat_bits(cov, None, vsum, fsum, isum, wsum, mean, std,
                                    min_valid_fraction, mcf)
    cols: dict[str, Any] = {
        id_col: cov.field_ids, "coverage": covsum, "valid_fraction": vfrac,
    }
    for j, name in enumerate(names):
        cols[name] = mean[j]
        cols[f"{name}_std"] = std[j]
    cols["n_pixels"] = cov.n_pixels
    cols["n_pure"] = cov.n_pure
    cols["flags"] = bits_to_flags(bits, codes)
    df = pd.DataFrame(cols)
    if not include_empty:
        invalid_geometry = np.int64(1) << codes.index("INVALID_GEOMETRY")
        keep = (cov.n_pixels > 0) | ((bits & invalid_geometry) != 0)
        if not keep.all():
            df = df.loc[keep].reset_index(drop=True)
    return df


@njit(nogil=True)
def _multi_field_stats_sel(vals_u, inv, fractions, valid_u, foot_u, offsets, fsel, min_frac,
                           vsum, fsum, isum, mean, std, wsum):
    """:func:`_multi_field_stats` for the fields ``fsel`` only, reading every CSR entry's
    value, validity and footprint through ``inv`` (entry -> unique pixel), so no per-entry
    arrays are built. Same arithmetic in the same order (identical results); output ``i``
    is field ``fsel[i]``.
    """
    nidx = vals_u.shape[0]
    swa = np.zeros(nidx)
    swxa = np.zeros(nidx)
    for i in range(fsel.shape[0]):
        f = fsel[i]
        s = offsets[f]
        e = offsets[f + 1]
        vs = 0.0
        fs = 0.0
        ws = 0.0
        for j in range(nidx):
            swa[j] = 0.0
            swxa[j] = 0.0
        # one pass for the weights and the weighted sums: every accumulator still adds
        # the same terms in the same order as _multi_field_stats
        for k in range(s, e):
            fr = fractions[k]
            u = np.uintp(inv[k])    # unsigned: numba emits no negative-index wraparound
            if foot_u[u]:
                fs += fr
            if valid_u[u]:
                vs += fr
                if fr >= min_frac:
                    ws += fr
                    for j in range(nidx):
                        x = vals_u[j, u]
                        if x == x:
                            swa[j] += fr
                            swxa[j] += fr * x
        vsum[i] = vs
        fsum[i] = fs
        isum[i] = ws
        for j in range(nidx):
            sw = swa[j]
            swx = swxa[j]
            if sw > 0.0:
                m = swx / sw
                ss = 0.0
                for k in range(s, e):
                    fr = fractions[k]
                    u = np.uintp(inv[k])
                    x = vals_u[j, u]
                    if valid_u[u] and fr >= min_frac and x == x:
                        d = x - m
                        ss += fr * d * d
                mean[j, i] = m
                std[j, i] = np.sqrt(ss / sw)
                wsum[j, i] = sw
            else:
                mean[j, i] = _nan
                std[j, i] = _nan
                wsum[j, i] = 0.0


def _min_frac_threshold(min_coverage_frac: float) -> float:
    """Kernel threshold for ``min_coverage_frac`` (inclusive up to float noise; -1: off)."""
    mcf = float(min_coverage_frac)
    return mcf - 1e-12 if mcf > 0 else -1.0


def _stat_bits(cov: Coverage, fsel: np.ndarray | None, vsum, fsum, isum, wsum, mean, std,
               min_valid_fraction: float = 0.0, min_coverage_frac: float = 0.0):
    """Valid fraction and flag bits of per-field sums (the rules of :func:`coverage_stats`).

    Parameters
    ----------
    cov : Coverage
    fsel : int array or None
        Field positions (rows of ``cov``) the sums are for; None: every field.
    vsum, fsum, isum : float arrays
        Per field: valid coverage, coverage inside the data footprint, and valid coverage
        of pixels passing ``min_coverage_frac`` (pixels).
    wsum, mean, std : float arrays, shape (n_indices, n)
        Per index: weight of finite values, weighted mean and std. Rows whose valid
        fraction is below ``min_valid_fraction`` get NaN ``mean``/``std`` (in place).

    Returns
    -------
    (valid_fraction, bits, codes)
        ``bits`` as in :meth:`Coverage.flag_bits` with ``codes``.
    """
    covsum = np.asarray(cov.coverage)
    npx = np.asarray(cov.n_pixels)
    codes, bits = _base_bits(cov)
    if fsel is not None:
        covsum, npx, bits = covsum[fsel], npx[fsel], bits[fsel]
    with np.errstate(invalid="ignore", divide="ignore"):
        vfrac = np.where(covsum > 0, vsum / np.where(covsum > 0, covsum, 1.0), np.nan)
    bit = {c: np.int64(1) << j for j, c in enumerate(codes)}
    has_px = npx > 0
    bits |= np.where(has_px & (fsum <= 0), bit["NO_OVERLAP"], 0)
    bits |= np.where(has_px & (fsum > 0) & (vsum <= 0), bit["ALL_MASKED"], 0)
    low = has_px & (vsum > 0) & (vfrac < float(min_valid_fraction))
    bits |= np.where(low, bit["LOW_VALID_FRACTION"], 0)
    if min_coverage_frac > 0:
        bits |= np.where(has_px & (vsum > 0) & (isum <= 0), bit["FIELD_TOO_SMALL"], 0)
    for j in range(wsum.shape[0]):
        bits |= np.where(has_px & (isum > 0) & (wsum[j] <= 0), bit["INVALID_INDEX"], 0)
        mean[j, low] = np.nan
        std[j, low] = np.nan
    return vfrac, bits, codes


@njit(nogil=True)
def _reflectance_valid(dn, inv, scale, offset, nodata, has_nodata, valid, out):
    """``out[i] = reflectance(dn[inv[i]])`` (``dn`` itself when ``inv`` is empty) with the
    arithmetic of :func:`reflectance` (float64 ``dn * scale + offset``, NaN where
    ``dn == nodata``), and ``valid[i] &= isfinite(out[i])``, in one pass."""
    n = out.shape[0]
    direct = inv.shape[0] == 0
    for i in range(n):
        d = dn[i] if direct else dn[np.uintp(inv[i])]   # unsigned: no wraparound code
        if has_nodata and d == nodata:
            v = _nan
        else:
            v = np.float64(d) * scale + offset
        out[i] = v
        if not np.isfinite(v):
            valid[i] = False


def _reflectance_valid_ref(dn, inv, scale, offset, nodata, valid):
    """NumPy twin of :func:`_reflectance_valid` (returns the reflectance, updates valid)."""
    d = dn if len(inv) == 0 else dn[inv]
    r = reflectance(d, scale, offset, nodata=nodata)
    valid &= np.isfinite(r)
    return r


_STAT_CODES = ("ALL_MASKED", "FIELD_TOO_SMALL", "INVALID_GEOMETRY", "INVALID_INDEX",
               "LOW_VALID_FRACTION", "NO_OVERLAP", "SUBPIXEL_FIELD")


def _base_bits(cov: Coverage) -> tuple[list[str], np.ndarray]:
    """Flag codes and a fresh copy of the coverage's per-field flag bits (cached)."""
    key = "stat_bits"
    if key not in cov._derived:
        present = {c for cell in set(cov.flags) for c in cell.split(",") if c}
        codes = sorted(set(_STAT_CODES) | present)
        cov._derived[key] = (codes, cov.flag_bits(codes))
    codes, bits = cov._derived[key]
    return codes, bits.copy()


def _column_name(requested: str, spec: IndexSpec) -> str:
    if isinstance(requested, IndexSpec):
        return requested.name
    key = str(requested).strip().lower()
    return key if key in INDICES else spec.name


# =============================================================================================
# zonal_stats from in-memory arrays
# =============================================================================================
def _nest_factor(shape, grid_shape, what: str) -> int:
    h, w = grid_shape
    sh = tuple(int(s) for s in shape)
    for f in (1, 2, 6):
        if sh == (-(-h // f), -(-w // f)):
            return f
    raise ValueError(
        f"{what} has shape {sh}, which does not nest in the grid {grid_shape}: give 10 m "
        "bands on the grid and 20 m / 60 m bands on the nested grid of shape "
        f"{(-(-h // 2), -(-w // 2))} / {(-(-h // 6), -(-w // 6))} (same origin)"
    )


def _per_band(value, band: str, default: float, what: str) -> float:
    if value is None:
        return default
    if isinstance(value, Mapping):
        canon = _canon_mapping(value)
        return float(canon.get(band, default))
    return float(value)


def zonal_stats(bands: Mapping[str, np.ndarray], grid, fields, *,
                indices: Iterable[str] = ("ndvi",), scl=None, scales=None, offsets=None,
                nodata=0, scl_classes: Iterable[int] | None = None, dilate: int = 0,
                min_valid_fraction: float = 0.0, min_coverage_frac: float = 0.0,
                id_col: str = "field_id", include_empty: bool = False,
                coverage: Coverage | None = None, times=None):
    """Coverage-weighted per-field index statistics from in-memory band arrays.

    Parameters
    ----------
    bands : mapping
        Band name or alias -> 2-D DN array. 10 m bands on ``grid``; 20 m bands may be given
        on their own grid at half the shape (same origin) and are up-mapped by the exact
        2 x 2 nesting (10 m pixel ``(r, c)`` reads 20 m pixel ``(r // 2, c // 2)``).
        3-D arrays ``(time, y, x)`` (all bands and ``scl`` with the same length) give one
        row per (field, time) with a ``time`` column; coverage is computed once.
    grid : Grid
        The 10 m grid (CRS, transform, shape).
    fields : geopandas.GeoDataFrame
        Field polygons with a CRS and unique ``id_col``.
    indices : iterable of str
        Registered index names or formulas.
    scl : 2-D array, optional
        Scene Classification Layer, on ``grid`` or at half its shape.
    scales, offsets : float or mapping band -> float, optional
        Radiometric scale (default 1e-4) and offset (default 0; -0.1 for baseline >= 04.00).
    nodata : number
        DN meaning no data (default 0); such pixels are invalid and outside the footprint.
    scl_classes : iterable of int, optional
        Invalid SCL classes (default :data:`DEFAULT_SCL_INVALID`).
    dilate : int
        Dilation of cloud/shadow classes in SCL pixels (see :func:`invalid_mask`).
    min_valid_fraction : float
        Minimum ``valid_fraction``; rows below get NaN values and ``LOW_VALID_FRACTION``.
    min_coverage_frac : float
        Ignore pixels covered by less than this fraction in the index statistics (see
        :func:`coverage_stats`); default 0 = exact area weighting (exactextract ``mean``).
    id_col : str
    include_empty : bool
        Also return rows (``NO_OVERLAP``) for fields that do not touch the grid.
    coverage : Coverage, optional
        Precomputed coverage on ``grid`` (else computed and cached).
    times : sequence, optional
        Labels of the time axis of 3-D inputs (default ``0..T-1``).

    Returns
    -------
    pandas.DataFrame
        One row per field that touches the grid: ``field_id, coverage`` (sum of fractions,
        pixels), ``valid_fraction`` (valid weight / coverage), ``<index>`` (weighted mean),
        ``<index>_std`` (weighted population std), ``n_pixels``, ``n_pure``, ``flags``
        (``NO_OVERLAP``, ``ALL_MASKED``, ``LOW_VALID_FRACTION``, ``INVALID_INDEX``,
        ``SUBPIXEL_FIELD``, ``FIELD_TOO_SMALL``, ``INVALID_GEOMETRY``). Weights are coverage
        fraction x validity; a NaN always comes with a flag.
    """
    indices = list(indices)
    specs = [get_index(i) for i in indices]
    need = sorted({b for s in specs for b in s.bands})
    given = {}
    for k, v in bands.items():
        given[canonical_band(k)] = v
    missing = [b for b in need if b not in given]
    if missing:
        raise MissingBandError(f"indices {indices} need bands {need}; missing {missing}")
    cov = coverage if coverage is not None else coverage_fractions(fields, grid, id_col=id_col)
    if cov.grid != grid:
        raise ValueError("coverage was computed on a different grid")
    ndims = {np.ndim(given[b]) for b in need} | ({np.ndim(scl)} if scl is not None else set())
    if 3 in ndims:
        return _zonal_stack(given, need, grid, fields, cov, times, indices=indices, scl=scl,
                            scales=scales, offsets=offsets, nodata=nodata,
                            scl_classes=scl_classes, dilate=dilate,
                            min_valid_fraction=min_valid_fraction,
                            min_coverage_frac=min_coverage_frac, id_col=id_col,
                            include_empty=include_empty)
    refl = {}
    foot = np.ones(cov.nnz, dtype=bool)
    for b in need:
        arr = np.asarray(given[b])
        if arr.ndim != 2:
            raise ValueError(f"band {b} must be a 2-D array, got shape {arr.shape}")
        f = _nest_factor(arr.shape, grid.shape, f"band {b}")
        dn = np.take(np.ascontiguousarray(arr).reshape(-1), cov.flat_index(f, arr.shape[1]))
        r = reflectance(dn, _per_band(scales, b, 1e-4, "scales"),
                        _per_band(offsets, b, 0.0, "offsets"), nodata)
        foot &= ~np.isnan(r)
        refl[b] = r
    valid = foot.copy()
    if scl is not None:
        s = np.asarray(scl)
        if s.ndim != 2:
            raise ValueError(f"scl must be a 2-D array, got shape {s.shape}")
        f = _nest_factor(s.shape, grid.shape, "scl")
        idx = cov.flat_index(f, s.shape[1])
        sg = np.take(np.ascontiguousarray(s).reshape(-1), idx)
        foot &= sg != 0
        d = int(dilate)
        if d < 0:
            raise ValueError(f"dilate must be >= 0 pixels, got {dilate!r}")
        win = cov.window()
        if d == 0 or win is None:
            bad = _scl_lookup(sg, _scl_lut(scl_classes))
        else:
            r0, c0 = max(win[0] // f - d, 0), max(win[1] // f - d, 0)
            r1 = min(-(-win[2] // f) + d, s.shape[0])
            c1 = min(-(-win[3] // f) + d, s.shape[1])
            m = invalid_mask(s[r0:r1, c0:c1], scl_classes, d)
            rr, cc = cov.coarse_pixels(f)
            bad = m[rr - r0, cc - c0]
        valid &= ~bad
        valid &= foot
    return coverage_stats(cov, refl, valid, indices=indices, footprint=foot,
                          min_valid_fraction=min_valid_fraction,
                          min_coverage_frac=min_coverage_frac, include_empty=include_empty,
                          id_col=id_col)


def _zonal_stack(given, need, grid, fields, cov, times, *, scl, **kw):
    """zonal_stats over a time stack: one 2-D call per time step, coverage reused."""
    import pandas as pd

    lengths = {len(given[b]) for b in need if np.ndim(given[b]) == 3}
    if scl is not None and np.ndim(scl) == 3:
        lengths.add(len(scl))
    bad = [b for b in need if np.ndim(given[b]) != 3] + \
        (["scl"] if scl is not None and np.ndim(scl) != 3 else [])
    if bad or len(lengths) != 1:
        raise ValueError("time stacks: every band (and scl) must be a 3-D (time, y, x) array "
                         f"of the same length; got 2-D {bad} and lengths {sorted(lengths)}")
    nt = lengths.pop()
    labels = list(range(nt)) if times is None else list(times)
    if len(labels) != nt:
        raise ValueError(f"times has {len(labels)} labels for {nt} time steps")
    frames = []
    for t in range(nt):
        df = zonal_stats({b: given[b][t] for b in need}, grid, fields,
                         scl=None if scl is None else scl[t], coverage=cov, **kw)
        df.insert(1, "time", [labels[t]] * len(df))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# =============================================================================================
# Internal measurement helpers (used for docs/method.md and the kernel timings; not public)
# =============================================================================================
def _parcel_mosaic(size_px: int = 200, *, seed: int = 0, sub: int = 10, mean_px: float = 40.0):
    """A smallholder landscape: Voronoi parcels (3-200 px) separated by ~1 m bunds, on a 10 m
    grid of ``size_px`` squared pixels, with a fine ``sub``-times sub-grid for rendering.
    Returns ``(grid, fields, fine_ids, fine_transform)``."""
    import geopandas as gpd
    import shapely
    from affine import Affine
    from rasterio.features import rasterize

    from ._geo import Grid

    rng = np.random.default_rng(seed)
    x0, y0, res = 500000.0, 4000000.0, 10.0
    g = Grid("EPSG:32650", Affine(res, 0, x0, 0, -res, y0), (size_px, size_px))
    n = int(size_px * size_px / mean_px)
    pts = shapely.multipoints(np.c_[rng.uniform(x0, x0 + size_px * res, n),
                                    rng.uniform(y0 - size_px * res, y0, n)])
    cells = shapely.get_parts(shapely.voronoi_polygons(
        pts, extend_to=shapely.box(x0, y0 - size_px * res, x0 + size_px * res, y0)))
    cells = shapely.intersection(cells, shapely.box(x0 + 5, y0 - size_px * res + 5,
                                                    x0 + size_px * res - 5, y0 - 5))
    cells = shapely.buffer(cells, -0.6, join_style="mitre")  # bunds and paths between plots
    area_px = shapely.area(cells) / (res * res)
    keep = (area_px >= 3) & (area_px <= 200) & shapely.is_valid(cells) & \
        (shapely.get_type_id(cells) == 3)
    cells = cells[keep]
    fields = gpd.GeoDataFrame({"field_id": np.arange(len(cells))}, geometry=cells,
                              crs="EPSG:32650")
    ft = Affine(res / sub, 0, x0, 0, -res / sub, y0)
    ids = rasterize(((c, i + 1) for i, c in enumerate(cells)),
                    out_shape=(size_px * sub, size_px * sub), transform=ft, fill=0,
                    dtype="int32")
    return g, fields, ids, ft


def _psf(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in pixels, edges replicated): a sensor PSF stand-in."""
    if sigma <= 0:
        return a
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        p = np.pad(a, [(r, r) if ax == axis else (0, 0) for ax in (0, 1)], mode="edge")
        a = sum(k[j] * np.take(p, np.arange(j, j + a.shape[axis]), axis=axis)
                for j in range(2 * r + 1))
    return a


def _centre_vs_exact(*, size_px: int = 200, n_dates: int = 6, seed: int = 0,
                     cloud: float = 0.2, psf_sigma: float = 0.5) -> dict:
    """Measure how exact coverage weighting differs from the pixel-centre rule, and how both
    compare with each parcel's own NDVI, on a rendered smallholder mosaic (docs/method.md).

    Each date gives every parcel its own NDVI (crop stage), adds within-parcel texture,
    renders red/NIR reflectance on a 1 m sub-grid (bunds at NDVI 0.2), averages reflectance
    to 10 m (linear mixing), blurs by a Gaussian PSF of ``psf_sigma`` 10 m pixels (Sentinel-2's
    MTF at Nyquist is ~0.2-0.3, i.e. sigma ~0.4-0.5 px) and masks ~``cloud`` of the 20 m SCL
    pixels.
    """
    import pandas as pd
    from rasterio.features import rasterize

    rng = np.random.default_rng(seed + 1)
    g, fields, ids, _ = _parcel_mosaic(size_px, seed=seed)
    h, w = g.shape
    sub = ids.shape[0] // h
    nf = len(fields)
    cov = coverage_fractions(fields, g, cache=False)
    labels = rasterize(((geom, i + 1) for i, geom in enumerate(fields.geometry)),
                       out_shape=g.shape, transform=g.transform, fill=0, dtype="int32")
    rows = []
    for d in range(n_dates):
        nd_parcel = np.concatenate([[0.2], rng.uniform(0.12, 0.9, nf)])
        nd_fine = np.clip(nd_parcel[ids] + rng.normal(0, 0.03, ids.shape), -0.2, 0.95)
        red_f = 0.03 + 0.12 * (1 - nd_fine) / 1.2
        nir_f = red_f * (1 + nd_fine) / (1 - nd_fine)
        red = _psf(red_f.reshape(h, sub, w, sub).mean(axis=(1, 3)), psf_sigma)
        nir = _psf(nir_f.reshape(h, sub, w, sub).mean(axis=(1, 3)), psf_sigma)
        # truth: NDVI of each parcel's own mean reflectance (fine pixels inside it)
        cnt = np.bincount(ids.ravel(), minlength=nf + 1)[1:]
        tr = np.bincount(ids.ravel(), weights=red_f.ravel(), minlength=nf + 1)[1:] / cnt
        tn = np.bincount(ids.ravel(), weights=nir_f.ravel(), minlength=nf + 1)[1:] / cnt
        truth = (tn - tr) / (tn + tr)
        dn = {"B04": np.round(red * 1e4 + 1000).astype(np.uint16),
              "B08": np.round(nir * 1e4 + 1000).astype(np.uint16)}
        cl = rng.random((h // 2, w // 2))
        scl = np.where(cl < cloud, 9, 4).astype(np.uint8)
        out = {}
        for label, mcf in (("exact", 0.0), ("half", 0.5), ("pure", 1.0)):
            df = zonal_stats(dn, g, fields, scl=scl, offsets=-0.1, coverage=cov,
                             min_coverage_frac=mcf, include_empty=True)
            out[label] = df["ndvi"].to_numpy()
        # pixel-centre rule: unweighted mean over valid pixels whose centre is inside
        ndvi = compute_index("ndvi", {"B04": reflectance(dn["B04"], 1e-4, -0.1),
                                      "B08": reflectance(dn["B08"], 1e-4, -0.1)})
        ok = ~invalid_mask(np.repeat(np.repeat(scl, 2, 0), 2, 1)) & ~np.isnan(ndvi) & \
            (labels > 0)
        s = np.bincount(labels[ok], weights=ndvi[ok], minlength=nf + 1)[1:]
        c = np.bincount(labels[ok], minlength=nf + 1)[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["centre"] = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        rows.append(pd.DataFrame({"date": d, "field_id": np.arange(nf),
                                  "area_px": cov.area_px, "truth": truth, **out}))
    t = pd.concat(rows, ignore_index=True)
    both = t.dropna(subset=["exact", "centre"])
    diff = (both["exact"] - both["centre"]).abs()
    size = pd.cut(both["area_px"], [0, 10, 50, 200], labels=["3-10 px", "10-50 px",
                                                              "50-200 px"])
    res = {
        "fields": nf, "field_dates": int(len(both)),
        "share_diff_gt_0.01": float((diff > 0.01).mean()),
        "median_abs_diff": float(diff.median()), "p95_abs_diff": float(diff.quantile(0.95)),
        "max_abs_diff": float(diff.max()),
        "share_by_size": {str(k): float(v) for k, v in
                          (diff > 0.01).groupby(size, observed=True).mean().items()},
        "n_no_centre_pixel": int(t["centre"].isna().sum() - t["exact"].isna().sum()),
    }
    for col in ("exact", "centre", "half", "pure"):
        e = (t[col] - t["truth"]).abs()
        res[f"mae_vs_truth_{col}"] = float(e.mean())
        res[f"coverage_{col}"] = float(t[col].notna().mean())
    return res


def _bench_kernels(*, n_fields: int = 20_000, size: int = 4096, n_dates: int = 24,
                   seed: int = 0, repeat: int = 3) -> dict:
    """Time coverage (cold, best of ``repeat``) for ``n_fields`` smallholder polygons of
    3-200 px on a ``size`` squared 10 m grid, then the per-date statistics (gather,
    reflectance, SCL mask, NDVI + EVI, weighted stats) for ``n_dates`` in-memory dates, and
    the statistics alone on pre-gathered pixels. Seconds, wall clock."""
    import time

    import geopandas as gpd
    import shapely
    from affine import Affine

    from ._geo import Grid

    rng = np.random.default_rng(seed)
    x0, y0, res = 500000.0, 4000000.0, 10.0
    g = Grid("EPSG:32650", Affine(res, 0, x0, 0, -res, y0), (size, size))
    area = rng.uniform(3, 200, n_fields) * res * res
    asp = rng.uniform(1, 4, n_fields)
    th = rng.uniform(0, np.pi, n_fields)
    cx = rng.uniform(x0 + 200, x0 + size * res - 200, n_fields)
    cy = rng.uniform(y0 - size * res + 200, y0 - 200, n_fields)
    k = 8
    ang = np.linspace(0, 2 * np.pi, k, endpoint=False)
    polys = []
    for i in range(n_fields):
        a = np.sqrt(area[i] * asp[i] / (0.5 * k * np.sin(2 * np.pi / k)))
        rr = rng.uniform(0.85, 1.0, k)
        x, y = a * rr * np.cos(ang), a / asp[i] * rr * np.sin(ang)
        ct, st = np.cos(th[i]), np.sin(th[i])
        polys.append(shapely.Polygon(np.c_[cx[i] + ct * x - st * y, cy[i] + st * x + ct * y]))
    fields = gpd.GeoDataFrame({"field_id": np.arange(n_fields)}, geometry=polys,
                              crs="EPSG:32650")
    coverage_fractions(fields.iloc[:5], g, cache=False)  # compile
    t_covs = []
    for _ in range(max(int(repeat), 1)):
        t0 = time.perf_counter()
        cov = coverage_fractions(fields, g, cache=False)
        t_covs.append(time.perf_counter() - t0)
    t_cov = min(t_covs)
    b = {"B02": rng.integers(1100, 2000, (size, size), dtype=np.uint16),
         "B04": rng.integers(1100, 3000, (size, size), dtype=np.uint16),
         "B08": rng.integers(2000, 6000, (size, size), dtype=np.uint16)}
    scl = rng.choice(np.array([4, 4, 4, 5, 8, 9, 3], np.uint8), (size // 2, size // 2))
    zonal_stats(b, g, fields.iloc[:5], scl=scl, offsets=-0.1, indices=("ndvi", "evi"))
    t0 = time.perf_counter()
    for _ in range(n_dates):
        zonal_stats(b, g, fields, scl=scl, offsets=-0.1, indices=("ndvi", "evi"),
                    coverage=cov)
    t_stats = time.perf_counter() - t0
    # the kernels alone on already-gathered pixels (what field_observations adds per date)
    rows, cols = cov.rows, cov.cols
    refl = {k2: reflectance(v[rows, cols], 1e-4, -0.1) for k2, v in b.items()}
    valid = ~invalid_mask(scl)[rows // 2, cols // 2]
    t_each = []
    for _ in range(n_dates):
        t0 = time.perf_counter()
        coverage_stats(cov, refl, valid, indices=("ndvi", "evi"))
        t_each.append(time.perf_counter() - t0)
    t_kern = float(np.sum(t_each))
    return {"n_fields": n_fields, "nnz": cov.nnz, "mean_px": float(cov.n_pixels.mean()),
            "coverage_s": t_cov, "coverage_s_median": float(np.median(t_covs)),
            "zonal_stats_s_per_date": t_stats / n_dates, "zonal_stats_s_total": t_stats,
            "coverage_stats_s_per_date": t_kern / n_dates,
            "coverage_stats_s_per_date_min": float(np.min(t_each)),
            "coverage_stats_s_total": t_kern}
