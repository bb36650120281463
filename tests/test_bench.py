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

import numpy as np
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


# -- the GEMM floor (distilintent.bench.floor, bench --floor / --floor-only) ------------------------------


def test_floor_multiply_adds_per_text_follow_the_architecture(exported_bundle):
    from distilintent.bench.floor import Architecture, gemms, multiply_adds

    default = Architecture(dim=384, n_layers=6, n_heads=12, hidden_dim=1536)
    # 6 × 16 × (4·384² + 2·384·1536) + 6 × 2 × 16² × 384
    assert multiply_adds(default, 16) == 169_869_312 + 1_179_648 == 171_048_960
    assert multiply_adds(default, 8) == 6 * 8 * 1_769_472 + 6 * 2 * 64 * 384
    student = Architecture(dim=384, n_layers=3, n_heads=12, hidden_dim=1536)
    assert multiply_adds(student, 16) == 171_048_960 // 2
    for arch in (default, student, Architecture(32, 2, 2, 64)):
        for tokens in (1, 8, 13, 64):
            assert sum(arch.n_layers * g.per_layer * g.multiply_adds for g in gemms(arch, tokens)) == multiply_adds(
                arch, tokens)
    manifest = json.loads((exported_bundle / "manifest.json").read_text())
    assert Architecture.from_manifest(manifest) == Architecture(dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    with pytest.raises(ValueError, match="n_layers"):
        Architecture.from_manifest({"architecture": {"dim": 32, "n_heads": 2, "hidden_dim": 64}})


@pytest.mark.parametrize("kind", ["fp32", "int8", "int8-dq", "attention"])
def test_floor_gemm_graphs_compute_the_product(kind):
    import onnx
    from onnx import numpy_helper

    from distilintent.bench.floor import Gemm, gemm_graph, session

    if kind == "attention":
        gemm, kind = Gemm("attn_scores", 5, 4, 5, 1, batch=3, weights=False), "fp32"
    else:
        gemm = Gemm("ffn_in", 5, 24, 7, 1)
    model, feed = gemm_graph(kind, gemm, count=3)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(model).graph.initializer}
    outputs = session(model, 1).run(None, feed)
    assert len(outputs) == 3
    x = feed["x"]
    for index, got in enumerate(outputs):
        if not gemm.weights:  # batched over heads, the second operand a graph input of its own
            assert got.shape == (3, 5, 5)
            np.testing.assert_allclose(got, np.matmul(x, feed[f"w{index}"]), rtol=1e-5, atol=1e-5)
            continue
        w = weights[f"w{index}"]
        if kind == "fp32":
            np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)
        elif kind == "int8":  # uint8 activations with zero point 128 × int8 weights, exact in int32
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, (x.astype(np.int32) - 128) @ w.astype(np.int32))
        else:  # activations quantized per call to uint8 (asymmetric, range including 0), per-channel weight scales
            low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            scale = np.float32((high - low) / 255)
            zero = np.clip(np.round(-low / scale), 0, 255)
            quantized = np.clip(np.round(x / scale) + zero, 0, 255)
            expected = ((quantized - zero) @ w.astype(np.float64)) * scale * weights[f"w{index}_scale"]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def np_floor_ms(floor: dict, tokens: int, kind: str, threads) -> float:
    """The floor recomputed from the measured table: Σ median × copies (the model's count of that GEMM)."""
    return 1e3 * sum(entry["median_s"] * entry["copies"] for entry in floor["gemms"]
                     if entry["m"] == tokens and entry["threads"] == threads
                     and entry["kind"] == (kind if not entry["gemm"].startswith("attn") else "fp32"))


