"""Where the time of one call goes: ONNX Runtime's profiler and OpenVINO's per-layer counters, 16 tokens, batch 1.

    python benchmarks/profile_call.py runs/clinc150 --threads 1

For each variant of the bundle (``--variants``, default all): a 16-token query ([CLS]/[SEP] included, cut
from the bundle's validation sample) at batch 1, ``--runs`` timed calls after ``--warmup``:

1. the whole SDK call, ``IntentDetector.detect(text)`` (tokenization, the model, post-processing), p50;
2. the model alone in the runtime with the SDK's settings (``InferenceSession.run`` with the SDK's session
   options; OpenVINO compiled for the static shape [1, 16] with the SDK's config), p50, no profiler;
3. ONNX variants: a session with ``SessionOptions.enable_profiling``; the JSON trace's ``Node`` events
   (kernel time per node, ``args.op_name``) of the timed runs, summed per op type, per run;
   OpenVINO variants: ``PERF_COUNT`` on, ``request.get_profiling_info()`` after each call (``real_time``
   of the executed layers, per layer type and kernel), averaged.

Writes ``profile.md`` into ``--out`` (default benchmarks/results). With ``--floor floor.json`` (from
``distilintent bench --floor-only``) each variant's matrix-product time is set against the GEMM floor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distilintent.bench.floor import Architecture, floor_for  # noqa: E402
from distilintent.bench.floor import session as ort_session  # noqa: E402
from distilintent.bench.machine import load_average, machine  # noqa: E402
from distilintent.bench.runner import read_texts  # noqa: E402
from distilintent.bench.seqlen import exact_length_texts  # noqa: E402
from distilintent.core.bundle import Bundle  # noqa: E402
from distilintent.sdk import IntentDetector  # noqa: E402

TOKENS = 16
GEMM_OPS = {"MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
            "QLinearMatMul", "FullyConnected", "MatMulNBits", "Attention", "MultiHeadAttention", "MHA",
            "ScaledDotProductAttention"}


def p50s_ms(calls: dict[str, Any], runs: int, warmup: int, rounds: int = 10) -> dict[str, float]:
    """p50 ms of each of ``calls``, timed interleaved in ``rounds`` (machine drift hits all alike)."""
    samples: dict[str, list[int]] = {name: [] for name in calls}
    for call in calls.values():
        for _ in range(warmup):
            call()
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(max(1, runs // rounds)):
                start = time.perf_counter_ns()
                call()
                samples[name].append(time.perf_counter_ns() - start)
    return {name: float(np.median(values)) / 1e6 for name, values in samples.items()}


def median_ops(per_run: list[dict[str, float]], nodes: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per op type: the median over runs of its summed kernel µs in a run (→ ms), and its nodes per run."""
    ops = {op for run in per_run for op in run}
    return {op: {"ms": float(np.median([run.get(op, 0.0) for run in per_run])) / 1e3,
                 "nodes": nodes[op] / len(per_run)} for op in ops}


def ort_trace_by_op(trace: list[dict[str, Any]], skip_runs: int) -> tuple[dict[str, dict[str, float]], int, float]:
    """Per op type: the median over the runs after the first ``skip_runs`` of its node events' summed kernel
    time, and nodes per run; with the number of those runs and their median ``model_run`` ms."""
    runs = sorted((event["ts"], event["ts"] + event["dur"]) for event in trace
                  if event.get("cat") == "Session" and event.get("name") == "model_run")[skip_runs:]
    if not runs:
        raise ValueError("the ONNX Runtime trace has no model_run event after the warm-up")
    starts = [begin for begin, _ in runs]
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in runs]
    nodes: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] < starts[0]:
            continue
        index = int(np.searchsorted(starts, event["ts"], side="right")) - 1
        op = event.get("args", {}).get("op_name", "?")
        per_run[index][op] += event["dur"]
        nodes[op] += 1
    return median_ops(per_run, nodes), len(runs), float(np.median([end - begin for begin, end in runs])) / 1e3


