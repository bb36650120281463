"""Component tests run by the Rasa venv's pytest (see ``tests/rasa/test_rasa.py``), with Rasa imported.

``DISTILINTENT_TEST_BUNDLE`` is an exported toy bundle whose labels are greet, goodbye, book_flight, weather.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
from rasa.engine.graph import ExecutionContext, GraphSchema
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from rasa.shared.exceptions import InvalidConfigException
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from distilintent.plugin import DistilIntentClassifier
from distilintent.sdk import IntentDetector

BUNDLE = Path(os.environ["DISTILINTENT_TEST_BUNDLE"])
EXAMPLES = {"greet": ["hello", "hi there"], "goodbye": ["bye", "see you later"],
            "book_flight": ["book a flight"], "weather": ["will it rain"]}
TEXTS = ["hello friend", "bye bye", "a flight to rome", "rain tomorrow", "", "  "]


def training_data(examples: dict[str, list[str]] = EXAMPLES) -> TrainingData:
    return TrainingData([Message(data={"text": text, "intent": intent})
                         for intent, texts in examples.items() for text in texts])


def storage_at(path: Path) -> LocalModelStorage:
    path.mkdir(parents=True, exist_ok=True)  # Rasa creates the storage directory before training
    return LocalModelStorage(path)


def make(storage: LocalModelStorage, **config) -> DistilIntentClassifier:  # noqa: ANN003
    return DistilIntentClassifier.create({**DistilIntentClassifier.get_default_config(), **config}, storage,
                                         Resource("classifier"), ExecutionContext(GraphSchema({}), "123"))


def load(storage: LocalModelStorage, **config) -> DistilIntentClassifier:  # noqa: ANN003
    return DistilIntentClassifier.load({**DistilIntentClassifier.get_default_config(), **config}, storage,
                                       Resource("classifier"), ExecutionContext(GraphSchema({}), "123"))


def test_the_config_name_resolves_to_the_registered_class() -> None:
    from rasa.engine.recipes.default_recipe import DefaultV1Recipe

    registered = DefaultV1Recipe._from_registry("distilintent.plugin.DistilIntentClassifier")
    assert registered.clazz is DistilIntentClassifier
    assert registered.is_trainable
    assert DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER in registered.types
    assert DistilIntentClassifier.__module__ == "distilintent.plugin.component"  # stored in model metadata


def test_train_persist_load_predicts_like_the_sdk_after_the_directory_is_gone(tmp_path: Path) -> None:
    storage = storage_at(tmp_path / "storage")
    trained = make(storage, model_path=str(BUNDLE))
    trained.train(training_data())
    before = trained.process([Message(data={"text": text}) for text in TEXTS])

    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "storage", copy)
    loaded = load(storage_at(copy), model_path="/no/longer/needed")
    shutil.rmtree(copy)  # Rasa deletes the unpacked model right after loading
    after = loaded.process([Message(data={"text": text}) for text in TEXTS])

    with IntentDetector(BUNDLE) as detector:
        expected = [detector.detect(text) for text in TEXTS]
    for message_a, message_b, sdk in zip(before, after, expected, strict=True):
        for message in (message_a, message_b):
            assert message.get("intent")["name"] == sdk.intent
            assert message.get("intent")["confidence"] == pytest.approx(sdk.confidence, abs=1e-6)
            assert [r["name"] for r in message.get("intent_ranking")] == [name for name, _ in sdk.ranking]
            assert {"intent", "intent_ranking"} <= message.output_properties
    assert [m.get("intent")["name"] for m in after[:4]] == ["greet", "goodbye", "book_flight", "weather"]
    assert after[4].get("intent") == {"name": "nlu_fallback", "confidence": 0.0}


def test_the_archive_holds_runtime_files_only_no_pickle(tmp_path: Path) -> None:
    storage = storage_at(tmp_path / "storage")
    make(storage, model_path=str(BUNDLE), backend="onnxruntime").train(training_data())
    files = {p.relative_to(tmp_path / "storage").as_posix() for p in (tmp_path / "storage").rglob("*") if p.is_file()}
    names = {f.split("/", 2)[-1] for f in files}
    assert {"manifest.json", "tokenizer.json", "onnx/model.onnx", "onnx/model_int8.onnx"} <= names
    assert not any(name.startswith("openvino/") for name in names)  # backend pins the packed variants
    assert "model/model.safetensors" not in names
    assert not any(name.endswith((".pkl", ".pickle", ".joblib", ".pt")) for name in names)


def test_process_classifies_a_batch_in_one_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    component = make(storage_at(tmp_path / "storage"), model_path=str(BUNDLE))
    component.train(training_data())
    calls = []
    original = component._detector.detect_batch
    monkeypatch.setattr(component._detector, "detect_batch", lambda texts: calls.append(len(texts)) or original(texts))
    monkeypatch.setattr(component._detector, "detect", lambda text: pytest.fail("detect() called per message"))
    messages = [Message(data={"text": f"hello {i}"}) for i in range(50)] + [Message(data={"intent": "x"})]
    component.process(messages)
    assert calls == [50]
    assert messages[-1].get("intent") == "x"  # no text: left alone


def test_ranking_length_and_fallback_options(tmp_path: Path) -> None:
    text = "qwerty uiop"  # gibberish: over the bundle's calibrated out-of-scope threshold
    with IntentDetector(BUNDLE) as detector:
        sdk = detector.detect(text)
        assert detector.ood_threshold is not None and sdk.is_fallback

    def classify(**config) -> Message:  # noqa: ANN003
        component = make(storage_at(tmp_path / str(len(list(tmp_path.iterdir())))), model_path=str(BUNDLE), **config)
        component.train(training_data())
        return component.process([Message(data={"text": text})])[0]

    default = classify()
    assert default.get("intent") == {"name": "nlu_fallback", "confidence": sdk.confidence}
    assert len(default.get("intent_ranking")) == 4
    renamed = classify(fallback_intent_name="out_of_scope", ranking_length=2)
    assert renamed.get("intent")["name"] == "out_of_scope"
    assert [r["name"] for r in renamed.get("intent_ranking")] == [name for name, _ in sdk.ranking[:2]]
    no_fallback = classify(fallback_threshold=0.0, ranking_length=0)
    assert no_fallback.get("intent")["name"] == sdk.ranking[0][0]
    assert len(no_fallback.get("intent_ranking")) == 4


def test_label_differences_warn(tmp_path: Path) -> None:
    data = training_data({**EXAMPLES, "ask_time": ["what time is it"]})
    with pytest.warns(UserWarning, match=r"cannot predict the intent\(s\) \['ask_time'\]"):
        make(storage_at(tmp_path / "a"), model_path=str(BUNDLE)).train(data)
    fewer = {key: value for key, value in EXAMPLES.items() if key != "weather"}
    with pytest.warns(UserWarning, match=r"predicts intent\(s\) \['weather'\]"):
        make(storage_at(tmp_path / "b"), model_path=str(BUNDLE)).train(training_data(fewer))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(storage_at(tmp_path / "c"), model_path=str(BUNDLE)).train(training_data())


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"epoch": 3}, "unknown option"),
        ({"backend": "tensorflow"}, "'backend'"),
        ({"precision": "fp16"}, "'precision'"),
        ({"ranking_length": -1}, "'ranking_length'"),
        ({"fallback_threshold": 1.5}, "'fallback_threshold'"),
        ({"threads": 0}, "'threads'"),
        ({"export_formats": ["tflite"]}, "'export_formats'"),
        ({"model_path": 3}, "'model_path'"),
    ],
)
def test_invalid_options_are_config_errors(tmp_path: Path, options: dict, fragment: str) -> None:
    with pytest.raises(InvalidConfigException, match=fragment):
        make(storage_at(tmp_path), **options)


def test_rasa_finetuning_options_are_accepted(tmp_path: Path) -> None:
    make(storage_at(tmp_path), model_path=str(BUNDLE), finetuning_epoch_fraction=0.5, epochs=2)


def test_missing_or_broken_bundles_fail_training_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model_path '/nope' does not exist"):
        make(storage_at(tmp_path / "a"), model_path="/nope").train(training_data())
    broken = tmp_path / "broken"
    shutil.copytree(BUNDLE, broken)
    (broken / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="does not match its sha256"):
        make(storage_at(tmp_path / "b"), model_path=str(broken)).train(training_data())


def test_a_packed_model_that_does_not_load_raises(tmp_path: Path) -> None:
    storage = storage_at(tmp_path / "storage")
    make(storage, model_path=str(BUNDLE)).train(training_data())
    [tokenizer] = (tmp_path / "storage").rglob("tokenizer.json")
    tokenizer.write_text("{}")
    with pytest.raises(ValueError, match="sha256"):
        load(storage)


def test_no_persisted_resource_is_an_untrained_component_that_predicts_nothing(tmp_path: Path) -> None:
    component = load(storage_at(tmp_path / "empty"))
    [message] = component.process([Message(data={"text": "hello"})])
    assert message.get("intent") is None
    assert component.labels == ()


def test_fingerprint_addon_follows_the_bundle_contents(tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    first = DistilIntentClassifier.fingerprint_addon({"model_path": str(copy)})
    assert first == DistilIntentClassifier.fingerprint_addon({"model_path": str(copy)})
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"greet"', '"greet"', 1) + " ")
    assert DistilIntentClassifier.fingerprint_addon({"model_path": str(copy)}) != first
    assert DistilIntentClassifier.fingerprint_addon({"model_path": None}) is None
    assert DistilIntentClassifier.fingerprint_addon({"model_path": "/nope"}).startswith("missing:")


def test_required_packages_are_importable_distributions() -> None:
    import importlib
    from importlib import metadata

    for name in DistilIntentClassifier.required_packages():
        importlib.import_module(name)
        assert metadata.version(name)


def test_training_inside_rasa_without_torch_names_the_extra(tmp_path: Path) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed in this venv")
    with pytest.raises(ImportError, match=r"distilintent\[train\].*model_path"):
        make(storage_at(tmp_path)).train(training_data())


HEAVY = ("torch", "transformers", "onnx", "onnxscript", "nncf", "safetensors", "distilintent.training")
IMPORT_WATCH = r"""
import json
import sys
from pathlib import Path

