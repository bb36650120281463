"""A Rasa-compatible NLU server: ``POST /model/parse`` as Rasa's external-NLU protocol expects it.

Point a Rasa assistant's ``endpoints.yml`` at it::

    nlu:
      url: "http://127.0.0.1:5006"
      token: "the same secret as --token"   # optional

Routes:

- ``POST /model/parse`` ``{"text", "message_id"?, "token"?}`` → ``{"text", "intent": {"name", "confidence"},
  "entities": [], "intent_ranking": [...]}`` (Rasa sends the token in the body; ``?token=`` works too).
  A text such as ``/greet`` or ``/inform@0.9{"city": "Berlin"}`` (Rasa buttons) is answered like
  Rasa's own server answers it: that intent (confidence 1.0 unless given) and those entities.
- ``POST /model/parse/batch`` ``{"texts": [...], "token"?}`` → ``{"results": [<parse answer>, ...]}``.
- ``GET /status`` (token required when one is set): labels, model summary, request counts.
- ``GET /health``: ``{"status": "ok"}``, never needs the token.

Errors are JSON in Rasa's shape ``{"status": "failure", "reason", "message", "code"}``: 400 for a body that
is not a JSON object or lacks a string ``text``, 401 for a wrong or missing token, 413 for a body over
``max_body_bytes``. A failure inside the model gives 500 with no traceback (it goes to the log).
Inference runs off the event loop. Each request writes one access-log line (method, path, status,
milliseconds; never the text) to the ``distilintent.server.access`` logger.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from distilintent.core.deps import require
from distilintent.core.tokenization import valid_unicode

require("starlette", "server", "The NLU server")

from starlette.applications import Starlette  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import ClientDisconnect, Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

logger = logging.getLogger("distilintent.server")
access_logger = logging.getLogger("distilintent.server.access")

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_BATCH = 256
# Rasa's pattern for messages that name their intent (YAMLStoryReader._regex_message_pattern).
_SHORTCUT = re.compile(r"^/(?P<name>[^{@]+)(?P<confidence>@[0-9.]+)?(?P<entities>{.+})?(?P<rest>.*)", re.DOTALL)
ENV_PREFIX = "DISTILINTENT_SERVE_"


class RequestError(Exception):
    """A client error answered as JSON: ``code`` is the HTTP status, ``reason`` Rasa's reason word."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def error_response(code: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"status": "failure", "reason": reason, "message": message, "code": code}, status_code=code)


