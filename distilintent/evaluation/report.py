"""Evaluate a bundle (or logits) on labelled data: accuracy, macro-F1, per-label scores, confusions,
out-of-scope metrics (recall/precision/F1 after the fallback rule, AUROC and FPR at 95 % TPR of every
out-of-scope score), calibration error; a JSON report, a confusion-matrix and a reliability-diagram PNG.

numpy work on the outputs of the exported runtime the SDK serves: no torch needed (``backend="torch"``
runs the bundle's torch weights instead, with the ``[train]`` extra).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilintent.core.bundle import Bundle
from distilintent.core.data import Example, load_examples
from distilintent.core.errors import DataError
from distilintent.core.fallback import FallbackRule
from distilintent.core.metrics import classification_report, expected_calibration_error, reliability_bins, softmax
from distilintent.core.ood import EMBEDDING_METHODS, OOD_METHODS, ClassStatistics, auroc, fpr_at_tpr, load_statistics
from distilintent.evaluation.outputs import bundle_outputs

FALLBACK_PREDICTION = "nlu_fallback"


def report_from_logits(
    logits: np.ndarray,
    y_true: Sequence[str],
    labels: Sequence[str],
    *,
    temperature: float = 1.0,
    oos_label: str | None = None,
    embeddings: np.ndarray | None = None,
    stats: ClassStatistics | None = None,
    rule: FallbackRule | None = None,
) -> dict[str, Any]:
    """Metrics of the argmax predictions, and (``with_fallback``) of the predictions after ``rule``.

    After fallback, a prediction counts as out of scope (``oos_label``) when the data has out-of-scope
    examples, and as the fallback (always wrong) otherwise. With out-of-scope examples, ``ood_scores``
    gives AUROC and FPR at 95 % TPR of every score the outputs allow.
    """
    probs = softmax(logits, temperature)
    top = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    predicted = [labels[index] for index in top]
    report = classification_report(y_true, predicted, oos_label)
    truth = np.asarray(y_true, dtype=object)
    correct = np.asarray(predicted, dtype=object) == truth
    known = np.isin(truth, np.asarray(list(labels), dtype=object))
    # calibration is measured where the right answer is one of the model's labels
    report["ece"] = expected_calibration_error(confidence[known], correct[known]) if known.any() else None
    report["reliability"] = reliability_bins(confidence[known], correct[known])
    in_scope = known & (truth != oos_label)
    if oos_label is not None and in_scope.any() and not in_scope.all():
        report["ece_in_scope"] = expected_calibration_error(confidence[in_scope], correct[in_scope])
    report["temperature"] = temperature
    oos_index = list(labels).index(oos_label) if oos_label in labels else -1
    has_oos = oos_label is not None and bool(np.any(truth == oos_label))
    if has_oos:
        is_oos = truth == oos_label
        report["ood_scores"] = {}
        for method in OOD_METHODS:
            if method in EMBEDDING_METHODS and (embeddings is None or stats is None):
                continue
            scores = FallbackRule(method, None, temperature, oos_index, stats).scores(logits, embeddings)
            report["ood_scores"][method] = {"auroc": auroc(scores, is_oos), "fpr_at_95_tpr": fpr_at_tpr(scores, is_oos)}
    if rule is not None and (rule.threshold is not None or rule.oos_index >= 0):
        scores = rule.scores(logits, embeddings)
        falls_back = rule.mask(scores, top, confidence)
        fallback = oos_label if has_oos else FALLBACK_PREDICTION
        after = [fallback if fall else label for fall, label in zip(falls_back, predicted, strict=True)]
        scored = classification_report(y_true, after, oos_label if has_oos else None)
        keep = ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall", "oos_precision", "oos_f1")
        report["with_fallback"] = {
            "method": rule.method,
            "threshold": rule.min_confidence if rule.min_confidence is not None else rule.threshold,
            "fallback_rate": float(np.mean(falls_back)),
            **{key: scored[key] for key in keep if key in scored},
        }
    return report


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
    if out_dir is not None:
        from distilintent.evaluation.plots import pyplot

        pyplot()  # fail before the model runs when the plots cannot be written
    examples = load_examples(data) if isinstance(data, (str, Path)) else list(data)
    chosen = [example for example in examples if split is None or example.split == split]
    if not chosen:
        if any(example.split for example in examples):
            raise DataError(f"no examples in split {split!r} of {data}")
        chosen = examples
    oos_label = oos_label or bundle.oos_label or bundle.manifest.get("training", {}).get("oos_label")
    outputs = bundle_outputs(bundle.path, [example.text for example in chosen], backend, precision)
    rule = FallbackRule.from_bundle(bundle, has_embedding=outputs.embeddings is not None)
    truth = [example.label for example in chosen]
    report = report_from_logits(outputs.logits, truth, bundle.labels, temperature=rule.temperature,
                                oos_label=oos_label, embeddings=outputs.embeddings, stats=load_statistics(bundle),
                                rule=rule)
    unknown = sorted(set(truth) - set(bundle.labels) - {oos_label})
    report.update({"model": str(bundle.path), "variant": outputs.variant, "split": split, "unknown_labels": unknown})
    if out_dir is not None:
        from distilintent.evaluation.plots import plot_confusion_matrix, plot_reliability

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        predicted = [bundle.labels[index] for index in outputs.logits.argmax(axis=1)]
        plot_confusion_matrix(truth, predicted, out / "confusion_matrix.png")
        plot_reliability(report["reliability"], report["ece"], out / "reliability.png")
    return report
