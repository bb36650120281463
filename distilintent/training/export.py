"""``export_bundle``: add ONNX and OpenVINO (FP32, INT8) variants to a bundle, checked before writing.

Variants (name → files):

- ``onnx-fp32`` → ``onnx/model.onnx``: the graph built for inference, ONNX Runtime's transformer fusions
  (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization, :mod:`distilintent.training.optimize`)
  applied to the plain-operations export; ``onnx-int8`` → ``onnx/model_int8.onnx``: INT8 of that fused graph,
  built as :data:`ONNX_INT8` says (chosen by ``benchmarks/int8_variants.py``); the manifest entry records
  how (``graph``, ``quantization``: ``dynamic``, whose results depend on the batch mates, or ``static``,
  ``weight_type`` and ``activation_type`` ``s8``/``u8``, ``per_channel``)
- ``openvino-fp32`` → ``openvino/model.xml`` + ``.bin``; ``openvino-int8`` → ``openvino/model_int8.xml`` + ``.bin``

Every variant is loaded with the SDK runtime that will serve it and run on the held-out sample that
training keeps next to the bundle (``<bundle>.samples/validation.jsonl``, see
:mod:`distilintent.core.samples`; else the built-in probe texts): FP32 logits must match torch within
``tolerance`` (OpenVINO with ``INFERENCE_PRECISION_HINT=f32``), INT8 must agree with torch's top intent
on at least ``min_agreement`` of the texts, in batches of 32 (``detect_batch``) and one text at a time
(``detect``, the server). A failing check raises :class:`ExportError` and leaves the bundle as it was
(:func:`~distilintent.core.bundle.update_bundle` is atomic). INT8 is calibrated on the training sample
kept next to the bundle, or on ``calibration``.

Bundles written before the samples moved out still carry ``samples/*.jsonl``: export reads them, moves
them next to the bundle and drops them from it, so the exported bundle holds no training text.
"""

from __future__ import annotations

import datetime as _dt
import logging
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
from distilintent.core.data import Example, load_examples
from distilintent.core.errors import DataError, DistilIntentError
from distilintent.core.metrics import softmax
from distilintent.core.samples import parse_samples, read_samples, samples_dir, write_samples
from distilintent.core.tokenization import TextEncoder
from distilintent.sdk.runtimes import load_runtime
from distilintent.training import exporters, optimize
from distilintent.training.export_graph import PlainIntentGraph
from distilintent.training.inference import TorchPredictor
from distilintent.training.model import load_bundle_model

log = logging.getLogger(__name__)
FORMATS = ("onnx", "openvino")
LEGACY_SAMPLES = "samples"  # the folder inside bundles written before the samples moved next to them
TOLERANCE = 1e-3
MIN_AGREEMENT = 0.99
BATCH_INVARIANCE = 1e-5  # largest probability change by batch mates for a variant the server may batch
CALIBRATION_SIZE = 300
PROBE_TEXTS = ("hello", "what is the weather like tomorrow", "book a flight to paris for two people", "bye",
               "i would like to cancel my order and get a refund please", "?")
