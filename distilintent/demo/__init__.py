"""A small demo assistant shipped with the package: ``nlu.yml`` (training) and ``test.yml`` (held out)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_FILES = {"demo": "nlu.yml", "demo-test": "test.yml"}


def resolve_data_path(name: str) -> Path:
    """``demo``/``demo-test`` name the bundled demo data; anything else is a path."""
    if name in DEMO_FILES:
        return Path(str(resources.files("distilintent.demo") / DEMO_FILES[name]))
    return Path(name)
