"""Serving without torch: numpy, tokenizers and ONNX Runtime or OpenVINO.

    from distilintent import sdk

    sdk.detect_intent("book a table for two", model="path/to/bundle")   # cached per path

    with sdk.IntentDetector("path/to/bundle", fallback_threshold=0.5) as detector:
        result = detector.detect("wake me up at 7")
        result.intent, result.confidence, result.ranking, result.to_rasa()
"""

from __future__ import annotations

from distilintent.core.results import IntentResult
from distilintent.sdk.cached import MODEL_ENV, clear_cache, detect_intent, get_detector
from distilintent.sdk.detector import IntentDetector
from distilintent.sdk.variants import AUTO_ORDER

__all__ = ["AUTO_ORDER", "MODEL_ENV", "IntentDetector", "IntentResult", "clear_cache", "detect_intent",
           "get_detector"]
