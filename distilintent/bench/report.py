"""``results.md`` and PNG plots of a ``distilintent bench`` report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distilintent.bench.results import like_for_like


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:{spec}}{suffix}"


def _threads_text(threads: list[int | None]) -> str:
    return ", ".join("runtime default" if value is None else str(value) for value in threads)


def to_markdown(report: dict[str, Any]) -> str:
    info = report["machine"]
    settings = report["settings"]
    libraries = info.get("libraries", {})
    sizes = [str(size) for size in settings["batch_sizes"]]
    threads = settings["threads"] if isinstance(settings["threads"], list) else [settings["threads"]]
    sized = any("size_mb" in entry for entry in report["rows"].values())  # SDK rows: the variant's files on disk
    lines = [
        f"# distilintent bench: {Path(report['bundle']).name}",
        "",
        f"{report['date']} · {info.get('cpu', '?')}, {info.get('cpus', '?')} logical CPUs, ISA: "
        f"{' '.join(info.get('isa', [])) or '?'} (AVX-512: {'yes' if info.get('has_avx512') else 'no'}, "
        f"VNNI: {'yes' if info.get('has_vnni') else 'no'}, AMX: {'yes' if info.get('has_amx') else 'no'}) · "
        f"threads: {_threads_text(threads)} · load average before/after: "
        f"{info.get('load_average_before')} / {info.get('load_average_after')}",
        "",
        "Libraries: " + ", ".join(f"{name} {version}" for name, version in libraries.items()) + ".",
        "",
    ]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += [
        f"Batch-1 latency over {settings['runs_batch1']} timed calls per row (after {settings['warmup']} warm-up "
        f"calls), interleaved in {settings['rounds']} rounds, on {report['n_texts']} real texts from "
        f"{report['texts']}; throughput over {settings['texts_per_batch_round']} texts per round and batch size. "
        "Latency is one call: text in → intent out (tokenization included; for the `-http` rows one HTTP request "
        "to a server on 127.0.0.1). Speed-up × is against the `transformers.pipeline` baseline of the same thread "
        "count (same fine-tuned weights, PyTorch eager FP32). OpenVINO rows without a suffix pad batch-1 texts "
        "to static-shape buckets (the SDK's default); `-dynamic` rows run the dynamic-shape model unpadded.",
        "",
        "| row | p50 ms | p90 ms | p99 ms | p50 × | p99 × | " + " | ".join(f"texts/s @{s}" for s in sizes)
        + f" | × @{sizes[-1]} | cold start s | peak RSS MB |" + (" size MB |" if sized else ""),
        "|---|" + "---:|" * (8 + len(sizes) + sized),
    ]
    for name, entry in report["rows"].items():
        latency = entry["latency_batch1"]
        speedup = entry.get("speedup_vs_pipeline") or {}
        cold = entry.get("cold_start") or {}
        throughput = entry["throughput_texts_per_s"]
        label = f"{name} ({entry['served_variant']})" if entry.get("served_variant") else name
        lines.append(
            f"| {label} | {latency['p50_ms']:.2f} | {latency['p90_ms']:.2f} | {latency['p99_ms']:.2f} | "
            f"{_fmt(speedup.get('p50'), '.1f', '×')} | {_fmt(speedup.get('p99'), '.1f', '×')} | "
            + " | ".join(_fmt(throughput.get(s), ',.0f') for s in sizes)
            + f" | {_fmt((speedup.get('throughput') or {}).get(sizes[-1]), '.1f', '×')} | "
            f"{_fmt(cold.get('cold_start_s'), '.2f')} | {_fmt(cold.get('peak_rss_mb'), '.0f')} |"
            + (f" {_fmt(entry.get('size_mb'), '.1f')} |" if sized else "")
        )
    pairs = like_for_like(report["rows"])
    if pairs:
        lines += ["", "## Like for like", "",
                  "Ratios of the medians and p99s above, between rows of this run at the same thread count that "
                  "differ in one thing: SDK FP32 rows against the FP32 pipeline and plain torch FP32 (`runtime`), "
                  "and INT8 rows against the FP32 row of the same runtime and shapes (`precision`). Latency: "
                  "the other row's ÷ this row's (above 1: this row is faster); throughput: this row's ÷ the other's.",
                  "", f"| row | against | differs | p50 × | p99 × | texts/s × @{sizes[-1]} |",
                  "|---|---|---|---:|---:|---:|"]
        lines += [f"| {pair['row']} | {pair['against']} | {pair['differs']} | {pair['p50']:.2f}× | "
                  f"{pair['p99']:.2f}× | {_fmt(pair['throughput'].get(sizes[-1]), '.2f', '×')} |" for pair in pairs]
    seq_lens = [str(length) for length in settings.get("seq_lens") or []]
    if seq_lens:
        lines += ["", f"## Batch-1 latency by sequence length ({settings['runs_per_seq_len']} timed calls per row "
                      "and length)", "",
                  "Texts of exactly N tokens ([CLS] and [SEP] included) cut from real queries (joined and repeated "
                  "where short); p50 / p99 ms.", "",
                  "| row | " + " | ".join(f"{length} tokens" for length in seq_lens) + " |",
                  "|---|" + "---:|" * len(seq_lens)]
        for name, entry in report["rows"].items():
            by_length = entry.get("latency_by_seq_len") or {}
            cells = [f"{by_length[length]['p50_ms']:.2f} / {by_length[length]['p99_ms']:.2f}"
                     if length in by_length else "-" for length in seq_lens]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += _floor_lines(report, seq_lens)
    if report.get("skipped"):
        lines += ["", "Not measured:", ""]
        lines += [f"- {name}: {reason}" for name, reason in report["skipped"].items()]
    lines += ["", "Notes:", "",
              "- Cold start: fresh Python process, imports + model load + first result (best of the repeats); peak "
              "RSS (VmHWM) after 50 more calls and one batch of 32. For the `-http` rows: server process spawn → "
              "first `/model/parse` answer (one start), RSS summed over the server's processes, peak after the "
              "whole run."]
    if settings.get("gc_freeze"):
        lines.append("- The bench process holds every runtime at once; its heap is frozen after loading "
                     "(`gc.freeze()`), so a full garbage collection in a timed call scans only objects made since.")
    collected = {name: entry["gc_full_collections_in_timed_calls"] for name, entry in report["rows"].items()
                 if (entry.get("gc_full_collections_in_timed_calls") or {}).get("count")}
    if collected:
        lines.append("- Full GC collections that landed in timed batch-1 calls: " + "; ".join(
            f"{name}: {value['count']} ({value['total_ms']:.0f} ms)" for name, value in collected.items()) + ".")
    elif report["rows"]:
        lines.append("- No full GC collection landed in a timed batch-1 call of any row.")
    described: set[str] = set()
    for name, entry in report["rows"].items():
        training = entry.get("rasa_training")
        if training and entry["rasa_model"] not in described:
            described.add(entry["rasa_model"])
            name = name.split("@")[0]
            model = Path(entry["rasa_model"]).name
            lines.append(f"- {name}: Rasa {training.get('rasa_version', '3.6')} model `{model}` ("
                         f"{training.get('pipeline_summary', '?')}), DIET trained for "
                         f"{training.get('epochs')} epochs on {training.get('train_examples')} training texts "
                         f"({training.get('data')}); trained in {training.get('train_wall_s', 0) / 60:.1f} min. "
                         "Measured for latency, cold start and memory only: DIET's accuracy at this epoch count is "
                         "not claimed. Rasa has no batch endpoint: throughput at batch 1 only.")
    return "\n".join(lines) + "\n"


def _floor_lines(report: dict[str, Any], seq_lens: list[str]) -> list[str]:
    """The ``× floor`` table: SDK rows' batch-1 p50 ÷ the GEMM floor of their precision (``bench --floor``)."""
    rows = {name: entry["floor"] for name, entry in report["rows"].items() if entry.get("floor")}
    floor = report.get("floor")
    if not rows or not floor:
        return []
    tokens = next(iter(rows.values()))["batch1"]["tokens"]
    lines = ["", "## Against the floor", "",
             "Batch-1 p50 ÷ the arithmetic floor of the row's precision and thread count: the model's matrix "
             "products alone, each timed in ONNX Runtime on this CPU (`distilintent.bench.floor`, "
             f"{floor.get('source', 'measured')}; int8 = `MatMulInteger`, attention products fp32). The batch-1 "
             f"column is at the texts' median length ({tokens} tokens).", "",
             f"| row | floor | p50 × floor | floor ms @{tokens} |" + "".join(f" × @{length} tokens |"
                                                                            for length in seq_lens),
             "|---|---|---:|---:|" + "---:|" * len(seq_lens)]
    for name, entry in rows.items():
        by_length = entry.get("by_seq_len") or {}
        cells = [_fmt((by_length.get(length) or {}).get("p50_x"), '.1f', '×') for length in seq_lens]
        lines.append(f"| {name} | {entry['kind']} | {entry['batch1']['p50_x']:.1f}× | "
                     f"{entry['batch1']['floor_ms']:.3f} |" + "".join(f" {cell} |" for cell in cells))
    return lines


