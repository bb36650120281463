"""distilintent calibrate: refit a bundle's confidence temperature and fallback rule on labelled data."""

from __future__ import annotations

import argparse
import json

HELP = "refit the confidence temperature and the fallback rule of a bundle on labelled (validation) data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="BUNDLE", help="bundle directory (changed in place)")
    parser.add_argument("--data", required=True, help="labelled data (.yml/.csv/.jsonl)")
    parser.add_argument("--split", default="validation", help="split to fit on (default: validation; 'all')")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "openvino", "torch"],
                        help="which model computes the logits (default: the exported variant the SDK serves, no "
                             "torch needed; torch: the bundle's weights, needs distilintent[train])")
    parser.add_argument("--in-scope-coverage", type=float,
                        help="without out-of-scope examples: share of predictions kept above the threshold")


def run(args: argparse.Namespace) -> int:
    from distilintent.demo import resolve_data_path
    from distilintent.evaluation import recalibrate_bundle

    split = None if args.split == "all" else args.split
    calibration = recalibrate_bundle(args.model, resolve_data_path(args.data), split=split, backend=args.backend,
                                     in_scope_coverage=args.in_scope_coverage)
    print(json.dumps(calibration, indent=2))
    return 0
