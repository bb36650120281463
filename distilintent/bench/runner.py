"""Measuring loop of ``distilintent bench`` and the helpers shared with ``benchmarks/``.

Rows (each per requested thread count): the Hugging Face ``pipeline("text-classification")`` baseline
(PyTorch eager FP32, and BF16 where the CPU computes it natively), plain PyTorch ``inference_mode``,
every exported variant of the bundle through :class:`distilintent.sdk.IntentDetector` (OpenVINO both
with its static-shape buckets and with dynamic shapes), ``distilintent serve`` over HTTP, and Rasa 3.6's
own ``/model/parse`` (DIETClassifier) over HTTP when a Rasa model is given. All rows are measured from
one process, interleaved round by round (A B C, B C A, … so machine drift hits all alike) on the same
fixed sample of real texts; cold start and peak RSS are measured per row in fresh processes.

The bench process holds every runtime at once, so its Python heap is far larger than a server's: after
loading, the heap is frozen (``gc.freeze``) so that a full collection during the timed calls does not
scan torch/transformers/OpenVINO objects no single-model process would hold; collections that still
land in timed calls are counted per row in the report.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gc
import importlib.util
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

from distilintent.bench.seqlen import exact_length_texts
from distilintent.bench.servers import default_rasa_venv, rasa_server, serve_server
from distilintent.bench.subjects import build_subject
from distilintent.core.bundle import Bundle

BASELINE = "pipeline-fp32"
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
LIBRARIES = ("numpy", "tokenizers", "onnxruntime", "openvino", "torch", "transformers", "starlette", "uvicorn",
             "distilintent")


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
        info["has_native_bf16"] = bool(flags & {"amx_bf16", "avx512_bf16"})
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


def machine_summary(report: dict[str, Any]) -> str:
    """One Markdown line for a ``benchmarks/`` report with ``date``, ``machine`` and ``load_average_after``."""
    info = report["machine"]
    return (f"{report['date']} · {info.get('cpu', '?')}, {info.get('cpus', '?')} logical CPUs "
            f"({info.get('cpus_usable', '?')} usable), ISA: {', '.join(info.get('isa', []))} · "
            f"load average after: {report['load_average_after']}")


def write_report(report: dict[str, Any], markdown: str, out: Path, name: str) -> None:
    """``<out>/<name>.json`` and ``<out>/<name>.md`` (``markdown``, printed too), for ``benchmarks/`` scripts."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)


# -- rows -------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One benchmarked configuration: its name, how to build it, and what was measured on it."""

    name: str
    kind: str  # "pipeline", "torch", "sdk" or "http"
    backend: str
    precision: str
    build: Callable[[str], Any]  # called with a probe text (servers answer it to prove they are up)
    threads: int | None = None
    shapes: str | None = None  # OpenVINO: "static" (the SDK's buckets) or "dynamic"
    batches: bool = True  # False: no batch API, throughput is measured at batch 1 only
    baseline: str | None = None  # the pipeline row its speed-ups are against
    info: dict[str, Any] = field(default_factory=dict)
    subject: Any = None
    latency_ns: list[int] = field(default_factory=list)
    seq_latency_ns: dict[int, list[int]] = field(default_factory=dict)
    batch_time_s: dict[int, list[float]] = field(default_factory=dict)
    batch_texts: dict[int, list[int]] = field(default_factory=dict)
    gc_pauses_ms: list[float] = field(default_factory=list)


BACKEND_CHOICES = ("pipeline", "torch", "onnxruntime", "openvino", "serve", "rasa")
BF16_MODES = ("auto", "force", "off")
SERVE_ROW = "serve-http"
RASA_ROW = "rasa-diet-http"


@dataclass
class Settings:
    runs: int = 500
    rounds: int = 10
    warmup: int = 20
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    batch_texts: int = 128
    threads: tuple[int | None, ...] = (None,)
    seq_lens: tuple[int, ...] = ()
    seq_len_runs: int = 100
    seq_len_texts: int = 64
    cold_start: bool = True
    cold_start_repeats: int = 1
    seed: int = 0
    bf16: str = "auto"  # "auto": bf16 rows where the CPU has AMX-BF16/AVX512-BF16; "force"; "off"
    rasa_model: Path | None = None
    rasa_venv: Path | None = None
    gc_freeze: bool = True


