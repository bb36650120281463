"""``results.md`` and PNG plots of a ``distilintent bench`` report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:{spec}}{suffix}"


def to_markdown(report: dict[str, Any]) -> str:
    info = report["machine"]
    settings = report["settings"]
    libraries = info.get("libraries", {})
    sizes = [str(size) for size in settings["batch_sizes"]]
    lines = [
        f"# distilintent bench: {Path(report['bundle']).name}",
        "",
        f"{report['date']} · {info.get('cpu', '?')}, {info.get('cpus', '?')} logical CPUs, ISA: "
        f"{' '.join(info.get('isa', [])) or '?'} (AVX-512: {'yes' if info.get('has_avx512') else 'no'}, "
        f"VNNI: {'yes' if info.get('has_vnni') else 'no'}, AMX: {'yes' if info.get('has_amx') else 'no'}) · "
        f"threads: {settings['threads'] or 'runtime default'} · load average before/after: "
        f"{info.get('load_average_before')} / {info.get('load_average_after')}",
        "",
        "Libraries: " + ", ".join(f"{name} {version}" for name, version in libraries.items()) + ".",
        "",
        f"Batch-1 latency over {settings['runs_batch1']} timed calls per row (after {settings['warmup']} warm-up "
        f"calls), interleaved in {settings['rounds']} rounds, on {report['n_texts']} real texts from "
        f"{report['texts']}; throughput over {settings['texts_per_batch_round']} texts per round and batch size. "
        "Latency is one call: text in → intent out (tokenization included). Speed-up × is against the "
        "`transformers.pipeline` baseline (same fine-tuned weights, PyTorch eager FP32).",
        "",
        "| row | p50 ms | p90 ms | p99 ms | p50 × | p99 × | " + " | ".join(f"texts/s @{s}" for s in sizes)
        + f" | × @{sizes[-1]} | cold start s | peak RSS MB |",
        "|---|" + "---:|" * (7 + len(sizes) + 2),
    ]
    for name, entry in report["rows"].items():
        latency = entry["latency_batch1"]
        speedup = entry.get("speedup_vs_pipeline") or {}
        cold = entry.get("cold_start") or {}
        throughput = entry["throughput_texts_per_s"]
        lines.append(
            f"| {name} | {latency['p50_ms']:.2f} | {latency['p90_ms']:.2f} | {latency['p99_ms']:.2f} | "
            f"{_fmt(speedup.get('p50'), '.1f', '×')} | {_fmt(speedup.get('p99'), '.1f', '×')} | "
            + " | ".join(f"{throughput[s]:,.0f}" for s in sizes)
            + f" | {_fmt((speedup.get('throughput') or {}).get(sizes[-1]), '.1f', '×')} | "
            f"{_fmt(cold.get('cold_start_s'), '.2f')} | {_fmt(cold.get('peak_rss_mb'), '.0f')} |"
        )
    if report.get("skipped"):
        lines += ["", "Not measured:", ""]
        lines += [f"- {name}: {reason}" for name, reason in report["skipped"].items()]
    lines += ["", "Cold start: fresh Python process, imports + model load + first result (best of the "
              "repeats); peak RSS (VmHWM) after 50 more calls and one batch of 32."]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = report["rows"]
    names = list(rows)
    paths = []
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(names) + 2), 4.5))
    width = 0.27
    x = np.arange(len(names))
    for offset, key in zip((-width, 0, width), ("p50_ms", "p90_ms", "p99_ms"), strict=True):
        values = [rows[name]["latency_batch1"][key] for name in names]
        bars = axes.bar(x + offset, values, width, label=key.replace("_ms", ""))
        axes.bar_label(bars, fmt="%.1f", fontsize=7)
    axes.set_xticks(x, names, rotation=20, ha="right")
    axes.set_ylabel("ms per text (batch 1)")
    axes.set_yscale("log")
    axes.set_title(f"Latency percentiles, batch 1 — {Path(report['bundle']).name} on {report['machine'].get('cpu')}")
    axes.legend()
    figure.tight_layout()
    paths.append(out / "latency.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(7, 4.5))
    sizes = report["settings"]["batch_sizes"]
    for name in names:
        axes.plot(sizes, [rows[name]["throughput_texts_per_s"][str(size)] for size in sizes], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xticks(sizes, [str(size) for size in sizes])
    axes.set_yscale("log")
    axes.set_xlabel("batch size")
    axes.set_ylabel("texts / s")
    axes.set_title("Throughput vs batch size")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    paths.append(out / "throughput.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)
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
