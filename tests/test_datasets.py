"""``distilintent.bench.datasets``: download (file:// URLs, no network), sha256 check, conversion to JSONL."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA
from needs import need_path

from distilintent.bench import datasets
from distilintent.core.errors import DataError


def _serve(monkeypatch: pytest.MonkeyPatch, name: str, sources: dict[str, Path], checksums: bool = True) -> None:
    """Point ``name``'s raw files at local ``file://`` copies (with their real sha256 unless told otherwise)."""
    dataset = datasets.DATASETS[name]
    files = tuple(dataclasses.replace(raw, url=sources[raw.name].resolve().as_uri(),
                                      sha256=hashlib.sha256(sources[raw.name].read_bytes()).hexdigest()
                                      if checksums else raw.sha256)
                  for raw in dataset.files)
    monkeypatch.setitem(datasets.DATASETS, name, dataclasses.replace(dataset, files=files))


def _tiny_raw(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    clinc = {"train": [["book a flight", "book_flight"], ["café au lait?", "order"]],
             "val": [["fly me", "book_flight"]], "test": [["flight to rome", "book_flight"]],
             "oos_train": [["meaning of life", "oos"]],
             "oos_val": [["sing", "oos"]], "oos_test": [["dance", "oos"]]}
    (root / "data_full.json").write_text(json.dumps(clinc), encoding="utf-8")
    for split, rows in (("train", [(" card arrived?", "card_arrival"), ('pin "blocked", help', "pin_blocked")]),
                        ("test", [("where is my card", "card_arrival")])):
        with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "category"])
            writer.writerows(rows)
    return {name: root / name for name in ("data_full.json", "train.csv", "test.csv")}


def test_download_verifies_and_converts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _tiny_raw(tmp_path / "published")
    _serve(monkeypatch, "clinc150", raw)
    _serve(monkeypatch, "banking77", raw)
    with pytest.raises(DataError, match="pass --download"):
        datasets.dataset_path("clinc150", tmp_path / "data")

    clinc = datasets.dataset_path("clinc150", tmp_path / "data", download=True)
    assert clinc == tmp_path / "data" / "clinc150" / "clinc150.jsonl"
    rows = [json.loads(line) for line in clinc.read_text(encoding="utf-8").splitlines()]
    assert [(row["text"], row["split"]) for row in rows] == [
        ("book a flight", "train"), ("café au lait?", "train"), ("meaning of life", "train"), ("fly me", "validation"),
        ("sing", "validation"), ("flight to rome", "test"), ("dance", "test")]
    assert "café" in clinc.read_text(encoding="utf-8")  # UTF-8 as-is, not \u escapes
    assert (clinc.parent / "data_full.json").read_bytes() == raw["data_full.json"].read_bytes()

    banking = datasets.dataset_path("banking77", tmp_path / "data", download=True)
    rows = [json.loads(line) for line in banking.read_text(encoding="utf-8").splitlines()]
    assert rows == [{"text": " card arrived?", "intent": "card_arrival", "split": "train"},
                    {"text": 'pin "blocked", help', "intent": "pin_blocked", "split": "train"},
                    {"text": "where is my card", "intent": "card_arrival", "split": "test"}]
    assert datasets.dataset_path("banking77", tmp_path / "data") == banking  # present: no download


def test_wrong_checksum_fails_clearly_and_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _tiny_raw(tmp_path / "published")
    _serve(monkeypatch, "clinc150", raw, checksums=False)  # the real CLINC150 sha256, not the tiny file's
    with pytest.raises(DataError, match=r"checksum mismatch for file://.*data_full\.json: sha256 [0-9a-f]{64}, "
                                        r"expected 36923c37"):
        datasets.dataset_path("clinc150", tmp_path / "data", download=True)
    assert not any((tmp_path / "data" / "clinc150").iterdir())
    # a corrupt raw file already on disk is refused too
    (tmp_path / "data" / "clinc150" / "data_full.json").write_bytes(raw["data_full.json"].read_bytes())
    with pytest.raises(DataError, match="checksum mismatch"):
        datasets.dataset_path("clinc150", tmp_path / "data")


@pytest.mark.parametrize("name", ["clinc150", "banking77"])
def test_conversion_reproduces_the_shared_jsonl(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real published files, served from file:// URLs, pass the pinned sha256 and convert byte for byte."""
    need_path(SHARED_DATA / name, "the published raw files")
    dataset = datasets.DATASETS[name]
    files = tuple(dataclasses.replace(raw, url=(SHARED_DATA / name / raw.name).as_uri()) for raw in dataset.files)
    monkeypatch.setitem(datasets.DATASETS, name, dataclasses.replace(dataset, files=files))
    converted = datasets.dataset_path(name, tmp_path, download=True)
    assert converted.read_bytes() == (SHARED_DATA / name / f"{name}.jsonl").read_bytes()


def test_accuracy_benchmark_takes_data_dir_and_download() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "accuracy.py"), "--help"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    usage = done.stdout.split("\n\n", 1)[0]
    assert re.findall(r"\[(--?[\w-]+)", usage) == ["-h", "--data-dir", "--download", "--runs-dir", "--datasets",
                                                  "--train", "--export", "--no-baseline", "--out", "--render"]
    described = " ".join(done.stdout.split())  # whatever the terminal width wrapped
    assert "--data-dir DATA_DIR holds <dataset>/<dataset>.jsonl (default: ../shared/data)" in described
