"""Security: nothing in the package unpickles or evaluates, and the server is safe by default.

- Source scan (AST, so that comments and docstrings saying "no pickle" do not count): no import of pickle
  or its relatives, no ``eval``/``exec``, no ``trust_remote_code`` other than ``=False``, no ``torch.load``
  without ``weights_only=True``, no ``allow_pickle=True``, no ``yaml.load`` without ``SafeLoader``.
  Allowed exceptions: none today; add one to ``ALLOWED`` with a reason.
- ``distilintent serve`` binds 127.0.0.1 by default; the token is compared with ``hmac.compare_digest``;
  bodies over the limit get 413; a failure inside the model is a 500 without a traceback, exception text
  or file path; a request cannot make the server load another bundle.
"""

from __future__ import annotations

import ast
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TINY_LABELS, make_onnx_bundle
from needs import need_module
from servers import REPO, listening_addresses, running, serve_process

need_module("starlette")
need_module("uvicorn")

from distilintent.server import create_app, protocol  # noqa: E402

TOKEN = "t0ken-with-ünïcode-🙂"
OTHER_LABELS = ("alpha", "beta", "gamma")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
# (file relative to the repository, finding) pairs that are allowed, each with its reason. None today.
ALLOWED: dict[tuple[str, str], str] = {}


