"""Load run of ``distilintent serve``: throughput, latency, errors, flat RSS, /health under load, disconnects.

    python benchmarks/server_load.py runs/clinc150 --data ../shared/data/clinc150/clinc150.jsonl --split validation

Starts ``distilintent serve`` (a real uvicorn subprocess, default host 127.0.0.1, a free port) on the bundle,
warms it up, then sends ``--requests`` (default 20,000) ``POST /model/parse`` from ``--clients`` (default 50)
concurrent keep-alive HTTP/1.1 connections (a lean asyncio client), each request with a ``--timeout``.
Every answer must be a 200 whose ``text`` is the text sent and whose intent is a label of the bundle or the
fallback intent; anything else is an error.
Meanwhile:

- one client polls ``GET /health`` every ``--health-interval`` s on its own connection (latency, failures);
- ``--disconnects`` clients (default 100) each send a request and abort the connection: half after the
  whole request, half in the middle of the body;
- the server's RSS (the process and its children, from /proc) is sampled; growth = (end − after warm-up) /
  after warm-up, the warm-up being ``--warmup`` requests from as many concurrent clients (so that the
  server's thread pool and the runtime's buffers are all there before the baseline).

Afterwards the server must still answer ``/health`` and a parse, and stop cleanly on SIGINT. Client and server
share this machine's CPUs, so throughput is a lower bound for the server alone. Writes ``<name>.json`` and
``<name>.md`` into ``--out``; exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distilintent.bench.runner import read_texts  # noqa: E402
from distilintent.bench.scripts import machine_summary, script_parser, write_report  # noqa: E402
from distilintent.bench.servers import free_port, process_tree  # noqa: E402
from distilintent.bench.timing import percentiles  # noqa: E402
from distilintent.core.bundle import Bundle  # noqa: E402

FALLBACK = "nlu_fallback"


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and its descendants."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/statm") as handle:
            total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants."""
    ticks = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


class Server:
    """``distilintent serve`` in a subprocess, its output in a log file."""

    def __init__(self, bundle: Path, extra: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with log.open("w") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "distilintent", "serve", "--model", str(bundle), "--port", str(self.port),
                 "--no-access-log", "--log-level", "warning", *extra],
                cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env,
            )

    def wait_ready(self, timeout: float = 120) -> float:
        start = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"distilintent serve exited {self.process.returncode}:\n{self.log.read_text()}")
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"distilintent serve did not answer /health in {timeout} s")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                time.sleep(0.1)

    def rss(self) -> int:
        return tree_rss_bytes(self.process.pid)

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return -9
        return self.process.returncode


