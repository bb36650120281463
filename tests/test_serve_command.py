"""``distilintent serve`` as a user runs it: a subprocess on 127.0.0.1."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import REPO, make_onnx_bundle
from needs import need_module
from servers import serve_process

from distilintent.commands.serve import TOKEN_WARNING

need_module("uvicorn")
pytestmark = pytest.mark.slow
# the server's own access line (distilintent.server.stats), as the log config of distilintent serve writes it
ACCESS_LINE = re.compile(r' distilintent\.server\.access: 127\.0\.0\.1 "(?P<request>[A-Z]+ \S+)" (?P<status>\d{3}) '
                         r"\d+\.\dms$")


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distilintent", "serve", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def access_lines(log: Path) -> Counter[tuple[str, str]]:
    """(request, status) → how many access lines say so."""
    matches = (ACCESS_LINE.search(line) for line in log.read_text().splitlines())
    return Counter((match["request"], match["status"]) for match in matches if match)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx_bundle(tmp_path_factory.mktemp("serve") / "tiny")


def test_a_missing_bundle_is_a_one_line_error() -> None:
    result = serve("--model", "/no/such/bundle")
    assert result.returncode == 1
    assert result.stderr.strip() == "distilintent serve: error: model bundle not found: /no/such/bundle"


def test_bad_numbers_are_errors(tmp_path: Path) -> None:
    result = serve("--model", str(tmp_path), "--workers", "0")
    assert result.returncode == 1 and "--workers must be >= 1" in result.stderr


def test_the_help_recommends_the_environment_variable() -> None:
    result = serve("--help")
    help_text = " ".join(result.stdout.split())
    assert result.returncode == 0
    assert "Prefer setting $DISTILINTENT_TOKEN, the default: a token on the command line shows in ps" in help_text


def test_serve_with_two_workers_and_a_token_from_the_environment(bundle: Path, tmp_path: Path) -> None:
    log, out = tmp_path / "serve.log", tmp_path / "serve.out"
    env = {"DISTILINTENT_TOKEN": "t0k3n"}
    with serve_process(bundle, "--workers", "2", "--max-body-bytes", "1000", log=log, stdout=out, env=env,
                       access_log=True) as (url, process):
        answers = [httpx.post(f"{url}/model/parse", json={"text": f"hello {i}", "token": "t0k3n"}) for i in range(6)]
        assert [answer.status_code for answer in answers] == [200] * 6
        assert [answer.json()["text"] for answer in answers] == [f"hello {i}" for i in range(6)]
        assert httpx.post(f"{url}/model/parse", json={"text": "hello"}).status_code == 401
        assert httpx.post(f"{url}/model/parse", json={"text": "x" * 2000, "token": "t0k3n"}).status_code == 413
        assert "server" not in httpx.get(f"{url}/health").headers
    text = log.read_text()
    assert process.returncode == 0, text
    lines = access_lines(log)  # complete: the workers finish their requests before they exit
    parses = {status: count for (request, status), count in lines.items() if request == "POST /model/parse"}
    assert parses == {"200": 6, "401": 1, "413": 1}
    assert lines[("GET /health", "200")] >= 1  # the readiness polls, then the one above
    assert "hello 1" not in text and "t0k3n" not in text  # never the texts, never the token
    assert TOKEN_WARNING not in text + out.read_text()  # the variable is the safe way


def test_a_token_on_the_command_line_works_and_warns(bundle: Path, tmp_path: Path) -> None:
    log, out = tmp_path / "serve.log", tmp_path / "serve.out"
    env = {"DISTILINTENT_TOKEN": "from-the-environment"}
    with serve_process(bundle, "--token", "from-the-command-line", log=log, stdout=out, env=env) as (url, _):
        parse = f"{url}/model/parse"
        assert httpx.post(parse, json={"text": "hi", "token": "from-the-command-line"}).status_code == 200
        assert httpx.post(parse, json={"text": "hi", "token": "from-the-environment"}).status_code == 401
        requests = httpx.get(f"{url}/status", params={"token": "from-the-command-line"}).json()["requests"]
        assert (requests["by_path"]["/model/parse"], requests["by_status"]["401"]) == (2, 1)
    stderr = log.read_text().splitlines()
    assert stderr.count(TOKEN_WARNING) == 1 and TOKEN_WARNING.startswith("distilintent serve: warning: ")
    assert "$DISTILINTENT_TOKEN" in TOKEN_WARNING and "from-the-command-line" not in TOKEN_WARNING
    assert TOKEN_WARNING not in out.read_text()  # stderr, not stdout
