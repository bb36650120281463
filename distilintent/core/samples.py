"""Labelled texts kept *next to* a bundle, never inside it.

Training keeps its held-out validation sample and a sample of training texts (for INT8 calibration
and export's parity check) in ``<bundle>.samples/``, a sibling directory: what a user deploys (the
bundle, a Rasa model archive) holds no customer utterance. Export, calibrate and the benchmarks read
them from there when they are present; a copied or deployed bundle simply has none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from distilintent.core.data import Example

SAMPLE_NAMES = ("validation", "calibration")


def samples_dir(bundle_path: str | os.PathLike[str]) -> Path:
    """``<bundle>.samples``: where training keeps the texts the bundle itself must not carry."""
    path = Path(bundle_path).expanduser()
    return path.with_name(path.name + ".samples")


def write_samples(bundle_path: str | os.PathLike[str], samples: Mapping[str, Sequence[Example]]) -> Path:
    """Write each sample as ``<name>.jsonl`` (text, label) atomically; empty samples are removed."""
    folder = samples_dir(bundle_path)
    folder.mkdir(parents=True, exist_ok=True)
    for name, examples in samples.items():
        if name not in SAMPLE_NAMES:
            raise ValueError(f"unknown sample {name!r}; expected one of {SAMPLE_NAMES}")
        target = folder / f"{name}.jsonl"
        if not examples:
            target.unlink(missing_ok=True)
            continue
        partial = target.with_suffix(".jsonl.partial")
        with partial.open("w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(json.dumps({"text": example.text, "label": example.label}, ensure_ascii=False) + "\n")
        os.replace(partial, target)
    return folder


def read_samples(bundle_path: str | os.PathLike[str], name: str) -> list[Example]:
    """The sample ``name`` kept next to the bundle (``[]`` when there is none)."""
    if name not in SAMPLE_NAMES:
        raise ValueError(f"unknown sample {name!r}; expected one of {SAMPLE_NAMES}")
    path = samples_dir(bundle_path) / f"{name}.jsonl"
    return parse_samples(path.read_text(encoding="utf-8"), name) if path.is_file() else []


def parse_samples(jsonl: str, name: str) -> list[Example]:
    """The examples of a sample file's text (one ``{"text", "label"}`` object per line)."""
    rows = [json.loads(line) for line in jsonl.splitlines() if line.strip()]
    return [Example(str(row["text"]), str(row["label"]), name if name == "validation" else "train") for row in rows]
