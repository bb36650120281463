"""An inference graph for ONNX Runtime: transformer fusions, then INT8 of the fused graph.

:func:`fuse_onnx` runs ONNX Runtime's BERT fusions (``onnxruntime.transformers.optimizer``) on the
plain-operations export (:class:`~distilintent.training.export_graph.PlainIntentGraph`): per layer
one ``Attention`` (Q, K and V in one packed MatMul, softmax and mask inside), two
``SkipLayerNormalization`` (residual Add + LayerNorm) and one ``BiasGelu``; the embeddings become one
``EmbedLayerNormalization``. The dynamo exporter writes two things the fusion patterns do not
recognise, so the graph is first rewritten into the shapes they expect (same function):

- the additive mask's ``Unsqueeze(mask, axes=[1, 2])`` → ``Unsqueeze(axes=[1])`` + ``Unsqueeze(axes=[2])``
  (the attention fusion matches ``Mul ← Sub ← Cast ← Unsqueeze ← Unsqueeze``);
- the position embeddings ``Slice(table, 0, length)`` → ``Gather(table, Expand(Unsqueeze(Range(0,
  Gather(Shape(input_ids), 1), 1)), Shape(input_ids)))``, DistilBERT's position-id pattern that the
  embedding fusion matches.

:func:`check_fused` refuses a graph in which a fusion did not happen (a changed exporter would
otherwise silently serve the slow graph). The fused graph holds ``com.microsoft`` operators: only ONNX
Runtime runs it (OpenVINO converts the plain graph).

:func:`quantize_fused` builds INT8 of the fused graph: ``dynamic`` (activations quantized per call
from their range in that call: results depend on the batch mates) or ``static`` (QDQ with activation
ranges calibrated once on the calibration texts: a text's result does not depend on its batch).
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilintent.core.tokenization import pad_into
from distilintent.sdk.runtimes import ATTENTION_MASK, INPUT_IDS

# each fused operator and how many the graph of an ``n_layers`` encoder must hold
FUSED_OPS = ("Attention", "SkipLayerNormalization", "BiasGelu", "EmbedLayerNormalization")


def expected_fused(n_layers: int) -> dict[str, int]:
    return {"Attention": n_layers, "SkipLayerNormalization": 2 * n_layers, "BiasGelu": n_layers,
            "EmbedLayerNormalization": 1}


def op_counts(model: Any) -> dict[str, int]:
    """``op_type → count`` of an ``onnx.ModelProto`` (or a path to one)."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    return dict(collections.Counter(node.op_type for node in model.graph.node))


def _constant(graph: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def prepare_for_fusion(model: Any) -> dict[str, int]:
    """Rewrite the dynamo export of :class:`PlainIntentGraph` in place into the patterns ONNX Runtime's
    fusions match (see the module docstring); returns how many of each rewrite were made."""
    from onnx import helper, numpy_helper

    graph = model.graph
    done = {"mask_unsqueeze": 0, "position_gather": 0}
    new_nodes = []
    for node in graph.node:
        if node.op_type == "Unsqueeze" and node.input[0] == ATTENTION_MASK and len(node.input) == 2:
            axes = _constant(graph, node.input[1])
            if axes is not None and [int(a) for a in np.ravel(axes)] == [1, 2]:
                first, second = f"{node.output[0]}__axis1", f"{node.output[0]}__axes"
                graph.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), second + "1"),
                                          numpy_helper.from_array(np.array([2], np.int64), second + "2")])
                new_nodes.append(helper.make_node("Unsqueeze", [ATTENTION_MASK, second + "1"], [first],
                                                  name=f"{node.name or first}_1"))
                new_nodes.append(helper.make_node("Unsqueeze", [first, second + "2"], [node.output[0]],
                                                  name=f"{node.name or first}_2"))
                done["mask_unsqueeze"] += 1
                continue
        if node.op_type == "Slice" and _is_position_table(graph, node.input[0]):
            base = node.output[0]
            graph.initializer.extend([
                numpy_helper.from_array(np.array(1, np.int64), base + "__one"),
                numpy_helper.from_array(np.array(0, np.int64), base + "__zero"),
                numpy_helper.from_array(np.array([0], np.int64), base + "__axis0"),
            ])
            new_nodes += [
                helper.make_node("Shape", [INPUT_IDS], [base + "__shape"], name=base + "_shape"),
                helper.make_node("Gather", [base + "__shape", base + "__one"], [base + "__length"],
                                 name=base + "_length", axis=0),
                helper.make_node("Range", [base + "__zero", base + "__length", base + "__one"],
                                 [base + "__range"], name=base + "_range"),
                helper.make_node("Unsqueeze", [base + "__range", base + "__axis0"], [base + "__row"],
                                 name=base + "_row"),
                helper.make_node("Expand", [base + "__row", base + "__shape"], [base + "__ids"],
                                 name=base + "_ids"),
                helper.make_node("Gather", [node.input[0], base + "__ids"], [base], name=base + "_gather", axis=0),
            ]
            done["position_gather"] += 1
            continue
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return done


def _is_position_table(graph: Any, name: str) -> bool:
    return "position_embeddings" in name and any(init.name == name for init in graph.initializer)


