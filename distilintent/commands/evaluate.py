"""distilintent evaluate: metrics of a bundle on labelled data."""

from __future__ import annotations

import argparse
import json

HELP = "evaluate a bundle on labelled data (accuracy, macro-F1, per-intent scores, out-of-scope metrics)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="bundle directory")
    parser.add_argument("--data", required=True,
                        help="labelled data (.yml/.csv/.jsonl); 'demo-test' for the demo's held-out sentences")
    parser.add_argument("--split", default="test",
                        help="split to evaluate (default: test; 'all' for every example)")
    parser.add_argument("--out", help="directory for report.json and confusion_matrix.png")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                        help="auto: an exported runtime if the bundle has one, else the torch weights")
    parser.add_argument("--precision", default="auto", choices=["auto", "int8", "fp32"],
                        help="which exported variant to run (auto: the SDK's choice)")
    parser.add_argument("--oos-label", help="out-of-scope label in the data (default: the bundle's, or oos)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from distilintent.demo import resolve_data_path
    from distilintent.evaluation import evaluate_bundle

    split = None if args.split == "all" else args.split
    report = evaluate_bundle(args.model, resolve_data_path(args.data), split=split, out_dir=args.out,
                             backend=args.backend, oos_label=args.oos_label,
                             precision=args.precision)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"{report['model']} ({report['variant']}) on {report['n']} examples of split {report['split']}")
    for key in ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall", "oos_precision", "ece", "ece_in_scope"):
        if report.get(key) is not None:
            print(f"  {key:<18} {report[key]:.4f}")
    fallback = report.get("with_fallback")
    if fallback:
        parts = ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                          for key, value in fallback.items())
        print(f"  with fallback: {parts}")
    for method, scores in (report.get("ood_scores") or {}).items():
        print(f"  out-of-scope score {method:<12} AUROC {scores['auroc']:.4f}, FPR at 95% TPR "
              f"{scores['fpr_at_95_tpr']:.4f}")
    if report["confused_pairs"]:
        print("  most confused (true → predicted):")
        for pair in report["confused_pairs"][:5]:
            print(f"    {pair['true']} → {pair['predicted']}: {pair['count']}")
    if args.out:
        print(f"  wrote {args.out}/report.json, confusion_matrix.png and reliability.png")
    return 0
