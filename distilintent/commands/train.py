"""distilintent train: fine-tune a model on labelled texts and write a bundle."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "fine-tune a DistilBERT intent model on Rasa YAML, CSV or JSONL data and write a bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="training data: .yml/.yaml (Rasa NLU), .csv or .jsonl; 'demo' for the bundled demo")
    parser.add_argument("--output", "-o", default="model", help="bundle directory to write (default: ./model)")
    parser.add_argument("--config", help="JSON/YAML file of training options (flags override it)")
    parser.add_argument("--base", help="minilm (default), a Hugging Face BERT (mapped exactly onto DistilBERT) or "
                                       "DistilBERT hub name or directory, or a bundle to continue from")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--layer-lr-decay", type=float, help="layer-wise learning-rate decay (1 = off)")
    parser.add_argument("--rdrop-alpha", type=float, help="R-Drop consistency weight (0 = off)")
    parser.add_argument("--ood-method", choices=["auto", "msp", "energy", "mahalanobis", "cosine"],
                        help="out-of-scope score of the fallback rule (default auto: chosen on validation data)")
    parser.add_argument("--oos-label", help="out-of-scope label in the data (default: oos)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "xpu"])
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"],
                        help="compute dtype of training (default auto: bf16 where the hardware has it, else fp32)")
    parser.add_argument("--precision", help=argparse.SUPPRESS)  # renamed --dtype: refused with the new name
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--ipex", action="store_true", default=None, help="use ipex.optimize (needs [ipex])")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint of --output")
    parser.add_argument("--export", action="store_true",
                        help="export ONNX and OpenVINO (FP32 + INT8) into the bundle after training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from distilintent.demo import resolve_data_path
    from distilintent.training.config import TrainConfig
    from distilintent.training.trainer import train

    config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    overrides = {
        "base": args.base, "epochs": args.epochs, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "max_length": args.max_length, "device": args.device,
        "dtype": args.dtype, "precision": args.precision, "seed": args.seed, "threads": args.threads, "ipex": args.ipex,
        "label_smoothing": args.label_smoothing, "oos_label": args.oos_label,
        "layer_lr_decay": args.layer_lr_decay, "rdrop_alpha": args.rdrop_alpha, "ood_method": args.ood_method,
    }
    config = config.updated(overrides, source="command line")
    data = resolve_data_path(args.data)
    result = train(data, config, args.output, resume=args.resume, export=args.export,
                   progress=not args.no_progress)
    from distilintent.core.bundle import Bundle

    manifest = Bundle.open(result.bundle_path).manifest
    summary = {"model": str(result.bundle_path), "epochs_run": result.epochs_run,
               "wall_time_s": round(result.wall_time_s, 1), "metrics": manifest.get("metrics", {}),
               "calibration": manifest.get("calibration"), "ood": manifest.get("ood"),
               "variants": sorted(manifest.get("variants") or {})}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        validation = summary["metrics"].get("validation", {})
        test = summary["metrics"].get("test", {})
        print(f"wrote {result.bundle_path} in {summary['wall_time_s']} s ({result.epochs_run} epochs)", file=sys.stderr)
        for name, report in (("validation", validation), ("test", test)):
            if report:
                extra = "".join(f", {key} {report[key]:.4f}" for key in ("in_scope_accuracy", "oos_recall")
                                if key in report)
                print(f"{name}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}{extra}",
                      file=sys.stderr)
    return 0
