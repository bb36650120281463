"""``distilintent bench``: latency/throughput/cold start/RSS of a bundle's variants vs the PyTorch baselines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "benchmark a bundle's variants against transformers.pipeline and plain PyTorch"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="BUNDLE", help="bundle directory")
    parser.add_argument("--backends", default=None, metavar="LIST",
                        help="comma-separated rows: pipeline, torch, onnxruntime, openvino and/or variant names "
                             "such as onnx-int8 (default: all)")
    parser.add_argument("--batch-sizes", type=_int_list, default=(1, 8, 32), metavar="LIST",
                        help="throughput batch sizes (default: 1,8,32)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads for every row (default: "
                        "each runtime's own)")
    parser.add_argument("--runs", type=int, default=500, help="timed batch-1 calls per row (default: 500)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaving rounds (default: 10)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed warm-up calls per row (default: 20)")
    parser.add_argument("--batch-texts", type=int, default=128,
                        help="texts per round and batch size in the throughput runs (default: 128)")
    parser.add_argument("--data", type=Path, default=None,
                        help="texts to use: JSONL/CSV with a text field, or one text per line "
                             "(default: the bundle's samples/validation.jsonl)")
    parser.add_argument("--split", default=None, help="only rows of this split of --data")
    parser.add_argument("--cold-start-repeats", type=int, default=1,
                        help="fresh processes per row for cold start/RSS; best one kept (default: 1; 0 skips)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="output directory for results.json, results.md and PNGs (default: bench-results)")


def run(args: argparse.Namespace) -> int:
    from distilintent.bench.report import to_markdown, write_outputs
    from distilintent.bench.runner import Settings, run_bench

    if args.runs < 1 or args.rounds < 1 or args.warmup < 0 or args.batch_texts < 1 or args.cold_start_repeats < 0:
        raise ValueError("--runs, --rounds and --batch-texts must be positive; --warmup, --cold-start-repeats >= 0")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be positive")
    settings = Settings(runs=args.runs, rounds=args.rounds, warmup=args.warmup, batch_sizes=args.batch_sizes,
                        batch_texts=args.batch_texts, threads=args.threads,
                        cold_start=args.cold_start_repeats > 0, cold_start_repeats=max(args.cold_start_repeats, 1))
    backends = [part.strip() for part in args.backends.split(",") if part.strip()] if args.backends else None
    report = run_bench(args.model, settings, backends=backends, data=args.data, split=args.split,
                       progress=not args.no_progress)
    written = write_outputs(report, args.out, plots=not args.no_plots)
    print(to_markdown(report))
    print("wrote " + ", ".join(str(path) for path in written), file=sys.stderr)
    return 0
