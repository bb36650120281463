"""Measuring loop of ``distilintent bench``.

Rows (each per requested thread count; see :mod:`distilintent.bench.rows`): the Hugging Face
``pipeline("text-classification")`` baseline (PyTorch eager FP32, and BF16 where the CPU computes it
natively), plain PyTorch ``inference_mode``, every exported variant of the bundle through
:class:`distilintent.sdk.IntentDetector` (OpenVINO both with its static-shape buckets and with dynamic
shapes), ``distilintent serve`` over HTTP, and Rasa 3.6's own ``/model/parse`` (DIETClassifier) over HTTP
when a Rasa model is given. All rows are measured from one process, interleaved round by round (A B C,
B C A, … so machine drift hits all alike) on the same fixed sample of real texts; cold start and peak RSS
are measured per row in fresh processes (:mod:`distilintent.bench.timing`).

The bench process holds every runtime at once, so its Python heap is far larger than a server's: after
loading, the heap is frozen (``gc.freeze``) so that a full collection during the timed calls does not
scan torch/transformers/OpenVINO objects no single-model process would hold; collections that still
land in timed calls are counted per row in the report.
"""

from __future__ import annotations

import csv
import datetime as dt
import gc
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distilintent.bench.machine import load_average, machine
from distilintent.bench.results import add_speedups, like_for_like, row_result
from distilintent.bench.rows import BASELINE, Row, Settings, plan_rows
from distilintent.bench.seqlen import exact_length_texts
from distilintent.bench.timing import GcWatch, cold_start, timed_batch, timed_calls
from distilintent.core.bundle import Bundle
from distilintent.core.samples import read_samples, samples_dir


def read_texts(path: Path | None, split: str | None, bundle: Bundle) -> tuple[list[str], list[str] | None, str]:
    """Texts (and labels when there are) from a JSONL/CSV file, a text file, or the validation sample
    training kept next to the bundle (``<bundle>.samples/validation.jsonl``)."""
    rows: list[dict[str, Any]]
    if path is None:
        kept = samples_dir(bundle.path) / "validation.jsonl"
        rows = [{"text": example.text, "label": example.label} for example in read_samples(bundle.path, "validation")]
        if not rows:
            raise ValueError(f"no validation sample next to {bundle.path} ({kept} is written by distilintent "
                             "train and not copied with the bundle): pass --data")
        source = f"{kept.parent.name}/{kept.name}"
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


# -- the measurement --------------------------------------------------------------------------------


@dataclass
class _Workload:
    """The texts every row is timed on, drawn once from the seed: rows see the same texts in the same order."""

    rounds: int
    sequence: list[str]  # batch-1 texts, ``rounds`` windows of equal length
    chunks: dict[int, list[str]]  # batch size → the texts of each throughput round
    seq_pools: dict[int, list[str]] = field(default_factory=dict)  # token length → distinct texts of that length
    seq_sequences: dict[int, list[str]] = field(default_factory=dict)  # token length → batch-1 texts, in windows

    def window(self, texts: list[str], round_index: int) -> list[str]:
        size = len(texts) // self.rounds
        return texts[round_index * size: (round_index + 1) * size]


