"""distilintent.sdk: IntentDetector and detect_intent on a tiny exported bundle."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distilintent import sdk
from distilintent.core.bundle import Bundle, update_bundle
from distilintent.core.errors import BundleError, MissingExtraError
from distilintent.sdk import IntentDetector, IntentResult
from distilintent.sdk.runtimes import buckets_for

REPO = Path(__file__).resolve().parents[1]
VARIANTS = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
TEXTS = ["hello there", "book a flight to Paris", "will it rain tomorrow", "bye", "see you soon my friend",
         "what is the weather like in the city of new york on the weekend of the 14th"]


@pytest.fixture(scope="module")
def detector(exported_bundle: Path):
    with IntentDetector(exported_bundle) as det:
        yield det


def edit_manifest(source: Path, target: Path, **changes) -> Path:
    """A copy of ``source`` with top-level manifest keys changed (checksums recomputed)."""
    shutil.copytree(source, target)

    def change(_root: Path, manifest: dict) -> dict:
        for key, value in changes.items():
            if callable(value):
                value = value(manifest.get(key))
            manifest[key] = value
        return manifest

    update_bundle(target, change)
    return target


# -- API ------------------------------------------------------------------------------------------


def test_detect_returns_a_ranked_result(detector: IntentDetector) -> None:
    result = detector.detect("book a flight to Paris")
    assert isinstance(result, IntentResult)
    assert result.text == "book a flight to Paris"
    assert result.intent in detector.labels and not result.is_fallback
    assert result.ranking[0] == (result.intent, result.confidence)
    confidences = [conf for _, conf in result.ranking]
    assert confidences == sorted(confidences, reverse=True) and 0.0 < confidences[0] <= 1.0
    assert {name for name, _ in result.ranking} == set(detector.labels)  # top_k=10 > 4 labels: all of them
    assert json.loads(result.to_json())["intent"] == result.intent


def test_attributes(detector: IntentDetector, exported_bundle: Path) -> None:
    assert detector.labels == ("greet", "goodbye", "book_flight", "weather")
    assert detector.manifest["labels"] == list(detector.labels)
    assert detector.variant.name in Bundle.open(exported_bundle).variants
    assert detector.variant.name == "onnx-int8"  # the first of AUTO_ORDER present
    assert (detector.variant.backend, detector.variant.precision) == sdk.AUTO_ORDER[0]
    assert "onnx-int8" in repr(detector)


@pytest.mark.parametrize(("backend", "precision"), VARIANTS)
def test_every_variant_detects_consistently(exported_bundle: Path, backend: str, precision: str) -> None:
    with IntentDetector(exported_bundle, backend=backend, precision=precision, threads=1, top_k=2) as det:
        assert (det.variant.backend, det.variant.precision) == (backend, precision)
        singles = [det.detect(text) for text in TEXTS]
        assert det.detect_batch(TEXTS, batch_size=1) == singles
        # ONNX Runtime's dynamic INT8 quantizes activations with one range per batch: batch mates matter
        atol = 0.03 if (backend, precision) == ("onnxruntime", "int8") else 1e-5
        for batch_size in (2, 32):
            batch = det.detect_batch(TEXTS, batch_size=batch_size)
            np.testing.assert_allclose([r.confidence for r in batch], [r.confidence for r in singles], atol=atol)
        logits = det.logits(TEXTS)
        assert logits.dtype == np.float32 and logits.shape == (len(TEXTS), 4)
        assert [det.labels[i] for i in logits.argmax(-1)] == [r.intent for r in singles]
        proba = det.predict_proba(TEXTS)
        np.testing.assert_allclose(proba.sum(-1), 1.0, atol=1e-9)
        np.testing.assert_allclose(proba.max(-1), [r.confidence for r in singles], atol=atol)
        assert all(len(r.ranking) == 2 for r in singles)


def test_closed_detector_refuses_to_work(exported_bundle: Path) -> None:
    with IntentDetector(exported_bundle) as det:
        det.detect("hi")
    with pytest.raises(RuntimeError, match="closed"):
        det.detect("hi")
    det.close()  # idempotent


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_close_racing_calls_gives_results_or_runtime_errors_only(exported_bundle: Path, backend: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls in flight when ``close()`` comes finish on the model; later ones raise the documented error."""
    import threading
    import time

    from distilintent.sdk import runtimes

    padding = runtimes.pad_into
    inside = threading.Event()

    def slow_padding(*args: object) -> None:  # widens the moment between "not closed" and the model's run
        inside.set()
        time.sleep(0.01)
        padding(*args)

    monkeypatch.setattr(runtimes, "pad_into", slow_padding)
    det = IntentDetector(exported_bundle, backend=backend, precision="fp32", threads=1)
    outcomes: list[object] = []

    def work() -> None:
        for _ in range(100):
            try:
                outcomes.append(det.detect_batch(["book a flight to Paris", "hello there"])[0].intent)
            except Exception as err:  # noqa: BLE001 - the test records every kind of failure
                outcomes.append(err)
                return

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert inside.wait(10)
    det.close()
    for thread in threads:
        thread.join()
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(errors) == 3 and all(type(err) is RuntimeError and "closed" in str(err) for err in errors), errors
    assert len(outcomes) > 3 and all(isinstance(outcome, str) for outcome in outcomes if outcome not in errors)


