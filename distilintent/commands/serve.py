"""``distilintent serve``: the Rasa-compatible NLU server (see :mod:`distilintent.server`).

The token comes from ``$DISTILINTENT_TOKEN``; ``--token`` works too but shows in ``ps`` (a warning says so).
``kill -HUP <pid>`` reloads the bundle from ``--model`` without dropping a request (``POST /model/reload``
does the same for one worker); with ``--workers N`` uvicorn then replaces the workers one by one.
``--batch-wait-ms``, ``--max-batch-texts``, ``--max-queue`` and ``--batching`` set each worker's micro-batcher
(:mod:`distilintent.server.batcher`).
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "serve a bundle over HTTP with Rasa's /model/parse protocol (needs the [server] extra)"
TOKEN_VARIABLE = "DISTILINTENT_TOKEN"
TOKEN_WARNING = (f"distilintent serve: warning: a --token on the command line is visible to every user of this "
                 f"machine (ps, /proc); set ${TOKEN_VARIABLE} instead")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", required=True, metavar="BUNDLE", help="the model bundle directory")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; use 0.0.0.0 only behind a firewall or proxy)")
    parser.add_argument("--port", type=int, default=5006, help="port (default 5006)")
    parser.add_argument("--token", default=None,
                        help=f"require this token (Rasa's endpoints.yml nlu: token). Prefer setting ${TOKEN_VARIABLE}, "
                             f"the default: a token on the command line shows in ps")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (default 1); SIGHUP to the server process reloads the bundle in all")
    parser.add_argument("--max-body-bytes", type=int, default=64 * 1024,
                        help="larger request bodies get 413 (default 65536)")
    parser.add_argument("--max-batch", type=int, default=256, help="most texts per /model/parse/batch request")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0,
                        help="also wait this long after a batch's first text for more (default 0: a batch is what "
                             "queued while the previous model call ran, so a lone request waits for nothing)")
    parser.add_argument("--max-batch-texts", type=int, default=32,
                        help="most texts per model call; a full batch runs at once (default 32)")
    parser.add_argument("--max-queue", type=int, default=1024,
                        help="most texts waiting per worker; past it requests get 503 with Retry-After (default 1024)")
    parser.add_argument("--batching", choices=("auto", "on", "off"), default="auto",
                        help="auto (default): batch, except variants whose results depend on their batch mates "
                             "(ONNX Runtime dynamic INT8), which run one text at a time; on: always batch; off: never")
    parser.add_argument("--backend", choices=("auto", "openvino", "onnxruntime"), default="auto")
    parser.add_argument("--precision", choices=("auto", "int8", "fp32"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="inference threads per worker")
    parser.add_argument("--fallback-threshold", type=float, default=None,
                        help="confidence below which the intent is the fallback (default: the bundle's)")
    parser.add_argument("--no-intent-shortcuts", action="store_true",
                        help="classify texts like '/greet' with the model instead of answering them as Rasa does")
    parser.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info")
    parser.add_argument("--no-access-log", action="store_true", help="do not log one line per request")


def run(args: argparse.Namespace) -> int:
    from distilintent.core.deps import require

    uvicorn = require("uvicorn", "server", "distilintent serve")
    require("starlette", "server", "distilintent serve")
    from distilintent.core.bundle import Bundle
    from distilintent.server.app import ENV_PREFIX

    for name in ("workers", "max_body_bytes", "max_batch", "max_batch_texts", "max_queue"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.batch_wait_ms >= 0:
        raise ValueError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    Bundle.open(args.model)  # fail here, with the bundle's own message, rather than in every worker
    settings = {
        "MODEL": os.path.abspath(args.model),
        "TOKEN": token(args) or "",
        "MAX_BODY_BYTES": args.max_body_bytes,
        "MAX_BATCH": args.max_batch,
        "BATCH_WAIT_MS": args.batch_wait_ms,
        "MAX_BATCH_TEXTS": args.max_batch_texts,
        "MAX_QUEUE": args.max_queue,
        "BATCHING": args.batching,
        "BACKEND": args.backend,
        "PRECISION": args.precision,
        "THREADS": args.threads or "",
        "FALLBACK_THRESHOLD": "" if args.fallback_threshold is None else args.fallback_threshold,
        "INTENT_SHORTCUTS": "0" if args.no_intent_shortcuts else "1",
    }
    for key, value in settings.items():
        os.environ[ENV_PREFIX + key] = str(value)
    log_config = _log_config(args.log_level, access=not args.no_access_log)
    uvicorn.run(
        "distilintent.server:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        log_config=log_config,
        access_log=False,  # the app writes its own access line (uvicorn's would repeat it)
        server_header=False,
    )
    return 0


def token(args: argparse.Namespace) -> str | None:
    """``--token``, with a warning on stderr (it shows in ``ps``), else ``$DISTILINTENT_TOKEN``."""
    if args.token is not None:
        print(TOKEN_WARNING, file=sys.stderr, flush=True)
        return args.token
    return os.environ.get(TOKEN_VARIABLE)


def _log_config(level: str, access: bool) -> dict:
    """uvicorn's logs plus the server's own on stderr, one format."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": handler},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "distilintent": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "distilintent.server.access": {"level": "INFO" if access else "WARNING"},
        },
    }
