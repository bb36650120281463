"""Concurrency and load, small versions of ``benchmarks/sdk_soak.py`` and ``benchmarks/server_load.py``.

The full runs (100,000 calls, 32 threads × 10 s; 50 clients × 20,000 requests on CLINC150) are in
``benchmarks/results/``. Durations here can be raised with ``DISTILINTENT_CONCURRENCY_SECONDS``,
``DISTILINTENT_SOAK_CALLS`` and ``DISTILINTENT_LOAD_REQUESTS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from servers import REPO

from distilintent.sdk import IntentDetector

CONCURRENCY_SECONDS = float(os.environ.get("DISTILINTENT_CONCURRENCY_SECONDS", "2"))
SOAK_CALLS = int(os.environ.get("DISTILINTENT_SOAK_CALLS", "20000"))
LOAD_REQUESTS = int(os.environ.get("DISTILINTENT_LOAD_REQUESTS", "3000"))
TEXTS = ["hello there", "bye for now", "book a flight to Paris", "will it rain tomorrow", "", "  ", "🙂 hi",
         "\x00 nul", "\u202eשלום", "a much longer text about booking flights and the weather " * 3,
         *[f"request number {i} to book something" for i in range(30)]]


def test_32_threads_on_one_detector_give_the_sequential_results(detector: IntentDetector) -> None:
    expected = {text: detector.detect(text) for text in TEXTS}
    batches = [TEXTS[i : i + 7] for i in range(0, len(TEXTS), 7)]
    expected_batches = [detector.detect_batch(batch, batch_size=4) for batch in batches]
    threads = 32
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()
    calls = [0] * threads
    problems: list[str] = []

    def worker(index: int) -> None:  # every 4th thread uses detect_batch, the others detect
        barrier.wait()
        position = index
        try:
            while not stop.is_set():
                if index % 4 == 3:
                    batch = position % len(batches)
                    if detector.detect_batch(batches[batch], batch_size=4) != expected_batches[batch]:
                        problems.append(f"thread {index}: batch {batch} differs")
                else:
                    text = TEXTS[position % len(TEXTS)]
                    if detector.detect(text) != expected[text]:
                        problems.append(f"thread {index}: {text!r} differs")
                calls[index] += 1
                position += 1
        except Exception as err:  # noqa: BLE001 - reported below
            problems.append(f"thread {index}: {type(err).__name__}: {err}")

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    time.sleep(CONCURRENCY_SECONDS)
    stop.set()
    for thread in pool:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in pool), "a thread hung"
    assert problems == []
    assert min(calls) >= 1 and sum(calls) >= threads * 2, calls


def run_benchmark(script: str, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = Path(args[args.index("--out") + 1])
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)
    report_file = out / (Path(script).stem + ".json")
    assert report_file.exists(), done.stdout + done.stderr
    return done, json.loads(report_file.read_text())


@pytest.mark.slow
def test_sdk_soak_threads_agree_and_memory_stays_flat(bundle: Path, tmp_path: Path) -> None:
    done, report = run_benchmark("sdk_soak.py", str(bundle), "--calls", str(SOAK_CALLS), "--warmup", "2000",
                                 "--threads", "32", "--seconds", str(CONCURRENCY_SECONDS), "--out", str(tmp_path))
    threaded, soaked = report["concurrency"], report["soak"]
    assert threaded["mismatches"] == 0 and threaded["failures"] == [] and threaded["hung_threads"] == 0
    assert threaded["calls"] > 32 and threaded["min_calls_per_thread"] >= 1
    assert soaked["calls"] == SOAK_CALLS and soaked["mismatches"] == 0
    assert soaked["rss_growth_pct"] < 5, soaked["rss_samples_mb"]
    assert done.returncode == 0 and report["passed"], done.stdout + done.stderr
    assert (tmp_path / "sdk_soak.md").read_text().startswith("# SDK soak")


@pytest.mark.slow
def test_server_under_load_answers_everything_and_keeps_answering_health(bundle: Path, tmp_path: Path) -> None:
    done, report = run_benchmark("server_load.py", str(bundle), "--clients", "10", "--requests", str(LOAD_REQUESTS),
                                 "--disconnects", "20", "--timeout", "30", "--out", str(tmp_path))
    loaded, health = report["load"], report["health"]
    assert loaded["errors"] == 0, loaded["error_examples"]
    assert loaded["answered"] == LOAD_REQUESTS and loaded["latency"]["p99_ms"] > 0
    assert health["polls"] >= 3 and health["failures"] == 0, health
    assert report["disconnects"] == {"after_request": 10, "mid_body": 10, "connect_failures": 0}
    assert report["final"]["health"] and report["final"]["parse"]  # still answering after the disconnects
    assert "500" not in report["final"]["server_requests"]["by_status"]
    assert report["server_log_errors"] == [], report["server_log_tail"]
    assert report["server_exit_code"] == 0
    assert done.returncode == 0 and report["passed"], done.stdout + done.stderr
    assert report["machine"]["cpu"] and (tmp_path / "server_load.md").read_text().startswith("# Server load")
