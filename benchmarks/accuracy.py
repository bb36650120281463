"""Accuracy of distilintent on CLINC150 and BANKING77 (FP32 and INT8) beside a TF-IDF + logistic
regression baseline and the published reference figures.

    .venv/bin/python benchmarks/accuracy.py                 # evaluate runs/clinc150 and runs/banking77
    .venv/bin/python benchmarks/accuracy.py --train         # train both with default settings first
    .venv/bin/python benchmarks/accuracy.py --export        # export bundles that have no INT8 variant

Data: ``--data-dir`` (default ``../shared/data``) holds ``clinc150/clinc150.jsonl`` and
``banking77/banking77.jsonl`` (JSONL with text, intent, split); where they are absent, ``--download``
fetches the public raw files (commit-pinned, sha256-verified) and converts them
(:mod:`distilintent.bench.datasets`). Writes ``accuracy.json`` and
``accuracy.md`` into ``--out`` (default ``benchmarks/results``).

Columns: in-scope accuracy (all of BANKING77's test set is in scope), macro-F1 over the labels
(``oos`` included for CLINC150), out-of-scope recall/precision of the raw argmax and after the
bundle's calibrated fallback threshold (a confidence under it counts as out of scope), training wall
time, and size on disk of the evaluated model file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distilintent.bench.datasets import dataset_path  # noqa: E402
from distilintent.core.bundle import WEIGHTS_FILE, Bundle  # noqa: E402
from distilintent.core.data import load_examples  # noqa: E402
from distilintent.core.metrics import classification_report  # noqa: E402

DATASETS = ("clinc150", "banking77")
REFERENCES = {
    "clinc150": [
        {"system": "BERT-base (Larson et al. 2019, 'full' setting)", "in_scope_accuracy": "96.2–96.9",
         "oos_recall": "≈40–52", "source": "Larson et al., 'An Evaluation Dataset for Intent Classification and "
         "Out-of-Scope Prediction', EMNLP-IJCNLP 2019 (arXiv:1909.02027), Table 2"},
    ],
    "banking77": [
        {"system": "BERT-large (fine-tuned)", "accuracy": "93.66",
         "source": "Casanueva et al., 'Efficient Intent Detection with Dual Sentence Encoders', "
                   "NLP4ConvAI 2020 (arXiv:2003.04807), Table 2, full data"},
        {"system": "DistilBERT-base (fine-tuned, self-reported)", "accuracy": "92.5",
         "source": "Hugging Face model card of optimum/distilbert-base-uncased-finetuned-banking77 (README "
                   "revision 9b9ebe1, https://huggingface.co/optimum/distilbert-base-uncased-finetuned-banking77): "
                   "accuracy 0.925 / F1 0.925 on the card's 'evaluation set' (5 epochs, lr 9.7e-5, batch 64); "
                   "self-reported by the Trainer, split not named (the hub dataset has only train/test), "
                   "not peer-reviewed"},
    ],
}


def train_json(bundle_path: Path) -> dict[str, Any]:
    path = bundle_path.with_name(bundle_path.name + ".train.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def train(dataset: str, data: Path, bundle_path: Path) -> None:
    started = time.perf_counter()
    with open(bundle_path.with_name(bundle_path.name + ".train.json"), "w") as report:
        subprocess.run([sys.executable, "-m", "distilintent", "train", "--data", str(data), "--output",
                        str(bundle_path), "--export", "--json"], check=True, cwd=REPO, stdout=report)
    print(f"trained {dataset} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def model_row(bundle: Bundle, data: Path, precision: str, train_info: dict[str, Any]) -> dict[str, Any]:
    from distilintent.evaluation import evaluate_bundle

    has_variant = any(variant.precision == precision for variant in bundle.variants.values())
    if precision == "int8" and not has_variant:
        return {"skipped": "no INT8 variant in the bundle: `distilintent export --int8` adds one, and refuses an "
                           "INT8 model whose top intent agrees with FP32 on under 99 % of held-out texts"}
    backend = "onnxruntime" if any(v.backend == "onnxruntime" and v.precision == precision
                                   for v in bundle.variants.values()) else ("auto" if has_variant else "torch")
    started = time.perf_counter()
    report = evaluate_bundle(bundle.path, data, split="test", backend=backend, precision=precision)
    seconds = time.perf_counter() - started
    variant = report["variant"]
    if variant in bundle.variants:
        file = bundle.file_path(bundle.variants[variant].file)
        weights = bundle.variants[variant].weights
        size = file.stat().st_size + (bundle.file_path(weights).stat().st_size if weights else 0)
    else:
        size = bundle.file_path(WEIGHTS_FILE).stat().st_size
    fallback = report.get("with_fallback") or {}
    return {
        **_scores(f"distilintent {variant}", variant, report),
        "fallback_threshold": fallback.get("threshold"),
        "fallback_in_scope_accuracy": fallback.get("in_scope_accuracy"),
        "fallback_oos_recall": fallback.get("oos_recall"),
        "fallback_oos_precision": fallback.get("oos_precision"),
        "fallback_rate": fallback.get("fallback_rate"),
        "fallback_method": fallback.get("method"),
        "ood_scores": report.get("ood_scores"),
        "ece": report.get("ece"),
        "ece_in_scope": report.get("ece_in_scope"),
        "train_wall_time_s": train_info.get("wall_time_s"),
        "size_mb": size / 1e6,
        "eval_wall_time_s": seconds,
    }


def tfidf_row(data: Path, oos_label: str | None) -> dict[str, Any]:
    """Word 1–2-gram + char 2–5-gram TF-IDF, multinomial logistic regression, fit on the train split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    examples = load_examples(data)
    train_set = [example for example in examples if example.split == "train"]
    test_set = [example for example in examples if example.split == "test"]
    started = time.perf_counter()
    model = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)),
        LogisticRegression(C=20.0, max_iter=300),
    )
    model.fit([example.text for example in train_set], [example.label for example in train_set])
    fit_seconds = time.perf_counter() - started
    predicted = list(model.predict([example.text for example in test_set]))
    truth = [example.label for example in test_set]
    report = classification_report(truth, predicted, oos_label)
    classifier = model[-1]
    return {
        **_scores("TF-IDF word+char n-grams + logistic regression (this benchmark)", "tfidf-logreg", report),
        "train_wall_time_s": fit_seconds,
        "size_mb": (classifier.coef_.nbytes + classifier.intercept_.nbytes) / 1e6,  # weights only
    }


