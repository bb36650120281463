"""The ASGI app factories: :func:`create_app` for Python callers, :func:`create_app_from_env` for uvicorn workers."""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette

from distilintent.server.batcher import (
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_MAX_BATCH_TEXTS,
    DEFAULT_MAX_QUEUE,
    Batcher,
    check_batching,
)
from distilintent.server.errors import EXCEPTION_HANDLERS
from distilintent.server.lifespan import lifespan_for
from distilintent.server.routes import routes
from distilintent.server.service import Service, check_limits
from distilintent.server.stats import AccessLogMiddleware, AccessLogWriter

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_BATCH = 256
ENV_PREFIX = "DISTILINTENT_SERVE_"


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
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    max_batch_texts: int = DEFAULT_MAX_BATCH_TEXTS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    batching: str = "auto",
) -> Starlette:
    """The ASGI app serving ``model``: a bundle path, or an already built ``IntentDetector``.

    A detector passed in stays the caller's (it is not closed on shutdown, and ``POST /model/reload``
    answers 409); one built from a path is the server's, and a reload loads that path again.
    ``backend`` … ``fallback_intent`` are passed to :class:`distilintent.sdk.IntentDetector` when the
    model is a path, and ignored otherwise. ``intent_shortcuts`` answers ``/intent`` texts as Rasa does.
    ``reload_on_sighup`` installs a ``SIGHUP`` handler that reloads (only where the app's lifespan runs in
    the main thread, as under ``distilintent serve``).

    Texts of concurrent requests are classified together (:mod:`distilintent.server.batcher`): a batch is
    run ``batch_wait_ms`` after its first text or at ``max_batch_texts``; past ``max_queue`` texts waiting a
    request gets 503 with ``Retry-After``. ``batching`` ``"auto"`` runs texts one by one for variants whose
    results depend on their batch mates (ONNX Runtime dynamic INT8), ``"on"`` always batches, ``"off"`` never.
    """
    check_limits(max_body_bytes, max_batch)
    check_batching(batch_wait_ms, max_batch_texts, max_queue, batching)
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
    service = Service(detector, owns_detector=owns, token=token, max_body_bytes=max_body_bytes, max_batch=max_batch,
                      intent_shortcuts=intent_shortcuts, model_path=os.fspath(model) if owns else None,
                      detector_options=options)
    batcher = Batcher(service, batch_wait_ms=batch_wait_ms, max_batch_texts=max_batch_texts, max_queue=max_queue,
                      batching=batching)
    writer = AccessLogWriter()
    table = routes()
    app = Starlette(routes=table, exception_handlers=EXCEPTION_HANDLERS,
                    lifespan=lifespan_for(service, reload_on_sighup, batcher, writer))
    app.state.service = service
    app.state.batcher = batcher
    app.add_middleware(AccessLogMiddleware, stats=service.stats, paths=[route.path for route in table], writer=writer)
    return app


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
        batch_wait_ms=float(env.get(ENV_PREFIX + "BATCH_WAIT_MS", DEFAULT_BATCH_WAIT_MS)),
        max_batch_texts=int(env.get(ENV_PREFIX + "MAX_BATCH_TEXTS", DEFAULT_MAX_BATCH_TEXTS)),
        max_queue=int(env.get(ENV_PREFIX + "MAX_QUEUE", DEFAULT_MAX_QUEUE)),
        batching=env.get(ENV_PREFIX + "BATCHING", "auto"),
    )
