"""Smoke tests of ``distilintent bench`` on the tiny exported bundle: structure, not timings.

Most runs are in-process (``cli.main``) with cold start off, so the file stays fast; one run goes through
the real command line with cold start on. The Rasa DIET row is tested in tests/rasa/test_rasa_bench.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from distilintent import cli

FAST = ["--runs", "4", "--rounds", "2", "--warmup", "1", "--batch-sizes", "1,4", "--batch-texts", "8",
        "--cold-start-repeats", "0", "--no-progress"]


@pytest.fixture
def torch_threads():
    """The bench sets torch's process-wide thread count per row: restore it for the other tests."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def bench(bundle: Path, out: Path, *args: str) -> dict:
    assert cli.main(["bench", "--model", str(bundle), *FAST, "--out", str(out), *args]) == 0
    return json.loads((out / "results.json").read_text())


def test_bench_measures_every_requested_row_and_seq_len(exported_bundle, tmp_path, torch_threads):
    report = bench(exported_bundle, tmp_path / "bench", "--backends", "pipeline,torch,onnxruntime,openvino",
                   "--seq-lens", "4,8", "--seq-len-runs", "2")
    variants = json.loads((exported_bundle / "manifest.json").read_text())["variants"]
    assert len(variants) >= 4
    dynamic = {f"{name}-dynamic" for name, variant in variants.items() if variant["backend"] == "openvino"}
    assert len(dynamic) == 2
    assert set(report["rows"]) == {"pipeline-fp32", "torch-fp32", *variants, *dynamic}
    for name, row in report["rows"].items():
        latency = row["latency_batch1"]
        assert latency["n"] == 4, name
        assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"], name
        assert set(row["latency_by_seq_len"]) == {"4", "8"}, name
        assert all(value["n"] == 2 and value["p50_ms"] > 0 for value in row["latency_by_seq_len"].values()), name
        assert set(row["throughput_texts_per_s"]) == {"1", "4"}, name
        assert all(value > 0 for value in row["throughput_texts_per_s"].values()), name
        assert set(row["speedup_vs_pipeline"]) == {"p50", "p99", "throughput"}, name
        assert "cold_start" not in row and row["gc_full_collections_in_timed_calls"]["count"] >= 0, name
    assert report["rows"]["openvino-int8"]["shapes"] == "static"
    assert report["rows"]["openvino-int8-dynamic"]["shapes"] == "dynamic"
    assert report["rows"]["pipeline-fp32"]["speedup_vs_pipeline"]["p50"] == 1.0
    settings = report["settings"]
    assert settings["threads"] == [None] and settings["seq_lens"] == [4, 8] and settings["runs_per_seq_len"] == 2
    assert settings["batch_sizes"] == [1, 4] and settings["gc_freeze"] is True
    machine = report["machine"]
    assert machine["cpu"] and machine["cpus"] and "isa" in machine and "onnxruntime" in machine["libraries"]
    if machine["has_native_bf16"]:
        assert {"pipeline-bf16", "torch-bf16"} <= set(report["rows"])
    else:  # this project's CI machine: AVX2 only
        for name in ("pipeline-bf16", "torch-bf16"):
            assert "AMX-BF16" in report["skipped"][name] and "--bf16 force" in report["skipped"][name]
    assert "--rasa-model" in report["skipped"]["rasa-diet-http"]
    markdown = (tmp_path / "bench" / "results.md").read_text()
    assert all(f"| {name} |" in markdown for name in report["rows"])
    assert "## Batch-1 latency by sequence length" in markdown and "| 4 tokens | 8 tokens |" in markdown
    for png in ("latency.png", "throughput.png", "seq_len.png"):
        assert (tmp_path / "bench" / png).stat().st_size > 0, png


def test_bench_measures_each_row_at_each_thread_count(exported_bundle, tmp_path, torch_threads):
    report = bench(exported_bundle, tmp_path / "bench", "--backends", "pipeline-fp32,onnx-int8,openvino-int8-dynamic",
                   "--threads", "1,2", "--no-plots")
    names = ("pipeline-fp32", "onnx-int8", "openvino-int8-dynamic")
    assert set(report["rows"]) == {f"{name}@{threads}t" for name in names for threads in (1, 2)}
    for name, row in report["rows"].items():
        threads = int(name[-2])
        assert row["threads"] == threads and row["baseline"] == f"pipeline-fp32@{threads}t", name
        assert row["latency_batch1"]["n"] == 4 and row["speedup_vs_pipeline"]["p50"] > 0, name
    assert report["rows"]["pipeline-fp32@2t"]["speedup_vs_pipeline"]["p50"] == 1.0
    assert report["settings"]["threads"] == [1, 2]


