"""``distilintent detect``: classify texts given as arguments or read from stdin (one per line)."""

from __future__ import annotations

import argparse
import sys

HELP = "detect the intent of texts with an exported bundle (no torch needed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (default: lines of stdin)")
    parser.add_argument("--model", required=True, metavar="BUNDLE", help="bundle directory")
    parser.add_argument("--backend", choices=("auto", "openvino", "onnxruntime"), default="auto")
    parser.add_argument("--precision", choices=("auto", "int8", "fp32"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: runtime's)")
    parser.add_argument("--fallback-threshold", type=float, default=None,
                        help="confidence under which the result is the fallback (default: the bundle's)")
    parser.add_argument("--top-k", type=int, default=3, help="ranking length (default: 3)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per text (text, intent, confidence, ranking, is_fallback)")


def run(args: argparse.Namespace) -> int:
    from distilintent.core.tokenization import valid_unicode
    from distilintent.sdk import IntentDetector

    texts = args.texts
    if not texts:
        if sys.stdin.isatty():
            print("type one text per line, end with Ctrl-D", file=sys.stderr)
        texts = [line.decode("utf-8", "replace").rstrip("\r\n") for line in sys.stdin.buffer]
    texts = [valid_unicode(text) for text in texts]  # undecodable argv bytes arrive as lone surrogates
    with IntentDetector(args.model, backend=args.backend, precision=args.precision, threads=args.threads,
                        fallback_threshold=args.fallback_threshold, top_k=args.top_k) as detector:
        results = detector.detect_batch(texts)
    if args.json:
        for result in results:
            print(result.to_json())
        return 0
    width = min(max((len(r.text) for r in results), default=4), 50)
    print(f"{'text':<{width}}  {'intent':<24} {'conf.':>6}  ranking")
    for r in results:
        text = r.text if len(r.text) <= width else r.text[: width - 1] + "…"
        ranking = ", ".join(f"{name} {conf:.2f}" for name, conf in r.ranking[1:])
        intent = r.intent + (f" ({r.ranking[0][0]})" if r.is_fallback and r.ranking else "")
        print(f"{text:<{width}}  {intent:<24} {r.confidence:>6.3f}  {ranking}")
    return 0
