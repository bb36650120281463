"""Train several configurations side by side and report test accuracy and out-of-scope metrics.

Used to choose the training defaults and the out-of-scope score (issue #6); runs best on a GPU::

    python benchmarks/sweep.py --grid benchmarks/sweep_grid.json --data clinc150=PATH --data banking77=PATH \\
        --out runs/sweep --parallel 4 [--base DIR] [--int8-best]

Each run is ``distilintent train --json`` in its own process (``--parallel`` at a time); its summary
(validation and test metrics, the chosen out-of-scope rule with every score's AUROC) is appended to
``<out>/sweep.jsonl`` as soon as it ends. With ``--int8-best``, the run with the best validation
score per dataset is exported (ONNX Runtime INT8) and evaluated on the test split with that runtime.
Which run is "best" is decided on validation data only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_one(run: dict[str, Any], data: dict[str, str], out: Path, base: str | None, threads: int) -> dict[str, Any]:
    name = run["name"]
    options = dict(run.get("options", {}))
    if base:
        options.setdefault("base", base)
    options.setdefault("threads", threads)
    config = out / f"{name}.config.json"
    config.write_text(json.dumps(options))
    started = time.perf_counter()
    command = [sys.executable, "-m", "distilintent", "train", "--data", data[run["dataset"]], "--output",
               str(out / name), "--config", str(config), "--json", "--no-progress"]
    with open(out / f"{name}.log", "w") as log:
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    row: dict[str, Any] = {"name": name, "dataset": run["dataset"], "options": options,
                           "wall_s": round(time.perf_counter() - started, 1), "returncode": done.returncode}
    if done.returncode == 0:
        row["summary"] = json.loads(done.stdout)
    else:
        row["error"] = (out / f"{name}.log").read_text()[-3000:]
    return row


def validation_score(row: dict[str, Any]) -> float:
    """In-scope accuracy + out-of-scope recall after fallback on validation (plain accuracy without OOS)."""
    validation = row.get("summary", {}).get("metrics", {}).get("validation", {})
    after = validation.get("with_fallback") or {}
    if "oos_recall" in after:
        return after["in_scope_accuracy"] + after["oos_recall"]
    return validation.get("accuracy", 0.0)


def int8_row(row: dict[str, Any], data: dict[str, str], out: Path) -> dict[str, Any]:
    bundle = out / row["name"]
    started = time.perf_counter()
    export = subprocess.run([sys.executable, "-m", "distilintent", "export", "--model", str(bundle), "--format",
                             "onnx", "--int8", "--min-agreement", "0.9"], cwd=REPO, capture_output=True, text=True)
    result: dict[str, Any] = {"name": row["name"], "dataset": row["dataset"], "export_returncode": export.returncode,
                              "export_s": round(time.perf_counter() - started, 1)}
    if export.returncode != 0:
        result["error"] = export.stderr[-2000:]
        return result
    for precision in ("fp32", "int8"):
        evaluation = subprocess.run([sys.executable, "-m", "distilintent", "evaluate", "--model", str(bundle),
                                     "--data", data[row["dataset"]], "--split", "test", "--backend", "onnxruntime",
                                     "--precision", precision, "--json"], cwd=REPO, capture_output=True, text=True)
        if evaluation.returncode == 0:
            report = json.loads(evaluation.stdout)
            result[precision] = {key: value for key, value in report.items()
                                 if key not in ("per_label", "confused_pairs", "reliability")}
        else:
            result[precision] = {"error": evaluation.stderr[-2000:]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, help="JSON list of {name, dataset, options}")
    parser.add_argument("--data", action="append", required=True, help="DATASET=PATH (repeatable)")
    parser.add_argument("--out", default="runs/sweep", help="directory for the bundles and logs")
    parser.add_argument("--report-dir", help="directory for sweep.jsonl / int8.jsonl (default: --out)")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    parser.add_argument("--base", help="base model for every run (default: each run's options, else minilm)")
    parser.add_argument("--only", help="comma-separated run names to run")
    parser.add_argument("--int8-best", action="store_true")
    args = parser.parse_args(argv)
    data = dict(item.split("=", 1) for item in args.data)
    runs = json.loads(Path(args.grid).read_text())
    if args.only:
        keep = set(args.only.split(","))
        runs = [run for run in runs if run["name"] in keep]
    runs = [run for run in runs if run["dataset"] in data]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_dir = Path(args.report_dir or out)
    report_dir.mkdir(parents=True, exist_ok=True)
    results = report_dir / "sweep.jsonl"
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(run_one, run, data, out, args.base, args.threads) for run in runs]
        for future in futures:
            row = future.result()
            rows.append(row)
            with results.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(f"{row['name']}: rc {row['returncode']}, {row['wall_s']} s, validation score "
                  f"{validation_score(row):.4f}", file=sys.stderr, flush=True)
    if args.int8_best:
        for dataset in sorted({row["dataset"] for row in rows}):
            done = [row for row in rows if row["dataset"] == dataset and row["returncode"] == 0]
            if done:
                best = max(done, key=validation_score)
                result = int8_row(best, data, out)
                with (report_dir / "int8.jsonl").open("a") as handle:
                    handle.write(json.dumps(result) + "\n")
                print(f"int8 {best['name']}: export rc {result['export_returncode']}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
