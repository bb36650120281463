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
- ``GET /status`` (token required when one is set): labels, model summary (with its ``fingerprint`` and
  ``loaded_at``, which change on a reload, and the number of ``reloads``), request counts, the worker's pid.
- ``GET /health``: ``{"status": "ok"}``, never needs the token.
- ``POST /model/reload`` (token required when one is set): load the bundle at the path the server was
  started with again, e.g. after ``distilintent train``/``export`` replaced it. A body, if any, must be a
  JSON object; anything in it but ``token`` is ignored: the server never loads a path a request names.
  ``distilintent serve`` also reloads on ``SIGHUP``.

Hot reload: the new detector is built and answers a test text while the old one keeps serving; then one
reference swap puts it in service. Each request holds the detector it started with, so requests in
flight finish on the old model, which is closed when the last of them is done (both models are in
memory meanwhile). A bundle that fails to load gets 409 ``ReloadFailed`` with the error (no traceback)
and the old model keeps serving. Reloads run one at a time. With ``--workers N`` each worker process
has its own model: ``POST /model/reload`` reloads only the worker that receives it, so send ``SIGHUP``
to the parent process instead, which makes uvicorn replace the workers one by one (each new one loads
the bundle and must start before the old one is stopped, gracefully; if the bundle is bad the new
worker fails to start and the old one is kept).

Errors are JSON in Rasa's shape ``{"status": "failure", "reason", "message", "code"}``: 400 for a body that
is not a JSON object or lacks a string ``text``, 401 for a wrong or missing token, 413 for a body over
``max_body_bytes``, 409 for a failed reload. A failure inside the model gives 500 with no traceback (it
goes to the log). Inference runs off the event loop. Each request writes one access-log line (method,
path, status, milliseconds; never the text) to the ``distilintent.server.access`` logger.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

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
RELOAD_TEST_TEXT = "hello"
_T = TypeVar("_T")


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


def model_fingerprint(manifest: dict[str, Any] | None) -> str | None:
    """sha256 of a bundle's manifest, which holds the sha256 of every file: any change to the bundle changes it."""
    if not manifest:
        return None
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class _LoadedModel:
    """A detector in service, with its identity and the number of requests using it."""

    def __init__(self, detector: Any, owned: bool) -> None:
        self.detector = detector
        self.owned = owned  # closed by the server once retired and unused
        self.fingerprint = model_fingerprint(getattr(detector, "manifest", None))
        self.loaded_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        self.users = 0
        self.retired = False

    def describe(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "loaded_at": self.loaded_at,
                "variant": getattr(getattr(self.detector, "variant", None), "name", None),
                "labels": len(self.detector.labels)}

    def close(self) -> None:
        if self.owned and callable(getattr(self.detector, "close", None)):
            try:
                self.detector.close()
            except Exception:  # noqa: BLE001 - closing must not fail a request or a reload
                logger.exception("error while closing a retired model")


