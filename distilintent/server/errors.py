"""Errors answered as JSON in Rasa's shape ``{"status": "failure", "reason", "message", "code"}``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

logger = logging.getLogger("distilintent.server")
Handler = Callable[[Request], Awaitable[Response]]
HTTP_REASONS = {404: "NotFound", 405: "MethodNotAllowed"}


class RequestError(Exception):
    """A client error answered as JSON: ``code`` is the HTTP status, ``reason`` Rasa's reason word."""

    def __init__(self, code: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.headers = headers  # e.g. Retry-After on a 503


def error_response(code: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON answer for an error."""
    return JSONResponse({"status": "failure", "reason": reason, "message": message, "code": code}, status_code=code,
                        headers=headers)


async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
    return error_response(exc.code, exc.reason, exc.message, exc.headers)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in the same shape."""
    code = getattr(exc, "status_code", 500)
    return error_response(code, HTTP_REASONS.get(code, "HTTPError"), str(getattr(exc, "detail", "")))


EXCEPTION_HANDLERS = {RequestError: on_request_error, HTTPException: on_http_error}


def guarded(handler: Handler) -> Handler:
    """Answer an unexpected failure with a JSON 500 (details only in the log); the server lives on."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except (RequestError, HTTPException):
            raise
        except Exception as exc:  # noqa: BLE001 - nothing may crash the server or leak a traceback
            logger.error("error while handling %s %s", request.method, request.url.path, exc_info=exc)
            return error_response(500, "InternalError", "the server failed to handle the request; see its log")

    endpoint.__name__ = endpoint.__qualname__ = handler.__name__
    return endpoint
