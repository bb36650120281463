"""The result of classifying one text."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class IntentResult:
    """One text's classification.

    ``intent`` is the fallback name (``nlu_fallback`` by default) when ``is_fallback`` is true;
    ``ranking`` always holds the model's real top-k ``(label, confidence)`` pairs, best first.
    ``ood_score`` is the out-of-scope score the fallback decision used (higher: more out of scope;
    its kind is the detector's ``ood_method``), or None when no model ran (empty text).
    """

    text: str
    intent: str
    confidence: float
    ranking: tuple[tuple[str, float], ...]
    is_fallback: bool
    ood_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ranking"] = [[name, conf] for name, conf in self.ranking]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def to_rasa(self) -> dict[str, Any]:
        """Rasa's parse shape: ``{"intent": {"name", "confidence"}, "intent_ranking": [...]}``."""
        return {
            "intent": {"name": self.intent, "confidence": self.confidence},
            "intent_ranking": [{"name": name, "confidence": conf} for name, conf in self.ranking],
        }


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` largest probabilities and their label indices, best first (ties: lower index first).

    One ``argpartition`` for the batch, then a sort of the ``k`` candidates only.
    """
    probs = np.asarray(probs)
    if k < probs.shape[1]:
        candidates = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(probs.shape[1]), probs.shape)
    values = np.take_along_axis(probs, candidates, axis=1)
    order = np.lexsort((candidates, -values), axis=-1)
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(values, order, axis=1)
