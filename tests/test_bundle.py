"""The bundle format: round trip, checksums, versioning and atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distilintent.core.bundle import Bundle, update_bundle, write_bundle
from distilintent.core.errors import BundleError


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def test_round_trip_manifest(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    manifest = bundle.manifest
    assert bundle.labels == ("greet", "goodbye", "book_flight", "weather")
    assert bundle.max_length == 16
    assert manifest["format"] == "distilintent-bundle" and manifest["format_version"] == 1
    for key in ("package_version", "created_at", "architecture", "base_model", "training", "tokenizer", "files"):
        assert key in manifest
    assert set(manifest["files"]) >= {"manifest.json", "tokenizer.json", "model/config.json",
                                      "model/model.safetensors"} - {"manifest.json"}
    bundle.verify()
    assert bundle.read_bytes("tokenizer.json").startswith(b"{")


def test_torch_weights_round_trip(tiny_bundle: Path) -> None:
    import torch

    from distilintent.training.model import load_bundle_model

    model = load_bundle_model(Bundle.open(tiny_bundle))
    ids = torch.tensor([[101, 7592, 102]])
    first = model(ids, torch.ones_like(ids))
    second = load_bundle_model(Bundle.open(tiny_bundle))(ids, torch.ones_like(ids))
    assert first.shape == (1, 4) and torch.equal(first, second)


def test_edited_file_fails_with_its_name(bundle_copy: Path) -> None:
    path = bundle_copy / "model" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model/model.safetensors does not match its sha256"):
        Bundle.open(bundle_copy).read_bytes("model/model.safetensors")


def test_truncated_file_fails(bundle_copy: Path) -> None:
    path = bundle_copy / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleError, match="tokenizer.json does not match"):
        Bundle.open(bundle_copy).verify()


def test_missing_file_fails(bundle_copy: Path) -> None:
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json is missing"):
        Bundle.open(bundle_copy).read_bytes("tokenizer.json")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=99), "format_version 99"),
        (lambda m: m.update(format="something-else"), "not a distilintent bundle manifest"),
        (lambda m: m.update(labels=["only"]), "at least 2 distinct"),
        (lambda m: m.update(labels=["a", "a"]), "at least 2 distinct"),
        (lambda m: m.update(max_length="long"), "max_length"),
        (lambda m: m["variants"].update(x={"backend": "onnxruntime", "precision": "fp32", "file": "nope.onnx"}),
         "not listed"),
        (lambda m: m["variants"].update(x={"backend": "tensorflow", "precision": "fp32", "file": "tokenizer.json"}),
         "backend='tensorflow'"),
        (lambda m: m["variants"].update(x={"backend": "onnxruntime", "precision": "fp32", "file": "tokenizer.json",
                                           "num_labels": 7}), "mismatched"),
    ],
)
def test_bad_manifest_is_rejected(bundle_copy: Path, edit, message: str) -> None:
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        Bundle.open(bundle_copy)


def test_not_json_manifest(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").write_text("{broken")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(bundle_copy)


def test_wrong_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model bundle not found"):
        Bundle.open(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="must be a directory"):
        Bundle.open(tmp_path / "file")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.open(tmp_path)


def test_failed_write_leaves_previous_bundle_intact(bundle_copy: Path) -> None:
    before = {p: p.read_bytes() for p in bundle_copy.rglob("*") if p.is_file()}

    def crash(root: Path) -> dict:
        (root / "tokenizer.json").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_bundle(bundle_copy, crash)
    assert {p: p.read_bytes() for p in bundle_copy.rglob("*") if p.is_file()} == before
    assert [p.name for p in bundle_copy.parent.iterdir()] == ["bundle"]  # no temporary directories left


def test_update_is_atomic_and_rehashes(bundle_copy: Path) -> None:
    original = (bundle_copy / "model" / "model.safetensors").read_bytes()

    def add_note(root: Path, manifest: dict) -> dict:
        (root / "notes.txt").write_text("hello")
        manifest["note"] = "added"
        return manifest

    update_bundle(bundle_copy, add_note)
    bundle = Bundle.open(bundle_copy)
    assert bundle.manifest["note"] == "added" and bundle.read_bytes("notes.txt") == b"hello"
    assert (bundle_copy / "model" / "model.safetensors").read_bytes() == original
    bundle.verify()


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("...")
    with pytest.raises(BundleError, match="is not a distilintent bundle"):
        write_bundle(tmp_path / "precious", lambda root: {})
    assert (tmp_path / "precious" / "thesis.tex").exists()


def test_no_pickle_in_persistence() -> None:
    """Model persistence uses safetensors, ONNX, OpenVINO IR and JSON only."""
    root = Path(__file__).resolve().parents[1] / "distilintent"
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        for needle in ("import pickle", "torch.save(", "torch.load(", "joblib", "trust_remote_code=True"):
            if needle in text:
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []
