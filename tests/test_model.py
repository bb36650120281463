"""Base encoders: the exact all-MiniLM-L6-v2 → DistilBERT copy, HF checkpoints, and their errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distilintent.core.errors import DistilIntentError
from distilintent.core.tokenization import TextEncoder
from distilintent.training.model import IntentModel, load_base, load_minilm, minilm_path

SENTENCES = ["hello there, how are you?", "book a flight to Berlin tomorrow morning please", "x",
             "What's the weather like in São Paulo? 🌧️"]


def test_minilm_conversion_is_exact() -> None:
    from transformers import BertModel

    base = load_minilm()
    assert base.encoder.config.dim == 384 and base.encoder.config.n_layers == 6
    assert base.encoder.config.n_heads == 12 and base.encoder.config.hidden_dim == 1536
    encoder = TextEncoder.from_str(base.tokenizer_json, 64)
    ids, mask = (torch.from_numpy(a) for a in encoder.encode(SENTENCES))
    bert = BertModel.from_pretrained(str(minilm_path())).eval()
    with torch.no_grad():
        expected = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        got = base.encoder.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (expected - got)[real].abs().max().item() < 1e-4


def test_minilm_checksum_mismatch_fails_clearly(tmp_path: Path) -> None:
    fake = tmp_path / "minilm"
    shutil.copytree(minilm_path(), fake, ignore=shutil.ignore_patterns("model.safetensors"))
    (fake / "model.safetensors").write_bytes(b"not the real weights")
    with pytest.raises(DistilIntentError, match=r"sha256 .* expected 53aa5117"):
        load_minilm(fake)


def test_local_distilbert_checkpoint_loads_with_from_pretrained(tiny_base: Path) -> None:
    base = load_base(str(tiny_base))
    assert base.encoder.config.dim == 32
    assert base.info["source"] == str(tiny_base.resolve())
    model = IntentModel(base.encoder, 3, head_hidden=16)
    ids = torch.tensor([[101, 7592, 102, 0]])
    assert model(ids, torch.tensor([[1, 1, 1, 0]])).shape == (1, 3)


def test_unknown_hub_name_fails_fast_offline() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    code = "from distilintent.training.model import load_base; load_base('no-such-org/no-such-model')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert ("--base no-such-org/no-such-model: cannot get the Hugging Face checkpoint (the hub is offline and it "
            "is not in the local cache: pass a local directory)") in result.stderr
    assert time.monotonic() - started < 60


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_on_hub(hf_home: Path, repo_id: str, files: Path) -> Path:
    """``files`` as the cached snapshot of ``repo_id`` in a Hugging Face cache (the layout huggingface_hub reads)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def test_hub_bert_name_is_mapped_exactly_onto_distilbert(hf_home: Path, tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    from distilintent.training.model import bert_to_distilbert

    torch.manual_seed(1)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    bert = BertModel(config).eval()
    bert.save_pretrained(tmp_path / "bert")
    shutil.copy(minilm_path() / "tokenizer.json", tmp_path / "bert" / "tokenizer.json")
    _cache_on_hub(hf_home, "tiny-org/tiny-bert", tmp_path / "bert")

    base = load_base("tiny-org/tiny-bert")
    assert base.info["name"] == "tiny-org/tiny-bert"
    assert base.info["source"] == f"Hugging Face hub tiny-org/tiny-bert@{COMMIT}, BERT mapped onto DistilBERT"
    expected = bert_to_distilbert(bert.state_dict(), 2)
    got = base.encoder.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    ids, mask = (torch.from_numpy(a) for a in TextEncoder.from_str(base.tokenizer_json, 16).encode(SENTENCES))
    with torch.no_grad():
        reference = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        mapped = base.encoder.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (reference - mapped)[mask.bool()].abs().max().item() < 1e-5


def test_hub_distilbert_name_loads_and_other_model_types_fail(hf_home: Path, tiny_base: Path, tmp_path: Path) -> None:
    import json

    from distilintent.training.model import load_distilbert_directory

    _cache_on_hub(hf_home, "tiny-org/tiny-distilbert", tiny_base)
    base = load_base("tiny-org/tiny-distilbert")
    assert base.info["source"] == f"Hugging Face hub tiny-org/tiny-distilbert@{COMMIT}"
    expected = load_distilbert_directory(tiny_base).encoder.state_dict()
    got = base.encoder.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[key], expected[key]) for key in expected)

    roberta = tmp_path / "roberta"
    roberta.mkdir()
    (roberta / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    _cache_on_hub(hf_home, "tiny-org/tiny-roberta", roberta)
    with pytest.raises(DistilIntentError, match=r"--base tiny-org/tiny-roberta: model_type 'roberta' in .* is not "
                                                r"supported; use a BERT \(model_type bert\) or DistilBERT"):
        load_base("tiny-org/tiny-roberta")


def test_missing_local_directory() -> None:
    with pytest.raises(DistilIntentError, match="no such directory"):
        load_base("./does/not/exist")


def test_cls_and_mean_pooling_differ(tiny_base: Path) -> None:
    base = load_base(str(tiny_base))
    ids, mask = torch.tensor([[101, 7592, 2088, 102]]), torch.ones(1, 4, dtype=torch.long)
    mean = IntentModel(base.encoder, 2, pooling="mean").embed(ids, mask)
    cls = IntentModel(base.encoder, 2, pooling="cls").embed(ids, mask)
    assert not torch.allclose(mean, cls)
    with pytest.raises(ValueError, match="pooling"):
        IntentModel(base.encoder, 2, pooling="max")
