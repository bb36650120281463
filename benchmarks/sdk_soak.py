"""Concurrency and memory soak of one ``IntentDetector``: threads agree with sequential calls; RSS stays flat.

    python benchmarks/sdk_soak.py runs/clinc150 --data ../shared/data/clinc150/clinc150.jsonl --split validation

1. Sequential reference: ``detect(text)`` once per text (real texts plus odd ones: emoji, NUL, RTL, blank).
2. Concurrency: ``--threads`` threads (default 32) call the same detector for ``--seconds`` (default 10),
   each walking the texts from its own offset; every result must equal the reference exactly.
3. Soak: after ``--warmup`` calls, ``--calls`` (default 100,000) more ``detect`` calls; RSS (``/proc/self/statm``)
   is sampled 20 times; growth = (last − after warm-up) / after warm-up must stay under ``--max-rss-growth-pct``.

Writes ``<name>.json`` and ``<name>.md`` into ``--out`` and exits 1 if a result differed or RSS grew too much.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distilintent.bench.runner import read_texts  # noqa: E402
from distilintent.bench.scripts import machine_summary, script_parser, write_report  # noqa: E402
from distilintent.bench.timing import percentiles  # noqa: E402
from distilintent.core.bundle import Bundle  # noqa: E402
from distilintent.sdk import IntentDetector  # noqa: E402

ODD_TEXTS = ["", "   ", "hello 🙂", "\x00nul", "\u202eשלום עולם", "e\u0301\u0301 zero\u200bwidth", "x" * 5000]


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc (Linux); psutil elsewhere."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process(None if pid == "self" else int(pid)).memory_info().rss


def concurrency(detector: IntentDetector, texts: list[str], expected: dict[str, Any], threads: int,
                seconds: float) -> dict[str, Any]:
    """``threads`` threads call ``detect`` for ``seconds``; counts calls and results unlike ``expected``."""
    barrier = threading.Barrier(threads + 1)
    calls = [0] * threads
    mismatches: list[dict[str, Any]] = []
    failures: list[str] = []
    stop = threading.Event()

    def worker(index: int) -> None:
        barrier.wait()
        position = index * 7
        try:
            while not stop.is_set():
                text = texts[position % len(texts)]
                result = detector.detect(text)
                if result != expected[text]:
                    mismatches.append({"thread": index, "text": text[:80], "got": result.intent,
                                       "expected": expected[text].intent})
                calls[index] += 1
                position += 1
        except Exception as err:  # noqa: BLE001 - reported, not raised in a thread
            failures.append(f"thread {index}: {type(err).__name__}: {err}")

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join(timeout=60)
    elapsed = time.perf_counter() - start
    return {"threads": threads, "seconds": round(elapsed, 3), "calls": sum(calls),
            "calls_per_s": round(sum(calls) / elapsed, 1), "min_calls_per_thread": min(calls),
            "mismatches": len(mismatches), "mismatch_examples": mismatches[:5], "failures": failures[:5],
            "hung_threads": sum(thread.is_alive() for thread in pool)}


def soak(detector: IntentDetector, texts: list[str], expected: dict[str, Any], calls: int,
         warmup: int) -> dict[str, Any]:
    """``warmup`` then ``calls`` sequential ``detect`` calls; RSS sampled 20 times, latency of every call."""
    latencies = np.ones(calls, dtype=np.int64)  # written now, so that its pages are in the baseline
    for i in range(warmup):
        detector.detect(texts[i % len(texts)])
    baseline = rss_bytes()
    samples = [baseline]
    every = max(1, calls // 20)
    mismatches = 0
    for i in range(calls):
        text = texts[i % len(texts)]
        start = time.perf_counter_ns()
        result = detector.detect(text)
        latencies[i] = time.perf_counter_ns() - start
        mismatches += result != expected[text]
        if (i + 1) % every == 0:
            samples.append(rss_bytes())
    final = samples[-1]
    return {"warmup_calls": warmup, "calls": calls, "mismatches": mismatches,
            "rss_after_warmup_mb": round(baseline / 2**20, 2), "rss_final_mb": round(final / 2**20, 2),
            "rss_peak_mb": round(max(samples) / 2**20, 2),
            "rss_growth_pct": round(100 * (final - baseline) / baseline, 3),
            "rss_samples_mb": [round(value / 2**20, 2) for value in samples],
            "latency": percentiles(latencies)}


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, "sdk_soak")
    parser.add_argument("--texts", type=int, default=300, help="distinct texts to cycle through (default 300)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--intra-threads", type=int, default=None, help="inference threads (default: runtime's)")
    parser.add_argument("--threads", type=int, default=32, help="caller threads (default 32)")
    parser.add_argument("--seconds", type=float, default=10.0, help="concurrency phase duration (default 10)")
    parser.add_argument("--calls", type=int, default=100_000, help="soak calls after warm-up (default 100,000)")
    parser.add_argument("--warmup", type=int, default=2_000, help="calls before the RSS baseline (default 2,000)")
    args = parser.parse_args(argv)

    bundle = Bundle.open(args.bundle)
    real, _, source = read_texts(args.data, args.split, bundle)
    texts = list(dict.fromkeys(real))[: args.texts] + ODD_TEXTS
    detector = IntentDetector(args.bundle, backend=args.backend, precision=args.precision, threads=args.intra_threads)
    expected = {text: detector.detect(text) for text in texts}
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    threaded = concurrency(detector, texts, expected, args.threads, args.seconds)
    soaked = soak(detector, texts, expected, args.calls, args.warmup)
    ok = (threaded["mismatches"] == 0 and not threaded["failures"] and not threaded["hung_threads"]
          and soaked["mismatches"] == 0 and soaked["rss_growth_pct"] < args.max_rss_growth_pct)
    report = {
        "benchmark": "sdk_soak", "date": started, "bundle": str(args.bundle), "variant": detector.variant.name,
        "texts": len(texts), "text_source": source, "intra_threads": args.intra_threads,
        "max_rss_growth_pct": args.max_rss_growth_pct, "passed": ok,
        "concurrency": threaded, "soak": soaked,
    }
    write_report(report, to_markdown, args.out, args.name)
    return 0 if ok else 1


def to_markdown(report: dict[str, Any]) -> str:
    threaded, soaked = report["concurrency"], report["soak"]
    latency = soaked["latency"]
    return "\n".join([
        f"# SDK soak: {Path(report['bundle']).name} ({report['variant']})",
        "",
        machine_summary(report),
        f"`{report['command']}`",
        "",
        "| check | result |",
        "|---|---|",
        f"| {threaded['threads']} threads × {threaded['seconds']} s on one detector | {threaded['calls']:,} calls "
        f"({threaded['calls_per_s']:,}/s), {threaded['mismatches']} differ from sequential, "
        f"{len(threaded['failures'])} exceptions, {threaded['hung_threads']} hung |",
        f"| {soaked['calls']:,} sequential calls after {soaked['warmup_calls']:,} warm-up | "
        f"{soaked['mismatches']} differ; p50 {latency['p50_ms']:.3f} ms, p99 {latency['p99_ms']:.3f} ms |",
        f"| RSS after warm-up → end (peak) | {soaked['rss_after_warmup_mb']} → {soaked['rss_final_mb']} MB "
        f"({soaked['rss_peak_mb']} MB): **{soaked['rss_growth_pct']:+.2f} %** "
        f"(limit {report['max_rss_growth_pct']} %) |",
        f"| passed | {'yes' if report['passed'] else '**no**'} |",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
