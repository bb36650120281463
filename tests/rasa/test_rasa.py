"""A real Rasa 3.6.21 (Python 3.10, in subprocesses) with the component and with ``distilintent serve``.

The Rasa environments are built once and cached (``venvs.py``). Every test here is marked ``rasa``
(``pytest -m "not rasa"`` leaves them out) and is skipped only where no Python 3.10 exists. The
train-inside-Rasa test also needs the torch layer of the Rasa venv (about 2 minutes to build the first
time); ``DISTILINTENT_RASA_TRAIN=0`` skips it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import venvs
from conftest import REPO, TOY_TEMPLATES, make_tiny_base, make_tiny_bundle, tiny_train_options, toy_examples
from servers import free_port, serve_process, stop

pytestmark = [pytest.mark.rasa, pytest.mark.slow]

HERE = Path(__file__).parent
TEXTS = ["hello friend", "bye bye", "a flight to rome please", "will it rain tomorrow", "qwerty uiop"]
EXPECTED = ["greet", "goodbye", "book_flight", "weather"]


# -- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def python310() -> str:
    return venvs.python310_or_skip()


@pytest.fixture(scope="module")
def rasa_venv(python310: str) -> Path:
    return venvs.ensure_serving(python310, log=lambda line: print(line, file=sys.stderr))


@pytest.fixture(scope="module")
def rasa_train_venv(python310: str) -> Path:
    if os.environ.get("DISTILINTENT_RASA_TRAIN", "1") == "0":
        pytest.skip("DISTILINTENT_RASA_TRAIN=0: training inside Rasa needs the torch layer of the Rasa venv "
                    "(PyPI's CUDA torch for Python 3.10: about 2.8 GB of downloads, 2 minutes, 4.7 GB of disk)")
    return venvs.ensure_training(python310, log=lambda line: print(line, file=sys.stderr))


@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("rasa-base") / "tiny-distilbert")


@pytest.fixture(scope="module")
def toy_bundle(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained on the toy intents (it gets them right), exported to ONNX and OpenVINO (+INT8)."""
    from distilintent.training import TrainConfig, train
    from distilintent.training.export import export_bundle

    config = TrainConfig().updated(tiny_train_options(tiny_base_dir))
    result = train(toy_examples(), config, output=tmp_path_factory.mktemp("rasa-bundles") / "toy", export=False,
                   progress=False)
    export_bundle(result.bundle_path, formats=("onnx", "openvino"), int8=True)
    return result.bundle_path


# -- helpers ------------------------------------------------------------------------------------------------


def run(venv: Path, args: list[str], cwd: Path, timeout: float = 900, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``venv``; a failure shows the end of the output."""
    result = subprocess.run([str(venvs.python_of(venv)), *args], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=venvs.rasa_env(env))
    if result.returncode != 0:
        output = "\n".join((result.stdout + "\n" + result.stderr).strip().splitlines()[-60:])
        pytest.fail(f"python {' '.join(args)} exited with {result.returncode}:\n{output}", pytrace=False)
    return result


def rasa(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run(venv, ["-m", "rasa", *args], cwd)


def parse_with_rasa(venv: Path, model: Path, texts: list[str], bundle: Path | None = None) -> dict:
    """``Agent.load(model).parse_message`` for each text (and the SDK on ``bundle``) inside the Rasa venv."""
    args = [str(HERE / "scripts" / "parse.py"), str(model), json.dumps(texts)]
    out = run(venv, [*args, str(bundle)] if bundle else args, model.parent).stdout
    return json.loads(out.strip().splitlines()[-1])


def nlu_yaml(intents: dict[str, list[str]]) -> str:
    blocks = "".join(
        f"- intent: {intent}\n  examples: |\n" + "".join(f"    - {text}\n" for text in texts)
        for intent, texts in intents.items()
    )
    return f'version: "3.1"\nnlu:\n{blocks}'


def write_nlu_project(root: Path, options: dict, intents: dict[str, list[str]] = TOY_TEMPLATES,
                      before: str = "", extra_nlu: str = "") -> Path:
    """``config.yml`` with ``before`` then the component and its options, ``data/nlu.yml`` with ``intents``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    lines = "".join(f"\n    {key}: {json.dumps(value)}" for key, value in options.items())
    (root / "config.yml").write_text(
        "recipe: default.v1\nassistant_id: distilintent-test\nlanguage: en\npipeline:\n"
        f"{before}  - name: distilintent.plugin.DistilIntentClassifier{lines}\npolicies: []\n"
    )
    (root / "data" / "nlu.yml").write_text(nlu_yaml(intents) + extra_nlu)
    return root


def train_nlu(venv: Path, project: Path, name: str = "nlu") -> tuple[Path, str]:
    result = rasa(venv, "train", "nlu", "--config", "config.yml", "--nlu", "data/nlu.yml", "--out", "models",
                  "--fixed-model-name", name, cwd=project)
    model = project / "models" / f"{name}.tar.gz"
    assert model.is_file(), result.stdout[-2000:]
    return model, result.stdout + result.stderr


def archive_names(model: Path) -> list[str]:
    with tarfile.open(model) as archive:
        return archive.getnames()


def wait_http(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url}: the server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()[-4000:]}")