def test_floor_measure_times_every_gemm_with_positive_medians():
    from distilintent.bench.floor import Architecture, floor_for, gemm_seconds, gemms, measure, time_gemm

    timing = time_gemm("int8-dq", gemms(Architecture(16, 1, 2, 32), 4)[1], count=2, threads=1, runs=7, warmup=1)
    assert timing["runs"] == 7 and 0 < timing["p10_s"] <= timing["median_s"] <= timing["p90_s"]
    assert timing["gmacs_per_s"] == pytest.approx(4 * 16 * 32 / timing["median_s"] / 1e9)
    arch = Architecture(dim=16, n_layers=2, n_heads=2, hidden_dim=32)
    report = measure(arch, tokens=(4, 8), threads=(1,), kinds=("fp32", "int8"), runs=5, warmup=1)
    # per thread count and token count: 3 linear GEMMs × 2 kinds + 2 attention products in fp32
    assert len(report["gemms"]) == 2 * (3 * 2 + 2)
    assert all(entry["median_s"] > 0 and entry["gmacs_per_s"] > 0 for entry in report["gemms"])
    assert {(e["gemm"], e["copies"]) for e in report["gemms"]} == {("qkvo", 8), ("ffn_in", 2), ("ffn_out", 2),
                                                                   ("attn_scores", 2), ("attn_context", 2)}
    assert len(report["floors"]) == 2 * 2
    for entry in report["floors"]:
        expected = np_floor_ms(report, entry["tokens"], entry["kind"], 1)
        assert entry["floor_ms"] == pytest.approx(expected, rel=1e-12)
        assert floor_for(report, arch, entry["tokens"], entry["kind"], 1) == pytest.approx(expected, rel=1e-12)
    # a token count between the measured ones: each GEMM's time interpolated linearly in M
    between = gemms(arch, 6)[1]
    at4, at8 = (gemm_seconds(report["gemms"], "fp32", gemms(arch, m)[1], 1) for m in (4, 8))
    assert gemm_seconds(report["gemms"], "fp32", between, 1) == pytest.approx((at4 + at8) / 2)
    with pytest.raises(ValueError, match="no int8 timing"):
        floor_for(report, arch, 4, "int8", 2)


def test_floor_needs_onnx_from_the_train_extra(monkeypatch):
    from distilintent.bench.floor import Gemm, gemm_graph
    from distilintent.core.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtraError, match=r"distilintent\[train\]"):
        gemm_graph("fp32", Gemm("qkvo", 2, 4, 4, 4), 1)