# What the component's module and its serving path use from elsewhere is imported first: only what
# distilintent itself then asks for is watched.
import numpy, onnxruntime, openvino, tokenizers  # noqa: E401,F401
from rasa.engine.graph import ExecutionContext, GraphSchema
from rasa.engine.recipes.default_recipe import DefaultV1Recipe  # noqa: F401
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from rasa.nlu.classifiers.classifier import IntentClassifier  # noqa: F401
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

heavy, bundle, storage = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
attempted = []


class Watch:
    def find_spec(self, name, path=None, target=None):
        if any(name == module or name.startswith(module + ".") for module in heavy):
            attempted.append(name)
            raise ImportError(f"{name} is blocked: the Rasa component must not import it")
        return None


sys.meta_path.insert(0, Watch())
try:
    from distilintent.plugin import DistilIntentClassifier

    storage.mkdir(parents=True)
    component = DistilIntentClassifier.create(
        {**DistilIntentClassifier.get_default_config(), "model_path": bundle}, LocalModelStorage(storage),
        Resource("classifier"), ExecutionContext(GraphSchema({}), "123"))
    component.train(TrainingData([Message(data={"text": text, "intent": intent})
                                  for intent, text in json.loads(sys.argv[4]).items()]))
    [message] = component.process([Message(data={"text": "hello friend"})])
    intent = message.get("intent")["name"]
