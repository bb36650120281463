"""Any input ends in a valid result or a documented error: the SDK, ``distilintent detect`` and the server.

A valid result has an intent that is one of the bundle's labels or the fallback intent and confidences that
are finite and in [0, 1]. The documented errors are ``TypeError``/``ValueError`` from the SDK, a one-line
error and exit code 1 (2 for argparse) from the CLI, and 400/413 JSON errors from the server. Texts include
arbitrary Unicode (emoji, RTL, combining marks, zero-width and control characters, NUL, lone surrogates),
empty and whitespace-only text and 1 MB of text; batches have 0, 1 and 10,000 texts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from needs import need_module
from servers import REPO, running

from distilintent.core.results import IntentResult
from distilintent.core.tokenization import valid_unicode
from distilintent.sdk import IntentDetector

need_module("starlette")
need_module("uvicorn")

from distilintent.server import create_app  # noqa: E402
from distilintent.server.protocol import parse_intent_shortcut  # noqa: E402

FALLBACK = "nlu_fallback"
MEGABYTE_TEXT = "book a flight to Paris 🙂 שלום e\u0301 " * (1_000_000 // 34)
SPECIAL = [
    "\x00", "\x01", "\x1b", "\x7f", "\x85", "\r", "\n", "\t", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",
    "\u202e", "\u202d", "\u2066", "\u2069", "\u200f", "\u0301", "\u0336", "\u0489", "\u05e9", "\u0627", "\u0644",
    "🙂", "👩\u200d👩\u200d👧", "🇩🇪", "\U0001f3fd", "\ud800", "\udfff", "\ud83d", "\ude42", "\u2028", "\u3000",
    "\U0010ffff", "\ufffd", "\uffff", "İ", "ß", "ﬁ", "㌀", "𝔘", "/", "@", "{", "\\", '"', " ", "a", "hello",
]
# Surrogates are rare in st.characters(): SPECIAL adds them (and the other hard cases) explicitly.
any_char = st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=()))
any_text = st.one_of(st.text(), st.lists(any_char, max_size=40).map("".join))
non_strings = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=8),
    st.lists(st.text(max_size=3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.builds(bytearray, st.binary(max_size=4)), st.builds(object), st.tuples(st.text(max_size=3)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_probability(value: Any) -> None:
    assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0, value


def check_result(result: IntentResult, detector: IntentDetector, text: str) -> None:
    """A valid SDK result for ``text``."""
    assert isinstance(result, IntentResult)
    assert result.text == text
    assert result.intent in (*detector.labels, detector.fallback_intent)
    assert result.is_fallback == (result.intent == detector.fallback_intent)
    check_probability(result.confidence)
    for _, confidence in result.ranking:
        check_probability(confidence)
    json.loads(result.to_json())  # serialisable
    if not text or text.isspace():
        assert (result.intent, result.confidence, result.ranking) == (detector.fallback_intent, 0.0, ())
        return
    # the full ranking of a softmax: every label once, best first, summing to 1; the result is its top entry
    assert sorted(name for name, _ in result.ranking) == sorted(detector.labels)
    confidences = [confidence for _, confidence in result.ranking]
    assert confidences == sorted(confidences, reverse=True)
    assert math.fsum(confidences) == pytest.approx(1.0, abs=1e-5)
    assert result.confidence == result.ranking[0][1]
    assert result.intent == (detector.fallback_intent if result.is_fallback else result.ranking[0][0])


def check_answer(answer: dict[str, Any], expected: IntentResult | dict[str, Any], text: str) -> None:
    """The server's answer for ``text`` is ``expected``, the SDK's result for the text the server classifies
    (lone surrogates replaced by U+FFFD), or the shortcut answer; confidences survive JSON exactly."""
    assert set(answer) == {"text", "intent", "entities", "intent_ranking"}
    assert answer["text"] == (valid_unicode(text) if isinstance(expected, IntentResult) else expected["text"])
    if isinstance(expected, IntentResult):  # written out here, not with the server's own parse_answer
        expected = {"text": expected.text, "intent": {"name": expected.intent, "confidence": expected.confidence},
                    "entities": [], "intent_ranking": [{"name": name, "confidence": confidence}
                                                       for name, confidence in expected.ranking]}
    assert answer == expected


# -- SDK -----------------------------------------------------------------------------------------------


@FAST
@given(text=any_text)
def test_detect_any_unicode_text(detector: IntentDetector, text: str) -> None:
    check_result(detector.detect(text), detector, text)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(any_text, max_size=12))
def test_detect_batch_agrees_with_detect(detector: IntentDetector, texts: list[str]) -> None:
    results = detector.detect_batch(texts, batch_size=4)
    assert len(results) == len(texts)
    for text, result in zip(texts, results, strict=True):
        check_result(result, detector, text)
        single = detector.detect(text)
        assert dict(result.ranking).keys() == dict(single.ranking).keys()
        for name, confidence in single.ranking:  # padding in a batch moves the float32 logits a little
            assert dict(result.ranking)[name] == pytest.approx(confidence, abs=1e-4)


@pytest.mark.parametrize("text", ["", " ", "\t\n\r ", "\u3000", "\u00a0", "\u2028", "\x1c\x1d\x1e\x1f", "\x85"])
def test_empty_or_whitespace_text_is_the_fallback_without_running_the_model(
    detector: IntentDetector, text: str
) -> None:
    for result in (detector.detect(text), detector.detect_batch([text, "hello"])[0]):
        check_result(result, detector, text)
        assert (result.intent, result.confidence, result.ranking, result.is_fallback) == (FALLBACK, 0.0, (), True)


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\ud83d", "x\ud83d\ude42y", "\x00", "\u200b" * 50])
def test_lone_surrogates_nul_and_zero_width_characters(detector: IntentDetector, text: str) -> None:
    result = detector.detect(text)
    check_result(result, detector, text)
    assert result.ranking, "a non-blank text runs the model"
    if "\ud83d\ude42" in text:  # a surrogate pair written as two code points is the emoji it encodes
        assert detector.detect(text).ranking == detector.detect("x🙂y").ranking


def test_one_megabyte_text_is_truncated_not_slow(detector: IntentDetector) -> None:
    assert len(MEGABYTE_TEXT.encode()) > 1_000_000
    start = time.perf_counter()
    result = detector.detect(MEGABYTE_TEXT)
    [batched] = detector.detect_batch([MEGABYTE_TEXT])
    assert time.perf_counter() - start < 30
    check_result(result, detector, MEGABYTE_TEXT)
    assert batched.ranking == result.ranking
    head = detector.detect(MEGABYTE_TEXT[:2000])  # the end is cut at max_length tokens: same as a prefix
    assert head.ranking == result.ranking


def test_batches_of_0_1_and_10000_texts(detector: IntentDetector) -> None:
    assert detector.detect_batch([]) == []
    assert detector.detect_batch(()) == []
    [one] = detector.detect_batch(["hello there"])
    check_result(one, detector, "hello there")
    texts = [SPECIAL[i % len(SPECIAL)] + f" request {i}" + ("" if i % 7 else " ") for i in range(10_000)]
    texts[::997] = [""] * len(texts[::997])
    start = time.perf_counter()
    results = detector.detect_batch(texts, batch_size=64)
    assert time.perf_counter() - start < 120
    assert len(results) == 10_000
    for text, result in zip(texts, results, strict=True):
        check_result(result, detector, text)
    assert all(results[i].is_fallback and not results[i].ranking for i in range(0, 10_000, 997))


@settings(max_examples=80, deadline=None)
@given(value=non_strings)
def test_non_strings_are_a_type_error(detector: IntentDetector, value: Any) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        detector.detect(value)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        detector.detect_batch(["fine", value])


@pytest.mark.parametrize("value", [None, 42, 1.5, "a single string", b"bytes", object()])
def test_detect_batch_needs_a_sequence_of_strings(detector: IntentDetector, value: Any) -> None:
    with pytest.raises(TypeError):
        detector.detect_batch(value)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, "8", None])
def test_bad_batch_size_is_a_value_error(detector: IntentDetector, batch_size: Any) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        detector.detect_batch(["hello"], batch_size=batch_size)


# -- distilintent detect -------------------------------------------------------------------------------


def run_cli(*args: str) -> tuple[int, str, str]:
    """``distilintent`` in this process (the subprocess tests below cover real argv and stdin bytes)."""
    from distilintent.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def check_json_lines(output: str, texts: list[str], labels: tuple[str, ...]) -> None:
    rows = [json.loads(line) for line in output.split("\n") if line]  # not splitlines(): U+2028 stays inside
    assert [row["text"] for row in rows] == [valid_unicode(text) for text in texts]
    for row in rows:
        assert row["intent"] in (*labels, FALLBACK)
        check_probability(float(row["confidence"]))
        assert row["is_fallback"] == (row["intent"] == FALLBACK)


@settings(max_examples=25, deadline=None)
@given(texts=st.lists(any_text, min_size=1, max_size=5))
def test_detect_command_any_texts(bundle: Path, texts: list[str]) -> None:
    code, out, err = run_cli("detect", "--model", str(bundle), "--json", "--", *texts)
    assert code == 0, err
    check_json_lines(out, texts, IntentDetector(bundle).labels)
    code, out, err = run_cli("detect", "--model", str(bundle), "--", *texts)  # the table too
    assert code == 0 and len(out.split("\n")) >= 2, err


@pytest.mark.slow
def test_detect_command_real_argv_and_stdin_bytes(bundle: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    command = [sys.executable, "-m", "distilintent", "detect", "--model", str(bundle), "--json"]
    argv = [b"caf\xc3\xa9", b"bad \xff\xfe bytes", b"\xed\xa0\x80", b" "]  # invalid UTF-8 arrives as surrogates
    done = subprocess.run([*command, "--", *argv], capture_output=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    check_json_lines(done.stdout.decode("utf-8"), ["café", "bad \ufffd\ufffd bytes", "\ufffd\ufffd\ufffd", " "],
                     IntentDetector(bundle).labels)
    stdin = b"hello\r\n\n \t \nnul\x00here\n\xff\xfe\n" + MEGABYTE_TEXT.encode() + b"\nlast line"
    done = subprocess.run(command, input=stdin, capture_output=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = ["hello", "", " \t ", "nul\x00here", "\ufffd\ufffd", MEGABYTE_TEXT, "last line"]
    check_json_lines(done.stdout.decode("utf-8"), expected, IntentDetector(bundle).labels)


@pytest.mark.parametrize(
    ("options", "code"),
    [(["--top-k", "0"], 1), (["--threads", "0"], 1), (["--fallback-threshold", "2"], 1), (["--top-k", "x"], 2),
     (["--fallback-threshold", "nan"], 1)],
)
def test_detect_command_bad_options_are_one_line_errors(bundle: Path, options: list[str], code: int) -> None:
    try:
        result, _, err = run_cli("detect", "--model", str(bundle), *options, "hello")
    except SystemExit as exit_:  # argparse
        result, err = exit_.code, ""
    assert result == code
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1


# -- POST /model/parse and /model/parse/batch ----------------------------------------------------------


@pytest.fixture(scope="module")
def big_server(detector: IntentDetector) -> Iterator[httpx.Client]:
    """No shortcuts, 2 MiB bodies, 10,000 texts per batch."""
    app = create_app(detector, max_body_bytes=2 * 1024 * 1024, max_batch=10_000, intent_shortcuts=False)
    with running(app, log_level="critical") as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def default_server(detector: IntentDetector) -> Iterator[httpx.Client]:
    """The defaults of ``distilintent serve``: 64 KiB bodies, 256 texts per batch, Rasa intent shortcuts."""
    app = create_app(detector)
    with running(app, log_level="critical") as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def post_json(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    """JSON with every non-ASCII character escaped, so that lone surrogates reach the server as JSON allows."""
    return client.post(path, content=json.dumps(body).encode("ascii"), headers={"content-type": "application/json"})


def check_error(response: httpx.Response, code: int) -> None:
    assert response.status_code == code, response.text
    body = response.json()
    assert body["status"] == "failure" and body["code"] == code and body["message"]
    assert "Traceback" not in response.text


@FAST
@given(text=any_text)
def test_parse_any_unicode_text(big_server: httpx.Client, detector: IntentDetector, text: str) -> None:
    response = post_json(big_server, "/model/parse", {"text": text})
    assert response.status_code == 200, response.text
    check_answer(response.json(), detector.detect(valid_unicode(text)), text)
    if valid_unicode(text) == text:  # raw UTF-8 too
        raw = big_server.post("/model/parse", content=json.dumps({"text": text}, ensure_ascii=False).encode())
        assert raw.status_code == 200 and raw.json() == response.json()


@settings(max_examples=80, deadline=None)
@given(text=any_text.map(lambda text: "/" + text))
def test_parse_shortcut_like_texts(default_server: httpx.Client, detector: IntentDetector, text: str) -> None:
    response = post_json(default_server, "/model/parse", {"text": text})
    assert response.status_code == 200, response.text
    answer = response.json()
    check_probability(float(answer["intent"]["confidence"]))
    shortcut = parse_intent_shortcut(valid_unicode(text))
    check_answer(answer, detector.detect(valid_unicode(text)) if shortcut is None else shortcut, text)


@FAST
@given(body=st.one_of(
    json_values,
    st.fixed_dictionaries({"text": json_values}),
    st.fixed_dictionaries({"text": any_text}, optional={"message_id": json_values, "token": json_values,
                                                        "model": json_values}),
))
def test_parse_wrong_json_types_are_400(big_server: httpx.Client, detector: IntentDetector, body: Any) -> None:
    response = post_json(big_server, "/model/parse", body)
    message_id = body.get("message_id") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(body.get("text"), str) and (
        message_id is None or isinstance(message_id, (str, int))
    ):
        assert response.status_code == 200, response.text
        check_answer(response.json(), detector.detect(valid_unicode(body["text"])), body["text"])
    else:
        check_error(response, 400)


@FAST
@given(body=st.one_of(json_values, st.fixed_dictionaries({"texts": json_values}),
                      st.fixed_dictionaries({"texts": st.lists(any_text, max_size=8)})))
def test_parse_batch_wrong_json_types_are_400(big_server: httpx.Client, detector: IntentDetector, body: Any) -> None:
    response = post_json(big_server, "/model/parse/batch", body)
    texts = body.get("texts") if isinstance(body, dict) else None
    if isinstance(texts, list) and all(isinstance(text, str) for text in texts):
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        expected = detector.detect_batch([valid_unicode(text) for text in texts])  # the server's batches
        assert len(results) == len(texts)
        for text, answer, result in zip(texts, results, expected, strict=True):
            check_answer(answer, result, text)
    else:
        check_error(response, 400)


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=64))
@example(content=b'{"text": "hi \\ud800", "message_id": 7}')  # each branch, whatever the random bytes
@example(content=b'{"text": "hi", "message_id": [7]}')
def test_parse_arbitrary_bytes(big_server: httpx.Client, detector: IntentDetector, content: bytes) -> None:
    response = big_server.post("/model/parse", content=content)
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        body = None
    valid = (isinstance(body, dict) and isinstance(body.get("text"), str)
             and (body.get("message_id") is None or isinstance(body["message_id"], (str, int))))
    if not valid:
        check_error(response, 400)
    else:
        assert response.status_code == 200, response.text
        check_answer(response.json(), detector.detect(valid_unicode(body["text"])), body["text"])


@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000, b'{"text": "hi", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
     b'{"text": ' + b"9" * 5000 + b"}", b'{"text": "hi", "message_id": ' + b"1" * 5000 + b"}",
     b'{"text": NaN}', b'{"text": "\\ud800", "message_id": Infinity}', b"\x00", b"\xef\xbb\xbf{}",
     b'{"text": "a\x00b"}'],
)
def test_pathological_json_is_400(big_server: httpx.Client, content: bytes) -> None:
    check_error(big_server.post("/model/parse", content=content), 400)
    assert big_server.get("/health").status_code == 200


def test_one_megabyte_text_on_the_server(big_server: httpx.Client, default_server: httpx.Client,
                                         detector: IntentDetector) -> None:
    check_error(post_json(default_server, "/model/parse", {"text": MEGABYTE_TEXT}), 413)
    response = big_server.post("/model/parse", json={"text": MEGABYTE_TEXT})  # raw UTF-8: 1.2 MB < 2 MiB
    assert response.status_code == 200, response.text
    check_answer(response.json(), detector.detect(MEGABYTE_TEXT), MEGABYTE_TEXT)


def test_batches_of_0_1_and_10000_texts_on_the_server(big_server: httpx.Client, default_server: httpx.Client,
                                                      detector: IntentDetector) -> None:
    assert post_json(default_server, "/model/parse/batch", {"texts": []}).json() == {"results": []}
    [answer] = post_json(default_server, "/model/parse/batch", {"texts": ["\ud800 hi"]}).json()["results"]
    check_answer(answer, detector.detect_batch(["\ufffd hi"])[0], "\ud800 hi")
    texts = [SPECIAL[i % len(SPECIAL)] + f" n{i}" for i in range(10_000)]
    check_error(post_json(default_server, "/model/parse/batch", {"texts": texts[:300]}), 400)  # max_batch 256
    check_error(post_json(default_server, "/model/parse/batch", {"texts": texts}), 413)  # 64 KiB
    response = post_json(big_server, "/model/parse/batch", {"texts": texts})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 10_000
    expected = detector.detect_batch([valid_unicode(text) for text in texts])
    for text, answer, result in zip(texts, results, expected, strict=True):
        check_answer(answer, result, text)
