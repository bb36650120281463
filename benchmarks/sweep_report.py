"""Summarise ``benchmarks/sweep.py`` results (``*.jsonl``) as a Markdown table.

    python benchmarks/sweep_report.py benchmarks/results/sweep/*.jsonl > benchmarks/results/sweep.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

METHODS = ("msp", "energy", "mahalanobis", "cosine")


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def row_cells(row: dict[str, Any]) -> list[str]:
    summary = row["summary"]
    test = summary["metrics"].get("test", {})
    validation = summary["metrics"].get("validation", {})
    after = test.get("with_fallback") or {}
    aurocs = test.get("ood_scores") or {}
    hidden = ("base", "threads", "dtype", "precision")  # "precision": the training dtype of older sweeps
    options = {key: value for key, value in row["options"].items() if key not in hidden}
    return [
        row["name"], json.dumps(options) if options else "defaults", str(summary["epochs_run"]),
        pct(validation.get("accuracy")), pct(test.get("in_scope_accuracy", test.get("accuracy"))),
        pct(test.get("macro_f1")), pct(test.get("oos_recall")), after.get("method") or "-",
        pct(after.get("in_scope_accuracy")), pct(after.get("oos_recall")),
        *[f"{aurocs[m]['auroc']:.4f}" if m in aurocs else "-" for m in METHODS],
        "-" if test.get("ece") is None else f"{test['ece']:.4f}", f"{row['wall_s']:.0f}",
    ]


def seed_means(rows: list[dict[str, Any]]) -> list[str]:
    groups: dict[str, list[float]] = {}
    for row in rows:
        test = row["summary"]["metrics"].get("test", {})
        name = row["name"].rsplit("-s", 1)[0] if row["name"].rsplit("-s", 1)[-1].isdigit() else row["name"]
        groups.setdefault(name, []).append(test.get("in_scope_accuracy", test.get("accuracy")))
    lines = ["| configuration | runs (seeds) | mean test accuracy (in-scope) | std |", "|---|---:|---:|---:|"]
    for name, values in groups.items():
        if len(values) > 1:
            lines.append(f"| {name} | {len(values)} | {100 * statistics.mean(values):.2f} | "
                         f"{100 * statistics.pstdev(values):.2f} |")
    return lines


def main(paths: list[str]) -> int:
    rows = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines() if line.strip()]
    rows = [row for row in rows if row.get("returncode") == 0]
    header = ["run", "options", "epochs", "val. acc.", "test in-scope acc.", "macro-F1", "OOS recall (argmax)",
              "fallback score", "in-scope acc. after fallback", "OOS recall after fallback",
              *[f"AUROC {m}" for m in METHODS], "ECE", "wall s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row_cells(row)) + " |")
    print()
    print("\n".join(seed_means(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