except Exception as err:  # report what was attempted, whatever failed
    intent = f"error: {type(err).__name__}: {err}"
print(json.dumps({"attempted": attempted, "intent": intent}))
"""


def test_component_imports_nothing_heavy_to_pack_load_and_classify(tmp_path: Path) -> None:
    """In a fresh interpreter whose imports of torch, transformers, the ONNX exporter and
    distilintent.training are recorded and refused (installed or not): import the component, pack a
    bundle and classify with it. Nothing heavy may even be attempted (a guarded ``try: import torch``
    included)."""
    import json
    import subprocess
    import sys

    examples = json.dumps({intent: texts[0] for intent, texts in EXAMPLES.items()})
    result = subprocess.run([sys.executable, "-c", IMPORT_WATCH, json.dumps(HEAVY), str(BUNDLE), str(tmp_path / "s"),
                             examples], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"attempted": [], "intent": "greet"}, result.stderr[-3000:]


def test_the_archive_holds_no_texts_kept_with_the_bundle(tmp_path: Path) -> None:
    """Neither the samples training keeps next to a bundle (``<bundle>.samples/``) nor the ``samples/``
    inside an older bundle are packed into Rasa's model storage."""
    import json

    from distilintent.core.bundle import update_bundle
    from distilintent.core.data import Example
    from distilintent.core.samples import samples_dir, write_samples

    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    inside, beside = "a private validation utterance 4711", "a private training utterance 4712"

    def as_before(root: Path, manifest: dict) -> dict:  # the layout of bundles written before the samples moved out
        (root / "samples").mkdir()
        (root / "samples" / "validation.jsonl").write_text(json.dumps({"text": inside, "label": "greet"}) + "\n")
        manifest["samples"] = {"validation": "samples/validation.jsonl"}
        return manifest

    update_bundle(copy, as_before)
    write_samples(copy, {"calibration": [Example(beside, "greet")]})
    assert inside.encode() in (copy / "samples" / "validation.jsonl").read_bytes()
    assert beside.encode() in (samples_dir(copy) / "calibration.jsonl").read_bytes()

    storage = storage_at(tmp_path / "storage")
    make(storage, model_path=str(copy)).train(training_data())
    packed = [p for p in (tmp_path / "storage").rglob("*") if p.is_file()]
    assert any(p.name == "model.onnx" for p in packed)
    assert [p for p in packed if inside.encode() in p.read_bytes() or beside.encode() in p.read_bytes()] == []
    [manifest] = [p for p in packed if p.name == "manifest.json"]
    assert "samples" not in json.loads(manifest.read_text())
    [message] = load(storage).process([Message(data={"text": "hello friend"})])
    assert message.get("intent")["name"] == "greet"
