"""PyTorch baselines of ``distilintent bench``: plain ``inference_mode`` and a ``transformers.pipeline``.

Both run the bundle's fine-tuned weights (``model/model.safetensors``) in eager FP32; torch and
transformers are imported here only, so the SDK rows of a benchmark never load them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilintent.core.bundle import TOKENIZER_FILE, Bundle
from distilintent.core.metrics import softmax


def _softmax_top(logits: np.ndarray, labels: Sequence[str]) -> list[tuple[str, float]]:
    probs = softmax(logits)
    top = probs.argmax(axis=-1)
    return [(labels[index], float(probs[row, index])) for row, index in enumerate(top)]


class TorchClassifier:
    """Tokenize → ``IntentModel`` under ``torch.inference_mode`` (FP32) → softmax → top intent."""

    def __init__(self, bundle_path: str | Path, threads: int | None = None) -> None:
        import torch

        from distilintent.core.tokenization import TextEncoder
        from distilintent.training.model import load_bundle_model

        self._torch = torch
        self.threads = threads
        if threads:
            torch.set_num_threads(threads)
        bundle = Bundle.open(bundle_path)
        self.labels = bundle.labels
        self.model = load_bundle_model(bundle).float().eval()
        self.encoder = TextEncoder.from_str(bundle.read_bytes(TOKENIZER_FILE).decode("utf-8"), bundle.max_length,
                                            (bundle.manifest.get("tokenizer") or {}).get("pad_token_id"))

    def _run(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        torch = self._torch
        input_ids, mask = self.encoder.encode(texts)
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(input_ids), torch.from_numpy(mask)).numpy()
        return _softmax_top(logits, self.labels)

    def detect(self, text: str) -> tuple[str, float]:
        return self._run([text])[0]

    def detect_batch(self, texts: Sequence[str], batch_size: int = 32) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for start in range(0, len(texts), batch_size):
            out.extend(self._run(texts[start : start + batch_size]))
        return out

    def close(self) -> None:
        pass


def hf_pipeline(bundle_path: str | Path, threads: int | None = None) -> Any:
    """A ``transformers.pipeline("text-classification")`` over the bundle's weights (eager FP32).

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

    if threads:
        torch.set_num_threads(threads)
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
    model = BundleForSequenceClassification(config, intent_model).eval()
    tokenizer_object = Tokenizer.from_str(bundle.read_bytes(TOKENIZER_FILE).decode("utf-8"))
    tokenizer_object.no_padding()
    tokenizer_object.no_truncation()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        model_max_length=bundle.max_length,
                                        model_input_names=["input_ids", "attention_mask"])
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "model ... is not supported for text-classification": it is, via the adapter
    try:
        return pipeline("text-classification", model=model, tokenizer=tokenizer, device=-1, truncation=True)
    finally:
        hf_logging.set_verbosity(verbosity)


class PipelineClassifier:
    """``pipeline(text)`` at batch 1, ``pipeline(texts, batch_size=n)`` for batches."""

    def __init__(self, bundle_path: str | Path, threads: int | None = None) -> None:
        self.pipe = hf_pipeline(bundle_path, threads)

    def detect(self, text: str) -> Any:
        return self.pipe(text)

    def detect_batch(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        return self.pipe(list(texts), batch_size=batch_size)

    def close(self) -> None:
        pass
