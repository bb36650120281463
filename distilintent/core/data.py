"""Labelled texts from Rasa NLU YAML, CSV or JSONL, with errors that name the file and line.

Formats (chosen by file extension):

- ``.yml``/``.yaml``: Rasa NLU training data (``nlu: - intent: … examples: |``). Entity annotations
  such as ``[Berlin](city)`` or ``[Berlin]{"entity": "city"}`` are reduced to their text; ``synonym``,
  ``regex`` and ``lookup`` blocks are skipped.
- ``.csv``: a header with ``text`` and ``intent`` (or ``label``) columns, optional ``split``.
- ``.jsonl``: one object per line with ``text`` and ``intent`` (or ``label``), optional ``split``.

Labels are arbitrary strings: intents, sentiments, topics, …
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from distilintent.core.errors import DataError

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
}
_ENTITY = re.compile(r"\[(?P<text>[^\]]*)\](?:\([^)]*\)|\{[^}]*\})")
_RASA_SKIPPED = ("synonym", "regex", "lookup")


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    split: str | None = None


def strip_entities(text: str) -> str:
    """``"fly to [Berlin](city)"`` → ``"fly to Berlin"``."""
    return _ENTITY.sub(lambda match: match.group("text"), text)


def load_examples(path: str | Path) -> list[Example]:
    """Read labelled examples from a Rasa YAML, CSV or JSONL file and check they can be trained on."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    readers = {".yml": _read_rasa_yaml, ".yaml": _read_rasa_yaml, ".csv": _read_csv, ".jsonl": _read_jsonl}
    if suffix not in readers:
        raise DataError(
            f"{path}: unknown data format {suffix or '(no extension)'!r}; use .yml/.yaml (Rasa NLU), .csv or .jsonl"
        )
    try:
        examples = readers[suffix](path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from err
    check_examples(examples, str(path))
    return examples


def check_examples(examples: Sequence[Example], source: str) -> None:
    """At least two labels, each with an example."""
    labels = Counter(example.label for example in examples)
    if len(labels) < 2:
        raise DataError(
            f"{source}: found {len(labels)} label(s) ({', '.join(labels) or 'none'}); a classifier needs at least 2"
        )


def _example(text: object, label: object, split: object, where: str) -> Example:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: empty or missing text")
    if not isinstance(label, str) or not label.strip():
        raise DataError(f"{where}: empty or missing intent/label")
    normalised = None
    if split not in (None, ""):
        normalised = SPLIT_ALIASES.get(str(split).strip().lower())
        if normalised is None:
            raise DataError(f"{where}: unknown split {split!r}; use train, validation or test")
    return Example(text.strip(), label.strip(), normalised)


def _read_csv(path: Path) -> list[Example]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        label_column = "intent" if "intent" in columns else "label"
        if "text" not in columns or label_column not in columns:
            raise DataError(
                f"{path}:1: CSV header must have 'text' and 'intent' (or 'label') columns, "
                f"found {sorted(columns)}"
            )
        return [
            _example(row["text"], row[label_column], row.get("split"), f"{path}:{reader.line_num}")
            for row in reader
        ]


def _read_jsonl(path: Path) -> list[Example]:
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: invalid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object with 'text' and 'intent'")
            if "text" not in row or ("intent" not in row and "label" not in row):
                raise DataError(f"{where}: missing 'text' or 'intent' (or 'label') key; found {sorted(row)}")
            examples.append(_example(row["text"], row.get("intent", row.get("label")), row.get("split"), where))
    return examples


def _read_rasa_yaml(path: Path) -> list[Example]:
    import yaml

    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)})") from err
    if not isinstance(root, yaml.MappingNode):
        raise DataError(f"{path}:1: expected Rasa NLU data with a top-level 'nlu:' list")
    nlu = _mapping(root).get("nlu")
    if nlu is None:
        raise DataError(f"{path}:1: no 'nlu:' section; is this Rasa NLU training data?")
    if not isinstance(nlu, yaml.SequenceNode):
        raise DataError(f"{path}:{nlu.start_mark.line + 1}: 'nlu:' must be a list")
    examples: list[Example] = []
    for item in nlu.value:
        where = f"{path}:{item.start_mark.line + 1}"
        if not isinstance(item, yaml.MappingNode):
            raise DataError(f"{where}: each 'nlu:' entry must be a mapping")
        fields = _mapping(item)
        if any(key in fields for key in _RASA_SKIPPED):
            continue
        if "intent" not in fields:
            raise DataError(f"{where}: entry has none of intent/synonym/regex/lookup: {sorted(fields)}")
        label = fields["intent"].value
        block = fields.get("examples")
        found = list(_rasa_example_lines(block, path)) if block is not None else []
        if not found:
            raise DataError(f"{where}: intent {label!r} has no examples")
        examples.extend(_example(text, label, None, line_where) for text, line_where in found)
    return examples


def _mapping(node) -> dict:  # noqa: ANN001 - a yaml.MappingNode
    return {key.value: value for key, value in node.value}


def _rasa_example_lines(node, path: Path) -> Iterable[tuple[str, str]]:  # noqa: ANN001
    import yaml

    if isinstance(node, yaml.ScalarNode):
        first_line = node.start_mark.line + (1 if node.style in ("|", ">") else 0)
        for offset, raw in enumerate(str(node.value).splitlines()):
            stripped = raw.strip()
            if not stripped:
                continue
            if not stripped.startswith("- "):
                if stripped == "-":
                    raise DataError(f"{path}:{first_line + offset + 1}: empty example")
                raise DataError(f"{path}:{first_line + offset + 1}: examples must be lines starting with '- '")
            yield strip_entities(stripped[2:]), f"{path}:{first_line + offset + 1}"
    elif isinstance(node, yaml.SequenceNode):  # examples with metadata: [{text: ..., metadata: ...}]
        for entry in node.value:
            text = _mapping(entry).get("text") if isinstance(entry, yaml.MappingNode) else entry
            value = text.value if isinstance(text, yaml.ScalarNode) else None
            yield strip_entities(value or ""), f"{path}:{entry.start_mark.line + 1}"
    else:
        raise DataError(f"{path}:{node.start_mark.line + 1}: 'examples' must be a '|' block of '- ' lines")


def fingerprint(examples: Iterable[Example]) -> str:
    """sha256 over the examples in order (text, label, split)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.text, example.label, example.split]).encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]


def split_examples(examples: Sequence[Example], validation_fraction: float = 0.1, seed: int = 42) -> Splits:
    """Use the data's own splits; without a validation split, hold out a stratified fraction of train.

    Examples without a split count as training examples. Labels with a single training example
    stay in train.
    """
    by_split: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_split[example.split or "train"].append(example)
    train, validation = by_split["train"], by_split["validation"]
    if not train:
        raise DataError("no training examples (every example is in the validation or test split)")
    if not validation and validation_fraction > 0:
        rng = random.Random(seed)
        per_label: dict[str, list[Example]] = defaultdict(list)
        for example in train:
            per_label[example.label].append(example)
        train, validation = [], []
        for label in sorted(per_label):
            group = per_label[label][:]
            rng.shuffle(group)
            held = int(round(len(group) * validation_fraction)) if len(group) >= 2 else 0
            held = min(max(held, 1 if len(group) >= 4 else 0), len(group) - 1)
            validation.extend(group[:held])
            train.extend(group[held:])
    check_examples(train, "training split")
    return Splits(train, validation, by_split["test"])
