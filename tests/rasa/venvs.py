"""The Python 3.10 environments with a real Rasa 3.6.21 that the Rasa tests run in, created once and cached.

- **serving** (``.venv-rasa``, or ``$DISTILINTENT_RASA_VENV``): Rasa plus distilintent's serving
  dependencies and distilintent itself (editable, no deps). About 4 minutes and 1.6 GB of downloads from
  scratch, 3 GB on disk. Never ``onnx`` here: it wants a protobuf that breaks Rasa's TensorFlow 2.12.
- **training** (``.venv-rasa-train``, or ``$DISTILINTENT_RASA_TRAIN_VENV``): a layer over the serving
  one (a ``.pth`` file puts its site-packages on the path) that adds torch, transformers and the ONNX
  exporter, for the train-inside-Rasa test. PyPI's only Linux torch for Python 3.10 is the CUDA build:
  about 2 minutes and 2.8 GB of downloads, 4.7 GB on disk. Versions are pinned to what resolves beside
  Rasa's pins (setuptools < 70.4 rules out torch 2.13; numpy 1.23.5 rules out an nncf that knows
  OpenVINO 2026, and protobuf must stay 4.23 for TensorFlow, hence onnx 1.17).

Each environment records what it was built from in ``distilintent-venv.json`` and is rebuilt when that
changes; a lock file serialises concurrent builds. Build them ahead with
``python tests/rasa/venvs.py [--train]`` (prints the time taken).
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = "distilintent-venv.json"
SERVING_REQUIREMENTS = ("rasa==3.6.21", "onnxruntime==1.23.2", "openvino==2026.4.1", "tokenizers==0.23.3",
                        "pytest==8.4.2")  # pytest runs tests/rasa/inside there; 9.x breaks Rasa's packaging pin
TRAINING_REQUIREMENTS = (
    "rasa==3.6.21",  # already in the base layer: keeps the resolver inside Rasa's pins
    "torch==2.12.1",
    "transformers==5.3.0",
    "safetensors>=0.4",
    "onnx==1.17.0",
    "onnxscript==0.7.2",
    "protobuf==4.23.3",
)
RASA_ENV = {"RASA_TELEMETRY_ENABLED": "false", "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


class VenvError(RuntimeError):
    """A Rasa test environment could not be built (the message holds pip's last lines)."""


def python310_or_skip() -> str:
    """``find_python310()``, or skip the calling test with the reason (Rasa 3.6.21 needs Python 3.10)."""
    from needs import missing

    found = find_python310()
    if found is None:
        missing("Rasa 3.6.21 needs Python 3.10 and none was found (python3.10 on PATH, pyenv, or "
                "$DISTILINTENT_PYTHON310)")
    return found


def find_python310() -> str | None:
    """A working Python 3.10: ``$DISTILINTENT_PYTHON310``, ``python3.10`` on PATH, or a pyenv install."""
    candidates = [os.environ.get("DISTILINTENT_PYTHON310"), shutil.which("python3.10")]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.10*", "bin", "python3.10")), reverse=True)
    candidates += ["/usr/local/bin/python3.10", "/usr/bin/python3.10"]
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "True":  # a pyenv shim may exist and still fail
            return candidate
    return None


def serving_dir() -> Path:
    return Path(os.environ.get("DISTILINTENT_RASA_VENV") or REPO / ".venv-rasa")


def training_dir() -> Path:
    return Path(os.environ.get("DISTILINTENT_RASA_TRAIN_VENV") or REPO / ".venv-rasa-train")


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def site_packages(venv: Path) -> Path:
    return venv / "lib" / "python3.10" / "site-packages"


def is_ready(venv: Path, spec: dict) -> bool:
    try:
        recorded = json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("spec") == spec and python_of(venv).exists()


def ensure_serving(python310: str, log=print) -> Path:  # noqa: ANN001 - a print-like callable
    """The serving environment, built if missing or outdated; distilintent installed from this checkout."""
    venv = serving_dir()
    spec = {"requirements": list(SERVING_REQUIREMENTS)}
    with _locked(venv):
        if not is_ready(venv, spec):
            started = time.monotonic()
            _create(python310, venv)
            _pip(venv, "install", *SERVING_REQUIREMENTS)
            _record(venv, spec, time.monotonic() - started)
            log(f"built {venv} in {time.monotonic() - started:.0f} s")
        _install_checkout(venv)
    return venv


def ensure_training(python310: str, log=print) -> Path:  # noqa: ANN001
    """The training layer over the serving environment, built if missing or outdated."""
    base = ensure_serving(python310, log)
    venv = training_dir()
    spec = {"requirements": list(TRAINING_REQUIREMENTS), "base": str(base.resolve())}
    with _locked(venv):
        if not is_ready(venv, spec):
            started = time.monotonic()
            _create(python310, venv)
            _layer_over(venv, base)
            _pip(venv, "install", *TRAINING_REQUIREMENTS)
            _record(venv, spec, time.monotonic() - started)
            log(f"built {venv} in {time.monotonic() - started:.0f} s")
        _layer_over(venv, base)
    return venv


def _layer_over(venv: Path, base: Path) -> None:
    """Put ``base``'s site-packages after ``venv``'s own, with its ``.pth`` files (the editable install)."""
    line = f"import site; site.addsitedir({str(site_packages(base).resolve())!r})\n"
    (site_packages(venv) / "_distilintent_rasa_base.pth").write_text(line)


def rasa_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Rasa subprocesses: no telemetry, quiet TensorFlow, offline model hubs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
    env.pop("PYTHONPATH", None)
    env.update(RASA_ENV)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra or {})
    return env


def _create(python310: str, venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    _run([python310, "-m", "venv", str(venv)])


def _install_checkout(venv: Path) -> None:
    """``pip install -e`` this checkout (no deps), unless the venv already points at it."""
    recorded = json.loads((venv / MARKER).read_text())
    if recorded.get("checkout") == str(REPO):
        return
    _pip(venv, "install", "--no-deps", "-e", str(REPO))
    recorded["checkout"] = str(REPO)
    (venv / MARKER).write_text(json.dumps(recorded, indent=2))


def _record(venv: Path, spec: dict, seconds: float) -> None:
    (venv / MARKER).write_text(json.dumps({"spec": spec, "build_seconds": round(seconds)}, indent=2))


def _pip(venv: Path, *args: str) -> None:
    _run([str(python_of(venv)), "-m", "pip", "--disable-pip-version-check", "--no-input", *args])


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=rasa_env())
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise VenvError(f"{' '.join(command)} failed with exit code {result.returncode}:\n{tail}")


class _locked:
    """An exclusive ``flock`` on ``<venv>.lock`` while a venv is checked or built."""

    def __init__(self, venv: Path) -> None:
        self.path = venv.with_name(venv.name + ".lock")

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w")  # noqa: SIM115 - closed in __exit__
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def main(argv: list[str]) -> int:
    python310 = find_python310()
    if python310 is None:
        print("no Python 3.10 found (set DISTILINTENT_PYTHON310)", file=sys.stderr)
        return 1
    started = time.monotonic()
    venv = ensure_training(python310) if "--train" in argv else ensure_serving(python310)
    print(f"{venv} ready ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
