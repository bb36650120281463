"""Request counters (shown by ``GET /status``) and the access log, one line per request, never the text,
written by a thread of its own (:class:`AccessLogWriter`)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Collection
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_logger = logging.getLogger("distilintent.server.access")
OTHER_PATH = "(other)"
ACCESS_FORMAT = '%s "%s %s" %d %.1fms'


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


class AccessLogWriter:
    """Writes the access lines in a thread of its own, so that formatting and I/O stay off the event loop.

    :meth:`write` only queues the line's values (in order); :meth:`close` writes what is queued and stops.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def write(self, *args: Any) -> None:
        """Queue one line (the arguments of ``ACCESS_FORMAT``) unless the access logger would drop it."""
        if not access_logger.isEnabledFor(logging.INFO):
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._drain, name="distilintent-access-log", daemon=True)
                self._thread.start()
        self._queue.put(args)

    def _drain(self) -> None:
        while (args := self._queue.get()) is not None:
            access_logger.info(ACCESS_FORMAT, *args)  # a handler's own error goes to its handleError

    def close(self, timeout: float = 10) -> None:
        """Write the queued lines and stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)


class AccessLogMiddleware:
    """Counts every HTTP request and logs one line per request (path, status, time; no query, no body).

    Paths not in ``paths`` (the app's routes) are counted as ``(other)``, so that probes cannot grow the counters.
    """

    def __init__(self, app: ASGIApp, stats: RequestStats, paths: Collection[str],
                 writer: AccessLogWriter | None = None) -> None:
        self.app = app
        self.stats = stats
        self.paths = frozenset(paths)
        self.writer = writer or AccessLogWriter()

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
            self.writer.write(client[0], scope.get("method", "-"), path, status,
                              (time.perf_counter() - start) * 1000)
