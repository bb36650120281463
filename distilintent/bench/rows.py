"""The rows of ``distilintent bench``: which configurations there are, which of them a request selects and
can run here (and why the others cannot), and how each is built.

A row is a candidate (``pipeline-fp32``, ``torch-fp32``, every exported variant of the bundle through
:class:`distilintent.sdk.IntentDetector`, OpenVINO both with static-shape buckets and dynamic shapes,
``serve-http``, ``rasa-diet-http``) at one thread count (``@2t`` suffix when several are measured).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilintent.bench.machine import machine
from distilintent.bench.servers import default_rasa_venv, rasa_server, serve_server
from distilintent.bench.subjects import build_subject
from distilintent.core.bundle import Bundle

BASELINE = "pipeline-fp32"


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
        size = (bundle.manifest.get("variants", {}).get(name) or {}).get("size_bytes")
        info = {"size_mb": round(size / 1e6, 1)} if size else {}  # the variant's model files on disk
        groups = (variant.backend,)
        if variant.backend == "openvino":
            found.append(_Candidate(name, "sdk", variant.backend, variant.precision, groups, "static", info=info))
            found.append(_Candidate(f"{name}-dynamic", "sdk", variant.backend, variant.precision, groups, "dynamic",
                                    info=info))
        else:
            found.append(_Candidate(name, "sdk", variant.backend, variant.precision, groups, info=info))
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
