"""Smoke tests of ``distilintent bench`` on the tiny exported bundle: structure, not timings.

Most runs are in-process (``cli.main``) with cold start off, so the file stays fast; one run goes through
the real command line with cold start on. The Rasa DIET row is tested in tests/rasa/test_rasa_bench.py.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib import metadata
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


def assert_ratios(entry: dict, base: dict, ratios: dict) -> None:
    """``ratios`` are the ratios of the figures reported for ``entry`` and ``base``: latency base ÷ entry,
    throughput entry ÷ base."""
    for key in ("p50", "p99"):
        assert ratios[key] == pytest.approx(base["latency_batch1"][f"{key}_ms"] / entry["latency_batch1"][f"{key}_ms"])
    assert ratios["throughput"] == pytest.approx({size: value / base["throughput_texts_per_s"][size]
                                                  for size, value in entry["throughput_texts_per_s"].items()})


def test_bench_measures_every_requested_row_and_seq_len(exported_bundle, tmp_path, torch_threads):
    report = bench(exported_bundle, tmp_path / "bench", "--backends", "pipeline,torch,onnxruntime,openvino",
                   "--seq-lens", "4,8", "--seq-len-runs", "2")
    manifest = json.loads((exported_bundle / "manifest.json").read_text())["variants"]
    assert set(manifest) == {"onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"}
    machine = report["machine"]
    bf16 = {"pipeline-bf16", "torch-bf16"} if machine["has_native_bf16"] else set()
    sdk = {*manifest, "openvino-fp32-dynamic", "openvino-int8-dynamic"}
    assert set(report["rows"]) == {"pipeline-fp32", "torch-fp32", *sdk, *bf16}
    base = report["rows"]["pipeline-fp32"]
    for name, row in report["rows"].items():
        latency = row["latency_batch1"]
        assert latency["n"] == 4, name
        assert 0 < latency["min_ms"] <= latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency[
            "max_ms"], name
        assert set(row["latency_by_seq_len"]) == {"4", "8"}, name
        assert all(value["n"] == 2 and value["p50_ms"] > 0 for value in row["latency_by_seq_len"].values()), name
        assert set(row["throughput_texts_per_s"]) == {"1", "4"}, name
        assert all(value > 0 for value in row["throughput_texts_per_s"].values()), name
        assert row["baseline"] == "pipeline-fp32" and "cold_start" not in row, name
        assert_ratios(row, base, row["speedup_vs_pipeline"])
        size = manifest.get(name.removesuffix("-dynamic"), {}).get("size_bytes")
        assert row.get("size_mb") == (round(size / 1e6, 1) if row["kind"] == "sdk" else None), name
    assert {name: row["shapes"] for name, row in report["rows"].items() if row["backend"] == "openvino"} == {
        "openvino-fp32": "static", "openvino-int8": "static", "openvino-fp32-dynamic": "dynamic",
        "openvino-int8-dynamic": "dynamic"}
    pairs = {(pair["row"], pair["against"]): pair for pair in report["like_for_like"]}
    fp32 = ("onnx-fp32", "openvino-fp32", "openvino-fp32-dynamic")
    assert {key: pair["differs"] for key, pair in pairs.items()} == {
        **{(name, against): "runtime" for name in fp32 for against in ("pipeline-fp32", "torch-fp32")},
        ("onnx-int8", "onnx-fp32"): "precision", ("openvino-int8", "openvino-fp32"): "precision",
        ("openvino-int8-dynamic", "openvino-fp32-dynamic"): "precision"}
    for (name, against), pair in pairs.items():
        assert_ratios(report["rows"][name], report["rows"][against], pair)
    settings = report["settings"]
    assert settings["threads"] == [None] and settings["seq_lens"] == [4, 8] and settings["runs_per_seq_len"] == 2
    assert settings["batch_sizes"] == [1, 4] and settings["gc_freeze"] is True and settings["runs_batch1"] == 4
    assert machine["cpus"] == os.cpu_count() and machine["libraries"]["onnxruntime"] == metadata.version("onnxruntime")
    expected_skips = {"rasa-diet-http"} | ({"pipeline-bf16", "torch-bf16"} - bf16)
    assert set(report["skipped"]) == expected_skips
    for name in expected_skips - {"rasa-diet-http"}:  # this project's CI machine: AVX2 only
        assert "AMX-BF16" in report["skipped"][name] and "--bf16 force" in report["skipped"][name]
    assert "--rasa-model" in report["skipped"]["rasa-diet-http"]
    markdown = (tmp_path / "bench" / "results.md").read_text()
    lines = markdown.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("| row | p50 ms |"))
    assert lines[header].endswith("| cold start s | peak RSS MB | size MB |")
    table = lines[header + 2: lines.index("", header)]
    assert [line.split(" | ")[0].removeprefix("| ") for line in table] == list(report["rows"])
    assert "## Batch-1 latency by sequence length" in markdown and "| 4 tokens | 8 tokens |" in markdown
    assert all(f"| {name} | {against} | {pair['differs']} | {pair['p50']:.2f}× |" in markdown
               for (name, against), pair in pairs.items())
    collected = {name: row["gc_full_collections_in_timed_calls"]["count"] for name, row in report["rows"].items()}
    assert ("No full GC collection landed" in markdown) == (not any(collected.values()))
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
        assert row["latency_batch1"]["n"] == 4, name
        assert_ratios(row, report["rows"][row["baseline"]], row["speedup_vs_pipeline"])
    assert {(pair["row"], pair["against"]) for pair in report["like_for_like"]} == set()  # no FP32 SDK row, no pair
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
        texts = exact_length_texts(tokenizer_json, sources, length, count=5)  # one per starting query: 3
        assert sorted(text.split()[0] for text in texts) == ["book", "hello", "will"], (length, texts)
        assert all(len(tokenizer.encode(text).ids) == length for text in texts), (length, texts)
    assert len(exact_length_texts(tokenizer_json, sources, 8, count=2)) == 2
    with pytest.raises(ValueError, match="at least 3"):
        exact_length_texts(tokenizer_json, sources, 2, count=5)


def test_bench_bf16_force_and_serve_row(exported_bundle, tmp_path, torch_threads):
    report = bench(exported_bundle, tmp_path / "bench", "--backends", "pipeline-bf16,torch-bf16,serve",
                   "--bf16", "force", "--no-plots")
    assert set(report["rows"]) == {"pipeline-bf16", "torch-bf16", "serve-http"}
    assert report["rows"]["torch-bf16"]["precision"] == "bf16"
    serve = report["rows"]["serve-http"]
    from distilintent.core.bundle import Bundle
    from distilintent.sdk.variants import select_variant

    assert serve["kind"] == "http" and serve["served_variant"] == select_variant(Bundle.open(exported_bundle)).name
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
    assert result["torch_imported"] is True and result["peak_rss_mb"] >= result["rss_mb"] > 0
    assert result["cold_start_s"] == pytest.approx(result["import_s"] + result["load_s"] + result["first_result_s"])
    assert result["load_s"] > 0 and result["first_result_s"] > 0


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


def test_gc_watch_counts_the_full_collections_inside_timed_calls_only():
    import gc

    from distilintent.bench.timing import GcWatch, timed_calls

    class Collecting:
        def detect(self, text: str) -> None:
            gc.collect(1)  # a young collection: not counted
            if text == "full":
                gc.collect()

    watch, latencies, pauses = GcWatch(), [], []
    gc.callbacks.append(watch)
    try:
        timed_calls(Collecting(), ["full", "young", "full"], latencies, watch, pauses)
        gc.collect()  # outside the timed window
    finally:
        gc.callbacks.remove(watch)
    assert len(latencies) == 3 and len(pauses) == 2 and all(pause > 0 for pause in pauses)


def test_like_for_like_pairs_rows_that_differ_in_one_thing():
    from distilintent.bench.results import like_for_like

    def row(kind, backend, precision, p50, texts_per_s, shapes=None, threads=1):
        return {"kind": kind, "backend": backend, "precision": precision, "shapes": shapes, "threads": threads,
                "latency_batch1": {"p50_ms": p50, "p99_ms": 2 * p50}, "throughput_texts_per_s": {"8": texts_per_s}}

    rows = {"pipe": row("pipeline", "torch", "fp32", 20.0, 100.0), "torch": row("torch", "torch", "fp32", 10.0, 50.0),
            "ov32": row("sdk", "openvino", "fp32", 5.0, 400.0, "static"),
            "ov32d": row("sdk", "openvino", "fp32", 8.0, 200.0, "dynamic"),
            "ov8d": row("sdk", "openvino", "int8", 4.0, 300.0, "dynamic"),
            "ov8@2": row("sdk", "openvino", "int8", 1.0, 1.0, "static", threads=2)}  # no FP32 row at 2 threads
    pairs = {(pair["row"], pair["against"]): (pair["differs"], pair["p50"], pair["p99"], pair["throughput"]["8"])
             for pair in like_for_like(rows)}
    assert pairs == {("ov32", "pipe"): ("runtime", 4.0, 4.0, 4.0), ("ov32", "torch"): ("runtime", 2.0, 2.0, 8.0),
                     ("ov32d", "pipe"): ("runtime", 2.5, 2.5, 2.0), ("ov32d", "torch"): ("runtime", 1.25, 1.25, 4.0),
                     ("ov8d", "ov32d"): ("precision", 2.0, 2.0, 1.5)}


def test_committed_results_md_is_the_rendering_of_results_json():
    """The README quotes benchmarks/results/results.{json,md}: the note shows exactly what the JSON holds."""
    from distilintent.bench.report import to_markdown

    results = REPO / "benchmarks" / "results"
    report = json.loads((results / "results.json").read_text())
    assert (results / "results.md").read_text() == to_markdown(report)


BENCH_SOURCES = [*sorted((REPO / "distilintent" / "bench").glob("*.py")), REPO / "distilintent/commands/bench.py",
                 REPO / "benchmarks/sdk_soak.py", REPO / "benchmarks/server_load.py"]


@pytest.mark.parametrize("path", BENCH_SOURCES, ids=lambda path: path.name)
def test_bench_uses_no_private_attribute_of_another_object(path):
    """``detector._encoder`` and the like: the bench measures the SDK through its public API only."""
    tree = ast.parse(path.read_text())
    private = [f"{path.name}:{node.lineno} .{node.attr}" for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
               and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})]
    assert private == []
