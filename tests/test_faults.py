"""Faults: damaged bundles fail at load naming the file, missing variants fall back, crashes lose nothing.

Complements tests/test_bundle.py (manifest validation, ``Bundle.open``) and tests/test_sdk.py (a corrupt
variant requested explicitly, a variant the manifest lacks): here every damage is also checked through
``IntentDetector`` with ``backend="auto"`` (no silent fallback from a corrupt file), the model graphs are
checked against the manifest's labels, and the crashes are real ``SIGKILL``s of subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY_LABELS, make_tiny_bundle, tiny_train_options, toy_examples

from distilintent.core.bundle import Bundle, update_bundle
from distilintent.core.errors import BundleError, DistilIntentError, MissingExtraError
from distilintent.sdk import IntentDetector

VARIANTS = {"onnx-fp32": ("onnxruntime", "fp32"), "onnx-int8": ("onnxruntime", "int8"),
            "openvino-fp32": ("openvino", "fp32"), "openvino-int8": ("openvino", "int8")}


def copy(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target))


def rewrite(path: Path, data: bytes) -> None:
    """Replace a file's content through a new inode (bundle files may be hard links of the fixture's)."""
    path.unlink()
    path.write_bytes(data)


def change_manifest(path: Path, change: Callable[[dict], None]) -> Path:
    """Edit the manifest through ``update_bundle``, so that the checksums stay valid."""

    def edit(_root: Path, manifest: dict) -> dict:
        change(manifest)
        return manifest

    update_bundle(path, edit)
    return path


def load_torch(path: Path) -> object:
    from distilintent.training.model import load_bundle_model

    return load_bundle_model(Bundle.open(path))


# -- damaged files ----------------------------------------------------------------------------------

DAMAGES = {
    "truncated": lambda data: data[: len(data) // 2],
    "edited": lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]),
    "empty": lambda data: b"",
}
# (file, how it is loaded); "auto" is what a user gets by default: a damaged file is never skipped
LOADERS = [
    ("tokenizer.json", lambda p: IntentDetector(p)),
    ("onnx/model_int8.onnx", lambda p: IntentDetector(p)),
    ("onnx/model.onnx", lambda p: IntentDetector(p, backend="onnxruntime", precision="fp32")),
    ("openvino/model_int8.xml", lambda p: IntentDetector(p, backend="openvino", precision="int8")),
    ("openvino/model.bin", lambda p: IntentDetector(p, backend="openvino", precision="fp32")),
    ("model/model.safetensors", load_torch),
    ("model/config.json", load_torch),
]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize(("relative", "load"), LOADERS, ids=[name for name, _ in LOADERS])
def test_a_damaged_file_fails_at_load_naming_it(exported_bundle: Path, tmp_path: Path, relative: str,
                                                load: Callable[[Path], object], damage: str) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    target = path / relative
    rewrite(target, DAMAGES[damage](target.read_bytes()))
    with pytest.raises(BundleError) as caught:
        load(path)
    assert f"{target} does not match its sha256 in manifest.json" in str(caught.value)
    with pytest.raises(BundleError, match=relative):
        Bundle.open(path).verify()


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is not valid JSON"),
    (b"\xff\xfe\x00garbage", "is not valid JSON"),
    (b'{"format": "distilintent-bundle", "format_version": 1, "labels": ["a", "b"]', "is not valid JSON"),
    (b"[1, 2, 3]", "is not a distilintent bundle manifest"),
    (b"null", "is not a distilintent bundle manifest"),
])
def test_a_corrupt_manifest_fails_naming_it(exported_bundle: Path, tmp_path: Path, content: bytes,
                                            message: str) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    rewrite(path / "manifest.json", content)
    for load in (Bundle.open, IntentDetector):
        with pytest.raises(BundleError, match=message) as caught:
            load(path)
        assert str(path / "manifest.json") in str(caught.value)


def test_a_truncated_real_manifest_fails_naming_it(exported_bundle: Path, tmp_path: Path) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    manifest = path / "manifest.json"
    rewrite(manifest, manifest.read_bytes()[:-40])
    with pytest.raises(BundleError, match=f"{manifest} is not valid JSON"):
        IntentDetector(path)


def test_a_missing_manifest_fails_naming_it(exported_bundle: Path, tmp_path: Path) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    (path / "manifest.json").unlink()
    with pytest.raises(BundleError, match=f"{path} is not a distilintent bundle: manifest.json is missing"):
        IntentDetector(path)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_another_format_version_fails_naming_the_manifest(exported_bundle: Path, tmp_path: Path,
                                                          version: object) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = version
    rewrite(path / "manifest.json", json.dumps(manifest).encode())
    with pytest.raises(BundleError, match=f"manifest.json has bundle format_version {version!r}"):
        IntentDetector(path)
    with pytest.raises(BundleError, match="Re-export the bundle"):
        Bundle.open(path)


# -- labels that do not match the model -----------------------------------------------------------


@pytest.fixture(scope="module")
def five_label_manifest(exported_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4-output tiny bundle with a consistent-looking manifest that lists 5 labels."""

    def five_labels(manifest: dict) -> None:
        manifest["labels"] = [*TINY_LABELS, "extra"]
        for entry in manifest["variants"].values():
            entry["num_labels"] = 5

    return change_manifest(copy(exported_bundle, tmp_path_factory.mktemp("mismatch") / "bundle"), five_labels)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_graph_with_another_number_of_labels_fails_at_load(five_label_manifest: Path, name: str) -> None:
    backend, precision = VARIANTS[name]
    file = Bundle.open(five_label_manifest).variants[name].file
    with pytest.raises(BundleError) as caught:
        IntentDetector(five_label_manifest, backend=backend, precision=precision)
    assert f"{five_label_manifest / file} outputs 4 logits but the bundle's manifest.json lists 5 labels" in str(
        caught.value)


