"""Which ONNX Runtime / OpenVINO variant to serve at batch 1: the plain and fused graphs in FP32 and INT8
(dynamic vs static QDQ, U8S8 vs S8S8, per-channel vs per-tensor) and OpenVINO FP32 vs INT8 (NNCF).

    .venv/bin/python benchmarks/int8_variants.py --bundle runs/clinc150 \\
        --data ../shared/data/clinc150/clinc150.jsonl --latency-texts 300

Works on a copy of the bundle (and of ``<bundle>.samples``; INT8 is calibrated on its ``calibration``
sample, as ``distilintent export`` does). For each candidate:

- batch-1 latency (``run([ids])``, the server's path) at 1 and 2 intra-op threads on
  ``--latency-texts`` test queries (evenly spaced through the split, which is sorted by intent):
  ``--rounds`` interleaved rounds (every candidate once per round, the order rotated), p50/p99 over
  all calls, the median of the per-round p50s, and the ratio of each round's p50 to FP32's (plain
  ONNX graph) p50 in the same round (median over rounds);
- top-1 agreement with the FP32 plain graph on the whole test split in batches of 32 and on
  ``--batch1-texts`` of it (evenly spaced) one by one, and on the bundle's validation sample against
  torch (export's gate: >= 99 % both ways, the first 1000 one by one);
- test accuracy (top-1 over the bundle's labels), batched (whole split) and one by one.

A candidate passes when it passes export's gate and its test accuracy (both ways) is within 0.3
points of FP32's; the chosen INT8 variant is the passing ONNX Runtime one with the lowest batch-1 p50
ratio at 1 thread.

Then ONNX Runtime session settings for the fused FP32 and the chosen INT8 graphs at batch 1
(optimization level, intra-op spinning, denormals as zero). Writes ``int8_variants.json`` and
``int8_variants.md`` into ``--out`` with the machine (CPU model and its flags).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distilintent.core.bundle import Bundle  # noqa: E402
from distilintent.core.samples import read_samples, samples_dir  # noqa: E402
from distilintent.core.tokenization import TextEncoder  # noqa: E402
from distilintent.sdk.runtimes import ORT_SESSION_DEFAULTS, OnnxRuntimeModel, OpenVINOModel  # noqa: E402
from distilintent.training import export as export_module  # noqa: E402
from distilintent.training import exporters, optimize  # noqa: E402
from distilintent.training.model import load_bundle_model  # noqa: E402

REFERENCE = "onnx-fp32 plain"
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                     "amx_bf16", "avx512_fp16")
# name → (graph, quantization, weights, activations, per_channel); None: FP32
ORT_CANDIDATES: dict[str, tuple[str, str | None, str, str, bool]] = {
    "onnx-fp32 plain": ("plain", None, "", "", False),
    "onnx-fp32 fused": ("fused", None, "", "", False),
    "onnx-int8 plain dynamic s8 per-channel reduce-range (previous default)": ("plain", "dynamic", "s8", "u8", True),
    "onnx-int8 fused dynamic U8S8 per-channel": ("fused", "dynamic", "s8", "u8", True),
    "onnx-int8 fused dynamic U8S8 per-tensor": ("fused", "dynamic", "s8", "u8", False),
    "onnx-int8 fused dynamic U8U8 per-channel": ("fused", "dynamic", "u8", "u8", True),
    "onnx-int8 fused static U8S8 per-channel": ("fused", "static", "s8", "u8", True),
    "onnx-int8 fused static S8S8 per-channel": ("fused", "static", "s8", "s8", True),
    "onnx-int8 fused static S8S8 per-tensor": ("fused", "static", "s8", "s8", False),
}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags"))
        info["cpu"] = model
        info["flags_of_interest"] = [flag for flag in FLAGS_OF_INTEREST if flag in flags]
        info["flags"] = " ".join(flags)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    import onnxruntime
    import openvino

    info["onnxruntime"] = onnxruntime.__version__
    info["openvino"] = openvino.__version__
    return info


def build(bundle_path: Path, work: Path, with_openvino: bool) -> tuple[dict[str, dict[str, Any]], Any, Any]:
    """Every candidate's model bytes and how it was built."""
    bundle = Bundle.open(bundle_path)
    encoder = TextEncoder.from_bundle(bundle)
    model = load_bundle_model(bundle)
    config = model.encoder.config
    plain, fused = work / "plain.onnx", work / "fused.onnx"
    started = time.perf_counter()
    exporters.export_onnx(model, plain, 18, bundle.max_length)
    fusion = optimize.fuse_onnx(plain, fused, config.n_heads, config.dim, config.n_layers)
    print(f"exported and fused in {time.perf_counter() - started:.1f}s: {fusion['fused_ops']}", flush=True)
    calibration = [example.text for example in read_samples(bundle_path, "calibration")]
    calibration_ids = encoder.token_ids(calibration[: export_module.CALIBRATION_SIZE])
    candidates: dict[str, dict[str, Any]] = {}
    for name, (graph, quantization, weights, activations, per_channel) in ORT_CANDIDATES.items():
        source = plain if graph == "plain" else fused
        started = time.perf_counter()
        if quantization is None:
            path, settings = source, {"graph": graph}
        elif graph == "plain":
            path = work / "plain_int8.onnx"
            settings = {"graph": "plain", **exporters.quantize_onnx(plain, path)}
        else:
            path = work / f"{graph}_{quantization}_{weights}{activations}_{int(per_channel)}.onnx"
            settings = optimize.quantize_fused(source, path, quantization, weights=weights, activations=activations,
                                               per_channel=per_channel, token_ids=calibration_ids,
                                               pad_id=encoder.pad_token_id)
        candidates[name] = {"backend": "onnxruntime", "precision": "fp32" if quantization is None else "int8",
                            "model": path.read_bytes(), "settings": settings, "size_bytes": path.stat().st_size,
                            "build_s": round(time.perf_counter() - started, 1)}
        print(f"built {name} in {candidates[name]['build_s']}s", flush=True)
    if with_openvino:
        started = time.perf_counter()
        ov_model, settings = exporters.convert_openvino(plain, work / "model.xml")
        candidates["openvino-fp32"] = {"backend": "openvino", "precision": "fp32",
                                       "model": (work / "model.xml").read_bytes(),
                                       "weights": (work / "model.bin").read_bytes(), "settings": settings,
                                       "size_bytes": (work / "model.bin").stat().st_size,
                                       "build_s": round(time.perf_counter() - started, 1)}
        started = time.perf_counter()
        quant = exporters.quantize_openvino(ov_model, calibration_ids, work / "model_int8.xml", bundle.max_length,
                                            encoder.pad_token_id)
        candidates["openvino-int8 (NNCF)"] = {"backend": "openvino", "precision": "int8",
                                              "model": (work / "model_int8.xml").read_bytes(),
                                              "weights": (work / "model_int8.bin").read_bytes(), "settings": quant,
                                              "size_bytes": (work / "model_int8.bin").stat().st_size,
                                              "build_s": round(time.perf_counter() - started, 1)}
        print(f"built openvino in {candidates['openvino-int8 (NNCF)']['build_s']}s", flush=True)
    return candidates, model, encoder