@dataclass
class _Candidate:
    """A row before thread counts are applied: ``groups`` are the ``--backends`` words that select it."""

    name: str
    kind: str
    backend: str
    precision: str
    groups: tuple[str, ...]
    shapes: str | None = None
    batches: bool = True
    info: dict[str, Any] = field(default_factory=dict)


def _bf16_reason() -> str | None:
    """Why this CPU gets no bf16 rows (None: it computes bf16 natively)."""
    from distilintent.training.device import cpu_has_bf16

    if cpu_has_bf16():
        return None
    isa = " ".join(machine().get("isa", [])) or "unknown"
    return ("skipped: this CPU has no AMX-BF16 or AVX512-BF16 (ISA flags: " + isa + "), so PyTorch would emulate "
            "bf16 (a bf16-autocast training step took 9.5 s vs 0.36 s in fp32 on this machine); "
            "--bf16 force measures it anyway")


def _candidates(bundle: Bundle, settings: Settings) -> tuple[list[_Candidate], dict[str, str]]:
    unavailable: dict[str, str] = {}  # candidate name → why it cannot be measured here
    found = [_Candidate(BASELINE, "pipeline", "torch", "fp32", ("pipeline",)),
             _Candidate("torch-fp32", "torch", "torch", "fp32", ("torch",))]
    bf16 = [_Candidate("pipeline-bf16", "pipeline", "torch", "bf16", ("pipeline",)),
            _Candidate("torch-bf16", "torch", "torch", "bf16", ("torch",))]
    found += bf16
    if settings.bf16 == "off":
        unavailable.update({c.name: "not requested (--bf16 off)" for c in bf16})
    for name, variant in bundle.variants.items():
        if variant.backend == "openvino":
            found.append(_Candidate(name, "sdk", variant.backend, variant.precision, (variant.backend,), "static"))
            found.append(_Candidate(f"{name}-dynamic", "sdk", variant.backend, variant.precision, (variant.backend,),
                                    "dynamic"))
        else:
            found.append(_Candidate(name, "sdk", variant.backend, variant.precision, (variant.backend,)))
    found.append(_Candidate(SERVE_ROW, "http", "distilintent serve", "auto", ("serve",)))
    if not (importlib.util.find_spec("uvicorn") and importlib.util.find_spec("starlette")):
        unavailable[SERVE_ROW] = ("skipped: distilintent serve needs the [server] extra "
                                  "(pip install 'distilintent[server]')")
    found.append(_Candidate(RASA_ROW, "http", "rasa 3.6 DIETClassifier", "fp32", ("rasa",), batches=False))
    if settings.rasa_model is None:
        unavailable[RASA_ROW] = ("not measured: no --rasa-model given (benchmarks/train_rasa_diet.py trains a DIET "
                                 "model on the same data in the Python 3.10 Rasa venv)")
    return found, unavailable


def rasa_model_info(model: Path) -> dict[str, Any]:
    """What ``benchmarks/train_rasa_diet.py`` recorded beside the model (``MODEL.json``), if anything."""
    sidecar = Path(str(model).removesuffix(".tar.gz") + ".json")
    info: dict[str, Any] = {"rasa_model": str(model)}
    if sidecar.is_file():
        info["rasa_training"] = json.loads(sidecar.read_text())
    return info


