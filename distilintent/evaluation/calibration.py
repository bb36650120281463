"""Confidence calibration and the fallback rule, fitted on validation data and stored in the bundle.

numpy work on a bundle's outputs: ``distilintent calibrate`` needs no torch for an exported bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilintent.core.bundle import Bundle, update_bundle
from distilintent.core.data import Example, load_examples, split_examples
from distilintent.core.errors import DataError
from distilintent.core.metrics import expected_calibration_error, fit_temperature, softmax
from distilintent.core.ood import (
    EMBEDDING_METHODS,
    OOD_METHODS,
    STATS_FILE,
    ClassStatistics,
    auroc,
    choose_ood_threshold,
    fpr_at_tpr,
    load_statistics,
    ood_scores,
)
from distilintent.evaluation.outputs import bundle_outputs

# Chosen by measurement (benchmarks/results/sweep.md: CLINC150 trained without its out-of-scope class,
# 3 seeds, best test AUROC every time): used when validation data has no
# out-of-scope examples to choose with.
DEFAULT_OOD_METHOD = "mahalanobis"


def calibrate(logits: np.ndarray, truth: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Temperature scaling, NLL-optimal on these examples (those whose label the model does not know,
    such as out-of-scope texts of a model without an out-of-scope class, are left out)."""
    index = {label: position for position, label in enumerate(labels)}
    targets = np.asarray([index.get(label, -1) for label in truth])
    known = targets >= 0
    temperature = fit_temperature(logits[known], targets[known]) if known.sum() >= 10 else 1.0
    raw, scaled = softmax(logits[known]), softmax(logits[known], temperature)
    return {
        "method": "temperature scaling on the validation split",
        "temperature": temperature,
        "ece_before": expected_calibration_error(raw.max(axis=1), raw.argmax(axis=1) == targets[known]),
        "ece_after": expected_calibration_error(scaled.max(axis=1), scaled.argmax(axis=1) == targets[known]),
        "examples": len(truth),
    }


def fit_ood_rule(
    logits: np.ndarray,
    embeddings: np.ndarray | None,
    truth: Sequence[str],
    labels: Sequence[str],
    *,
    temperature: float,
    stats: ClassStatistics | None,
    oos_label: str | None = None,
    in_scope_coverage: float = 0.97,
    method: str = "auto",
) -> dict[str, Any]:
    """The fallback rule stored as ``ood`` in the manifest: a score and its threshold.

    Every score is measured on the validation examples; with out-of-scope examples among them,
    ``auto`` keeps the score whose best threshold gives the highest in-scope accuracy + out-of-scope
    recall (ties: higher AUROC), else :data:`DEFAULT_OOD_METHOD`. Distance scores need ``embeddings``
    and ``stats``; without them only ``msp`` and ``energy`` are candidates.
    """
    if method != "auto" and method not in OOD_METHODS:
        raise ValueError(f"ood method must be 'auto' or one of {OOD_METHODS}, got {method!r}")
    index = {label: position for position, label in enumerate(labels)}
    oos_index = index.get(oos_label, -1) if oos_label else -1
    targets = np.asarray([index.get(label, -1) for label in truth])
    correct = np.asarray(logits).argmax(axis=1) == targets
    is_oos = np.asarray([label == oos_label for label in truth]) if oos_label else np.zeros(len(truth), bool)
    available = [name for name in OOD_METHODS
                 if name not in EMBEDDING_METHODS or (embeddings is not None and stats is not None)]
    if method != "auto" and method not in available:
        raise ValueError(f"the {method} score needs embeddings and class statistics, which this model lacks")
    measured: dict[str, dict[str, Any]] = {}
    for name in available:
        scores = ood_scores(name, logits, embeddings, temperature=temperature, stats=stats, oos_index=oos_index)
        choice = choose_ood_threshold(scores, correct, is_oos if is_oos.any() else None, in_scope_coverage)
        measured[name] = {**choice, "auroc": auroc(scores, is_oos), "fpr_at_95_tpr": fpr_at_tpr(scores, is_oos)}
    if method == "auto":
        if is_oos.any():
            method = max(measured, key=lambda name: (round(measured[name]["score"], 9), measured[name]["auroc"]))
        else:
            method = DEFAULT_OOD_METHOD if DEFAULT_OOD_METHOD in measured else "msp"
    chosen = measured[method]
    return {
        "method": method,
        "threshold": chosen["threshold"],
        "criterion": chosen["criterion"],
        "stats": STATS_FILE if method in EMBEDDING_METHODS else None,
        "embedding": "mean-pooled encoder output (graph output 'sentence_embedding')",
        "validation": {name: {key: value for key, value in entry.items() if key != "criterion"}
                       for name, entry in measured.items()},
        "examples": len(truth),
    }


