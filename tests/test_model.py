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
    assert "cannot load a DistilBERT checkpoint (the hub is offline: pass a local directory)" in result.stderr
    assert time.monotonic() - started < 60


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
