"""Hot reload of the NLU server: ``POST /model/reload`` and ``SIGHUP``, on a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import TINY_LABELS, make_onnx_bundle
from needs import need_module
from servers import running, serve_process, wait_for, worker_pids

need_module("starlette")
need_module("uvicorn")

from distilintent.sdk import IntentDetector  # noqa: E402
from distilintent.server import create_app  # noqa: E402
from distilintent.server.service import model_fingerprint  # noqa: E402

TOKEN = "reload-s3cret"
OTHER_LABELS = ("yes", "no", "maybe")
TEXTS = ["hello there", "book a flight to Paris", "will it rain tomorrow", "bye", "yes please", "no way"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny ONNX bundles with different labels: ``a`` (4 labels) and ``b`` (3 labels)."""
    root = tmp_path_factory.mktemp("reload")
    return {"a": make_onnx_bundle(root / "a"), "b": make_onnx_bundle(root / "b", labels=OTHER_LABELS, seed=1)}


def install(source: Path, serving: Path) -> None:
    """Replace the bundle at ``serving`` with a copy of ``source`` (as a new training run would)."""
    staging = serving.with_name(serving.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    if serving.exists():
        retired = serving.with_name(serving.name + ".retired")
        os.rename(serving, retired)
        os.rename(staging, serving)
        shutil.rmtree(retired)
    else:
        os.rename(staging, serving)


def corrupt(serving: Path) -> None:
    model = serving / "onnx" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))


def reload(url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/model/reload", json={"token": TOKEN, **body}, timeout=60)


def labels_of(answer: dict) -> set[str]:
    return {entry["name"] for entry in answer["intent_ranking"]}


def test_reload_under_load_fails_no_request_and_never_mixes_models(bundles: dict[str, Path], tmp_path: Path) -> None:
    serving = tmp_path / "serving"
    install(bundles["a"], serving)
    app = create_app(str(serving), token=TOKEN, max_batch=256)
    service = app.state.service
    outcomes: list[tuple[int, frozenset[str]]] = []
    stop = threading.Event()

    def client(batch: bool) -> None:
        with httpx.Client(timeout=30) as session:
            while not stop.is_set():
                if batch:  # 8 model calls of 32 texts: a model closed under it would fail the request
                    answer = session.post(f"{url}/model/parse/batch", json={"texts": TEXTS * 40, "token": TOKEN})
                    results = answer.json()["results"] if answer.status_code == 200 else []
                    seen = set().union(*map(labels_of, results))
                else:
                    answer = session.post(f"{url}/model/parse", json={"text": "hello there", "token": TOKEN})
                    seen = labels_of(answer.json()) if answer.status_code == 200 else set()
                outcomes.append((answer.status_code, frozenset(seen)))

    retired = []
    with running(app) as url:
        clients = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(6)]
        for thread in clients:
            thread.start()
        try:
            for source in itertools.islice(itertools.cycle(["b", "a"]), 6):
                time.sleep(0.3)
                install(bundles[source], serving)
                retired.append(service.detector)
                answer = reload(url)
                assert answer.status_code == 200, answer.text
                assert answer.json()["model"]["labels"] == (3 if source == "b" else 4)
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=30)
        status = httpx.get(f"{url}/status", params={"token": TOKEN}).json()
    assert len(outcomes) > 50
    assert {code for code, _ in outcomes} == {200}
    # every answer comes from one model, never from a mix; both models answered
    assert {seen for _, seen in outcomes} == {frozenset(TINY_LABELS), frozenset(OTHER_LABELS)}
    assert status["model"]["reloads"] == 6 and status["labels"] == list(TINY_LABELS)
    assert status["model"]["fingerprint"] == model_fingerprint(IntentDetector(serving).manifest)
    for detector in retired:  # each old model was closed once its requests were done
        with pytest.raises(RuntimeError, match="closed"):
            detector.detect("hello")


def test_a_request_in_flight_keeps_its_model_until_it_is_done(bundles: dict[str, Path], tmp_path: Path) -> None:
    serving = tmp_path / "serving"
    install(bundles["a"], serving)
    app = create_app(str(serving), token=TOKEN)
    service = app.state.service
    entered, release = threading.Event(), threading.Event()
    results = []

    def slow_request(detector: IntentDetector) -> object:
        entered.set()
        assert release.wait(30)
        return detector.detect("hello there")

    with running(app) as url:
        old = service.detector
        in_flight = threading.Thread(target=lambda: results.append(service.call(slow_request)))
        in_flight.start()
        assert entered.wait(10)
        install(bundles["b"], serving)
        answer = reload(url)
        assert answer.status_code == 200, answer.text
        assert answer.json()["previous"]["fingerprint"] == model_fingerprint(old.manifest)
        assert labels_of(httpx.post(f"{url}/model/parse", json={"text": "hi", "token": TOKEN}).json()) == set(
            OTHER_LABELS)
        assert old.detect("still open").intent  # retired, but its request is still running
        release.set()
        in_flight.join(timeout=30)
    assert results and {label for label, _ in results[0].ranking} == set(TINY_LABELS)
    with pytest.raises(RuntimeError, match="closed"):
        old.detect("hello")


