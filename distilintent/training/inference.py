"""Batched torch inference over an :class:`IntentModel`: the one torch forward pass of validation during
training, evaluation with ``--backend torch``, export's reference outputs and the bench's torch baseline
(serving uses :mod:`distilintent.sdk`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from distilintent.core.bundle import Bundle
from distilintent.core.tokenization import TextEncoder
from distilintent.training.model import IntentModel, load_bundle_model


class TorchPredictor:
    """Logits and pooled embeddings for many texts: length-sorted batches, padded to each batch's longest
    text, outputs in the order of the texts. ``dtype``: the autocast dtype (None: the weights' own)."""

    def __init__(self, model: IntentModel, encoder: TextEncoder, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.encoder = encoder
        self.device = device or torch.device("cpu")
        self.dtype = dtype

    @classmethod
    def from_bundle(cls, bundle: Bundle, weights_dtype: torch.dtype = torch.float32) -> TorchPredictor:
        """The bundle's fine-tuned model on CPU, its weights in ``weights_dtype`` (e.g. ``torch.bfloat16``)."""
        return cls(load_bundle_model(bundle).to(weights_dtype), TextEncoder.from_bundle(bundle))

    def logits(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        return self.logits_from_ids(self.encoder.token_ids(list(texts)), batch_size)

    def logits_from_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 128) -> np.ndarray:
        return self.outputs_from_ids(ids, batch_size)[0]

    def outputs(self, texts: Sequence[str], batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled sentence embeddings (what the exported graph outputs)."""
        return self.outputs_from_ids(self.encoder.token_ids(list(texts)), batch_size)

    @torch.inference_mode()
    def outputs_from_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        from distilintent.training.device import autocast

        was_training = self.model.training
        self.model.eval()
        order = np.argsort([len(row) for row in ids], kind="stable")
        logits_out = np.zeros((len(ids), self.model.head_config["num_labels"]), dtype=np.float32)
        embeddings_out = np.zeros((len(ids), self.model.encoder.config.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            input_ids, mask = self.encoder.pad([ids[i] for i in chunk])
            with autocast(self.device, self.dtype):
                pooled = self.model.embed(torch.from_numpy(input_ids).to(self.device),
                                          torch.from_numpy(mask).to(self.device))
                logits = self.model.head(pooled)
            logits_out[chunk] = logits.float().cpu().numpy()
            embeddings_out[chunk] = pooled.float().cpu().numpy()
        self.model.train(was_training)
        return logits_out, embeddings_out
