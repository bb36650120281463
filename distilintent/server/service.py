"""The state behind the routes: the model in service, its hot reload and shutdown, limits and counters."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from distilintent.server.errors import RequestError
from distilintent.server.stats import RequestStats

logger = logging.getLogger("distilintent.server")
RELOAD_TEST_TEXT = "hello"
MANIFEST_SUMMARY = ("base_model", "max_length", "oos_label", "created_at", "package_version", "metrics")
_T = TypeVar("_T")


def model_fingerprint(manifest: dict[str, Any] | None) -> str | None:
    """sha256 of a bundle's manifest, which holds the sha256 of every file: any change to the bundle changes it."""
    if not manifest:
        return None
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def check_limits(max_body_bytes: int, max_batch: int) -> None:
    """ValueError unless both limits are at least 1."""
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")


class LoadedModel:
    """A detector in service, with its identity and the number of requests using it."""

    def __init__(self, detector: Any, owned: bool) -> None:
        self.detector = detector
        self.owned = owned  # closed by the server once retired and unused
        self.fingerprint = model_fingerprint(getattr(detector, "manifest", None))
        self.loaded_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        self.users = 0
        self.retired = False

    def describe(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "loaded_at": self.loaded_at, "variant": variant_name(self.detector),
                "labels": len(self.detector.labels)}

    def close(self) -> None:
        if self.owned and callable(getattr(self.detector, "close", None)):
            try:
                self.detector.close()
            except Exception:  # noqa: BLE001 - closing must not fail a request or a reload
                logger.exception("error while closing a retired model")


def variant_name(detector: Any) -> str | None:
    return getattr(getattr(detector, "variant", None), "name", None)


class Service:
    """The model in service (swapped by :meth:`reload`), the token, the limits and the request counters.

    ``model_path`` is None for a server started with a detector object: there is nothing to reload, and that
    detector stays the caller's (never closed here).
    """

    def __init__(self, detector: Any, *, owns_detector: bool, token: str | None = None,
                 max_body_bytes: int, max_batch: int, intent_shortcuts: bool = True,
                 model_path: str | None = None, detector_options: dict[str, Any] | None = None) -> None:
        check_limits(max_body_bytes, max_batch)
        self.token = token.encode("utf-8") if token else None
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        self.intent_shortcuts = intent_shortcuts
        self.stats = RequestStats()
        self.model_path = model_path
        self.detector_options = dict(detector_options or {})
        self.reloads = 0
        self.reloads_failed = 0  # bundles refused by a reload (the old model kept serving)
        self._model = LoadedModel(detector, owns_detector)
        self._lock = threading.Lock()  # guards _model and the users counts
        self._reload_lock = threading.Lock()  # one reload at a time

    @property
    def detector(self) -> Any:
        """The detector now in service."""
        return self._model.detector

    def call(self, work: Callable[[Any], _T]) -> _T:
        """``work(detector)`` on the model in service; a reload meanwhile closes that model only afterwards."""
        with self._lock:
            loaded = self._model
            loaded.users += 1
        try:
            return work(loaded.detector)
        finally:
            with self._lock:
                loaded.users -= 1
                unused = loaded.retired and loaded.users == 0
            if unused:
                loaded.close()

    def _retire(self, loaded: LoadedModel) -> None:
        """Mark a model out of service (no new request gets it); close it now if no request is using it."""
        with self._lock:
            loaded.retired = True
            unused = loaded.users == 0
        if unused:
            loaded.close()

    def reload(self) -> dict[str, Any]:
        """Load the bundle at ``model_path`` again and swap it in; blocking (run it off the event loop).

        Raises :class:`RequestError` (409) when the bundle cannot be loaded; the old model stays in service.
        """
        if self.model_path is None:
            raise RequestError(409, "ReloadFailed", "this server was started with a detector object, not a bundle "
                                                    "path: there is nothing to reload")
        with self._reload_lock:
            started = time.perf_counter()
            current = self._model
            still = f"still serving the model loaded at {current.loaded_at} (fingerprint {current.fingerprint})"
            try:
                detector, notes = self._load(still)
            except RequestError:
                self.reloads_failed += 1
                raise
            new = LoadedModel(detector, owned=True)
            with self._lock:
                old, self._model = self._model, new
            self._retire(old)
            self.reloads += 1
        elapsed = time.perf_counter() - started
        logger.info("reloaded %s in %.2f s: fingerprint %s (was %s)", self.model_path, elapsed, new.fingerprint,
                    old.fingerprint)
        return {"status": "ok", "model": new.describe(), "previous": old.describe(),
                "reload_s": round(elapsed, 3), "warnings": notes}

    def _load(self, still: str) -> tuple[Any, list[str]]:
        """A new detector on ``model_path`` that has answered a test text, and the warnings of loading it."""
        from distilintent.core.errors import DistilIntentError
        from distilintent.sdk import IntentDetector

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                detector = IntentDetector(self.model_path, **self.detector_options)
            except (DistilIntentError, OSError, ValueError) as err:
                logger.error("reload of %s failed: %s", self.model_path, err)
                raise RequestError(409, "ReloadFailed", f"the bundle was not reloaded: {err}; {still}") from None
        notes = [str(warning.message) for warning in caught]
        for note in notes:
            logger.warning("reload: %s", note)
        try:
            detector.detect(RELOAD_TEST_TEXT)  # a model that cannot answer is never put in service
        except Exception as err:  # noqa: BLE001 - any failure means: keep the old model
            logger.error("reload of %s failed on a test text", self.model_path, exc_info=err)
            detector.close()
            raise RequestError(409, "ReloadFailed", f"the new model failed on a test text "
                                                    f"({type(err).__name__}); {still}") from None
        return detector, notes

    def shutdown(self) -> None:
        """Retire the model in service (closed now, or when its last request ends, if the server owns it)."""
        self._retire(self._model)

    def status(self) -> dict[str, Any]:
        """The answer of ``GET /status``: the model in service (public detector attributes only) and the counters."""
        from distilintent import __version__

        loaded = self._model
        detector = loaded.detector
        manifest = dict(getattr(detector, "manifest", None) or {})
        model = {key: manifest[key] for key in MANIFEST_SUMMARY if key in manifest}
        model.update(fingerprint=loaded.fingerprint, loaded_at=loaded.loaded_at, reloads=self.reloads,
                     reloads_failed=self.reloads_failed)
        answer = {
            "status": "ok",
            "version": __version__,
            "labels": list(detector.labels),
            "num_labels": len(detector.labels),
            "variant": variant_name(detector),
            "fallback_threshold": getattr(detector, "fallback_threshold", None),
            "fallback_intent": getattr(detector, "fallback_intent", None),
            "ood_method": getattr(detector, "ood_method", None),
            "ood_threshold": getattr(detector, "ood_threshold", None),
            "model": model,
            "requests": self.stats.snapshot(),
            "pid": os.getpid(),
        }
        rule = getattr(detector, "fallback_rule", None)
        if callable(getattr(rule, "describe", None)):
            answer["fallback_rule"] = rule.describe()
        return answer
