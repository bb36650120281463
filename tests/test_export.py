"""Export to ONNX / OpenVINO (FP32, INT8): files, manifest, parity with torch, refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from needs import need_module

need_module("torch")
need_module("openvino")

from distilintent import cli  # noqa: E402
from distilintent.core.bundle import Bundle  # noqa: E402
from distilintent.core.errors import DataError  # noqa: E402
from distilintent.sdk import IntentDetector  # noqa: E402
from distilintent.training import export as export_module  # noqa: E402
from distilintent.training.export import ExportError, export_bundle  # noqa: E402

VARIANTS = {
    "onnx-fp32": ("onnxruntime", "fp32", "onnx/model.onnx", None),
    "onnx-int8": ("onnxruntime", "int8", "onnx/model_int8.onnx", None),
    "openvino-fp32": ("openvino", "fp32", "openvino/model.xml", "openvino/model.bin"),
    "openvino-int8": ("openvino", "int8", "openvino/model_int8.xml", "openvino/model_int8.bin"),
}
TEXTS = ["hi", "book a flight to Paris for two people on friday morning please", "will it rain tomorrow?",
         "ünïcödé 你好 🙂", "a " * 40]


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` (and the directory's siblings) with its sha256."""
    files = {p.relative_to(path.parent).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(path.parent.rglob("*")) if p.is_file()}
    files["<dirs>"] = ",".join(sorted(p.name for p in path.parent.iterdir()))
    return files


def test_export_writes_every_variant_with_its_manifest_entry(exported_bundle: Path) -> None:
    bundle = Bundle.open(exported_bundle)
    bundle.verify()  # every file's sha256 is recorded
    assert set(bundle.variants) == set(VARIANTS)
    for name, (backend, precision, file, weights) in VARIANTS.items():
        variant = bundle.variants[name]
        assert (variant.backend, variant.precision) == (backend, precision)
        assert (variant.file, variant.weights) == (file, weights)
        entry = bundle.manifest["variants"][name]
        assert entry["num_labels"] == len(bundle.labels)
        assert entry["size_bytes"] == sum((exported_bundle / f).stat().st_size for f in (file, weights) if f)
        assert entry["parity"]["n"] == 6 and entry["parity"]["sample"] == "samples/validation.jsonl"
        assert 0.0 <= entry["parity"]["top1_agreement"] <= 1.0
        assert 0.0 <= entry["validation_accuracy"] <= 1.0
        assert entry["export"].get("opset", entry["export"].get("onnx", {}).get("opset")) == 18
        if precision == "fp32":
            assert entry["parity"]["max_abs_logit_diff"] <= 1e-3
            assert entry["parity"]["top1_agreement"] == 1.0
    assert "calibration_source" in bundle.manifest["variants"]["openvino-int8"]["export"]
    assert bundle.manifest["export"]["reference_sample"]["n"] == 6


def test_onnx_file_has_dynamic_axes_logits_output_and_no_external_data(exported_bundle: Path) -> None:
    import onnx

    model = onnx.load(str(exported_bundle / "onnx/model.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["logits", "sentence_embedding"]
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        assert all(dim.dim_param and not dim.dim_value for dim in dims)  # batch and sequence are symbolic
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert sorted(p.name for p in (exported_bundle / "onnx").iterdir()) == ["model.onnx", "model_int8.onnx"]


def test_openvino_ir_keeps_fp32_weights(exported_bundle: Path) -> None:
    xml = (exported_bundle / "openvino/model.xml").read_text()
    assert 'element_type="f32"' in xml and 'element_type="f16"' not in xml
    int8_xml = (exported_bundle / "openvino/model_int8.xml").read_text()
    assert "FakeQuantize" in int8_xml or 'element_type="i8"' in int8_xml


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_runtimes_match_torch(exported_bundle: Path, backend: str) -> None:
    import torch

    from distilintent.core.tokenization import TextEncoder
    from distilintent.training.model import load_bundle_model

    bundle = Bundle.open(exported_bundle)
    model = load_bundle_model(bundle)
    encoder = TextEncoder.from_str(bundle.read_bytes("tokenizer.json").decode(), bundle.max_length)
    with IntentDetector(exported_bundle, backend=backend, precision="fp32") as detector:
        batched = detector.logits(TEXTS)
        one_by_one = np.stack([detector.logits([text])[0] for text in TEXTS])  # OpenVINO: static buckets
    with torch.inference_mode():
        ids, mask = encoder.encode(TEXTS)
        reference = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), len(bundle.labels))
    np.testing.assert_allclose(batched, reference, atol=1e-3, rtol=0)
    np.testing.assert_allclose(one_by_one, reference, atol=1e-3, rtol=0)


