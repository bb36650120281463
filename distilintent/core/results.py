"""The result of classifying one text."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
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
