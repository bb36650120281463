"""The arithmetic floor of one text: this CPU's GEMM throughput at the model's own shapes, with ONNX Runtime.

A DistilBERT layer at ``M`` tokens (batch 1) does four ``M×d·d×d`` products (Q, K, V, output projection),
``M×d·d×ffn`` and ``M×ffn·ffn×d`` (the FFN) and, per head, ``QKᵀ`` and ``softmax·V`` (``M·M·d`` multiply-adds
each, over all heads). Multiply-adds per text::

    n_layers × M × (4·d² + 2·d·ffn)  +  n_layers × 2 × M² × d

Each of those GEMMs is timed alone in a tiny single-op ONNX graph run by ONNX Runtime (the SDK's runtime,
with the SDK's session options): ``MatMul`` for fp32, ``MatMulInteger`` (uint8 × int8 → int32, the integer
GEMM alone) for int8, and ``DynamicQuantizeMatMul`` (what ORT fuses the SDK's dynamically quantized
``onnx-int8`` variant into: activations quantized per call, per-channel int8 weights) as ``int8-dq``.
A graph holds the model's own number of that GEMM (``4·n_layers`` of ``d×d``, ``n_layers`` of each FFN
product), each with its own weights, so the weights stream from cache as in the model and one
``session.run``'s overhead is shared by them. The attention products (both operands activations) are timed
in fp32 for every floor: the SDK's int8 variant keeps them in fp32.

The floor of a text is the sum over its GEMMs of their median time: what the model's matrix products
alone take on this CPU, with no layer norm, softmax, GELU, tokenization or Python. ``× floor`` in a
``distilintent bench`` report is a row's batch-1 latency divided by it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from distilintent.core.deps import require

KINDS = ("fp32", "int8", "int8-dq")
KIND_OPS = {"fp32": "MatMul (fp32)", "int8": "MatMulInteger (uint8 × int8 → int32)",
            "int8-dq": "DynamicQuantizeMatMul (fp32 in, activations quantized per call, int8 per-channel weights)"}
ATTENTION = ("attn_scores", "attn_context")
DEFAULT_TOKENS = (8, 16, 32, 64)


@dataclass(frozen=True)
class Architecture:
    """What the floor depends on: the manifest's ``architecture`` (``dim``, ``n_layers``, ``n_heads``,
    ``hidden_dim``)."""

    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Architecture:
        found = manifest.get("architecture") or {}
        missing = [key for key in ("dim", "n_layers", "n_heads", "hidden_dim") if not isinstance(found.get(key), int)]
        if missing:
            raise ValueError(f"the bundle's manifest has no architecture {', '.join(missing)}: cannot count its "
                             "multiply-adds (re-export it with this distilintent)")
        arch = cls(found["dim"], found["n_layers"], found["n_heads"], found["hidden_dim"])
        if arch.dim % arch.n_heads:
            raise ValueError(f"architecture dim {arch.dim} is not a multiple of n_heads {arch.n_heads}")
        return arch


@dataclass(frozen=True)
class Gemm:
    """One matrix product of the model at ``m`` tokens: ``batch`` × (``m×k`` · ``k×n``), ``per_layer`` times
    per layer. ``weights``: the right operand is a constant (a linear layer), else both are activations."""

    name: str
    m: int
    k: int
    n: int
    per_layer: int
    batch: int = 1
    weights: bool = True

    @property
    def multiply_adds(self) -> int:
        return self.batch * self.m * self.k * self.n


def gemms(arch: Architecture, tokens: int) -> list[Gemm]:
    """The matrix products of one layer at ``tokens`` tokens (batch 1)."""
    d, ffn, heads = arch.dim, arch.hidden_dim, arch.n_heads
    return [Gemm("qkvo", tokens, d, d, 4), Gemm("ffn_in", tokens, d, ffn, 1), Gemm("ffn_out", tokens, ffn, d, 1),
            Gemm("attn_scores", tokens, d // heads, tokens, 1, batch=heads, weights=False),
            Gemm("attn_context", tokens, tokens, d // heads, 1, batch=heads, weights=False)]


def multiply_adds(arch: Architecture, tokens: int) -> int:
    """Multiply-adds of the model's matrix products for one text of ``tokens`` tokens."""
    d, ffn = arch.dim, arch.hidden_dim
    return arch.n_layers * tokens * (4 * d * d + 2 * d * ffn) + arch.n_layers * 2 * tokens * tokens * d


# -- the graphs -------------------------------------------------------------------------------------


