"""How ``distilintent bench`` and the ``benchmarks/`` scripts time things: percentiles of per-call clocks,
timed batch-1 windows and batch runs, full GC collections that land in them, and cold start in a fresh
interpreter (:mod:`distilintent.bench.coldstart` is the child side).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from distilintent.bench.rows import Row


def percentiles(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99, mean, min and max in ms of per-call clock readings in ns, and their count."""
    values = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {"p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean()),
            "min_ms": float(values.min()), "max_ms": float(values.max()), "n": int(len(values))}


class GcWatch:
    """A ``gc.callbacks`` entry: the gen-2 (full) collections that run while ``into`` is set, in ms."""

    def __init__(self) -> None:
        self.into: list[float] | None = None
        self._started = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2 or self.into is None:
            return
        if phase == "start":
            self._started = time.perf_counter_ns()
        else:
            self.into.append((time.perf_counter_ns() - self._started) / 1e6)


def _before_window(subject: Any) -> None:
    """Untimed preparation some subjects need before a timed window (an HTTP client reconnects)."""
    before = getattr(subject, "before_window", None)
    if before is not None:
        before()


def timed_calls(subject: Any, texts: Sequence[str], into: list[int], watch: GcWatch, pauses: list[float]) -> None:
    """``subject.detect(text)`` per text, each call's ns appended to ``into``; full collections to ``pauses``."""
    _before_window(subject)
    detect = subject.detect
    clock = time.perf_counter_ns
    watch.into = pauses
    try:
        for text in texts:
            start = clock()
            detect(text)
            into.append(clock() - start)
    finally:
        watch.into = None


def timed_batch(subject: Any, texts: Sequence[str], batch_size: int) -> float:
    """Seconds of one ``subject.detect_batch(texts, batch_size=batch_size)``."""
    _before_window(subject)
    start = time.perf_counter_ns()
    subject.detect_batch(texts, batch_size=batch_size)
    return (time.perf_counter_ns() - start) / 1e9


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