class RequestStats:
    """Thread-safe request counters by route and status, shown by ``GET /status``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_status: Counter[str] = Counter()
        self._by_path: Counter[str] = Counter()
        self.texts = 0
        self.started = time.time()

    def record(self, path: str, status: int) -> None:
        with self._lock:
            self._by_status[str(status)] += 1
            self._by_path[path] += 1

    def add_texts(self, count: int) -> None:
        with self._lock:
            self.texts += count

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": sum(self._by_status.values()),
                "by_status": dict(sorted(self._by_status.items())),
                "by_path": dict(sorted(self._by_path.items())),
                "texts_classified": self.texts,
                "uptime_s": round(time.time() - self.started, 3),
            }


class AccessLogMiddleware:
    """Counts every HTTP request and logs one line per request (path, status, time; no query, no body)."""

    def __init__(self, app: ASGIApp, stats: RequestStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope.get("path", "")
        status = None

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.stats.record(path if path in _ROUTE_PATHS else "(other)", status)  # before the client sees it
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if status is None:  # failed before answering: the server answers 500
                status = 500
                self.stats.record(path if path in _ROUTE_PATHS else "(other)", status)
            client = scope.get("client") or ("-", 0)
            access_logger.info(
                '%s "%s %s" %d %.1fms', client[0], scope.get("method", "-"), path, status,
                (time.perf_counter() - start) * 1000,
            )


class _Service:
    """The state behind the routes: detector, token, limits, counters."""

    def __init__(self, detector: Any, token: str | None, max_body_bytes: int, max_batch: int,
                 owns_detector: bool) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.detector = detector
        self.token = token.encode("utf-8") if token else None
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        self.owns_detector = owns_detector
        self.stats = RequestStats()

    # -- request helpers ------------------------------------------------------------------------------

    async def read_json(self, request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise RequestError(400, "BadRequest", "invalid Content-Length header") from None
            if declared > self.max_body_bytes:
                raise self._too_large()
        body = bytearray()
        try:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > self.max_body_bytes:
                    raise self._too_large()
        except ClientDisconnect:  # nobody will read the answer; not a server error to log with a traceback
            raise RequestError(400, "BadRequest", "the client disconnected before sending the whole body") from None
        if not body.strip():
            raise RequestError(400, "BadRequest", "the request body is empty; send a JSON object")
        try:
            data = json.loads(bytes(body))
        except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, >4300-digit integers, deep nesting
            raise RequestError(400, "BadRequest", f"the request body is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise RequestError(400, "BadRequest", f"expected a JSON object, got {type(data).__name__}")
        return data

    def _too_large(self) -> RequestError:
        return RequestError(413, "PayloadTooLarge", f"the request body is larger than {self.max_body_bytes} bytes")

    def check_token(self, request: Request, body: dict[str, Any] | None = None) -> None:
        if self.token is None:
            return
        given = request.query_params.get("token")
        if given is None and body is not None:
            given = body.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8"), self.token):
            raise RequestError(401, "NotAuthenticated", "missing or wrong token (send it as 'token' in the "
                                                        "JSON body or as ?token=)")

    # -- answers -----------------------------------------------------------------------------------------

    @staticmethod
    def parse_answer(result: Any) -> dict[str, Any]:
        rasa = result.to_rasa()
        return {"text": result.text, "intent": rasa["intent"], "entities": [],
                "intent_ranking": rasa["intent_ranking"]}

    def status(self) -> dict[str, Any]:
        from distilintent import __version__

        manifest = dict(getattr(self.detector, "manifest", None) or {})
        model = {key: manifest[key] for key in ("base_model", "max_length", "oos_label", "created_at",
                                                "package_version", "metrics") if key in manifest}
        return {
            "status": "ok",
            "version": __version__,
            "labels": list(self.detector.labels),
            "num_labels": len(self.detector.labels),
            "variant": getattr(getattr(self.detector, "variant", None), "name", None),
            "fallback_threshold": getattr(self.detector, "fallback_threshold", None),
            "fallback_intent": getattr(self.detector, "fallback_intent", None),
            "model": model,
            "requests": self.stats.snapshot(),
        }


def parse_intent_shortcut(text: str) -> dict[str, Any] | None:
    """Rasa's answer for ``/intent@confidence{"entity": "value"}``, or None if ``text`` is not one."""
    stripped = text.strip()
    match = _SHORTCUT.match(stripped) if stripped.startswith("/") else None
    if match is None or not match.group("name").strip():
        return None
    confidence = 1.0
    if match.group("confidence"):
        try:
            confidence = min(1.0, float(match.group("confidence")[1:]))
        except ValueError:
            confidence = 0.0
    entities = []
    if match.group("entities"):
        try:
            values = json.loads(match.group("entities"))
        except json.JSONDecodeError:
            values = {}
        if isinstance(values, dict):
            start, end = match.start("entities"), match.end("entities")
            for entity, value in values.items():
                for item in value if isinstance(value, list) else [value]:
                    entities.append({"entity": entity, "value": item, "start": start, "end": end})
    intent = {"name": match.group("name").strip(), "confidence": confidence}
    return {"text": stripped, "intent": intent, "entities": entities, "intent_ranking": [dict(intent)]}


async def _detect_one(detector: Any, text: str) -> Any:
    adetect = getattr(detector, "adetect", None)
    if adetect is not None:
        return await adetect(text)
    return await run_in_threadpool(detector.detect, text)