def gemm_graph(kind: str, gemm: Gemm, count: int, seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    """An ONNX model of ``count`` independent copies of ``gemm`` (each with its own weights) and a feed.

    Outputs ``y0 … y{count-1}``; inputs ``x`` (and ``w0 …`` for the attention products, which have no weights).
    """
    onnx = require("onnx", "train", "The GEMM floor benchmark")
    from onnx import TensorProto, helper, numpy_helper

    if kind not in KINDS:
        raise ValueError(f"unknown GEMM kind {kind!r}; expected one of {KINDS}")
    if not gemm.weights and kind != "fp32":
        raise ValueError("the attention products are timed in fp32 only")
    rng = np.random.default_rng(seed)
    lead = [gemm.batch] if gemm.batch > 1 else []
    x_shape, w_shape, y_shape = [*lead, gemm.m, gemm.k], [*lead, gemm.k, gemm.n], [*lead, gemm.m, gemm.n]
    inputs, nodes, initializers = [], [], []
    feed: dict[str, np.ndarray] = {}
    domain = []
    if kind == "fp32":
        feed["x"] = rng.standard_normal(x_shape, dtype=np.float32)
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape))
        out_type = TensorProto.FLOAT
    elif kind == "int8":
        feed["x"] = rng.integers(0, 256, x_shape, dtype=np.uint8)
        inputs.append(helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape))
        initializers.append(numpy_helper.from_array(np.array(128, dtype=np.uint8), "x_zero_point"))
        out_type = TensorProto.INT32
    else:
        feed["x"] = rng.standard_normal(x_shape, dtype=np.float32)
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape))
        out_type = TensorProto.FLOAT
        domain = [helper.make_opsetid("com.microsoft", 1)]
    outputs = []
    for index in range(count):
        out = f"y{index}"
        outputs.append(helper.make_tensor_value_info(out, out_type, y_shape))
        weight = f"w{index}"
        if not gemm.weights:  # both operands activations: each copy its own second input (never merged by ORT)
            feed[weight] = rng.standard_normal(w_shape, dtype=np.float32)
            inputs.append(helper.make_tensor_value_info(weight, TensorProto.FLOAT, w_shape))
            nodes.append(helper.make_node("MatMul", ["x", weight], [out]))
            continue
        if kind == "fp32":
            initializers.append(numpy_helper.from_array(
                (rng.standard_normal(w_shape) / np.sqrt(gemm.k)).astype(np.float32), weight))
            nodes.append(helper.make_node("MatMul", ["x", weight], [out]))
        elif kind == "int8":
            initializers.append(numpy_helper.from_array(rng.integers(-127, 128, w_shape, dtype=np.int8), weight))
            nodes.append(helper.make_node("MatMulInteger", ["x", weight, "x_zero_point"], [out]))
        else:  # per-output-channel symmetric int8 weights, as quantize_dynamic(per_channel=True) writes them
            initializers += [
                numpy_helper.from_array(rng.integers(-127, 128, w_shape, dtype=np.int8), weight),
                numpy_helper.from_array(((rng.random(gemm.n) + 0.5) / 127).astype(np.float32), f"{weight}_scale"),
                numpy_helper.from_array(np.zeros(gemm.n, dtype=np.int8), f"{weight}_zero_point")]
            nodes.append(helper.make_node("DynamicQuantizeMatMul", ["x", weight, f"{weight}_scale",
                                                                   f"{weight}_zero_point"], [out],
                                          domain="com.microsoft"))
    graph = helper.make_graph(nodes, f"{kind}_{gemm.name}_{gemm.m}x{gemm.k}x{gemm.n}", inputs, outputs,
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *domain])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), feed


def session(model: bytes, threads: int | None) -> Any:
    """An ``InferenceSession`` with the SDK's options (:class:`distilintent.sdk.runtimes.OnnxRuntimeModel`)."""
    import onnxruntime as ort

    from distilintent.sdk.runtimes import ort_session_options

    return ort.InferenceSession(model, ort_session_options(threads), providers=["CPUExecutionProvider"])