def test_seq_len_texts_have_exactly_that_many_tokens(exported_bundle):
    from tokenizers import Tokenizer

    from distilintent.bench.seqlen import exact_length_texts

    tokenizer_json = (exported_bundle / "tokenizer.json").read_text()
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    sources = ["hello there", "book a flight to Paris", "will it rain tomorrow"]
    for length in (3, 8, 16, 40):
        texts = exact_length_texts(tokenizer_json, sources, length, count=5)
        assert texts and len(set(texts)) == len(texts)
        assert all(len(tokenizer.encode(text).ids) == length for text in texts), (length, texts)
    with pytest.raises(ValueError, match="at least 3"):
        exact_length_texts(tokenizer_json, sources, 2, count=5)


def test_bench_bf16_force_and_serve_row(exported_bundle, tmp_path, torch_threads):
    report = bench(exported_bundle, tmp_path / "bench", "--backends", "pipeline-bf16,torch-bf16,serve",
                   "--bf16", "force", "--no-plots")
    assert set(report["rows"]) == {"pipeline-bf16", "torch-bf16", "serve-http"}
    assert report["rows"]["torch-bf16"]["precision"] == "bf16"
    serve = report["rows"]["serve-http"]
    assert serve["kind"] == "http" and serve["served_variant"] in json.loads(
        (exported_bundle / "manifest.json").read_text())["variants"]
    assert serve["latency_batch1"]["n"] == 4 and serve["throughput_texts_per_s"]["4"] > 0
    assert serve["cold_start"]["cold_start_s"] > 0 and serve["cold_start"]["peak_rss_mb"] > 0
    assert report["baseline"] is None and "speedup_vs_pipeline" not in serve  # no fp32 pipeline row requested
    assert not (tmp_path / "bench" / "latency.png").exists()


def test_bench_command_line_with_cold_start(exported_bundle, tmp_path):
    """The real command line (SDK rows only, so no torch import): cold start in fresh interpreters."""
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "distilintent", "bench", "--model", str(exported_bundle), "--backends",
         "onnx-int8,openvino-fp32-dynamic", "--runs", "3", "--rounds", "1", "--warmup", "1", "--batch-sizes",
         "2", "--batch-texts", "4", "--threads", "1", "--no-plots", "--no-progress", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "results.json").read_text())
    assert set(report["rows"]) == {"onnx-int8", "openvino-fp32-dynamic"}
    assert report["command"].startswith("distilintent bench --model ")
    for name, row in report["rows"].items():
        cold = row["cold_start"]
        assert "error" not in cold, (name, cold)
        assert cold["cold_start_s"] > 0 and cold["peak_rss_mb"] > 0 and cold["torch_imported"] is False, name
    assert "| onnx-int8 |" in done.stdout and f"Command: `{report['command']}`" in done.stdout


@pytest.mark.parametrize("kind", ["torch", "pipeline"])
def test_cold_start_script_builds_the_torch_baselines(exported_bundle, capsys, torch_threads, kind):
    """The cold-start entry point for the torch rows (run here in-process: torch is already imported)."""
    from distilintent.bench import coldstart

    coldstart.main([kind, str(exported_bundle), "torch", "fp32", "1", "-", "book a flight"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["torch_imported"] is True and result["cold_start_s"] > 0 and result["peak_rss_mb"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--backends", "tensorrt"], "unknown backends"),
    (["--backends", "rasa"], "needs --rasa-model"),
    (["--seq-lens", "32"], "max_length 16"),
    (["--rasa-model", "{model}", "--rasa-venv", "{missing}"], "Rasa venv, not found"),
])
def test_bench_rejects_bad_requests(exported_bundle, tmp_path, capsys, args, message):
    model = tmp_path / "diet.tar.gz"
    model.write_bytes(b"")
    args = [arg.format(model=model, missing=tmp_path / "no-venv") for arg in args]
    assert cli.main(["bench", "--model", str(exported_bundle), *FAST, "--out", str(tmp_path), *args]) == 1
    assert message in capsys.readouterr().err
