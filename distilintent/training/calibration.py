"""Confidence calibration and the fallback threshold, fitted on validation data and stored in the bundle."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilintent.core.bundle import Bundle, update_bundle
from distilintent.core.data import Example, load_examples
from distilintent.core.errors import DataError
from distilintent.core.metrics import choose_fallback_threshold, expected_calibration_error, fit_temperature, softmax


def calibrate(
    logits: np.ndarray,
    truth: Sequence[str],
    labels: Sequence[str],
    oos_label: str | None = None,
    in_scope_coverage: float = 0.97,
) -> dict[str, Any]:
    """Temperature scaling (NLL-optimal on these examples) and the fallback threshold.

    Examples whose label the model does not know are ignored for the temperature. With out-of-scope
    examples (``oos_label``) the threshold maximises in-scope accuracy + out-of-scope recall; without,
    it keeps ``in_scope_coverage`` of the predictions above it.
    """
    index = {label: position for position, label in enumerate(labels)}
    targets = np.asarray([index.get(label, -1) for label in truth])
    known = targets >= 0
    temperature = fit_temperature(logits[known], targets[known]) if known.sum() >= 10 else 1.0
    probs = softmax(logits, temperature)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    is_oos = np.asarray([label == oos_label for label in truth]) if oos_label else np.zeros(len(truth), bool)
    choice = choose_fallback_threshold(confidence, correct, is_oos if is_oos.any() else None, in_scope_coverage)
    raw = softmax(logits)
    return {
        "method": "temperature scaling on the validation split",
        "temperature": temperature,
        "fallback_threshold": choice["threshold"],
        "threshold_criterion": choice["criterion"],
        "ece_before": expected_calibration_error(raw.max(axis=1), raw.argmax(axis=1) == targets),
        "ece_after": expected_calibration_error(confidence, correct),
        "examples": len(truth),
        "oos_label": oos_label if oos_label in index else None,
    }


def recalibrate_bundle(
    bundle_path: str | Path,
    data: str | Path | Sequence[Example],
    split: str | None = "validation",
    backend: str = "torch",
    in_scope_coverage: float | None = None,
) -> dict[str, Any]:
    """Refit temperature and threshold of a bundle on labelled data and store them in its manifest."""
    from distilintent.training.evaluate import bundle_logits

    bundle = Bundle.open(bundle_path)
    examples = load_examples(data) if isinstance(data, (str, Path)) else list(data)
    chosen = [example for example in examples if split is None or example.split == split]
    if not chosen:
        raise DataError(f"no examples in split {split!r} to calibrate on")
    training = bundle.manifest.get("training") or {}
    oos_label = bundle.oos_label or training.get("oos_label")
    coverage = in_scope_coverage or training.get("in_scope_coverage", 0.97)
    logits, _ = bundle_logits(bundle.path, [example.text for example in chosen], backend)
    calibration = calibrate(logits, [example.label for example in chosen], bundle.labels, oos_label, coverage)

    def store(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        manifest["calibration"] = calibration
        return manifest

    update_bundle(bundle.path, store)
    return calibration
