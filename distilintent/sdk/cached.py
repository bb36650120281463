"""``detect_intent(text)``: one cached :class:`IntentDetector` per bundle path, created on first use."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from distilintent.core.results import IntentResult
from distilintent.sdk.detector import IntentDetector

MODEL_ENV = "DISTILINTENT_MODEL"

_detectors: dict[str, IntentDetector] = {}
_lock = threading.Lock()


def get_detector(model: str | os.PathLike[str] | None = None) -> IntentDetector:
    """The cached detector for ``model`` (a bundle path), else for ``$DISTILINTENT_MODEL``.

    Loaded once per resolved path, thread-safely; the cache is not refreshed when the bundle changes on
    disk (call :func:`clear_cache`).
    """
    if model is None:
        model = os.environ.get(MODEL_ENV) or None
        if model is None:
            raise ValueError(f"no model given: pass model='path/to/bundle' or set the {MODEL_ENV} environment "
                             "variable")
    key = str(Path(model).expanduser().resolve())
    detector = _detectors.get(key)
    if detector is None:
        with _lock:
            detector = _detectors.get(key)
            if detector is None:
                detector = _detectors[key] = IntentDetector(key)
    return detector


def detect_intent(text: str, model: str | os.PathLike[str] | None = None) -> IntentResult:
    """Classify ``text`` with the bundle at ``model`` (default: ``$DISTILINTENT_MODEL``), loaded once."""
    return get_detector(model).detect(text)


def clear_cache() -> None:
    """Close and forget every cached detector."""
    with _lock:
        detectors = list(_detectors.values())
        _detectors.clear()
    for detector in detectors:
        detector.close()