def plan_rows(bundle: Bundle, backends: Sequence[str] | None, settings: Settings) -> tuple[list[Row], dict[str, str]]:
    """The rows to measure, one per candidate and thread count. ``backends`` holds groups (``pipeline``,
    ``torch``, ``onnxruntime``, ``openvino``, ``serve``, ``rasa``) or row names (``onnx-int8``,
    ``openvino-int8-dynamic``); ``None`` means every row that can run here."""
    candidates, unavailable = _candidates(bundle, settings)
    known = set(BACKEND_CHOICES) | {candidate.name for candidate in candidates}
    requested = set(backends or ())
    unknown = sorted(requested - known)
    if unknown:
        raise ValueError(f"unknown backends {unknown}: choose from {sorted(known)}")
    explicit_rasa = bool(requested & {"rasa", RASA_ROW})
    if explicit_rasa and settings.rasa_model is None:
        raise ValueError("the rasa row needs --rasa-model MODEL.tar.gz (train one with benchmarks/train_rasa_diet.py)")
    if settings.rasa_model is not None:
        venv = settings.rasa_venv or default_rasa_venv()
        if not Path(settings.rasa_model).is_file():
            raise ValueError(f"--rasa-model {settings.rasa_model} does not exist")
        if not (venv / "bin" / "python").exists():
            raise ValueError(f"--rasa-model needs the Python 3.10 Rasa venv, not found at {venv} (build it with "
                             "python tests/rasa/venvs.py, or pass --rasa-venv)")
    chosen = [c for c in candidates
              if not backends or c.name in requested or any(group in requested for group in c.groups)]
    if settings.bf16 == "auto" and any(c.precision == "bf16" for c in chosen):  # torch is imported only here
        reason = _bf16_reason()
        if reason:
            unavailable.update({c.name: reason for c in chosen if c.precision == "bf16"})
    skipped = {c.name: unavailable[c.name] for c in chosen if c.name in unavailable}
    if settings.rasa_model is None:  # always say that the Rasa comparison is missing, and how to add it
        skipped.setdefault(RASA_ROW, unavailable[RASA_ROW])
    chosen = [c for c in chosen if c.name not in unavailable]
    for group in sorted(requested & {"onnxruntime", "openvino"}):
        if not any(group in c.groups for c in chosen):
            skipped[group] = f"the bundle has no {group} variant (run: distilintent export --model {bundle.path})"

    many = len(settings.threads) > 1
    rows: list[Row] = []
    for threads in settings.threads:
        suffix = f"@{threads}t" if many else ""
        for candidate in chosen:
            info = dict(candidate.info)
            if candidate.name == RASA_ROW:
                info.update(rasa_model_info(Path(settings.rasa_model or "")))
            rows.append(Row(candidate.name + suffix, candidate.kind, candidate.backend, candidate.precision,
                            _builder(candidate, bundle.path, threads, settings), threads=threads,
                            shapes=candidate.shapes, batches=candidate.batches, baseline=BASELINE + suffix,
                            info=info))
    return rows, skipped


def _builder(candidate: _Candidate, bundle: Path, threads: int | None, settings: Settings) -> Callable[[str], Any]:
    if candidate.name == SERVE_ROW:
        return lambda probe: serve_server(bundle, threads).start(probe)
    if candidate.name == RASA_ROW:
        model, venv = Path(settings.rasa_model or ""), settings.rasa_venv or default_rasa_venv()
        return lambda probe: rasa_server(model, venv, threads).start(probe)
    return lambda probe: build_subject(candidate.kind, bundle, candidate.backend, candidate.precision, threads,
                                       candidate.shapes)


def cold_start(row: Row, bundle: Path, text: str, repeats: int = 1) -> dict[str, Any]:
    """Fresh interpreter → first result (best of ``repeats``), with peak RSS after some traffic."""
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    best: dict[str, Any] | None = None
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "distilintent.bench.coldstart", row.kind, str(bundle),
                               row.backend, row.precision, str(row.threads or 0), row.shapes or "-", text],
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


class _GcWatch:
    """Records the gen-2 (full) collections that happen while a row's timed calls run."""

    def __init__(self) -> None:
        self.row: Row | None = None
        self._started = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2 or self.row is None:
            return
        if phase == "start":
            self._started = time.perf_counter_ns()
        else:
            self.row.gc_pauses_ms.append((time.perf_counter_ns() - self._started) / 1e6)


def _timed_window(row: Row, texts: Sequence[str], into: list[int], watch: _GcWatch) -> None:
    before = getattr(row.subject, "before_window", None)
    if before is not None:
        before()
    detect = row.subject.detect
    clock = time.perf_counter_ns
    watch.row = row
    try:
        for text in texts:
            start = clock()
            detect(text)
            into.append(clock() - start)
    finally:
        watch.row = None


