"""A bundle's raw outputs on texts: from the exported runtime the SDK serves, or from its torch weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from distilintent.core.bundle import Bundle
from distilintent.core.errors import DataError

BACKENDS = ("auto", "onnxruntime", "openvino", "torch")


class Outputs(NamedTuple):
    logits: np.ndarray
    embeddings: np.ndarray | None  # None when the variant was exported without them
    variant: str


def bundle_outputs(bundle_path: str | Path, texts: Sequence[str], backend: str = "auto",
                   precision: str = "auto") -> Outputs:
    """Logits and pooled embeddings of ``texts``, and the name of what computed them.

    ``auto`` runs the variant the SDK would serve (no torch), or the torch weights when the bundle has
    no exported variant; ``torch`` always runs the weights (needs the ``[train]`` extra).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    bundle = Bundle.open(bundle_path)
    if backend != "torch" and bundle.variants:
        from distilintent.sdk import IntentDetector

        with IntentDetector(bundle.path, backend=backend, precision=precision) as detector:
            logits, embeddings = detector.outputs(texts)
            return Outputs(logits, embeddings, detector.variant.name)
    if backend != "auto" and backend != "torch":
        raise DataError(f"{bundle.path} has no exported {backend} variant; run: distilintent export --model ...")
    from distilintent.core.deps import require

    require("torch", "train", f"{bundle.path} has no exported variant: running its torch weights")
    from distilintent.training.inference import TorchPredictor

    logits, embeddings = TorchPredictor.from_bundle(bundle).outputs(texts)
    return Outputs(logits, embeddings, "torch-fp32")
