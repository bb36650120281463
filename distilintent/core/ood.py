"""Out-of-scope scores from one model pass, their statistics and the fallback threshold (numpy only).

Every score is an *out-of-scope score*: higher means "less like any intent the model knows".

- ``msp``: 1 − the top temperature-calibrated softmax probability (Hendrycks & Gimpel 2017).
- ``energy``: −T·logsumexp(logits / T) over the in-scope labels (Liu et al. 2020).
- ``mahalanobis``: the smallest Mahalanobis distance of the pooled sentence embedding to an in-scope
  class mean, with one covariance shared by all classes (Lee et al. 2018; Podolskiy et al. 2021).
- ``cosine``: 1 − the largest cosine similarity of the embedding to an in-scope class centroid.

The two distance scores need the exported graph's second output, ``sentence_embedding``, and the class
statistics stored in the bundle (``ood/stats.safetensors``: a few hundred KB, no training texts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OOD_METHODS = ("msp", "energy", "mahalanobis", "cosine")
EMBEDDING_METHODS = frozenset({"mahalanobis", "cosine"})
STATS_FILE = "ood/stats.safetensors"


@dataclass(frozen=True)
class ClassStatistics:
    """Per-class embedding statistics of the in-scope training examples.

    ``whitening`` maps an embedding to a space where the shared class covariance is the identity, so
    the Mahalanobis distance to class ``c`` is ``‖x·W − μ_c·W‖²``; ``whitened_means`` holds ``μ·W``.
    ``unit_centroids`` are the normalised means of the normalised embeddings (for ``cosine``).
    """

    whitening: np.ndarray  # (dim, dim)
    whitened_means: np.ndarray  # (classes, dim)
    unit_centroids: np.ndarray  # (classes, dim)
    label_indices: np.ndarray  # (classes,) logit index of each row
    mean_norms: np.ndarray = field(init=False, repr=False, compare=False)  # ‖μ·W‖² per class, computed once

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean_norms", (np.asarray(self.whitened_means, dtype=np.float32) ** 2).sum(axis=1))

    @classmethod
    def fit(cls, embeddings: np.ndarray, targets: np.ndarray, exclude: Sequence[int] = (),
            shrinkage: float | None = None) -> ClassStatistics:
        """Class means and shared covariance, shrunk towards a scaled identity by ``shrinkage``
        (None: the Ledoit–Wolf estimate, which keeps small data sets from exploding the distances)."""
        embeddings = np.asarray(embeddings, dtype=np.float64)
        targets = np.asarray(targets)
        keep = ~np.isin(targets, list(exclude))
        embeddings, targets = embeddings[keep], targets[keep]
        classes = np.unique(targets)
        if len(classes) == 0:
            raise ValueError("no in-scope examples to fit out-of-scope statistics on")
        means = np.stack([embeddings[targets == c].mean(axis=0) for c in classes])
        centred = embeddings - means[np.searchsorted(classes, targets)]
        covariance = centred.T @ centred / max(len(embeddings) - len(classes), 1)
        dim = covariance.shape[0]
        if shrinkage is None:
            shrinkage = ledoit_wolf_shrinkage(centred, covariance)
        covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        whitening = eigenvectors / np.sqrt(np.maximum(eigenvalues, 1e-12))
        units = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        centroids = np.stack([units[targets == c].mean(axis=0) for c in classes])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        return cls(whitening.astype(np.float32), (means @ whitening).astype(np.float32),
                   centroids.astype(np.float32), classes.astype(np.int64))

    def mahalanobis(self, embeddings: np.ndarray) -> np.ndarray:
        projected = np.asarray(embeddings, dtype=np.float32) @ self.whitening
        squared = (projected**2).sum(axis=1, keepdims=True) - 2.0 * projected @ self.whitened_means.T + self.mean_norms
        return np.maximum(squared.min(axis=1), 0.0)

    def cosine(self, embeddings: np.ndarray) -> np.ndarray:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        units = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return 1.0 - (units @ self.unit_centroids.T).max(axis=1)

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        return save({"whitening": self.whitening, "whitened_means": self.whitened_means,
                     "unit_centroids": self.unit_centroids, "label_indices": self.label_indices},
                    metadata={"format": "distilintent-ood-stats", "version": "1"})

    @classmethod
    def from_bytes(cls, data: bytes, num_labels: int, dim: int | None = None) -> ClassStatistics:
        """Load and check shapes against the model (``ValueError`` names what does not fit)."""
        from safetensors.numpy import load

        try:
            tensors = load(data)
            stats = cls(tensors["whitening"], tensors["whitened_means"], tensors["unit_centroids"],
                        tensors["label_indices"])
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for bad files
            raise ValueError(f"not a valid out-of-scope statistics file: {err}") from err
        width = stats.whitening.shape[0]
        consistent = (stats.whitening.shape == (width, width) and stats.whitened_means.shape[1] == width
                      and stats.unit_centroids.shape == stats.whitened_means.shape
                      and stats.label_indices.shape == (stats.whitened_means.shape[0],)
                      and (dim is None or width == dim)
                      and bool(np.all((stats.label_indices >= 0) & (stats.label_indices < num_labels))))
        if not consistent:
            raise ValueError(f"out-of-scope statistics do not fit the model ({num_labels} labels, embedding width "
                             f"{dim}): whitening {stats.whitening.shape}, means {stats.whitened_means.shape}")
        return stats


def load_statistics(bundle: Any, relative: str = STATS_FILE) -> ClassStatistics | None:
    """A bundle's class statistics (None if it has none), checked against its labels and embedding width;
    a file that does not fit is a ``BundleError`` naming it."""
    from distilintent.core.errors import BundleError

    if relative not in bundle.manifest.get("files", {}):
        return None
    dim = (bundle.manifest.get("architecture") or {}).get("dim")
    try:
        return ClassStatistics.from_bytes(bundle.read_bytes(relative), len(bundle.labels), dim)
    except ValueError as err:
        if isinstance(err, BundleError):
            raise
        raise BundleError(f"{bundle.path / relative}: {err}") from err


def ledoit_wolf_shrinkage(centred: np.ndarray, covariance: np.ndarray) -> float:
    """Ledoit & Wolf (2004)'s shrinkage intensity towards ``trace/dim · I`` for centred samples."""
    n, dim = centred.shape
    scale = np.trace(covariance) / dim
    distance = float(np.sum((covariance - scale * np.eye(dim)) ** 2))
    if n < 2 or distance <= 0:
        return 1.0
    squared_norms = np.sum(centred**2, axis=1)
    spread = float((np.sum(squared_norms**2) / n - np.sum(covariance**2)) / n)
    return float(np.clip(spread / distance, 0.0, 1.0))


