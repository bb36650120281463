"""Request counters (shown by ``GET /status``) and the access log, one line per request, never the text."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Collection
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_logger = logging.getLogger("distilintent.server.access")
OTHER_PATH = "(other)"


class RequestStats:
    """Thread-safe request counters by route and status."""

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
    """Counts every HTTP request and logs one line per request (path, status, time; no query, no body).

    Paths not in ``paths`` (the app's routes) are counted as ``(other)``, so that probes cannot grow the counters.
    """

    def __init__(self, app: ASGIApp, stats: RequestStats, paths: Collection[str]) -> None:
        self.app = app
        self.stats = stats
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope.get("path", "")
        counted = path if path in self.paths else OTHER_PATH
        status = None

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.stats.record(counted, status)  # before the client sees it
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if status is None:  # failed before answering: the server answers 500
                status = 500
                self.stats.record(counted, status)
            client = scope.get("client") or ("-", 0)
            access_logger.info(
                '%s "%s %s" %d %.1fms', client[0], scope.get("method", "-"), path, status,
                (time.perf_counter() - start) * 1000,
            )
