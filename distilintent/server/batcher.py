"""The micro-batcher: concurrent requests' texts gathered into one model call, behind a bounded queue.

Requests hand their texts to :meth:`Batcher.submit` on the event loop. One collector task per worker
process waits up to ``batch_wait_ms`` after the first text queued (or until ``max_batch_texts`` are
queued), then runs ONE ``detector.detect_batch(texts)`` in a single worker thread and resolves each
request's future with its answer, already JSON-encoded in that thread. One model call runs at a time;
the texts that arrive meanwhile form the next batch. The queue holds at most ``max_queue`` texts
admitted and not yet answered; past that a request is refused at once with 503 and ``Retry-After``.

Batching never changes a result, so a variant whose results depend on its batch mates runs its texts
one by one (still off the loop, behind the same queue): ONNX Runtime *dynamic* INT8 computes one
activation scale per batch tensor. ``batching="on"`` forces batches anyway, ``"off"`` never batches.
Each batch runs on the detector it got from :meth:`Service.call`, so a reload lets it finish on the old one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from distilintent.server.errors import RequestError
from distilintent.server.service import Service

logger = logging.getLogger("distilintent.server")
BATCHING_SETTINGS = ("auto", "on", "off")
DEFAULT_BATCH_WAIT_MS = 0.0  # FP32, 50 clients: 340.9 vs 343.6 req/s with 2 ms, and a lone request waits 0
DEFAULT_MAX_BATCH_TEXTS = 32
DEFAULT_MAX_QUEUE = 1024  # four batch requests of the default --max-batch 256
RETRY_AFTER_S = 1
Finish = Callable[[Sequence[Any]], bytes]


def encode(content: Any) -> bytes:
    """JSON as Starlette's ``JSONResponse`` writes it."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def check_batching(batch_wait_ms: float, max_batch_texts: int, max_queue: int, batching: str) -> None:
    """ValueError for a negative wait, limits under 1 or an unknown ``batching`` setting."""
    if not batch_wait_ms >= 0:
        raise ValueError(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
    for name, value in (("max_batch_texts", max_batch_texts), ("max_queue", max_queue)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if batching not in BATCHING_SETTINGS:
        raise ValueError(f"batching must be one of {BATCHING_SETTINGS}, got {batching!r}")


def batch_dependent(detector: Any) -> tuple[bool, str]:
    """Whether the detector's results change with their batch mates, and why (for ``/status``).

    Export measures it (``batch_invariant`` in the variant's manifest entry: the largest probability
    change between a text alone and in a batch of 32 is at most 1e-5). Without that record, INT8 counts as
    batch-dependent (dynamic INT8 quantizes activations per batch; OpenVINO's static-shape INT8 models
    round differently from its dynamic one) and FP32 as batch-invariant.
    """
    variant = getattr(detector, "variant", None)
    name = getattr(variant, "name", None) or "this detector"
    entry = ((getattr(detector, "manifest", None) or {}).get("variants") or {}).get(getattr(variant, "name", ""), {})
    measured = entry.get("batch_invariant") if isinstance(entry, dict) else None
    if isinstance(measured, bool):
        effect = (entry.get("parity") or {}).get("max_batch_effect")
        detail = f" (largest probability change {effect:.1e})" if isinstance(effect, float) else ""
        if measured:
            return False, f"{name}: batch mates change no answer, measured at export{detail}"
        return True, f"{name}: batch mates change its answers, measured at export{detail}"
    if getattr(variant, "precision", None) == "int8":
        return True, f"{name}: INT8 not measured at export for batch effects (re-export to measure)"
    return False, f"{name}: FP32 results do not depend on batch mates"


def mode_for(detector: Any, batching: str) -> tuple[str, str]:
    """``("batched" | "one_by_one", reason)`` for ``detector`` under the ``batching`` setting."""
    if batching == "on":
        return "batched", "forced by batching=on"
    if batching == "off":
        return "one_by_one", "forced by batching=off"
    dependent, reason = batch_dependent(detector)
    return ("one_by_one" if dependent else "batched"), reason


@dataclass
class _Item:
    """One request's texts, how to encode its answer, and the future its handler awaits."""

    texts: list[str]
    finish: Finish
    future: asyncio.Future[bytes]
    arrived: float
    outcome: bytes | BaseException | None = field(default=None)


class Batcher:
    """Gathers the texts of concurrent requests into one model call (see the module's docstring)."""

    def __init__(self, service: Service, *, batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
                 max_batch_texts: int = DEFAULT_MAX_BATCH_TEXTS, max_queue: int = DEFAULT_MAX_QUEUE,
                 batching: str = "auto") -> None:
        check_batching(batch_wait_ms, max_batch_texts, max_queue, batching)
        self.service = service
        self.wait_s = batch_wait_ms / 1000
        self.max_batch_texts = max_batch_texts
        self.max_queue = max_queue
        self.batching = batching
        self.batches = 0
        self._queue: deque[_Item] = deque()
        self._queued_texts = 0  # waiting for a batch
        self._pending_texts = 0  # admitted and not answered: waiting or in the batch running now
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._seen: tuple[Any, tuple[str, str]] | None = None

    def mode(self) -> tuple[str, str]:
        """The mode in force for the detector now in service (cached per detector)."""
        detector = self.service.detector
        if self._seen is None or self._seen[0] is not detector:
            self._seen = (detector, mode_for(detector, self.batching))
        return self._seen[1]

    def describe(self) -> dict[str, Any]:
        """The ``batching`` part of ``GET /status`` (``queued_texts``: admitted, not yet answered)."""
        mode, reason = self.mode()
        return {"mode": mode, "setting": self.batching, "reason": reason, "batch_wait_ms": self.wait_s * 1000,
                "max_batch_texts": self.max_batch_texts, "max_queue": self.max_queue,
                "queued_texts": self._pending_texts, "batches": self.batches}

    def start(self) -> None:
        """Start the collector on the running loop (done by the lifespan, or by the first request)."""
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._executor = self._executor or ThreadPoolExecutor(1, thread_name_prefix="distilintent-model")
            self._task = asyncio.get_running_loop().create_task(self._collect(), name="distilintent-batcher")

    async def close(self) -> None:
        """Answer what is queued, then stop the collector and the model thread."""
        while self._queue or self._pending_texts:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, texts: Sequence[str], finish: Finish) -> bytes:
        """The answer ``finish(results)`` computed for ``texts``; 503 at once when the queue is full."""
        if self._pending_texts and self._pending_texts + len(texts) > self.max_queue:
            raise RequestError(503, "ServiceUnavailable",
                               f"the server is busy: {self._pending_texts} texts are queued (at most "
                               f"{self.max_queue}); retry in {RETRY_AFTER_S} s",
                               headers={"Retry-After": str(RETRY_AFTER_S)})
        self.start()
        loop = asyncio.get_running_loop()
        item = _Item(list(texts), finish, loop.create_future(), loop.time())
        self._queue.append(item)
        self._queued_texts += len(item.texts)
        self._pending_texts += len(item.texts)
        assert self._wake is not None
        self._wake.set()
        return await asyncio.shield(item.future)  # a client that goes away does not cancel the batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batched = self.mode()[0] == "batched"
            if batched:
                await self._gather(loop)
            batch = self._take(batched)
            try:
                await loop.run_in_executor(self._executor, self._work, batch)
            finally:
                self.batches += 1
                for item in batch:
                    self._pending_texts -= len(item.texts)
                    self._resolve(item)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until ``wait_s`` after the first queued text, or until a full batch is queued."""
        assert self._wake is not None
        deadline = self._queue[0].arrived + self.wait_s
        while self._queued_texts < self.max_batch_texts:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self, batched: bool) -> list[_Item]:
        """The next batch: items up to ``max_batch_texts`` texts (at least one item); one item if not batched."""
        batch = [self._queue.popleft()]
        total = len(batch[0].texts)
        while batched and self._queue and total + len(self._queue[0].texts) <= self.max_batch_texts:
            item = self._queue.popleft()
            batch.append(item)
            total += len(item.texts)
        self._queued_texts -= total
        return batch

    @staticmethod
    def _resolve(item: _Item) -> None:
        if item.future.done():
            return
        if isinstance(item.outcome, bytes):
            item.future.set_result(item.outcome)
        else:
            item.future.set_exception(item.outcome or RuntimeError("the batch ended without an answer"))

    # -- in the model thread ---------------------------------------------------------------------------

    def _work(self, batch: list[_Item]) -> None:
        """Run ``batch`` on the detector in service; each item gets its encoded answer or its exception."""
        try:
            self.service.call(lambda detector: self._answer(detector, batch))
        except Exception as exc:  # noqa: BLE001 - handed to each request, answered as a 500
            for item in batch:
                if item.outcome is None:
                    item.outcome = exc

    def _answer(self, detector: Any, batch: list[_Item]) -> None:
        mode, _ = mode_for(detector, self.batching)  # the detector this batch runs on, even after a reload
        texts = [text for item in batch for text in item.texts]
        try:
            if mode == "batched":
                results = detector.detect_batch(texts, batch_size=max(1, min(len(texts), self.max_batch_texts)))
            else:
                results = [detector.detect(text) for text in texts]
        except Exception as exc:
            if len(batch) == 1:
                batch[0].outcome = exc
                return
            for item in batch:  # one bad text must not fail its batch mates' requests
                self._answer(detector, [item])
            return
        start = 0
        for item in batch:
            mine = results[start : start + len(item.texts)]
            start += len(item.texts)
            try:
                item.outcome = item.finish(mine)
            except Exception as exc:  # noqa: BLE001 - that request's 500
                item.outcome = exc
