"""The fallback rule: when a prediction becomes the fallback intent (numpy only).

One rule object decides for the SDK, the Rasa component, the server, ``evaluate`` and ``calibrate``:
a prediction falls back when the model's top label is the bundle's out-of-scope label, or when its
out-of-scope score (:mod:`distilintent.core.ood`) is over the threshold. The manifest holds the rule
once, as ``ood: {"method", "threshold", ...}``; bundles written before it (only
``calibration.fallback_threshold``, a minimum confidence) load as the equivalent ``msp`` rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from distilintent.core.ood import (
    EMBEDDING_METHODS,
    OOD_METHODS,
    STATS_FILE,
    ClassStatistics,
    load_statistics,
    ood_scores,
)


@dataclass(frozen=True)
class FallbackRule:
    """``method``'s out-of-scope score over ``threshold`` (None: never by score), or the ``oos_index`` label.

    ``msp`` rules given as a minimum confidence (``min_confidence``) compare the temperature-calibrated top
    probability with it as given, so that ``0.7`` means exactly "confidence under 0.7".
    """

    method: str = "msp"
    threshold: float | None = None
    temperature: float = 1.0
    oos_index: int = -1
    stats: ClassStatistics | None = None
    min_confidence: float | None = None

    def __post_init__(self) -> None:
        if self.method not in OOD_METHODS:
            raise ValueError(f"unknown out-of-scope method {self.method!r}; expected one of {', '.join(OOD_METHODS)}")
        if self.method in EMBEDDING_METHODS and self.stats is None:
            raise ValueError(f"the {self.method} rule needs the bundle's class statistics")
        if self.min_confidence is not None and self.method != "msp":
            raise ValueError("min_confidence is a rule on the msp score only")

    @classmethod
    def minimum_confidence(cls, confidence: float, temperature: float = 1.0, oos_index: int = -1) -> FallbackRule:
        """Fall back when the top calibrated confidence is under ``confidence`` (between 0 and 1)."""
        if not 0.0 <= float(confidence) <= 1.0:
            raise ValueError(f"a confidence threshold must be between 0 and 1, got {confidence!r}")
        return cls("msp", 1.0 - float(confidence), temperature, oos_index, min_confidence=float(confidence))

    @classmethod
    def from_ood(cls, ood: Mapping[str, Any], *, temperature: float = 1.0, oos_index: int = -1,
                 stats: ClassStatistics | None = None) -> FallbackRule:
        """The rule of a manifest's ``ood`` entry (``{"method", "threshold", ...}``)."""
        return cls(ood["method"], None if ood.get("threshold") is None else float(ood["threshold"]), temperature,
                   oos_index, stats if ood["method"] in EMBEDDING_METHODS else None)

    @classmethod
    def from_bundle(cls, bundle: Any, *, has_embedding: bool = True, where: str = "") -> FallbackRule:
        """The bundle's rule; an embedding rule on a variant without embeddings becomes the bundle's
        ``msp`` rule measured on the same validation data (with a warning naming ``where``)."""
        labels = bundle.labels
        oos_index = labels.index(bundle.oos_label) if bundle.oos_label in labels else -1
        temperature = float(bundle.calibration.get("temperature") or 1.0)
        stored: Mapping[str, Any] = bundle.manifest.get("ood") or {}
        method = stored.get("method")
        if method in OOD_METHODS and stored.get("threshold") is not None:
            if method not in EMBEDDING_METHODS:
                return cls.from_ood(stored, temperature=temperature, oos_index=oos_index)
            if has_embedding:
                stats = load_statistics(bundle, stored.get("stats") or STATS_FILE)
                if stats is None:
                    from distilintent.core.errors import BundleError

                    raise BundleError(f"{bundle.path}: the {method} out-of-scope rule needs "
                                      f"{stored.get('stats') or STATS_FILE}, which the bundle does not list")
                return cls.from_ood(stored, temperature=temperature, oos_index=oos_index, stats=stats)
            msp = (stored.get("validation") or {}).get("msp") or {}
            warnings.warn(f"{where or bundle.path}: no 'sentence_embedding' output for the {method} out-of-scope "
                          "score (re-export the bundle); using the msp rule fitted on the same validation data",
                          stacklevel=3)
            if msp.get("threshold") is not None:
                return cls("msp", float(msp["threshold"]), temperature, oos_index)
        legacy = bundle.calibration.get("fallback_threshold")  # bundles written before the one rule
        if legacy is not None:
            return cls.minimum_confidence(float(legacy), temperature, oos_index)
        return cls("msp", None, temperature, oos_index)

    def with_confidence(self, confidence: float) -> FallbackRule:
        """This rule's temperature and out-of-scope label with a plain minimum confidence instead."""
        return FallbackRule.minimum_confidence(confidence, self.temperature, self.oos_index)

    def scores(self, logits: np.ndarray, embeddings: np.ndarray | None = None) -> np.ndarray:
        """The out-of-scope scores (higher: more out of scope) of a batch."""
        return ood_scores(self.method, logits, embeddings, temperature=self.temperature, stats=self.stats,
                          oos_index=self.oos_index)

    def mask(self, scores: np.ndarray, top: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
        """True where the prediction (argmax ``top``, calibrated top probability ``confidence``) falls back."""
        falls_back = np.asarray(top) == self.oos_index if self.oos_index >= 0 else np.zeros(len(scores), bool)
        if self.min_confidence is not None:
            if confidence is None:
                confidence = 1.0 - np.asarray(scores)
            return falls_back | (np.asarray(confidence) < self.min_confidence)
        if self.threshold is not None:
            falls_back = falls_back | (np.asarray(scores) > self.threshold)
        return falls_back

    def decide(self, logits: np.ndarray, embeddings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and fallback mask of a batch of raw logits (and embeddings, for the distance scores)."""
        logits = np.asarray(logits)
        scores = self.scores(logits, embeddings)
        scaled = logits / self.temperature
        scaled = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        confidence = scaled.max(axis=1) / scaled.sum(axis=1)
        return scores, self.mask(scores, logits.argmax(axis=1), confidence)

    def describe(self) -> dict[str, Any]:
        """What the rule is, for logs, ``/status`` and reports."""
        return {"method": self.method, "threshold": self.threshold, "min_confidence": self.min_confidence,
                "temperature": self.temperature, "oos_label_index": self.oos_index if self.oos_index >= 0 else None}
