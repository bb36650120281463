"""AdamW parameter groups (weight decay, layer-wise learning-rate scale) and seeding of every RNG."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def param_groups(model: torch.nn.Module, weight_decay: float, layer_lr_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and norms; ``lr_scale`` per depth (layer-wise LR decay)."""
    n_layers = getattr(getattr(model, "encoder", None), "config", None)
    n_layers = getattr(n_layers, "n_layers", 0) or 0
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        decays = not (param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name)
        depth = n_layers + 1  # the head and anything outside the encoder
        if name.startswith("encoder.embeddings."):
            depth = 0
        elif name.startswith("encoder.transformer.layer."):
            depth = int(name.split(".")[3]) + 1
        scale = layer_lr_decay ** (n_layers + 1 - depth) if layer_lr_decay != 1.0 else 1.0
        groups.setdefault((decays, scale), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
            for (decays, scale), params in groups.items()]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's random number generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
