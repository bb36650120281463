"""Shared fixtures: tiny models built in the tests so the suite stays fast and offline."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from distilintent.sdk import IntentDetector

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# The public data sets: $DISTILINTENT_SHARED_DATA, else next to the checkout, else the project's workplace copy.
_DATA_CANDIDATES = [Path(os.environ["DISTILINTENT_SHARED_DATA"])] if os.environ.get("DISTILINTENT_SHARED_DATA") else [
    REPO.parent / "shared" / "data", Path("/work/shared/data")]
SHARED_DATA = next((path for path in _DATA_CANDIDATES if path.is_dir()), _DATA_CANDIDATES[0])
TINY_LABELS = ("greet", "goodbye", "book_flight", "weather")


def make_tiny_bundle(path: Path, labels=TINY_LABELS, max_length: int = 16, seed: int = 0, dim: int = 32) -> Path:
    """A randomly initialised 2-layer, 32-wide DistilBERT bundle with the real uncased BERT tokenizer.

    Its validation and calibration samples (6 texts) are kept next to it, in ``<path>.samples/``, as
    training keeps them: a ``shutil.copytree`` of the bundle alone has none."""
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


def make_onnx_bundle(path: Path, **options) -> Path:
    """``make_tiny_bundle(path, **options)`` exported to ONNX only."""
    from distilintent.training.export import export_bundle

    path = make_tiny_bundle(path, **options)
    export_bundle(path, formats=("onnx",))
    return path


@pytest.fixture(scope="module")
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ONNX bundle of its own for each test module that uses it (``test_x.py``: in ``x*/tiny``)."""
    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    return make_onnx_bundle(tmp_path_factory.mktemp(name) / "tiny")


@pytest.fixture(scope="module")
def detector(bundle: Path) -> Iterator[IntentDetector]:
    """An ``IntentDetector`` on the module's ``bundle``, closed after the module."""
    from distilintent.sdk import IntentDetector

    with IntentDetector(bundle) as det:
        yield det


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random bundle with weights only (no exported variants). Do not modify: copy it first."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


# Distinct vocabulary per label: a tiny randomly initialised model learns it in a few epochs.
TOY_TEMPLATES = {
    "greet": ["hello", "hi there", "good morning", "hey hello", "hello friend", "hi hi"],
    "goodbye": ["bye", "goodbye now", "see you later", "bye bye", "farewell friend", "see you soon"],
    "book_flight": ["book a flight", "flight to paris", "plane ticket please", "book flight now",
                    "airline ticket", "a flight to rome"],
    "weather": ["weather today", "will it rain", "is it sunny", "rain tomorrow", "weather forecast",
                "sunny or rain"],
}


def toy_examples(templates: dict[str, list[str]] | None = None, repeat: int = 3):
    """A small separable dataset: each template with a few suffixes; no split (held out automatically)."""
    from distilintent.core.data import Example

    templates = templates or TOY_TEMPLATES
    suffixes = ["", " please", " now", " ok", " thanks"][:repeat + 2]
    return [Example(text + suffix, label)
            for label, texts in templates.items() for text in texts for suffix in suffixes]


def make_tiny_base(path: Path, dim: int = 32) -> Path:
    """A tiny Hugging Face DistilBERT checkpoint directory (save_pretrained) with a fast tokenizer."""
    import torch
    from transformers import BertTokenizerFast, DistilBertConfig, DistilBertModel

    from distilintent.training.model import minilm_path

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=dim, n_layers=2, n_heads=2, hidden_dim=2 * dim,
                              max_position_embeddings=64)
    DistilBertModel(config).save_pretrained(path)
    BertTokenizerFast.from_pretrained(str(minilm_path())).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("base") / "tiny-distilbert")


def tiny_train_options(base: Path, **overrides) -> dict:
    """TrainConfig options that train a tiny model in seconds."""
    options = {"base": str(base), "epochs": 6, "batch_size": 8, "learning_rate": 3e-3, "max_length": 16,
               "head_hidden": 32, "warmup_ratio": 0.0, "early_stopping_patience": 0, "checkpoint_every": 0,
               "threads": 1}
    options.update(overrides)
    return options


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_bundle`` exported once to every variant (onnx/openvino × fp32/int8). Do not modify: copy it.

    The random tiny model's top two logits are close, so INT8 may flip a few of its 6 samples: the
    agreement threshold is lowered here; tests/test_export.py checks that the default one is enforced.
    """
    from distilintent.training.export import export_bundle

    path = make_tiny_bundle(tmp_path_factory.mktemp("exported") / "tiny")  # tiny_bundle's model, with its samples
    export_bundle(path, formats=("onnx", "openvino"), int8=True, min_agreement=0.5)
    return path
