"""Training hyperparameters: one frozen dataclass, read from a JSON/YAML file, overridden by CLI flags."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from distilintent.core.errors import DataError


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run (the defaults are the recommended settings).

    base: ``minilm`` (all-MiniLM-L6-v2 as a 384-wide DistilBERT), a Hugging Face BERT (mapped exactly onto
        DistilBERT) or DistilBERT hub name or directory, or a distilintent bundle to continue from.
    epochs / batch_size / learning_rate / warmup_ratio / weight_decay: AdamW with linear warm-up
        over ``warmup_ratio`` of the steps, then linear decay to 0.
    max_length: tokens per text; longer texts are truncated (training and serving alike).
    head_hidden / head_activation / dropout / pooling: the classification head
        (pooled encoder output → dense ``head_hidden`` → activation → dropout → logits).
    label_smoothing: cross-entropy label smoothing.
    layer_lr_decay: layer-wise learning-rate decay: the head trains at ``learning_rate``, encoder layer
        ``i`` (of ``n``) at ``learning_rate · decay^(n − i)``, the embeddings at ``decay^(n + 1)`` (1 = off).
    rdrop_alpha: R-Drop consistency regularisation: each batch runs twice with different dropout and
        ``alpha`` × the symmetric KL divergence of the two predictions is added to the loss (0 = off;
        doubles the cost of a step).
    validation_fraction: held out stratified from train when the data has no validation split.
    early_stopping_patience: epochs without validation improvement before stopping (0 = never stop early).
    checkpoint_every: also checkpoint every N optimiser steps inside an epoch (0 = only at epoch ends).
    oos_label: the out-of-scope label in the data, if any (gets out-of-scope metrics and the fallback).
    in_scope_coverage: without out-of-scope validation examples, the fallback threshold keeps this share
        of in-scope validation predictions.
    ood_method: the out-of-scope score of the fallback rule: ``auto`` (chosen on validation data when it
        has out-of-scope examples, else ``mahalanobis``), ``msp``, ``energy``, ``mahalanobis`` or ``cosine``
        (see :mod:`distilintent.core.ood`).
    device / dtype: ``auto`` picks xpu → cuda → cpu, and bf16 autocast where the hardware has it (``fp32``,
        ``bf16``: the compute dtype of training; ``precision`` names the int8/fp32 serving variants elsewhere).
    threads: torch intra-op threads on CPU (None = torch's default).
    ipex: apply ``ipex.optimize`` (needs the ``[ipex]`` extra).
    """

    base: str = "minilm"
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 64
    head_hidden: int = 768
    head_activation: str = "gelu"
    dropout: float = 0.1
    pooling: str = "mean"
    label_smoothing: float = 0.0
    layer_lr_decay: float = 1.0
    rdrop_alpha: float = 0.0
    seed: int = 42
    validation_fraction: float = 0.1
    early_stopping_patience: int = 2
    checkpoint_every: int = 500
    oos_label: str = "oos"
    in_scope_coverage: float = 0.97
    ood_method: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    ipex: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.max_length >= 2, "max_length must be >= 2"),
            (self.head_hidden >= 1, "head_hidden must be >= 1"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.validation_fraction < 1, "validation_fraction must be in [0, 1)"),
            (self.pooling in ("mean", "cls"), "pooling must be 'mean' or 'cls'"),
            (self.device in ("auto", "cpu", "cuda", "xpu"), "device must be auto, cpu, cuda or xpu"),
            (self.dtype in ("auto", "fp32", "bf16"), "dtype must be auto, fp32 or bf16"),
            (0 < self.in_scope_coverage <= 1, "in_scope_coverage must be in (0, 1]"),
            (0 < self.layer_lr_decay <= 1, "layer_lr_decay must be in (0, 1]"),
            (self.rdrop_alpha >= 0, "rdrop_alpha must be >= 0"),
            (self.ood_method in ("auto", "msp", "energy", "mahalanobis", "cosine"),
             "ood_method must be auto, msp, energy, mahalanobis or cosine"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training config: {message}")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise DataError(f"cannot read config file {path}: {err.strerror}") from err
        if path.suffix.lower() in (".yml", ".yaml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
        if not isinstance(values, dict):
            raise DataError(f"{path}: a training config must be a mapping of option → value")
        return cls().updated(values, source=str(path))

    def updated(self, values: dict[str, Any], source: str = "options") -> TrainConfig:
        """A copy with ``values`` applied; unknown keys are an error (None values are ignored)."""
        if values.get("precision") is not None:
            raise DataError(f"{source}: the training option 'precision' (--precision) is now 'dtype' (--dtype: auto, "
                            "fp32 or bf16); 'precision' names the int8/fp32 variant in detect, serve and evaluate")
        values = {key: value for key, value in values.items() if key != "precision"}
        known = {field.name for field in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DataError(f"{source}: unknown training option(s) {unknown}; known: {sorted(known)}")
        return replace(self, **{key: value for key, value in values.items() if value is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
