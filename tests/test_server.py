"""The Rasa-compatible NLU server, served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import REPO, TINY_LABELS
from needs import need_module
from servers import running

need_module("starlette")
need_module("uvicorn")

from distilintent.sdk import IntentDetector  # noqa: E402
from distilintent.server import create_app  # noqa: E402
from distilintent.server.protocol import parse_intent_shortcut  # noqa: E402

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def open_url(detector: IntentDetector) -> Iterator[str]:
    with running(create_app(detector, max_body_bytes=4096, max_batch=8)) as url:
        yield url


@pytest.fixture(scope="module")
def token_url(detector: IntentDetector) -> Iterator[str]:
    with running(create_app(detector, token=TOKEN)) as url:
        yield url


def assert_rasa_error(response: httpx.Response, code: int) -> dict:
    assert response.status_code == code, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "failure" and body["code"] == code and body["message"]
    assert "Traceback" not in response.text
    return body


def test_parse_answers_rasas_external_nlu_protocol(open_url: str, detector: IntentDetector) -> None:
    response = httpx.post(f"{open_url}/model/parse", json={"text": "book a flight to Paris", "message_id": "u1",
                                                           "token": None})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"text", "intent", "entities", "intent_ranking"}
    assert body["text"] == "book a flight to Paris"
    assert body["entities"] == []
    assert set(body["intent"]) == {"name", "confidence"}
    expected = detector.detect("book a flight to Paris")
    assert body["intent"]["name"] == expected.intent
    assert body["intent"]["confidence"] == pytest.approx(expected.confidence, abs=1e-9)
    ranking = body["intent_ranking"]
    assert [item["name"] for item in ranking] == [name for name, _ in expected.ranking]
    assert sorted(item["name"] for item in ranking) == sorted(TINY_LABELS)
    confidences = [item["confidence"] for item in ranking]
    assert confidences == sorted(confidences, reverse=True)
    assert sum(confidences) == pytest.approx(1.0, abs=1e-5)


def test_empty_text_is_the_fallback_intent(open_url: str) -> None:
    body = httpx.post(f"{open_url}/model/parse", json={"text": "   "}).json()
    assert body["intent"] == {"name": "nlu_fallback", "confidence": 0.0}
    assert body["intent_ranking"] == []


def test_intent_shortcuts_are_answered_as_rasa_does(open_url: str) -> None:
    body = httpx.post(f"{open_url}/model/parse", json={"text": "/greet"}).json()
    assert body == {"text": "/greet", "intent": {"name": "greet", "confidence": 1.0}, "entities": [],
                    "intent_ranking": [{"name": "greet", "confidence": 1.0}]}
    text = '/book_flight@0.7{"city": ["Paris", "Rome"]}'
    body = httpx.post(f"{open_url}/model/parse", json={"text": text}).json()
    assert body["intent"] == {"name": "book_flight", "confidence": 0.7}
    start = text.index("{")
    assert body["entities"] == [{"entity": "city", "value": "Paris", "start": start, "end": len(text)},
                                {"entity": "city", "value": "Rome", "start": start, "end": len(text)}]
    assert parse_intent_shortcut("/") is None
    assert parse_intent_shortcut("hello /greet") is None
    assert parse_intent_shortcut("/greet@7")["intent"]["confidence"] == 1.0


def test_batch_endpoint_matches_single_parses(open_url: str, detector: IntentDetector) -> None:
    texts = ["hello there", "will it rain tomorrow", "", "bye for now", "/goodbye"]
    response = httpx.post(f"{open_url}/model/parse/batch", json={"texts": texts})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["text"] for r in results] == ["hello there", "will it rain tomorrow", "", "bye for now", "/goodbye"]
    for text, result in zip(texts[:4], results[:4], strict=True):
        single = httpx.post(f"{open_url}/model/parse", json={"text": text}).json()
        assert result["intent"]["name"] == single["intent"]["name"]
        assert result["intent"]["confidence"] == pytest.approx(single["intent"]["confidence"], abs=1e-5)
    assert results[4]["intent"] == {"name": "goodbye", "confidence": 1.0}
    assert httpx.post(f"{open_url}/model/parse/batch", json={"texts": []}).json() == {"results": []}


@pytest.mark.parametrize("body", [{"texts": "hello"}, {"texts": ["a", 1]}, {"text": "hello"}, {"texts": None}])
def test_batch_rejects_what_is_not_a_list_of_strings(open_url: str, body: dict) -> None:
    assert_rasa_error(httpx.post(f"{open_url}/model/parse/batch", json=body), 400)


def test_batch_over_max_batch_is_400(open_url: str) -> None:
    body = assert_rasa_error(httpx.post(f"{open_url}/model/parse/batch", json={"texts": ["hi"] * 9}), 400)
    assert "at most 8" in body["message"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'"hello"', "JSON object"),
        (b'{"message_id": "x"}', "no 'text'"),
        (b'{"text": null}', "no 'text'"),
        (b'{"text": 42}', "must be a string"),
        (b'{"text": ["a"]}', "must be a string"),
        (b'{"text": "hi", "message_id": {"a": 1}}', "message_id"),
        (b"\xff\xfe{", "not valid JSON"),
    ],
)
def test_bad_requests_get_400_with_a_json_error(open_url: str, content: bytes, fragment: str) -> None:
    response = httpx.post(f"{open_url}/model/parse", content=content, headers={"content-type": "application/json"})
    body = assert_rasa_error(response, 400)
    assert body["reason"] == "BadRequest"
    assert fragment in body["message"]


def test_body_over_the_limit_gets_413(open_url: str) -> None:
    big = {"text": "x" * 5000}
    body = assert_rasa_error(httpx.post(f"{open_url}/model/parse", json=big), 413)
    assert body["reason"] == "PayloadTooLarge" and "4096" in body["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"text": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    response = httpx.post(f"{open_url}/model/parse", content=chunks())
    assert_rasa_error(response, 413)
    assert httpx.post(f"{open_url}/model/parse", json={"text": "still alive"}).status_code == 200


def test_token_in_body_or_query(token_url: str) -> None:
    parse = f"{token_url}/model/parse"
    assert assert_rasa_error(httpx.post(parse, json={"text": "hi"}), 401)["reason"] == "NotAuthenticated"
    assert_rasa_error(httpx.post(parse, json={"text": "hi", "token": None}), 401)
    assert_rasa_error(httpx.post(parse, json={"text": "hi", "token": "wrong"}), 401)
    assert_rasa_error(httpx.post(parse, json={"text": "hi", "token": TOKEN[:-1]}), 401)
    assert_rasa_error(httpx.post(parse, json={"text": "hi", "token": 12345}), 401)
    assert_rasa_error(httpx.post(parse, params={"token": "wrong"}, json={"text": "hi", "token": TOKEN}), 401)
    assert httpx.post(parse, json={"text": "hi", "token": TOKEN, "message_id": "abc"}).status_code == 200
    assert httpx.post(parse, params={"token": TOKEN}, json={"text": "hi"}).status_code == 200
    batch = f"{token_url}/model/parse/batch"
    assert_rasa_error(httpx.post(batch, json={"texts": ["hi"]}), 401)
    assert httpx.post(batch, json={"texts": ["hi"], "token": TOKEN}).status_code == 200
    assert_rasa_error(httpx.get(f"{token_url}/status"), 401)
    assert httpx.get(f"{token_url}/status", params={"token": TOKEN}).status_code == 200
    assert httpx.get(f"{token_url}/health").json() == {"status": "ok"}


def test_status_and_health(detector: IntentDetector) -> None:
    """A server of its own, so that the counters are exact: each request is counted before its client sees it."""
    with running(create_app(detector)) as url:
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        httpx.post(f"{url}/model/parse", json={"text": "hi"})
        httpx.post(f"{url}/model/parse", content=b"nope")
        httpx.post(f"{url}/model/parse", json={"text": "/greet"})  # a shortcut: no text classified
        httpx.get(f"{url}/no/such/route")
        status = httpx.get(f"{url}/status").json()
    assert status["labels"] == list(detector.labels)
    assert status["num_labels"] == len(TINY_LABELS)
    assert status["variant"] == detector.variant.name
    assert status["model"]["max_length"] == detector.max_length
    assert (status["ood_method"], status["ood_threshold"]) == (detector.ood_method, detector.ood_threshold)
    assert (status["fallback_threshold"], status["fallback_intent"]) == (detector.fallback_threshold, "nlu_fallback")
    requests = status["requests"]
    assert requests["total"] == 5  # not this /status request: its answer is being written
    assert requests["by_path"] == {"(other)": 1, "/health": 1, "/model/parse": 3}
    assert requests["by_status"] == {"200": 3, "400": 1, "404": 1}
    assert requests["texts_classified"] == 1


def test_status_shows_the_detectors_fallback_rule() -> None:
    class Rule:
        def describe(self) -> dict:
            return {"method": "msp", "threshold": 0.4}

    detector = _FakeDetector()
    detector.fallback_rule = Rule()
    with running(create_app(detector)) as url:
        status = httpx.get(f"{url}/status").json()
    assert status["fallback_rule"] == {"method": "msp", "threshold": 0.4}
    assert status["labels"] == ["a", "b"] and status["model"]["fingerprint"] is None  # no manifest


def test_unknown_routes_and_methods_are_json_errors(open_url: str) -> None:
    assert assert_rasa_error(httpx.get(f"{open_url}/nope"), 404)["reason"] == "NotFound"
    assert assert_rasa_error(httpx.get(f"{open_url}/model/parse"), 405)["reason"] == "MethodNotAllowed"


def test_concurrent_clients_get_their_own_answers(open_url: str, detector: IntentDetector) -> None:
    texts = [f"{word} number {i}" for i, word in enumerate(["hello", "bye", "flight", "rain"] * 10)]
    expected = {text: detector.detect(text) for text in texts}

    def ask(text: str) -> tuple[str, dict]:
        with httpx.Client() as client:
            return text, client.post(f"{open_url}/model/parse", json={"text": text, "message_id": text}).json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, texts))
    assert len(answers) == len(texts)
    for text, body in answers:
        assert body["text"] == text
        assert body["intent"]["name"] == expected[text].intent
        assert body["intent"]["confidence"] == pytest.approx(expected[text].confidence, abs=1e-6)


class _Exploding:
    """Wraps a detector; raises on one text, to check that a model failure is a clean 500."""

    def __init__(self, inner: IntentDetector) -> None:
        self.inner = inner
        self.labels = inner.labels

    def detect(self, text: str):  # noqa: ANN201
        if text == "boom":
            raise RuntimeError("secret internal detail")
        return self.inner.detect(text)

    def detect_batch(self, texts, batch_size: int = 32):  # noqa: ANN001, ANN201
        return [self.detect(text) for text in texts]


def test_a_model_failure_is_a_500_without_details_and_the_server_lives_on(
    detector: IntentDetector, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="distilintent.server"), running(create_app(_Exploding(detector))) as url:
        response = httpx.post(f"{url}/model/parse", json={"text": "boom"})
        body = assert_rasa_error(response, 500)
        assert "secret" not in json.dumps(body)
        assert_rasa_error(httpx.post(f"{url}/model/parse/batch", json={"texts": ["ok", "boom"]}), 500)
        assert httpx.post(f"{url}/model/parse", json={"text": "fine"}).status_code == 200
    assert any("secret internal detail" in str(record.exc_info) for record in caplog.records)


ACCESS_LINE = re.compile(r'127\.0\.0\.1 "(?P<request>[A-Z]+ \S+)" (?P<status>\d{3}) \d+\.\dms')


def test_access_log_has_one_line_per_request_without_the_text(
    detector: IntentDetector, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's own line per request; all are written once the server has stopped (it waits for them)."""
    with caplog.at_level(logging.INFO, logger="distilintent.server.access"), running(create_app(detector)) as url:
        httpx.post(f"{url}/model/parse", json={"text": "private words"})
        httpx.post(f"{url}/model/parse?token=secret-query", json={"text": 42})
        httpx.get(f"{url}/health")
    lines = [record.getMessage() for record in caplog.records if record.name == "distilintent.server.access"]
    matches = [ACCESS_LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [(m["request"], m["status"]) for m in matches] == [
        ("POST /model/parse", "200"), ("POST /model/parse", "400"), ("GET /health", "200")]
    assert not any("private" in line or "secret" in line for line in lines)


def test_access_lines_are_written_off_the_event_loop_and_all_of_them_before_shutdown(
    detector: IntentDetector,
) -> None:
    """A slow log handler neither slows the answers (its lines are written by a thread of their own) nor
    loses a line: the server writes them all before it stops."""

    class Slow(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[tuple[str, str]] = []

        def emit(self, record: logging.LogRecord) -> None:
            time.sleep(0.2)
            self.lines.append((record.threadName, record.getMessage()))

    access = logging.getLogger("distilintent.server.access")
    handler, level = Slow(), access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        with running(create_app(detector)) as url, httpx.Client() as client:
            started = time.monotonic()
            for _ in range(5):
                assert client.get(f"{url}/health").status_code == 200
            elapsed = time.monotonic() - started
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    assert elapsed < 0.5  # 5 lines take 1 s to write
    assert len(handler.lines) == 5 and all(ACCESS_LINE.fullmatch(line) for _, line in handler.lines)
    assert {thread for thread, _ in handler.lines} == {"distilintent-access-log"}


def test_the_server_imports_neither_torch_nor_rasa_nor_the_plugin(bundle: Path) -> None:
    code = ("import sys\n"
            "from distilintent.server import create_app\n"
            f"create_app({str(bundle)!r})\n"
            "print(sorted(m for m in ('torch', 'transformers', 'rasa', 'distilintent.plugin') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_create_app_from_a_path_owns_and_closes_its_detector(bundle: Path) -> None:
    app = create_app(str(bundle), fallback_threshold=0.99)
    with running(app) as url:
        body = httpx.post(f"{url}/model/parse", json={"text": "hello"}).json()
        assert body["intent"]["name"] == "nlu_fallback"  # a random tiny model is never 99 % sure
        assert len(body["intent_ranking"]) == len(TINY_LABELS)
    with pytest.raises(RuntimeError, match="closed"):
        app.state.service.detector.detect("hello")


def test_create_app_rejects_what_is_not_a_model() -> None:
    with pytest.raises(TypeError, match="bundle path or an IntentDetector"):
        create_app(42)
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(_FakeDetector(), max_body_bytes=0)


class _FakeDetector:
    labels = ("a", "b")

    def detect(self, text: str):  # noqa: ANN201
        raise NotImplementedError

    def detect_batch(self, texts, batch_size: int = 32):  # noqa: ANN001, ANN201
        raise NotImplementedError