# How onnx-int8 is built (optimize.quantize_fused's arguments), chosen on CLINC150 on a Xeon with AVX-512
# VNNI and AMX (benchmarks/results/int8_variants.md, batch-1 p50 at 1 thread): dynamic U8S8 per-channel INT8
# of the fused graph, 1.34 ms (FP32 plain 4.28, fused 3.67; the previous plain-graph dynamic INT8 1.53), is
# the fastest that passes the gate (validation agreement 99.1 % / 99.8 % at batch 32 / 1; test accuracy
# 85.78 % vs FP32 85.64 %). Per-tensor (1.27 ms) fails it (98.1 %); static QDQ (MinMax-calibrated; its
# packed-QKV Attention stays FP32, QDQ has no Attention) is slower and fails it: U8S8 1.82 ms, 98.1 %;
# S8S8 9.8 ms (no fused S8S8 kernel on x86), 95.7 %.
ONNX_INT8: dict[str, Any] = {"quantization": "dynamic", "weights": "s8", "activations": "u8", "per_channel": True}
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
    onnx_int8: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Export, check and add variants to the bundle; returns the manifest entries written, by name.

    ``calibration`` (INT8 only): a data file (``.jsonl``/``.csv``/``.yml``, or plain text with one text
    per line) or a list of texts; default: the training sample kept next to the bundle
    (``<bundle>.samples/calibration.jsonl``); without one, INT8 export asks for ``calibration``.
    ``onnx_int8`` overrides :data:`ONNX_INT8` (e.g. ``{"quantization": "static"}``).
    """
    formats = tuple(dict.fromkeys(formats))
    unknown = set(formats) - set(FORMATS)
    if not formats or unknown:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {list(formats)}")
    bundle = Bundle.open(bundle_path)
    encoder = TextEncoder.from_bundle(bundle)
    model = load_bundle_model(bundle)
    samples = _samples(bundle)
    texts, labels, source = _reference_sample(bundle, samples)
    reference, reference_embedding = _torch_outputs(model, encoder, texts)
    calibration_texts, calibration_source = (
        _calibration_texts(bundle, calibration, calibration_size, samples) if int8 else ([], None)
    )
    names = [name for name in VARIANT_FILES if name.split("-")[0] in formats and (int8 or name.endswith("fp32"))]
    written: dict[str, dict[str, Any]] = {}

    def change(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix=".export-", dir=root.parent) as scratch:
            work = Path(scratch)
            files = _convert(model, encoder, bundle.max_length, names, work, opset, calibration_texts,
                             {**ONNX_INT8, **(onnx_int8 or {})})
            for name in names:
                entry = _check(name, work, encoder, texts, labels, (reference, reference_embedding), tolerance,
                               min_agreement, bundle.max_length)
                entry["export"] = files[name]["settings"]
                entry.update(files[name].get("build", {}))
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
        legacy = manifest.pop("samples", None) or {}
        if legacy:  # a bundle written before the samples moved out: they move next to it
            moved = {name: examples for name, (examples, where) in samples.items()
                     if examples and where == legacy.get(name)}
            if moved:
                write_samples(bundle.path, moved)
            shutil.rmtree(root / LEGACY_SAMPLES, ignore_errors=True)
        return manifest

    update_bundle(bundle.path, change)
    return written


def _convert(model: Any, encoder: TextEncoder, max_length: int, names: Sequence[str], work: Path, opset: int,
             calibration_texts: Sequence[str], onnx_int8: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Write each variant's files into ``work``; ``settings`` go to the manifest entry's ``export``,
    ``build`` (graph, quantization, weight_type, activation_type, per_channel) to the entry itself."""
    for folder in ("onnx", "openvino"):
        (work / folder).mkdir()
    plain_path = work / "plain.onnx"  # the plain-operations graph: OpenVINO converts it, ORT's fusions start from it
    onnx_path = work / VARIANT_FILES["onnx-fp32"][2]
    files: dict[str, dict[str, Any]] = {}
    plain_settings = exporters.export_onnx(model, plain_path, opset, max_length)
    onnx_settings = dict(plain_settings)
    ids = encoder.token_ids(list(calibration_texts))
    if any(name.startswith("onnx") for name in names):
        graph = "plain"
        if PlainIntentGraph.supports(model):
            config = model.encoder.config
            try:
                onnx_settings["fusion"] = optimize.fuse_onnx(plain_path, onnx_path, config.n_heads, config.dim,
                                                             config.n_layers)
                graph = "fused"
            except ValueError as err:  # e.g. another onnxruntime's fusion patterns: the plain graph still serves
                log.warning("%s; exporting the plain graph (slower at batch 1, same results)", err)
                onnx_settings["fusion"] = {"skipped": str(err)}
        if graph == "plain":  # another encoder, or fusions that did not apply
            shutil.copyfile(plain_path, onnx_path)
        files["onnx-fp32"] = {"settings": dict(onnx_settings), "build": {"graph": graph}}
        if "onnx-int8" in names:
            settings = optimize.quantize_fused(onnx_path, work / VARIANT_FILES["onnx-int8"][2], token_ids=ids,
                                               pad_id=encoder.pad_token_id, **onnx_int8)
            settings["graph"] = graph
            files["onnx-int8"] = {"settings": {**onnx_settings, "quantization": settings},
                                  # "weights" names an OpenVINO weights file in a manifest entry: "weight_type" here
                                  "build": {"graph": graph, "quantization": settings["quantization"],
                                            "weight_type": settings["weights"],
                                            "activation_type": settings["activations"],
                                            "per_channel": settings["per_channel"]}}
    if "openvino-fp32" in names or "openvino-int8" in names:
        ov_model, settings = exporters.convert_openvino(plain_path, work / VARIANT_FILES["openvino-fp32"][2])
        files["openvino-fp32"] = {"settings": {**settings, "onnx": plain_settings}, "build": {"graph": "plain"}}
        if "openvino-int8" in names:
            quant = exporters.quantize_openvino(ov_model, ids, work / VARIANT_FILES["openvino-int8"][2], max_length,
                                                encoder.pad_token_id)
            files["openvino-int8"] = {"settings": {**settings, "onnx": plain_settings, "quantization": quant},
                                      "build": {"graph": "plain", "quantization": "static", "weight_type": "s8",
                                                "per_channel": True}}
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
    # what batch mates change: the largest probability difference of a text alone and in a batch of 32
    batch_effect = float(np.max(np.abs(softmax(logits[: len(one_by_one)]) - softmax(one_by_one))))
    if precision == "fp32" and not diff <= tolerance:
        raise ExportError(f"{name}: logits differ from torch by up to {diff:.2e} (tolerance {tolerance:.0e}) on "
                          f"{len(texts)} texts; the bundle was not changed")
    if precision == "fp32" and not (embedding_diff is not None and embedding_diff <= tolerance):
        raise ExportError(f"{name}: the embedding output is missing or differs from torch by {embedding_diff} "
                          f"(tolerance {tolerance:.0e}); the bundle was not changed")
    if precision == "int8":
        for where, share, n in (("in batches of 32", agreement, len(texts)),
                                ("one text at a time", agreement_single, len(one_by_one))):
            if share < min_agreement:
                raise Int8AgreementError(
                    f"{name}: top intent agrees with FP32 on {share:.1%} of {n} held-out texts {where} "
                    f"(need {min_agreement:.0%}); the bundle was not changed. Try another --calibration or "
                    "serve FP32")
    size = sum((work / part).stat().st_size for part in (file, weights) if part)
    entry: dict[str, Any] = {
        "backend": backend, "precision": precision, "file": file, "num_labels": int(reference.shape[1]),
        "size_bytes": size,
        "outputs": ["logits", "sentence_embedding"] if embedding is not None else ["logits"],
        "parity": {"n": len(texts), "max_abs_logit_diff": diff, "max_abs_embedding_diff": embedding_diff,
                   "top1_agreement": agreement,
                   "n_batch1": len(one_by_one), "top1_agreement_batch1": agreement_single,
                   "max_batch_effect": batch_effect},
        # the server batches concurrent requests only where that changes no answer
        "batch_invariant": batch_effect <= BATCH_INVARIANCE,
        "validation_accuracy": _accuracy(logits, labels),
    }
    if weights:
        entry["weights"] = weights
    return entry


