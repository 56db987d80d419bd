"""The router's query path in process: CPU microseconds per query, the full gateway and the bare data plane.

    python -m benchmarks.router_path [--requests N] [--profile]

``benchmarks/router_overhead.py`` measures the router as clients see it, with real processes and sockets;
on a shared 2-core machine its CPU per request swings by ±20% between runs of the same code, too much
to judge a change worth a few microseconds. This runs the same Python path with nothing else around
it (front door: request id, bearer token, permission and rate limits, request timeout, access-log
line; then the data plane: routing, traffic split, the activator's slot, the upstream pool) against a
replica connection whose transport answers on the next loop turn with a canned response. Sockets, the
HTTP parsing of the client's request and uvicorn's protocol are not in it; they are what
``router_overhead`` adds.

The rows: ``gateway`` (the front door as ``zeroserve serve`` runs it, admin token, access log to a file;
each round is one keep-alive client connection, so its token is hashed once per round, as a client's is
once per connection) and ``bare`` (the data plane alone, as the ``dataplane`` stack of
``router_overhead``), each on the immediate path that a query whose body came with its head takes
(``GatewayQueries.serve_at_once``: no task, the answer written from the upstream connection's callback)
and on the task path (``GatewayQueries.serve`` in a task: a body still arriving, or a query that must
wait). Each is the best of several rounds. Measured on this kind of machine, code costs about 3-4 times
as much in the loaded router (cold caches, three processes sharing two cores) as here, so a microsecond
saved here is worth about three in ``router_overhead``'s ``cpu/req``. ``--profile`` prints cProfile's
table for the gateway path instead.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import uvloop
from pydantic import SecretStr

from autoscaler.types import EntityKey, ReplicaInfo
from router.api.models import EndpointCoreConfigInput, normalize_config
from router.auth.settings import SecuritySettings
from router.dataplane.proxy import _Connection
from router.dataplane.queries import GatewayQueries, QueryRoute
from router.dataplane.routing import EndpointRouting
from router.gateway import Gateway
from router.observability.logging import configure_logging, flush_logging
from router.settings import GatewaySettings
from runtime.http import DirectExchange

TOKEN = "zs-bench-token-" + "0123456789abcdef" * 2
ENDPOINT = "bench"
PATH = f"/serving-endpoints/{ENDPOINT}/invocations"
SOCKET = "/nonexistent/replica.sock"  # only the pool's key: the connection below never touches it
BODY = b'{"inputs": [[' + b", ".join(b"0.%d" % i for i in range(20)) + b"]]}"
ANSWER = (
    b"HTTP/1.1 200 OK\r\ndate: Fri, 04 Dec 2026 15:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-type: application/json\r\ncontent-length: 22\r\n\r\n"
    b'{"predictions": [0.5]}'
)


class _ReplicaTransport:
    """Answers each request written to it on the next loop turn, as a replica's socket would later."""

    def __init__(self, connection: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.connection = connection
        self.loop = loop

    def write(self, data: bytes) -> None:
        self.loop.call_soon(self.connection.data_received, ANSWER)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class _ClientConnection:
    """What the query path keeps per client connection (``QueryProtocol``'s attributes)."""

    verified_token = None


class _Exchange:
    """What the query paths use of a ``DirectExchange``; the body has arrived whole."""

    def __init__(
        self, scope: dict[str, Any], loop: asyncio.AbstractEventLoop, protocol: _ClientConnection
    ) -> None:
        self.scope = scope
        self.loop = loop
        self.protocol = protocol
        self.keep_alive = True
        self.status = 0
        self.body = bytearray(BODY)
        self.answered: asyncio.Future[None] = loop.create_future()

    def respond_now(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.answered.set_result(None)

    def run_in_task(self, handler: Any) -> None:
        raise RuntimeError("the immediate path fell back to a task: no idle pooled connection")

    async def read_body(self, limit: int, timeout_s: float | None) -> bytes:
        return BODY

    async def wait_disconnect(self) -> dict[str, str]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status


def _scope(token: bool) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"zeroserve-loadgen"),
               (b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    if token:
        headers.append((b"authorization", b"Bearer " + TOKEN.encode()))
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http",
            "method": "POST", "root_path": "", "path": PATH, "raw_path": PATH.encode(),
            "query_string": b"", "headers": headers}


def _gateway(home: Path) -> Gateway:
    configure_logging("info", stream=open(home / "gateway.log", "w"))  # noqa: SIM115 - lives as long as the run
    gateway = Gateway(GatewaySettings(home=home), security=SecuritySettings(admin_token=SecretStr(TOKEN)))
    served = {"entity_name": "file:///nonexistent/model", "entity_version": "1", "name": "m",
              "scale_to_zero_enabled": False}
    gateway.store.create(ENDPOINT, normalize_config(
        EndpointCoreConfigInput.model_validate({"served_entities": [served]})))
    entity = EntityKey(ENDPOINT, "m")
    gateway.dataplane.set_endpoint(ENDPOINT, [(entity, 100)], EndpointRouting(max_queue=4096))
    gateway.dataplane.activator.replica_ready(
        ReplicaInfo("r1", entity, "http://127.0.0.1:9", 64, unix_socket=SOCKET))
    return gateway


async def _round(
    queries: GatewayQueries, route: QueryRoute, requests: int, token: bool, immediate: bool
) -> float:
    loop = asyncio.get_running_loop()
    connection = _ClientConnection()  # one keep-alive client connection per round
    started = time.perf_counter()
    for _ in range(requests):
        exchange = _Exchange(_scope(token), loop, connection)
        if immediate:
            queries.serve_at_once(route, cast(DirectExchange, exchange))
            await exchange.answered
        else:
            # A task per query, as the protocol starts one.
            await loop.create_task(queries.serve(route, cast(DirectExchange, exchange)))
        if exchange.status != 200:
            raise RuntimeError(f"the query got {exchange.status}")
    return (time.perf_counter() - started) / requests * 1e6


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="zeroserve-router-path-") as tmp:
        gateway = _gateway(Path(tmp))
        dataplane = gateway.dataplane
        connection = _Connection()
        connection.connection_made(cast(asyncio.Transport, _ReplicaTransport(connection, loop)))
        connection.idle_since = float("inf")  # never retired as idle
        dataplane.pool._idle[SOCKET] = [connection]
        full = gateway.queries
        assert full is not None
        bare = GatewayQueries(dataplane, None, access_log=False)
        route = full.match("POST", PATH)
        assert route is not None
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.enable()
            await _round(full, route, args.requests, True, True)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(40)
            return
        rounds: dict[str, list[float]] = {"gateway": [], "bare": [], "gateway, task": [], "bare, task": []}
        for _ in range(args.rounds):
            rounds["gateway"].append(await _round(full, route, args.requests, True, True))
            rounds["bare"].append(await _round(bare, route, args.requests, False, True))
            rounds["gateway, task"].append(await _round(full, route, args.requests, True, False))
            rounds["bare, task"].append(await _round(bare, route, args.requests, False, False))
        flush_logging()
        await dataplane.aclose()
    best = {name: min(values) for name, values in rounds.items()}
    print("router query path in process (no sockets), best of", args.rounds, "rounds of", args.requests)
    print(f"{'path':<14} {'us/query':>9} {'median':>8}")
    for name, values in rounds.items():
        print(f"{name:<14} {best[name]:>9.2f} {sorted(values)[len(values) // 2]:>8.2f}")
    print(f"front door (gateway - bare): {best['gateway'] - best['bare']:.2f} us; "
          f"the task path costs {best['gateway, task'] - best['gateway']:.2f} us more (gateway)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000, help="queries per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="cProfile the gateway path instead")
    uvloop.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