def fuse_onnx(source: Path, target: Path, num_heads: int, hidden_size: int, n_layers: int) -> dict[str, Any]:
    """The plain export at ``source`` → the fused graph at ``target`` (weights inside the file); raises
    :class:`ValueError` unless every fusion of :func:`expected_fused` happened."""
    import onnx
    from onnxruntime import __version__ as ort_version
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from distilintent.training.exporters import quiet

    model = onnx.load(str(source))
    rewrites = prepare_for_fusion(model)
    options = FusionOptions("bert")
    with tempfile.TemporaryDirectory(prefix="fuse-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        onnx.save(model, str(prepared))
        with quiet("root", "onnxruntime", "onnxruntime.transformers", "fusion_base"):
            optimized = optimize_model(str(prepared), model_type="bert", num_heads=num_heads,
                                       hidden_size=hidden_size, optimization_options=options, opt_level=0)
    counts = op_counts(optimized.model)
    check_fused(counts, n_layers)
    optimized.save_model_to_file(str(target), use_external_data_format=False)
    return {"tool": f"onnxruntime.transformers.optimizer (onnxruntime {ort_version}), model_type bert, "
                    "python fusions only (opt_level 0)",
            "rewrites": rewrites, "fused_ops": {op: counts.get(op, 0) for op in FUSED_OPS}}


def check_fused(counts: dict[str, int], n_layers: int) -> None:
    missing = {op: (counts.get(op, 0), n) for op, n in expected_fused(n_layers).items() if counts.get(op, 0) != n}
    if missing:
        raise ValueError("the ONNX Runtime fusions did not apply to the exported graph: "
                         + ", ".join(f"{op} {have} of {want}" for op, (have, want) in missing.items()))


QUANTIZATIONS = ("dynamic", "static")
STATIC_OPS = ("MatMul", "Gemm")  # QDQ has no Attention: its packed QKV MatMul stays FP32 inside the fused op


class _Feeds:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over token-id lists, one text per call
    (unpadded, as the latency path runs them; padded to ``width`` where given: the histogram
    calibrators need one shape)."""

    def __init__(self, token_ids: Sequence[Sequence[int]], pad_id: int, inputs: Sequence[str],
                 width: int | None = None) -> None:
        self._items = []
        for tokens in token_ids:
            input_ids = np.empty((1, width or len(tokens)), dtype=np.int64)
            attention_mask = np.empty((1, width or len(tokens)), dtype=np.int64)
            pad_into([tokens], input_ids, attention_mask, pad_id)
            feed = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
            self._items.append({name: feed[name] for name in inputs})
        self._iterator = iter(self._items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self._items)


def quantize_fused(source: Path, target: Path, quantization: str = "dynamic", *, weights: str = "s8",
                   activations: str = "u8", per_channel: bool = True, token_ids: Sequence[Sequence[int]] = (),
                   pad_id: int = 0, calibrate_method: str = "minmax") -> dict[str, Any]:
    """INT8 of the (fused) graph at ``source``.

    ``dynamic``: ``quantize_dynamic`` (activations u8 from each call's range; ``weights`` s8 or u8;
    Attention → QAttention, MatMul → DynamicQuantizeMatMul). ``static``: ``quantize_static`` in QDQ format
    on ``MatMul``/``Gemm`` with ranges calibrated on ``token_ids`` (``activations`` u8 or s8 — S8S8 or
    U8S8 — ``calibrate_method`` minmax, entropy or percentile); ONNX Runtime turns the QDQ pairs into
    integer kernels at load (graph optimization level EXTENDED or higher)."""
    import onnx
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    from distilintent.training.exporters import quiet

    types = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}
    if quantization not in QUANTIZATIONS or weights not in types or activations not in types:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, weights/activations 's8' or 'u8'; got "
                         f"{quantization!r}, {weights!r}, {activations!r}")
    settings: dict[str, Any] = {"graph": "fused", "quantization": quantization, "weights": weights,
                                "per_channel": per_channel}
    with quiet("root", "onnxruntime"):
        if quantization == "dynamic":
            quantize_dynamic(str(source), str(target), weight_type=types[weights], per_channel=per_channel,
                             reduce_range=False)
            settings.update(activations="u8", activation_ranges="per call",
                            tool=f"onnxruntime.quantization.quantize_dynamic (onnxruntime {ort_version})")
        else:
            if not token_ids:
                raise ValueError("static INT8 needs calibration texts")
            inputs = [i.name for i in onnx.load(str(source), load_external_data=False).graph.input]
            methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
            width = None if calibrate_method == "minmax" else max(len(tokens) for tokens in token_ids)
            quantize_static(str(source), str(target), _Feeds(token_ids, pad_id, inputs, width),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(STATIC_OPS),
                            per_channel=per_channel, reduce_range=False, activation_type=types[activations],
                            weight_type=types[weights], calibrate_method=methods[calibrate_method],
                            extra_options={"ActivationSymmetric": activations == "s8", "WeightSymmetric": True},
                            calibration_providers=["CPUExecutionProvider"])
            settings.update(activations=activations, activation_ranges="calibrated", format="QDQ",
                            op_types=list(STATIC_OPS),
                            calibration=calibrate_method, calibration_size=len(token_ids),
                            tool=f"onnxruntime.quantization.quantize_static (onnxruntime {ort_version})")
    return settings
