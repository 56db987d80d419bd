"""A small, fast HTTP/1.1 load generator: keep-alive connections on uvloop, one request in flight each.

Run in a process of its own (``python -m benchmarks._loadgen``) so that the client does not share an
interpreter with the server; it prints one JSON line of results. Responses are parsed just enough
(status line, Content-Length) to know where each ends, which keeps the client far cheaper per request
than the servers it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Results:
    latencies_ns: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0


class _Connection(asyncio.Protocol):
    def __init__(self, request: bytes, results: Results, deadline: float, done: asyncio.Future[None]) -> None:
        self.request = request
        self.results = results
        self.deadline = deadline
        self.done = done
        self.buffer = bytearray()
        self.sent_at = 0
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.sent_at = time.perf_counter_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            header_end = self.buffer.find(b"\r\n\r\n")
            if header_end < 0:
                return
            head = bytes(self.buffer[:header_end]).lower()
            length = 0
            position = head.find(b"content-length:")
            if position >= 0:
                line_end = head.find(b"\r\n", position)
                length = int(head[position + 15 : line_end if line_end >= 0 else len(head)])
            end = header_end + 4 + length
            if len(self.buffer) < end:
                return
            status = int(head[9:12])
            del self.buffer[:end]
            now = time.perf_counter_ns()
            self.results.latencies_ns.append(now - self.sent_at)
            self.results.statuses[status] = self.results.statuses.get(status, 0) + 1
            if time.perf_counter() < self.deadline:
                self._send()
            else:
                if self.transport is not None:
                    self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def build_request(host: str, port: int, path: str, body: bytes, content_type: str,
                  headers: list[str] | None = None) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers or [])
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n{extra}"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def run(
    host: str, port: int, request: bytes, concurrency: int, duration: float, warmup: float
) -> Results:
    loop = asyncio.get_running_loop()
    if warmup > 0:
        await _phase(loop, host, port, request, concurrency, warmup)
    return await _phase(loop, host, port, request, concurrency, duration)


async def _phase(
    loop: asyncio.AbstractEventLoop, host: str, port: int, request: bytes, concurrency: int, duration: float
) -> Results:
    results = Results(started=time.perf_counter())
    deadline = results.started + duration
    waits = []
    for _ in range(concurrency):
        done: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(_factory(request, results, deadline, done), host, port)
        waits.append(done)
    await asyncio.wait_for(asyncio.gather(*waits), timeout=duration + 30)
    results.finished = time.perf_counter()
    return results


def _factory(
    request: bytes, results: Results, deadline: float, done: asyncio.Future[None]
) -> Callable[[], _Connection]:
    return lambda: _Connection(request, results, deadline, done)


def summarize(results: Results) -> dict[str, Any]:
    latencies = sorted(results.latencies_ns)
    count = len(latencies)
    elapsed = results.finished - results.started
    if not count:
        return {"requests": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None, "statuses": results.statuses}
    return {
        "requests": count,
        "rps": count / elapsed,
        "p50_ms": latencies[count // 2] / 1e6,
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] / 1e6,
        "mean_ms": statistics.fmean(latencies) / 1e6,
        "statuses": {str(key): value for key, value in results.statuses.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/invocations")
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    args = parser.parse_args()
    request = build_request(args.host, args.port, args.path, args.body_file.read_bytes(), args.content_type,
                            args.header)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        results = runner.run(run(args.host, args.port, request, args.concurrency, args.duration, args.warmup))
    sys.stdout.write(json.dumps(summarize(results)) + "\n")


if __name__ == "__main__":
    main()
