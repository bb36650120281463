"""``IntentDetector``: a bundle's exported model behind ``detect(text) -> IntentResult``.

Everything is read into memory by the constructor (model bytes, tokenizer, manifest), so the bundle
directory may be deleted afterwards (Rasa does so right after loading a component). Texts longer than
the bundle's ``max_length`` tokens are truncated: their end is cut. Imports no torch or transformers.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from distilintent.core.bundle import Bundle, Variant
from distilintent.core.errors import BundleError
from distilintent.core.fallback import FallbackRule
from distilintent.core.metrics import softmax
from distilintent.core.results import IntentResult, top_k
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
        fallback_threshold: a top calibrated confidence under it gives the fallback intent (this
            replaces the bundle's rule); ``None`` takes the bundle's calibrated out-of-scope rule (``ood``
            in the manifest: a score such as the Mahalanobis distance and its threshold).
        fallback_intent: the intent name of fallback results (Rasa's ``nlu_fallback``).
        top_k: length of each result's ranking (``None``: all labels).
        openvino_shapes: ``"static"`` pads OpenVINO inputs to compiled static-shape buckets (faster at
            batch 1 here); ``"dynamic"`` runs every call on the dynamic-shape model. Ignored by ONNX Runtime.

    A result is a fallback when ``fallback_rule`` (:class:`distilintent.core.fallback.FallbackRule`) says
    so: its out-of-scope score is over the threshold, or the top label is the bundle's out-of-scope label
    (``oos_label``); its ranking stays the model's. ``ood_method`` and ``ood_threshold`` tell which rule
    is in force. Thread-safe; usable as a context manager.
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
        self._has_embedding = bool(self._runtime.has_embedding)
        self._calls = _CallGate()
        rule = FallbackRule.from_bundle(bundle, has_embedding=self._has_embedding,
                                        where=f"{bundle.path} ({self.variant.name})")
        self.fallback_rule: FallbackRule = rule if fallback_threshold is None else rule.with_confidence(
            fallback_threshold)
        self.temperature = self.fallback_rule.temperature
        self.fallback_intent = fallback_intent
        self.top_k = len(self.labels) if top_k is None else min(top_k, len(self.labels))
        self._labels_array = np.asarray(self.labels, dtype=object)

    @property
    def ood_method(self) -> str:
        """The out-of-scope score of the fallback rule (``msp``, ``energy``, ``mahalanobis`` or ``cosine``)."""
        return self.fallback_rule.method

    @property
    def ood_threshold(self) -> float | None:
        """The score over which a result falls back (None: only the out-of-scope label does)."""
        return self.fallback_rule.threshold

    @property
    def fallback_threshold(self) -> float | None:
        """The minimum confidence of an ``msp`` rule (None for the other scores)."""
        rule = self.fallback_rule
        if rule.min_confidence is not None:
            return rule.min_confidence
        return None if rule.method != "msp" or rule.threshold is None else 1.0 - rule.threshold

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
        if not self._has_embedding:
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
        """Release the runtime once the calls in progress have finished; later calls raise ``RuntimeError``."""
        if self._calls.close():
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

    def _run_runtime(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray | None]:
        with self._calls:
            return self._runtime.run_outputs(ids)  # type: ignore[union-attr]

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
        return self.fallback_rule.scores(logits, embeddings)

    def _results(self, texts: Sequence[str], logits: np.ndarray, embeddings: np.ndarray | None) -> list[IntentResult]:
        order, top_probs = top_k(softmax(logits, self.temperature), self.top_k)  # one softmax for the batch
        scores = self._scores(logits, embeddings)
        falls_back = self.fallback_rule.mask(scores, order[:, 0], top_probs[:, 0])
        names = self._labels_array[order]
        results = []
        for i, text in enumerate(texts):
            ranking = tuple(zip(names[i].tolist(), top_probs[i].tolist(), strict=True))
            intent = self.fallback_intent if falls_back[i] else ranking[0][0]
            results.append(IntentResult(text, intent, ranking[0][1], ranking, bool(falls_back[i]), float(scores[i])))
        return results

    def _empty_result(self, text: str) -> IntentResult:
        return IntentResult(text, self.fallback_intent, 0.0, (), True)


class _CallGate:
    """Counts the model calls in flight: ``close`` waits for them, and calls after it raise ``RuntimeError``."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._active = 0
        self._closed = False

    def __enter__(self) -> None:
        with self._condition:
            if self._closed:
                raise RuntimeError("this IntentDetector is closed")
            self._active += 1

    def __exit__(self, *exc: object) -> None:
        with self._condition:
            self._active -= 1
            if not self._active:
                self._condition.notify_all()

    def close(self) -> bool:
        """Refuse new calls and wait for those in flight; False when already closed."""
        with self._condition:
            if self._closed:
                return False
            self._closed = True
            self._condition.wait_for(lambda: not self._active)
            return True


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, got a single str (use detect())")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return texts