def run_bench(bundle_path: str | Path, settings: Settings, backends: Sequence[str] | None = None,
              data: Path | None = None, split: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Measure every row; returns the ``results.json`` report."""
    from tqdm.auto import tqdm

    bundle = Bundle.open(bundle_path)
    texts, _, source = read_texts(data, split, bundle)
    too_long = [length for length in settings.seq_lens if length > bundle.max_length]
    if too_long:
        raise ValueError(f"--seq-lens {too_long}: longer than the bundle's max_length {bundle.max_length} "
                         "(longer texts are truncated to it)")
    rows, skipped = plan_rows(bundle, backends, settings)
    rng = np.random.default_rng(settings.seed)
    rounds = max(1, min(settings.rounds, settings.runs))
    per_round = -(-settings.runs // rounds)
    sequence = [texts[i] for i in rng.integers(0, len(texts), per_round * rounds)]
    chunks = {size: [texts[i] for i in rng.integers(0, len(texts), max(settings.batch_texts, size))]
              for size in settings.batch_sizes}
    seq_per_round = -(-settings.seq_len_runs // rounds)
    seq_pools: dict[int, list[str]] = {}
    seq_sequences: dict[int, list[str]] = {}
    tokenizer_json = bundle.read_bytes("tokenizer.json").decode("utf-8")
    for length in settings.seq_lens:
        pool = exact_length_texts(tokenizer_json, texts, length, settings.seq_len_texts, settings.seed)
        seq_pools[length] = pool
        seq_sequences[length] = [pool[i] for i in rng.integers(0, len(pool), seq_per_round * rounds)]
    load_before = load_average()
    steps_per_round = 1 + len(settings.seq_lens) + len(settings.batch_sizes)
    total = len(rows) * (1 + rounds * steps_per_round)
    total += sum(settings.cold_start_repeats for row in rows if row.kind != "http") if settings.cold_start else 0
    bar = tqdm(total=total, desc="bench", unit="step", disable=not progress, file=sys.stderr)
    watch = _GcWatch()
    live: list[Row] = []
    results: dict[str, Any] = {}
    try:
        for row in rows:
            bar.set_postfix_str(f"load {row.name}")
            try:
                row.subject = row.build(sequence[0])
            except Exception as err:  # noqa: BLE001 - a row that cannot load is reported, not fatal
                skipped[row.name] = f"failed to load: {type(err).__name__}: {err}"
                bar.update(1 + rounds * steps_per_round)
                continue
            for text in sequence[: settings.warmup] or texts[: settings.warmup]:  # warm-up, not timed
                row.subject.detect(text)
            for pool in seq_pools.values():  # OpenVINO compiles a bucket on its first use: never timed
                for text in pool[:2]:
                    row.subject.detect(text)
            for size in settings.batch_sizes:
                if row.batches or size == 1:
                    row.subject.detect_batch(chunks[size][: 2 * size], batch_size=size)
            row.batch_time_s = {size: [] for size in settings.batch_sizes}
            row.batch_texts = {size: [] for size in settings.batch_sizes}
            row.seq_latency_ns = {length: [] for length in settings.seq_lens}
            live.append(row)
            bar.update(1)

        gc.collect()
        if settings.gc_freeze:
            gc.freeze()
        gc.callbacks.append(watch)
        for round_index in range(rounds):
            shift = round_index % len(live) if live else 0
            order = live[shift:] + live[:shift]
            window = sequence[round_index * per_round: (round_index + 1) * per_round]
            for row in order:
                bar.set_postfix_str(f"round {round_index + 1}/{rounds} {row.name}")
                _timed_window(row, window, row.latency_ns, watch)
                bar.update(1)
            for length in settings.seq_lens:
                seq_window = seq_sequences[length][round_index * seq_per_round: (round_index + 1) * seq_per_round]
                for row in order:
                    bar.set_postfix_str(f"round {round_index + 1}/{rounds} {length} tokens {row.name}")
                    _timed_window(row, seq_window, row.seq_latency_ns[length], watch)
                    bar.update(1)
            for size in settings.batch_sizes:
                for row in order:
                    if row.batches or size == 1:
                        before = getattr(row.subject, "before_window", None)
                        if before is not None:
                            before()
                        start = time.perf_counter_ns()
                        row.subject.detect_batch(chunks[size], batch_size=size)
                        row.batch_time_s[size].append((time.perf_counter_ns() - start) / 1e9)
                        row.batch_texts[size].append(len(chunks[size]))
                    bar.update(1)

        for row in live:
            results[row.name] = _row_result(row, settings)
    finally:
        if watch in gc.callbacks:
            gc.callbacks.remove(watch)
        if settings.gc_freeze:
            gc.unfreeze()
        for row in live:
            if hasattr(row.subject, "close"):
                row.subject.close()
            row.subject = None
    if settings.cold_start:
        for row in live:
            if row.kind == "http":
                continue
            bar.set_postfix_str(f"cold start {row.name}")
            results[row.name]["cold_start"] = cold_start(row, bundle.path, sequence[0], settings.cold_start_repeats)
            bar.update(settings.cold_start_repeats)
    bar.close()

    add_speedups(results)
    return {
        "bundle": str(bundle.path),
        "texts": source,
        "n_texts": len(texts),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": None,  # set by the CLI
        "settings": {"runs_batch1": per_round * rounds, "rounds": rounds, "warmup": settings.warmup,
                     "batch_sizes": list(settings.batch_sizes), "texts_per_batch_round": settings.batch_texts,
                     "threads": list(settings.threads), "seq_lens": list(settings.seq_lens),
                     "runs_per_seq_len": seq_per_round * rounds if settings.seq_lens else 0,
                     "texts_per_seq_len": {str(length): len(pool) for length, pool in seq_pools.items()},
                     "bf16": settings.bf16, "gc_freeze": settings.gc_freeze,
                     "cold_start_repeats": settings.cold_start_repeats if settings.cold_start else 0,
                     "rasa_model": str(settings.rasa_model) if settings.rasa_model else None,
                     "interleaved": True, "seed": settings.seed},
        "machine": {**machine(), "load_average_before": load_before, "load_average_after": load_average()},
        "baseline": BASELINE if any(name.startswith(BASELINE) for name in results) else None,
        "rows": results,
        "skipped": skipped,
    }


def _row_result(row: Row, settings: Settings) -> dict[str, Any]:
    throughput: dict[str, float | None] = {}
    for size in settings.batch_sizes:
        seconds = sum(row.batch_time_s[size])
        throughput[str(size)] = sum(row.batch_texts[size]) / seconds if seconds > 0 else None
    entry: dict[str, Any] = {
        "kind": row.kind, "backend": row.backend, "precision": row.precision, "threads": row.threads,
        "shapes": row.shapes, "baseline": row.baseline,
        "latency_batch1": percentiles(row.latency_ns),
        "throughput_texts_per_s": throughput,
        "gc_full_collections_in_timed_calls": {"count": len(row.gc_pauses_ms),
                                               "total_ms": round(sum(row.gc_pauses_ms), 2)},
    }
    if settings.seq_lens:
        entry["latency_by_seq_len"] = {str(length): percentiles(samples)
                                       for length, samples in row.seq_latency_ns.items()}
    if row.kind == "http":
        variant = getattr(row.subject, "served_variant", None)
        if variant:
            entry["served_variant"] = variant
        entry["cold_start"] = {**row.subject.cold_start,
                               "rss_mb_after_first_answer": row.subject.cold_start.get("rss_mb"),
                               **row.subject.memory()}
    entry.update(row.info)
    return entry


def add_speedups(results: dict[str, Any]) -> None:
    """Speed-up of each row against the ``pipeline`` row of its thread count: latency and throughput ratios."""
    for entry in results.values():
        base = results.get(entry.get("baseline") or BASELINE)
        if base is None:
            continue
        latency = entry["latency_batch1"]
        throughput = {}
        for size, value in entry["throughput_texts_per_s"].items():
            reference = base["throughput_texts_per_s"].get(size)
            throughput[size] = value / reference if value and reference else None
        entry["speedup_vs_pipeline"] = {
            "p50": base["latency_batch1"]["p50_ms"] / latency["p50_ms"],
            "p99": base["latency_batch1"]["p99_ms"] / latency["p99_ms"],
            "throughput": throughput,
        }