def runtime(candidate: dict[str, Any], threads: int, max_length: int, pad_id: int,
            session_options: dict[str, Any] | None = None) -> Any:
    if candidate["backend"] == "onnxruntime":
        return OnnxRuntimeModel(candidate["model"], candidate["precision"], threads=threads, pad_id=pad_id,
                                session_options=session_options)
    return OpenVINOModel(candidate["model"], candidate["weights"], candidate["precision"], max_length,
                         threads=threads, pad_id=pad_id)


def latency(runtimes: dict[str, Any], ids: list[list[int]], rounds: int, reference: str) -> dict[str, dict[str, Any]]:
    """Interleaved rounds of batch-1 calls; p50/p99 in ms, per-round p50s and ratios to ``reference``."""
    names = list(runtimes)
    for name in names:  # warm up: compile OpenVINO's buckets, first-run allocations
        for tokens in ids[:20]:
            runtimes[name].run([tokens])
    times: dict[str, list[float]] = {name: [] for name in names}
    round_p50: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds):
        order = names[number % len(names):] + names[: number % len(names)]
        for name in order:
            run = runtimes[name].run
            spent = []
            for tokens in ids:
                started = time.perf_counter()
                run([tokens])
                spent.append(time.perf_counter() - started)
            times[name] += spent
            round_p50[name].append(float(np.median(spent)) * 1e3)
    result = {}
    for name in names:
        ratios = [mine / theirs for mine, theirs in zip(round_p50[name], round_p50[reference], strict=True)]
        result[name] = {"p50_ms": float(np.percentile(times[name], 50)) * 1e3,
                        "p99_ms": float(np.percentile(times[name], 99)) * 1e3,
                        "round_p50_ms": [round(value, 3) for value in round_p50[name]],
                        "median_round_p50_ms": float(np.median(round_p50[name])),
                        "p50_ratio_to_reference": float(np.median(ratios))}
    return result


