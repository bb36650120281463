"""Real servers for the tests: uvicorn in a thread, or ``distilintent serve`` as a subprocess, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(app: Any, log_level: str = "warning") -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yields the base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level=log_level, access_log=False,
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextlib.contextmanager
def serve_process(bundle: Path, *args: str, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``distilintent serve --model bundle *args`` on a free port (default host); yields (URL, process)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "distilintent", "serve", "--model", str(bundle), "--port", str(port),
             "--no-access-log", *args],
            cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"distilintent serve did not start:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url, process
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGINT, then SIGKILL if the process has not exited within 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


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
