"""Latency, throughput, cold start and memory of ``IntentDetector`` for each variant of a bundle.

    python benchmarks/sdk_latency.py runs/clinc150 --data ../shared/data/clinc150/clinc150.jsonl --split test \
        --out benchmarks/results

Measures, per variant (``onnx-int8``, ``openvino-int8``, …):

- ``detect()`` latency at batch 1 on real texts (str in → ``IntentResult`` out), p50/p90/p99 over
  ``--calls`` calls per round; variants are interleaved round by round so that background load
  hits them alike;
- ``detect_batch(batch_size=32)`` throughput (texts/s, best of the rounds);
- cold start in a fresh interpreter: import + load + first result, and RSS after 200 calls;
- top-1 accuracy of the raw argmax on the texts when they are labelled (``--data``).

Writes ``sdk_latency.json`` and ``sdk_latency.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distilintent.bench.runner import machine, percentiles, read_texts  # noqa: E402
from distilintent.core.bundle import Bundle  # noqa: E402
from distilintent.sdk import IntentDetector  # noqa: E402

COLD_START = """
import json, sys, time
t0 = time.perf_counter()
from distilintent.sdk import IntentDetector
t1 = time.perf_counter()
detector = IntentDetector(sys.argv[1], backend=sys.argv[2], precision=sys.argv[3], threads=THREADS)
t2 = time.perf_counter()
detector.detect(sys.argv[4])
t3 = time.perf_counter()
for i in range(200):
    detector.detect(sys.argv[4] if i % 2 else "hi")
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmRSS", "VmHWM")))
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_detect_s": t3 - t2, "cold_start_s": t3 - t0,
                  "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
                  "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def cold_start(bundle: Path, backend: str, precision: str, threads: int | None, text: str) -> dict[str, Any]:
    code = COLD_START.replace("THREADS", repr(threads))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(bundle), backend, precision, text], env=env,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, help="JSONL/CSV with text (and intent) fields, or one text per line")
    parser.add_argument("--split", help="only rows of this split (e.g. test)")
    parser.add_argument("--variants", help="comma-separated variant names (default: all in the bundle)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: runtime's)")
    parser.add_argument("--calls", type=int, default=1000, help="detect() calls per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-texts", type=int, default=1024, help="texts per detect_batch round")
    parser.add_argument("--no-cold-start", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    bundle = Bundle.open(args.bundle)
    texts, labels, source = read_texts(args.data, args.split, bundle)
    names = args.variants.split(",") if args.variants else list(bundle.variants)
    variants = {name: bundle.variants[name] for name in names}
    detectors = {name: IntentDetector(bundle.path, backend=v.backend, precision=v.precision, threads=args.threads)
                 for name, v in variants.items()}
    for detector in detectors.values():  # warm up: compile every bucket, fill the request pools
        for text in texts[:200]:
            detector.detect(text)
        detector.detect_batch(texts[:64])

    rng = np.random.default_rng(0)
    latency: dict[str, list[int]] = {name: [] for name in detectors}
    throughput: dict[str, list[float]] = {name: [] for name in detectors}
    clock = time.perf_counter_ns
    for _ in range(args.rounds):
        for name, detector in detectors.items():
            for i in rng.integers(0, len(texts), args.calls):
                text = texts[i]
                start = clock()
                detector.detect(text)
                latency[name].append(clock() - start)
        for name, detector in detectors.items():
            chunk = [texts[i] for i in rng.integers(0, len(texts), args.batch_texts)]
            start = clock()
            detector.detect_batch(chunk, batch_size=32)
            throughput[name].append(len(chunk) / ((clock() - start) / 1e9))

    encoder = next(iter(detectors.values()))._encoder.tokenizer
    tokenize_ns = []
    for text in texts[: args.calls]:
        start = clock()
        encoder.encode(text)
        tokenize_ns.append(clock() - start)

    report: dict[str, Any] = {
        "bundle": str(bundle.path), "texts": source, "n_texts": len(texts), "threads": args.threads,
        "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "tokenize_p50_ms": float(np.median(tokenize_ns) / 1e6), "variants": {},
    }
    for name, detector in detectors.items():
        entry: dict[str, Any] = {"detect": percentiles(latency[name]),
                                 "detect_batch32_texts_per_s": max(throughput[name]),
                                 "detect_batch32_texts_per_s_median": statistics.median(throughput[name]),
                                 "size_mb": bundle.manifest["variants"][name].get("size_bytes", 0) / 1e6}
        if labels:
            predicted = detector.logits(texts).argmax(-1)
            entry["accuracy"] = float(np.mean(np.asarray(detector.labels)[predicted] == np.asarray(labels)))
        if not args.no_cold_start:
            variant = variants[name]
            runs = [cold_start(bundle.path, variant.backend, variant.precision, args.threads, texts[0])
                    for _ in range(3)]
            entry["cold_start"] = min(runs, key=lambda run: run["cold_start_s"])
        report["variants"][name] = entry
        detector.close()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sdk_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    (args.out / "sdk_latency.md").write_text(markdown)
    print(markdown)


def to_markdown(report: dict[str, Any]) -> str:
    machine_info = report["machine"]
    lines = [
        f"# IntentDetector benchmark: {Path(report['bundle']).name}",
        "",
        f"{report['date']}; {machine_info.get('cpu', '?')} ({machine_info['cpus']} CPUs, "
        f"{', '.join(machine_info.get('isa', []))}); threads={report['threads'] or 'default'}; "
        f"onnxruntime {machine_info['libraries'].get('onnxruntime', '-')}, "
        f"openvino {machine_info['libraries'].get('openvino', '-')}; "
        f"{report['n_texts']} texts from {report['texts']}; tokenization alone p50 "
        f"{report['tokenize_p50_ms']:.3f} ms.",
        "",
        "| variant | detect p50 ms | p90 ms | p99 ms | detect_batch(32) texts/s | cold start s | RSS MB | "
        "size MB | accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["variants"].items():
        latency = entry["detect"]
        cold = entry.get("cold_start") or {}
        accuracy = entry.get("accuracy")
        lines.append(
            f"| {name} | {latency['p50_ms']:.3f} | {latency['p90_ms']:.3f} | {latency['p99_ms']:.3f} | "
            f"{entry['detect_batch32_texts_per_s']:,.0f} | "
            f"{cold.get('cold_start_s', float('nan')):.2f} | {cold.get('rss_mb', float('nan')):.0f} | "
            f"{entry['size_mb']:.1f} | {'-' if accuracy is None else f'{accuracy:.2%}'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