def time_gemm(kind: str, gemm: Gemm, count: int, threads: int | None, runs: int = 200,
              warmup: int = 20) -> dict[str, Any]:
    """Median seconds of one ``gemm`` (a run of the ``count``-copy graph ÷ ``count``) over ``runs`` runs,
    the multiply-adds per second it makes, and the spread (p10/p90)."""
    model, feed = gemm_graph(kind, gemm, count)
    sess = session(model, threads)
    binding = sess.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, value)
    for output in sess.get_outputs():
        binding.bind_output(output.name, "cpu")
    for _ in range(warmup):
        sess.run_with_iobinding(binding)
    samples = np.empty(runs, dtype=np.float64)
    clock = time.perf_counter_ns
    for index in range(runs):
        start = clock()
        sess.run_with_iobinding(binding)
        samples[index] = clock() - start
    per_op = samples / 1e9 / count
    median = float(np.median(per_op))
    return {"kind": kind, "gemm": gemm.name, "m": gemm.m, "k": gemm.k, "n": gemm.n, "batch": gemm.batch,
            "threads": threads, "copies": count, "runs": runs, "median_s": median,
            "p10_s": float(np.percentile(per_op, 10)), "p90_s": float(np.percentile(per_op, 90)),
            "multiply_adds": gemm.multiply_adds, "gmacs_per_s": gemm.multiply_adds / median / 1e9}


def measure(arch: Architecture, tokens: Iterable[int] = DEFAULT_TOKENS, threads: Sequence[int | None] = (1, 2),
            kinds: Sequence[str] = KINDS, runs: int = 200, warmup: int = 20,
            progress: Any = None) -> dict[str, Any]:
    """Time every GEMM of ``arch`` at each token count, kind and thread count; the floor report."""
    table = []
    tokens = sorted(set(tokens))
    for thread_count in threads:
        for m in tokens:
            for gemm in gemms(arch, m):
                count = gemm.per_layer * arch.n_layers
                for kind in (("fp32",) if not gemm.weights else kinds):
                    table.append(time_gemm(kind, gemm, count, thread_count, runs, warmup))
                    if progress is not None:
                        progress(table[-1])
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "architecture": asdict(arch),
              "tokens": tokens, "threads": list(threads), "kinds": list(kinds), "runs": runs, "warmup": warmup,
              "ops": {kind: KIND_OPS[kind] for kind in kinds}, "gemms": table}
    report["floors"] = floors(report, arch, tokens)
    return report


# -- from the table to the floor -----------------------------------------------------------------------


def _threads_key(threads: int | None) -> str:
    return "default" if threads is None else str(threads)


def gemm_seconds(table: Sequence[dict[str, Any]], kind: str, gemm: Gemm, threads: int | None) -> float:
    """Seconds of ``gemm`` from the measured ``table``: the median at its ``m``, or interpolated linearly in
    ``m`` between the measured ones (proportionally to ``m`` beyond them)."""
    points = sorted((entry["m"], entry["median_s"]) for entry in table
                    if (entry["kind"], entry["gemm"], entry["threads"]) == (kind, gemm.name, threads)
                    and _same_shape(entry, gemm))
    if not points:
        raise ValueError(f"no {kind} timing of {gemm.name} ({gemm.k}×{gemm.n}) at {_threads_key(threads)} threads "
                         "in the floor measurement")
    ms = [m for m, _ in points]
    if gemm.m in ms:
        return points[ms.index(gemm.m)][1]
    if gemm.m < ms[0]:
        return points[0][1] * gemm.m / ms[0]
    if gemm.m > ms[-1]:
        return points[-1][1] * gemm.m / ms[-1]
    return float(np.interp(gemm.m, ms, [seconds for _, seconds in points]))


def _same_shape(entry: dict[str, Any], gemm: Gemm) -> bool:
    """A linear layer's k×n; an attention product's heads and head width (its other side is the token count)."""
    if gemm.weights:
        return (entry["k"], entry["n"], entry["batch"]) == (gemm.k, gemm.n, gemm.batch)
    head = "k" if gemm.name == "attn_scores" else "n"
    return entry["batch"] == gemm.batch and entry[head] == getattr(gemm, head)


def floor_seconds(table: Sequence[dict[str, Any]], arch: Architecture, tokens: int, kind: str,
                  threads: int | None) -> float:
    """The floor of one text of ``tokens`` tokens: Σ over the model's GEMMs of their time. ``kind`` is the
    precision of the linear layers; the attention products are fp32."""
    total = 0.0
    for gemm in gemms(arch, tokens):
        total += arch.n_layers * gemm.per_layer * gemm_seconds(table, kind if gemm.weights else "fp32", gemm,
                                                               threads)
    return total


