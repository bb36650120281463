"""Lazy imports of optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from distilintent.core.errors import MissingExtraError


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'distilintent[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        what = purpose or f"'{module}'"
        raise MissingExtraError(
            f"{what} needs the optional dependency '{module}', which is not installed: "
            f"pip install 'distilintent[{extra}]'"
        ) from err
