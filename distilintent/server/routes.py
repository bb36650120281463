"""The route handlers; each finds the :class:`~distilintent.server.service.Service` on ``app.state.service``
and the :class:`~distilintent.server.batcher.Batcher` that runs the model on ``app.state.batcher``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from distilintent.server import protocol
from distilintent.server.batcher import Batcher, encode
from distilintent.server.errors import guarded
from distilintent.server.service import Service

logger = logging.getLogger("distilintent.server")


def batcher_of(request: Request) -> Batcher:
    """The app's micro-batcher."""
    return request.app.state.batcher


def json_bytes(body: bytes) -> Response:
    """An answer already encoded (in the model thread)."""
    return Response(body, media_type="application/json")


async def authorised(request: Request, allow_empty: bool = False) -> tuple[Service, dict[str, Any]]:
    """The service and the request's JSON body, once the body is within the limit and the token checks out."""
    service: Service = request.app.state.service
    body = await protocol.read_json(request, service.max_body_bytes, allow_empty=allow_empty)
    protocol.check_token(request, service.token, body)
    return service, body


async def parse(request: Request) -> Response:
    """``POST /model/parse``: one text, classified in a batch with the texts of concurrent requests."""
    service, body = await authorised(request)
    text = protocol.text_of(body)
    if service.intent_shortcuts:
        shortcut = protocol.parse_intent_shortcut(text)
        if shortcut is not None:
            return JSONResponse(shortcut)

    def finish(results: Sequence[Any]) -> bytes:  # in the model thread: the encoding stays off the event loop
        service.stats.add_texts(1)
        return encode(protocol.parse_answer(results[0]))

    return json_bytes(await batcher_of(request).submit([text], finish))


async def parse_batch(request: Request) -> Response:
    """``POST /model/parse/batch``: a list of texts, shortcuts answered without the model."""
    service, body = await authorised(request)
    texts = protocol.texts_of(body, service.max_batch)
    answers: list[dict[str, Any] | None] = [
        protocol.parse_intent_shortcut(text) if service.intent_shortcuts else None for text in texts
    ]
    todo = [i for i, answer in enumerate(answers) if answer is None]
    if not todo:
        return JSONResponse({"results": answers})

    def finish(results: Sequence[Any]) -> bytes:
        for i, result in zip(todo, results, strict=True):
            answers[i] = protocol.parse_answer(result)
        service.stats.add_texts(len(todo))
        return encode({"results": answers})

    return json_bytes(await batcher_of(request).submit([texts[i] for i in todo], finish))


async def status(request: Request) -> JSONResponse:
    """``GET /status``: needs the token, if the server has one."""
    service: Service = request.app.state.service
    protocol.check_token(request, service.token)
    answer = service.status()
    answer["batching"] = batcher_of(request).describe()
    return JSONResponse(answer)


async def health(request: Request) -> JSONResponse:
    """``GET /health``: never needs the token."""
    return JSONResponse({"status": "ok"})


async def reload(request: Request) -> JSONResponse:
    """``POST /model/reload``: the bundle the server was started with, never a path from the request."""
    service, body = await authorised(request, allow_empty=True)
    ignored = sorted(key for key in body if key != "token")
    if ignored:
        logger.warning("POST /model/reload ignores %s: it reloads the bundle the server was started with", ignored)
    answer = await run_in_threadpool(service.reload)
    if ignored:
        answer["ignored"] = ignored
    return JSONResponse(answer)


def routes() -> list[Route]:
    """The server's routes; all but ``/health`` answer an unexpected failure with a JSON 500."""
    return [
        Route("/model/parse", guarded(parse), methods=["POST"]),
        Route("/model/parse/batch", guarded(parse_batch), methods=["POST"]),
        Route("/status", guarded(status), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/model/reload", guarded(reload), methods=["POST"]),
    ]