class Connection:
    """One keep-alive HTTP/1.1 connection: a lean client, so that the load generator takes little of the CPU."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json"
                          f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status, length, close = int(status_line.split()[1]), None, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length is None:
            raise ConnectionError("an answer without Content-Length")
        answer = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None


async def load(port: int, texts: list[str], valid: set[str], clients: int, requests: int, timeout: float,
               server: Server, on_done: asyncio.Event) -> dict[str, Any]:
    """``requests`` parses from ``clients`` concurrent keep-alive connections; every answer is checked."""
    latencies: list[int] = []
    errors: dict[str, int] = {}
    examples: list[str] = []
    next_index = 0
    rss_samples: list[int] = []

    def error(kind: str, detail: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1
        if len(examples) < 10:
            examples.append(f"{kind}: {detail[:200]}")

    async def client_loop() -> None:
        nonlocal next_index
        connection = Connection("127.0.0.1", port)
        while next_index < requests:
            index = next_index
            next_index += 1
            if index % max(1, requests // 20) == 0:
                rss_samples.append(server.rss())
            text = texts[index % len(texts)]
            body = json.dumps({"text": text, "message_id": str(index)}).encode()
            start = time.perf_counter_ns()
            try:
                status, content = await asyncio.wait_for(connection.post("/model/parse", body), timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as err:
                connection.close()  # its state is unknown: a new connection for the next request
                error("timeout" if isinstance(err, asyncio.TimeoutError) else type(err).__name__, repr(err))
                continue
            latencies.append(time.perf_counter_ns() - start)
            if status != 200:
                error(f"HTTP {status}", content.decode(errors="replace"))
                continue
            try:
                answer = json.loads(content)
                if answer["text"] != text or answer["intent"]["name"] not in valid:
                    error("wrong answer", json.dumps(answer)[:200])
                elif not 0.0 <= float(answer["intent"]["confidence"]) <= 1.0:
                    error("bad confidence", str(answer["intent"]))
            except (ValueError, KeyError, TypeError) as err:
                error("unreadable answer", repr(err))
        connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    on_done.set()
    return {"clients": clients, "requests": requests, "answered": len(latencies), "seconds": round(elapsed, 3),
            "requests_per_s": round(requests / elapsed, 1), "errors": sum(errors.values()), "errors_by_kind": errors,
            "error_examples": examples, "latency": percentiles(latencies) if latencies else None,
            "rss_samples": rss_samples}


async def poll_health(url: str, interval: float, done: asyncio.Event) -> dict[str, Any]:
    """``GET /health`` every ``interval`` s on a connection of its own until ``done``."""
    latencies: list[int] = []
    failures: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while not done.is_set():
            start = time.perf_counter_ns()
            try:
                response = await client.get("/health")
                if response.status_code == 200 and response.json() == {"status": "ok"}:
                    latencies.append(time.perf_counter_ns() - start)
                else:
                    failures.append(f"HTTP {response.status_code}")
            except httpx.HTTPError as err:
                failures.append(repr(err))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=interval)
    return {"polls": len(latencies) + len(failures), "failures": len(failures), "failure_examples": failures[:5],
            "latency": percentiles(latencies) if latencies else None}


async def disconnecting_clients(port: int, count: int, spread_s: float) -> dict[str, Any]:
    """``count`` raw connections that send a parse request and abort: whole request, or half the body."""
    done = {"after_request": 0, "mid_body": 0, "connect_failures": 0}
    for i in range(count):
        await asyncio.sleep(spread_s / max(count, 1))
        body = json.dumps({"text": f"a client that will hang up {i}"}).encode()
        head = (f"POST /model/parse HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        mid_body = i % 2 == 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            done["connect_failures"] += 1
            continue
        writer.write(head + (body[: len(body) // 2] if mid_body else body))
        await writer.drain()
        if not mid_body:
            await asyncio.sleep(0.001)  # the request is in; the model is running or about to
        writer.transport.abort()  # RST: no orderly close
        done["mid_body" if mid_body else "after_request"] += 1
    return done


async def run_load(args: argparse.Namespace, server: Server, texts: list[str], valid: set[str]) -> dict[str, Any]:
    done = asyncio.Event()
    health = asyncio.create_task(poll_health(server.url, args.health_interval, done))
    spread = max(1.0, args.requests / 2000)  # disconnects spread over roughly the first part of the load
    disconnects = asyncio.create_task(disconnecting_clients(server.port, args.disconnects, spread))
    loaded = await load(server.port, texts, valid, args.clients, args.requests, args.timeout, server, done)
    return {"load": loaded, "health": await health, "disconnects": await disconnects}


def final_checks(server: Server, valid: set[str]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        checks["health"] = httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        answer = httpx.post(f"{server.url}/model/parse", json={"text": "still there?"}, timeout=30)
        checks["parse"] = answer.status_code == 200 and answer.json()["intent"]["name"] in valid
        status = httpx.get(f"{server.url}/status", timeout=10)
        checks["status"] = status.json() if status.status_code == 200 else {"http": status.status_code}
    except httpx.HTTPError as err:
        checks["error"] = repr(err)
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, "server_load")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--requests", type=int, default=20_000, help="parse requests in all (default 20,000)")
    parser.add_argument("--warmup", type=int, default=1000,
                        help="parse requests from as many clients before the RSS baseline (default 1,000)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s (default 30)")
    parser.add_argument("--health-interval", type=float, default=0.1, help="s between /health polls")
    parser.add_argument("--disconnects", type=int, default=100, help="clients that abort mid-request")
    parser.add_argument("--serve-args", default="", help="options for distilintent serve, e.g. '--threads 1'")
    args = parser.parse_args(argv)
    serve_args = shlex.split(args.serve_args)
    if "--token" in serve_args:
        parser.error("no --token: the load run sends none")
    os.environ.pop("DISTILINTENT_TOKEN", None)  # serve's default token

    bundle = Bundle.open(args.bundle)
    valid = set(bundle.labels) | {FALLBACK}
    real, _, source = read_texts(args.data, args.split, bundle)
    texts = list(dict.fromkeys(real))[:1000]
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args.bundle, serve_args, Path(tmp) / "serve.log")
        try:
            startup_s = server.wait_ready()
            rss_started = server.rss()
            warm = asyncio.run(load(server.port, texts, valid, args.clients, args.warmup, args.timeout, server,
                                    asyncio.Event()))
            if warm["errors"]:
                raise RuntimeError(f"errors during the warm-up: {warm['error_examples']}")
            rss_warm = server.rss()
            server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
            result = asyncio.run(run_load(args, server, texts, valid))
            server_cpu, client_cpu = server.cpu_seconds() - server_cpu, time.process_time() - client_cpu
            rss_end = server.rss()
            checks = final_checks(server, valid)
        finally:
            exit_code = server.stop()
            log = server.log.read_text(errors="replace")
    loaded = result.pop("load")
    rss = {"after_start_mb": round(rss_started / 2**20, 1), "after_warmup_mb": round(rss_warm / 2**20, 1),
           "end_mb": round(rss_end / 2**20, 1), "peak_sampled_mb": round(max(loaded["rss_samples"]) / 2**20, 1),
           "growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 2),
           "samples_during_load_mb": [round(value / 2**20, 1) for value in loaded.pop("rss_samples")]}
    status = checks.get("status", {})
    log_lines = [line for line in log.splitlines() if line.strip()]
    report = {
        "benchmark": "server_load", "date": started, "bundle": str(args.bundle),
        "variant": status.get("variant"), "bundle_created_at": (status.get("model") or {}).get("created_at"),
        "bundle_fingerprint": (status.get("model") or {}).get("fingerprint"),  # sha256 of the manifest
        "serve_args": serve_args, "text_source": source, "texts": len(texts), "startup_s": round(startup_s, 2),
        "warmup_requests": args.warmup, "load": loaded, **result, "rss": rss,
        "cpu": {"server_s": round(server_cpu, 2), "client_s": round(client_cpu, 2),
                "server_ms_per_request": round(1000 * server_cpu / args.requests, 3),
                "client_ms_per_request": round(1000 * client_cpu / args.requests, 3)},
        "final": {"health": checks.get("health"), "parse": checks.get("parse"), "error": checks.get("error"),
                  "server_requests": status.get("requests")},
        "server_exit_code": exit_code,
        "server_log_errors": [line for line in log_lines if "Traceback" in line or " ERROR " in line][:10],
        "server_log_lines": len(log_lines), "server_log_tail": log_lines[-40:],
    }
    report["passed"] = bool(
        loaded["errors"] == 0 and loaded["answered"] == args.requests and result["health"]["failures"] == 0
        and result["health"]["polls"] > 0 and checks.get("health") and checks.get("parse") and exit_code == 0
        and rss["growth_pct"] < args.max_rss_growth_pct and not report["server_log_errors"]
    )
    report["max_rss_growth_pct"] = args.max_rss_growth_pct
    write_report(report, to_markdown, args.out, args.name)
    return 0 if report["passed"] else 1


def to_markdown(report: dict[str, Any]) -> str:
    loaded, health, rss = report["load"], report["health"], report["rss"]
    latency, health_latency = loaded["latency"] or {}, health["latency"] or {}
    cut = report["disconnects"]

    def ms(values: dict[str, Any], key: str) -> str:
        return f"{values[key]:.1f}" if key in values else "–"

    return "\n".join([
        f"# Server load: {Path(report['bundle']).name} ({report['variant']})",
        "",
        f"{machine_summary(report)}. Client and server share these CPUs.",
        f"`{report['command']}` (serve options: {' '.join(report['serve_args']) or 'defaults'}; "
        f"bundle created {report['bundle_created_at']}, manifest sha256 {str(report['bundle_fingerprint'])[:12]})",
        "",
        "| measure | result |",
        "|---|---|",
        f"| requests (`POST /model/parse`, {loaded['clients']} concurrent clients) | {loaded['requests']:,} in "
        f"{loaded['seconds']} s: **{loaded['requests_per_s']:,} req/s** |",
        f"| CPU per request: server / load client (same machine) | {report['cpu']['server_ms_per_request']} / "
        f"{report['cpu']['client_ms_per_request']} ms |",
        f"| latency p50 / p90 / p99 / max ms | {ms(latency, 'p50_ms')} / {ms(latency, 'p90_ms')} / "
        f"{ms(latency, 'p99_ms')} / {ms(latency, 'max_ms')} |",
        f"| errors (timeouts, non-200, wrong answers) | **{loaded['errors']}** {loaded['errors_by_kind'] or ''} |",
        f"| `GET /health` during the load | {health['polls']} polls, {health['failures']} failed; p50 "
        f"{ms(health_latency, 'p50_ms')} ms, p99 {ms(health_latency, 'p99_ms')} ms, max "
        f"{ms(health_latency, 'max_ms')} ms |",
        f"| clients aborting mid-request | {cut['after_request']} after the request, {cut['mid_body']} mid-body; "
        f"server answered afterwards: {report['final']['health'] and report['final']['parse']} |",
        f"| server RSS: started → after {report['warmup_requests']} warm-up → end (peak) | "
        f"{rss['after_start_mb']} → {rss['after_warmup_mb']} → {rss['end_mb']} MB ({rss['peak_sampled_mb']} MB): "
        f"**{rss['growth_pct']:+.2f} %** (limit {report['max_rss_growth_pct']} %) |",
        f"| server start to first /health, exit code on SIGINT | {report['startup_s']} s, "
        f"{report['server_exit_code']} |",
        f"| errors in the server log | {len(report['server_log_errors'])} |",
        f"| passed | {'yes' if report['passed'] else '**no**'} |",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
