"""The app's lifespan: the batcher and reload on ``SIGHUP`` while it serves; at shutdown the queued texts
are answered, the access log written and the model retired."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.concurrency import run_in_threadpool

from distilintent.server.batcher import Batcher
from distilintent.server.errors import RequestError
from distilintent.server.service import Service
from distilintent.server.stats import AccessLogWriter

logger = logging.getLogger("distilintent.server")


class SighupReloader:
    """Runs :meth:`Service.reload` off the event loop on each ``SIGHUP``; a failed reload is only logged."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.tasks: set[asyncio.Task[Any]] = set()
        self.installed = False

    def install(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Handle ``SIGHUP`` on ``loop`` where that can work: a bundle path, a POSIX system, the main thread."""
        if (self.service.model_path is None or not hasattr(signal, "SIGHUP")
                or threading.current_thread() is not threading.main_thread()):
            return False
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_signal, loop)
        except (NotImplementedError, RuntimeError, ValueError) as err:
            logger.warning("cannot reload on SIGHUP here: %s", err)
            return False
        self.installed = True
        return True

    def _on_signal(self, loop: asyncio.AbstractEventLoop) -> None:
        logger.info("SIGHUP: reloading %s", self.service.model_path)
        task = loop.create_task(self._reload())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reload(self) -> None:
        try:
            await run_in_threadpool(self.service.reload)
        except RequestError as err:
            logger.error("SIGHUP: %s", err.message)
        except Exception:  # noqa: BLE001 - a failed reload must not stop the server
            logger.exception("SIGHUP: reload failed")

    async def close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop handling ``SIGHUP`` and wait for the reloads already started."""
        if self.installed:
            loop.remove_signal_handler(signal.SIGHUP)
            self.installed = False
        for task in list(self.tasks):
            await task


def lifespan_for(service: Service, reload_on_sighup: bool, batcher: Batcher,
                 writer: AccessLogWriter) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """Starlette's ``lifespan=``: the batcher runs and SIGHUP reloads (if asked) while the app runs; at the end
    the batcher answers what it holds, the access log is written and the model is retired."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        reloader = SighupReloader(service)
        if reload_on_sighup:
            reloader.install(loop)
        batcher.start()
        try:
            yield
        finally:
            await reloader.close(loop)
            await batcher.close()
            writer.close()
            service.shutdown()

    return lifespan