def _scores(system: str, variant: str, report: dict[str, Any]) -> dict[str, Any]:
    return {
        "system": system,
        "variant": variant,
        "n": report["n"],
        "accuracy": report["accuracy"],
        "in_scope_accuracy": report.get("in_scope_accuracy", report["accuracy"]),
        "macro_f1": report["macro_f1"],
        "oos_recall": report.get("oos_recall"),
        "oos_precision": report.get("oos_precision"),
    }


def pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Accuracy: CLINC150 and BANKING77 (test splits)",
        "",
        f"{report['date']}. Percentages. In-scope accuracy = accuracy on the in-scope test texts (all of "
        "BANKING77's); macro-F1 over all labels (CLINC150's `oos` included); OOS = out-of-scope recall/precision "
        "of the raw argmax, then after the bundle's out-of-scope rule (its score over the calibrated threshold, or "
        "the `oos` class predicted → out of scope). Training wall time on this machine's CPU; size = the evaluated "
        "model file(s) on disk (TF-IDF row: its float64 coefficients in memory, vocabulary excluded).",
        "",
    ]
    for dataset, entry in report["datasets"].items():
        lines += [f"## {dataset} ({entry.get('n_test', '?')} test texts; bundle {entry.get('bundle', '-')})", "",
                  "| system | in-scope acc. | macro-F1 | OOS recall | OOS precision | OOS recall @thr | "
                  "OOS precision @thr | in-scope acc. @thr | train time | size MB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in entry["rows"]:
            if "skipped" in row:
                lines.append(f"| {row['system']} | {row['skipped']} |||||||||")
                continue
            train_time = row.get("train_wall_time_s")
            train_text = "-" if train_time is None else (f"{train_time / 60:.1f} min" if train_time >= 60
                                                         else f"{train_time:.0f} s")
            lines.append(
                f"| {row['system']} | {pct(row['in_scope_accuracy'])} | {pct(row['macro_f1'])} | "
                f"{pct(row.get('oos_recall'))} | {pct(row.get('oos_precision'))} | "
                f"{pct(row.get('fallback_oos_recall'))} | {pct(row.get('fallback_oos_precision'))} | "
                f"{pct(row.get('fallback_in_scope_accuracy'))} | {train_text} | {row['size_mb']:.1f} |"
            )
        for ref in REFERENCES.get(dataset, []):
            accuracy = ref.get("in_scope_accuracy") or ref.get("accuracy")
            lines.append(f"| {ref['system']} (published) | {accuracy} | - | {ref.get('oos_recall', '-')} "
                         "| - | - | - | - | - | - |")
        lines += ["", "Published figures: " + "; ".join(f"{ref['system']}: {ref['source']}"
                                                      for ref in REFERENCES.get(dataset, [])).rstrip(".") + ".", ""]
        ood_rows = [row for row in entry["rows"] if row.get("ood_scores") or row.get("ece") is not None]
        if ood_rows:
            lines += ["", "Out-of-scope scores (AUROC / FPR at 95 % TPR on the test split; the fallback rule uses "
                          "the score chosen on validation) and calibration:", "",
                      "| system | fallback score | msp | energy | mahalanobis | cosine | ECE (15 bins) | "
                      "ECE in-scope texts |",
                      "|---|---|---:|---:|---:|---:|---:|---:|"]
            for row in ood_rows:
                scores = row.get("ood_scores") or {}
                cells = [f"{scores[m]['auroc']:.4f} / {100 * scores[m]['fpr_at_95_tpr']:.1f} %" if m in scores
                         else "-" for m in ("msp", "energy", "mahalanobis", "cosine")]
                ece, ece_in = (("-" if row.get(key) is None else f"{row[key]:.4f}") for key in ("ece", "ece_in_scope"))
                lines.append(f"| {row['system']} | {row.get('fallback_method') or '-'} | {' | '.join(cells)} "
                             f"| {ece} | {ece_in} |")
            lines.append("")
        if entry.get("note"):
            lines += [entry["note"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                        help="holds <dataset>/<dataset>.jsonl (default: ../shared/data)")
    parser.add_argument("--download", action="store_true",
                        help="download the public raw files (sha256-verified) where the JSONL is absent")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs", help="where the bundles are (or go)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--train", action="store_true", help="train (default settings) and export first")
    parser.add_argument("--export", action="store_true", help="export bundles that lack an INT8 variant")
    parser.add_argument("--no-baseline", action="store_true", help="skip the TF-IDF + logistic regression row")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--render", action="store_true", help="only rewrite accuracy.md from accuracy.json")
    args = parser.parse_args()
    if args.render:
        markdown = to_markdown(json.loads((args.out / "accuracy.json").read_text()))
        (args.out / "accuracy.md").write_text(markdown)
        print(markdown)
        return

    report: dict[str, Any] = {"date": dt.datetime.now().isoformat(timespec="seconds"), "datasets": {},
                              "references": REFERENCES}
    for dataset in [name.strip() for name in args.datasets.split(",") if name.strip()]:
        data = dataset_path(dataset, args.data_dir, download=args.download)
        bundle_path = args.runs_dir / dataset
        if args.train:
            train(dataset, data, bundle_path)
        bundle = Bundle.open(bundle_path)
        if args.export and not any(v.precision == "int8" for v in bundle.variants.values()):
            subprocess.run([sys.executable, "-m", "distilintent", "export", "--model", str(bundle_path), "--int8"],
                           check=True, cwd=REPO)
            bundle = Bundle.open(bundle_path)
        info = train_json(bundle_path)
        rows = [dict(model_row(bundle, data, precision, info), system=f"distilintent {precision.upper()}")
                for precision in ("fp32", "int8")]
        for row, precision in zip(rows, ("fp32", "int8"), strict=True):
            if "variant" in row:
                row["system"] = f"distilintent {precision.upper()} ({row['variant']})"
        if not args.no_baseline:
            rows.append(tfidf_row(data, bundle.oos_label))
        n_test = next((row["n"] for row in rows if "n" in row), None)
        report["datasets"][dataset] = {"bundle": str(bundle_path.relative_to(REPO) if bundle_path.is_relative_to(REPO)
                                                     else bundle_path),
                                       "data": str(data), "n_test": n_test, "rows": rows,
                                       "training": bundle.manifest.get("training"),
                                       "base_model": bundle.manifest.get("base_model")}
        print(f"{dataset}: done", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    markdown = to_markdown(report)
    (args.out / "accuracy.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