def ood_scores(
    method: str,
    logits: np.ndarray,
    embeddings: np.ndarray | None = None,
    *,
    temperature: float = 1.0,
    stats: ClassStatistics | None = None,
    oos_index: int = -1,
) -> np.ndarray:
    """Out-of-scope scores (higher: more out of scope) of a batch, by ``method``."""
    logits = np.asarray(logits, dtype=np.float64)
    if method == "msp":
        scaled = logits / temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        probs = np.exp(scaled)
        return 1.0 - probs.max(axis=1) / probs.sum(axis=1)
    if method == "energy":
        in_scope = np.delete(logits, oos_index, axis=1) if oos_index >= 0 else logits
        scaled = in_scope / temperature
        top = scaled.max(axis=1)
        return -temperature * (top + np.log(np.exp(scaled - top[:, None]).sum(axis=1)))
    if method in EMBEDDING_METHODS:
        if embeddings is None or stats is None:
            raise ValueError(f"the {method} score needs the model's embeddings and the bundle's class statistics")
        return (stats.mahalanobis if method == "mahalanobis" else stats.cosine)(embeddings).astype(np.float64)
    raise ValueError(f"unknown out-of-scope method {method!r}; expected one of {', '.join(OOD_METHODS)}")


def auroc(ood: np.ndarray, is_oos: np.ndarray) -> float | None:
    """Area under the ROC curve of ``ood`` separating out-of-scope (positive) from in-scope (ties: ½)."""
    ood = np.asarray(ood, dtype=np.float64)
    is_oos = np.asarray(is_oos, dtype=bool)
    positives, negatives = int(is_oos.sum()), int((~is_oos).sum())
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = np.unique(ood, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    average_rank = (upper - (counts - 1) / 2.0)[inverse]  # 1-based ranks, ties averaged
    return float((average_rank[is_oos].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def fpr_at_tpr(ood: np.ndarray, is_oos: np.ndarray, tpr: float = 0.95) -> float | None:
    """Share of out-of-scope texts still answered when the threshold keeps ``tpr`` of the in-scope ones."""
    ood = np.asarray(ood, dtype=np.float64)
    is_oos = np.asarray(is_oos, dtype=bool)
    if not is_oos.any() or is_oos.all():
        return None
    threshold = np.quantile(ood[~is_oos], tpr)
    return float(np.mean(ood[is_oos] <= threshold))


def choose_ood_threshold(
    ood: np.ndarray,
    correct: np.ndarray,
    is_oos: np.ndarray | None = None,
    in_scope_coverage: float = 0.97,
) -> dict[str, Any]:
    """The out-of-scope score above which a prediction becomes the fallback.

    With out-of-scope examples: the threshold maximising in-scope accuracy + out-of-scope recall,
    where an in-scope text counts when it is answered (score ≤ threshold) and right, and an
    out-of-scope text when it falls back or the model predicts the out-of-scope class (``correct``).
    Without them: the lowest threshold that still answers ``in_scope_coverage`` of the examples.
    """
    ood = np.asarray(ood, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if is_oos is None or not np.any(is_oos):
        threshold = float(np.quantile(ood, in_scope_coverage)) if len(ood) else 0.0
        return {"threshold": threshold, "criterion": f"in_scope_coverage={in_scope_coverage}"}
    is_oos = np.asarray(is_oos, dtype=bool)
    order = np.argsort(ood, kind="stable")
    sorted_ood = ood[order]
    # answered(t) = ood <= t: sweep t over the sorted scores with cumulative counts (O(n log n))
    good_in_scope = np.cumsum((correct & ~is_oos)[order])
    answered_oos_wrong = np.cumsum((is_oos & ~correct)[order])
    last = np.r_[np.flatnonzero(np.diff(sorted_ood) > 0), len(ood) - 1]  # last index of each distinct score
    n_in, n_oos = int((~is_oos).sum()), int(is_oos.sum())
    in_scope_accuracy = np.r_[0.0, good_in_scope[last] / max(n_in, 1)]
    oos_recall = np.r_[1.0 - 0.0, 1.0 - answered_oos_wrong[last] / n_oos]
    thresholds = np.r_[sorted_ood[0] - 1.0, sorted_ood[last]]
    score = in_scope_accuracy + oos_recall
    best = int(np.argmax(score + 1e-12 * np.arange(len(score))))  # ties: the higher threshold (fewer fallbacks)
    return {"threshold": float(thresholds[best]), "criterion": "max in_scope_accuracy + oos_recall",
            "in_scope_accuracy": float(in_scope_accuracy[best]), "oos_recall": float(oos_recall[best]),
            "score": float(score[best])}