def _workload(bundle: Bundle, texts: list[str], settings: Settings) -> _Workload:
    rng = np.random.default_rng(settings.seed)
    rounds = max(1, min(settings.rounds, settings.runs))
    per_round = -(-settings.runs // rounds)
    work = _Workload(rounds, [texts[i] for i in rng.integers(0, len(texts), per_round * rounds)],
                     {size: [texts[i] for i in rng.integers(0, len(texts), max(settings.batch_texts, size))]
                      for size in settings.batch_sizes})
    seq_per_round = -(-settings.seq_len_runs // rounds)
    tokenizer_json = bundle.read_bytes("tokenizer.json").decode("utf-8")
    for length in settings.seq_lens:
        pool = exact_length_texts(tokenizer_json, texts, length, settings.seq_len_texts, settings.seed)
        work.seq_pools[length] = pool
        work.seq_sequences[length] = [pool[i] for i in rng.integers(0, len(pool), seq_per_round * rounds)]
    return work


def _load(rows: list[Row], work: _Workload, settings: Settings, skipped: dict[str, str], live: list[Row],
          bar: Any, steps: int) -> None:
    """Build and warm up each row (untimed), appending those that loaded to ``live``."""
    for row in rows:
        bar.set_postfix_str(f"load {row.name}")
        try:
            row.subject = row.build(work.sequence[0])
        except Exception as err:  # noqa: BLE001 - a row that cannot load is reported, not fatal
            skipped[row.name] = f"failed to load: {type(err).__name__}: {err}"
            bar.update(1 + steps)
            continue
        for text in work.sequence[: settings.warmup]:
            row.subject.detect(text)
        for pool in work.seq_pools.values():  # OpenVINO compiles a bucket on its first use: never timed
            for text in pool[:2]:
                row.subject.detect(text)
        for size in settings.batch_sizes:
            if row.batches or size == 1:
                row.subject.detect_batch(work.chunks[size][: 2 * size], batch_size=size)
        row.batch_time_s = {size: [] for size in settings.batch_sizes}
        row.batch_texts = {size: [] for size in settings.batch_sizes}
        row.seq_latency_ns = {length: [] for length in settings.seq_lens}
        live.append(row)
        bar.update(1)


def _measure(live: list[Row], work: _Workload, settings: Settings, bar: Any) -> None:
    """The timed rounds: in round r the rows run in order shifted by r (A B C, B C A, …), window by window."""
    watch = GcWatch()
    gc.collect()
    if settings.gc_freeze:
        gc.freeze()
    gc.callbacks.append(watch)
    try:
        for index in range(work.rounds):
            order = live[index % len(live):] + live[: index % len(live)] if live else []
            step = f"round {index + 1}/{work.rounds}"
            for row in order:
                bar.set_postfix_str(f"{step} {row.name}")
                timed_calls(row.subject, work.window(work.sequence, index), row.latency_ns, watch, row.gc_pauses_ms)
                bar.update(1)
            for length, sequence in work.seq_sequences.items():
                for row in order:
                    bar.set_postfix_str(f"{step} {length} tokens {row.name}")
                    timed_calls(row.subject, work.window(sequence, index), row.seq_latency_ns[length], watch,
                                row.gc_pauses_ms)
                    bar.update(1)
            for size, chunk in work.chunks.items():
                for row in order:
                    if row.batches or size == 1:
                        row.batch_time_s[size].append(timed_batch(row.subject, chunk, size))
                        row.batch_texts[size].append(len(chunk))
                    bar.update(1)
    finally:
        gc.callbacks.remove(watch)
        if settings.gc_freeze:
            gc.unfreeze()


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
    work = _workload(bundle, texts, settings)
    load_before = load_average()
    steps = work.rounds * (1 + len(settings.seq_lens) + len(settings.batch_sizes))
    total = len(rows) * (1 + steps)
    total += sum(settings.cold_start_repeats for row in rows if row.kind != "http") if settings.cold_start else 0
    bar = tqdm(total=total, desc="bench", unit="step", disable=not progress, file=sys.stderr)
    live: list[Row] = []
    try:
        _load(rows, work, settings, skipped, live, bar, steps)
        _measure(live, work, settings, bar)
        results = {row.name: row_result(row, settings) for row in live}
    finally:
        for row in live:
            if hasattr(row.subject, "close"):
                row.subject.close()
            row.subject = None
    for row in live if settings.cold_start else ():
        if row.kind != "http":
            bar.set_postfix_str(f"cold start {row.name}")
            results[row.name]["cold_start"] = cold_start(row, bundle.path, work.sequence[0],
                                                         settings.cold_start_repeats)
            bar.update(settings.cold_start_repeats)
    bar.close()

    add_speedups(results)
    return {
        "bundle": str(bundle.path),
        "texts": source,
        "n_texts": len(texts),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": None,  # set by the CLI
        "settings": {"runs_batch1": len(work.sequence), "rounds": work.rounds, "warmup": settings.warmup,
                     "batch_sizes": list(settings.batch_sizes), "texts_per_batch_round": settings.batch_texts,
                     "threads": list(settings.threads), "seq_lens": list(settings.seq_lens),
                     "runs_per_seq_len": len(next(iter(work.seq_sequences.values()), [])),
                     "texts_per_seq_len": {str(length): len(pool) for length, pool in work.seq_pools.items()},
                     "bf16": settings.bf16, "gc_freeze": settings.gc_freeze,
                     "cold_start_repeats": settings.cold_start_repeats if settings.cold_start else 0,
                     "rasa_model": str(settings.rasa_model) if settings.rasa_model else None,
                     "interleaved": True, "seed": settings.seed},
        "machine": {**machine(), "load_average_before": load_before, "load_average_after": load_average()},
        "baseline": BASELINE if any(name.startswith(BASELINE) for name in results) else None,
        "rows": results,
        "like_for_like": like_for_like(results),
        "skipped": skipped,
    }