def test_int8_agreement_below_the_minimum_is_refused_and_the_bundle_is_unchanged(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    path = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    before = snapshot(path)
    with pytest.raises(ExportError, match=r"onnx-int8: top intent agrees with FP32 on .* \(need 101%\)"):
        export_bundle(path, formats=("onnx",), int8=True, min_agreement=1.01)
    assert snapshot(path) == before
    assert Bundle.open(path).variants == {}


def test_fp32_parity_failure_is_refused_and_the_bundle_is_unchanged(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    before = snapshot(path)
    real = export_module._torch_outputs

    def disagreeing(*args: object) -> tuple:  # torch "disagrees" with the runtime
        logits, embedding = real(*args)
        return logits + 0.01, embedding

    monkeypatch.setattr(export_module, "_torch_outputs", disagreeing)
    with pytest.raises(ExportError, match=r"onnx-fp32: logits differ from torch by up to 1\.0\de-02"):
        export_bundle(path, formats=("onnx",))
    assert snapshot(path) == before


def test_cli_exports_incrementally_and_keeps_other_variants(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    assert cli.main(["export", "--model", str(path), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "onnx-fp32" in out and "openvino" not in out
    assert set(Bundle.open(path).variants) == {"onnx-fp32"}
    onnx_before = (path / "onnx/model.onnx").read_bytes()

    calibration = tmp_path / "calibration.txt"
    calibration.write_text("hello there\nbook me a flight\n\nis it sunny\n", encoding="utf-8")
    written = export_bundle(path, formats=("openvino",), int8=True, calibration=calibration, min_agreement=0.5)
    assert set(written) == {"openvino-fp32", "openvino-int8"}
    bundle = Bundle.open(path)
    bundle.verify()
    assert set(bundle.variants) == {"onnx-fp32", "openvino-fp32", "openvino-int8"}
    assert (path / "onnx/model.onnx").read_bytes() == onnx_before
    quantization = bundle.manifest["variants"]["openvino-int8"]["export"]
    assert quantization["calibration_source"] == str(calibration)
    assert quantization["quantization"]["calibration_size"] == 3


def test_cli_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export", "--model", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("distilintent export: error: model bundle not found") and "\n" not in err


def test_calibration_texts_from_files_lists_and_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    texts, source = export_module._calibration_texts(bundle, None, 300)
    assert len(texts) == 6 and source == "bundle samples"
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"text {i}", "intent": f"l{i % 2}"}) for i in range(10)))
    sample, source = export_module._calibration_texts(bundle, jsonl, 4)
    assert len(sample) == 4 and source == str(jsonl)
    assert export_module._calibration_texts(bundle, jsonl, 4)[0] == sample  # a deterministic sample
    assert export_module._calibration_texts(bundle, ["a", " ", "b"], 300) == (["a", "b"], "texts given")
    with pytest.raises(DataError, match="calibration file not found"):
        export_module._calibration_texts(bundle, tmp_path / "nope.txt", 300)
    with pytest.raises(DataError, match="no calibration texts"):
        export_module._calibration_texts(bundle, [], 300)


def test_bad_arguments(tiny_bundle: Path) -> None:
    with pytest.raises(ValueError, match="formats must be a non-empty subset"):
        export_bundle(tiny_bundle, formats=("tflite",))
    with pytest.raises(ValueError, match="formats must be a non-empty subset"):
        export_bundle(tiny_bundle, formats=())
