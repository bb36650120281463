"""Classification metrics and confidence calibration in numpy (no scikit-learn needed)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def classification_report(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    oos_label: str | None = None,
    top_confusions: int = 10,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label scores, most confused pairs; out-of-scope metrics when
    ``oos_label`` occurs in ``y_true``.

    A prediction of ``oos_label`` means "out of scope" (the model's own class or a fallback).
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no examples to evaluate")
    true = np.asarray(y_true, dtype=object)
    pred = np.asarray(y_pred, dtype=object)
    labels = sorted(set(y_true) | set(y_pred))
    per_label: dict[str, dict[str, float]] = {}
    for label in labels:
        tp = int(np.sum((true == label) & (pred == label)))
        predicted = int(np.sum(pred == label))
        support = int(np.sum(true == label))
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    scored = [label for label in labels if per_label[label]["support"] > 0]
    confusions = Counter((t, p) for t, p in zip(y_true, y_pred, strict=True) if t != p)
    report: dict[str, Any] = {
        "n": len(y_true),
        "accuracy": float(np.mean(true == pred)),
        "macro_f1": float(np.mean([per_label[label]["f1"] for label in scored])),
        "per_label": per_label,
        "confused_pairs": [
            {"true": t, "predicted": p, "count": count} for (t, p), count in confusions.most_common(top_confusions)
        ],
    }
    if oos_label is not None and oos_label in set(y_true):
        report.update(oos_metrics(true == oos_label, pred == oos_label, true == pred))
    return report


def oos_metrics(is_oos: np.ndarray, predicted_oos: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """In-scope accuracy and out-of-scope recall/precision/F1 from boolean arrays."""
    in_scope = ~is_oos
    caught = int(np.sum(is_oos & predicted_oos))
    recall = caught / max(int(is_oos.sum()), 1)
    precision = caught / int(predicted_oos.sum()) if predicted_oos.any() else 0.0
    return {
        "in_scope_accuracy": float(np.mean(correct[in_scope])) if in_scope.any() else 0.0,
        "oos_recall": recall,
        "oos_precision": precision,
        "oos_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }


def reliability_bins(confidences: np.ndarray, correct: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per non-empty equal-width confidence bin: count, mean confidence, accuracy (a reliability diagram)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidences > low) & (confidences <= high)
        if inside.any():
            rows.append({"low": float(low), "high": float(high), "count": int(inside.sum()),
                         "confidence": float(confidences[inside].mean()), "accuracy": float(correct[inside].mean())})
    return rows


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins."""
    total = len(confidences)
    return float(sum(row["count"] / total * abs(row["confidence"] - row["accuracy"])
                     for row in reliability_bins(confidences, correct, bins)))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood (golden-section search on log T)."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)

    def nll(log_t: float) -> float:
        probs = softmax(logits, float(np.exp(log_t)))
        return float(-np.mean(np.log(probs[np.arange(len(targets)), targets] + 1e-12)))

    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return float(np.exp((low + high) / 2))
