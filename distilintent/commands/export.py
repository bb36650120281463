"""``distilintent export``: add ONNX / OpenVINO (FP32, INT8) runtime models to a bundle."""

from __future__ import annotations

import argparse

HELP = "export a trained bundle to ONNX and OpenVINO (FP32, and INT8 with --int8), checked against torch"
FORMAT_CHOICES = {"onnx": ("onnx",), "openvino": ("openvino",), "all": ("onnx", "openvino")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="BUNDLE", help="bundle directory written by train")
    parser.add_argument("--format", choices=sorted(FORMAT_CHOICES), default="all",
                        help="which runtime models to add (default: all)")
    parser.add_argument("--int8", action="store_true",
                        help="also write INT8 models (OpenVINO NNCF, ONNX Runtime dynamic quantization)")
    parser.add_argument("--calibration", metavar="FILE",
                        help="texts to calibrate INT8 on (.jsonl/.csv/.yml data, or one text per line); "
                             "default: the training sample kept next to the bundle (BUNDLE.samples/)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17, default 18)")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="refuse an INT8 model whose top intent agrees with FP32 on fewer held-out texts "
                             "than this share, in batches or one text at a time (default 0.99)")


def run(args: argparse.Namespace) -> int:
    from distilintent.training.export import export_bundle

    if args.calibration and not args.int8:
        raise ValueError("--calibration is only used with --int8")
    written = export_bundle(args.model, formats=FORMAT_CHOICES[args.format], int8=args.int8,
                            calibration=args.calibration, opset=args.opset, min_agreement=args.min_agreement)
    print(f"{'variant':<15} {'size':>9} {'max |Δlogit|':>13} {'agreement':>10} {'val. acc.':>10}")
    for name, entry in written.items():
        parity = entry["parity"]
        accuracy = entry.get("validation_accuracy")
        print(f"{name:<15} {entry['size_bytes'] / 1e6:>7.1f}MB {parity['max_abs_logit_diff']:>13.2e} "
              f"{parity['top1_agreement']:>10.2%} {'-' if accuracy is None else f'{accuracy:.2%}':>10}")
    print(f"exported to {args.model}")
    return 0