def _runtime_outputs(runtime: Any, encoder: TextEncoder, texts: Sequence[str], batch_size: int = 32,
                     single: int = 1000) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Batches of 32 as ``detect_batch`` runs them, and the first ``single`` texts one by one as
    ``detect`` and the server do (OpenVINO runs its static-shape models there; dynamic INT8 results
    change with the batch): FP32 logits of both paths must match torch, INT8 top intents of both must
    agree with it. Returns batched logits, batched embeddings (None if the graph has none) and the
    one-by-one logits."""
    ids = encoder.token_ids(list(texts))
    batches = [runtime.run_outputs(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    logits = np.concatenate([batch[0] for batch in batches]).astype(np.float32)
    embedding = (np.concatenate([batch[1] for batch in batches]).astype(np.float32)
                 if all(batch[1] is not None for batch in batches) else None)
    one_by_one = np.stack([runtime.run([tokens])[0] for tokens in ids[:single]])
    return logits, embedding, one_by_one.astype(np.float32)


def _torch_outputs(model: Any, encoder: TextEncoder, texts: Sequence[str],
                   batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """FP32 torch logits and pooled embeddings: the reference every variant is checked against."""
    return TorchPredictor(model, encoder).outputs(texts, batch_size)


def _accuracy(logits: np.ndarray, labels: Sequence[int] | None) -> float | None:
    """Top-1 accuracy on the labelled texts (label index -1: a label the bundle does not have)."""
    if not labels:
        return None
    return float(np.mean(logits.argmax(-1) == np.asarray(labels)))


Samples = dict[str, tuple[list[Example], str]]


def _samples(bundle: Bundle) -> Samples:
    """Each sample (``validation``, ``calibration``) and where it was read: next to the bundle, or inside
    a bundle written before the samples moved out (``samples/*.jsonl``); ``[]`` where there is none."""
    legacy = bundle.manifest.get("samples") or {}
    found: Samples = {}
    for name in ("validation", "calibration"):
        kept = read_samples(bundle.path, name)
        if kept:
            found[name] = (kept, f"{samples_dir(bundle.path).name}/{name}.jsonl")
        elif legacy.get(name):
            found[name] = (parse_samples(bundle.read_bytes(legacy[name]).decode("utf-8"), name), legacy[name])
        else:
            found[name] = ([], "")
    return found


def _reference_sample(bundle: Bundle, samples: Samples) -> tuple[list[str], list[int] | None, str]:
    """Texts to check parity on and their label indices (None when unlabelled)."""
    for name in ("validation", "calibration"):
        examples, source = samples[name]
        if examples:
            index = {label: i for i, label in enumerate(bundle.labels)}
            return [e.text for e in examples], [index.get(e.label, -1) for e in examples], source
    return list(PROBE_TEXTS), None, f"built-in probe texts (no samples in {samples_dir(bundle.path).name}/)"


def _calibration_texts(bundle: Bundle, calibration: Any, size: int,
                       samples: Samples | None = None) -> tuple[list[str], str]:
    if calibration is None:
        samples = samples if samples is not None else _samples(bundle)
        examples, source = samples["calibration"] if samples["calibration"][0] else samples["validation"]
        texts = [example.text for example in examples]
        if not texts:
            raise DataError(
                f"no calibration texts for INT8: {bundle.path} has no training sample next to it "
                f"({samples_dir(bundle.path)}/ is written by distilintent train and is not copied with the bundle); "
                "pass --calibration FILE (texts like the ones users send, one per line, or a data file)")
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