def test_to_rasa_shape(detector: IntentDetector) -> None:
    parsed = detector.detect("hello there").to_rasa()
    assert set(parsed) == {"intent", "intent_ranking"}
    assert set(parsed["intent"]) == {"name", "confidence"}
    assert parsed["intent_ranking"][0]["name"] == parsed["intent"]["name"]
    assert all(set(item) == {"name", "confidence"} for item in parsed["intent_ranking"])


# -- fallback -------------------------------------------------------------------------------------


def test_threshold_gives_the_fallback_intent_and_keeps_the_ranking(exported_bundle: Path) -> None:
    with IntentDetector(exported_bundle, fallback_threshold=1.0, fallback_intent="out_of_scope") as det:
        result = det.detect("hello there")
    assert result.is_fallback and result.intent == "out_of_scope"
    assert result.ranking[0][0] in det.labels and result.confidence == result.ranking[0][1]
    assert result.to_rasa()["intent"]["name"] == "out_of_scope"
    with IntentDetector(exported_bundle, fallback_threshold=0.0) as det:
        assert not det.detect("hello there").is_fallback


def test_threshold_and_temperature_come_from_the_manifest(exported_bundle: Path, tmp_path: Path) -> None:
    path = edit_manifest(exported_bundle, tmp_path / "calibrated",
                         calibration={"temperature": 100.0, "fallback_threshold": 0.9})
    with IntentDetector(path) as det:
        result = det.detect("hello there")
        assert det.fallback_threshold == 0.9 and det.temperature == 100.0
        assert result.is_fallback and result.intent == "nlu_fallback"
        assert abs(result.confidence - 0.25) < 0.01  # T=100 flattens 4 labels to ~uniform
    with IntentDetector(path, fallback_threshold=0.1) as det:  # an explicit threshold wins
        assert not det.detect("hello there").is_fallback


def test_the_out_of_scope_label_is_a_fallback(exported_bundle: Path, tmp_path: Path) -> None:
    with IntentDetector(exported_bundle) as det:
        predicted = det.detect("hello there").intent
    path = edit_manifest(exported_bundle, tmp_path / "oos", oos_label=predicted)
    with IntentDetector(path) as det:
        result = det.detect("hello there")
    assert result.is_fallback and result.intent == "nlu_fallback" and result.ranking[0][0] == predicted