def test_torch_weights_with_another_number_of_labels_fail_at_load(five_label_manifest: Path) -> None:
    with pytest.raises(DistilIntentError, match="model has 4 outputs for the manifest's 5 labels") as caught:
        load_torch(five_label_manifest)
    assert str(five_label_manifest) in str(caught.value)


def test_torch_config_edited_to_another_label_count_fails_naming_the_files(tiny_bundle: Path, tmp_path: Path) -> None:
    """config.json and manifest agree on 5 labels (re-hashed), the weights have 4: a clear error, not torch's."""
    path = copy(tiny_bundle, tmp_path / "bundle")

    def five_labels(root: Path, manifest: dict) -> dict:
        config = json.loads((root / "model/config.json").read_text())
        rewrite(root / "model/config.json", json.dumps({**config, "num_labels": 5}).encode())
        manifest["labels"] = [*manifest["labels"], "extra"]
        return manifest

    update_bundle(path, five_labels)
    with pytest.raises(DistilIntentError, match=r"model\.safetensors does not fit .*config\.json"):
        load_torch(path)


def test_graph_of_another_bundle_fails_at_load(exported_bundle: Path, other_bundle: Path, tmp_path: Path) -> None:
    """An ONNX file copied in from a 3-label model (re-hashed, so only the graph tells) is refused."""
    other = other_bundle
    path = copy(exported_bundle, tmp_path / "bundle")

    def swap_graph(root: Path, manifest: dict) -> dict:
        rewrite(root / "onnx/model.onnx", (other / "onnx/model.onnx").read_bytes())
        return manifest

    update_bundle(path, swap_graph)
    with pytest.raises(BundleError, match="outputs 3 logits but the bundle's manifest.json lists 4 labels"):
        IntentDetector(path, backend="onnxruntime", precision="fp32")


# -- missing variants -------------------------------------------------------------------------------


def test_auto_skips_a_variant_whose_file_is_gone_with_a_warning(exported_bundle: Path, tmp_path: Path) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    (path / "onnx/model_int8.onnx").unlink()
    skipped = r"skipped unusable variant.*onnx/model_int8.onnx missing.*using openvino-int8"
    with pytest.warns(UserWarning, match=skipped):
        detector = IntentDetector(path)
    assert detector.variant.name == "openvino-int8" and detector.detect("hello").intent in detector.labels
    with pytest.warns(UserWarning, match="using onnx-fp32"):  # the requested backend is kept
        assert IntentDetector(path, backend="onnxruntime").variant.name == "onnx-fp32"


