"""Inference runtimes behind :class:`~distilintent.sdk.IntentDetector`: ONNX Runtime and OpenVINO.

A runtime is built from model bytes held in memory (never from paths, so the bundle directory may be
deleted after loading) and turns token-id lists into float32 logits. Each pads as suits it:

- ONNX Runtime pads a batch to its longest text (dynamic shapes cost it nothing);
- OpenVINO pads a single text to the next *bucket* (8, 16, 32, … up to ``max_length``) and runs a
  model compiled for that static shape ``[1, bucket]``: dynamic shapes cost OpenVINO about 1.5 ms per
  call. Buckets are compiled lazily from the ``ov.Model`` kept in memory, with preallocated input
  buffers per infer request. Batches run the dynamic-shape model padded to their longest text (its
  overhead is shared by the batch).

Both are thread-safe: ``InferenceSession.run`` is; OpenVINO infer requests are not, so each thread
takes a request from a pool (a new one is created when the pool is empty).

:func:`load_runtime` checks the graph against the bundle when loading: a model whose logits output is
not as wide as the manifest's label list is refused then (it would otherwise answer with wrong labels),
with an error naming the model file.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from distilintent.core.deps import require
from distilintent.core.errors import BundleError, MissingExtraError
from distilintent.core.tokenization import pad_into

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
EMBEDDING = "sentence_embedding"
MIN_BUCKET = 8


Outputs = tuple[np.ndarray, np.ndarray | None]  # logits, pooled embeddings (None: older exports)


class Runtime(Protocol):
    backend: str
    precision: str
    has_embedding: bool

    def run(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Token-id lists (at most ``max_length`` each) → ``(len(ids), num_labels)`` float32 logits."""
        ...

    def run_outputs(self, ids: Sequence[Sequence[int]]) -> Outputs:
        """Logits and, when the graph has the output ``embedding``, the pooled sentence embeddings."""
        ...

    def close(self) -> None: ...


def buckets_for(max_length: int) -> tuple[int, ...]:
    """Static sequence lengths for OpenVINO: powers of two from 8 below ``max_length``, then ``max_length``."""
    buckets = []
    width = MIN_BUCKET
    while width < max_length:
        buckets.append(width)
        width *= 2
    return (*buckets, max_length)


def _graph_inputs(names: Sequence[str], where: str) -> tuple[str, ...]:
    unexpected = set(names) - {INPUT_IDS, ATTENTION_MASK}
    if INPUT_IDS not in names or unexpected:
        raise BundleError(
            f"{where} declares inputs {list(names)}; expected {INPUT_IDS!r} and optionally {ATTENTION_MASK!r}"
        )
    return tuple(names)


# Session settings, measured at batch 1 on the fused FP32 and INT8 graphs (benchmarks/int8_variants.py,
# benchmarks/results/int8_variants.md; Xeon with AVX-512 VNNI/AMX, 2 cores): optimization level ``all``
# (``extended``/``basic`` were 1.01-1.08× the p50 at 1 thread; the QDQ → integer-kernel fusions of static
# INT8 need at least ``extended``; ORT's own fusions leave the already fused com.microsoft operators as
# they are, parity checked at export), and no intra-op spinning: with 2 threads it bought 4 % on FP32 and
# cost 5 % on INT8, while spinning threads burn the CPU that a server's other requests need. Not set:
# ``session.set_denormal_as_zero`` (1.03× on FP32): it flushes subnormals in the calling thread too, which
# would change every float computation of the user's process (tests/test_sdk.py checks that it does not).
ORT_SESSION_DEFAULTS: dict[str, Any] = {
    "graph_optimization_level": "all",
    "session.intra_op.allow_spinning": "0",
}
_ORT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


