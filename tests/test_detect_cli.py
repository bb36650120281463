"""``distilintent detect`` in a subprocess: table, JSON Lines, stdin, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def detect(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "distilintent", "detect", *args], input=stdin, capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)


def test_table_for_texts_given_as_arguments(exported_bundle: Path) -> None:
    done = detect("--model", str(exported_bundle), "book a flight to Paris", "hello there")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["text", "intent", "conf."]
    assert lines[1].startswith("book a flight to Paris") and lines[2].startswith("hello there")
    labels = {"greet", "goodbye", "book_flight", "weather"}
    assert all(line.split()[len(text.split())] in labels
               for line, text in zip(lines[1:], ["book a flight to Paris", "hello there"], strict=True))


def test_json_lines_from_stdin(exported_bundle: Path) -> None:
    done = detect("--model", str(exported_bundle), "--json", "--backend", "openvino", "--precision", "fp32",
                  stdin="hello there\n\nwill it rain tomorrow\nünïcödé 🙂\n")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["text"] for row in rows] == ["hello there", "", "will it rain tomorrow", "ünïcödé 🙂"]
    for row in rows:
        assert set(row) == {"text", "intent", "confidence", "ranking", "is_fallback", "ood_score"}
    assert rows[1] == {"text": "", "intent": "nlu_fallback", "confidence": 0.0, "ranking": [], "is_fallback": True,
                       "ood_score": None}
    assert rows[0]["ranking"][0] == [rows[0]["intent"], rows[0]["confidence"]] and len(rows[0]["ranking"]) == 3


def test_fallback_threshold_option(exported_bundle: Path) -> None:
    done = detect("--model", str(exported_bundle), "--json", "--fallback-threshold", "1", "hello there")
    row = json.loads(done.stdout)
    assert row["is_fallback"] and row["intent"] == "nlu_fallback" and row["ranking"]


def test_errors_are_one_line(tmp_path: Path, tiny_bundle: Path) -> None:
    done = detect("--model", str(tmp_path / "missing"), "hello")
    assert done.returncode == 1
    assert done.stderr.strip() == f"distilintent detect: error: model bundle not found: {tmp_path / 'missing'}"
    done = detect("--model", str(tiny_bundle), "hello")
    assert done.returncode == 1 and "run: distilintent export --model" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_every_command_is_listed_and_a_broken_one_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from distilintent import cli

    commands = cli.build_parser()._subparsers._group_actions[0].choices  # argparse keeps them here
    assert tuple(commands) == cli.COMMANDS == ("train", "evaluate", "calibrate", "export", "detect", "serve", "bench")
    real = importlib.import_module

    def broken(name: str, *args: object) -> object:
        if name == "distilintent.commands.serve":
            raise ModuleNotFoundError("No module named 'distilintent.commands.serve'", name=name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError, match="the distilintent serve command cannot be loaded"):
        cli.build_parser()
