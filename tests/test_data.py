"""Training data: Rasa YAML, CSV and JSONL readers and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distilintent.core.data import Example, fingerprint, load_examples, split_examples, strip_entities
from distilintent.core.errors import DataError

RASA = """version: "3.1"
nlu:
- intent: greet
  examples: |
    - hi
    - hello [Anna](name)
- intent: check_weather
  examples: |
    - weather in [Berlin](city)?
    - is it raining in [New York]{"entity": "city", "value": "NYC"}
- synonym: NYC
  examples: |
    - new york
- regex: zipcode
  examples: |
    - [0-9]{5}
- lookup: city
  examples: |
    - Paris
- intent: greet+ask_weather
  examples:
  - text: hi, what's the weather
    metadata: {sentiment: neutral}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_strip_entities() -> None:
    annotated = 'fly to [Berlin](city) from [New York]{"entity": "city"}'
    assert strip_entities(annotated) == "fly to Berlin from New York"
    assert strip_entities("no entities [here") == "no entities [here"


def test_rasa_yaml_strips_entities_and_skips_synonym_regex_lookup(tmp_path: Path) -> None:
    examples = load_examples(write(tmp_path, "nlu.yml", RASA))
    assert [(e.text, e.label) for e in examples] == [
        ("hi", "greet"),
        ("hello Anna", "greet"),
        ("weather in Berlin?", "check_weather"),
        ("is it raining in New York", "check_weather"),
        ("hi, what's the weather", "greet+ask_weather"),
    ]


def test_rasa_yaml_intent_without_examples_names_line(tmp_path: Path) -> None:
    text = ('nlu:\n- intent: greet\n  examples: |\n    - hi\n- intent: empty\n  examples: ""\n'
            "- intent: bye\n  examples: |\n    - bye\n")
    with pytest.raises(DataError, match=r"nlu.yml:5: intent 'empty' has no examples"):
        load_examples(write(tmp_path, "nlu.yml", text))


def test_rasa_yaml_bad_line_names_line(tmp_path: Path) -> None:
    text = "nlu:\n- intent: greet\n  examples: |\n    - hi\n    oops\n- intent: bye\n  examples: |\n    - bye\n"
    with pytest.raises(DataError, match=r"nlu.yml:5: examples must be lines"):
        load_examples(write(tmp_path, "nlu.yml", text))


def test_rasa_yaml_without_nlu_section(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no 'nlu:' section"):
        load_examples(write(tmp_path, "stories.yml", "stories:\n- story: x\n"))


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"bad.yml:\d+: invalid YAML"):
        load_examples(write(tmp_path, "bad.yml", "nlu:\n- intent: [unclosed\n"))


def test_csv_with_label_column_and_split(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "text,label,split\ngreat movie,positive,train\nawful,negative,test\n")
    assert load_examples(path) == [Example("great movie", "positive", "train"), Example("awful", "negative", "test")]


def test_csv_missing_column(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.csv:1: CSV header must have 'text' and 'intent'"):
        load_examples(write(tmp_path, "data.csv", "sentence,intent\nhi,greet\n"))


def test_csv_empty_text_names_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.csv:3: empty or missing text"):
        load_examples(write(tmp_path, "data.csv", "text,intent\nhi,greet\n  ,bye\n"))


def test_jsonl_reads_splits_and_aliases(tmp_path: Path) -> None:
    rows = [{"text": "hi", "intent": "greet", "split": "val"}, {"text": "bye", "intent": "bye", "split": "dev"},
            {"text": "yo", "intent": "greet"}]
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(row) for row in rows) + "\n\n")
    assert [e.split for e in load_examples(path)] == ["validation", "validation", None]


@pytest.mark.parametrize(
    ("line", "message"),
    [("{not json", r"d.jsonl:2: invalid JSON"), ('{"text": "x"}', r"d.jsonl:2: missing 'text' or 'intent'"),
     ('["x", "y"]', r"d.jsonl:2: expected a JSON object"), ('{"text": "x", "intent": "a", "split": "holdout"}',
                                                            r"d.jsonl:2: unknown split")],
)
def test_jsonl_errors_name_line(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_examples(write(tmp_path, "d.jsonl", '{"text": "hi", "intent": "greet"}\n' + line + "\n"))


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data format '.txt'"):
        load_examples(write(tmp_path, "d.txt", "hi"))
    with pytest.raises(DataError, match="data file not found"):
        load_examples(tmp_path / "missing.csv")


def test_fewer_than_two_labels(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="found 1 label"):
        load_examples(write(tmp_path, "d.csv", "text,intent\nhi,greet\nhello,greet\n"))


def test_split_holds_out_stratified_validation() -> None:
    examples = [Example(f"text {i}", label) for label in ("a", "b", "c") for i in range(20)]
    splits = split_examples(examples, validation_fraction=0.1, seed=1)
    assert len(splits.validation) == 6 and len(splits.train) == 54
    assert sorted(e.label for e in splits.validation) == ["a", "a", "b", "b", "c", "c"]
    assert split_examples(examples, 0.1, seed=1) == splits  # reproducible
    assert not set(splits.validation) & set(splits.train)


def test_split_keeps_given_splits() -> None:
    examples = [Example("a", "x", "train"), Example("b", "y", "train"), Example("c", "x", "validation"),
                Example("d", "y", "test")]
    splits = split_examples(examples)
    assert [e.text for e in splits.validation] == ["c"] and [e.text for e in splits.test] == ["d"]


def test_fingerprint_changes_with_content() -> None:
    assert fingerprint([Example("a", "x")]) != fingerprint([Example("a", "y")])


def test_demo_data_is_a_usable_assistant() -> None:
    from distilintent.demo import resolve_data_path

    examples = load_examples(resolve_data_path("demo"))
    held_out = load_examples(resolve_data_path("demo-test"))
    assert {e.label for e in held_out} == {e.label for e in examples}
    assert not {e.text.lower() for e in held_out} & {e.text.lower() for e in examples}
    counts: dict[str, int] = {}
    for example in examples:
        counts[example.label] = counts.get(example.label, 0) + 1
    assert 10 <= len(counts) <= 15
    assert min(counts.values()) >= 15
    assert not any("](" in e.text for e in examples)
