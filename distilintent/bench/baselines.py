"""PyTorch baselines of ``distilintent bench``: plain ``inference_mode`` and a ``transformers.pipeline``.

Both run the bundle's fine-tuned weights (``model/model.safetensors``) in eager mode, FP32 or (with
``precision="bf16"``) with the weights cast to bfloat16; torch and transformers are imported here only,
so the SDK rows of a benchmark never load them. torch's thread count is process-wide, so each call
sets it when a row asks for its own (the bench measures several thread counts in one process).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilintent.core.bundle import TOKENIZER_FILE, Bundle
from distilintent.core.metrics import softmax

TORCH_DTYPES = ("fp32", "bf16")


def _torch_dtype(torch: Any, precision: str) -> Any:
    if precision not in TORCH_DTYPES:
        raise ValueError(f"precision must be one of {TORCH_DTYPES}, got {precision!r}")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _use_threads(torch: Any, threads: int | None) -> None:
    """Set torch's (process-wide) intra-op threads for this call; ``None`` leaves them as they are."""
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _softmax_top(logits: np.ndarray, labels: Sequence[str]) -> list[tuple[str, float]]:
    probs = softmax(logits)
    top = probs.argmax(axis=-1)
    return [(labels[index], float(probs[row, index])) for row, index in enumerate(top)]


class TorchClassifier:
    """:class:`~distilintent.training.inference.TorchPredictor` (length-sorted batches under
    ``torch.inference_mode``, as the SDK batches) over the bundle's weights in FP32 or cast to BF16 →
    softmax → top intent."""

    def __init__(self, bundle_path: str | Path, threads: int | None = None, precision: str = "fp32") -> None:
        import torch

        from distilintent.training.inference import TorchPredictor

        self._torch = torch
        self.threads = threads
        _use_threads(torch, threads)
        bundle = Bundle.open(bundle_path)
        self.labels = bundle.labels
        self.predictor = TorchPredictor.from_bundle(bundle, weights_dtype=_torch_dtype(torch, precision))

    def detect(self, text: str) -> tuple[str, float]:
        return self.detect_batch([text], 1)[0]

    def detect_batch(self, texts: Sequence[str], batch_size: int = 32) -> list[tuple[str, float]]:
        _use_threads(self._torch, self.threads)
        return _softmax_top(self.predictor.logits(texts, batch_size), self.labels)

    def close(self) -> None:
        pass


def hf_pipeline(bundle_path: str | Path, threads: int | None = None, precision: str = "fp32") -> Any:
    """A ``transformers.pipeline("text-classification")`` over the bundle's weights (eager FP32 or BF16).

    The bundle's head (mean pooling → dense → GELU → labels) is not DistilBERT's own, so the
    fine-tuned :class:`IntentModel` is wrapped in a small ``PreTrainedModel`` returning
    ``SequenceClassifierOutput``; the tokenizer is a ``PreTrainedTokenizerFast`` over the bundle's
    ``tokenizer.json``. This is the code a user would otherwise write to serve the same model.
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import DistilBertConfig, PreTrainedModel, PreTrainedTokenizerFast, pipeline
    from transformers.modeling_outputs import SequenceClassifierOutput

    from distilintent.training.model import load_bundle_model

    _use_threads(torch, threads)
    bundle = Bundle.open(bundle_path)
    intent_model = load_bundle_model(bundle).float().eval()

    class BundleForSequenceClassification(PreTrainedModel):
        config_class = DistilBertConfig
        base_model_prefix = "intent"

        def __init__(self, config: DistilBertConfig, model: torch.nn.Module) -> None:
            super().__init__(config)
            self.intent = model

        def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                    **_: Any) -> SequenceClassifierOutput:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            return SequenceClassifierOutput(logits=self.intent(input_ids, attention_mask))

    config = DistilBertConfig(**intent_model.encoder.config.to_dict())
    config.id2label = dict(enumerate(bundle.labels))
    config.label2id = {label: index for index, label in enumerate(bundle.labels)}
    model = BundleForSequenceClassification(config, intent_model).to(_torch_dtype(torch, precision)).eval()
    tokenizer_object = Tokenizer.from_str(bundle.read_bytes(TOKENIZER_FILE).decode("utf-8"))
    tokenizer_object.no_padding()
    tokenizer_object.no_truncation()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        model_max_length=bundle.max_length,
                                        model_input_names=["input_ids", "attention_mask"])
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    # "The model ... is not supported for text-classification" (logged as an error): it is, via the adapter
    hf_logging.set_verbosity(hf_logging.CRITICAL)
    try:
        return pipeline("text-classification", model=model, tokenizer=tokenizer, device=-1, truncation=True)
    finally:
        hf_logging.set_verbosity(verbosity)


class PipelineClassifier:
    """``pipeline(text)`` at batch 1, ``pipeline(texts, batch_size=n)`` for batches."""

    def __init__(self, bundle_path: str | Path, threads: int | None = None, precision: str = "fp32") -> None:
        import torch

        self._torch = torch
        self.threads = threads
        self.pipe = hf_pipeline(bundle_path, threads, precision)

    def detect(self, text: str) -> Any:
        _use_threads(self._torch, self.threads)
        return self.pipe(text)

    def detect_batch(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        _use_threads(self._torch, self.threads)
        return self.pipe(list(texts), batch_size=batch_size)

    def close(self) -> None:
        pass