# -- inputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 1, 2.5, b"hello", ["hello"], {"text": "hi"}])
def test_non_str_is_a_type_error(detector: IntentDetector, value: object) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        detector.detect(value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        detector.detect_batch(["ok", value])  # type: ignore[list-item]


def test_a_single_str_is_not_a_batch(detector: IntentDetector) -> None:
    with pytest.raises(TypeError, match="single str"):
        detector.detect_batch("hello")


@pytest.mark.parametrize("text", ["", " ", "\n\t ", "\u3000\u2003"])
def test_empty_or_whitespace_is_the_fallback_without_running_the_model(
    exported_bundle: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with IntentDetector(exported_bundle) as det:
        calls = []
        real = det._runtime.run_outputs
        monkeypatch.setattr(det._runtime, "run_outputs", lambda ids: calls.append(ids) or real(ids))
        result = det.detect(text)
        assert det.detect_batch([text, text]) == [result, result]
        assert calls == []  # the model did not run
        det.detect("hello")
        assert len(calls) == 1  # ... and this is how it is counted when it does
    assert result == IntentResult(text, "nlu_fallback", 0.0, (), True)


def test_detect_batch_mixes_empty_and_real_texts_in_order(detector: IntentDetector) -> None:
    texts = ["hello there", "", "bye", "   ", "book a flight to Paris"]
    results = detector.detect_batch(texts)
    assert [r.text for r in results] == texts
    assert [r.is_fallback for r in results] == [False, True, False, True, False]
    single = detector.detect("bye")  # onnx-int8: batch mates change the activation range a little
    assert results[2].intent == single.intent and abs(results[2].confidence - single.confidence) < 0.03
    assert detector.detect_batch([]) == []
    assert detector.logits([]).shape == (0, 4)


def test_long_text_is_truncated_to_max_length(detector: IntentDetector) -> None:
    head = "book a flight to paris " * 2  # 12 tokens + [CLS] [SEP] < 16
    long = head + "and then " * 20_000
    result = detector.detect(long)
    assert result.text == long and result.intent in detector.labels
    assert len(detector._encoder.token_ids([long])[0]) == detector.max_length == 16


@pytest.mark.parametrize("text", ["ünïcödé", "你好，世界", "مرحبا بالعالم", "🙂🚀✈️", "e\u0301\u200b\u200d", "a\x00b",
                                  "\ud7ff\U0010ffff", "Ǆ ǅ ǆ ﬁ"])
def test_any_unicode_works(detector: IntentDetector, text: str) -> None:
    result = detector.detect(text)
    assert result.intent in detector.labels and 0.0 < result.confidence <= 1.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_any_text_gives_a_valid_result(detector: IntentDetector, text: str) -> None:
    result = detector.detect(text)
    if text.strip():
        assert result.intent in detector.labels and abs(sum(c for _, c in result.ranking) - 1.0) < 1e-6
    else:
        assert result.is_fallback and result.confidence == 0.0


# -- errors ---------------------------------------------------------------------------------------


def test_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model bundle not found"):
        IntentDetector(tmp_path / "nope")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        IntentDetector(tmp_path)


def test_bundle_without_variants_says_to_export(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="no exported runtime model; run: distilintent export --model"):
        IntentDetector(tiny_bundle)


def test_corrupt_variant_file_is_a_bundle_error(exported_bundle: Path, tmp_path: Path) -> None:
    path = shutil.copytree(exported_bundle, tmp_path / "corrupt")
    model = path / "onnx/model_int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.unlink()
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256"):
        IntentDetector(path, backend="onnxruntime", precision="int8")
    with IntentDetector(path, backend="openvino", precision="int8") as det:  # other variants still load
        assert det.detect("hi").intent


def test_missing_variant_falls_back_with_a_warning(exported_bundle: Path, tmp_path: Path) -> None:
    path = edit_manifest(exported_bundle, tmp_path / "onnx-only",
                         variants=lambda variants: {k: v for k, v in variants.items() if k.startswith("onnx")})
    with pytest.warns(UserWarning, match="has no openvino/int8 variant .* using onnx-int8"):
        det = IntentDetector(path, backend="openvino", precision="int8")
    assert det.variant.name == "onnx-int8"
    with pytest.warns(UserWarning, match="using onnx-fp32"):
        assert IntentDetector(path, backend="openvino", precision="fp32").variant.name == "onnx-fp32"


def test_missing_runtime_names_the_extra(exported_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'distilintent\[openvino\]'"):
        IntentDetector(exported_bundle, backend="openvino")
    assert IntentDetector(exported_bundle).variant.backend == "onnxruntime"  # auto skips it


def test_missing_runtime_for_the_only_variant(exported_bundle: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = edit_manifest(exported_bundle, tmp_path / "ov-only",
                         variants=lambda variants: {k: v for k, v in variants.items() if k.startswith("openvino")})
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingExtraError, match=r"no such runtime is installed: pip install 'distilintent\[openvino"):
        IntentDetector(path)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backend": "tensorflow"}, "backend must be"),
    ({"precision": "fp16"}, "precision must be"),
    ({"threads": 0}, "threads must be"),
    ({"top_k": 0}, "top_k must be"),
    ({"fallback_threshold": 1.5}, "fallback_threshold must be"),
    ({"fallback_intent": ""}, "fallback_intent must be"),
])
def test_bad_arguments(exported_bundle: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IntentDetector(exported_bundle, **kwargs)


def test_bad_batch_size(detector: IntentDetector) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        detector.detect_batch(["hi"], batch_size=0)


# -- memory, threads, asyncio -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_works_after_the_bundle_directory_is_deleted(exported_bundle: Path, tmp_path: Path, backend: str) -> None:
    path = shutil.copytree(exported_bundle, tmp_path / "temporary")
    with IntentDetector(path, backend=backend, precision="int8") as det:
        shutil.rmtree(path)
        short, long = det.detect("hi"), det.detect("book a flight to paris tomorrow morning please")  # 2 buckets
        assert short.intent in det.labels and long.intent in det.labels
        assert len(det.detect_batch(TEXTS)) == len(TEXTS)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_sixteen_threads_get_the_sequential_results(exported_bundle: Path, backend: str) -> None:
    texts = [f"{TEXTS[i % len(TEXTS)]} {'again ' * (i % 7)}".strip() for i in range(200)]
    with IntentDetector(exported_bundle, backend=backend, precision="int8", threads=1) as det:
        expected = [det.detect(text) for text in texts]
        barrier = threading.Barrier(16)

        def work(_: int) -> list[IntentResult]:
            barrier.wait()
            return [det.detect(text) for text in texts]

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(work, range(16)))
    for got in results:
        assert [r.intent for r in got] == [r.intent for r in expected]
        np.testing.assert_allclose([r.confidence for r in got], [r.confidence for r in expected], atol=1e-6)


def test_adetect(detector: IntentDetector) -> None:
    async def main() -> list[IntentResult]:
        return await asyncio.gather(*(detector.adetect(text) for text in TEXTS))

    assert asyncio.run(main()) == [detector.detect(text) for text in TEXTS]
    assert asyncio.run(detector.adetect_batch(TEXTS)) == detector.detect_batch(TEXTS)


def test_openvino_is_latency_tuned_with_fp32_precision_and_static_buckets(exported_bundle: Path) -> None:
    with IntentDetector(exported_bundle, backend="openvino", precision="fp32", threads=1) as det:
        runtime = det._runtime
        assert runtime.buckets == (8, 16) == buckets_for(16)
        det.detect("hi")
        compiled = runtime._static[(1, 8)]._compiled
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
        assert str(compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert buckets_for(32) == (8, 16, 32) and buckets_for(100) == (8, 16, 32, 64, 100) and buckets_for(5) == (5,)


# -- detect_intent ----------------------------------------------------------------------------------


def test_detect_intent_caches_one_detector_per_path(exported_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk.clear_cache()
    try:
        created = []
        real_init = IntentDetector.__init__

        def counting_init(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            created.append(args)
            real_init(self, *args, **kwargs)

        monkeypatch.setattr(IntentDetector, "__init__", counting_init)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda text: sdk.detect_intent(text, model=exported_bundle), TEXTS * 4))
        assert len(created) == 1
        assert results[0] == sdk.get_detector(str(exported_bundle) + "/").detect(TEXTS[0])
        monkeypatch.setenv(sdk.MODEL_ENV, str(exported_bundle))
        assert sdk.detect_intent("hello there") == sdk.detect_intent("hello there", model=exported_bundle)
        assert len(created) == 1
    finally:
        sdk.clear_cache()


def test_detect_intent_without_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sdk.MODEL_ENV, raising=False)
    with pytest.raises(ValueError, match="DISTILINTENT_MODEL"):
        sdk.detect_intent("hello")


@pytest.mark.slow
def test_serving_imports_neither_torch_nor_transformers(exported_bundle: Path) -> None:
    code = (
        "import sys\n"
        "from distilintent import sdk\n"
        f"path = {str(exported_bundle)!r}\n"
        "print(sdk.detect_intent('book a flight', model=path).intent)\n"
        "for backend in ('onnxruntime', 'openvino'):\n"
        "    for precision in ('fp32', 'int8'):\n"
        "        with sdk.IntentDetector(path, backend=backend, precision=precision) as det:\n"
        "            det.detect('hello'); det.detect_batch(['a', 'b c'])\n"
        "leaked = sorted(m for m in ('torch', 'transformers', 'nncf', 'onnx') if m in sys.modules)\n"
        "print('leaked', leaked)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "leaked []"


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**32 - 1), st.floats(0.05, 20.0), st.booleans())
def test_the_batch_ranking_equals_the_per_text_ranking(rows: int, labels: int, seed: int, temperature: float,
                                                       tied: bool) -> None:
    """One softmax and one argpartition for the batch give what a softmax and a stable argsort per text gave."""
    from distilintent.core.metrics import softmax
    from distilintent.core.results import top_k

    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (rows, labels)).astype(np.float32)
    if tied:  # exact ties between labels 0 and 1
        logits[:, 1 % labels] = logits[:, 0]
    for k in {1, max(1, labels // 2), labels}:
        indices, values = top_k(softmax(logits, temperature), k)
        for row in range(rows):
            probs = softmax(logits[row], temperature)
            order = np.argsort(-probs, kind="stable")[:k]
            if not tied or k == labels:  # a tie across the k-th place may keep either label
                assert indices[row].tolist() == order.tolist()
            np.testing.assert_allclose(values[row], probs[order], rtol=1e-12)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_serving_leaves_the_processs_floating_point_alone(exported_bundle: Path, backend: str) -> None:
    """No flush-to-zero / denormals-are-zero left behind in the caller's thread: users' numpy keeps IEEE 754."""
    smallest_normal = np.float64(2.2250738585072014e-308)
    with IntentDetector(exported_bundle, backend=backend) as det:
        det.detect("book a flight to Paris")
        det.detect_batch(["hello there", "bye for now"])
        assert smallest_normal / np.float64(4.0) > 0  # a subnormal result, not flushed to 0
        assert np.float32(1e-40) * np.float32(1.0) > 0