def fit_fallback(
    logits: np.ndarray,
    embeddings: np.ndarray | None,
    truth: Sequence[str],
    labels: Sequence[str],
    *,
    stats: ClassStatistics | None,
    oos_label: str | None = None,
    in_scope_coverage: float = 0.97,
    method: str = "auto",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's ``calibration`` (the temperature) and ``ood`` (the fallback rule), fitted on
    validation outputs: what training writes and ``distilintent calibrate`` refits."""
    calibration = calibrate(logits, truth, labels)
    ood = fit_ood_rule(logits, embeddings, truth, labels, temperature=calibration["temperature"], stats=stats,
                       oos_label=oos_label, in_scope_coverage=in_scope_coverage, method=method)
    return calibration, ood


def recalibrate_bundle(
    bundle_path: str | Path,
    data: str | Path | Sequence[Example],
    split: str | None = "validation",
    backend: str = "auto",
    in_scope_coverage: float | None = None,
) -> dict[str, Any]:
    """Refit the temperature and the fallback rule of a bundle on labelled data, in its manifest.

    ``backend="auto"`` uses the outputs of the variant the SDK serves (no torch). Data without a
    ``validation`` split gets the stratified hold-out training makes (the manifest's seed and
    fraction: on the training data, exactly the texts training held out). The class statistics of the
    distance scores stay those of training; a bundle without them (trained by an older version) gets
    them from the data's training examples.
    """
    bundle = Bundle.open(bundle_path)
    examples = load_examples(data) if isinstance(data, (str, Path)) else list(data)
    training = bundle.manifest.get("training") or {}
    chosen = [example for example in examples if split is None or example.split == split]
    held_out = False
    if not chosen and split == "validation":  # e.g. BANKING77: training held validation out of train
        splits = split_examples(examples, float(training.get("validation_fraction", 0.1)),
                                int(training.get("seed", 42)))
        chosen, held_out = splits.validation, True
    if not chosen:
        raise DataError(f"no examples in split {split!r} to calibrate on")
    oos_label = bundle.oos_label or training.get("oos_label")
    coverage = in_scope_coverage or training.get("in_scope_coverage", 0.97)
    outputs = bundle_outputs(bundle.path, [example.text for example in chosen], backend)
    truth = [example.label for example in chosen]
    stats, new_stats = load_statistics(bundle), None
    if stats is None and outputs.embeddings is not None:  # a bundle trained before the distance scores
        texts = {example.text for example in chosen}
        train = [example for example in examples if example.split in (None, "", "train") and example.text not in texts]
        if train:
            stats = new_stats = _fit_statistics(bundle, train, oos_label, backend)
    calibration, ood = fit_fallback(outputs.logits, outputs.embeddings, truth, bundle.labels, stats=stats,
                                    oos_label=oos_label, in_scope_coverage=coverage,
                                    method=training.get("ood_method", "auto"))
    calibration["fitted_on"] = {"variant": outputs.variant, "split": "held out of train" if held_out else split}

    def store(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        manifest["calibration"] = calibration
        manifest["ood"] = ood
        if new_stats is not None:
            (root / STATS_FILE).parent.mkdir(parents=True, exist_ok=True)
            (root / STATS_FILE).write_bytes(new_stats.to_bytes())
        return manifest

    update_bundle(bundle.path, store)
    return {**calibration, "ood": ood}


def _fit_statistics(bundle: Bundle, train: Sequence[Example], oos_label: str | None,
                    backend: str) -> ClassStatistics:
    index = {label: position for position, label in enumerate(bundle.labels)}
    known = [example for example in train if example.label in index]
    embeddings = bundle_outputs(bundle.path, [example.text for example in known], backend).embeddings
    targets = np.asarray([index[example.label] for example in known])
    return ClassStatistics.fit(embeddings, targets, exclude=[index[oos_label]] if oos_label in index else [])
