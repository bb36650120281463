"""``distilintent bench``: latency/throughput/cold start/RSS of a bundle's variants vs the PyTorch baselines,
``distilintent serve`` and Rasa's own DIET server."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HELP = "benchmark a bundle's variants against transformers.pipeline, plain PyTorch and Rasa DIET"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"repeated values in {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="BUNDLE", help="bundle directory")
    parser.add_argument("--backends", default=None, metavar="LIST",
                        help="comma-separated rows: pipeline, torch, onnxruntime, openvino, serve, rasa and/or row "
                             "names such as onnx-int8 or openvino-int8-dynamic (default: all that can run here)")
    parser.add_argument("--batch-sizes", type=_int_list, default=(1, 8, 32), metavar="LIST",
                        help="throughput batch sizes (default: 1,8,32)")
    parser.add_argument("--threads", type=_int_list, default=None, metavar="LIST",
                        help="inference threads, e.g. 1 or 1,2: every row is measured at each count, interleaved "
                             "(default: each runtime's own)")
    parser.add_argument("--seq-lens", type=_int_list, default=(), metavar="LIST",
                        help="also measure batch-1 latency on texts of exactly these token lengths, e.g. 8,16,32,64 "
                             "([CLS]/[SEP] included; cut from real queries)")
    parser.add_argument("--seq-len-runs", type=int, default=100,
                        help="timed batch-1 calls per row and sequence length (default: 100)")
    parser.add_argument("--runs", type=int, default=500, help="timed batch-1 calls per row (default: 500)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaving rounds (default: 10)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed warm-up calls per row (default: 20)")
    parser.add_argument("--batch-texts", type=int, default=128,
                        help="texts per round and batch size in the throughput runs (default: 128)")
    parser.add_argument("--bf16", choices=("auto", "force", "off"), default="auto",
                        help="pipeline/torch bf16 rows: auto = where the CPU has AMX-BF16/AVX512-BF16 (else "
                             "skipped, with the reason in results.json); force = always (default: auto)")
    parser.add_argument("--rasa-model", type=Path, default=None, metavar="MODEL.tar.gz",
                        help="a Rasa 3.6 model (benchmarks/train_rasa_diet.py): adds the rasa-diet-http row, "
                             "`rasa run --enable-api` measured over HTTP")
    parser.add_argument("--rasa-venv", type=Path, default=None,
                        help="the Python 3.10 Rasa venv (default: $DISTILINTENT_RASA_VENV or .venv-rasa)")
    parser.add_argument("--data", type=Path, default=None,
                        help="texts to use: JSONL/CSV with a text field, or one text per line (default: the "
                             "validation sample training kept next to the bundle, <bundle>.samples/validation.jsonl)")
    parser.add_argument("--split", default=None, help="only rows of this split of --data")
    parser.add_argument("--cold-start-repeats", type=int, default=1,
                        help="fresh processes per row for cold start/RSS; best one kept (default: 1; 0 skips)")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="do not gc.freeze() the bench process's heap after loading the rows")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--floor", nargs="?", const="measure", default=None, metavar="FLOOR.json",
                        help="also show each SDK row's batch-1 latency as a multiple of the model's GEMM floor "
                             "(its matrix products timed alone in ONNX Runtime on this CPU): measured here before "
                             "the rows, or read from a floor.json written by --floor-only (needs the [train] "
                             "extra's onnx to build the GEMM graphs)")
    parser.add_argument("--floor-only", action="store_true",
                        help="measure only the GEMM floor of the bundle's architecture (at --seq-lens, default "
                             "8,16,32,64; --threads, default 1 and every usable core): writes floor.json and "
                             "floor.md to --out")
    parser.add_argument("--floor-runs", type=int, default=200,
                        help="timed runs per GEMM shape in the floor measurement (default: 200)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="output directory for results.json, results.md and PNGs (default: bench-results)")


def _median_tokens(bundle_path: Path, data: Path | None, split: str | None) -> int:
    """The median token count ([CLS]/[SEP] included, cut at max_length) of the texts the bench times."""
    from tokenizers import Tokenizer

    from distilintent.bench.runner import read_texts
    from distilintent.core.bundle import Bundle

    bundle = Bundle.open(bundle_path)
    texts, _, _ = read_texts(data, split, bundle)
    tokenizer = Tokenizer.from_str(bundle.read_bytes("tokenizer.json").decode("utf-8"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    lengths = [min(len(encoding.ids), bundle.max_length) for encoding in tokenizer.encode_batch(texts)]
    return int(sorted(lengths)[len(lengths) // 2])


def _floor(args: argparse.Namespace, tokens: list[int], threads: list[int | None], kinds: tuple[str, ...],
           progress: bool) -> dict:
    """The floor report: measured for the bundle's architecture, or read from ``--floor FILE``."""
    import json
    from dataclasses import asdict

    from distilintent.bench import floor
    from distilintent.bench.machine import load_average, machine
    from distilintent.core.bundle import Bundle

    arch = floor.Architecture.from_manifest(Bundle.open(args.model).manifest)
    if args.floor not in (None, "measure") and not args.floor_only:
        report = json.loads(Path(args.floor).read_text())
        missing = sorted({str(count) for count in threads} - {str(count) for count in report["threads"]})
        if missing:
            raise ValueError(f"--floor {args.floor} was measured at threads {report['threads']}, not {missing}: "
                             "measure it again with --floor-only --threads ...")
        for kind in kinds:
            for count in threads:  # every GEMM of this architecture was measured (a missing one raises here)
                floor.floor_for(report, arch, tokens[0], kind, count)
        report["source"] = f"from {args.floor}"
        report["measured_architecture"] = report["architecture"]  # the GEMMs of the same dims are the same
        report["architecture"] = asdict(arch)
        return report
    before = load_average()
    done: list[int] = []

    def tick(entry: dict) -> None:
        done.append(1)
        if progress:
            print(f"\rfloor: {len(done)} GEMMs timed ({entry['kind']} {entry['gemm']} M={entry['m']} "
                  f"threads={entry['threads']})", end="", file=sys.stderr)

    report = floor.measure(arch, tokens, threads, kinds, runs=args.floor_runs, progress=tick)
    if progress:
        print(file=sys.stderr)
    report.update(bundle=str(Path(args.model)), source="measured in this run",
                  machine={**machine(), "load_average_before": before, "load_average_after": load_average()})
    return report


