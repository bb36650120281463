"""Fine-tuning, evaluation and export of distilintent models (needs the ``[train]`` extra)."""

from __future__ import annotations

from typing import Any

from distilintent.core.deps import require

require("torch", "train", "Training")
require("transformers", "train", "Training")

__all__ = ["TrainConfig", "TrainResult", "train", "export_bundle", "evaluate_bundle"]


def __getattr__(name: str) -> Any:
    if name == "TrainConfig":
        from distilintent.training.config import TrainConfig

        return TrainConfig
    if name in ("TrainResult", "train"):
        from distilintent.training import trainer

        return getattr(trainer, name)
    if name == "export_bundle":
        from distilintent.training.export import export_bundle

        return export_bundle
    if name == "evaluate_bundle":
        from distilintent.evaluation import evaluate_bundle

        return evaluate_bundle
    raise AttributeError(name)
