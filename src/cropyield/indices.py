"""Vegetation-index registry: band names, reflectance, built-in indices and custom formulas.

Public entry points
-------------------
:func:`compute_index`
    An index (registered name or formula string) from a mapping band -> reflectance.
:func:`get_index`, :data:`INDICES`
    Look up an :class:`IndexSpec` (name, bands, formula, valid range, numba kernel, NumPy
    reference twin); ``INDICES`` is the registry.
:func:`register_index`, :func:`custom_index`, :func:`unregister_index`
    Add an index from a formula string such as ``"(B08 - B04) / (B08 + B04)"``.
:func:`reflectance`, :func:`canonical_band`
    DN -> surface reflectance; band aliases (``"nir"``, ``"red"`` ...) -> canonical names.

Every index has a numba kernel (``njit(nogil=True)``, elementwise, NaN for invalid
denominators, NaN inputs and values outside the index's valid range; never 0 and never an
exception for bad pixels) and a plain NumPy reference twin used by the tests. Custom indices
are parsed from formula strings with an :mod:`ast` allow-list (never ``eval``) and run by a
small numba stack machine. The built-in scalar functions, their NumPy twins and the
kernel factories live in :mod:`cropyield._index_kernels`.

The neighbouring stages live in their own modules: SCL masks and dilation in
:mod:`cropyield.masks`, per-field weighted statistics and ``zonal_stats`` in
:mod:`cropyield.zonal`. Their public names stay importable from here (``from
cropyield.indices import zonal_stats, invalid_mask`` keeps working; see the module
``__getattr__`` at the end).

Units: reflectances are dimensionless surface reflectance (``DN * scale + offset``);
every index is dimensionless.
"""

from __future__ import annotations

import ast
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._index_kernels import (  # built-in formulas: numba scalars + NumPy twins
    _f_evi, _f_evi2, _f_msavi2, _f_mtci, _f_ndvi, _f_ratio_m1, _f_savi, _make_kernel,
    _make_reference, _np_div, _np_evi, _np_evi2, _np_msavi2, _np_mtci, _np_nd, _np_ratio_m1,
    _np_savi, _nan,
)
from ._jit import njit
from ._log import logger
from .errors import IndexFormulaError, MissingBandError, UnknownIndexError
# masks import nothing from here: re-exported directly (public names of cropyield.indices)
from .masks import DEFAULT_SCL_INVALID, SCL_DILATE_CLASSES, dilate_mask, invalid_mask

if TYPE_CHECKING:  # pragma: no cover - resolved at run time by __getattr__ (end of module)
    from .zonal import coverage_stats, weighted_field_stats, zonal_stats  # noqa: F401

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
#: Largest magnitude of a numeric constant in a formula (reflectances are ~0..1; 1e6 leaves
#: room for DN scales such as 10000).
MAX_FORMULA_CONSTANT = 1e6
#: Largest magnitude of a ``**`` exponent; exponents must be numeric constants (x**1e35
#: overflows to inf on every pixel, a silent wrong number).
MAX_FORMULA_EXPONENT = 16.0


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

    def bound(self, node, what, rule):
        col = getattr(node, "col_offset", None)
        where = f" at column {col + 1}" if col is not None else ""
        raise IndexFormulaError(
            f"index formula {self.formula!r}: {what}{where} is out of bounds ({rule}); such "
            "values overflow to inf or 0 on every pixel. Rescale the formula (reflectances "
            "are about 0..1)"
        )

    def check_exponent(self, node):
        """``**`` exponents: a numeric constant, optionally negated, within the bound."""
        inner, sign = node, 1.0
        while isinstance(inner, ast.UnaryOp) and isinstance(inner.op, (ast.USub, ast.UAdd)):
            sign = -sign if isinstance(inner.op, ast.USub) else sign
            inner = inner.operand
        if not (isinstance(inner, ast.Constant) and isinstance(inner.value, (int, float))
                and not isinstance(inner.value, bool)):
            self.bound(node, "a non-constant exponent", "exponents must be numbers, e.g. "
                       "B08 ** 2 or B12 ** 0.5")
        try:
            e = sign * float(inner.value)
        except OverflowError:
            e = math.inf
        if not abs(e) <= MAX_FORMULA_EXPONENT:
            self.bound(node, f"exponent {str(inner.value)[:30]}",
                       f"|exponent| <= {MAX_FORMULA_EXPONENT:g}")

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
            if op == _OP_POW:
                self.check_exponent(node.right)
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
            try:
                fval = float(val)
            except OverflowError:
                fval = math.inf
            if not abs(fval) <= MAX_FORMULA_CONSTANT:
                self.bound(node, f"constant {str(val)[:30]}", f"|constant| <= "
                           f"{MAX_FORMULA_CONSTANT:g}")
            self.consts.append(fval)
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
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.Name):
        return arrays[canonical_band(node.id)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
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
    numeric constants (magnitude at most :data:`MAX_FORMULA_CONSTANT`), ``+ - * / **``
    (exponents: numeric constants of magnitude at most :data:`MAX_FORMULA_EXPONENT`), unary
    ``-``, parentheses and ``sqrt``, ``abs``,
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
# Compatibility: names that moved to cropyield.zonal
# =============================================================================================
# cropyield.zonal imports this module (registry, kernels), so importing it here at the top
# would be an import cycle; these names are resolved lazily on first access instead (PEP 562),
# keeping ``from cropyield.indices import zonal_stats`` (and the private helpers that
# cropyield.observations uses) working.
_ZONAL_NAMES = frozenset({
    "zonal_stats", "coverage_stats", "weighted_field_stats", "weighted_field_stats_reference",
    "_multi_field_stats", "_multi_field_stats_sel", "_weighted_stats", "_weighted_stats_idx",
    "_reflectance_valid", "_reflectance_valid_ref", "_min_frac_threshold", "_stat_bits",
    "_STAT_CODES", "_base_bits", "_column_name", "_nest_factor", "_per_band", "_zonal_stack",
})
# names this module used to import from cropyield.coverage (reachable as attributes before)
_COVERAGE_NAMES = frozenset({"Coverage", "bits_to_flags", "coverage_fractions"})


def __getattr__(name: str) -> Any:
    if name in _ZONAL_NAMES:
        from . import zonal

        return getattr(zonal, name)
    if name in _COVERAGE_NAMES:
        from . import coverage

        return getattr(coverage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _ZONAL_NAMES | _COVERAGE_NAMES)
