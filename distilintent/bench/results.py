"""The ``rows`` of a ``distilintent bench`` report and the ratios between them.

Every ratio is between two rows of the same run (same process, same texts, interleaved rounds) at the same
thread count, and is a ratio of the reported figures: p50 and p99 of the batch-1 latency (base ÷ row, so
above 1 means the row is faster) and throughput per batch size (row ÷ base).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distilintent.bench.rows import BASELINE
from distilintent.bench.timing import percentiles

if TYPE_CHECKING:
    from distilintent.bench.rows import Row, Settings


def row_result(row: Row, settings: Settings) -> dict[str, Any]:
    """What was measured on ``row``: latency percentiles, throughput per batch size, GC collections, …"""
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


def speedup(entry: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """How much faster ``entry`` is than ``base``: p50 and p99 latency ratios, throughput ratio per batch size."""
    throughput = {}
    for size, value in entry["throughput_texts_per_s"].items():
        reference = base["throughput_texts_per_s"].get(size)
        throughput[size] = value / reference if value and reference else None
    return {"p50": base["latency_batch1"]["p50_ms"] / entry["latency_batch1"]["p50_ms"],
            "p99": base["latency_batch1"]["p99_ms"] / entry["latency_batch1"]["p99_ms"],
            "throughput": throughput}


def add_speedups(results: dict[str, Any]) -> None:
    """``speedup_vs_pipeline`` of each row: against the FP32 ``pipeline`` row of its thread count."""
    for entry in results.values():
        base = results.get(entry.get("baseline") or BASELINE)
        if base is not None:
            entry["speedup_vs_pipeline"] = speedup(entry, base)


def _find(rows: dict[str, Any], threads: int | None, **wanted: Any) -> str | None:
    return next((name for name, entry in rows.items()
                 if entry.get("threads") == threads and all(entry.get(key) == value for key, value in wanted.items())),
                None)


def like_for_like(rows: dict[str, Any]) -> list[dict[str, Any]]:
    """Pairs of rows that differ in one thing only, with :func:`speedup` of the first over the second.

    Each SDK FP32 row against the FP32 pipeline and plain torch FP32 (``differs: runtime``), and each SDK
    row of another precision (INT8) against the FP32 SDK row of its backend and shapes (``differs: precision``).
    """
    pairs = []
    for name, entry in rows.items():
        if entry.get("kind") != "sdk":
            continue
        threads = entry.get("threads")
        if entry["precision"] == "fp32":
            against = [(_find(rows, threads, kind=kind, precision="fp32"), "runtime") for kind in ("pipeline", "torch")]
        else:
            against = [(_find(rows, threads, kind="sdk", backend=entry["backend"], shapes=entry.get("shapes"),
                              precision="fp32"), "precision")]
        pairs += [{"row": name, "against": base, "differs": differs, **speedup(entry, rows[base])}
                  for base, differs in against if base is not None]
    return pairs


FLOOR_KINDS = {"fp32": "fp32", "int8": "int8"}  # a row's precision → the floor it is held against


def add_floor_multiples(rows: dict[str, Any], floor: dict[str, Any], batch1_tokens: int) -> None:
    """``floor`` of each SDK row: its batch-1 p50 ÷ the GEMM floor (:mod:`distilintent.bench.floor`) of its
    precision and thread count, at ``batch1_tokens`` (the texts' median token count) and per sequence length."""
    from distilintent.bench.floor import Architecture, floor_for

    arch = Architecture(**floor["architecture"])
    for entry in rows.values():
        kind = FLOOR_KINDS.get(entry.get("precision", ""))
        if entry.get("kind") != "sdk" or kind is None:
            continue
        threads = entry.get("threads")
        base = floor_for(floor, arch, batch1_tokens, kind, threads)
        result: dict[str, Any] = {"kind": kind, "batch1": {
            "tokens": batch1_tokens, "floor_ms": base, "p50_x": entry["latency_batch1"]["p50_ms"] / base}}
        by_length = {}
        for length, latency in (entry.get("latency_by_seq_len") or {}).items():
            at = floor_for(floor, arch, int(length), kind, threads)
            by_length[length] = {"floor_ms": at, "p50_x": latency["p50_ms"] / at}
        if by_length:
            result["by_seq_len"] = by_length
        entry["floor"] = result
