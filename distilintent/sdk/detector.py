"""``IntentDetector``: a bundle's exported model behind ``detect(text) -> IntentResult``.

Everything is read into memory by the constructor (model bytes, tokenizer, manifest), so the bundle
directory may be deleted afterwards (Rasa does so right after loading a component). Texts longer than
the bundle's ``max_length`` tokens are truncated: their end is cut. Imports no torch or transformers.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from distilintent.core.bundle import TOKENIZER_FILE, Bundle, Variant
from distilintent.core.metrics import softmax
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
        fallback_threshold: a top confidence under it gives the fallback intent; ``None`` takes the
            bundle's calibrated threshold (``calibration.fallback_threshold``), if any.
        fallback_intent: the intent name of fallback results (Rasa's ``nlu_fallback``).
        top_k: length of each result's ranking (``None``: all labels).

    A result is a fallback when the top confidence (temperature-calibrated softmax) is under the
    threshold or when the top label is the bundle's out-of-scope label (``oos_label``); its ranking
    stays the model's. Thread-safe; usable as a context manager.
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
        pad_id = (bundle.manifest.get("tokenizer") or {}).get("pad_token_id")
        self._encoder = TextEncoder.from_str(bundle.read_bytes(TOKENIZER_FILE).decode("utf-8"), self.max_length,
                                             pad_id)
        self._tokenizer = self._encoder.tokenizer
        weights = bundle.read_bytes(self.variant.weights) if self.variant.weights else None
        self._runtime: Runtime | None = load_runtime(
            self.variant.backend, self.variant.precision, bundle.read_bytes(self.variant.file), weights,
            max_length=self.max_length, threads=threads, pad_id=self._encoder.pad_token_id,
            num_labels=len(self.labels), source=str(bundle.path / self.variant.file),
        )
        calibration = bundle.calibration
        self.temperature = float(calibration.get("temperature") or 1.0)
        if fallback_threshold is None:
            fallback_threshold = calibration.get("fallback_threshold")
        self.fallback_threshold = None if fallback_threshold is None else float(fallback_threshold)
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
        logits = self._run_runtime([self._tokenizer.encode(text).ids])
        return self._result(text, logits[0])

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
            logits = self._logits_of([texts[i] for i in todo], batch_size)
            for row, i in enumerate(todo):
                results[i] = self._result(texts[i], logits[row])
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
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self._logits_of(texts, batch_size)

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
                f"fallback_threshold={self.fallback_threshold})")

    # -- internals -----------------------------------------------------------------------------------

    def _run_runtime(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        runtime = self._runtime
        if runtime is None:
            raise RuntimeError("this IntentDetector is closed")
        return runtime.run(ids)

    def _logits_of(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        ids = self._encoder.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # less padding per batch
        out = np.empty((len(ids), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._run_runtime([ids[i] for i in chunk])
        return out

    def _result(self, text: str, logits: np.ndarray) -> IntentResult:
        probs = softmax(logits, self.temperature)
        order = np.argsort(-probs, kind="stable")[: self.top_k]
        top = int(order[0])
        confidence = float(probs[top])
        ranking = tuple(zip(self._labels_array[order].tolist(), probs[order].tolist(), strict=True))
        is_fallback = top == self._oos_index or (
            self.fallback_threshold is not None and confidence < self.fallback_threshold
        )
        intent = self.fallback_intent if is_fallback else self.labels[top]
        return IntentResult(text, intent, confidence, ranking, is_fallback)

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
