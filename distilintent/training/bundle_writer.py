"""Write a trained model as a distilintent bundle (see :mod:`distilintent.core.bundle`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distilintent.core.bundle import TOKENIZER_FILE, write_bundle
from distilintent.core.data import Example
from distilintent.core.ood import STATS_FILE
from distilintent.core.tokenization import TextEncoder
from distilintent.training.model import IntentModel, save_model_files

SAMPLE_FILES = {"validation": "samples/validation.jsonl", "calibration": "samples/calibration.jsonl"}


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

    ``samples`` (``validation``: held-out labelled texts, ``calibration``: training texts) are stored
    as JSONL so that export can check parity and calibrate INT8 without the original data file.
    ``ood`` is the out-of-scope rule and ``ood_stats`` the class statistics its distance scores use.
    """
    encoder_config = model.encoder.config

    def build(root: Path) -> dict[str, Any]:
        save_model_files(model, root)
        (root / TOKENIZER_FILE).write_text(encoder.to_str(), encoding="utf-8")
        stored = {}
        for name, examples in (samples or {}).items():
            if not examples:
                continue
            path = root / SAMPLE_FILES[name]
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as handle:
                for example in examples:
                    handle.write(json.dumps({"text": example.text, "label": example.label}, ensure_ascii=False))
                    handle.write("\n")
            stored[name] = SAMPLE_FILES[name]
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
            "calibration": calibration or {"temperature": 1.0, "fallback_threshold": None},
            "ood": ood,
            "samples": stored,
            "variants": {},
        }

    return write_bundle(output, build)