class _Service:
    """The state behind the routes: the model in service, token, limits, counters."""

    def __init__(self, detector: Any, token: str | None, max_body_bytes: int, max_batch: int,
                 owns_detector: bool, model_path: str | None = None,
                 detector_options: dict[str, Any] | None = None) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.token = token.encode("utf-8") if token else None
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        self.stats = RequestStats()
        self.model_path = model_path  # None: started with a detector object, nothing to reload
        self.detector_options = dict(detector_options or {})
        self.reloads = 0
        self._model = _LoadedModel(detector, owns_detector)
        self._lock = threading.Lock()  # guards _model and the users counts
        self._reload_lock = threading.Lock()  # one reload at a time

    # -- the model in service -------------------------------------------------------------------------

    @property
    def detector(self) -> Any:
        """The detector now in service."""
        return self._model.detector

    def call(self, work: Callable[[Any], _T]) -> _T:
        """``work(detector)`` on the model in service; a reload meanwhile closes that model only afterwards."""
        with self._lock:
            loaded = self._model
            loaded.users += 1
        try:
            return work(loaded.detector)
        finally:
            with self._lock:
                loaded.users -= 1
                unused = loaded.retired and loaded.users == 0
            if unused:
                loaded.close()

    def _retire(self, loaded: _LoadedModel) -> None:
        """Mark a model out of service (no new request gets it); close it now if no request is using it."""
        with self._lock:
            loaded.retired = True
            unused = loaded.users == 0
        if unused:
            loaded.close()

    def reload(self) -> dict[str, Any]:
        """Load the bundle at ``model_path`` again and swap it in; blocking (run it off the event loop).

        Raises :class:`RequestError` (409) when the bundle cannot be loaded; the old model stays in service.
        """
        if self.model_path is None:
            raise RequestError(409, "ReloadFailed", "this server was started with a detector object, not a bundle "
                                                    "path: there is nothing to reload")
        from distilintent.core.errors import DistilIntentError
        from distilintent.sdk import IntentDetector

        with self._reload_lock:
            started = time.perf_counter()
            current = self._model
            still = f"still serving the model loaded at {current.loaded_at} (fingerprint {current.fingerprint})"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    detector = IntentDetector(self.model_path, **self.detector_options)
                except (DistilIntentError, OSError, ValueError) as err:
                    logger.error("reload of %s failed: %s", self.model_path, err)
                    raise RequestError(409, "ReloadFailed", f"the bundle was not reloaded: {err}; {still}") from None
            notes = [str(warning.message) for warning in caught]
            for note in notes:
                logger.warning("reload: %s", note)
            try:
                detector.detect(RELOAD_TEST_TEXT)  # a model that cannot answer is never put in service
            except Exception as err:  # noqa: BLE001 - any failure means: keep the old model
                logger.error("reload of %s failed on a test text", self.model_path, exc_info=err)
                detector.close()
                raise RequestError(409, "ReloadFailed", f"the new model failed on a test text "
                                                        f"({type(err).__name__}); {still}") from None
            new = _LoadedModel(detector, owned=True)
            with self._lock:
                old, self._model = self._model, new
            self._retire(old)
            self.reloads += 1
        elapsed = time.perf_counter() - started
        logger.info("reloaded %s in %.2f s: fingerprint %s (was %s)", self.model_path, elapsed, new.fingerprint,
                    old.fingerprint)
        return {"status": "ok", "model": new.describe(), "previous": old.describe(),
                "reload_s": round(elapsed, 3), "warnings": notes}

    def shutdown(self) -> None:
        """Retire the model in service (closed now, or when its last request ends, if the server owns it)."""
        self._retire(self._model)

    # -- request helpers ------------------------------------------------------------------------------

    async def read_json(self, request: Request, allow_empty: bool = False) -> dict[str, Any]:
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
            if allow_empty:
                return {}
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

        loaded = self._model
        detector = loaded.detector
        manifest = dict(getattr(detector, "manifest", None) or {})
        model = {key: manifest[key] for key in ("base_model", "max_length", "oos_label", "created_at",
                                                "package_version", "metrics") if key in manifest}
        model.update(fingerprint=loaded.fingerprint, loaded_at=loaded.loaded_at, reloads=self.reloads)
        return {
            "status": "ok",
            "version": __version__,
            "labels": list(detector.labels),
            "num_labels": len(detector.labels),
            "variant": getattr(getattr(detector, "variant", None), "name", None),
            "fallback_threshold": getattr(detector, "fallback_threshold", None),
            "fallback_intent": getattr(detector, "fallback_intent", None),
            "ood_method": getattr(detector, "ood_method", None),
            "ood_threshold": getattr(detector, "ood_threshold", None),
            "model": model,
            "requests": self.stats.snapshot(),
            "pid": os.getpid(),
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
    reload_on_sighup: bool = False,
) -> Starlette:
    """The ASGI app serving ``model``: a bundle path, or an already built ``IntentDetector``.

    A detector passed in stays the caller's (it is not closed on shutdown, and ``POST /model/reload``
    answers 409); one built from a path is the server's, and a reload loads that path again.
    ``backend`` … ``fallback_intent`` are passed to :class:`distilintent.sdk.IntentDetector` when the
    model is a path, and ignored otherwise. ``intent_shortcuts`` answers ``/intent`` texts as Rasa does.
    ``reload_on_sighup`` installs a ``SIGHUP`` handler that reloads (only where the app's lifespan runs in
    the main thread, as under ``distilintent serve``).
    """
    owns = isinstance(model, (str, os.PathLike))
    options = {"backend": backend, "precision": precision, "threads": threads,
               "fallback_threshold": fallback_threshold, "fallback_intent": fallback_intent}
    if owns:
        from distilintent.sdk import IntentDetector

        detector = IntentDetector(model, **options)
    elif callable(getattr(model, "detect", None)) and callable(getattr(model, "detect_batch", None)):
        detector = model
    else:
        raise TypeError(f"model must be a bundle path or an IntentDetector, got {type(model).__name__}")
    service = _Service(detector, token, max_body_bytes, max_batch, owns,
                       model_path=os.fspath(model) if owns else None, detector_options=options)

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
        # asyncio.to_thread: the executor IntentDetector.adetect uses
        result = await asyncio.to_thread(service.call, lambda detector: detector.detect(text))
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
            chosen = [texts[i] for i in todo]
            results: Sequence[Any] = await run_in_threadpool(service.call,
                                                             lambda detector: detector.detect_batch(chosen))
            for i, result in zip(todo, results, strict=True):
                answers[i] = service.parse_answer(result)
            service.stats.add_texts(len(todo))
        return JSONResponse({"results": answers})

    async def status(request: Request) -> JSONResponse:
        service.check_token(request)
        return JSONResponse(service.status())

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def reload(request: Request) -> JSONResponse:
        body = await service.read_json(request, allow_empty=True)
        service.check_token(request, body)
        ignored = sorted(key for key in body if key != "token")
        if ignored:  # never a path from a request: only the bundle the operator started the server with
            logger.warning("POST /model/reload ignores %s: it reloads the bundle the server was started with",
                           ignored)
        answer = await run_in_threadpool(service.reload)
        if ignored:
            answer["ignored"] = ignored
        return JSONResponse(answer)

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

    background: set[asyncio.Task[Any]] = set()

    async def reload_on_signal() -> None:
        try:
            await run_in_threadpool(service.reload)
        except RequestError as err:
            logger.error("SIGHUP: %s", err.message)
        except Exception:  # noqa: BLE001 - a failed reload must not stop the server
            logger.exception("SIGHUP: reload failed")

    def on_sighup(loop: asyncio.AbstractEventLoop) -> None:
        logger.info("SIGHUP: reloading %s", service.model_path)
        task = loop.create_task(reload_on_signal())
        background.add(task)
        task.add_done_callback(background.discard)

    @asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202 - an async context manager
        loop = asyncio.get_running_loop()
        hup = (reload_on_sighup and service.model_path is not None and hasattr(signal, "SIGHUP")
               and threading.current_thread() is threading.main_thread())
        if hup:
            try:
                loop.add_signal_handler(signal.SIGHUP, on_sighup, loop)
            except (NotImplementedError, RuntimeError, ValueError) as err:
                logger.warning("cannot reload on SIGHUP here: %s", err)
                hup = False
        try:
            yield
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in list(background):
                await task
            service.shutdown()

    routes = [
        Route("/model/parse", guarded(parse), methods=["POST"]),
        Route("/model/parse/batch", guarded(parse_batch), methods=["POST"]),
        Route("/status", guarded(status), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/model/reload", guarded(reload), methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={RequestError: on_request_error, HTTPException: on_http_error},
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(AccessLogMiddleware, stats=service.stats)
    return app


_ROUTE_PATHS = frozenset({"/model/parse", "/model/parse/batch", "/status", "/health", "/model/reload"})


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
        reload_on_sighup=True,
    )
