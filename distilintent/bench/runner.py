"""Measuring loop of ``distilintent bench`` and the helpers shared with ``benchmarks/``.

Rows: the Hugging Face ``pipeline("text-classification")`` baseline (PyTorch eager FP32), plain
PyTorch ``inference_mode`` FP32, and every exported variant of the bundle through
:class:`distilintent.sdk.IntentDetector`. All rows are measured in one process, interleaved round by
round (A B C, B C A, … so machine drift hits all alike) on the same fixed sample of real texts;
cold start and peak RSS are measured per row in fresh subprocesses.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from distilintent.core.bundle import Bundle

BASELINE = "pipeline-fp32"
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
LIBRARIES = ("numpy", "tokenizers", "onnxruntime", "openvino", "torch", "transformers", "distilintent")


# -- shared helpers ---------------------------------------------------------------------------------


def read_texts(path: Path | None, split: str | None, bundle: Bundle) -> tuple[list[str], list[str] | None, str]:
    """Texts (and labels when there are) from a JSONL/CSV file, a text file, or the bundle's samples."""
    rows: list[dict[str, Any]]
    if path is None:
        relative = (bundle.manifest.get("samples") or {}).get("validation")
        if not relative:
            raise ValueError(f"{bundle.path} stores no samples/validation.jsonl: pass --data")
        rows = [json.loads(line) for line in bundle.read_bytes(relative).decode().splitlines() if line.strip()]
        source = f"{bundle.path.name}/{relative}"
    else:
        path = Path(path)
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        else:
            rows = [{"text": line} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = str(path)
    if split:
        rows = [row for row in rows if row.get("split") == split]
        source += f" (split={split})"
    rows = [row for row in rows if str(row.get("text") or "").strip()]
    if not rows:
        raise ValueError(f"no texts in {source}")
    texts = [row["text"] for row in rows]
    labels = [row.get("intent", row.get("label")) for row in rows]
    return texts, labels if all(labels) else None, source


def percentiles(samples_ns: Sequence[int]) -> dict[str, float]:
    values = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {"p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean()),
            "min_ms": float(values.min()), "max_ms": float(values.max()), "n": int(len(values))}


def machine() -> dict[str, Any]:
    """CPU model, core count, ISA flags, OS and library versions (read without importing them)."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    with contextlib.suppress(AttributeError):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        lines = cpuinfo.splitlines()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = set(next(line for line in lines if line.startswith("flags")).split(":", 1)[1].split())
        info["isa"] = [flag for flag in ISA_FLAGS if flag in flags]
        info["has_avx512"] = "avx512f" in flags
        info["has_vnni"] = bool(flags & {"avx512_vnni", "avx_vnni"})
        info["has_amx"] = bool(flags & {"amx_int8", "amx_bf16", "amx_tile"})
        cores = {line.split(":", 1)[1].strip() for line in lines if line.startswith("core id")}
        if cores:
            info["physical_cores_per_socket"] = len(cores)
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    info["libraries"] = versions
    return info


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


# -- rows -------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One benchmarked configuration: its name, how to build it, and how to cold-start it."""

    name: str
    kind: str  # "pipeline", "torch" or "sdk"
    backend: str
    precision: str
    build: Callable[[], Any]
    subject: Any = None
    latency_ns: list[int] = field(default_factory=list)
    batch_time_s: dict[int, list[float]] = field(default_factory=dict)
    batch_texts: dict[int, list[int]] = field(default_factory=dict)


BACKEND_CHOICES = ("pipeline", "torch", "onnxruntime", "openvino")


def plan_rows(bundle: Bundle, backends: Sequence[str] | None, threads: int | None) -> tuple[list[Row], dict[str, str]]:
    """The rows to measure: ``backends`` holds kinds (``pipeline``, ``torch``, ``onnxruntime``,
    ``openvino``) or variant names (``onnx-int8``); ``None`` means all."""
    wanted = set(backends or BACKEND_CHOICES + tuple(bundle.variants))
    known = set(BACKEND_CHOICES) | set(bundle.variants)
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"unknown backends {unknown}: choose from {sorted(known)}")
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    if "pipeline" in wanted:
        from distilintent.bench.baselines import PipelineClassifier

        rows.append(Row(BASELINE, "pipeline", "torch", "fp32", lambda: PipelineClassifier(bundle.path, threads)))
    if "torch" in wanted:
        from distilintent.bench.baselines import TorchClassifier

        rows.append(Row("torch-fp32", "torch", "torch", "fp32", lambda: TorchClassifier(bundle.path, threads)))
    for name, variant in bundle.variants.items():
        if name in wanted or variant.backend in wanted:
            def build(variant=variant) -> Any:
                from distilintent.sdk import IntentDetector

                return IntentDetector(bundle.path, backend=variant.backend, precision=variant.precision,
                                      threads=threads)
            rows.append(Row(name, "sdk", variant.backend, variant.precision, build))
    for name in sorted(wanted & set(BACKEND_CHOICES[2:])):
        if not any(row.backend == name for row in rows):
            skipped[name] = f"the bundle has no {name} variant (run: distilintent export --model {bundle.path})"
    skipped.setdefault("rasa-diet", "not measured: Rasa 3.6 /model/parse with DIETClassifier needs the separate "
                                    "Python 3.10 Rasa environment and a trained Rasa model")
    return rows, skipped


