"""The server's micro-batcher (distilintent.server.batcher), on a real uvicorn with real httpx clients.

The model is made slow deterministically where a test needs it: :class:`Gated` wraps a real detector and
holds every model call until the test releases it, so requests pile up in the queue exactly as the test says.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from needs import need_module
from servers import running, serve_process

need_module("starlette")
need_module("uvicorn")

from distilintent.core.bundle import Variant  # noqa: E402
from distilintent.sdk import IntentDetector  # noqa: E402
from distilintent.server import create_app  # noqa: E402
from distilintent.server.batcher import mode_for  # noqa: E402

LONG = "please book me a flight to Paris and tell me whether it will rain tomorrow " * 20
BASES = ["hello there", "", "   ", "\t\n ", LONG, "will it rain tomorrow", "bye for now", "héllo wörld 🙂", "hi",
         "book a flight to rome"]


class Gated:
    """A detector whose model calls wait for ``release``; records each call (``batch`` texts or ``one`` text)."""

    def __init__(self, inner: IntentDetector) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls: list[tuple[str, list[str]]] = []

    def __getattr__(self, name: str) -> Any:  # labels, variant, manifest, …: the real detector's
        return getattr(self.inner, name)

    def _wait(self) -> None:
        self.entered.set()
        assert self.release.wait(60), "the test never released the model"

    def detect_batch(self, texts: list[str], batch_size: int = 32) -> list[Any]:
        self._wait()
        self.calls.append(("batch", list(texts)))
        return self.inner.detect_batch(texts, batch_size)

    def detect(self, text: str) -> Any:
        self._wait()
        self.calls.append(("one", [text]))
        return self.inner.detect(text)


@pytest.fixture(scope="module")
def fp32(exported_bundle: Path) -> Iterator[IntentDetector]:
    with IntentDetector(exported_bundle, backend="onnxruntime", precision="fp32") as detector:
        yield detector


@pytest.fixture(scope="module")
def int8(exported_bundle: Path) -> Iterator[IntentDetector]:
    with IntentDetector(exported_bundle, backend="onnxruntime", precision="int8") as detector:
        yield detector


def mixed_bodies(count: int) -> list[tuple[str, dict]]:
    """``count`` parse requests (distinct texts, some empty, whitespace, long, a shortcut) and a few batches."""
    bodies = [("/model/parse", {"text": f"{base} {i}" if base.strip() else base})
              for i, base in zip(range(count), BASES * count, strict=False)]
    bodies += [("/model/parse/batch", {"texts": [f"hello {i}", "", f"{LONG} {i}", "/greet"]}) for i in range(4)]
    return bodies


async def queued_texts(client: httpx.AsyncClient, url: str) -> int:
    return (await client.get(f"{url}/status")).json()["batching"]["queued_texts"]


async def burst(url: str, bodies: list[tuple[str, dict]], gate: Gated, queued: int, refused: int = 0,
                timeout: float = 30) -> list[httpx.Response]:
    """Send all ``bodies`` at once, one connection each; release ``gate`` once ``queued`` texts wait for the
    model and ``refused`` requests have had their answer (503) without it."""
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies) + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        tasks = [asyncio.ensure_future(client.post(f"{url}{path}", json=body)) for path, body in bodies]
        deadline = time.monotonic() + timeout
        try:
            while True:
                answered = sum(task.done() for task in tasks)
                waiting = await queued_texts(client, url)
                if waiting == queued and answered == refused:
                    break
                assert time.monotonic() < deadline, f"{waiting} texts queued, {answered} answered"
                await asyncio.sleep(0.02)
        finally:
            gate.release.set()  # a failed test must not leave the model blocked
        return list(await asyncio.gather(*tasks))


def model_texts(bodies: list[tuple[str, dict]]) -> list[str]:
    """The texts of ``bodies`` the model classifies (not the ``/intent`` shortcuts)."""
    texts = [text for _, body in bodies for text in body.get("texts", [body.get("text")])]
    return [text for text in texts if not text.startswith("/")]


def assert_same(answer: dict, expected: Any, exact: bool = False) -> None:
    """``answer`` (a parse answer) says what ``detector.detect`` said alone."""
    assert answer["text"] == expected.text
    assert answer["intent"]["name"] == expected.intent
    ranking = [(item["name"], item["confidence"]) for item in answer["intent_ranking"]]
    assert [name for name, _ in ranking] == [name for name, _ in expected.ranking]
    if exact:
        assert answer["intent"]["confidence"] == expected.confidence
        assert [confidence for _, confidence in ranking] == [confidence for _, confidence in expected.ranking]
    else:
        assert answer["intent"]["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
        assert [c for _, c in ranking] == pytest.approx([c for _, c in expected.ranking], abs=1e-5)


def check_answers(bodies: list[tuple[str, dict]], responses: list[httpx.Response], detector: IntentDetector,
                  exact: bool = False) -> None:
    for (path, body), response in zip(bodies, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        answers = response.json()["results"] if path.endswith("batch") else [response.json()]
        texts = body.get("texts", [body.get("text")])
        assert len(answers) == len(texts)
        for text, answer in zip(texts, answers, strict=True):
            if text.startswith("/"):
                assert answer["intent"] == {"name": text[1:], "confidence": 1.0}
            else:
                assert_same(answer, detector.detect(text), exact)


def test_batched_answers_equal_single_calls_for_mixed_concurrent_requests(fp32: IntentDetector) -> None:
    gate = Gated(fp32)
    bodies = mixed_bodies(60)
    with running(create_app(gate, max_batch_texts=16)) as url:
        responses = asyncio.run(burst(url, bodies, gate, queued=len(model_texts(bodies))))
        status = httpx.get(f"{url}/status").json()["batching"]
    check_answers(bodies, responses, fp32)
    sizes = [len(texts) for kind, texts in gate.calls]
    assert {kind for kind, _ in gate.calls} == {"batch"}
    assert sum(sizes) == len(model_texts(bodies)) and max(sizes) == 16 and len(sizes) < 10  # really batched
    assert status["mode"] == "batched" and status["setting"] == "auto" and status["queued_texts"] == 0
    assert status["batches"] == len(sizes) and status["max_batch_texts"] == 16


def test_dynamic_int8_runs_one_by_one_and_status_says_so(int8: IntentDetector) -> None:
    gate = Gated(int8)
    bodies = mixed_bodies(30)
    with running(create_app(gate, max_batch_texts=16)) as url:
        status = httpx.get(f"{url}/status").json()["batching"]
        responses = asyncio.run(burst(url, bodies, gate, queued=len(model_texts(bodies))))
    assert status["mode"] == "one_by_one" and "batch mates change its answers, measured at export" in status["reason"]
    check_answers(bodies, responses, int8, exact=True)
    assert {kind for kind, _ in gate.calls} == {"one"}
    with running(create_app(int8, batching="on")) as url:
        status = httpx.get(f"{url}/status").json()["batching"]
    assert (status["mode"], status["setting"]) == ("batched", "on")


def test_the_mode_follows_the_batch_effect_export_measured(fp32: IntentDetector, int8: IntentDetector) -> None:
    variants = fp32.manifest["variants"]
    for name in ("onnx-fp32", "openvino-fp32"):  # measured at export: batch mates change nothing in FP32
        assert variants[name]["batch_invariant"] is True and variants[name]["parity"]["max_batch_effect"] <= 1e-5
    assert variants["onnx-int8"]["batch_invariant"] is False  # dynamic INT8: one activation scale per batch
    assert variants["onnx-int8"]["parity"]["max_batch_effect"] > 1e-5
    assert mode_for(int8, "auto")[0] == "one_by_one"
    assert mode_for(fp32, "auto")[0] == "batched"
    assert mode_for(fp32, "off")[0] == "one_by_one"

    def detector(name: str, precision: str, entry: dict[str, Any]) -> Any:
        return type("D", (), {"variant": Variant(name, "openvino", precision, "x.xml"),
                              "manifest": {"variants": {name: entry}}})()

    assert mode_for(detector("openvino-int8", "int8", {"batch_invariant": True}), "auto")[0] == "batched"
    assert mode_for(detector("openvino-fp32", "fp32", {"batch_invariant": False}), "auto")[0] == "one_by_one"
    assert mode_for(detector("openvino-int8", "int8", {}), "auto")[0] == "one_by_one"  # not measured: INT8 is not
    assert mode_for(detector("openvino-fp32", "fp32", {}), "auto")[0] == "batched"


class Exploding(Gated):
    """A gated detector whose model fails on any batch that holds the text ``boom``."""

    def detect_batch(self, texts: list[str], batch_size: int = 32) -> list[Any]:
        results = super().detect_batch(texts, batch_size)
        if "boom" in texts:
            raise RuntimeError("secret internal detail")
        return results


def test_a_text_that_fails_the_model_fails_only_its_own_request(fp32: IntentDetector) -> None:
    gate = Exploding(fp32)
    bodies = [("/model/parse", {"text": text}) for text in ("hello 1", "boom", "bye 2", "rain 3")]
    bodies.append(("/model/parse/batch", {"texts": ["boom", "x"]}))
    with running(create_app(gate, batch_wait_ms=2000, max_batch_texts=6), log_level="critical") as url:
        responses = asyncio.run(burst(url, bodies, gate, queued=6))
        assert httpx.post(f"{url}/model/parse", json={"text": "after"}).status_code == 200
    codes = [response.status_code for response in responses]
    assert codes == [200, 500, 200, 200, 500], [response.text for response in responses]
    assert "secret" not in responses[1].text and responses[1].json()["reason"] == "InternalError"
    check_answers([bodies[i] for i in (0, 2, 3)], [responses[i] for i in (0, 2, 3)], fp32)
    assert max(len(texts) for _, texts in gate.calls) == 6  # they were in one batch


def test_a_full_queue_answers_503_with_retry_after_at_once(fp32: IntentDetector) -> None:
    gate = Gated(fp32)
    with running(create_app(gate, max_queue=4, max_batch_texts=2)) as url, httpx.Client(timeout=5) as client:
        bodies = [("/model/parse", {"text": f"hello {i}"}) for i in range(4)]

        async def fill_then_overflow() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as pending:
                tasks = [asyncio.ensure_future(pending.post(f"{url}{path}", json=body)) for path, body in bodies]
                while await queued_texts(pending, url) < 4:
                    await asyncio.sleep(0.02)
                started = time.monotonic()
                refused = await asyncio.to_thread(client.post, f"{url}/model/parse", json={"text": "one too many"})
                refused_batch = await asyncio.to_thread(client.post, f"{url}/model/parse/batch",
                                                        json={"texts": ["a", "b"]})
                elapsed = time.monotonic() - started
                health = await asyncio.to_thread(client.get, f"{url}/health")
                gate.release.set()
                return [refused, refused_batch, health, *await asyncio.gather(*tasks), elapsed]

        refused, refused_batch, health, *admitted, elapsed = asyncio.run(fill_then_overflow())
        for response in (refused, refused_batch):
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert body["status"] == "failure" and body["code"] == 503 and body["reason"] == "ServiceUnavailable"
            assert "busy" in body["message"]
        assert elapsed < 2  # at once, not after the model
        assert health.status_code == 200
        check_answers(bodies, admitted, fp32)
        assert client.post(f"{url}/model/parse", json={"text": "after"}).status_code == 200


def test_a_burst_of_300_clients_gets_only_200s_or_503s_and_the_server_stays_healthy(fp32: IntentDetector) -> None:
    gate = Gated(fp32)
    bodies = [("/model/parse", {"text": f"{BASES[i % len(BASES)]} {i}"}) for i in range(300)]
    with running(create_app(gate, max_queue=40, max_batch_texts=8)) as url:
        responses = asyncio.run(burst(url, bodies, gate, queued=40, refused=260))
        assert httpx.get(f"{url}/health").status_code == 200
        status = httpx.get(f"{url}/status").json()
        assert httpx.post(f"{url}/model/parse", json={"text": "still here"}).status_code == 200
    codes = [response.status_code for response in responses]
    assert set(codes) == {200, 503} and codes.count(200) == 40
    assert all(response.headers.get("retry-after") == "1" for response in responses if response.status_code == 503)
    served = [(body, response) for body, response in zip(bodies, responses, strict=True) if response.status_code == 200]
    check_answers([body for body, _ in served], [response for _, response in served], fp32)
    assert status["batching"]["queued_texts"] == 0 and status["requests"]["by_status"]["503"] == 260


def test_a_full_batch_runs_at_once_and_a_lone_request_waits_at_most_the_batch_wait(fp32: IntentDetector) -> None:
    with running(create_app(fp32, batch_wait_ms=5000, max_batch_texts=4)) as url:
        started = time.monotonic()
        answer = httpx.post(f"{url}/model/parse/batch", json={"texts": ["a", "b", "c", "d"]}, timeout=30)
        assert answer.status_code == 200 and time.monotonic() - started < 2  # 4 texts: no waiting for more
    wait = 0.3
    with running(create_app(fp32, batch_wait_ms=wait * 1000)) as url, httpx.Client(timeout=30) as client:
        client.post(f"{url}/model/parse", json={"text": "warm up"})
        times = []
        for i in range(5):
            started = time.monotonic()
            assert client.post(f"{url}/model/parse", json={"text": f"alone {i}"}).status_code == 200
            times.append(time.monotonic() - started)
    assert wait <= sorted(times)[2] < wait + 0.2, times


def test_a_batch_in_flight_during_a_reload_finishes_on_the_old_detector(exported_bundle: Path, tmp_path: Path,
                                                                         fp32: IntentDetector) -> None:
    serving = tmp_path / "serving"
    shutil.copytree(exported_bundle, serving)
    app = create_app(str(serving), backend="onnxruntime", precision="fp32")
    service = app.state.service
    old = service.detector
    entered, release = threading.Event(), threading.Event()
    real, seen = old.detect_batch, []

    def slow(texts: list[str], batch_size: int = 32) -> list[Any]:
        seen.extend(texts)
        entered.set()
        assert release.wait(30)
        return real(texts, batch_size)

    old.detect_batch = slow
    with running(app) as url, httpx.Client(timeout=30) as client:
        answers: dict[str, httpx.Response] = {}

        def ask(text: str) -> threading.Thread:
            thread = threading.Thread(target=lambda: answers.update({text: client.post(
                f"{url}/model/parse", json={"text": text})}))
            thread.start()
            return thread

        threads = [ask("hello there")]
        assert entered.wait(10)
        assert client.post(f"{url}/model/reload").status_code == 200
        assert service.detector is not old
        threads.append(ask("bye for now"))  # queued behind the batch in flight, then run on the new model
        while app.state.batcher.describe()["queued_texts"] != 2:
            time.sleep(0.01)
        release.set()
        for thread in threads:
            thread.join(30)
    assert seen == ["hello there"]  # the old detector ran only the batch that was in flight
    for text, answer in answers.items():
        assert answer.status_code == 200, answer.text
        assert_same(answer.json(), fp32.detect(text))  # the same bundle
    assert len(answers) == 2
    with pytest.raises(RuntimeError, match="closed"):
        old.detect("hello")


def test_serve_passes_the_batching_options_to_each_worker(exported_bundle: Path, tmp_path: Path) -> None:
    args = ("--backend", "onnxruntime", "--precision", "int8", "--batching", "on", "--batch-wait-ms", "7",
            "--max-batch-texts", "5", "--max-queue", "9")
    with serve_process(exported_bundle, *args, log=tmp_path / "serve.log") as (url, _):
        batching = httpx.get(f"{url}/status").json()["batching"]
        assert httpx.post(f"{url}/model/parse", json={"text": "hello"}).status_code == 200
    assert {key: batching[key] for key in ("mode", "setting", "batch_wait_ms", "max_batch_texts", "max_queue")} == {
        "mode": "batched", "setting": "on", "batch_wait_ms": 7.0, "max_batch_texts": 5, "max_queue": 9}
