"""Rasa's external-NLU protocol: reading a request body, the token, the texts, and the parse answer."""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from distilintent.core.tokenization import valid_unicode
from distilintent.server.errors import RequestError

# Rasa's pattern for messages that name their intent (YAMLStoryReader._regex_message_pattern).
SHORTCUT = re.compile(r"^/(?P<name>[^{@]+)(?P<confidence>@[0-9.]+)?(?P<entities>{.+})?(?P<rest>.*)", re.DOTALL)


async def read_json(request: Request, max_body_bytes: int, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object; 413 past ``max_body_bytes`` (declared or streamed), 400 for anything else."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise RequestError(400, "BadRequest", "invalid Content-Length header") from None
        if declared > max_body_bytes:
            raise too_large(max_body_bytes)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_body_bytes:
                raise too_large(max_body_bytes)
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


def too_large(max_body_bytes: int) -> RequestError:
    return RequestError(413, "PayloadTooLarge", f"the request body is larger than {max_body_bytes} bytes")


def check_token(request: Request, token: bytes | None, body: dict[str, Any] | None = None) -> None:
    """401 unless ``token`` is None or the request has it (``?token=`` first, else ``"token"`` in the body).

    Compared with :func:`hmac.compare_digest`, in constant time.
    """
    if token is None:
        return
    given = request.query_params.get("token")
    if given is None and body is not None:
        given = body.get("token")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8"), token):
        raise RequestError(401, "NotAuthenticated", "missing or wrong token (send it as 'token' in the "
                                                    "JSON body or as ?token=)")


def text_of(body: dict[str, Any]) -> str:
    """The ``text`` of a ``/model/parse`` body (lone surrogates replaced), after checking ``message_id``."""
    text = body.get("text")
    if text is None:
        raise RequestError(400, "BadRequest", "the JSON body has no 'text'")
    if not isinstance(text, str):
        raise RequestError(400, "BadRequest", f"'text' must be a string, got {type(text).__name__}")
    text = valid_unicode(text)  # JSON may escape a lone surrogate, which no answer could encode
    message_id = body.get("message_id")
    if message_id is not None and not isinstance(message_id, (str, int)):
        raise RequestError(400, "BadRequest", "'message_id' must be a string")
    return text


def texts_of(body: dict[str, Any], max_batch: int) -> list[str]:
    """The ``texts`` of a ``/model/parse/batch`` body: a list of at most ``max_batch`` strings."""
    texts = body.get("texts")
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise RequestError(400, "BadRequest", "the JSON body needs 'texts': a list of strings")
    if len(texts) > max_batch:
        raise RequestError(400, "BadRequest", f"'texts' has {len(texts)} items; at most {max_batch} per request")
    return [valid_unicode(text) for text in texts]


def parse_answer(result: Any) -> dict[str, Any]:
    """Rasa's parse answer for an :class:`~distilintent.core.results.IntentResult` (no entities)."""
    rasa = result.to_rasa()
    return {"text": result.text, "intent": rasa["intent"], "entities": [], "intent_ranking": rasa["intent_ranking"]}


def parse_intent_shortcut(text: str) -> dict[str, Any] | None:
    """Rasa's answer for ``/intent@confidence{"entity": "value"}``, or None if ``text`` is not one."""
    stripped = text.strip()
    match = SHORTCUT.match(stripped) if stripped.startswith("/") else None
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