def cold_start(row: Row, bundle: Path, threads: int | None, text: str, repeats: int = 1) -> dict[str, Any]:
    """Fresh interpreter → first result (best of ``repeats``), with peak RSS after some traffic."""
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    best: dict[str, Any] | None = None
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "distilintent.bench.coldstart", row.kind, str(bundle),
                               row.backend, row.precision, str(threads or 0), text],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["?"])[-1]
            return {"error": f"exit {done.returncode}: {tail}"}
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["process_wall_s"] = wall  # interpreter start → exit, from the parent's side
        if best is None or result["cold_start_s"] < best["cold_start_s"]:
            best = result
    assert best is not None
    return best


# -- the measurement --------------------------------------------------------------------------------


@dataclass
class Settings:
    runs: int = 500
    rounds: int = 10
    warmup: int = 20
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    batch_texts: int = 128
    threads: int | None = None
    cold_start: bool = True
    cold_start_repeats: int = 1
    seed: int = 0


def run_bench(bundle_path: str | Path, settings: Settings, backends: Sequence[str] | None = None,
              data: Path | None = None, split: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Measure every row; returns the ``results.json`` report."""
    from tqdm.auto import tqdm

    bundle = Bundle.open(bundle_path)
    texts, _, source = read_texts(data, split, bundle)
    rows, skipped = plan_rows(bundle, backends, settings.threads)
    rng = np.random.default_rng(settings.seed)
    rounds = max(1, min(settings.rounds, settings.runs))
    per_round = -(-settings.runs // rounds)
    sequence = [texts[i] for i in rng.integers(0, len(texts), per_round * rounds)]
    chunks = {size: [texts[i] for i in rng.integers(0, len(texts), max(settings.batch_texts, size))]
              for size in settings.batch_sizes}
    load_before = load_average()
    total = len(rows) * (1 + rounds * (1 + len(settings.batch_sizes)))
    total += len(rows) * settings.cold_start_repeats if settings.cold_start else 0
    bar = tqdm(total=total, desc="bench", unit="step", disable=not progress, file=sys.stderr)

    live: list[Row] = []
    for row in rows:
        bar.set_postfix_str(f"load {row.name}")
        try:
            row.subject = row.build()
        except Exception as err:  # noqa: BLE001 - a row that cannot load is reported, not fatal
            skipped[row.name] = f"failed to load: {type(err).__name__}: {err}"
            bar.update(1 + rounds * (1 + len(settings.batch_sizes)))
            continue
        for text in sequence[: settings.warmup] or texts[: settings.warmup]:  # warm-up, not timed
            row.subject.detect(text)
        for size in settings.batch_sizes:
            row.subject.detect_batch(chunks[size][: max(size, 2 * size)], batch_size=size)
        row.batch_time_s = {size: [] for size in settings.batch_sizes}
        row.batch_texts = {size: [] for size in settings.batch_sizes}
        live.append(row)
        bar.update(1)

    clock = time.perf_counter_ns
    for round_index in range(rounds):
        order = live[round_index % len(live):] + live[: round_index % len(live)] if live else []
        window = sequence[round_index * per_round: (round_index + 1) * per_round]
        for row in order:
            bar.set_postfix_str(f"round {round_index + 1}/{rounds} {row.name}")
            detect = row.subject.detect
            for text in window:
                start = clock()
                detect(text)
                row.latency_ns.append(clock() - start)
            bar.update(1)
        for size in settings.batch_sizes:
            for row in order:
                chunk = chunks[size]
                start = clock()
                row.subject.detect_batch(chunk, batch_size=size)
                row.batch_time_s[size].append((clock() - start) / 1e9)
                row.batch_texts[size].append(len(chunk))
                bar.update(1)

    results: dict[str, Any] = {}
    for row in live:
        throughput = {str(size): sum(row.batch_texts[size]) / sum(row.batch_time_s[size])
                      for size in settings.batch_sizes}
        results[row.name] = {"kind": row.kind, "backend": row.backend, "precision": row.precision,
                             "latency_batch1": percentiles(row.latency_ns), "throughput_texts_per_s": throughput}
        if hasattr(row.subject, "close"):
            row.subject.close()
        row.subject = None
    if settings.cold_start:
        for row in live:
            bar.set_postfix_str(f"cold start {row.name}")
            results[row.name]["cold_start"] = cold_start(row, bundle.path, settings.threads, sequence[0],
                                                         settings.cold_start_repeats)
            bar.update(settings.cold_start_repeats)
    bar.close()

    add_speedups(results)
    report: dict[str, Any] = {
        "bundle": str(bundle.path),
        "texts": source,
        "n_texts": len(texts),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "settings": {"runs_batch1": per_round * rounds, "rounds": rounds, "warmup": settings.warmup,
                     "batch_sizes": list(settings.batch_sizes), "texts_per_batch_round": settings.batch_texts,
                     "threads": settings.threads, "interleaved": True, "seed": settings.seed},
        "machine": {**machine(), "load_average_before": load_before, "load_average_after": load_average()},
        "baseline": BASELINE if BASELINE in results else None,
        "rows": results,
        "skipped": skipped,
    }
    return report


def add_speedups(results: dict[str, Any]) -> None:
    """Speed-up of each row against the ``pipeline`` baseline: latency ratios and throughput ratios."""
    base = results.get(BASELINE)
    if base is None:
        return
    for entry in results.values():
        latency = entry["latency_batch1"]
        entry["speedup_vs_pipeline"] = {
            "p50": base["latency_batch1"]["p50_ms"] / latency["p50_ms"],
            "p99": base["latency_batch1"]["p99_ms"] / latency["p99_ms"],
            "throughput": {size: value / base["throughput_texts_per_s"][size]
                           for size, value in entry["throughput_texts_per_s"].items()},
        }
