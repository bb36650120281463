"""Export to ONNX / OpenVINO (FP32, INT8): files, manifest, parity with torch, refusals."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TOY_TEMPLATES, tiny_train_options
from needs import need_module

need_module("torch")
need_module("openvino")

from distilintent import cli  # noqa: E402
from distilintent.core.bundle import Bundle, update_bundle  # noqa: E402
from distilintent.core.errors import DataError  # noqa: E402
from distilintent.core.samples import read_samples, samples_dir  # noqa: E402
from distilintent.sdk import IntentDetector  # noqa: E402
from distilintent.training import export as export_module  # noqa: E402
from distilintent.training.export import MIN_AGREEMENT, ExportError, Int8AgreementError, export_bundle  # noqa: E402

VARIANTS = {
    "onnx-fp32": ("onnxruntime", "fp32", "onnx/model.onnx", None),
    "onnx-int8": ("onnxruntime", "int8", "onnx/model_int8.onnx", None),
    "openvino-fp32": ("openvino", "fp32", "openvino/model.xml", "openvino/model.bin"),
    "openvino-int8": ("openvino", "int8", "openvino/model_int8.xml", "openvino/model_int8.bin"),
}
TEXTS = ["hi", "book a flight to Paris for two people on friday morning please", "will it rain tomorrow?",
         "ünïcödé 你好 🙂", "a " * 40]


def copy_bundle(source: Path, target: Path) -> Path:
    """The bundle and the samples training keeps next to it (``shutil.copytree`` of the bundle has none)."""
    shutil.copytree(source, target)
    if samples_dir(source).is_dir():
        shutil.copytree(samples_dir(source), samples_dir(target))
    return target


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
    sample = read_samples(exported_bundle, "validation")
    index = {label: i for i, label in enumerate(bundle.labels)}
    truth = np.asarray([index[example.label] for example in sample])
    reference = export_module._torch_outputs(export_module.load_bundle_model(bundle),
                                             export_module.TextEncoder.from_bundle(bundle),
                                             [example.text for example in sample])[0].argmax(-1)
    for name, (backend, precision, file, weights) in VARIANTS.items():
        variant = bundle.variants[name]
        assert (variant.backend, variant.precision) == (backend, precision)
        assert (variant.file, variant.weights) == (file, weights)
        entry = bundle.manifest["variants"][name]
        assert entry["num_labels"] == len(bundle.labels)
        assert entry["size_bytes"] == sum((exported_bundle / f).stat().st_size for f in (file, weights) if f)
        assert entry["parity"]["n"] == entry["parity"]["n_batch1"] == 6
        assert entry["parity"]["sample"] == "tiny.samples/validation.jsonl"
        # What the manifest records is what the served runtime does on the sample, batched and one by one.
        with IntentDetector(exported_bundle, backend=backend, precision=precision) as detector:
            batched = detector.logits([example.text for example in sample]).argmax(-1)
            single = np.asarray([detector.logits([example.text])[0].argmax() for example in sample])
        assert entry["parity"]["top1_agreement"] == pytest.approx(np.mean(batched == reference))
        assert entry["parity"]["top1_agreement_batch1"] == pytest.approx(np.mean(single == reference))
        assert entry["validation_accuracy"] == pytest.approx(np.mean(batched == truth))
        assert entry["export"].get("opset", entry["export"].get("onnx", {}).get("opset")) == 18
        if precision == "fp32":
            assert entry["parity"]["max_abs_logit_diff"] <= 1e-3
            assert entry["parity"]["top1_agreement"] == entry["parity"]["top1_agreement_batch1"] == 1.0
        else:
            assert entry["export"]["calibration_source"] == "tiny.samples/calibration.jsonl"
    assert bundle.manifest["export"]["reference_sample"]["n"] == 6
    assert bundle.manifest["export"]["min_agreement"] == 0.5
    assert bundle.manifest["export"]["reference_sample"]["torch_accuracy"] == pytest.approx(np.mean(reference == truth))


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
    path = copy_bundle(tiny_bundle, tmp_path / "bundle")
    before = snapshot(path)
    with pytest.raises(Int8AgreementError, match=r"onnx-int8: top intent agrees with FP32 on .* \(need 101%\)"):
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
    path = shutil.copytree(tiny_bundle, tmp_path / "bundle")  # without its samples: checked on the probe texts
    assert cli.main(["export", "--model", str(path), "--format", "onnx"]) == 0
    out = capsys.readouterr().out.splitlines()
    entry = Bundle.open(path).manifest["variants"]["onnx-fp32"]
    assert set(Bundle.open(path).variants) == {"onnx-fp32"}
    assert entry["parity"]["n"] == len(export_module.PROBE_TEXTS) and entry["validation_accuracy"] is None
    assert entry["parity"]["sample"].startswith("built-in probe texts (no samples in bundle.samples/)")
    assert out[1].split() == ["onnx-fp32", f"{entry['size_bytes'] / 1e6:.1f}MB",
                              f"{entry['parity']['max_abs_logit_diff']:.2e}", "100.00%", "-"]
    assert out[2:] == [f"exported to {path}"]
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


def test_calibration_texts_from_files_lists_and_the_samples_next_to_the_bundle(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = Bundle.open(tiny_bundle)
    texts, source = export_module._calibration_texts(bundle, None, 300)
    assert texts == [example.text for example in read_samples(tiny_bundle, "calibration")] and len(texts) == 6
    assert source == "tiny.samples/calibration.jsonl"
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


def test_int8_export_of_a_bundle_without_samples_asks_for_calibration(tiny_bundle: Path, tmp_path: Path) -> None:
    path = shutil.copytree(tiny_bundle, tmp_path / "deployed")  # a copied bundle: its samples stayed behind
    before = snapshot(path)
    with pytest.raises(DataError, match=r"no calibration texts for INT8: .*deployed has no training sample next "
                                        r"to it .*pass --calibration FILE"):
        export_bundle(path, formats=("onnx",), int8=True)
    assert snapshot(path) == before
    assert cli.main(["export", "--model", str(path), "--format", "onnx", "--int8"]) == 1


def test_an_older_bundle_with_samples_inside_exports_and_its_samples_move_out(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    path = copy_bundle(tiny_bundle, tmp_path / "old")
    kept = {name: (samples_dir(path) / f"{name}.jsonl").read_bytes() for name in ("validation", "calibration")}

    def as_before(root: Path, manifest: dict) -> dict:  # the layout bundles had before the samples moved out
        (root / "samples").mkdir()
        for name, data in kept.items():
            (root / "samples" / f"{name}.jsonl").write_bytes(data)
        manifest["samples"] = {name: f"samples/{name}.jsonl" for name in kept}
        return manifest

    update_bundle(path, as_before)
    shutil.rmtree(samples_dir(path))
    assert Bundle.open(path).read_bytes("samples/validation.jsonl") == kept["validation"]  # it still loads

    written = export_bundle(path, formats=("onnx",), int8=True, min_agreement=0.5)
    assert written["onnx-fp32"]["parity"]["sample"] == "samples/validation.jsonl"
    assert written["onnx-fp32"]["parity"]["n"] == 6
    assert written["onnx-int8"]["export"]["calibration_source"] == "samples/calibration.jsonl"
    bundle = Bundle.open(path)
    bundle.verify()
    assert "samples" not in bundle.manifest and not (path / "samples").exists()
    assert not any(name.startswith("samples/") for name in bundle.manifest["files"])
    assert {name: (samples_dir(path) / f"{name}.jsonl").read_bytes() for name in kept} == kept


def test_bad_arguments(tiny_bundle: Path) -> None:
    with pytest.raises(ValueError, match="formats must be a non-empty subset"):
        export_bundle(tiny_bundle, formats=("tflite",))
    with pytest.raises(ValueError, match="formats must be a non-empty subset"):
        export_bundle(tiny_bundle, formats=())


# -- a trained model: what a user ships, and the INT8 agreement gate at its default -------------------------


def toy_rows() -> list[dict[str, str]]:
    """The toy intents as a data file's rows, with an explicit validation split. Every text has a suffix
    (so none is a single tokenizer word or a few bytes that a weights file holds by chance)."""
    rows = []
    for intent, texts in TOY_TEMPLATES.items():
        for i, text in enumerate(texts):
            for j, suffix in enumerate((" please", " now", " ok thanks", " right away")):
                split = "validation" if (i + j) % 4 == 0 else "train"
                rows.append({"text": text + suffix, "intent": intent, "split": split})
    return rows


@pytest.fixture(scope="module")
def trained_exported(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    """``distilintent train --export`` (default agreement gate) on a small data file: the bundle and the rows."""
    root = tmp_path_factory.mktemp("shipped")
    rows = toy_rows()
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = root / "config.json"
    config.write_text(json.dumps(tiny_train_options(tiny_base)), encoding="utf-8")
    output = root / "assistant"
    assert cli.main(["train", "--data", str(data), "--output", str(output), "--config", str(config), "--export",
                     "--no-progress"]) == 0
    return output, rows


def test_a_trained_and_exported_bundle_holds_no_training_or_validation_text(
    trained_exported: tuple[Path, list[dict[str, str]]]
) -> None:
    path, rows = trained_exported
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    assert {"onnx/model_int8.onnx", "openvino/model_int8.bin", "model/model.safetensors", "tokenizer.json"} <= {
        p.relative_to(path).as_posix() for p in files}
    contents = {p.relative_to(path).as_posix(): p.read_bytes() for p in files}
    leaks = [(row["text"], name) for row in rows for name, data in contents.items()
             if row["text"].encode("utf-8") in data]
    assert leaks == []
    assert "samples" not in Bundle.open(path).manifest
    # The texts are kept next to the bundle for export and calibrate: the validation split, all of it.
    validation = sorted((row["text"], row["intent"]) for row in rows if row["split"] == "validation")
    assert sorted((e.text, e.label) for e in read_samples(path, "validation")) == validation
    assert {e.text for e in read_samples(path, "calibration")} == {r["text"] for r in rows if r["split"] == "train"}


def test_the_default_agreement_gate_keeps_a_good_int8_model(trained_exported: tuple[Path, list]) -> None:
    path, rows = trained_exported
    manifest = Bundle.open(path).manifest
    assert MIN_AGREEMENT == 0.99 and manifest["export"]["min_agreement"] == 0.99
    n = sum(row["split"] == "validation" for row in rows)
    assert set(manifest["variants"]) == set(VARIANTS)  # train --export kept both INT8 models
    for name in ("onnx-int8", "openvino-int8"):
        parity = manifest["variants"][name]["parity"]
        assert (parity["n"], parity["n_batch1"]) == (n, n)
        assert parity["top1_agreement"] == parity["top1_agreement_batch1"] == 1.0
        assert parity["sample"] == "assistant.samples/validation.jsonl"


def _add_to_logits(source: Path, delta: np.ndarray, only_batch_of_one: bool) -> None:
    """Rewrite the ONNX graph at ``source`` so that it adds ``delta`` to its logits (only for a batch of
    one text with ``only_batch_of_one``): a damaged graph that the real runtime runs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["logits_raw" if name == "logits" else name for name in node.output]
    graph.initializer.append(numpy_helper.from_array(delta.astype(np.float32), "damage_delta"))
    added = "damage_delta"
    if only_batch_of_one:
        graph.initializer.extend([numpy_helper.from_array(np.asarray(0, dtype=np.int64), "damage_zero"),
                                  numpy_helper.from_array(np.asarray(1, dtype=np.int64), "damage_one")])
        graph.node.extend([
            helper.make_node("Shape", ["logits_raw"], ["damage_shape"]),
            helper.make_node("Gather", ["damage_shape", "damage_zero"], ["damage_batch"], axis=0),
            helper.make_node("Equal", ["damage_batch", "damage_one"], ["damage_is_one"]),
            helper.make_node("Cast", ["damage_is_one"], ["damage_on"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["damage_delta", "damage_on"], ["damage_scaled"]),
        ])
        added = "damage_scaled"
    graph.node.append(helper.make_node("Add", ["logits_raw", added], ["logits"]))
    onnx.checker.check_model(model)
    onnx.save(model, str(source))


def _damaging_quantizer(monkeypatch: pytest.MonkeyPatch, delta: np.ndarray, only_batch_of_one: bool) -> None:
    real = export_module.optimize.quantize_fused

    def quantize_then_damage(source: Path, target: Path, *args, **kwargs) -> dict:
        settings = real(source, target, *args, **kwargs)
        _add_to_logits(target, delta, only_batch_of_one)
        return settings

    monkeypatch.setattr(export_module.optimize, "quantize_fused", quantize_then_damage)


def _validation_logits(path: Path) -> tuple[np.ndarray, int]:
    """The shipped ONNX INT8 model's logits on the validation sample, batched exactly as export checks
    them (dynamic INT8 results change with the batch), and the sample's size."""
    from distilintent.sdk.runtimes import load_runtime

    bundle = Bundle.open(path)
    encoder = export_module.TextEncoder.from_bundle(bundle)
    texts = [example.text for example in read_samples(path, "validation")]
    runtime = load_runtime("onnxruntime", "int8", bundle.read_bytes("onnx/model_int8.onnx"), None,
                           max_length=bundle.max_length, pad_id=encoder.pad_token_id)
    try:
        return export_module._runtime_outputs(runtime, encoder, texts)[0], len(texts)
    finally:
        runtime.close()


def test_the_default_agreement_gate_refuses_a_slightly_damaged_int8_model(
    trained_exported: tuple[Path, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damage that flips the top intent of only a few held-out texts: over half still agree, so only a
    gate as strict as the default 99 % refuses it."""
    source, _ = trained_exported
    logits, n = _validation_logits(source)
    top = logits.argmax(-1)
    ranked = np.sort(logits, axis=-1)
    margins = ranked[:, -1] - ranked[:, -2]
    closest = int(np.argmin(margins))
    runner_up = int(np.argsort(logits[closest])[-2])
    delta = np.zeros(logits.shape[1], dtype=np.float32)
    delta[runner_up] = margins[closest] + 0.05
    flipped = int(np.sum((logits + delta).argmax(-1) != top))
    assert 1 <= flipped < n / 2

    path = copy_bundle(source, tmp_path / "bundle")
    before = snapshot(path)
    _damaging_quantizer(monkeypatch, delta, only_batch_of_one=False)
    with pytest.raises(Int8AgreementError, match=re.escape(f"onnx-int8: top intent agrees with FP32 on "
                                                           f"{(n - flipped) / n:.1%} of {n} held-out texts in "
                                                           "batches of 32 (need 99%)")):
        export_bundle(path, formats=("onnx",), int8=True)
    assert snapshot(path) == before
    written = export_bundle(path, formats=("onnx",), int8=True, min_agreement=0.5)  # the same damage, lax gate
    assert written["onnx-int8"]["parity"]["top1_agreement"] == pytest.approx((n - flipped) / n)


def test_the_agreement_gate_also_runs_one_text_at_a_time(
    trained_exported: tuple[Path, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An INT8 model right in batches but wrong on single texts (what ``detect`` and the server run)."""
    source, _ = trained_exported
    logits, n = _validation_logits(source)
    wrong = int(np.bincount(logits.argmax(-1), minlength=logits.shape[1]).argmin())  # the rarest top intent
    delta = np.zeros(logits.shape[1], dtype=np.float32)
    delta[wrong] = 1e4
    share = float(np.mean(logits.argmax(-1) == wrong))
    assert share < MIN_AGREEMENT

    path = copy_bundle(source, tmp_path / "bundle")
    before = snapshot(path)
    _damaging_quantizer(monkeypatch, delta, only_batch_of_one=True)
    with pytest.raises(Int8AgreementError, match=re.escape(f"onnx-int8: top intent agrees with FP32 on {share:.1%} "
                                                           f"of {n} held-out texts one text at a time (need 99%)")):
        export_bundle(path, formats=("onnx",), int8=True)
    assert snapshot(path) == before
    written = export_bundle(path, formats=("onnx",), int8=True, min_agreement=0.0)
    parity = written["onnx-int8"]["parity"]
    assert (parity["top1_agreement"], parity["top1_agreement_batch1"]) == (1.0, pytest.approx(share))


# -- the graph built for inference: ONNX Runtime's fusions, INT8 of the fused graph -----------------------------

FUSED_TINY = {"Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2, "EmbedLayerNormalization": 1}


def _ort_logits(model: bytes, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Batched (padded to the longest) and one-by-one logits of an ONNX model on ``ids``."""
    from distilintent.sdk.runtimes import OnnxRuntimeModel

    runtime = OnnxRuntimeModel(model, "fp32")
    try:
        return runtime.run(ids), np.stack([runtime.run([tokens])[0] for tokens in ids])
    finally:
        runtime.close()


def test_the_fused_graph_holds_fused_operators_and_matches_torch(tiny_bundle: Path, tmp_path: Path) -> None:
    from distilintent.training import exporters, optimize

    bundle = Bundle.open(tiny_bundle)
    model = export_module.load_bundle_model(bundle)
    encoder = export_module.TextEncoder.from_bundle(bundle)
    plain, fused = tmp_path / "plain.onnx", tmp_path / "fused.onnx"
    exporters.export_onnx(model, plain, 18, bundle.max_length)
    settings = optimize.fuse_onnx(plain, fused, 2, 32, 2)
    counts = optimize.op_counts(fused)
    assert {op: counts.get(op, 0) for op in FUSED_TINY} == FUSED_TINY == settings["fused_ops"]
    assert "Softmax" not in counts and "Erf" not in counts  # inside Attention and BiasGelu
    reference = export_module._torch_outputs(model, encoder, TEXTS)[0]
    batched, single = _ort_logits(fused.read_bytes(), encoder.token_ids(TEXTS))
    assert np.max(np.abs(batched - reference)) <= export_module.TOLERANCE
    assert np.max(np.abs(single - reference)) <= export_module.TOLERANCE


def test_export_serves_the_fused_graph_and_records_how_each_variant_was_built(exported_bundle: Path) -> None:
    from distilintent.training import optimize

    counts = optimize.op_counts(exported_bundle / "onnx/model.onnx")
    assert {op: counts.get(op, 0) for op in FUSED_TINY} == FUSED_TINY
    int8_counts = optimize.op_counts(exported_bundle / "onnx/model_int8.onnx")
    assert int8_counts.get("QAttention") == 2 and "Attention" not in int8_counts  # INT8 of the fused graph
    variants = Bundle.open(exported_bundle).manifest["variants"]
    assert variants["onnx-fp32"]["graph"] == "fused"
    entry = variants["onnx-int8"]
    assert "weights" not in entry  # that key names an OpenVINO weights file
    chosen = export_module.ONNX_INT8
    assert (entry["graph"], entry["quantization"], entry["weight_type"], entry["activation_type"],
            entry["per_channel"]) == ("fused", chosen["quantization"], chosen["weights"], chosen["activations"],
                                      chosen["per_channel"])
    assert variants["openvino-int8"]["quantization"] == "static"


def test_the_chosen_int8_variant_passes_the_default_gates(trained_exported: tuple[Path, list]) -> None:
    from distilintent.training import optimize

    path, _ = trained_exported
    entry = Bundle.open(path).manifest["variants"]["onnx-int8"]
    assert (entry["graph"], entry["quantization"]) == ("fused", export_module.ONNX_INT8["quantization"])
    assert min(entry["parity"]["top1_agreement"], entry["parity"]["top1_agreement_batch1"]) >= MIN_AGREEMENT
    layers = optimize.op_counts(path / "onnx/model.onnx")["Attention"]
    counts = optimize.op_counts(path / "onnx/model_int8.onnx")
    assert layers > 0 and counts.get("QAttention") == layers  # INT8 of the fused graph, attention included
    assert counts.get("DynamicQuantizeMatMul", 0) + counts.get("MatMulInteger", 0) > 0


def test_static_int8_results_do_not_depend_on_batch_mates(trained_exported: tuple[Path, list], tmp_path: Path) -> None:
    source, _ = trained_exported
    logits = {}
    for quantization in ("static", "dynamic"):
        path = copy_bundle(source, tmp_path / quantization / "assistant")
        written = export_bundle(path, formats=("onnx",), int8=True, onnx_int8={"quantization": quantization})
        assert written["onnx-int8"]["quantization"] == quantization
        encoder = export_module.TextEncoder.from_bundle(Bundle.open(path))
        logits[quantization] = _ort_logits((path / "onnx/model_int8.onnx").read_bytes(), encoder.token_ids(TEXTS))
    batched, alone = logits["static"]
    assert np.max(np.abs(batched - alone)) <= 1e-5
    batched, alone = logits["dynamic"]  # the contrast: per-call activation ranges change with the batch
    assert np.max(np.abs(batched - alone)) > 1e-5


def test_fusions_that_do_not_apply_leave_the_plain_graph_serving(tiny_bundle: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Another onnxruntime whose fusion patterns miss our graph (seen with 1.23 in the Rasa venv): warn, export."""
    from distilintent.sdk import IntentDetector
    from distilintent.training import optimize

    def no_fusion(*args: object) -> dict:
        raise ValueError("the ONNX Runtime fusions did not apply to the exported graph: SkipLayerNormalization 0 of 4")

    monkeypatch.setattr(optimize, "fuse_onnx", no_fusion)
    path = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    with caplog.at_level("WARNING", logger="distilintent.training.export"):
        export_module.export_bundle(path, formats=("onnx",), int8=True, min_agreement=0.5,
                                    calibration=["hello there", "book a flight to Paris", "bye", "will it rain"])
    assert "exporting the plain graph" in caplog.text
    variants = Bundle.open(path).manifest["variants"]
    assert (variants["onnx-fp32"]["graph"], variants["onnx-int8"]["graph"]) == ("plain", "plain")
    assert "Attention" not in optimize.op_counts(path / "onnx/model.onnx")
    with IntentDetector(path, precision="fp32") as detector:
        assert detector.detect("book a flight to Paris").ranking