def floors(report: dict[str, Any], arch: Architecture, tokens: Iterable[int]) -> list[dict[str, Any]]:
    """One entry per kind, thread count and token count: multiply-adds, floor ms and the effective rate."""
    out = []
    for threads in report["threads"]:
        for kind in report["kinds"]:
            for m in tokens:
                seconds = floor_seconds(report["gemms"], arch, m, kind, threads)
                macs = multiply_adds(arch, m)
                out.append({"kind": kind, "threads": threads, "tokens": m, "multiply_adds": macs,
                            "floor_ms": seconds * 1e3, "gmacs_per_s": macs / seconds / 1e9})
    return out


def floor_for(report: dict[str, Any], arch: Architecture, tokens: int, kind: str, threads: int | None) -> float:
    """Floor ms of ``tokens`` tokens from a floor report (measured in this run or read from floor.json)."""
    return floor_seconds(report["gemms"], arch, tokens, kind, threads) * 1e3


def to_markdown(report: dict[str, Any]) -> str:
    """``floor.md``: GEMM throughput per shape and the floor per sequence length."""
    arch = report["architecture"]
    info = report.get("machine") or {}
    lines = [f"# GEMM floor: {report.get('bundle', '?')}", "",
             f"{report['date']} · {info.get('cpu', '?')}, {info.get('cpus', '?')} logical CPUs, ISA: "
             f"{' '.join(info.get('isa', [])) or '?'} · onnxruntime "
             f"{(info.get('libraries') or {}).get('onnxruntime', '?')} · load average before/after: "
             f"{info.get('load_average_before')} / {info.get('load_average_after')}", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += [f"Architecture: {arch['n_layers']} layers, dim {arch['dim']}, {arch['n_heads']} heads, FFN "
              f"{arch['hidden_dim']}. Each GEMM timed alone with ONNX Runtime (the SDK's session options), "
              f"median of {report['runs']} runs after {report['warmup']} warm-up runs, in a graph of the model's "
              "own number of that GEMM (each with its own weights). Kinds: "
              + "; ".join(f"`{kind}` = {op}" for kind, op in report["ops"].items()) + ".", "",
              "Multiply-adds per text = n_layers × M × (4·d² + 2·d·ffn) + n_layers × 2 × M² × d; the floor is the "
              "sum of the measured GEMM medians (the attention products in fp32 for every kind): the matrix "
              "products alone, without layer norm, softmax, GELU, tokenization or Python.", "",
              "## Floor per text", "",
              "| threads | kind | " + " | ".join(f"{m} tokens" for m in report["tokens"]) + " |",
              "|---|---|" + "---:|" * len(report["tokens"])]
    for threads in report["threads"]:
        for kind in report["kinds"]:
            cells = []
            for m in report["tokens"]:
                entry = next(e for e in report["floors"] if e["kind"] == kind and e["threads"] == threads
                             and e["tokens"] == m)
                cells.append(f"{entry['floor_ms']:.3f} ms ({entry['gmacs_per_s']:.0f} GMAC/s)")
            lines.append(f"| {_threads_key(threads)} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Multiply-adds per text: " + ", ".join(
        f"{m} tokens {multiply_adds(Architecture(**arch), m) / 1e6:.1f} M" for m in report["tokens"]) + ".", "",
              "## GEMM throughput (GMAC/s, median; p10–p90 of the time in brackets as GMAC/s)", "",
              "| threads | kind | GEMM (k×n) | " + " | ".join(f"M={m}" for m in report["tokens"]) + " |",
              "|---|---|---|" + "---:|" * len(report["tokens"])]
    seen = []
    for entry in report["gemms"]:
        key = (entry["threads"], entry["kind"], entry["gemm"])
        if key not in seen:
            seen.append(key)
    for threads, kind, name in seen:
        cells, shape = [], ""
        for m in report["tokens"]:
            entry = next((e for e in report["gemms"] if (e["threads"], e["kind"], e["gemm"], e["m"]) ==
                          (threads, kind, name, m)), None)
            if entry is None:
                cells.append("-")
                continue
            shape = (f"{entry['batch']}×({entry['k']}×{entry['n']})" if entry["batch"] > 1
                     else f"{entry['k']}×{entry['n']}")
            macs = entry["multiply_adds"] / 1e9
            cells.append(f"{entry['gmacs_per_s']:.0f} ({macs / entry['p90_s']:.0f}–{macs / entry['p10_s']:.0f})")
        if name.startswith("attn"):
            shape = "heads × M×dh·dh×M" if name == "attn_scores" else "heads × M×M·M×dh"
        lines.append(f"| {_threads_key(threads)} | {kind} | {name} {shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
