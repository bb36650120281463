"""Skip a test for a missing optional component on a developer's partial machine; fail it in CI.

CI (``.ci/run``) sets ``DISTILINTENT_REQUIRE_ALL=1``: there every component a test needs was installed, so a
missing one is a broken setup and must fail the run instead of hiding behind a skip.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REQUIRE_ALL_VARIABLE = "DISTILINTENT_REQUIRE_ALL"


def required() -> bool:
    """True where every optional component must be present (CI)."""
    return os.environ.get(REQUIRE_ALL_VARIABLE, "") not in ("", "0")


def missing(reason: str) -> NoReturn:
    """Skip (a developer's machine) or fail (CI) the calling test or module with ``reason``."""
    if required():
        pytest.fail(f"{reason} ({REQUIRE_ALL_VARIABLE}=1: a required component is missing)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need_module(name: str) -> ModuleType:
    """``import name``, or :func:`missing` naming it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing(f"needs {name} ({err})")


def need_path(path: Path, what: str) -> Path:
    """``path`` if it exists, else :func:`missing` naming ``what``."""
    if not path.exists():
        missing(f"needs {what} at {path}")
    return path
