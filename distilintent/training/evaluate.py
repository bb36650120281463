"""Evaluate a bundle (or logits) on labelled data: accuracy, macro-F1, per-label scores, confusions,
out-of-scope metrics (recall/precision/F1 after the fallback rule, AUROC and FPR at 95 % TPR of every
out-of-scope score), calibration error; JSON report, a confusion-matrix and a reliability-diagram PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilintent.core.bundle import Bundle
from distilintent.core.data import Example, load_examples
from distilintent.core.errors import DataError
from distilintent.core.metrics import classification_report, expected_calibration_error, reliability_bins, softmax
from distilintent.core.ood import (
    EMBEDDING_METHODS,
    OOD_METHODS,
    ClassStatistics,
    auroc,
    fallback_mask,
    fpr_at_tpr,
    load_statistics,
    ood_scores,
)

FALLBACK_PREDICTION = "nlu_fallback"


def report_from_logits(
    logits: np.ndarray,
    y_true: Sequence[str],
    labels: Sequence[str],
    *,
    temperature: float = 1.0,
    threshold: float | None = None,
    oos_label: str | None = None,
    embeddings: np.ndarray | None = None,
    ood: dict[str, Any] | None = None,
    stats: ClassStatistics | None = None,
) -> dict[str, Any]:
    """Metrics of the argmax predictions, and of the predictions after fallback.

    The fallback rule is ``ood`` (a manifest's ``{"method", "threshold"}``) when given, else a top
    confidence under ``threshold``; predicting ``oos_label`` is always a fallback. After fallback, a
    prediction counts as out of scope (``oos_label``) when the data has out-of-scope examples, and as
    the fallback (always wrong) otherwise. With out-of-scope examples, ``ood_scores`` gives AUROC and
    FPR at 95 % TPR of every score the outputs allow.
    """
    probs = softmax(logits, temperature)
    top = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    predicted = [labels[index] for index in top]
    report = classification_report(y_true, predicted, oos_label)
    correct = np.asarray(predicted) == np.asarray(y_true)
    known = np.isin(np.asarray(y_true, dtype=object), np.asarray(list(labels), dtype=object))
    # calibration is measured where the right answer is one of the model's labels
    report["ece"] = expected_calibration_error(confidence[known], correct[known]) if known.any() else None
    report["reliability"] = reliability_bins(confidence[known], correct[known])
    in_scope = known & (np.asarray(y_true, dtype=object) != oos_label)
    if oos_label is not None and in_scope.any() and not in_scope.all():
        report["ece_in_scope"] = expected_calibration_error(confidence[in_scope], correct[in_scope])
    report["temperature"] = temperature
    oos_index = list(labels).index(oos_label) if oos_label in labels else -1
    has_oos = oos_label is not None and oos_label in set(y_true)
    methods = [name for name in OOD_METHODS
               if name not in EMBEDDING_METHODS or (embeddings is not None and stats is not None)]
    scores = {name: ood_scores(name, logits, embeddings, temperature=temperature, stats=stats, oos_index=oos_index)
              for name in methods}
    if has_oos:
        is_oos = np.asarray(y_true) == oos_label
        report["ood_scores"] = {name: {"auroc": auroc(values, is_oos), "fpr_at_95_tpr": fpr_at_tpr(values, is_oos)}
                                for name, values in scores.items()}
    rule = _fallback_rule(ood, threshold, methods)
    if rule is not None:
        method, cut = rule
        if ood and ood.get("method") == method:
            falls_back = fallback_mask(scores[method], cut, top, oos_index)
        else:  # the confidence threshold, compared as given (no 1 - x rounding)
            falls_back = (top == oos_index) | (confidence < float(threshold))
        fallback = oos_label if has_oos else FALLBACK_PREDICTION
        after = [fallback if fall else label for fall, label in zip(falls_back, predicted, strict=True)]
        scored = classification_report(y_true, after, oos_label if has_oos else None)
        keep = ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall", "oos_precision", "oos_f1")
        report["with_fallback"] = {
            "method": method,
            "threshold": cut if ood and ood.get("method") == method else threshold,
            "fallback_rate": float(np.mean(falls_back)),
            **{key: scored[key] for key in keep if key in scored},
        }
    return report


def _fallback_rule(ood: dict[str, Any] | None, threshold: float | None,
                   methods: Sequence[str]) -> tuple[str, float] | None:
    if ood and ood.get("method") in methods and ood.get("threshold") is not None:
        return ood["method"], float(ood["threshold"])
    if threshold is not None:
        return "msp", 1.0 - float(threshold)
    return None


def bundle_outputs(bundle_path: str | Path, texts: Sequence[str], backend: str = "auto",
                   precision: str = "auto") -> tuple[np.ndarray, np.ndarray | None, str]:
    """Logits, pooled embeddings (None when the variant was exported without them) and the variant name,
    from an exported runtime (``auto``: the SDK's choice) or from the torch weights (``torch``)."""
    bundle = Bundle.open(bundle_path)
    if backend != "torch" and bundle.variants:
        from distilintent.sdk import IntentDetector

        with IntentDetector(bundle.path, backend=backend, precision=precision) as detector:
            logits, embeddings = detector.outputs(texts)
            return logits, embeddings, detector.variant.name
    if backend not in ("auto", "torch"):
        raise DataError(f"{bundle.path} has no exported {backend} variant; run: distilintent export --model ...")
    from distilintent.training.inference import TorchPredictor

    logits, embeddings = TorchPredictor.from_bundle(bundle).outputs(texts)
    return logits, embeddings, "torch-fp32"


def bundle_logits(bundle_path: str | Path, texts: Sequence[str], backend: str = "auto",
                  precision: str = "auto") -> tuple[np.ndarray, str]:
    """Raw logits from an exported runtime (``auto``: the SDK's choice) or from the torch weights."""
    logits, _, variant = bundle_outputs(bundle_path, texts, backend, precision)
    return logits, variant


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
    logits, embeddings, variant = bundle_outputs(bundle.path, [example.text for example in chosen], backend,
                                                 precision)
    calibration = bundle.calibration
    report = report_from_logits(
        logits,
        [example.label for example in chosen],
        bundle.labels,
        temperature=float(calibration.get("temperature") or 1.0),
        threshold=calibration.get("fallback_threshold"),
        oos_label=oos_label,
        embeddings=embeddings,
        ood=bundle.manifest.get("ood"),
        stats=load_statistics(bundle),
    )
    unknown = sorted({example.label for example in chosen} - set(bundle.labels) - {oos_label})
    report.update({"model": str(bundle.path), "variant": variant, "split": split, "unknown_labels": unknown})
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        predicted = [bundle.labels[index] for index in logits.argmax(axis=1)]
        plot_confusion_matrix([example.label for example in chosen], predicted, out / "confusion_matrix.png")
        plot_reliability(report["reliability"], report["ece"], out / "reliability.png")
    return report


def plot_reliability(bins: Sequence[dict[str, float]], ece: float, path: Path) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    centres = [(row["low"] + row["high"]) / 2 for row in bins]
    widths = [row["high"] - row["low"] for row in bins]
    axes.bar(centres, [row["accuracy"] for row in bins], width=widths, edgecolor="black", alpha=0.7,
             label="accuracy in bin")
    axes.plot([row["confidence"] for row in bins], [row["accuracy"] for row in bins], "o", color="tab:red",
              markersize=3, label="mean confidence")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (calibrated top probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"reliability diagram (ECE {ece:.3f}, 15 bins)")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


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
