"""Shared fixtures: tiny models built in the tests so the suite stays fast and offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_LABELS = ("greet", "goodbye", "book_flight", "weather")


def make_tiny_bundle(path: Path, labels=TINY_LABELS, max_length: int = 16, seed: int = 0, dim: int = 32) -> Path:
    """A randomly initialised 2-layer, 32-wide DistilBERT bundle with the real uncased BERT tokenizer."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    from distilintent.core.data import Example
    from distilintent.core.tokenization import TextEncoder
    from distilintent.training.bundle_writer import write_model_bundle
    from distilintent.training.model import IntentModel, minilm_path

    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=30522, dim=dim, n_layers=2, n_heads=2, hidden_dim=2 * dim,
                              max_position_embeddings=64)
    model = IntentModel(DistilBertModel(config), len(labels), head_hidden=dim).eval()
    encoder = TextEncoder.from_file(str(minilm_path() / "tokenizer.json"), max_length)
    texts = ["hello there", "bye for now", "book a flight to Paris", "will it rain tomorrow", "hi", "see you"]
    samples = [Example(text, labels[i % len(labels)]) for i, text in enumerate(texts)]
    return write_model_bundle(path, model, encoder, list(labels), base_model={"name": "tiny-random"},
                              training={"seed": seed}, samples={"validation": samples, "calibration": samples})


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random bundle with weights only (no exported variants). Do not modify: copy it first."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")
