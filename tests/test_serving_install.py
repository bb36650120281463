"""What ``pip install distilintent`` alone (no torch, transformers or matplotlib) runs on an exported bundle.

Two ways: a real virtualenv with nothing but ``pip install <this repository>`` (its base dependencies),
and fresh interpreters of the test venv whose import system refuses the training dependencies (fast,
and they report which heavy modules were imported).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_LABELS

HEAVY = ("torch", "transformers", "onnx", "nncf", "matplotlib")

SERVING_INSTALL = f"""
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {HEAVY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, NotInstalled())
from distilintent import cli

status = cli.main(sys.argv[1:])
print("heavy modules:", sorted(m for m in sys.modules if m.partition(".")[0] in {HEAVY!r}), file=sys.stderr)
sys.exit(status)
"""


def run_without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SERVING_INSTALL, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    texts = {"greet": ["hello there", "hi", "good morning"], "goodbye": ["bye for now", "see you", "farewell"],
             "book_flight": ["book a flight to Paris", "a plane ticket", "fly me to Rome"],
             "weather": ["will it rain tomorrow", "is it sunny", "weather today"]}
    assert set(texts) == set(TINY_LABELS)
    rows = [{"text": text, "intent": label, "split": split}
            for label, group in texts.items() for text in group for split in ("validation", "test")]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_blocker_really_refuses_torch() -> None:
    probe = SERVING_INSTALL.replace("from distilintent import cli", "import torch")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "No module named 'torch'" in done.stderr


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with ``pip install <repo>`` only: numpy, tokenizers, onnxruntime, pyyaml, safetensors."""
    venv = tmp_path_factory.mktemp("serving") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_pip_install_distilintent_alone_evaluates_and_calibrates(serving_venv: Path, exported_bundle: Path,
                                                                 data: Path, tmp_path: Path) -> None:
    python = str(serving_venv / "bin" / "python")
    for heavy in ("torch", "transformers", "matplotlib"):
        probe = subprocess.run([python, "-c", f"import {heavy}"], capture_output=True, text=True, timeout=60)
        assert f"No module named '{heavy}'" in probe.stderr
    command = str(serving_venv / "bin" / "distilintent")
    evaluated = subprocess.run([command, "evaluate", "--model", str(exported_bundle), "--data", str(data), "--json"],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["n"] == 12
    bundle = shutil.copytree(exported_bundle, tmp_path / "bundle")
    calibrated = subprocess.run([command, "calibrate", "--model", str(bundle), "--data", str(data)],
                                capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert calibrated.returncode == 0, calibrated.stderr
    assert json.loads(calibrated.stdout)["fitted_on"] == {"variant": "onnx-int8", "split": "validation"}


def test_evaluate_an_exported_bundle_without_torch(exported_bundle: Path, data: Path) -> None:
    done = run_without_torch("evaluate", "--model", str(exported_bundle), "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["n"] == 12 and report["variant"] == "onnx-int8" and report["split"] == "test"
    assert "heavy modules: []" in done.stderr


def test_calibrate_an_exported_bundle_without_torch(exported_bundle: Path, data: Path, tmp_path: Path) -> None:
    from distilintent.core.bundle import Bundle

    bundle = shutil.copytree(exported_bundle, tmp_path / "bundle")
    done = run_without_torch("calibrate", "--model", str(bundle), "--data", str(data))
    assert done.returncode == 0, done.stderr
    assert "heavy modules: []" in done.stderr
    manifest = Bundle.open(bundle).manifest
    assert manifest["calibration"]["fitted_on"] == {"variant": "onnx-int8", "split": "validation"}
    assert manifest["ood"]["examples"] == 12 and json.loads(done.stdout)["ood"] == manifest["ood"]


def test_plots_without_matplotlib_name_the_extra(exported_bundle: Path, data: Path, tmp_path: Path) -> None:
    done = run_without_torch("evaluate", "--model", str(exported_bundle), "--data", str(data), "--out",
                             str(tmp_path / "report"))
    assert done.returncode == 1
    assert "pip install 'distilintent[plots]'" in done.stderr and not (tmp_path / "report").exists()


def test_a_bundle_without_variants_says_torch_is_needed(tiny_bundle: Path, data: Path) -> None:
    done = run_without_torch("evaluate", "--model", str(tiny_bundle), "--data", str(data))
    assert done.returncode == 1 and "pip install 'distilintent[train]'" in done.stderr