# -- 1. prebuilt bundle -------------------------------------------------------------------------------------


def test_component_unit_tests_inside_rasa(rasa_venv: Path, toy_bundle: Path) -> None:
    """The component (train → persist → load → same predictions, options, errors) and the rasa-sdk action,
    tested by pytest inside the Rasa venv."""
    result = subprocess.run(
        [str(venvs.python_of(rasa_venv)), "-m", "pytest", "--noconftest", "-p", "no:cacheprovider", "-q",
         "-W", "ignore::DeprecationWarning", str(HERE / "inside" / "check_component.py"),
         str(HERE / "inside" / "check_actions.py")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=venvs.rasa_env({"DISTILINTENT_TEST_BUNDLE": str(toy_bundle)}),
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


def test_prebuilt_bundle_rasa_train_parse_and_test_nlu(rasa_venv: Path, toy_bundle: Path, tmp_path: Path) -> None:
    # An entity extractor with its own tokenizer beside the component (which needs neither).
    entities = "  - name: WhitespaceTokenizer\n  - name: RegexEntityExtractor\n    use_lookup_tables: true\n"
    cities = "- lookup: city\n  examples: |\n    - paris\n    - rome\n"
    intents = {**TOY_TEMPLATES, "book_flight": [text.replace("rome", "[rome](city)")
                                                for text in TOY_TEMPLATES["book_flight"]]}
    project = write_nlu_project(tmp_path / "assistant", {"model_path": str(toy_bundle)}, intents, before=entities,
                                extra_nlu=cities)
    model, _ = train_nlu(rasa_venv, project)
    names = archive_names(model)
    assert any(name.endswith("bundle/onnx/model_int8.onnx") for name in names)
    assert any(name.endswith("bundle/openvino/model_int8.xml") for name in names)
    assert not any(name.endswith(("model.safetensors", ".pkl")) for name in names)

    parsed = parse_with_rasa(rasa_venv, model, TEXTS, bundle=toy_bundle)
    from distilintent.sdk import IntentDetector

    with IntentDetector(toy_bundle) as detector:
        here = [detector.detect(text) for text in TEXTS]
        assert parsed["sdk"][0]["variant"] == detector.variant.name
    for text, rasa_result, inside_sdk, sdk in zip(TEXTS, parsed["rasa"], parsed["sdk"], here, strict=True):
        assert rasa_result["text"] == text
        assert rasa_result["intent"]["name"] == sdk.intent == inside_sdk["intent"]["name"]
        assert rasa_result["intent"]["confidence"] == pytest.approx(sdk.confidence, abs=1e-4)
        assert rasa_result["intent"]["confidence"] == pytest.approx(inside_sdk["intent"]["confidence"], abs=1e-6)
        ranking = {item["name"]: item["confidence"] for item in rasa_result["intent_ranking"]}
        assert ranking == pytest.approx(dict(sdk.ranking), abs=1e-4)
    assert [r["intent"]["name"] for r in parsed["rasa"][:4]] == EXPECTED
    assert [(e["entity"], e["value"]) for e in parsed["rasa"][2]["entities"]] == [("city", "rome")]
    assert parsed["rasa"][0]["entities"] == []
    assert parsed["rasa"][4]["intent"]["name"] == "nlu_fallback"  # the bundle's calibrated threshold

    rasa(rasa_venv, "test", "nlu", "--nlu", "data/nlu.yml", "--model", str(model), "--out", "results", cwd=project)
    report = json.loads((project / "results" / "intent_report.json").read_text())
    assert set(EXPECTED) <= set(report)
    assert report["weighted avg"]["f1-score"] >= 0.9
    assert (project / "results" / "intent_confusion_matrix.png").is_file()


def test_rasa_retrains_when_the_bundle_changes_and_warns_on_label_differences(
    rasa_venv: Path, toy_bundle: Path, tmp_path: Path
) -> None:
    """Rasa's training cache must not serve a stale model (fingerprint_addon hashes the bundle)."""
    import shutil

    from distilintent.training.export import export_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(toy_bundle, bundle)
    project = write_nlu_project(tmp_path / "assistant", {"model_path": "../bundle", "backend": "onnxruntime"},
                                {**TOY_TEMPLATES, "ask_time": ["what time is it", "tell me the time"]})
    first, output = train_nlu(rasa_venv, project, "first")
    assert "cannot predict the intent(s) ['ask_time']" in output

    shutil.rmtree(bundle)  # same path, other model: a random tiny bundle
    make_tiny_bundle(bundle, labels=tuple(EXPECTED), seed=7)
    export_bundle(bundle, formats=("onnx",))
    second, _ = train_nlu(rasa_venv, project, "second")
    parsed = parse_with_rasa(rasa_venv, second, TEXTS[:2], bundle=bundle)
    for rasa_result, sdk in zip(parsed["rasa"], parsed["sdk"], strict=True):
        assert rasa_result["intent"]["confidence"] == pytest.approx(sdk["intent"]["confidence"], abs=1e-6)
    assert parse_with_rasa(rasa_venv, first, TEXTS[:1])["rasa"][0]["intent"]["confidence"] != pytest.approx(
        parsed["rasa"][0]["intent"]["confidence"], abs=1e-4)


# -- 2. train inside Rasa -----------------------------------------------------------------------------------


def test_train_inside_rasa(rasa_train_venv: Path, tiny_base_dir: Path, tmp_path: Path) -> None:
    options = tiny_train_options(tiny_base_dir)
    component_options = {key: options.pop(key) for key in ("base", "epochs", "batch_size", "learning_rate",
                                                             "max_length")}
    intents = {intent: [text + suffix for text in texts for suffix in ("", " please", " now")]
               for intent, texts in TOY_TEMPLATES.items()}
    project = write_nlu_project(tmp_path / "assistant", {
        **component_options, "device": "cpu", "training": options,
        # INT8 export does not work beside Rasa 3.6's pins (see docs/rasa.md): FP32 variants.
        "export_formats": ["onnx", "openvino"], "export_int8": False,
    }, intents)
    model, _ = train_nlu(rasa_train_venv, project)
    names = archive_names(model)
    assert any(name.endswith("bundle/onnx/model.onnx") for name in names)
    assert any(name.endswith("bundle/openvino/model.xml") for name in names)
    assert not any(name.endswith(("model.safetensors", ".pkl", ".pt")) for name in names)
    # What the user deploys holds none of the training texts (they were the validation sample too).
    with tarfile.open(model) as archive:
        members = {member.name: archive.extractfile(member).read() for member in archive if member.isfile()}
    assert any(name.endswith("bundle/manifest.json") for name in members)
    # One-word texts ("hello", "bye") are words of the tokenizer's vocabulary: every model holds them.
    texts = [text for examples in intents.values() for text in examples if " " in text]
    assert len(texts) == 70
    assert [(text, name) for text in texts for name, data in members.items() if text.encode() in data] == []
    parsed = parse_with_rasa(rasa_train_venv, model, TEXTS[:4])
    assert [r["intent"]["name"] for r in parsed["rasa"]] == EXPECTED
    # The serving-only venv (no torch) serves the model trained inside Rasa.
    served = parse_with_rasa(venvs.serving_dir(), model, TEXTS[:4])
    for a, b in zip(parsed["rasa"], served["rasa"], strict=True):
        assert a["intent"]["confidence"] == pytest.approx(b["intent"]["confidence"], abs=1e-5)


# -- 3. Rasa bot with distilintent serve as its NLU server -------------------------------------------------


@pytest.fixture
def nlu_server(toy_bundle: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    token = "e2e-secret"
    with serve_process(toy_bundle, log=tmp_path / "serve.log", env={"DISTILINTENT_TOKEN": token}) as (url, _):
        yield url, token


BOT_DOMAIN = textwrap.dedent("""\
    version: "3.1"
    intents: [greet, goodbye, book_flight, weather]
    responses:
      utter_greet: [{text: "Hello! How can I help?"}]
      utter_goodbye: [{text: "Goodbye!"}]
      utter_book_flight: [{text: "Where do you want to fly?"}]
      utter_weather: [{text: "It will be sunny."}]
      utter_default: [{text: "Sorry, I did not get that."}]
    session_config: {session_expiration_time: 60, carry_over_slots_to_new_session: true}
    """)


def test_rasa_bot_answers_through_the_distilintent_nlu_server(
    rasa_venv: Path, nlu_server: tuple[str, str], tmp_path: Path
) -> None:
    url, token = nlu_server
    project = tmp_path / "bot"
    (project / "data").mkdir(parents=True)
    (project / "domain.yml").write_text(BOT_DOMAIN)
    rules = "".join(f"- rule: {intent}\n  steps:\n  - intent: {intent}\n  - action: utter_{intent}\n"
                    for intent in EXPECTED)
    rules += "- rule: fallback\n  steps:\n  - intent: nlu_fallback\n  - action: utter_default\n"
    (project / "data" / "rules.yml").write_text(f'version: "3.1"\nrules:\n{rules}')
    (project / "config.yml").write_text("recipe: default.v1\nassistant_id: distilintent-bot\nlanguage: en\n"
                                        "pipeline: []\npolicies:\n  - name: RulePolicy\n")
    (project / "credentials.yml").write_text("rest:\n")
    (project / "endpoints.yml").write_text(f'nlu:\n  url: "{url}"\n  token: "{token}"\n')
    rasa(rasa_venv, "train", "core", "--config", "config.yml", "--domain", "domain.yml", "--stories", "data",
         "--out", "models", "--fixed-model-name", "bot", cwd=project)

    port = free_port()
    log = tmp_path / "rasa-run.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [str(venvs.python_of(rasa_venv)), "-m", "rasa", "run", "--model", "models/bot.tar.gz", "--endpoints",
             "endpoints.yml", "--credentials", "credentials.yml", "--interface", "127.0.0.1", "--port", str(port)],
            cwd=project, stdout=handle, stderr=subprocess.STDOUT, env=venvs.rasa_env(),
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/", process, 240, log)
        answers = {}
        for sender, text in [("u1", "hello friend"), ("u2", "will it rain tomorrow"), ("u3", "qwerty uiop"),
                             ("u1", "bye bye")]:
            response = httpx.post(f"http://127.0.0.1:{port}/webhooks/rest/webhook",
                                  json={"sender": sender, "message": text}, timeout=60)
            assert response.status_code == 200, response.text
            answers[text] = [message["text"] for message in response.json()]
    finally:
        stop(process)
    assert answers == {
        "hello friend": ["Hello! How can I help?"],
        "will it rain tomorrow": ["It will be sunny."],
        "qwerty uiop": ["Sorry, I did not get that."],
        "bye bye": ["Goodbye!"],
    }, log.read_text()[-3000:]
    status = httpx.get(f"{url}/status", params={"token": token}).json()
    assert status["requests"]["by_path"]["/model/parse"] >= 4
    assert status["requests"]["by_status"].get("401", 0) == 0
