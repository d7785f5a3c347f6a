"""Lazy imports of optional dependencies with an ImportError that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise an ImportError telling which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        why = f" for {purpose}" if purpose else ""
        raise ImportError(
            f"{module} is needed{why}; install it with: pip install 'cropyield[{extra}]'"
        ) from exc