def ort_session_options(threads: int | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """The ``onnxruntime.SessionOptions`` the SDK serves with: :data:`ORT_SESSION_DEFAULTS` and ``overrides``
    (``graph_optimization_level``: ``disable``/``basic``/``extended``/``all``; ``"session.…"`` config entries),
    sequential execution, ``threads`` intra-op threads (None: one per core)."""
    import onnxruntime as ort

    settings = {**ORT_SESSION_DEFAULTS, **(overrides or {})}
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               _ORT_LEVELS[settings.pop("graph_optimization_level")])
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    for key, value in settings.items():  # ONNX Runtime session config entries, e.g. session.intra_op.allow_spinning
        options.add_session_config_entry(key, str(value))
    options.log_severity_level = 3
    return options


class OnnxRuntimeModel:
    """An ONNX model in an ``onnxruntime.InferenceSession`` on the CPU.

    ``session_options`` override :data:`ORT_SESSION_DEFAULTS`: ``graph_optimization_level`` (``disable``,
    ``basic``, ``extended``, ``all``) and ONNX Runtime session config entries (``"session.…": "0"/"1"``)."""

    backend = "onnxruntime"

    def __init__(self, model: bytes, precision: str, threads: int | None = None, pad_id: int = 0,
                 source: str = "the ONNX model", session_options: dict[str, Any] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise MissingExtraError(
                "the ONNX Runtime backend needs 'onnxruntime', a base dependency of distilintent that is not "
                "installed: pip install onnxruntime"
            ) from err
        options = ort_session_options(threads, session_options)
        self.session_options = {**ORT_SESSION_DEFAULTS, **(session_options or {})}
        try:
            self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own untyped errors for bad models
            raise BundleError(f"ONNX Runtime cannot load {source}: {_first_line(err)}") from err
        self._inputs = _graph_inputs([i.name for i in self._session.get_inputs()], source)
        shape = self._session.get_outputs()[0].shape
        self.output_width: int | None = shape[-1] if shape and isinstance(shape[-1], int) else None
        names = [output.name for output in self._session.get_outputs()]
        self.has_embedding = EMBEDDING in names[1:]
        self._outputs = [names[0], EMBEDDING] if self.has_embedding else [names[0]]
        self.precision = precision
        self.pad_id = pad_id
        self.threads = threads

    def run(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        return self.run_outputs(ids)[0]

    def run_outputs(self, ids: Sequence[Sequence[int]]) -> Outputs:
        if len(ids) == 1:  # the latency path: no padding
            input_ids = np.array(ids, dtype=np.int64)
            attention_mask = np.ones_like(input_ids)
        else:
            width = max(len(tokens) for tokens in ids)
            input_ids = np.empty((len(ids), width), dtype=np.int64)
            attention_mask = np.empty((len(ids), width), dtype=np.int64)
            pad_into(ids, input_ids, attention_mask, self.pad_id)
        feed = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        if len(self._inputs) == 1:
            feed.pop(ATTENTION_MASK)
        outputs = self._session.run(self._outputs, feed)
        return outputs[0], (outputs[1] if self.has_embedding else None)

    def close(self) -> None:
        self._session = None


class _Slot:
    """An infer request of a static-shape compiled model, bound to its own input buffers."""

    __slots__ = ("request", "input_ids", "attention_mask")

    def __init__(self, ov: Any, compiled: Any, shape: tuple[int, int], inputs: tuple[str, ...]) -> None:
        self.request = compiled.create_infer_request()
        self.input_ids = np.zeros(shape, dtype=np.int64)
        self.attention_mask = np.zeros(shape, dtype=np.int64)
        self.request.set_tensor(INPUT_IDS, ov.Tensor(self.input_ids, shared_memory=True))
        if ATTENTION_MASK in inputs:
            self.request.set_tensor(ATTENTION_MASK, ov.Tensor(self.attention_mask, shared_memory=True))


class _StaticModel:
    """One compiled static shape with a pool of infer requests."""

    def __init__(self, ov: Any, compiled: Any, shape: tuple[int, int], inputs: tuple[str, ...]) -> None:
        self._ov = ov
        self._compiled = compiled
        self._shape = shape
        self._inputs = inputs
        self._pool: queue.SimpleQueue[_Slot] = queue.SimpleQueue()

    def run(self, ids: Sequence[Sequence[int]], pad_id: int, outputs: int) -> Outputs:
        try:
            slot = self._pool.get_nowait()
        except queue.Empty:
            slot = _Slot(self._ov, self._compiled, self._shape, self._inputs)
        try:
            pad_into(ids, slot.input_ids, slot.attention_mask, pad_id)
            slot.request.infer()
            logits = slot.request.get_output_tensor(0).data[: len(ids)].copy()
            embedding = slot.request.get_output_tensor(1).data[: len(ids)].copy() if outputs > 1 else None
            return logits, embedding
        finally:
            self._pool.put(slot)


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def _ov_core(ov: Any) -> Any:
    """One OpenVINO ``Core`` per process, created on first use (not at import)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = ov.Core()
        return _CORE


class OpenVINOModel:
    """An OpenVINO IR compiled for the CPU, per static-shape bucket, with a latency-tuned config.

    ``precision="fp32"`` sets ``INFERENCE_PRECISION_HINT=f32``: otherwise OpenVINO silently runs
    bf16 on CPUs that have it. INT8 models keep OpenVINO's default for their non-quantized ops.
    ``buckets=None`` uses :func:`buckets_for`; ``buckets=()`` runs every call, batch 1 included, on the
    dynamic-shape model without padding (what ``distilintent bench`` compares the buckets against).
    """

    backend = "openvino"

    def __init__(
        self,
        xml: bytes,
        weights: bytes,
        precision: str,
        max_length: int,
        threads: int | None = None,
        pad_id: int = 0,
        buckets: Sequence[int] | None = None,
        source: str = "the OpenVINO model",
    ) -> None:
        ov = require("openvino", "openvino", "The OpenVINO backend")
        self._ov = ov
        self._core = _ov_core(ov)
        # a writable copy that the ov.Model shares (no second copy); kept alive with the model
        self._weights = np.frombuffer(bytearray(weights), dtype=np.uint8)
        try:
            self._model = self._core.read_model(xml.decode("utf-8"), ov.Tensor(self._weights, shared_memory=True))
        except (RuntimeError, UnicodeDecodeError) as err:
            raise BundleError(f"OpenVINO cannot read {source}: {_first_line(err)}") from err
        self._inputs = _graph_inputs([port.get_any_name() for port in self._model.inputs], source)
        shape = self._model.outputs[0].get_partial_shape()
        last = shape[shape.rank.get_length() - 1] if shape.rank.is_static and shape.rank.get_length() else None
        self.output_width: int | None = last.get_length() if last is not None and last.is_static else None
        output_names = [port.get_names() for port in self._model.outputs]
        self.has_embedding = len(output_names) > 1 and EMBEDDING in output_names[1]
        self._output_count = 2 if self.has_embedding else 1
        self.precision = precision
        self.max_length = max_length
        self.pad_id = pad_id
        self.threads = threads
        self.buckets = buckets_for(max_length) if buckets is None else tuple(sorted(buckets))
        self.config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
        }
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision == "fp32":
            self.config["INFERENCE_PRECISION_HINT"] = "f32"
        self._static: dict[tuple[int, int], _StaticModel] = {}
        self._dynamic: Any = None
        self._lock = threading.Lock()

    def bucket(self, length: int) -> int:
        for width in self.buckets:
            if length <= width:
                return width
        return self.buckets[-1] if self.buckets else length

    def run(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        return self.run_outputs(ids)[0]

    def run_outputs(self, ids: Sequence[Sequence[int]]) -> Outputs:
        longest = max(len(tokens) for tokens in ids)
        if len(ids) == 1 and self.buckets:
            return self._static_model(1, self.bucket(longest)).run(ids, self.pad_id, self._output_count)
        return self._run_dynamic(ids, longest)  # dynamic shapes: no padding beyond the longest text

    def _static_model(self, batch: int, width: int) -> _StaticModel:
        model = self._static.get((batch, width))
        if model is None:
            with self._lock:
                model = self._static.get((batch, width))
                if model is None:
                    reshaped = self._model.clone()
                    reshaped.reshape({name: [batch, width] for name in self._inputs})
                    compiled = self._core.compile_model(reshaped, "CPU", self.config)
                    model = self._static[(batch, width)] = _StaticModel(self._ov, compiled, (batch, width),
                                                                         self._inputs)
        return model

    def _run_dynamic(self, ids: Sequence[Sequence[int]], width: int) -> Outputs:
        if self._dynamic is None:
            with self._lock:
                if self._dynamic is None:
                    self._dynamic = self._core.compile_model(self._model, "CPU", self.config)
        input_ids = np.empty((len(ids), width), dtype=np.int64)
        attention_mask = np.empty((len(ids), width), dtype=np.int64)
        pad_into(ids, input_ids, attention_mask, self.pad_id)
        request = self._dynamic.create_infer_request()
        feed = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        request.infer({name: feed[name] for name in self._inputs}, share_inputs=True)
        embedding = request.get_output_tensor(1).data.copy() if self.has_embedding else None
        return request.get_output_tensor(0).data.copy(), embedding

    def close(self) -> None:
        with self._lock:
            self._static.clear()
            self._dynamic = None


def load_runtime(
    backend: str,
    precision: str,
    model: bytes,
    weights: bytes | None,
    *,
    max_length: int,
    threads: int | None = None,
    pad_id: int = 0,
    num_labels: int | None = None,
    source: str | None = None,
    openvino_shapes: str = "static",
) -> Runtime:
    """Build the runtime for ``backend``; with ``num_labels``, refuse a graph with another number of logits.

    ``source`` names the model (its file) in errors. ``openvino_shapes="dynamic"`` runs OpenVINO without
    static-shape buckets (every call on the dynamic-shape model).
    """
    if openvino_shapes not in ("static", "dynamic"):
        raise ValueError(f"openvino_shapes must be 'static' or 'dynamic', got {openvino_shapes!r}")
    if backend == "onnxruntime":
        runtime: Runtime = OnnxRuntimeModel(model, precision, threads=threads, pad_id=pad_id,
                                            source=source or "the ONNX model")
    elif backend == "openvino":
        runtime = OpenVINOModel(model, weights or b"", precision, max_length, threads=threads, pad_id=pad_id,
                                buckets=() if openvino_shapes == "dynamic" else None,
                                source=source or "the OpenVINO model")
    else:
        raise ValueError(f"unknown backend {backend!r}; expected 'onnxruntime' or 'openvino'")
    if num_labels is not None:
        _check_output_width(runtime, num_labels, source or f"the {backend} model", pad_id)
    return runtime


def _check_output_width(runtime: Runtime, num_labels: int, source: str, pad_id: int) -> None:
    """Raise :class:`BundleError` (and close ``runtime``) unless it outputs ``num_labels`` logits."""
    width = getattr(runtime, "output_width", None)
    try:
        if width is None:  # a dynamic last axis: ask the model once
            width = int(np.asarray(runtime.run([[pad_id, pad_id]])).shape[-1])
    except Exception as err:  # noqa: BLE001 - any runtime failure on a trivial input means a broken graph
        runtime.close()
        raise BundleError(f"{source} fails on a two-token input: {_first_line(err)}") from err
    if width != num_labels:
        runtime.close()
        raise BundleError(
            f"{source} outputs {width} logits but the bundle's manifest.json lists {num_labels} labels: "
            "the model and the manifest are mismatched; re-export the bundle (distilintent export)"
        )


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