def test_a_bad_bundle_is_rejected_and_the_old_model_keeps_serving(bundles: dict[str, Path], tmp_path: Path) -> None:
    serving = tmp_path / "serving"
    install(bundles["b"], serving)
    with running(create_app(str(serving), token=TOKEN)) as url:
        before = httpx.get(f"{url}/status", params={"token": TOKEN}).json()["model"]
        install(bundles["a"], serving)
        corrupt(serving)
        answer = reload(url)
        assert answer.status_code == 409
        body = answer.json()
        assert body["reason"] == "ReloadFailed" and body["status"] == "failure"
        assert f"{serving / 'onnx' / 'model.onnx'} does not match its sha256" in body["message"]
        assert f"still serving the model loaded at {before['loaded_at']}" in body["message"]
        assert "Traceback" not in answer.text
        shutil.rmtree(serving)
        answer = reload(url)
        assert answer.status_code == 409 and "model bundle not found" in answer.json()["message"]
        parsed = httpx.post(f"{url}/model/parse", json={"text": "yes", "token": TOKEN})
        assert parsed.status_code == 200 and labels_of(parsed.json()) == set(OTHER_LABELS)
        after = httpx.get(f"{url}/status", params={"token": TOKEN}).json()["model"]
        assert after == {**before, "reloads": 0, "reloads_failed": 2}  # both refused, counted


def test_reload_needs_the_token_and_never_takes_a_path_from_the_request(bundles: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    serving = tmp_path / "serving"
    install(bundles["a"], serving)
    with running(create_app(str(serving), token=TOKEN)) as url:
        assert httpx.post(f"{url}/model/reload").status_code == 401
        assert httpx.post(f"{url}/model/reload", json={"token": "wrong"}).status_code == 401
        assert httpx.post(f"{url}/model/reload", content=b"[1]", params={"token": TOKEN}).status_code == 400
        answer = reload(url, model=str(bundles["b"]), path=str(bundles["b"]))
        assert answer.status_code == 200 and answer.json()["ignored"] == ["model", "path"]
        status = httpx.get(f"{url}/status", params={"token": TOKEN}).json()
        assert status["labels"] == list(TINY_LABELS) and status["model"]["reloads"] == 1
        assert httpx.post(f"{url}/model/reload", params={"token": TOKEN}).status_code == 200  # no body


def test_a_server_given_a_detector_object_has_nothing_to_reload(bundles: dict[str, Path]) -> None:
    with IntentDetector(bundles["a"]) as detector, running(create_app(detector)) as url:
        answer = httpx.post(f"{url}/model/reload")
        assert answer.status_code == 409 and "nothing to reload" in answer.json()["message"]
        assert detector.detect("hello").intent  # not closed


def status(url: str) -> dict:
    return httpx.get(f"{url}/status", timeout=5).json()


@pytest.mark.slow
def test_sighup_reloads_distilintent_serve(bundles: dict[str, Path], tmp_path: Path) -> None:
    serving, log = tmp_path / "serving", tmp_path / "serve.log"
    install(bundles["a"], serving)
    with serve_process(serving, log=log) as (url, process):
        first = status(url)["model"]
        install(bundles["b"], serving)
        process.send_signal(signal.SIGHUP)
        wait_for(process, log, lambda: status(url)["model"]["fingerprint"] != first["fingerprint"], "the reload")
        assert status(url)["model"]["reloads"] == 1
        assert labels_of(httpx.post(f"{url}/model/parse", json={"text": "yes"}).json()) == set(OTHER_LABELS)
        corrupt(serving)
        process.send_signal(signal.SIGHUP)
        wait_for(process, log, lambda: status(url)["model"]["reloads_failed"] == 1, "the failed reload")
        assert status(url)["model"]["reloads"] == 1
        assert labels_of(httpx.post(f"{url}/model/parse", json={"text": "yes"}).json()) == set(OTHER_LABELS)
    assert process.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_sighup_to_the_parent_replaces_every_worker(bundles: dict[str, Path], tmp_path: Path) -> None:
    """With --workers 2, uvicorn restarts the workers one by one; a bad bundle aborts that, the old ones serve."""
    serving, log = tmp_path / "serving", tmp_path / "serve.log"
    install(bundles["a"], serving)
    with serve_process(serving, "--workers", "2", log=log) as (url, process):
        first_workers = worker_pids(process.pid)
        assert len(first_workers) == 2 and {status(url)["pid"] for _ in range(20)} <= first_workers

        def restarted() -> bool:  # the old workers are stopped only once their replacements serve
            workers = worker_pids(process.pid)
            return len(workers) == 2 and workers.isdisjoint(first_workers)

        install(bundles["b"], serving)
        process.send_signal(signal.SIGHUP)
        wait_for(process, log, restarted, "both workers to be replaced")
        workers = worker_pids(process.pid)
        answers = [status(url) for _ in range(20)]
        assert all(answer["num_labels"] == 3 and answer["pid"] in workers for answer in answers)
        corrupt(serving)
        seen: set[int] = set()

        def aborted() -> bool:  # a new worker was started, failed on the bundle and is gone; the old ones serve
            current = worker_pids(process.pid)
            seen.update(current - workers)
            return bool(seen) and current == workers

        process.send_signal(signal.SIGHUP)
        wait_for(process, log, aborted, "the failed worker of the aborted restart")
        parsed = [httpx.post(f"{url}/model/parse", json={"text": "yes"}) for _ in range(20)]
        assert all(labels_of(answer.json()) == set(OTHER_LABELS) for answer in parsed)
        assert {status(url)["pid"] for _ in range(20)} <= workers
    assert process.returncode == 0, log.read_text()
