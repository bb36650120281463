"""The intent model written with plain torch operations, for export only.

transformers' DistilBERT builds its attention mask with ``masking_utils`` and runs SDPA, which the
ONNX exporter turns into dozens of shape, ``IsNaN`` and ``Where`` nodes per layer that the runtimes
execute on every call. This module computes the same function (same weights, shared, not copied)
as textbook BERT attention: an additive mask computed once, ``softmax(q·kᵀ/√d + mask)·v``. The
export's parity check compares its ONNX/OpenVINO output with the real :class:`IntentModel`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import DistilBertModel

from distilintent.training.model import IntentModel


class IntentGraph(nn.Module):
    """:class:`IntentModel` with its pooled embedding as a second output (any encoder)."""

    def __init__(self, model: IntentModel) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.model.embed(input_ids, attention_mask)
        return self.model.head(pooled), pooled


class PlainIntentGraph(nn.Module):
    """``IntentModel.forward`` for a ``DistilBertModel`` encoder in eval mode, without dropout."""

    def __init__(self, model: IntentModel) -> None:
        super().__init__()
        if not isinstance(model.encoder, DistilBertModel):
            raise TypeError(f"PlainIntentGraph needs a DistilBertModel encoder, got {type(model.encoder).__name__}")
        self.model = model.eval()
        config = model.encoder.config
        self.n_heads = config.n_heads
        self.head_size = config.dim // config.n_heads

    @staticmethod
    def supports(model: IntentModel) -> bool:
        return isinstance(model.encoder, DistilBertModel)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, pooled embedding)``: the embedding feeds the distance-based out-of-scope scores."""
        embeddings = self.model.encoder.embeddings
        length = input_ids.shape[1]
        hidden = embeddings.word_embeddings(input_ids) + embeddings.position_embeddings.weight[:length]
        hidden = embeddings.LayerNorm(hidden)
        # BERT's additive mask, in the order ONNX Runtime's attention fusion recognises: exp(-1e4) is 0 in fp32
        additive = (1.0 - attention_mask.unsqueeze(1).unsqueeze(2).to(hidden.dtype)) * -10000.0
        for layer in self.model.encoder.transformer.layer:
            hidden = layer.sa_layer_norm(self._attention(layer.attention, hidden, additive) + hidden)
            ffn = layer.ffn.lin2(layer.ffn.activation(layer.ffn.lin1(hidden)))
            hidden = layer.output_layer_norm(ffn + hidden)
        if self.model.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.model.head(pooled), pooled

    def _attention(self, attention: nn.Module, hidden: torch.Tensor, additive: torch.Tensor) -> torch.Tensor:
        batch, length, dim = hidden.shape
        split = (batch, length, self.n_heads, self.head_size)
        query = attention.q_lin(hidden).view(split).transpose(1, 2)
        key = attention.k_lin(hidden).view(split).transpose(1, 2)
        value = attention.v_lin(hidden).view(split).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_size) + additive
        context = torch.matmul(torch.softmax(scores, dim=-1), value)
        return attention.out_lin(context.transpose(1, 2).reshape(batch, length, dim))
