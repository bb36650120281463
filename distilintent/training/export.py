"""``export_bundle``: add ONNX and OpenVINO (FP32, INT8) variants to a bundle, checked before writing.

Variants (name → files):

- ``onnx-fp32`` → ``onnx/model.onnx``; ``onnx-int8`` → ``onnx/model_int8.onnx`` (ONNX Runtime dynamic INT8)
- ``openvino-fp32`` → ``openvino/model.xml`` + ``.bin``; ``openvino-int8`` → ``openvino/model_int8.xml`` + ``.bin``

Every variant is loaded with the SDK runtime that will serve it and run on the bundle's held-out
sample (``samples/validation.jsonl``): FP32 logits must match torch within ``tolerance`` (OpenVINO
with ``INFERENCE_PRECISION_HINT=f32``), INT8 must agree with torch's top intent on at least
``min_agreement`` of the texts. A failing check raises :class:`ExportError` and leaves the bundle as
it was (:func:`~distilintent.core.bundle.update_bundle` is atomic).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distilintent.core.bundle import Bundle, update_bundle
from distilintent.core.data import load_examples
from distilintent.core.errors import DataError, DistilIntentError
from distilintent.core.tokenization import TextEncoder
from distilintent.sdk.runtimes import load_runtime
from distilintent.training import exporters
from distilintent.training.model import load_bundle_model

FORMATS = ("onnx", "openvino")
TOLERANCE = 1e-3
MIN_AGREEMENT = 0.99
CALIBRATION_SIZE = 300
PROBE_TEXTS = ("hello", "what is the weather like tomorrow", "book a flight to paris for two people", "bye",
               "i would like to cancel my order and get a refund please", "?")
VARIANT_FILES = {
    "onnx-fp32": ("onnxruntime", "fp32", "onnx/model.onnx", None),
    "onnx-int8": ("onnxruntime", "int8", "onnx/model_int8.onnx", None),
    "openvino-fp32": ("openvino", "fp32", "openvino/model.xml", "openvino/model.bin"),
    "openvino-int8": ("openvino", "int8", "openvino/model_int8.xml", "openvino/model_int8.bin"),
}


class ExportError(DistilIntentError):
    """An exported variant failed its parity or agreement check; the bundle was not changed."""


class Int8AgreementError(ExportError):
    """An INT8 variant disagrees with FP32 on too many held-out texts."""


def export_bundle(
    bundle_path: str | os.PathLike[str],
    formats: Sequence[str] = FORMATS,
    int8: bool = False,
    calibration: str | os.PathLike[str] | Sequence[str] | None = None,
    opset: int = 18,
    *,
    tolerance: float = TOLERANCE,
    min_agreement: float = MIN_AGREEMENT,
    calibration_size: int = CALIBRATION_SIZE,
) -> dict[str, dict[str, Any]]:
    """Export, check and add variants to the bundle; returns the manifest entries written, by name.

    ``calibration`` (INT8 only): a data file (``.jsonl``/``.csv``/``.yml``, or plain text with one text
    per line) or a list of texts; default: the bundle's ``samples/calibration.jsonl``.
    """
    formats = tuple(dict.fromkeys(formats))
    unknown = set(formats) - set(FORMATS)
    if not formats or unknown:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {list(formats)}")
    bundle = Bundle.open(bundle_path)
    encoder = TextEncoder.from_bundle(bundle)
    model = load_bundle_model(bundle)
    texts, labels, source = _reference_sample(bundle)
    reference, reference_embedding = _torch_outputs(model, encoder, texts)
    calibration_texts, calibration_source = (
        _calibration_texts(bundle, calibration, calibration_size) if int8 else ([], None)
    )
    names = [name for name in VARIANT_FILES if name.split("-")[0] in formats and (int8 or name.endswith("fp32"))]
    written: dict[str, dict[str, Any]] = {}

    def change(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix=".export-", dir=root.parent) as scratch:
            work = Path(scratch)
            files = _convert(model, encoder, bundle.max_length, names, work, opset, calibration_texts)
            for name in names:
                entry = _check(name, work, encoder, texts, labels, (reference, reference_embedding), tolerance,
                               min_agreement, bundle.max_length)
                entry["export"] = files[name]["settings"]
                if name.endswith("int8"):
                    entry["export"]["calibration_source"] = calibration_source
                entry["parity"]["sample"] = source
                written[name] = entry
            for name in names:  # all checks passed: move the files in (replacing, never writing through links)
                for relative in filter(None, VARIANT_FILES[name][2:]):
                    _place(work / relative, root / relative)
        manifest.setdefault("variants", {}).update(written)
        reference_accuracy = _accuracy(reference, labels)
        manifest["export"] = {
            "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "opset": opset,
            "tolerance": tolerance,
            "min_agreement": min_agreement,
            "reference_sample": {"source": source, "n": len(texts), "torch_accuracy": reference_accuracy},
        }
        return manifest

    update_bundle(bundle.path, change)
    return written


def _convert(model: Any, encoder: TextEncoder, max_length: int, names: Sequence[str], work: Path, opset: int,
             calibration_texts: Sequence[str]) -> dict[str, dict[str, Any]]:
    for folder in ("onnx", "openvino"):
        (work / folder).mkdir()
    onnx_path = work / VARIANT_FILES["onnx-fp32"][2]
    files: dict[str, dict[str, Any]] = {}
    onnx_settings = exporters.export_onnx(model, onnx_path, opset, max_length)
    files["onnx-fp32"] = {"settings": dict(onnx_settings)}
    if "onnx-int8" in names:
        settings = exporters.quantize_onnx(onnx_path, work / VARIANT_FILES["onnx-int8"][2])
        files["onnx-int8"] = {"settings": {**onnx_settings, "quantization": settings}}
    if "openvino-fp32" in names or "openvino-int8" in names:
        ov_model, settings = exporters.convert_openvino(onnx_path, work / VARIANT_FILES["openvino-fp32"][2])
        files["openvino-fp32"] = {"settings": {**settings, "onnx": onnx_settings}}
        if "openvino-int8" in names:
            ids = encoder.token_ids(list(calibration_texts))
            quant = exporters.quantize_openvino(ov_model, ids, work / VARIANT_FILES["openvino-int8"][2], max_length,
                                                encoder.pad_token_id)
            files["openvino-int8"] = {"settings": {**settings, "onnx": onnx_settings, "quantization": quant}}
    return files


def _check(name: str, work: Path, encoder: TextEncoder, texts: Sequence[str],
           labels: Sequence[int] | None, references: tuple[np.ndarray, np.ndarray], tolerance: float,
           min_agreement: float, max_length: int) -> dict[str, Any]:
    backend, precision, file, weights = VARIANT_FILES[name]
    reference, reference_embedding = references
    runtime = load_runtime(backend, precision, (work / file).read_bytes(),
                           (work / weights).read_bytes() if weights else None, max_length=max_length,
                           pad_id=encoder.pad_token_id)
    try:
        logits, embedding, one_by_one = _runtime_outputs(runtime, encoder, texts)
    finally:
        runtime.close()
    diff = max(float(np.max(np.abs(logits - reference))),
               float(np.max(np.abs(one_by_one - reference[: len(one_by_one)]))))
    embedding_diff = float(np.max(np.abs(embedding - reference_embedding))) if embedding is not None else None
    agreement = float(np.mean(logits.argmax(-1) == reference.argmax(-1)))
    agreement_single = float(np.mean(one_by_one.argmax(-1) == reference[: len(one_by_one)].argmax(-1)))
    if precision == "fp32" and not diff <= tolerance:
        raise ExportError(f"{name}: logits differ from torch by up to {diff:.2e} (tolerance {tolerance:.0e}) on "
                          f"{len(texts)} texts; the bundle was not changed")
    if precision == "fp32" and not (embedding_diff is not None and embedding_diff <= tolerance):
        raise ExportError(f"{name}: the embedding output is missing or differs from torch by {embedding_diff} "
                          f"(tolerance {tolerance:.0e}); the bundle was not changed")
    if precision == "int8" and agreement < min_agreement:
        raise Int8AgreementError(
            f"{name}: top intent agrees with FP32 on {agreement:.1%} of {len(texts)} held-out texts "
            f"(need {min_agreement:.0%}); the bundle was not changed. Try another --calibration or serve FP32")
    size = sum((work / part).stat().st_size for part in (file, weights) if part)
    entry: dict[str, Any] = {
        "backend": backend, "precision": precision, "file": file, "num_labels": int(reference.shape[1]),
        "size_bytes": size,
        "outputs": ["logits", "sentence_embedding"] if embedding is not None else ["logits"],
        "parity": {"n": len(texts), "max_abs_logit_diff": diff, "max_abs_embedding_diff": embedding_diff,
                   "top1_agreement": agreement,
                   "n_batch1": len(one_by_one), "top1_agreement_batch1": agreement_single},
        "validation_accuracy": _accuracy(logits, labels),
    }
    if weights:
        entry["weights"] = weights
    return entry


def _runtime_outputs(runtime: Any, encoder: TextEncoder, texts: Sequence[str], batch_size: int = 32,
                     single: int = 256) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Batches of 32 as ``detect_batch`` runs them (the INT8 gate), and the first ``single`` texts one
    by one as ``detect`` does (OpenVINO runs its static-shape models there): logits of both paths must
    match torch for FP32; the batch-1 agreement of INT8 is recorded. Returns batched logits, batched
    embeddings (None if the graph has none) and the one-by-one logits."""
    ids = encoder.token_ids(list(texts))
    batches = [runtime.run_outputs(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    logits = np.concatenate([batch[0] for batch in batches]).astype(np.float32)
    embedding = (np.concatenate([batch[1] for batch in batches]).astype(np.float32)
                 if all(batch[1] is not None for batch in batches) else None)
    one_by_one = np.stack([runtime.run([tokens])[0] for tokens in ids[:single]])
    return logits, embedding, one_by_one.astype(np.float32)


def _torch_outputs(model: Any, encoder: TextEncoder, texts: Sequence[str],
                   batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    logits, embeddings = [], []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            input_ids, attention_mask = encoder.encode(texts[start : start + batch_size])
            pooled = model.embed(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
            logits.append(model.head(pooled).float().numpy())
            embeddings.append(pooled.float().numpy())
    return np.concatenate(logits), np.concatenate(embeddings)


def _accuracy(logits: np.ndarray, labels: Sequence[int] | None) -> float | None:
    """Top-1 accuracy on the labelled texts (label index -1: a label the bundle does not have)."""
    if not labels:
        return None
    return float(np.mean(logits.argmax(-1) == np.asarray(labels)))


def _read_sample(bundle: Bundle, name: str) -> list[dict[str, str]]:
    relative = (bundle.manifest.get("samples") or {}).get(name)
    if not relative:
        return []
    lines = bundle.read_bytes(relative).decode("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _reference_sample(bundle: Bundle) -> tuple[list[str], list[int] | None, str]:
    """Texts to check parity on and their label indices (None when unlabelled)."""
    for name in ("validation", "calibration"):
        rows = _read_sample(bundle, name)
        if rows:
            index = {label: i for i, label in enumerate(bundle.labels)}
            texts = [row["text"] for row in rows]
            labels = [index.get(row.get("label"), -1) for row in rows]
            return texts, labels, bundle.manifest["samples"][name]
    return list(PROBE_TEXTS), None, "built-in probe texts (the bundle stores no samples)"


def _calibration_texts(bundle: Bundle, calibration: Any, size: int) -> tuple[list[str], str]:
    if calibration is None:
        rows = _read_sample(bundle, "calibration") or _read_sample(bundle, "validation")
        texts, source = [row["text"] for row in rows], "bundle samples"
    elif isinstance(calibration, (str, os.PathLike)):
        path = Path(calibration)
        if path.suffix.lower() in (".jsonl", ".csv", ".yml", ".yaml"):
            texts = [example.text for example in load_examples(path)]
        elif path.is_file():
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            raise DataError(f"calibration file not found: {path}")
        source = str(path)
    else:
        texts, source = [str(text) for text in calibration if str(text).strip()], "texts given"
    if not texts:
        raise DataError(f"no calibration texts for INT8 ({source}); pass --calibration FILE")
    if len(texts) > size:
        texts = random.Random(0).sample(texts, size)
    return texts, source


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # may be a hard link to the live bundle's file: never write through it
    shutil.move(str(source), str(target))
