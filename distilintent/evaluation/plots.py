"""The PNGs of an evaluation report: a reliability diagram and a confusion matrix (needs matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilintent.core.deps import require


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or an error naming the ``plots`` extra."""
    matplotlib = require("matplotlib", "plots", "Writing the report's plots (--out)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(bins: Sequence[dict[str, float]], ece: float, path: Path) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with ECE in the title."""
    plt = pyplot()
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
    plt = pyplot()
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
