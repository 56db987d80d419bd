"""What observability costs per request on the gateway's hot path, with and without it, in one run.

    python -m benchmarks.observability_overhead [--quick]

The same ASGI request is pushed through, in-process (no sockets, so the figures are the CPU cost
alone, which is what observability adds):

1. a bare handler that records nothing;
2. the same handler doing the data plane's recording (request count + latency, queue wait, upstream
   time, the inference-table check) — what ``DataPlane.handle`` does for every request;
3. 2 behind ``RequestIdMiddleware`` (request id, ``x-request-id`` header, one JSON access-log line
   written to /dev/null);
and, separately, what one Prometheus scrape of 50 served entities costs (it runs every 15-60 s
whatever the request rate, never on the request path).

The table gives microseconds per request and the added cost next to the router's budget (the router
overhead target: added p50 <= 0.5 ms at concurrency 1, see ``benchmarks/router_overhead.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp as ASGI
from starlette.types import Message, Receive, Scope, Send

from autoscaler.types import EntityKey
from router.dataplane.stats import DataPlaneStats
from router.observability.inference_tables import InferenceTables
from router.observability.logging import RequestIdMiddleware, configure_logging, flush_logging
from router.observability.metrics import MetricsHub

KEY = EntityKey("bench", "bench-1")
BUDGET_US = 500.0


def make_handler(stats: DataPlaneStats | None, tables: InferenceTables | None) -> ASGI:
    body = b'{"predictions": [0.5]}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if stats is not None:
            elapsed = time.perf_counter() - started
            entity_stats = stats.entity(KEY)
            entity_stats.record_queue_wait(0.0)
            entity_stats.record_upstream(elapsed)
            stats.record(KEY, 200, elapsed)
            if tables is not None and tables.enabled(KEY.endpoint):
                tables.capture_request(scope, KEY, 200, elapsed, b"", body)

    return handler


async def drive(app: ASGI, requests: int, every: int = 0, scrape: Callable[[], bytes] | None = None) -> float:
    scope = {"type": "http", "method": "POST", "path": "/serving-endpoints/bench/invocations",
             "headers": [(b"content-type", b"application/json"), (b"x-request-id", b"bench-request")],
             "query_string": b"", "client": ("127.0.0.1", 5000)}
    message = {"type": "http.request", "body": b'{"inputs": [[1.0]]}', "more_body": False}

    async def receive() -> Message:
        return message

    async def send(_: Message) -> None:
        return None

    started = time.perf_counter()
    for index in range(requests):
        await app(dict(scope), receive, send)
        if scrape is not None and every and index % every == 0:
            scrape()
    return (time.perf_counter() - started) / requests * 1e6


async def run(requests: int, rounds: int, devnull: Any) -> tuple[list[tuple[str, float]], float]:
    # The gateway's own logging set-up: JSON lines written by a background thread.
    configure_logging("INFO", stream=devnull)
    stats = DataPlaneStats()
    hub = MetricsHub(stats)
    for index in range(50):
        hub.track(EntityKey(f"endpoint-{index}", "entity"))
    tables = InferenceTables()
    tables.resolver = lambda endpoint: None  # capture off, as for most endpoints
    bare = make_handler(None, None)
    recording = make_handler(stats, tables)
    with_ids = RequestIdMiddleware(recording)
    cases: list[tuple[str, ASGI]] = [
        ("bare handler", bare),
        ("+ data-plane recording", recording),
        ("+ request id + JSON access log", with_ids),
    ]
    best: dict[str, float] = {}
    for _ in range(rounds):  # interleaved rounds, best of each: the machine is shared and noisy
        for name, app in cases:
            best[name] = min(best.get(name, float("inf")), await drive(app, requests))
    # A scrape happens every 15-60 s, whatever the request rate: report its own cost.
    started = time.perf_counter()
    for _ in range(rounds):
        hub.exposition()
    scrape_ms = (time.perf_counter() - started) / rounds * 1000
    return [(name, best[name]) for name, _ in cases], scrape_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a few seconds)")
    args = parser.parse_args()
    requests, rounds = (5_000, 3) if args.quick else (50_000, 5)
    with open(os.devnull, "w") as devnull:
        results, scrape_ms = asyncio.run(run(requests, rounds, devnull))
        flush_logging()
    base = results[0][1]
    print(f"observability cost per request ({requests} requests x {rounds} rounds, best round, in-process)")
    print(f"{'case':<36} {'us/request':>11} {'added us':>9} {'share of 500 us router budget':>30}")
    for name, micros in results:
        added = micros - base
        print(f"{name:<36} {micros:>11.2f} {added:>9.2f} {added / BUDGET_US:>29.1%}")
    print(f"one Prometheus scrape of 50 served entities: {scrape_ms:.1f} ms "
          f"(every 15 s: {scrape_ms / 15_000:.2%} of one core), off the request path")


if __name__ == "__main__":
    main()