def profile_onnx(bundle: Bundle, variant: Any, ids: list[int], threads: int | None, runs: int,
                 warmup: int) -> dict[str, Any]:
    model = bundle.read_bytes(variant.file)
    feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
    plain = ort_session(model, threads)
    names = [i.name for i in plain.get_inputs()]
    feed = {name: feed[name] for name in names}
    run_ms = {"model": lambda: plain.run(None, feed)}
    import onnxruntime as ort

    from distilintent.sdk.runtimes import ort_session_options

    options = ort_session_options(threads)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        profiled = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            profiled.run(None, feed)
        trace = json.loads(Path(profiled.end_profiling()).read_text())
    ops, counted, model_run_ms = ort_trace_by_op(trace, warmup)
    return {"tool": f"onnxruntime {ort.__version__} profiler (enable_profiling), {counted} runs",
            "model": run_ms["model"], "profiled_run_ms": model_run_ms, "ops": ops}


def profile_openvino(bundle: Bundle, variant: Any, ids: list[int], threads: int | None, runs: int,
                     warmup: int) -> dict[str, Any]:
    import openvino as ov

    core = ov.Core()
    weights = np.frombuffer(bytearray(bundle.read_bytes(variant.weights)), dtype=np.uint8)
    model = core.read_model(bundle.read_bytes(variant.file).decode("utf-8"), ov.Tensor(weights, shared_memory=True))
    names = [port.get_any_name() for port in model.inputs]
    model.reshape({name: [1, len(ids)] for name in names})
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}  # the SDK's (sdk/runtimes.py)
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if variant.precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
    feed = {name: feed[name] for name in names}
    plain = core.compile_model(model, "CPU", config).create_infer_request()
    request = core.compile_model(model, "CPU", {**config, "PERF_COUNT": True}).create_infer_request()
    for _ in range(warmup):
        request.infer(feed)
    per_run: list[dict[str, float]] = []
    nodes: dict[str, float] = defaultdict(float)
    wall = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        request.infer(feed)
        wall.append(time.perf_counter_ns() - start)
        run: dict[str, float] = defaultdict(float)
        for info in request.get_profiling_info():
            if str(info.status).rsplit(".", 1)[-1] == "EXECUTED":
                key = f"{info.node_type} ({info.exec_type})"
                run[key] += info.real_time.total_seconds() * 1e6
                nodes[key] += 1
        per_run.append(run)
    return {"tool": f"openvino {ov.__version__} PERF_COUNT (get_profiling_info), {runs} runs",
            "model": lambda: plain.infer(feed) and weights,  # the compiled model shares ``weights``: keep it alive
            "profiled_run_ms": float(np.median(wall)) / 1e6,
            "ops": median_ops(per_run, nodes)}


def query(bundle: Bundle, data: Path | None, split: str | None) -> tuple[str, list[int]]:
    from tokenizers import Tokenizer

    texts, _, _ = read_texts(data, split, bundle)
    tokenizer_json = bundle.read_bytes("tokenizer.json").decode("utf-8")
    text = exact_length_texts(tokenizer_json, texts, TOKENS, count=1)[0]
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    return text, tokenizer.encode(text).ids