def spread(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` evenly spaced indices of ``range(n)``."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def outputs(rt: Any, ids: list[list[int]], single: bool) -> np.ndarray:
    if single:
        return np.stack([rt.run([tokens])[0] for tokens in ids])
    return np.concatenate([rt.run(ids[i : i + 32]) for i in range(0, len(ids), 32)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REPO / "runs/clinc150")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/clinc150/clinc150.jsonl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--latency-texts", type=int, default=300)
    parser.add_argument("--max-test", type=int, default=None, help="only the first N test texts (a smoke run)")
    parser.add_argument("--batch1-texts", type=int, default=2000,
                        help="test texts run one by one for the batch-1 agreement and accuracy")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-openvino", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args(argv)
    started_at = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="int8-variants-") as scratch:
        work = Path(scratch)
        bundle_path = work / args.bundle.name
        shutil.copytree(args.bundle, bundle_path)
        if samples_dir(args.bundle).is_dir():
            shutil.copytree(samples_dir(args.bundle), samples_dir(bundle_path))
        bundle = Bundle.open(bundle_path)
        candidates, model, encoder = build(bundle_path, work, not args.no_openvino)
        rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
        test = [row for row in rows if row.get("split") == args.split][: args.max_test]
        index = {label: i for i, label in enumerate(bundle.labels)}
        texts = [row["text"] for row in test]
        truth = np.asarray([index.get(row["intent"], -1) for row in test])
        ids = encoder.token_ids(texts)
        b1_index = spread(len(ids), args.batch1_texts)  # evenly spaced: the split is sorted by intent
        validation = [example.text for example in read_samples(bundle_path, "validation")]
        torch_reference = export_module._torch_outputs(model, encoder, validation)[0].argmax(-1)
        quality: dict[str, dict[str, Any]] = {}
        reference32 = reference1 = None
        for name, candidate in candidates.items():
            rt = runtime(candidate, 2, bundle.max_length, encoder.pad_token_id)
            batched, single = outputs(rt, ids, False), outputs(rt, [ids[i] for i in b1_index], True)
            logits, _, gate_single = export_module._runtime_outputs(rt, encoder, validation)
            rt.close()
            if name == REFERENCE:
                reference32, reference1 = batched.argmax(-1), single.argmax(-1)
            quality[name] = {
                "test_accuracy": float(np.mean(batched.argmax(-1) == truth)),
                "test_accuracy_batch1": float(np.mean(single.argmax(-1) == truth[b1_index])),
                "agreement_batch32": float(np.mean(batched.argmax(-1) == reference32)),
                "agreement_batch1": float(np.mean(single.argmax(-1) == reference1)),
                "test_accuracy_batched_same_texts": float(np.mean(batched[b1_index].argmax(-1) == truth[b1_index])),
                "gate_agreement_batch32": float(np.mean(logits.argmax(-1) == torch_reference)),
                "gate_agreement_batch1": float(np.mean(gate_single.argmax(-1) == torch_reference[: len(gate_single)])),
                "max_abs_logit_diff_batch1_vs_batched": float(np.max(np.abs(single - batched[b1_index]))),
            }
            print(name, quality[name], flush=True)
        fp32_accuracy = quality[REFERENCE]["test_accuracy"]
        for row in quality.values():
            row["passes_gate"] = bool(min(row["gate_agreement_batch32"], row["gate_agreement_batch1"])
                                      >= export_module.MIN_AGREEMENT
                                      and min(row["test_accuracy"], row["test_accuracy_batch1"])
                                      >= fp32_accuracy - 0.003)
        latency_ids = [ids[i] for i in spread(len(ids), args.latency_texts)]
        timings: dict[str, dict[str, dict[str, Any]]] = {}
        for threads in args.threads:
            runtimes = {name: runtime(candidate, threads, bundle.max_length, encoder.pad_token_id)
                        for name, candidate in candidates.items()}
            timings[str(threads)] = latency(runtimes, latency_ids, args.rounds, REFERENCE)
            for rt in runtimes.values():
                rt.close()
            print(f"latency at {threads} thread(s) done", flush=True)
        int8 = [name for name in ORT_CANDIDATES if candidates[name]["precision"] == "int8"
                and quality[name]["passes_gate"]]
        chosen = min(int8, key=lambda name: timings["1"][name]["p50_ratio_to_reference"]) if int8 else None
        sessions = session_sweep(candidates, ["onnx-fp32 fused", *([chosen] if chosen else [])], latency_ids,
                                 args.threads, args.rounds, bundle.max_length, encoder.pad_token_id)
    result = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "bundle": str(args.bundle), "data": str(args.data), "split": args.split, "n_test": len(texts),
        "latency_texts": len(latency_ids), "mean_tokens_latency_texts": float(np.mean([len(t) for t in latency_ids])),
        "rounds": args.rounds, "batch1_texts": min(args.batch1_texts, len(texts)), "reference": REFERENCE,
        "fp32_test_accuracy": fp32_accuracy,
        "session_defaults": ORT_SESSION_DEFAULTS,
        "candidates": {name: {**{k: v for k, v in c.items() if k not in ("model", "weights")}, **quality[name],
                              "latency": {threads: timings[threads][name] for threads in timings}}
                       for name, c in candidates.items()},
        "chosen_int8": chosen,
        "session_options": sessions,
        "wall_s": round(time.perf_counter() - started_at, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_variants.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "int8_variants.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


SESSION_SETTINGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "spinning on": {"session.intra_op.allow_spinning": "1"},
    "denormals kept": {"session.set_denormal_as_zero": "0"},
    "level extended": {"graph_optimization_level": "extended"},
    "level basic": {"graph_optimization_level": "basic"},
}


def session_sweep(candidates: dict[str, dict[str, Any]], names: list[str], ids: list[list[int]],
                  threads_list: list[int], rounds: int, max_length: int, pad_id: int) -> dict[str, Any]:
    """Batch-1 p50 of each session setting (against :data:`ORT_SESSION_DEFAULTS`), interleaved."""
    result: dict[str, Any] = {}
    for name in names:
        for threads in threads_list:
            runtimes = {setting: runtime(candidates[name], threads, max_length, pad_id, options)
                        for setting, options in SESSION_SETTINGS.items()
                        if threads > 1 or "spinning" not in setting}
            timed = latency(runtimes, ids, rounds, "defaults")
            result[f"{name} @ {threads} thread(s)"] = {
                setting: {key: round(value, 4) if isinstance(value, float) else value
                          for key, value in row.items() if key != "round_p50_ms"} for setting, row in timed.items()}
            for rt in runtimes.values():
                rt.close()
    return result


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# INT8 variants at batch 1",
        "",
        f"{result['created']}, `benchmarks/int8_variants.py` on `{result['bundle']}`: latency on "
        f"{result['latency_texts']} {result['split']} queries (mean {result['mean_tokens_latency_texts']:.1f} tokens), "
        f"{result['rounds']} interleaved rounds, batch 1; agreement with {result['reference']} and accuracy on all "
        f"{result['n_test']} {result['split']} texts in batches of 32 (b32) and on {result['batch1_texts']} of them "
        "one by one (b1); passes: export's gate (validation-sample agreement with torch ≥ 99 % at batch 32 and 1) "
        "and test accuracy within 0.3 points of FP32.",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cpu_count')} cores; flags: {', '.join(m.get('flags_of_interest', []))}; "
        f"onnxruntime {m['onnxruntime']}, openvino {m['openvino']}. Session settings: "
        f"`{json.dumps(result['session_defaults'])}`.",
        "",
    ]
    threads = sorted(next(iter(result["candidates"].values()))["latency"], key=int)
    header = "| variant | size MB | " + " | ".join(f"p50 / p99 ms @{t}t | ×FP32 @{t}t" for t in threads)
    header += " | agree b32 | agree b1 | gate b32 / b1 | test acc b32 / b1 | passes |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for name, row in result["candidates"].items():
        cells = [name + (" **(chosen)**" if name == result["chosen_int8"] else ""), f"{row['size_bytes'] / 1e6:.1f}"]
        for t in threads:
            lat = row["latency"][t]
            cells += [f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f}", f"{lat['p50_ratio_to_reference']:.2f}"]
        cells += [f"{row['agreement_batch32']:.2%}", f"{row['agreement_batch1']:.2%}",
                  f"{row['gate_agreement_batch32']:.1%} / {row['gate_agreement_batch1']:.1%}",
                  f"{row['test_accuracy']:.2%} / {row['test_accuracy_batch1']:.2%}",
                  "yes" if row["passes_gate"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## ONNX Runtime session settings (batch-1 p50 ms; ratio to the defaults in the same rounds)", ""]
    for where, settings in result["session_options"].items():
        lines.append(f"- {where}: " + "; ".join(f"{setting} {row['p50_ms']:.3f} ({row['p50_ratio_to_reference']:.3f}×)"
                                              for setting, row in settings.items()))
    lines += ["", f"Wall time {result['wall_s']} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
