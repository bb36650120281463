"""A Rasa-compatible NLU server: ``POST /model/parse`` as Rasa's external-NLU protocol expects it.

Point a Rasa assistant's ``endpoints.yml`` at it::

    nlu:
      url: "http://127.0.0.1:5006"
      token: "the same secret as $DISTILINTENT_TOKEN"   # optional

Routes:

- ``POST /model/parse`` ``{"text", "message_id"?, "token"?}`` → ``{"text", "intent": {"name", "confidence"},
  "entities": [], "intent_ranking": [...]}`` (Rasa sends the token in the body; ``?token=`` works too).
  A text such as ``/greet`` or ``/inform@0.9{"city": "Berlin"}`` (Rasa buttons) is answered like
  Rasa's own server answers it: that intent (confidence 1.0 unless given) and those entities.
- ``POST /model/parse/batch`` ``{"texts": [...], "token"?}`` → ``{"results": [<parse answer>, ...]}``.
- ``GET /status`` (token required when one is set): labels, model summary (with its ``fingerprint`` and
  ``loaded_at``, which change on a reload, the number of ``reloads`` and of ``reloads_failed``), request
  counts, the worker's pid.
- ``GET /health``: ``{"status": "ok"}``, never needs the token.
- ``POST /model/reload`` (token required when one is set): load the bundle at the path the server was
  started with again, e.g. after ``distilintent train``/``export`` replaced it. A body, if any, must be a
  JSON object; anything in it but ``token`` is ignored: the server never loads a path a request names.
  ``distilintent serve`` also reloads on ``SIGHUP``.

Hot reload (:mod:`distilintent.server.service`): the new detector is built and answers a test text while
the old one keeps serving; then one reference swap puts it in service. Each request holds the detector it
started with, so requests in flight finish on the old model, which is closed when the last of them is done.
A bundle that fails to load gets 409 ``ReloadFailed`` and the old model keeps serving. With
``--workers N`` send ``SIGHUP`` to the parent process: uvicorn replaces the workers one by one.

Errors are JSON in Rasa's shape ``{"status": "failure", "reason", "message", "code"}``
(:mod:`distilintent.server.errors`). Each request writes one access-log line (method, path, status,
milliseconds; never the text) to the ``distilintent.server.access`` logger (:mod:`distilintent.server.stats`).

Batching (:mod:`distilintent.server.batcher`): the texts of concurrent requests are classified in one
``detect_batch`` call in a model thread, ``batch_wait_ms`` after the first or at ``max_batch_texts``; past
``max_queue`` texts a request gets 503 with ``Retry-After`` at once. Variants whose results depend on their
batch mates (ONNX Runtime dynamic INT8) run texts one by one unless ``batching="on"``; ``/status`` says which.

Modules: ``app`` (the factories), ``routes`` (the handlers), ``protocol`` (request bodies, token, answers),
``service`` (the model in service, reload, status), ``batcher`` (the micro-batcher and its queue),
``lifespan`` (SIGHUP, shutdown), ``stats``, ``errors``.
"""

from __future__ import annotations

from distilintent.core.deps import require

require("starlette", "server", "The NLU server")  # before any module of the package imports it

from distilintent.server.app import create_app, create_app_from_env  # noqa: E402

__all__ = ["create_app", "create_app_from_env"]
