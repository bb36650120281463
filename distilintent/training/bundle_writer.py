"""Write a trained model as a distilintent bundle (see :mod:`distilintent.core.bundle`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distilintent.core.bundle import TOKENIZER_FILE, write_bundle
from distilintent.core.data import Example
from distilintent.core.ood import STATS_FILE
from distilintent.core.samples import write_samples
from distilintent.core.tokenization import TextEncoder
from distilintent.training.model import IntentModel, save_model_files


def write_model_bundle(
    output: str | Path,
    model: IntentModel,
    encoder: TextEncoder,
    labels: Sequence[str],
    *,
    base_model: dict[str, Any],
    training: dict[str, Any],
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    oos_label: str | None = None,
    samples: dict[str, Sequence[Example]] | None = None,
    ood: dict[str, Any] | None = None,
    ood_stats: bytes | None = None,
) -> Path:
    """Atomically write weights, tokenizer and manifest.

    ``samples`` (``validation``: held-out labelled texts, ``calibration``: training texts) are kept
    *next to* the bundle, in ``<output>.samples/`` (:mod:`distilintent.core.samples`), never in it: export
    checks parity and calibrates INT8 on them without the original data file, and what a user deploys
    (the bundle, a Rasa model archive) holds no training or validation text.
    ``ood`` is the out-of-scope rule and ``ood_stats`` the class statistics its distance scores use.
    """
    encoder_config = model.encoder.config

    def build(root: Path) -> dict[str, Any]:
        save_model_files(model, root)
        (root / TOKENIZER_FILE).write_text(encoder.to_str(), encoding="utf-8")
        if ood_stats is not None:
            (root / STATS_FILE).parent.mkdir(parents=True, exist_ok=True)
            (root / STATS_FILE).write_bytes(ood_stats)
        return {
            "task": "text-classification",
            "labels": list(labels),
            "oos_label": oos_label if oos_label in labels else None,
            "max_length": encoder.max_length,
            "tokenizer": {"file": TOKENIZER_FILE, "pad_token_id": encoder.pad_token_id, "truncation": "right"},
            "architecture": {
                "type": "distilbert",
                "dim": encoder_config.dim,
                "n_layers": encoder_config.n_layers,
                "n_heads": encoder_config.n_heads,
                "hidden_dim": encoder_config.hidden_dim,
                "vocab_size": encoder_config.vocab_size,
                **model.head_config,
            },
            "inputs": ["input_ids", "attention_mask"],
            "outputs": ["logits", "sentence_embedding"],
            "base_model": base_model,
            "training": training,
            "data": data or {},
            "metrics": metrics or {},
            "calibration": calibration or {"temperature": 1.0},
            "ood": ood,
            "variants": {},
        }

    path = write_bundle(output, build)
    if samples is not None:
        write_samples(path, samples)
    return path