def test_bench_floor_multiple_is_latency_over_the_floor(exported_bundle, tmp_path):
    report = bench(exported_bundle, tmp_path / "bench", "--backends", "onnx-fp32,openvino-fp32-dynamic",
                   "--seq-lens", "4,8", "--seq-len-runs", "2", "--floor", "--floor-runs", "3", "--no-plots")
    assert set(report["rows"]) == {"onnx-fp32", "openvino-fp32-dynamic"}
    floor = report["floor"]
    assert floor["architecture"] == {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}
    assert floor["source"] == "measured in this run" and floor["threads"] == [None]
    markdown = (tmp_path / "bench" / "results.md").read_text()
    assert "## Against the floor" in markdown
    from tokenizers import Tokenizer

    from distilintent.core.samples import read_samples

    tokenizer = Tokenizer.from_str((exported_bundle / "tokenizer.json").read_text())
    tokenizer.no_truncation()
    lengths = [len(tokenizer.encode(example.text).ids) for example in read_samples(exported_bundle, "validation")]
    median_tokens = sorted(lengths)[len(lengths) // 2]  # the upper median of the bench's texts
    for name, row in report["rows"].items():
        kind = row["precision"]
        got = row["floor"]
        tokens = got["batch1"]["tokens"]
        assert got["kind"] == kind and tokens == min(median_tokens, 16), (name, lengths)
        assert got["batch1"]["floor_ms"] == pytest.approx(np_floor_ms(floor, tokens, kind, None)), name
        assert got["batch1"]["p50_x"] == pytest.approx(row["latency_batch1"]["p50_ms"] / got["batch1"]["floor_ms"])
        assert set(got["by_seq_len"]) == {"4", "8"}, name
        for length, value in got["by_seq_len"].items():
            assert value["floor_ms"] == pytest.approx(np_floor_ms(floor, int(length), kind, None)), (name, length)
            assert value["p50_x"] == pytest.approx(row["latency_by_seq_len"][length]["p50_ms"] / value["floor_ms"])
        assert f"| {name} | {kind} | {got['batch1']['p50_x']:.1f}× |" in markdown, name


def test_bench_floor_only_writes_floor_json_that_bench_reads(exported_bundle, tmp_path, capsys):
    from distilintent.bench.floor import to_markdown

    out = tmp_path / "floor"
    assert cli.main(["bench", "--model", str(exported_bundle), "--floor-only", "--seq-lens", "4,8", "--threads", "1",
                     "--floor-runs", "3", "--no-progress", "--out", str(out)]) == 0
    floor = json.loads((out / "floor.json").read_text())
    assert (out / "floor.md").read_text() == to_markdown(floor) and not (out / "results.json").exists()
    assert floor["kinds"] == ["fp32", "int8", "int8-dq"] and floor["tokens"] == [4, 8] and floor["threads"] == [1]
    assert {(e["kind"], e["tokens"]) for e in floor["floors"]} == {(k, m) for k in floor["kinds"] for m in (4, 8)}
    assert floor["machine"]["cpu"] and "isa" in floor["machine"]
    report = bench(exported_bundle, tmp_path / "bench", "--backends", "onnx-fp32", "--threads", "1", "--no-plots",
                   "--floor", str(out / "floor.json"))
    row = report["rows"]["onnx-fp32"]
    assert report["floor"]["source"] == f"from {out / 'floor.json'}"
    assert row["floor"]["batch1"]["p50_x"] == pytest.approx(row["latency_batch1"]["p50_ms"]
                                                            / row["floor"]["batch1"]["floor_ms"])
    capsys.readouterr()
    assert cli.main(["bench", "--model", str(exported_bundle), *FAST, "--backends", "onnx-fp32", "--threads", "2",
                     "--floor", str(out / "floor.json"), "--out", str(tmp_path / "again")]) == 1
    assert "measured at threads [1]" in capsys.readouterr().err


def test_floor_multiples_hold_each_sdk_row_against_the_floor_of_its_precision_and_threads():
    from distilintent.bench.results import add_floor_multiples

    arch = {"dim": 4, "n_layers": 1, "n_heads": 2, "hidden_dim": 8}
    table = [{"kind": kind, "gemm": gemm, "m": m, "k": k, "n": n, "batch": batch, "threads": threads, "copies": copies,
              "median_s": seconds * m * (2 if threads == 1 else 1) * (1 if kind == "fp32" else 0.25)}
             for kind in ("fp32", "int8") for threads in (1, 2) for m in (4, 8)
             for gemm, k, n, batch, copies, seconds in (("qkvo", 4, 4, 1, 4, 1e-6), ("ffn_in", 4, 8, 1, 1, 2e-6),
                                                       ("ffn_out", 8, 4, 1, 1, 3e-6), ("attn_scores", 2, m, 2, 1, 4e-6),
                                                       ("attn_context", m, 2, 2, 1, 5e-6))
             if kind == "fp32" or not gemm.startswith("attn")]
    floor = {"architecture": arch, "gemms": table}

    def row(kind, precision, threads, p50, by_length=None):
        entry = {"kind": kind, "precision": precision, "threads": threads, "latency_batch1": {"p50_ms": p50}}
        if by_length:
            entry["latency_by_seq_len"] = {length: {"p50_ms": value} for length, value in by_length.items()}
        return entry

    rows = {"a": row("sdk", "fp32", 1, 1.0, {"4": 0.5, "8": 0.9}), "b": row("sdk", "int8", 2, 0.1),
            "pipe": row("pipeline", "fp32", 1, 9.0), "bf": row("sdk", "bf16", 1, 1.0)}
    add_floor_multiples(rows, floor, batch1_tokens=6)
    assert "floor" not in rows["pipe"] and "floor" not in rows["bf"]
    # fp32 at 1 thread, M tokens: (4·1 + 2 + 3) µs·M·2 + attention (4 + 5) µs·M·2 = 36 µs·M
    assert rows["a"]["floor"]["by_seq_len"]["4"] == {"floor_ms": pytest.approx(0.144),
                                                     "p50_x": pytest.approx(0.5 / 0.144)}
    assert rows["a"]["floor"]["by_seq_len"]["8"]["p50_x"] == pytest.approx(0.9 / 0.288)
    assert rows["a"]["floor"]["batch1"] == {"tokens": 6, "floor_ms": pytest.approx(0.216),
                                            "p50_x": pytest.approx(1.0 / 0.216)}
    # int8 at 2 threads, 6 tokens: linear layers (9 µs × 0.25) × 6 + attention fp32 9 µs × 6
    assert rows["b"]["floor"]["kind"] == "int8" and "by_seq_len" not in rows["b"]["floor"]
    assert rows["b"]["floor"]["batch1"]["floor_ms"] == pytest.approx((9 * 0.25 * 6 + 9 * 6) / 1e3)
    assert rows["b"]["floor"]["batch1"]["p50_x"] == pytest.approx(0.1 / ((9 * 0.25 * 6 + 9 * 6) / 1e3))