def test_a_missing_openvino_weights_file_is_skipped_too(exported_bundle: Path, tmp_path: Path) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    for file in ("onnx/model_int8.onnx", "openvino/model_int8.bin"):
        (path / file).unlink()
    with pytest.warns(UserWarning, match=r"openvino/model_int8.bin missing.*using onnx-fp32"):
        assert IntentDetector(path).variant.name == "onnx-fp32"


def test_an_explicitly_requested_variant_whose_file_is_gone_fails(exported_bundle: Path, tmp_path: Path) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    (path / "openvino/model.xml").unlink()
    with pytest.raises(BundleError, match=r"variant openvino-fp32 of .* is damaged: .*openvino/model.xml missing"):
        IntentDetector(path, backend="openvino", precision="fp32")


def test_no_usable_variant_fails_listing_why(exported_bundle: Path, tmp_path: Path) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    shutil.rmtree(path / "onnx")
    (path / "openvino/model_int8.xml").unlink()
    (path / "openvino/model.bin").unlink()
    with pytest.raises(BundleError, match="has no usable runtime variant") as caught:
        IntentDetector(path)
    for name in VARIANTS:
        assert f"{name}: " in str(caught.value)


def test_a_missing_runtime_package_falls_back_with_a_warning(exported_bundle: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def openvino_int8_and_onnx_fp32(manifest: dict) -> None:
        manifest["variants"] = {k: v for k, v in manifest["variants"].items() if k in ("openvino-int8", "onnx-fp32")}

    path = change_manifest(copy(exported_bundle, tmp_path / "bundle"), openvino_int8_and_onnx_fp32)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    with pytest.warns(UserWarning, match=r"openvino/int8: openvino not installed \(pip install .*using onnx-fp32"):
        assert IntentDetector(path).variant.name == "onnx-fp32"
    with pytest.raises(MissingExtraError, match="pip install 'distilintent"):
        IntentDetector(path, backend="openvino")


def test_a_complete_bundle_loads_without_warnings(exported_bundle: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert IntentDetector(exported_bundle).variant.name == "onnx-int8"


# -- crashes while writing a bundle -----------------------------------------------------------------

KILL_SCRIPT = """
import os, shutil, signal, sys
from pathlib import Path
import distilintent.core.bundle as bundle_module

def die():
    os.kill(os.getpid(), signal.SIGKILL)

source = Path({source!r})
manifest = bundle_module.Bundle.open(source).manifest

def build(root):
    for relative in manifest["files"]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, root / relative)
    return {{key: value for key, value in manifest.items() if key != "files"}}

{patch}
bundle_module.write_bundle(Path({target!r}), build)
print("not killed")
"""
KILL_POINTS = {
    # the new bundle's weights half written into the temporary directory
    "while writing the weights": """
def build(root):
    (root / "model").mkdir()
    data = (source / "model/model.safetensors").read_bytes()
    (root / "model/model.safetensors").write_bytes(data[: len(data) // 2])
    die()
""",
    # every file written and hashed, the manifest half written
    "while writing the manifest": """
real = bundle_module.write_json
def write_json(path, data):
    if path.name == "manifest.json":
        path.write_text('{"format": "distilintent-bun')
        die()
    real(path, data)
bundle_module.write_json = write_json
""",
}


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-label tiny bundle exported to ONNX: what replaces the 4-label one."""
    from distilintent.training.export import export_bundle

    path = make_tiny_bundle(tmp_path_factory.mktemp("other") / "other", labels=("yes", "no", "maybe"), seed=1)
    export_bundle(path, formats=("onnx",))
    return path


def run_killed(script: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("moment", sorted(KILL_POINTS))
def test_a_kill_while_writing_leaves_the_previous_bundle_intact(exported_bundle: Path, other_bundle: Path,
                                                                tmp_path: Path, moment: str) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    run_killed(KILL_SCRIPT.format(source=str(other_bundle), patch=KILL_POINTS[moment], target=str(path)))
    assert {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    Bundle.open(path).verify()
    with IntentDetector(path) as detector:
        assert detector.labels == TINY_LABELS and detector.detect("hello").intent
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "bundle"]
    assert all(name.startswith(".bundle.tmp-") for name in leftovers)  # the dead writer's scratch, inert


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="atomic exchange is Linux-only")
def test_a_kill_right_after_the_swap_leaves_the_new_bundle_complete(exported_bundle: Path, other_bundle: Path,
                                                                     tmp_path: Path) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    patch = """
real = bundle_module._exchange
def exchange(a, b):
    done = real(a, b)
    assert done, "renameat2(RENAME_EXCHANGE) is not supported here"
    die()
bundle_module._exchange = exchange
"""
    run_killed(KILL_SCRIPT.format(source=str(other_bundle), patch=patch, target=str(path)))
    bundle = Bundle.open(path)
    bundle.verify()
    assert bundle.labels == ("yes", "no", "maybe")
    with IntentDetector(path) as detector:
        assert detector.variant.name == "onnx-fp32" and detector.detect("hello").intent


def test_a_failed_rename_puts_the_previous_bundle_back(tiny_bundle: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the OS cannot exchange two directories, the two-rename swap undoes itself on failure."""
    from distilintent.core import bundle as bundle_module

    path = copy(tiny_bundle, tmp_path / "bundle")
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    real_rename = os.rename
    calls = []

    def rename(source: object, target: object) -> None:
        calls.append(target)
        if len(calls) == 2:  # the new bundle into place
            raise OSError(28, "No space left on device")
        real_rename(source, target)

    monkeypatch.setattr(bundle_module, "_exchange", lambda a, b: False)
    monkeypatch.setattr(bundle_module.os, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        make_tiny_bundle(path, labels=("yes", "no", "maybe"), seed=1)
    monkeypatch.undo()
    assert {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_failed_update_leaves_the_bundle_as_it_was(exported_bundle: Path, tmp_path: Path) -> None:
    path = copy(exported_bundle, tmp_path / "bundle")
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}

    def half_export(root: Path, manifest: dict) -> dict:
        rewrite(root / "onnx/model.onnx", b"half a model")
        manifest["variants"].pop("onnx-int8")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        update_bundle(path, half_export)
    assert {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    assert IntentDetector(path).variant.name == "onnx-int8"


# -- training killed and resumed --------------------------------------------------------------------


def _train_command(data: Path, config: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distilintent", "train", "--data", str(data), "--config", str(config),
            "--output", str(output), "--no-progress", *extra]


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(Bundle.open(path).read_bytes("model/model.safetensors"))


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_to_the_same_weights(tiny_base: Path, tmp_path: Path) -> None:
    """SIGKILL after the first mid-epoch checkpoint, then ``--resume``: the weights equal an uninterrupted run's.

    Tolerance: max |difference| < 1e-6 (the trainer reseeds per step, so the result is bit-exact on CPU).
    """
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"text": e.text, "intent": e.label}) + "\n" for e in toy_examples()))
    config = tmp_path / "config.json"
    # 54 steps per epoch; a checkpoint every 7 steps, so that most of them fall mid-epoch
    config.write_text(json.dumps(tiny_train_options(tiny_base, epochs=2, batch_size=2, checkpoint_every=7,
                                                    dropout=0.1)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.Popen(_train_command(data, config, tmp_path / "reference"), cwd=REPO, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = subprocess.Popen(_train_command(data, config, tmp_path / "resumed"), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = tmp_path / "resumed.checkpoints" / "state.json"
    deadline = time.monotonic() + 240
    try:
        while True:
            assert killed.poll() is None, "training ended before a mid-epoch checkpoint was seen"
            assert time.monotonic() < deadline
            if state_file.is_file() and json.loads(state_file.read_text())["next_batch"] > 0:
                break
            time.sleep(0.01)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed").exists()  # no bundle, not even half of one
    from distilintent.training.checkpoint import find_checkpoint

    state = json.loads((find_checkpoint(tmp_path / "resumed.checkpoints") / "state.json").read_text())
    assert 0 < state["step"] < 2 * 54
    resumed = subprocess.run(_train_command(data, config, tmp_path / "resumed", "--resume"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at epoch {state['epoch'] + 1}, batch {state['next_batch']}" in resumed.stderr
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    first, second = _weights(tmp_path / "reference"), _weights(tmp_path / "resumed")
    assert first.keys() == second.keys()
    assert max(float(np.abs(first[key] - second[key]).max()) for key in first) < 1e-6
    assert not (tmp_path / "resumed.checkpoints").exists()  # removed once the bundle is written
