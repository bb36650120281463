"""Smoke test of ``distilintent bench`` on the tiny exported bundle: structure, not timings."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_bench_measures_every_requested_row(exported_bundle, tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "distilintent", "bench", "--model", str(exported_bundle), "--runs", "6",
         "--rounds", "2", "--warmup", "1", "--batch-sizes", "1,4", "--batch-texts", "8", "--threads", "1",
         "--no-progress", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "results.json").read_text())
    variants = json.loads((exported_bundle / "manifest.json").read_text())["variants"]
    expected = {"pipeline-fp32", "torch-fp32", *variants}
    assert set(report["rows"]) == expected
    assert len(variants) >= 4
    for name, row in report["rows"].items():
        latency = row["latency_batch1"]
        assert latency["n"] == 6, name
        assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"], name
        assert set(row["throughput_texts_per_s"]) == {"1", "4"}, name
        assert all(value > 0 for value in row["throughput_texts_per_s"].values()), name
        cold = row["cold_start"]
        assert "error" not in cold, (name, cold)
        assert cold["cold_start_s"] > 0 and cold["peak_rss_mb"] > 0, name
        assert cold["torch_imported"] == (row["kind"] != "sdk"), name
        assert set(row["speedup_vs_pipeline"]) == {"p50", "p99", "throughput"}, name
    assert report["rows"]["pipeline-fp32"]["speedup_vs_pipeline"]["p50"] == 1.0
    machine = report["machine"]
    assert machine["cpu"] and machine["cpus"] and "isa" in machine and "onnxruntime" in machine["libraries"]
    assert report["settings"]["batch_sizes"] == [1, 4] and report["settings"]["threads"] == 1
    assert "rasa-diet" in report["skipped"]
    markdown = (out / "results.md").read_text()
    assert all(f"| {name} |" in markdown for name in expected)
    assert (out / "latency.png").stat().st_size > 0 and (out / "throughput.png").stat().st_size > 0
    assert "| onnx-int8 |" in done.stdout


def test_bench_backend_filter_and_no_cold_start(exported_bundle, tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "distilintent", "bench", "--model", str(exported_bundle), "--backends",
         "onnxruntime", "--runs", "3", "--rounds", "1", "--batch-sizes", "2", "--batch-texts", "4",
         "--cold-start-repeats", "0", "--no-plots", "--no-progress", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "results.json").read_text())
    assert set(report["rows"]) == {"onnx-fp32", "onnx-int8"}
    assert report["baseline"] is None
    assert all("cold_start" not in row for row in report["rows"].values())
    assert not (out / "latency.png").exists()


def test_bench_rejects_unknown_backend(exported_bundle, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "distilintent", "bench", "--model", str(exported_bundle), "--backends", "tensorrt",
         "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "unknown backends" in done.stderr
