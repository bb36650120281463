"""``benchmarks/train_rasa_diet.py`` and the ``rasa-diet-http`` row of ``distilintent bench`` with a real Rasa 3.6.

Marked ``rasa`` like the other tests here, and skipped only where no Python 3.10 exists: the Rasa venv is
built on first use (``venvs.py``), as for tests/rasa/test_rasa.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import venvs
from conftest import REPO, TOY_TEMPLATES

pytestmark = [pytest.mark.rasa, pytest.mark.slow]


@pytest.fixture(scope="module")
def rasa_venv() -> Path:
    return venvs.ensure_serving(venvs.python310_or_skip(), log=lambda line: print(line, file=sys.stderr))


def test_diet_row_measured_over_http(rasa_venv: Path, exported_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"text": text + suffix, "intent": intent, "split": "train"}) + "\n"
                            for intent, texts in TOY_TEMPLATES.items() for text in texts
                            for suffix in ("", " please")))
    trained = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_rasa_diet.py"), "--data", str(data), "--epochs", "1",
         "--out", str(tmp_path / "diet"), "--rasa-venv", str(rasa_venv)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    model = Path(trained.stdout.strip().splitlines()[-1])
    assert model == tmp_path / "diet" / "models" / "diet.tar.gz" and model.is_file()
    record = json.loads(model.with_name("diet.json").read_text())
    assert record["epochs"] == 1 and record["intents"] == 4 and record["rasa_version"] == "3.6.21"
    nlu = (tmp_path / "diet" / "data" / "nlu.yml").read_text()
    assert "- intent: \"book_flight\"" in nlu and "    - a flight to rome please\n" in nlu

    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "distilintent", "bench", "--model", str(exported_bundle), "--backends",
         "rasa,onnx-int8", "--rasa-model", str(model), "--rasa-venv", str(rasa_venv), "--runs", "6", "--rounds",
         "2", "--warmup", "1", "--batch-sizes", "1,4", "--batch-texts", "8", "--seq-lens", "8", "--seq-len-runs",
         "2", "--cold-start-repeats", "0", "--no-plots", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert set(report["rows"]) == {"rasa-diet-http", "onnx-int8"}
    row = report["rows"]["rasa-diet-http"]
    assert row["kind"] == "http" and row["latency_batch1"]["n"] == 6 and row["latency_by_seq_len"]["8"]["n"] == 2
    assert row["throughput_texts_per_s"]["1"] > 0 and row["throughput_texts_per_s"]["4"] is None  # no batch API
    assert row["cold_start"]["cold_start_s"] > 1 and row["cold_start"]["peak_rss_mb"] > 100
    assert row["rasa_training"]["epochs"] == 1 and row["rasa_model"] == str(model)
    assert "rasa-diet-http" not in report["skipped"]
    markdown = (out / "results.md").read_text()
    assert "| rasa-diet-http |" in markdown and "DIET trained for 1 epochs" in markdown
