"""The objects a ``distilintent bench`` row measures, built the same way in the bench process and in the
fresh cold-start processes: an SDK detector (OpenVINO with static buckets or dynamic shapes), plain torch
or a ``transformers.pipeline``. Each has ``detect(text)`` and ``detect_batch(texts, batch_size)``.
"""

from __future__ import annotations

import os
from typing import Any

STATIC = "static"
DYNAMIC = "dynamic"


def build_subject(kind: str, bundle: str | os.PathLike[str], backend: str, precision: str, threads: int | None,
                  shapes: str | None = None) -> Any:
    """``kind`` is ``sdk``, ``torch`` or ``pipeline``; ``shapes="dynamic"`` only for OpenVINO SDK rows."""
    if kind == "sdk":
        from distilintent.sdk import IntentDetector

        detector = IntentDetector(bundle, backend=backend, precision=precision, threads=threads,
                                  openvino_shapes=shapes or STATIC)
        if shapes == DYNAMIC and detector.variant.backend != "openvino":
            detector.close()
            raise ValueError(f"{detector.variant.name} has no static-shape buckets (only OpenVINO variants do)")
        return detector
    if kind == "torch":
        from distilintent.bench.baselines import TorchClassifier

        return TorchClassifier(bundle, threads, precision)
    if kind == "pipeline":
        from distilintent.bench.baselines import PipelineClassifier

        return PipelineClassifier(bundle, threads, precision)
    raise ValueError(f"unknown row kind {kind!r}; expected sdk, torch or pipeline")
