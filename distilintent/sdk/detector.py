"""``IntentDetector``: a bundle's exported model behind ``detect(text) -> IntentResult``.

Everything is read into memory by the constructor (model bytes, tokenizer, manifest), so the bundle
directory may be deleted afterwards (Rasa does so right after loading a component). Texts longer than
the bundle's ``max_length`` tokens are truncated: their end is cut. Imports no torch or transformers.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from distilintent.core.bundle import Bundle, Variant
from distilintent.core.errors import BundleError
from distilintent.core.metrics import softmax
from distilintent.core.ood import (
    EMBEDDING_METHODS,
    OOD_METHODS,
    STATS_FILE,
    ClassStatistics,
    load_statistics,
    ood_scores,
)
from distilintent.core.results import IntentResult
from distilintent.core.tokenization import TextEncoder
from distilintent.sdk.runtimes import Runtime, load_runtime
from distilintent.sdk.variants import select_variant

DEFAULT_FALLBACK_INTENT = "nlu_fallback"


class IntentDetector:
    """Classifies texts with an exported variant of a distilintent bundle.

    Args:
        model: path of a bundle directory.
        backend: ``"auto"`` (the fastest variant present, see :mod:`distilintent.sdk.variants`),
            ``"openvino"`` or ``"onnxruntime"``.
        precision: ``"auto"``, ``"int8"`` or ``"fp32"``.
        threads: inference threads (``None``: the runtime's default, one per core).
        fallback_threshold: a top confidence under it gives the fallback intent (this replaces the
            bundle's rule); ``None`` takes the bundle's calibrated out-of-scope rule (``ood`` in the
            manifest: a score such as the Mahalanobis distance and its threshold), else its confidence
            threshold (``calibration.fallback_threshold``), if any.
        fallback_intent: the intent name of fallback results (Rasa's ``nlu_fallback``).
        top_k: length of each result's ranking (``None``: all labels).
        openvino_shapes: ``"static"`` pads OpenVINO inputs to compiled static-shape buckets (faster at
            batch 1 here); ``"dynamic"`` runs every call on the dynamic-shape model. Ignored by ONNX Runtime.

    A result is a fallback when its out-of-scope score is over the threshold (for ``msp``: the top
    temperature-calibrated confidence is under ``fallback_threshold``) or when the top label is the
    bundle's out-of-scope label (``oos_label``); its ranking stays the model's. ``ood_method`` and
    ``ood_threshold`` tell which rule is in force. Thread-safe; usable as a context manager.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        backend: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        fallback_threshold: float | None = None,
        fallback_intent: str = DEFAULT_FALLBACK_INTENT,
        top_k: int | None = 10,
        openvino_shapes: str = "static",
    ) -> None:
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        if fallback_threshold is not None and not 0.0 <= float(fallback_threshold) <= 1.0:
            raise ValueError(f"fallback_threshold must be between 0 and 1, got {fallback_threshold!r}")
        if not isinstance(fallback_intent, str) or not fallback_intent:
            raise ValueError(f"fallback_intent must be a non-empty string, got {fallback_intent!r}")
        bundle = Bundle.open(model)
        self.variant: Variant = select_variant(bundle, backend, precision)
        self.manifest: dict[str, Any] = copy.deepcopy(bundle.manifest)
        self.labels: tuple[str, ...] = bundle.labels
        self.max_length = bundle.max_length
        self._encoder = TextEncoder.from_bundle(bundle)
        weights = bundle.read_bytes(self.variant.weights) if self.variant.weights else None
        self._runtime: Runtime | None = load_runtime(
            self.variant.backend, self.variant.precision, bundle.read_bytes(self.variant.file), weights,
            max_length=self.max_length, threads=threads, pad_id=self._encoder.pad_token_id,
            num_labels=len(self.labels), source=str(bundle.path / self.variant.file), openvino_shapes=openvino_shapes,
        )
        self.temperature = float(bundle.calibration.get("temperature") or 1.0)
        self.fallback_threshold: float | None = None
        self.ood_method = "msp"
        self.ood_threshold: float | None = None
        self._ood_stats: ClassStatistics | None = None
        self._set_fallback_rule(bundle, fallback_threshold)
        self.fallback_intent = fallback_intent
        self.top_k = len(self.labels) if top_k is None else min(top_k, len(self.labels))
        oos = bundle.oos_label
        self._oos_index = self.labels.index(oos) if oos in self.labels else -1
        self._labels_array = np.asarray(self.labels, dtype=object)

    # -- public API ----------------------------------------------------------------------------------

    def detect(self, text: str) -> IntentResult:
        """Classify one text."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text or text.isspace():
            return self._empty_result(text)
        logits, embeddings = self._run_runtime(self._encoder.token_ids([text]))  # lone surrogates become U+FFFD
        return self._results([text], logits, embeddings)[0]

    def detect_batch(self, texts: Sequence[str], batch_size: int = 32) -> list[IntentResult]:
        """Classify many texts, ``batch_size`` at a time (texts of similar length are batched together)."""
        texts = _check_texts(texts)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        results: list[IntentResult | None] = [None] * len(texts)
        todo = [i for i, text in enumerate(texts) if text and not text.isspace()]
        for i in set(range(len(texts))) - set(todo):
            results[i] = self._empty_result(texts[i])
        if todo:
            chosen = [texts[i] for i in todo]
            logits, embeddings = self._outputs_of(chosen, batch_size)
            for i, result in zip(todo, self._results(chosen, logits, embeddings), strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    async def adetect(self, text: str) -> IntentResult:
        """``detect`` in a worker thread, so that an asyncio event loop is not blocked."""
        import asyncio  # not at module level: it costs ~50 ms of cold start to every user

        return await asyncio.to_thread(self.detect, text)

    async def adetect_batch(self, texts: Sequence[str], batch_size: int = 32) -> list[IntentResult]:
        import asyncio

        return await asyncio.to_thread(self.detect_batch, texts, batch_size)

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Raw float32 logits ``(len(texts), len(labels))`` before temperature; every text runs the model."""
        return self.outputs(texts, batch_size)[0]

    def outputs(self, texts: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw logits and pooled sentence embeddings (None for variants exported without them), one pass."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32), None
        return self._outputs_of(texts, batch_size)

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Pooled sentence embeddings ``(len(texts), dim)`` from the same pass (e.g. for semantic search)."""
        if self._runtime is not None and not self._runtime.has_embedding:
            raise BundleError(f"variant {self.variant.name} was exported without the 'sentence_embedding' output; "
                              "re-export the bundle: distilintent export --model ...")
        embeddings = self.outputs(texts, batch_size)[1]
        return embeddings if embeddings is not None else np.zeros((0, 0), dtype=np.float32)

    def ood_score(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """The out-of-scope scores (``ood_method``; higher: more out of scope) of the texts."""
        logits, embeddings = self.outputs(texts, batch_size)
        return self._scores(logits, embeddings) if len(logits) else np.zeros(0)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Temperature-calibrated softmax of :meth:`logits`."""
        return softmax(self.logits(texts, batch_size), self.temperature)

    def close(self) -> None:
        """Release the runtime; later calls raise ``RuntimeError``."""
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()

    def __enter__(self) -> IntentDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"IntentDetector(variant={self.variant.name!r}, labels={len(self.labels)}, "
                f"ood_method={self.ood_method!r}, ood_threshold={self.ood_threshold})")

    # -- internals -----------------------------------------------------------------------------------

    def _set_fallback_rule(self, bundle: Bundle, fallback_threshold: float | None) -> None:
        """The user's confidence threshold, else the bundle's out-of-scope rule, else its confidence threshold."""
        if fallback_threshold is not None:
            self.fallback_threshold = float(fallback_threshold)
            self.ood_threshold = 1.0 - self.fallback_threshold
            return
        rule = bundle.manifest.get("ood") or {}
        method = rule.get("method")
        if method in OOD_METHODS and rule.get("threshold") is not None:
            usable = method not in EMBEDDING_METHODS or (self._runtime is not None and self._runtime.has_embedding)
            if usable and method in EMBEDDING_METHODS:
                self._ood_stats = load_statistics(bundle, rule.get("stats") or STATS_FILE)
                if self._ood_stats is None:
                    raise BundleError(f"{bundle.path}: the {method} out-of-scope rule needs {rule.get('stats')}, "
                                      "which the bundle does not list")
            if usable:
                self.ood_method, self.ood_threshold = method, float(rule["threshold"])
                if method == "msp":
                    self.fallback_threshold = 1.0 - self.ood_threshold
                return
            warnings.warn(f"{bundle.path}: variant {self.variant.name} has no 'sentence_embedding' output for the "
                          f"{method} out-of-scope score (re-export the bundle); using the confidence threshold",
                          stacklevel=3)
        threshold = bundle.calibration.get("fallback_threshold")
        if threshold is not None:
            self.fallback_threshold = float(threshold)
            self.ood_threshold = 1.0 - self.fallback_threshold

    def _run_runtime(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray | None]:
        runtime = self._runtime
        if runtime is None:
            raise RuntimeError("this IntentDetector is closed")
        return runtime.run_outputs(ids)

    def _outputs_of(self, texts: Sequence[str], batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        ids = self._encoder.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # less padding per batch
        logits = np.empty((len(ids), len(self.labels)), dtype=np.float32)
        embeddings: np.ndarray | None = None
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            chunk_logits, chunk_embeddings = self._run_runtime([ids[i] for i in chunk])
            logits[chunk] = chunk_logits
            if chunk_embeddings is not None:
                if embeddings is None:
                    embeddings = np.empty((len(ids), chunk_embeddings.shape[1]), dtype=np.float32)
                embeddings[chunk] = chunk_embeddings
        return logits, embeddings

    def _scores(self, logits: np.ndarray, embeddings: np.ndarray | None) -> np.ndarray:
        return ood_scores(self.ood_method, logits, embeddings, temperature=self.temperature,
                          stats=self._ood_stats, oos_index=self._oos_index)

    def _results(self, texts: Sequence[str], logits: np.ndarray, embeddings: np.ndarray | None) -> list[IntentResult]:
        scores = self._scores(logits, embeddings)
        results = []
        for text, row, score in zip(texts, logits, scores, strict=True):
            probs = softmax(row, self.temperature)
            order = np.argsort(-probs, kind="stable")[: self.top_k]
            top = int(order[0])
            confidence = float(probs[top])
            ranking = tuple(zip(self._labels_array[order].tolist(), probs[order].tolist(), strict=True))
            if self.ood_method == "msp":  # compared as the user gave it (no 1 - x rounding)
                out_of_scope = self.fallback_threshold is not None and confidence < self.fallback_threshold
            else:
                out_of_scope = self.ood_threshold is not None and float(score) > self.ood_threshold
            is_fallback = top == self._oos_index or out_of_scope
            intent = self.fallback_intent if is_fallback else self.labels[top]
            results.append(IntentResult(text, intent, confidence, ranking, is_fallback, float(score)))
        return results

    def _empty_result(self, text: str) -> IntentResult:
        return IntentResult(text, self.fallback_intent, 0.0, (), True)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, got a single str (use detect())")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return texts
