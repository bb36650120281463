"""``distilintent serve`` as a user runs it: a subprocess on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO, make_tiny_bundle
from needs import need_module

need_module("uvicorn")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distilintent", "serve", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_a_missing_bundle_is_a_one_line_error() -> None:
    result = serve("--model", "/no/such/bundle")
    assert result.returncode == 1
    assert result.stderr.strip() == "distilintent serve: error: model bundle not found: /no/such/bundle"


def test_bad_numbers_are_errors(tmp_path: Path) -> None:
    result = serve("--model", str(tmp_path), "--workers", "0")
    assert result.returncode == 1 and "--workers must be >= 1" in result.stderr


def test_serve_with_two_workers_and_a_token(tmp_path: Path) -> None:
    from distilintent.training.export import export_bundle

    bundle = make_tiny_bundle(tmp_path / "tiny")
    export_bundle(bundle, formats=("onnx",))
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "distilintent", "serve", "--model", str(bundle), "--port", str(port),
             "--workers", "2", "--token", "t0k3n", "--max-body-bytes", "1000"],
            cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        answers = [httpx.post(f"{url}/model/parse", json={"text": f"hello {i}", "token": "t0k3n"}) for i in range(6)]
        assert all(answer.status_code == 200 for answer in answers)
        assert {answer.json()["text"] for answer in answers} == {f"hello {i}" for i in range(6)}
        assert httpx.post(f"{url}/model/parse", json={"text": "hello"}).status_code == 401
        assert httpx.post(f"{url}/model/parse", json={"text": "x" * 2000, "token": "t0k3n"}).status_code == 413
        assert "server" not in httpx.get(f"{url}/health").headers
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    text = log.read_text()
    assert process.returncode == 0, text
    assert '"POST /model/parse" 200' in text  # the access log
    assert "hello 1" not in text  # never the texts