def _line_styles(names: list[str], plt: Any) -> dict[str, dict[str, Any]]:
    """One colour per row and one line style per thread count (the ``@Nt`` suffix)."""
    bases = list(dict.fromkeys(name.split("@")[0] for name in names))
    suffixes = list(dict.fromkeys(name.partition("@")[2] for name in names))
    colours = plt.get_cmap("tab20" if len(bases) > 10 else "tab10").colors
    dashes = ("-", "--", ":", "-.")
    return {name: {"color": colours[bases.index(name.split("@")[0]) % len(colours)],
                   "linestyle": dashes[suffixes.index(name.partition("@")[2]) % len(dashes)]} for name in names}


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    import numpy as np

    from distilintent.evaluation.plots import pyplot

    plt = pyplot()

    rows = report["rows"]
    names = list(rows)
    styles = _line_styles(names, plt)
    paths = []
    figure, axes = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.8))
    width = 0.27
    x = np.arange(len(names))
    for offset, key in zip((-width, 0, width), ("p50_ms", "p90_ms", "p99_ms"), strict=True):
        values = [rows[name]["latency_batch1"][key] for name in names]
        bars = axes.bar(x + offset, values, width, label=key.replace("_ms", ""))
        axes.bar_label(bars, fmt="%.1f", fontsize=6)
    axes.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("ms per text (batch 1)")
    axes.set_yscale("log")
    axes.set_title(f"Latency percentiles, batch 1 — {Path(report['bundle']).name} on {report['machine'].get('cpu')}")
    axes.legend()
    figure.tight_layout()
    paths.append(out / "latency.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)

    sizes = report["settings"]["batch_sizes"]
    throughput = {name: [(size, rows[name]["throughput_texts_per_s"].get(str(size))) for size in sizes]
                  for name in names}
    paths.append(_line_plot(plt, throughput, styles, sizes, "batch size", "texts / s", "Throughput vs batch size",
                            out / "throughput.png"))
    lengths = report["settings"].get("seq_lens") or []
    if lengths:
        by_length = {name: [(length, (rows[name].get("latency_by_seq_len") or {}).get(str(length), {}).get("p50_ms"))
                            for length in lengths] for name in names}
        paths.append(_line_plot(plt, by_length, styles, lengths, "tokens per text ([CLS] and [SEP] included)",
                                "p50 ms (batch 1)", "Batch-1 latency vs sequence length", out / "seq_len.png"))
    return paths


def write_outputs(report: dict[str, Any], out: str | Path, plots: bool = True) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.md"]
    written[0].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    written[1].write_text(to_markdown(report))
    if plots and report["rows"]:
        written += plot(report, out)
    return written


def _line_plot(plt: Any, series: dict[str, list[tuple[int, float | None]]], styles: dict[str, dict[str, Any]],
               ticks: list[int], xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """One log-log line per row (points without a value are left out), legend outside, saved as PNG."""
    figure, axes = plt.subplots(figsize=(9, 5.5))
    for name, points in series.items():
        points = [(x, y) for x, y in points if y]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=name, **styles[name])
    axes.set_xscale("log", base=2)
    axes.set_xticks(ticks, [str(tick) for tick in ticks])
    axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