def to_markdown(report: dict[str, Any], top: int) -> str:
    info = report["machine"]
    lines = [f"# One call, profiled: {report['bundle']}", "",
             f"{report['date']} · {info.get('cpu', '?')}, {info.get('cpus', '?')} logical CPUs, ISA: "
             f"{' '.join(info.get('isa', []))} · threads: {report['threads'] or 'runtime default'} · load average "
             f"before/after: {report['load_average_before']} / {report['load_average_after']}", "",
             f"Command: `{report['command']}`", "",
             f"Query ({report['tokens']} tokens, [CLS]/[SEP] included, batch 1): “{report['text']}”. "
             f"{report['runs']} timed calls after {report['warmup']} warm-up calls per measurement. `call` = "
             "`IntentDetector.detect(text)` p50 (tokenization, the model, post-processing); `model` = the runtime "
             "alone with the SDK's settings (no profiler) p50; `profiled` = one run with the profiler on. Op "
             "times are the median over the profiled runs of each op type's summed kernel time in a run; % is of their "
             "sum (the profiled run's compute) and of the whole call's p50.", ""]
    for name, entry in report["variants"].items():
        ops = sorted(entry["ops"].items(), key=lambda item: -item[1]["ms"])
        total = sum(value["ms"] for _, value in ops)
        gemm = sum(value["ms"] for op, value in ops if op.split(" (")[0] in GEMM_OPS)
        lines += [f"## {name}", "",
                  f"{entry['tool']}. call {entry['call_ms']:.3f} ms · model {entry['model_ms']:.3f} ms "
                  f"({100 * entry['model_ms'] / entry['call_ms']:.0f}% of the call; the other "
                  f"{entry['call_ms'] - entry['model_ms']:.3f} ms are tokenization, feeds and post-processing) · "
                  f"profiled run {entry['profiled_run_ms']:.3f} ms, op kernels {total:.3f} ms · matrix-product "
                  f"ops {gemm:.3f} ms ({100 * gemm / total:.0f}% of the kernels)"
                  + (f" vs the {entry['floor_kind']} GEMM floor {entry['floor_ms']:.3f} ms "
                     f"({gemm / entry['floor_ms']:.1f}×; the whole call {entry['call_ms'] / entry['floor_ms']:.1f}×)"
                     if entry.get("floor_ms") else "") + ".", "",
                  "| op type | nodes per run | ms per run | % of kernels | % of call |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {op} | {value['nodes']:.0f} | {value['ms']:.3f} | {100 * value['ms'] / total:.1f}% | "
                  f"{100 * value['ms'] / entry['call_ms']:.1f}% |" for op, value in ops[:top]]
        rest = ops[top:]
        if rest:
            ms = sum(value["ms"] for _, value in rest)
            lines.append(f"| {len(rest)} other op types | {sum(v['nodes'] for _, v in rest):.0f} | {ms:.3f} | "
                         f"{100 * ms / total:.1f}% | {100 * ms / entry['call_ms']:.1f}% |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--variants", default=None, help="comma-separated variants (default: all of the bundle's)")
    parser.add_argument("--threads", type=int, default=1, help="inference threads (0: the runtime's default)")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--top", type=int, default=12, help="op types listed per variant (default 12)")
    parser.add_argument("--data", type=Path, help="texts to cut the query from (default: the bundle's samples)")
    parser.add_argument("--split")
    parser.add_argument("--floor", type=Path, help="floor.json from distilintent bench --floor-only")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    bundle = Bundle.open(args.bundle)
    threads = args.threads or None
    text, ids = query(bundle, args.data, args.split)
    floor = json.loads(args.floor.read_text()) if args.floor else None
    arch = Architecture.from_manifest(bundle.manifest)
    chosen = args.variants.split(",") if args.variants else list(bundle.variants)
    report: dict[str, Any] = {
        "bundle": str(args.bundle), "date": dt.datetime.now().isoformat(timespec="seconds"), "text": text,
        "tokens": len(ids), "threads": threads, "runs": args.runs, "warmup": args.warmup, "variants": {},
        "load_average_before": load_average(), "machine": machine(),
        "command": " ".join(["python", *[Path(sys.argv[0]).as_posix(), *sys.argv[1:]]])}
    for name in chosen:
        variant = bundle.variants[name]
        detector = IntentDetector(args.bundle, backend=variant.backend, precision=variant.precision, threads=threads)
        profile = (profile_onnx if variant.backend == "onnxruntime" else profile_openvino)(
            bundle, variant, ids, threads, args.runs, args.warmup)
        timed = p50s_ms({"call": lambda detector=detector: detector.detect(text), "model": profile.pop("model")},
                        args.runs, args.warmup)
        detector.close()
        entry = {"call_ms": timed["call"], "model_ms": timed["model"], **profile}
        kind = {"fp32": "fp32", "int8": "int8"}.get(variant.precision)
        if floor and kind and (threads in floor["threads"]):
            entry.update(floor_kind=kind, floor_ms=floor_for(floor, arch, len(ids), kind, threads))
        report["variants"][name] = entry
        print(f"{name}: call {entry['call_ms']:.3f} ms, model {entry['model_ms']:.3f} ms", file=sys.stderr)
    report["load_average_after"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(report, args.top)
    (args.out / "profile.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
