"""Real servers for the tests: uvicorn in a thread, or ``distilintent serve`` as a subprocess, on 127.0.0.1.

The one copy of the helpers that start a server and wait for it. In-process servers bind port 0 and report
the port the kernel gave them; a subprocess gets a free port and is started again on another one if that
port was taken meanwhile. A server is ready when it answers ``GET /health`` and ``GET /status`` names a pid
of the process started (not some other server that took the port).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
BIND_ATTEMPTS = 5


def free_port() -> int:
    """A port free now; another process may take it before it is used (:func:`serve_process` retries)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(app: Any, log_level: str = "warning") -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn in a thread on 127.0.0.1, port 0 (the kernel's pick); yields the URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level=log_level, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextlib.contextmanager
def serve_process(bundle: Path, *args: str, log: Path, env: Mapping[str, str] | None = None,
                  access_log: bool = False, stdout: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``distilintent serve --model bundle *args`` on a free port (default host); yields (URL, process).

    ``log`` gets stderr (and stdout, unless ``stdout`` names a file of its own); ``env`` is added to this
    process's environment; ``--no-access-log`` unless ``access_log``. Stopped with SIGINT at the end.
    """
    environment = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    token = args[args.index("--token") + 1] if "--token" in args else environment.get("DISTILINTENT_TOKEN")
    for _ in range(BIND_ATTEMPTS):
        port = free_port()
        command = [sys.executable, "-m", "distilintent", "serve", "--model", str(bundle), "--port", str(port),
                   *([] if access_log else ["--no-access-log"]), *args]
        with log.open("w") as err, contextlib.ExitStack() as files:
            out = files.enter_context(stdout.open("w")) if stdout else err
            process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, env=environment)
        url = f"http://127.0.0.1:{port}"
        try:
            if wait_until_serving(process, url, log, token):
                break
        except BaseException:
            stop(process)
            raise
    else:
        raise RuntimeError(f"distilintent serve found no free port in {BIND_ATTEMPTS} attempts:\n{log.read_text()}")
    try:
        yield url, process
    finally:
        stop(process)


def wait_until_serving(process: subprocess.Popen, url: str, log: Path, token: str | None,
                       timeout: float = 90) -> bool:
    """True once ``process`` answers at ``url``; False if it exited because the port was taken; else raises."""
    def ours() -> bool:
        if httpx.get(f"{url}/health", timeout=2).status_code != 200:
            return False
        answer = httpx.get(f"{url}/status", params={"token": token} if token else None, timeout=5)
        if answer.status_code != 200:
            return False
        return not os.path.isdir("/proc/self/task") or answer.json()["pid"] in process_family(process.pid)

    try:
        wait_for(process, log, ours, "distilintent serve to answer", timeout=timeout)
    except ServerExited:
        if os.strerror(errno.EADDRINUSE).lower() in log.read_text().lower():
            return False
        raise
    return True


class ServerExited(AssertionError):
    """The server process exited while a test waited for it."""


def wait_for(process: subprocess.Popen, log: Path, condition: Callable[[], bool], what: str,
             timeout: float = 60) -> None:
    """Poll ``condition`` (HTTP errors count as not yet) until true; fail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ServerExited(f"the server exited ({process.returncode}) while waiting for {what}:\n"
                               f"{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)


def stop(process: subprocess.Popen) -> None:
    """SIGINT, then SIGKILL if the process has not exited within 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux ``/proc``; empty where it cannot be read)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
    return found


def process_family(pid: int) -> set[int]:
    """``pid`` and its children: the uvicorn parent and its workers."""
    return {pid, *children(pid)}


def worker_pids(pid: int) -> set[int]:
    """The uvicorn workers of ``distilintent serve --workers N`` at ``pid``: its multiprocessing-spawned children.

    Not the resource tracker multiprocessing also starts.
    """
    workers = set()
    for child in children(pid):
        with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as handle:
            if b"spawn_main" in handle.read():
                workers.add(child)
    return workers


def listening_addresses(port: int) -> set[str]:
    """The IPv4/IPv6 addresses a socket listens on at ``port``, read from /proc/net/tcp{,6} (Linux)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                address, port_hex = fields[1].split(":")
                if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    found.add(_decode_address(address))
    return found


def _decode_address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))  # each 32-bit word is little-endian
    return socket.inet_ntop(socket.AF_INET6, words)
