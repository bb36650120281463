"""Train Rasa 3.6's DIETClassifier on the same data as a distilintent bundle, for ``distilintent bench --rasa-model``.

    .venv/bin/python benchmarks/train_rasa_diet.py --data ../shared/data/clinc150/clinc150.jsonl --epochs 5 \\
        --out runs/rasa-diet-clinc150

Converts the ``train`` split of a JSONL/CSV/YAML file to Rasa NLU YAML (one intent per label, entity-free
texts), writes a ``config.yml`` with Rasa's recommended English NLU pipeline (WhitespaceTokenizer,
RegexFeaturizer, LexicalSyntacticFeaturizer, word and char_wb 1–4 CountVectorsFeaturizers,
DIETClassifier with ``constrain_similarities``; DIET's other options at Rasa's defaults) and runs
``rasa train nlu`` in the Python 3.10 Rasa venv (``tests/rasa/venvs.py`` builds it). Prints the model
path; ``MODEL.json`` beside it records what was trained, which the bench report quotes.

DIET trains at ≈ 36 s per epoch on CLINC150 on a 2-core CPU; Rasa's template uses 100 epochs. A few
epochs suffice for latency, cold start and memory, which do not depend on the epoch count; do not read
the accuracy of such a model as DIET's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distilintent.bench.servers import RASA_ENV, default_rasa_venv  # noqa: E402
from distilintent.core.data import load_examples  # noqa: E402

PIPELINE_SUMMARY = ("WhitespaceTokenizer → RegexFeaturizer → LexicalSyntacticFeaturizer → CountVectorsFeaturizer "
                    "(words) → CountVectorsFeaturizer (char_wb 1–4) → DIETClassifier")
# Rasa reads "[text](entity)" and "[text]{...}" in examples as entity annotations
ENTITY_MARKUP = re.compile(r"\[[^\]]+\](\(|\{)")


def nlu_yaml(examples: dict[str, list[str]]) -> str:
    """Rasa 3.x NLU training data: one ``- intent:`` block per label, texts as a literal block list."""
    blocks = [f"- intent: {json.dumps(intent)}\n  examples: |\n" + "".join(f"    - {text}\n" for text in texts)
              for intent, texts in examples.items()]
    return 'version: "3.1"\nnlu:\n' + "".join(blocks)


def config_yaml(epochs: int) -> str:
    return (
        "recipe: default.v1\n"
        "assistant_id: distilintent-bench-diet\n"
        "language: en\n"
        "pipeline:\n"
        "  - name: WhitespaceTokenizer\n"
        "  - name: RegexFeaturizer\n"
        "  - name: LexicalSyntacticFeaturizer\n"
        "  - name: CountVectorsFeaturizer\n"
        "  - name: CountVectorsFeaturizer\n"
        "    analyzer: char_wb\n"
        "    min_ngram: 1\n"
        "    max_ngram: 4\n"
        "  - name: DIETClassifier\n"
        f"    epochs: {epochs}\n"
        "    constrain_similarities: true\n"
        "policies: []\n"
    )


def training_examples(data: Path, split: str) -> tuple[dict[str, list[str]], int]:
    """Texts per intent from ``split`` of ``data`` (one line each; entity-like markup dropped, counted)."""
    by_intent: dict[str, list[str]] = defaultdict(list)
    dropped = 0
    for example in load_examples(data):
        if example.split not in (split, None):
            continue
        text = " ".join(example.text.split())
        if not text or ENTITY_MARKUP.search(text):
            dropped += 1
            continue
        by_intent[example.label].append(text)
    if not by_intent:
        raise SystemExit(f"no {split!r} examples in {data}")
    return dict(by_intent), dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "clinc150" / "clinc150.jsonl",
                        help="JSONL/CSV/Rasa YAML with text, intent and split (default: CLINC150 in ../shared/data)")
    parser.add_argument("--split", default="train", help="the split to train on (default: train)")
    parser.add_argument("--epochs", type=int, default=5, help="DIET epochs (default: 5; Rasa's template: 100)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "rasa-diet-clinc150",
                        help="Rasa project directory; the model goes to OUT/models/NAME.tar.gz")
    parser.add_argument("--name", default="diet", help="model file name (default: diet)")
    parser.add_argument("--rasa-venv", type=Path, default=None,
                        help="the Python 3.10 Rasa venv (default: $DISTILINTENT_RASA_VENV or .venv-rasa)")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow intra-op threads (default: TF's)")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    venv = args.rasa_venv or default_rasa_venv()
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no Rasa venv at {venv}: build it with `python tests/rasa/venvs.py` or pass --rasa-venv")

    examples, dropped = training_examples(args.data, args.split)
    project = args.out
    (project / "data").mkdir(parents=True, exist_ok=True)
    (project / "data" / "nlu.yml").write_text(nlu_yaml(examples), encoding="utf-8")
    (project / "config.yml").write_text(config_yaml(args.epochs))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"))}
    env.update(RASA_ENV)
    if args.threads:
        env.update({"TF_INTRA_OP_PARALLELISM_THREADS": str(args.threads), "TF_INTER_OP_PARALLELISM_THREADS": "1"})
    n_texts = sum(len(texts) for texts in examples.values())
    print(f"training DIET ({args.epochs} epochs) on {n_texts} texts, {len(examples)} intents ...", file=sys.stderr)
    started = time.perf_counter()
    done = subprocess.run([str(python), "-m", "rasa", "train", "nlu", "--config", "config.yml", "--nlu",
                           "data/nlu.yml", "--out", "models", "--fixed-model-name", args.name],
                          cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    model = project / "models" / f"{args.name}.tar.gz"
    if done.returncode != 0 or not model.is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise SystemExit(f"rasa train nlu failed (exit {done.returncode}):\n{tail}")
    version = subprocess.run([str(python), "-c", "import rasa; print(rasa.__version__)"], env=env,
                             capture_output=True, text=True).stdout.strip()
    record = {"rasa_version": version, "data": str(args.data), "split": args.split, "train_examples": n_texts,
              "intents": len(examples), "dropped_examples": dropped, "epochs": args.epochs,
              "pipeline_summary": PIPELINE_SUMMARY, "train_wall_s": round(seconds, 1), "threads": args.threads,
              "created_at": dt.datetime.now().isoformat(timespec="seconds"),
              "note": "latency/cold start/memory baseline; accuracy at this epoch count is not DIET's"}
    model.with_name(f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"trained in {seconds / 60:.1f} min", file=sys.stderr)
    print(model)


if __name__ == "__main__":
    main()