def _floor_only(args: argparse.Namespace) -> int:
    import json
    import os

    from distilintent.bench.floor import DEFAULT_TOKENS, to_markdown

    threads = list(args.threads or dict.fromkeys((1, len(os.sched_getaffinity(0)))))
    report = _floor(args, list(args.seq_lens or DEFAULT_TOKENS), threads, ("fp32", "int8", "int8-dq"),
                    not args.no_progress)
    if sys.argv[1:2] == ["bench"]:
        report["command"] = "distilintent " + shlex.join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "floor.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "floor.md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"wrote {out / 'floor.json'}, {out / 'floor.md'}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from distilintent.bench.report import to_markdown, write_outputs
    from distilintent.bench.results import add_floor_multiples
    from distilintent.bench.rows import Settings
    from distilintent.bench.runner import run_bench

    if args.floor_runs < 1:
        raise ValueError("--floor-runs must be positive")
    if args.floor_only:
        return _floor_only(args)

    if (args.runs < 1 or args.rounds < 1 or args.warmup < 0 or args.batch_texts < 1 or args.cold_start_repeats < 0
            or args.seq_len_runs < 1):
        raise ValueError("--runs, --rounds, --batch-texts and --seq-len-runs must be positive; --warmup, "
                         "--cold-start-repeats >= 0")
    settings = Settings(runs=args.runs, rounds=args.rounds, warmup=args.warmup, batch_sizes=args.batch_sizes,
                        batch_texts=args.batch_texts, threads=args.threads or (None,), seq_lens=args.seq_lens,
                        seq_len_runs=args.seq_len_runs, cold_start=args.cold_start_repeats > 0,
                        cold_start_repeats=max(args.cold_start_repeats, 1), bf16=args.bf16,
                        rasa_model=args.rasa_model, rasa_venv=args.rasa_venv, gc_freeze=not args.no_gc_freeze)
    backends = [part.strip() for part in args.backends.split(",") if part.strip()] if args.backends else None
    floor, batch1_tokens = None, 0
    if args.floor:
        batch1_tokens = _median_tokens(Path(args.model), args.data, args.split)
        floor = _floor(args, sorted({batch1_tokens, *args.seq_lens}), list(settings.threads), ("fp32", "int8"),
                       not args.no_progress)
    report = run_bench(args.model, settings, backends=backends, data=args.data, split=args.split,
                       progress=not args.no_progress)
    if floor is not None:
        add_floor_multiples(report["rows"], floor, batch1_tokens)
        report["floor"] = floor
    if sys.argv[1:2] == ["bench"]:  # the command line that reproduces the run (not when called in-process)
        report["command"] = "distilintent " + shlex.join(sys.argv[1:])
    written = write_outputs(report, args.out, plots=not args.no_plots)
    print(to_markdown(report))
    print("wrote " + ", ".join(str(path) for path in written), file=sys.stderr)
    return 0