def create_app(
    model: Any,
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    backend: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    fallback_threshold: float | None = None,
    fallback_intent: str = "nlu_fallback",
    intent_shortcuts: bool = True,
) -> Starlette:
    """The ASGI app serving ``model``: a bundle path, or an already built ``IntentDetector``.

    A detector passed in stays the caller's (it is not closed on shutdown); one built from a path is.
    ``backend`` … ``fallback_intent`` are passed to :class:`distilintent.sdk.IntentDetector` when the
    model is a path, and ignored otherwise. ``intent_shortcuts`` answers ``/intent`` texts as Rasa does.
    """
    owns = isinstance(model, (str, os.PathLike))
    if owns:
        from distilintent.sdk import IntentDetector

        detector = IntentDetector(model, backend=backend, precision=precision, threads=threads,
                                  fallback_threshold=fallback_threshold, fallback_intent=fallback_intent)
    elif callable(getattr(model, "detect", None)) and callable(getattr(model, "detect_batch", None)):
        detector = model
    else:
        raise TypeError(f"model must be a bundle path or an IntentDetector, got {type(model).__name__}")
    service = _Service(detector, token, max_body_bytes, max_batch, owns)

    async def parse(request: Request) -> JSONResponse:
        body = await service.read_json(request)
        service.check_token(request, body)
        text = body.get("text")
        if text is None:
            raise RequestError(400, "BadRequest", "the JSON body has no 'text'")
        if not isinstance(text, str):
            raise RequestError(400, "BadRequest", f"'text' must be a string, got {type(text).__name__}")
        text = valid_unicode(text)  # JSON may escape a lone surrogate, which no answer could encode
        message_id = body.get("message_id")
        if message_id is not None and not isinstance(message_id, (str, int)):
            raise RequestError(400, "BadRequest", "'message_id' must be a string")
        if intent_shortcuts:
            shortcut = parse_intent_shortcut(text)
            if shortcut is not None:
                return JSONResponse(shortcut)
        result = await _detect_one(service.detector, text)
        service.stats.add_texts(1)
        return JSONResponse(service.parse_answer(result))

    async def parse_batch(request: Request) -> JSONResponse:
        body = await service.read_json(request)
        service.check_token(request, body)
        texts = body.get("texts")
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise RequestError(400, "BadRequest", "the JSON body needs 'texts': a list of strings")
        if len(texts) > service.max_batch:
            raise RequestError(400, "BadRequest",
                               f"'texts' has {len(texts)} items; at most {service.max_batch} per request")
        texts = [valid_unicode(text) for text in texts]
        answers: list[dict[str, Any] | None] = [
            parse_intent_shortcut(text) if intent_shortcuts else None for text in texts
        ]
        todo = [i for i, answer in enumerate(answers) if answer is None]
        if todo:
            results: Sequence[Any] = await run_in_threadpool(service.detector.detect_batch, [texts[i] for i in todo])
            for i, result in zip(todo, results, strict=True):
                answers[i] = service.parse_answer(result)
            service.stats.add_texts(len(todo))
        return JSONResponse({"results": answers})

    async def status(request: Request) -> JSONResponse:
        service.check_token(request)
        return JSONResponse(service.status())

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(exc.code, exc.reason, exc.message)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        code = getattr(exc, "status_code", 500)
        reasons = {404: "NotFound", 405: "MethodNotAllowed"}
        return error_response(code, reasons.get(code, "HTTPError"), str(getattr(exc, "detail", "")))

    def guarded(handler: Callable[[Request], Awaitable[JSONResponse]]) -> Callable[[Request], Awaitable[JSONResponse]]:
        """Answer an unexpected failure with a JSON 500 (details only in the log); the server lives on."""

        async def endpoint(request: Request) -> JSONResponse:
            try:
                return await handler(request)
            except (RequestError, HTTPException):
                raise
            except Exception as exc:  # noqa: BLE001 - nothing may crash the server or leak a traceback
                logger.error("error while handling %s %s", request.method, request.url.path, exc_info=exc)
                return error_response(500, "InternalError", "the server failed to handle the request; see its log")

        return endpoint

    @asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202 - an async context manager
        yield
        if service.owns_detector and callable(getattr(service.detector, "close", None)):
            service.detector.close()

    routes = [
        Route("/model/parse", guarded(parse), methods=["POST"]),
        Route("/model/parse/batch", guarded(parse_batch), methods=["POST"]),
        Route("/status", guarded(status), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={RequestError: on_request_error, HTTPException: on_http_error},
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(AccessLogMiddleware, stats=service.stats)
    return app


_ROUTE_PATHS = frozenset({"/model/parse", "/model/parse/batch", "/status", "/health"})


def create_app_from_env() -> Starlette:
    """Factory for uvicorn workers: reads the settings ``distilintent serve`` put in ``DISTILINTENT_SERVE_*``."""
    env = os.environ
    try:
        model = env[ENV_PREFIX + "MODEL"]
    except KeyError:
        raise RuntimeError(f"{ENV_PREFIX}MODEL is not set; start the server with 'distilintent serve'") from None
    threads = env.get(ENV_PREFIX + "THREADS")
    threshold = env.get(ENV_PREFIX + "FALLBACK_THRESHOLD")
    return create_app(
        model,
        token=env.get(ENV_PREFIX + "TOKEN") or None,
        max_body_bytes=int(env.get(ENV_PREFIX + "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
        max_batch=int(env.get(ENV_PREFIX + "MAX_BATCH", DEFAULT_MAX_BATCH)),
        backend=env.get(ENV_PREFIX + "BACKEND", "auto"),
        precision=env.get(ENV_PREFIX + "PRECISION", "auto"),
        threads=int(threads) if threads else None,
        fallback_threshold=float(threshold) if threshold else None,
        intent_shortcuts=env.get(ENV_PREFIX + "INTENT_SHORTCUTS", "1") != "0",
    )
