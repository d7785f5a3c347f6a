"""Imports flow one way: the layer table of docs/architecture.md checked against the code.

Every module under ``src/cropyield`` is parsed with :mod:`ast`; each module belongs to the
layer of the longest ``cropyield.X`` name in the table that equals it or is a dotted prefix of
it (the bare ``cropyield`` row covers only the package ``__init__``). An import of a module in
a higher layer fails the test, and so does a module missing from the table. Imports inside a
function named ``__getattr__`` (lazy compatibility shims) and under ``if TYPE_CHECKING:`` are
exempt. Names in the table that do not exist yet (planned modules) are allowed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "architecture.md"
PKG = "cropyield"


# --------------------------------------------------------------------------------------------
# The checker (plain functions, so that the tests below can also run it on a made-up package)
# --------------------------------------------------------------------------------------------

def parse_layer_table(text: str) -> dict[str, int]:
    """``{module name: layer}`` from the markdown table whose header starts ``| layer |``."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines)
                  if re.match(r"^\|\s*layer\s*\|\s*modules?\s*\|", ln, re.I)), None)
    if start is None:
        raise AssertionError(f"{DOC.name}: no table with a header '| layer | modules | role |'")
    layers: dict[str, int] = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            raise AssertionError(f"{DOC.name}: malformed layer row {ln!r}")
        names = re.findall(r"`([A-Za-z_][\w.]*)`", cells[1])
        if not names:
            raise AssertionError(f"{DOC.name}: layer {cells[0]} lists no `cropyield...` module")
        for name in names:
            if name != PKG and not name.startswith(PKG + "."):
                raise AssertionError(f"{DOC.name}: {name!r} is not a cropyield module name")
            if name in layers:
                raise AssertionError(f"{DOC.name}: {name} appears in two rows")
            layers[name] = int(cells[0])
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """Layer of ``module``: longest table name equal to it or a dotted prefix of it."""
    best = None
    for name, layer in layers.items():
        if module == name or (name != PKG and module.startswith(name + ".")):
            if best is None or len(name) > len(best):
                best = name
    return None if best is None else layers[best]


def module_files(src: Path, pkg: str = PKG) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of the package."""
    out = {}
    for path in sorted((src / pkg).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST):
    """Import nodes, skipping ``__getattr__`` bodies and ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "__getattr__":
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(module: str, path: Path, known: set[str]):
    """``(line, target module)`` for every cropyield import of ``module`` (file ``path``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from pkg import sub` imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for target in targets:
            if target == PKG or target.startswith(PKG + "."):
                yield node.lineno, target


def check(src: Path, table: dict[str, int], pkg: str = PKG) -> list[str]:
    """Problems found: modules missing from the table and upward imports."""
    files = module_files(src, pkg)
    known = set(files)
    problems = []
    for module, path in files.items():
        rel = path.relative_to(src.parent) if src.parent in path.parents else path
        mine = layer_of(module, table)
        if mine is None:
            problems.append(f"{rel}: module {module} is not in the layer table of "
                            f"docs/architecture.md; add it to the row of its layer")
            continue
        for line, target in imported_modules(module, path, known):
            theirs = layer_of(target, table)
            if theirs is None:
                if target in known:  # reported above as missing
                    continue
                problems.append(f"{rel}:{line}: {module} imports {target}, which is not in the "
                                f"layer table of docs/architecture.md")
            elif theirs > mine:
                problems.append(f"{rel}:{line}: upward import: {module} (layer {mine}) imports "
                                f"{target} (layer {theirs}); move the shared code to a lower layer "
                                f"(a __getattr__ shim may re-export it under its old path)")
    return problems


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def table():
    return parse_layer_table(DOC.read_text(encoding="utf-8"))


def test_imports_flow_down_the_layer_table(table):
    problems = check(SRC, table)
    assert not problems, "\n" + "\n".join(problems)


def test_layer_table_shape(table):
    base = {f"{PKG}.{m}" for m in ("_geo", "_log", "_deadline", "_io", "_jit", "_extras",
                                   "_version", "errors")}
    assert {table[m] for m in base} == {min(table.values())}, "the private helpers are the bottom layer"
    assert all(table[m] > min(table.values()) for m in table if m not in base)
    # the stages of the pipeline keep their order
    order = ["catalogs", "observations", "series", "seasons", "yieldmodel", "value", "credit",
             "pipeline", "demo", "cli"]
    levels = [table[f"{PKG}.{m}"] for m in order]
    assert levels == sorted(levels), dict(zip(order, levels))
    assert table[f"{PKG}.testing"] == max(table.values()), "nothing in the library imports testing"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_checker_finds_upward_and_missing_and_honours_exemptions(tmp_path):
    pkg = "cropyield"
    _write(tmp_path, f"{pkg}/__init__.py", "from .low import x\n")
    _write(tmp_path, f"{pkg}/errors.py", "")
    _write(tmp_path, f"{pkg}/low.py",
           "from typing import TYPE_CHECKING\n"
           "import numpy\n"
           "from . import errors\n"
           "if TYPE_CHECKING:\n"
           "    from .high import y\n"
           "def __getattr__(name):\n"
           "    from .high import y\n"
           "    return y\n"
           "def f():\n"
           "    from .high import z\n")
    _write(tmp_path, f"{pkg}/high/__init__.py", "from ._impl import y\nfrom .. import low\n")
    _write(tmp_path, f"{pkg}/high/_impl.py", "from cropyield.low import x\ny = 1\n")
    _write(tmp_path, f"{pkg}/orphan.py", "")
    table = {"cropyield.errors": 0, "cropyield.low": 1, "cropyield.high": 2, "cropyield": 3}
    problems = check(tmp_path, table)
    upward = [p for p in problems if "upward import" in p]
    assert len(upward) == 1, problems
    assert "low.py:10:" in upward[0]  # the function-level import, not the exempt ones
    assert "cropyield.low (layer 1) imports cropyield.high (layer 2)" in upward[0]
    missing = [p for p in problems if "not in the layer table" in p]
    assert len(missing) == 1 and "cropyield.orphan" in missing[0], problems
    assert len(problems) == 2

    # `from . import sub` resolves to the submodule; the bare package row covers only itself
    _write(tmp_path, f"{pkg}/errors.py", "from . import high\n")
    problems = check(tmp_path, table)
    assert any("cropyield.errors (layer 0) imports cropyield.high (layer 2)" in p for p in problems)
    assert layer_of("cropyield.high._impl", table) == 2
    assert layer_of("cropyield.other", table) is None


def test_layer_table_parser_rejects_a_malformed_table():
    with pytest.raises(AssertionError, match="no table"):
        parse_layer_table("nothing here")
    with pytest.raises(AssertionError, match="two rows"):
        parse_layer_table("| layer | modules | role |\n|---|---|---|\n"
                          "| 0 | `cropyield.errors` | a |\n| 1 | `cropyield.errors` | b |\n")
    with pytest.raises(AssertionError, match="not a cropyield module"):
        parse_layer_table("| layer | modules | role |\n|---|---|---|\n| 0 | `numpy` | a |\n")