def unsafe_calls(source: str) -> list[str]:
    """What in ``source`` could run code from data: unpickling, eval/exec, remote code, unsafe YAML."""
    findings = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            findings += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            findings.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            if name in ("eval", "exec", "builtins.eval", "builtins.exec", "__import__"):
                findings.append(f"{name}(")
            if name == "torch.load" and not _is_true(keywords.get("weights_only")):
                findings.append("torch.load( without weights_only=True")
            loader = keywords.get("Loader")
            if name in ("yaml.load", "yaml.load_all") and (loader is None or "SafeLoader" not in ast.unparse(loader)):
                findings.append(f"{name}( without SafeLoader")
            if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"):
                findings.append(f"{name}(")
            if "allow_pickle" in keywords and not _is_false(keywords["allow_pickle"]):
                findings.append("allow_pickle=True")
            if "trust_remote_code" in keywords and not _is_false(keywords["trust_remote_code"]):
                findings.append("trust_remote_code")
        elif isinstance(node, ast.Constant) and node.value == "trust_remote_code":  # e.g. {"trust_remote_code": …}
            findings.append("trust_remote_code")
    return findings


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _is_false(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


@pytest.mark.parametrize(
    "snippet",
    ["import pickle", "from pickle import loads", "import joblib.numpy_pickle", "eval('1')", "exec(code)",
     "builtins.eval(x)", "torch.load(path)", "torch.load(path, weights_only=False)", "np.load(f, allow_pickle=True)",
     "AutoModel.from_pretrained(name, trust_remote_code=True)", "kwargs = {'trust_remote_code': True}",
     "yaml.load(text)", "yaml.load(text, Loader=yaml.Loader)", "yaml.unsafe_load(text)", "__import__('os')"],
)
def test_the_scanner_finds_each_unsafe_pattern(snippet: str) -> None:
    assert unsafe_calls(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    ["model.eval()", "torch.load(path, weights_only=True)", "yaml.safe_load(text)",
     "yaml.load(text, Loader=yaml.SafeLoader)", "np.load(f)", "np.load(f, allow_pickle=False)",
     "from_pretrained(name, trust_remote_code=False)", "'''Nothing here is pickled; no eval(, no exec('''",
     "# import pickle"],
)
def test_the_scanner_lets_safe_code_pass(snippet: str) -> None:
    assert unsafe_calls(snippet) == []


def test_no_pickle_eval_or_remote_code_in_the_package_or_benchmarks() -> None:
    files = sorted((REPO / "distilintent").rglob("*.py")) + sorted((REPO / "benchmarks").rglob("*.py"))
    assert len(files) > 20
    found = {}
    for path in files:
        relative = str(path.relative_to(REPO))
        findings = [f for f in unsafe_calls(path.read_text(encoding="utf-8")) if (relative, f) not in ALLOWED]
        if findings:
            found[relative] = findings
    assert found == {}


# -- the server ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The served bundle (TINY_LABELS) and another one (OTHER_LABELS) that no request may make it load."""
    root = tmp_path_factory.mktemp("security")
    return make_onnx_bundle(root / "served"), make_onnx_bundle(root / "other", labels=OTHER_LABELS, seed=1)


@pytest.fixture(scope="module")
def served(bundles: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``distilintent serve`` with a token and a 4096-byte body limit, default host; yields (URL, port)."""
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with serve_process(bundles[0], "--token", TOKEN, "--max-body-bytes", "4096", log=log) as (url, _):
        yield url, int(url.rsplit(":", 1)[1])


def check_error(response: httpx.Response, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body = response.json()
    assert body["status"] == "failure" and body["code"] == code
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body


def test_serve_binds_127_0_0_1_by_default(served: tuple[str, int]) -> None:
    from distilintent.cli import build_parser

    assert build_parser().parse_args(["serve", "--model", "bundle"]).host == "127.0.0.1"
    _, port = served
    assert listening_addresses(port) == {"127.0.0.1"}  # not 0.0.0.0, not ::


def test_token_wrong_or_missing_is_401_right_is_200_in_body_or_query(served: tuple[str, int]) -> None:
    url, _ = served
    parse = f"{url}/model/parse"
    for body, params in [({"text": "hi"}, {}), ({"text": "hi", "token": "wrong"}, {}),
                         ({"text": "hi", "token": TOKEN[:-1]}, {}), ({"text": "hi", "token": TOKEN + "x"}, {}),
                         ({"text": "hi", "token": ["t0ken"]}, {}), ({"text": "hi", "token": 0}, {}),
                         ({"text": "hi"}, {"token": ""}), ({"text": "hi", "token": TOKEN}, {"token": "wrong"})]:
        assert check_error(httpx.post(parse, json=body, params=params), 401)["reason"] == "NotAuthenticated"
    assert httpx.post(parse, json={"text": "hi", "token": TOKEN}).status_code == 200
    assert httpx.post(parse, json={"text": "hi"}, params={"token": TOKEN}).status_code == 200
    check_error(httpx.post(f"{url}/model/parse/batch", json={"texts": ["hi"]}), 401)
    assert httpx.post(f"{url}/model/parse/batch", json={"texts": ["hi"], "token": TOKEN}).status_code == 200
    check_error(httpx.get(f"{url}/status"), 401)
    assert httpx.get(f"{url}/status", params={"token": TOKEN}).status_code == 200
    check_error(httpx.post(f"{url}/model/reload"), 401)
    assert httpx.get(f"{url}/health").status_code == 200  # never needs the token


def test_the_token_is_compared_in_constant_time(bundles: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every token check goes through ``hmac.compare_digest`` (timing itself is too noisy to test here)."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(protocol.hmac, "compare_digest", spy)
    with running(create_app(str(bundles[0]), token=TOKEN), log_level="critical") as url:
        assert httpx.post(f"{url}/model/parse", json={"text": "hi", "token": "nope"}).status_code == 401
        assert httpx.post(f"{url}/model/parse", json={"text": "hi", "token": TOKEN}).status_code == 200
    assert [given for given, _ in compared] == [b"nope", TOKEN.encode()]
    assert all(expected == TOKEN.encode() for _, expected in compared)


def test_bodies_over_the_limit_are_413(served: tuple[str, int]) -> None:
    url, _ = served
    big = {"text": "x" * 5000, "token": TOKEN}
    assert check_error(httpx.post(f"{url}/model/parse", json=big), 413)["reason"] == "PayloadTooLarge"
    check_error(httpx.post(f"{url}/model/parse/batch", json={"texts": ["y" * 100] * 50, "token": TOKEN}), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"token": "' + TOKEN.encode() + b'", "text": "'
        for _ in range(100):
            yield b"z" * 1000
        yield b'"}'

    check_error(httpx.post(f"{url}/model/parse", content=chunks()), 413)
    assert httpx.post(f"{url}/model/parse", json={"text": "ok", "token": TOKEN}).status_code == 200


class _FailingDetector:
    """A detector whose model fails with a message that looks like a traceback with file paths."""

    labels = TINY_LABELS
    secret = 'Traceback (most recent call last):\n  File "/srv/secret/model.py", line 7, in run\nValueError: key=abc'

    def detect(self, text: str) -> Any:
        raise ValueError(self.secret)

    def detect_batch(self, texts: list[str], batch_size: int = 32) -> Any:
        raise OSError(2, self.secret, "/srv/secret/bundle/onnx/model.onnx")


def test_no_stack_traces_or_paths_in_responses() -> None:
    with running(create_app(_FailingDetector(), intent_shortcuts=False), log_level="critical") as url:
        for response in (httpx.post(f"{url}/model/parse", json={"text": "hello"}),
                         httpx.post(f"{url}/model/parse/batch", json={"texts": ["hello"]})):
            body = check_error(response, 500)
            assert body["reason"] == "InternalError"
            for leak in ("Traceback", "/srv", "secret", "model.py", "ValueError", "OSError", "line 7", "key=abc"):
                assert leak not in response.text
        for response, code in ((httpx.get(f"{url}/nope"), 404), (httpx.get(f"{url}/model/parse"), 405),
                               (httpx.post(f"{url}/model/parse", content=b"{bad json"), 400)):
            check_error(response, code)
            assert "/srv" not in response.text
        assert httpx.get(f"{url}/health").status_code == 200  # and it lives on


def test_requests_cannot_make_the_server_load_another_bundle(served: tuple[str, int],
                                                             bundles: tuple[Path, Path]) -> None:
    url, _ = served
    other = str(bundles[1])
    sneaky = {key: other for key in ("model", "model_path", "path", "bundle", "model_dir", "model_name")}
    answer = httpx.post(f"{url}/model/parse", params=sneaky, json={"text": "hello", "token": TOKEN, **sneaky})
    assert answer.status_code == 200
    assert {item["name"] for item in answer.json()["intent_ranking"]} <= set(TINY_LABELS)
    batch = httpx.post(f"{url}/model/parse/batch", params=sneaky, json={"texts": ["hi"], "token": TOKEN, **sneaky})
    assert batch.status_code == 200
    # An operator's reload (with the token) reloads the bundle the server was started with, never a given path.
    reload = httpx.post(f"{url}/model/reload", params={"token": TOKEN, **sneaky}, content=json.dumps(sneaky),
                        headers={"content-type": "application/json"}, timeout=60)
    assert reload.status_code == 200, reload.text
    assert reload.json()["ignored"] == sorted(sneaky)  # the body's keys, each one ignored
    assert reload.json()["model"]["labels"] == len(TINY_LABELS)
    assert other not in reload.text
    status = httpx.get(f"{url}/status", params={"token": TOKEN}).json()
    assert status["labels"] == list(TINY_LABELS)
    after = httpx.post(f"{url}/model/parse", json={"text": "hello", "token": TOKEN}).json()
    assert {item["name"] for item in after["intent_ranking"]} == set(TINY_LABELS)


def test_the_audit_summary_never_calls_a_skipped_audit_clean() -> None:
    """scripts/audit.py: 0 clean, 1 vulnerabilities, 2 not (fully) audited — pip-audit alone says "no known
    vulnerabilities" even when it could look up no package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("audit", REPO / "scripts" / "audit.py")
    audit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit)
    clean = {"dependencies": [{"name": "numpy", "version": "2.4.6", "vulns": []}]}
    vulnerable = {"dependencies": [{"name": "jinja2", "version": "2.4.1", "vulns": [
        {"id": "PYSEC-2019-217", "aliases": ["CVE-2019-10906"], "fix_versions": ["2.10.1"]}]}]}
    unreachable = {"dependencies": [{"name": "numpy", "skip_reason": "Dependency not found on PyPI and could not "
                                                                    "be audited: numpy (2.4.6)"}]}
    assert audit.summarise(clean, "pip-audit 2", "pypi", "")[1] == 0
    text, code = audit.summarise(vulnerable, "pip-audit 2", "pypi", "")
    assert code == 1 and "CVE-2019-10906" in text and "2.10.1" in text
    text, code = audit.summarise(unreachable, "pip-audit 2", "pypi", "")
    assert code == 2 and "none audited" in text and "not a clean result" in text
    assert audit.summarise(None, "", "pypi", "no network")[1] == 2
