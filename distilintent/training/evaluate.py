"""Evaluate a bundle (or logits) on labelled data: accuracy, macro-F1, per-label scores, confusions,
out-of-scope metrics, calibration error; JSON report and a confusion-matrix PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilintent.core.bundle import Bundle
from distilintent.core.data import Example, load_examples
from distilintent.core.errors import DataError
from distilintent.core.metrics import classification_report, expected_calibration_error, softmax

FALLBACK_PREDICTION = "nlu_fallback"


def report_from_logits(
    logits: np.ndarray,
    y_true: Sequence[str],
    labels: Sequence[str],
    *,
    temperature: float = 1.0,
    threshold: float | None = None,
    oos_label: str | None = None,
) -> dict[str, Any]:
    """Metrics of the argmax predictions, and (with ``threshold``) of the predictions after fallback.

    After fallback, a low-confidence prediction counts as out of scope (``oos_label``) when the data
    has out-of-scope examples, and as the fallback (always wrong) otherwise.
    """
    probs = softmax(logits, temperature)
    top = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    predicted = [labels[index] for index in top]
    report = classification_report(y_true, predicted, oos_label)
    report["ece"] = expected_calibration_error(confidence, np.asarray(predicted) == np.asarray(y_true))
    report["temperature"] = temperature
    if threshold is not None:
        has_oos = oos_label is not None and oos_label in set(y_true)
        fallback = oos_label if has_oos else FALLBACK_PREDICTION
        after = [fallback if conf < threshold else label for conf, label in zip(confidence, predicted, strict=True)]
        scored = classification_report(y_true, after, oos_label if has_oos else None)
        keep = ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall", "oos_precision", "oos_f1")
        report["with_fallback"] = {
            "threshold": threshold,
            "fallback_rate": float(np.mean(confidence < threshold)),
            **{key: scored[key] for key in keep if key in scored},
        }
    return report


def bundle_logits(bundle_path: str | Path, texts: Sequence[str], backend: str = "auto",
                  precision: str = "auto") -> tuple[np.ndarray, str]:
    """Raw logits from an exported runtime (``auto``: the SDK's choice) or from the torch weights."""
    bundle = Bundle.open(bundle_path)
    if backend != "torch" and bundle.variants:
        from distilintent.sdk import IntentDetector

        with IntentDetector(bundle.path, backend=backend, precision=precision) as detector:
            return detector.logits(list(texts)), detector.variant.name
    if backend not in ("auto", "torch"):
        raise DataError(f"{bundle.path} has no exported {backend} variant; run: distilintent export --model ...")
    from distilintent.training.inference import TorchPredictor

    return TorchPredictor.from_bundle(bundle).logits(texts), "torch-fp32"


def evaluate_bundle(
    bundle_path: str | Path,
    data: str | Path | Sequence[Example],
    split: str | None = "test",
    out_dir: str | Path | None = None,
    backend: str = "auto",
    oos_label: str | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Evaluate a bundle on ``split`` of a data file (all examples when the data has no such split)."""
    bundle = Bundle.open(bundle_path)
    examples = load_examples(data) if isinstance(data, (str, Path)) else list(data)
    chosen = [example for example in examples if split is None or example.split == split]
    if not chosen:
        if any(example.split for example in examples):
            raise DataError(f"no examples in split {split!r} of {data}")
        chosen = examples
    oos_label = oos_label or bundle.oos_label or bundle.manifest.get("training", {}).get("oos_label")
    logits, variant = bundle_logits(bundle.path, [example.text for example in chosen], backend, precision)
    calibration = bundle.calibration
    report = report_from_logits(
        logits,
        [example.label for example in chosen],
        bundle.labels,
        temperature=float(calibration.get("temperature") or 1.0),
        threshold=calibration.get("fallback_threshold"),
        oos_label=oos_label,
    )
    unknown = sorted({example.label for example in chosen} - set(bundle.labels) - {oos_label})
    report.update({"model": str(bundle.path), "variant": variant, "split": split, "unknown_labels": unknown})
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        predicted = [bundle.labels[index] for index in logits.argmax(axis=1)]
        plot_confusion_matrix([example.label for example in chosen], predicted, out / "confusion_matrix.png")
    return report


def plot_confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix as a PNG (labels shown when there are few enough to read)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(set(y_true) | set(y_pred))
    index = {name: position for position, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)))
    for true, pred in zip(y_true, y_pred, strict=True):
        matrix[index[true], index[pred]] += 1
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.25 * len(names), 30)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 60:
        axes.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        axes.set_yticks(range(len(names)), names, fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("confusion matrix (row-normalised)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
