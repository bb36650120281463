"""Over-HTTP rows of ``distilintent bench``: a ``distilintent serve`` process and Rasa 3.6's ``rasa run``.

Both answer Rasa's ``POST /model/parse`` on 127.0.0.1 and are measured the same way from the bench
process, one request per text over a kept-alive ``http.client`` connection, so the HTTP cost is
alike for both. Cold start is spawn → first ``/model/parse`` answer (polled every 20 ms); RSS and
peak RSS (VmHWM) are summed over the server's process tree, read from ``/proc``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RASA_ENV = {"RASA_TELEMETRY_ENABLED": "false", "SQLALCHEMY_SILENCE_UBER_WARNING": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONWARNINGS": "ignore::DeprecationWarning", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
IDLE_RECONNECT_S = 2.0  # servers close idle keep-alive connections (Sanic and uvicorn after 5 s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_rasa_venv() -> Path:
    """``$DISTILINTENT_RASA_VENV`` or the checkout's ``.venv-rasa`` (built by ``tests/rasa/venvs.py``)."""
    return Path(os.environ.get("DISTILINTENT_RASA_VENV") or REPO / ".venv-rasa")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``); just ``[pid]`` where that cannot be read."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo += [int(child) for child in handle.read().split()]
        except OSError:
            continue
    return found


def memory_mb(pid: int) -> dict[str, float | None]:
    """RSS and peak RSS (VmHWM) of a process tree in MB (None where ``/proc`` is unavailable)."""
    totals: dict[str, float | None] = {"rss_mb": None, "peak_rss_mb": None}
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as handle:
                for line in handle:
                    for field, key in (("VmRSS:", "rss_mb"), ("VmHWM:", "peak_rss_mb")):
                        if line.startswith(field):
                            totals[key] = (totals[key] or 0.0) + int(line.split()[1]) / 1024
        except OSError:
            continue
    return totals


class HttpServer:
    """A ``/model/parse`` server subprocess, with ``detect``/``detect_batch`` over HTTP for the bench."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str], port: int,
                 batch_path: str | None = None, status_path: str | None = None, cwd: Path | None = None,
                 startup_timeout: float = 300.0) -> None:
        self.name = name
        self.command = list(command)
        self.env = env
        self.port = port
        self.batch_path = batch_path
        self.status_path = status_path
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.served_variant: str | None = None
        self.cold_start: dict[str, Any] = {}
        self._connection: http.client.HTTPConnection | None = None
        self._last_use = 0.0
        self._log = tempfile.NamedTemporaryFile(prefix=f"distilintent-bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self, probe: str) -> HttpServer:
        """Spawn the server and wait for its first ``/model/parse`` answer (the cold start)."""
        started = time.perf_counter()
        self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name}: the server exited with {self.process.returncode} before answering: "
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{self.name}: no /model/parse answer within {self.startup_timeout:.0f} s: "
                                   f"{self.log_tail()}")
            try:
                answer = self._post("/model/parse", {"text": probe})
                if isinstance(answer.get("intent"), dict):
                    break
            except (OSError, http.client.HTTPException, ValueError):
                self._drop_connection()
            time.sleep(0.02)
        self.cold_start = {"cold_start_s": time.perf_counter() - started, **memory_mb(self.process.pid),
                           "method": "server process: spawn → first /model/parse answer over HTTP (one start)"}
        if self.status_path:
            self.served_variant = self._get(self.status_path).get("variant")
        return self

    def close(self) -> None:
        self._drop_connection()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def memory(self) -> dict[str, float | None]:
        assert self.process is not None
        return memory_mb(self.process.pid)

    # -- requests ------------------------------------------------------------------------------------

    def before_window(self) -> None:
        """Reconnect (untimed) when the kept-alive connection may have been closed by the server's timeout."""
        if time.monotonic() - self._last_use > IDLE_RECONNECT_S:
            self._drop_connection()
            self._connect()

    def detect(self, text: str) -> dict[str, Any]:
        return self._post("/model/parse", {"text": text})

    def detect_batch(self, texts: Sequence[str], batch_size: int = 32) -> list[Any]:
        """``/model/parse/batch`` in chunks of ``batch_size`` where the server has it, else one request a text."""
        if self.batch_path is None:
            return [self.detect(text) for text in texts]
        out: list[Any] = []
        for start in range(0, len(texts), batch_size):
            out += self._post(self.batch_path, {"texts": list(texts[start: start + batch_size])})["results"]
        return out

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _get(self, path: str) -> dict[str, Any]:
        return self._post(path, None)

    def _post(self, path: str, payload: dict[str, Any] | None, retry: bool = True) -> dict[str, Any]:
        """POST ``payload`` as JSON (GET when it is None) and return the JSON answer."""
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        try:
            connection = self._connect()
            connection.request("GET" if body is None else "POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self._drop_connection()  # closed by the server while idle: once more on a new connection
            if not retry:
                raise
            return self._post(path, payload, retry=False)
        self._last_use = time.monotonic()
        if response.status != 200:
            raise RuntimeError(f"{self.name}: {path} answered {response.status}: {data[:300]!r}")
        return json.loads(data)


def serve_server(bundle: Path, threads: int | None) -> HttpServer:
    """``distilintent serve`` on the bundle (its default variant), one worker, no access log."""
    port = free_port()
    command = [sys.executable, "-m", "distilintent", "serve", "--model", str(bundle), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log"]
    if threads:
        command += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("DISTILINTENT_TOKEN", None)
    return HttpServer("serve-http", command, env, port, batch_path="/model/parse/batch", status_path="/status",
                      startup_timeout=120)


def rasa_server(model: Path, venv: Path, threads: int | None) -> HttpServer:
    """Rasa 3.6's own server, ``rasa run --enable-api -m MODEL``, from the Python 3.10 Rasa venv.

    With ``threads``, TensorFlow gets ``threads`` intra-op and 1 inter-op thread (Rasa's
    ``TF_INTRA_OP_PARALLELISM_THREADS``/``TF_INTER_OP_PARALLELISM_THREADS``), like ONNX Runtime here.
    """
    python = venv / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"no Rasa venv at {venv} (build it: python tests/rasa/venvs.py, or set "
                                "DISTILINTENT_RASA_VENV / --rasa-venv)")
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"))}
    env.update(RASA_ENV)
    if threads:
        env.update({"TF_INTRA_OP_PARALLELISM_THREADS": str(threads), "TF_INTER_OP_PARALLELISM_THREADS": "1"})
    workdir = Path(tempfile.mkdtemp(prefix="distilintent-bench-rasa-"))
    command = [str(python), "-m", "rasa", "run", "--enable-api", "--model", str(Path(model).resolve()), "--interface",
               "127.0.0.1", "--port", str(port), "--log-file", str(workdir / "rasa.log")]
    return HttpServer("rasa-diet-http", command, env, port, batch_path=None, cwd=workdir, startup_timeout=600)
