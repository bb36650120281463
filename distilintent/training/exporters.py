"""The converters behind ``distilintent export``: torch → ONNX → OpenVINO IR, and INT8 quantization.

Each writes files into a scratch directory; :mod:`distilintent.training.export` checks them and moves
them into the bundle.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distilintent.core.deps import require
from distilintent.core.tokenization import pad_into
from distilintent.sdk.runtimes import ATTENTION_MASK, INPUT_IDS, buckets_for
from distilintent.training.export_graph import IntentGraph, PlainIntentGraph
from distilintent.training.model import IntentModel

ONNX_OUTPUTS = ("logits", "sentence_embedding")


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Silence the exporters' chatter (warnings, progress logs) for the duration of the block."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    try:
        for name in loggers:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def export_onnx(model: IntentModel, path: Path, opset: int, max_length: int) -> dict[str, Any]:
    """``torch.onnx.export`` with the dynamo exporter (the legacy one fails on transformers 5):
    dynamic batch and sequence axes, outputs ``logits`` and ``sentence_embedding`` (the pooled sentence vector the
    distance-based out-of-scope scores use), weights inside the single ``.onnx`` file.

    A DistilBERT encoder is exported through :class:`PlainIntentGraph` (same function, a leaner graph)."""
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization), got {opset}")
    width = min(8, max_length)
    sample = (torch.ones(2, width, dtype=torch.long), torch.ones(2, width, dtype=torch.long))
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    plain = PlainIntentGraph.supports(model)
    module = PlainIntentGraph(model) if plain else IntentGraph(model)
    with quiet("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
        torch.onnx.export(
            module,
            sample,
            str(path),
            input_names=[INPUT_IDS, ATTENTION_MASK],
            output_names=list(ONNX_OUTPUTS),
            dynamic_shapes={INPUT_IDS: dims, ATTENTION_MASK: dims},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return {"exporter": f"torch.onnx dynamo (torch {torch.__version__})", "opset": opset,
            "graph": "plain attention" if plain else "transformers", "dynamic_axes": {"batch": 0, "sequence": 1}}


def quantize_onnx(source: Path, target: Path) -> dict[str, Any]:
    """ONNX Runtime dynamic INT8 quantization of the plain graph (weights per output channel; activations per
    call): the previous ``onnx-int8``, kept for ``benchmarks/int8_variants.py``; export now quantizes the
    fused graph (:func:`distilintent.training.optimize.quantize_fused`).

    ``reduce_range`` (7-bit weights) avoids the int16 saturation of the u8×s8 kernels on CPUs without
    VNNI. Measured on the 384-wide model (AVX2 CPU): max |Δlogit| vs FP32 0.042, against 0.095 for the
    per-tensor default, at the same speed."""
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {"weight_type": "QInt8", "per_channel": True, "reduce_range": True}
    with quiet("root", "onnxruntime"):
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    return {"tool": f"onnxruntime.quantization.quantize_dynamic (onnxruntime {ort_version})", **settings}


def convert_openvino(onnx_path: Path, xml_path: Path) -> tuple[Any, dict[str, Any]]:
    """ONNX → OpenVINO IR with FP32 weights (``save_model`` would compress them to FP16 by default)."""
    ov = require("openvino", "openvino", "OpenVINO export")
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return model, {"tool": f"openvino.convert_model (openvino {ov.__version__})", "weights": "fp32",
                   "source": "onnx"}


def quantize_openvino(
    ov_model: Any, token_ids: Sequence[Sequence[int]], xml_path: Path, max_length: int, pad_id: int
) -> dict[str, Any]:
    """NNCF post-training INT8 quantization (``ModelType.TRANSFORMER``), calibrated on texts padded to
    the static-shape buckets that serving uses."""
    ov = require("openvino", "openvino", "OpenVINO export")
    nncf = require("nncf", "train", "INT8 quantization with NNCF")
    buckets = buckets_for(max_length)
    items = []
    for tokens in token_ids:
        width = next((b for b in buckets if len(tokens) <= b), buckets[-1])
        input_ids = np.empty((1, width), dtype=np.int64)
        attention_mask = np.empty((1, width), dtype=np.int64)
        pad_into([tokens], input_ids, attention_mask, pad_id)
        items.append({INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask})
    declared = {port.get_any_name() for port in ov_model.inputs}
    dataset = nncf.Dataset(items, lambda item: {name: value for name, value in item.items() if name in declared})
    with quiet("nncf"):
        quantized = nncf.quantize(ov_model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(items))
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return {"tool": f"nncf.quantize (nncf {nncf.__version__}, openvino {ov.__version__})",
            "model_type": "transformer", "preset": "mixed (nncf default for transformers)",
            "calibration_size": len(items), "calibration_padding": "static-shape buckets " + str(list(buckets))}
