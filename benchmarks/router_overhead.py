"""What the router adds: the same replica measured directly and through the data plane, in one run.

    python -m benchmarks.router_overhead [--quick] [--no-clients] [--no-burst] [--stacks gateway,dataplane]
                                         [--upstream unix|tcp]

Three processes per measurement — the replica (``python -m runtime`` serving an ONNX logistic
regression), the router, and the load generator — so the load generator's own work is not charged to
the router. The router is measured in two shapes:

- ``gateway``: the gateway as users run it (``router.gateway.Gateway.asgi`` under the same uvicorn
  options as ``zeroserve serve``): trusted proxies, limits, audit, bearer-token auth, the endpoint guard
  (permissions, rate limits), the request id and the JSON access log, then the data plane. The endpoint
  is created through the control-plane API; its one replica is the benchmark's replica process (a
  backend that hands the autoscaler that replica instead of starting one).
- ``dataplane``: the bare data plane (uvicorn + ``dataplane_routes`` behind ``QueryFastPath``, no front
  door, no request id or access log), to show what the layers in front of it cost.

The load generator uses the router's own upstream client (the fastest at hand, see the client table)
for both the direct and the routed runs, so the comparison is like for like. Clients reach the router
and (direct runs) the replica over loopback TCP; the router reaches the replica over the Unix socket
the replica also listens on, as it reaches every replica of the local backend (``--upstream tcp`` to
measure the router over loopback TCP instead, as it would reach a replica on another machine).

Tables:
1. latency at concurrency 1 and 16, direct vs routed: added p50 / p99, routed req/s as a share of direct,
   and the router process's CPU time per routed request (user + system, from /proc: far steadier than
   latency on a shared machine); targets (2-core machine, router and replica share the cores): added
   p50 <= 0.5 ms at c=1, added p99 <= 2 ms at c=16, routed >= 60% of direct. Knative's queue-proxy alone
   adds p50 4.3 ms / p99 5.4 ms.
2. 1,000 requests arriving at once at an entity scaled to zero (real autoscaler + local backend): time
   to the first and the last response, errors.
3. upstream client candidates against the replica directly: httpx, aiohttp, ours.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

READY = "BENCH_READY"
# The gateway's static admin token in the benchmark (32+ characters, as the gateway requires).
BENCH_TOKEN = "bench-admin-token-" + "b" * 32
ENDPOINT = "bench"
N_FEATURES = 20
BODY = orjson.dumps({"inputs": [[0.1 * i for i in range(N_FEATURES)]]})
HEADERS = [(b"content-type", b"application/json")]
ROUNDS = 4


# --- the processes ---------------------------------------------------------------------------------


def _spawn(
    argv: list[str], ready_prefix: str, timeout_s: float = 120.0, tree: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    """``tree``: run it from that checkout's code instead of this one's (a baseline to compare with)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env,
                               cwd=str(tree) if tree is not None else None)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"{argv[:4]} exited with {process.wait()} before it was ready")
        if line.startswith(ready_prefix):
            return process, line[len(ready_prefix) :].strip()
    process.kill()
    raise RuntimeError(f"{argv[:4]} was not ready within {timeout_s} s")


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


@contextlib.contextmanager
def replica(model_dir: Path, capacity: int, unix_socket: Path | None = None) -> Iterator[tuple[int, int]]:
    """A replica process; yields (port, pid)."""
    argv = [sys.executable, "-m", "runtime", "--model-uri", model_dir.as_uri(), "--port", "0", "--name", "m"]
    if unix_socket is not None:
        argv += ["--unix-socket", str(unix_socket)]
    process, rest = _spawn([*argv, "--concurrency", str(capacity)], "ZEROSERVE_REPLICA_READY")
    try:
        yield int(orjson.loads(rest)["port"]), process.pid
    finally:
        _stop(process)


@contextlib.contextmanager
def router(*args: str, tree: Path | None = None) -> Iterator[tuple[int, int]]:
    """A router process (from ``tree``'s code when given); yields (port, pid)."""
    process, rest = _spawn(
        [sys.executable, "-m", "benchmarks.router_overhead", "--role", "router", *args], READY, tree=tree
    )
    try:
        yield int(rest), process.pid
    finally:
        _stop(process)


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of process ``pid`` so far; nan where it cannot be read.

    On Linux from the process's CPU clock (nanoseconds; the clock id is the kernel's
    ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``); /proc's utime + stime count 10 ms ticks, too coarse
    for a round of a few hundred requests, and are the fallback.
    """
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except (OSError, OverflowError, AttributeError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    port: int,
    path: str,
    concurrency: int,
    requests: int,
    warmup: int,
    *,
    token: str = "",
    router_pid: int = 0,
    replica_pid: int = 0,
) -> dict[str, Any]:
    """Run the load generator in its own process and return its summary; with ``router_pid`` and
    ``replica_pid``, also the CPU seconds each process spent meanwhile (``router_cpu_s``,
    ``replica_cpu_s``)."""
    argv = [sys.executable, "-m", "benchmarks.router_overhead", "--role", "loadgen", "--port", str(port)]
    argv += ["--path", path, "--concurrency", str(concurrency), "--requests", str(requests)]
    argv += ["--warmup", str(warmup), "--token", token]
    router_before = _cpu_seconds(router_pid) if router_pid else 0.0
    replica_before = _cpu_seconds(replica_pid) if replica_pid else 0.0
    output = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    result = dict(orjson.loads(output.strip().splitlines()[-1]))
    if router_pid:
        result["router_cpu_s"] = _cpu_seconds(router_pid) - router_before
    if replica_pid:
        result["replica_cpu_s"] = _cpu_seconds(replica_pid) - replica_before
    return result


# --- roles run in child processes -----------------------------------------------------------------


class _OneReplicaBackend:
    """An autoscaler ``Backend`` whose only replica is the benchmark's replica process, already running:
    the gateway routes to the same replica the direct runs measure."""

    def __init__(self, url: str, capacity: int, unix_socket: str | None) -> None:
        self._url = url
        self._capacity = capacity
        self._unix_socket = unix_socket
        self._running: Any = None  # the ReplicaInfo handed out, if any

    async def open(self) -> None:
        return None

    async def start_replica(self, entity: Any, spec: Any, replica_id: str) -> Any:
        from autoscaler.backend import ReplicaStartError
        from autoscaler.types import ReplicaInfo

        if self._running is not None:
            raise ReplicaStartError("the benchmark runs exactly one replica")
        self._running = ReplicaInfo(
            replica_id, entity, self._url, self._capacity, unix_socket=self._unix_socket
        )
        return self._running

    async def stop_replica(self, replica_id: str, timeout_s: float) -> None:
        if self._running is not None and self._running.replica_id == replica_id:
            self._running = None

    async def health(self, replica_id: str) -> Any:
        from autoscaler.backend import ReplicaHealth

        running = self._running is not None and self._running.replica_id == replica_id
        return ReplicaHealth.HEALTHY if running else ReplicaHealth.EXITED

    def list_replicas(self) -> list[Any]:
        return [self._running] if self._running is not None else []

    def logs(self, replica_id: str) -> str:
        return ""

    async def close(self) -> None:
        self._running = None


async def _create_endpoint(port: int, model_uri: str, capacity: int) -> None:
    """Create the benchmark's endpoint through the control-plane API and wait until it is ready."""
    import httpx

    served = {
        "entity_name": model_uri,
        "entity_version": "1",
        "name": "m",
        "scale_to_zero_enabled": False,
        "max_provisioned_concurrency": capacity,
        "autoscaling": {"container_concurrency": capacity, "max_queue": 4096, "queue_timeout_s": 120},
    }
    body = {"name": ENDPOINT, "config": {"served_entities": [served]}}
    headers = {"Authorization": f"Bearer {BENCH_TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
        response = await client.post("/api/2.0/serving-endpoints", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"creating the endpoint failed: {response.status_code} {response.text}")
        for _ in range(600):
            state = (await client.get(f"/api/2.0/serving-endpoints/{ENDPOINT}")).json().get("state", {})
            if state.get("ready") == "READY":
                return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"endpoint {ENDPOINT!r} did not become ready: {state}")


async def _serve_gateway(args: argparse.Namespace, home: Path, log_file: Any) -> None:
    """The gateway as ``zeroserve serve`` runs it (same app, middleware and uvicorn options)."""
    import socket

    from pydantic import SecretStr

    from router.auth.settings import SecuritySettings
    from router.gateway import Gateway, gateway_server
    from router.observability.logging import configure_logging
    from router.settings import GatewaySettings

    # The JSON log (an access-log line per request) goes to a file, as a service's log would.
    configure_logging("info", stream=log_file)
    security = SecuritySettings(admin_token=SecretStr(BENCH_TOKEN))
    backend = _OneReplicaBackend(
        f"http://127.0.0.1:{args.replica_port}", args.capacity, args.replica_socket or None
    )
    gateway = Gateway(GatewaySettings(home=home), backend=backend, security=security)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # In this process's running loop, with the deep backlog the benchmark's other router has too.
    server = gateway_server(gateway, security, loop="none", backlog=4096)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(1000):  # uvicorn offers no started event; poll its flag
        if server.started:
            break
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    await _create_endpoint(port, args.model_uri, args.capacity)
    print(f"{READY} {port}", flush=True)
    await serving


async def _serve_router(args: argparse.Namespace) -> None:
    import socket

    import uvicorn
    from starlette.applications import Starlette

    from autoscaler.types import EntityKey, ReplicaInfo
    from router.auth.tls import HeaderLimitedHttpToolsProtocol
    from router.dataplane.plane import DataPlane, QueryFastPath, dataplane_routes, error_response
    from router.dataplane.queries import GatewayQueries, query_protocol
    from router.dataplane.routing import EndpointRouting
    from runtime.errors import ZeroserveError

    entity = EntityKey(ENDPOINT, "m")
    dataplane = DataPlane()
    dataplane.set_endpoint(ENDPOINT, [(entity, 100)], EndpointRouting(max_queue=4096, queue_timeout_s=120))
    app = QueryFastPath(
        Starlette(routes=dataplane_routes(dataplane), exception_handlers={ZeroserveError: error_response}),
        dataplane,
    )
    autoscaler = None
    backend = None
    if args.replica_port:
        dataplane.activator.replica_ready(
            ReplicaInfo(
                "r1", entity, f"http://127.0.0.1:{args.replica_port}", args.capacity,
                unix_socket=args.replica_socket or None,
            )
        )
    else:
        from autoscaler.backends.local import LocalBackend
        from autoscaler.loop import Autoscaler
        from autoscaler.spec import AutoscalingSpec, EntitySpec

        backend = LocalBackend()
        await backend.open()
        if backend.pool is not None:
            await backend.pool.wait_full()  # a gateway that has been up a while has a full warm pool
        autoscaler = Autoscaler(backend, listener=dataplane.listener, tick_s=1.0)
        dataplane.activator.set_scaler(autoscaler)
        scaling = AutoscalingSpec(container_concurrency=args.capacity, max_provisioned_concurrency=64)
        autoscaler.apply(entity, EntitySpec(model_uri=args.model_uri, served_name="m", autoscaling=scaling))
        await autoscaler.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        loop="none",
        # Queries below ASGI, as in the gateway, but with no front door (no token, limits or log).
        http=query_protocol(
            HeaderLimitedHttpToolsProtocol, GatewayQueries(dataplane, None, access_log=False)
        ),
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )

    class Server(uvicorn.Server):
        # uvicorn re-raises the SIGTERM it caught once serve() returns, which ends the process there:
        # what has to be cleaned up (the backend's replicas and socket folder) is done in shutdown.
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets)
            if autoscaler is not None:
                await autoscaler.stop()
            if backend is not None:
                await backend.close()
            await dataplane.aclose()

    server = Server(config)
    await dataplane.start()
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(1000):  # uvicorn offers no started event; poll its flag
        if server.started:
            break
        await asyncio.sleep(0.01)
    print(f"{READY} {sock.getsockname()[1]}", flush=True)
    await serving


async def _loadgen(args: argparse.Namespace) -> dict[str, Any]:
    from router.dataplane.proxy import UpstreamPool

    pool = UpstreamPool(max_idle_per_host=args.concurrency + 8)
    headers = [*HEADERS, (b"authorization", f"Bearer {args.token}".encode())] if args.token else HEADERS
    sent = 0
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    first_answer: list[float] = []

    async def worker(count: int, record: bool) -> None:
        nonlocal sent
        for _ in range(count):
            began = time.perf_counter()
            sent += 1
            try:
                response = await pool.request(
                    "127.0.0.1", args.port, "POST", args.path, headers, BODY, timeout_s=300
                )
                status = response.status
            except Exception:
                status = 0
            if record:
                latencies.append(time.perf_counter() - began)
                statuses[status] = statuses.get(status, 0) + 1
                if not first_answer:
                    first_answer.append(time.perf_counter())

    if args.warmup:
        await asyncio.gather(
            *(worker(args.warmup // args.concurrency or 1, False) for _ in range(args.concurrency))
        )
    per_worker = max(1, args.requests // args.concurrency)
    began = time.perf_counter()
    await asyncio.gather(*(worker(per_worker, True) for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - began
    await pool.aclose()
    latencies.sort()
    return {
        "p50_ms": 1000 * _percentile(latencies, 0.50),
        "p99_ms": 1000 * _percentile(latencies, 0.99),
        "mean_ms": 1000 * statistics.fmean(latencies),
        "rps": len(latencies) / elapsed,
        "elapsed_s": elapsed,
        "sent": sent,  # warm-up included
        "first_s": first_answer[0] - began if first_answer else float("nan"),
        "ok": statuses.get(200, 0),
        "errors": sum(count for status, count in statuses.items() if status != 200),
        "statuses": {str(status): count for status, count in statuses.items()},
        "latencies_ms": [round(1000 * seconds, 4) for seconds in latencies],
    }


def _pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several rounds: percentiles over all their latencies, req/s over their time."""
    latencies = sorted(ms for result in rounds for ms in result["latencies_ms"])
    statuses: dict[str, int] = {}
    for result in rounds:
        for status, count in result["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    sent = sum(result["sent"] for result in rounds)
    return {
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "rps": len(latencies) / sum(result["elapsed_s"] for result in rounds),
        "errors": sum(result["errors"] for result in rounds),
        "statuses": statuses,
        # CPU microseconds of the router, and of the replica, per request served (warm-up included).
        "cpu_us": 1e6 * sum(result.get("router_cpu_s", 0.0) for result in rounds) / sent,
        "replica_cpu_us": 1e6 * sum(result.get("replica_cpu_s", 0.0) for result in rounds) / sent,
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _compare_clients(port: int, requests: int) -> list[tuple[str, float, float]]:
    """(client, c=1 p50 ms, c=16 req/s) for each candidate upstream client, against the replica."""
    import aiohttp
    import httpx

    from router.dataplane.proxy import UpstreamPool

    url = f"http://127.0.0.1:{port}/invocations"

    async def measure(call: Any) -> tuple[float, float]:
        for _ in range(100):
            await call()
        latencies = []
        for _ in range(requests):
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)
        latencies.sort()

        async def worker() -> None:
            for _ in range(requests // 16):
                await call()

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        return 1000 * _percentile(latencies, 0.5), (requests // 16 * 16) / (time.perf_counter() - began)

    results = []
    pool = UpstreamPool()

    async def ours() -> None:
        response = await pool.request("127.0.0.1", port, "POST", "/invocations", HEADERS, BODY, timeout_s=30)
        assert response.status == 200

    results.append(("zeroserve (asyncio + httptools)", *await measure(ours)))
    await pool.aclose()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def with_aiohttp() -> None:
            async with session.post(url, data=BODY, headers={"content-type": "application/json"}) as response:
                await response.read()

        results.append(("aiohttp", *await measure(with_aiohttp)))
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=64)) as client:

        async def with_httpx() -> None:
            (await client.post(url, content=BODY, headers={"content-type": "application/json"})).read()

        results.append(("httpx", *await measure(with_httpx)))
    return results


# --- the run ---------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


STACKS = ("gateway", "dataplane")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests (about a minute)")
    parser.add_argument(
        "--baseline", type=Path, default=None,
        help="a checkout of an earlier commit (git worktree add DIR REV): its routers are measured in the"
        " same rounds, as '<stack>@base' rows, so a refactor's before and after share one run",
    )
    parser.add_argument("--no-clients", action="store_true", help="skip the upstream client comparison")
    parser.add_argument("--no-burst", action="store_true", help="skip the 1,000 requests at zero")
    parser.add_argument("--capacity", type=int, default=16, help="replica concurrency C")
    parser.add_argument(
        "--stacks",
        default=",".join(STACKS),
        help="router shapes to measure, comma-separated: gateway (as users run it), dataplane (bare)",
    )
    parser.add_argument(
        "--role", choices=["main", "router", "loadgen"], default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--stack", choices=STACKS, default="dataplane", help=argparse.SUPPRESS)
    parser.add_argument(
        "--upstream",
        choices=["unix", "tcp"],
        default="unix",
        help="how the router reaches the replica: its Unix socket, as the local backend's replicas are"
        " reached (default), or loopback TCP",
    )
    parser.add_argument("--replica-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--replica-socket", default="", help=argparse.SUPPRESS)
    # The gateway's state folder, made by the main process inside its own temporary folder: the router
    # process ends on the SIGTERM uvicorn re-raises, before any cleanup of its own could run.
    parser.add_argument("--home", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model-uri", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="/invocations", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    stacks = [stack.strip() for stack in args.stacks.split(",") if stack.strip()]
    unknown = sorted(set(stacks) - set(STACKS))
    if unknown or not stacks:
        parser.error(f"--stacks takes {', '.join(STACKS)}; got {args.stacks!r}")

    import uvloop

    if args.role == "router" and args.stack == "gateway":
        home = Path(args.home or tempfile.mkdtemp(prefix="zeroserve-bench-gateway-"))
        home.mkdir(parents=True, exist_ok=True)
        with open(home / "gateway.log", "w") as log_file:
            uvloop.run(_serve_gateway(args, home, log_file))
        return
    if args.role == "router":
        uvloop.run(_serve_router(args))
        return
    if args.role == "loadgen":
        print(orjson.dumps(uvloop.run(_loadgen(args))).decode())
        return

    from runtime.examples import make_logreg_onnx

    n1, n16 = (1000, 4000) if args.quick else (4000, 16000)
    routed_path = f"/serving-endpoints/{ENDPOINT}/invocations"
    with tempfile.TemporaryDirectory(prefix="zeroserve-bench-") as tmp:
        model_dir = make_logreg_onnx(Path(tmp) / "logreg", n_features=N_FEATURES)
        rows = []
        with contextlib.ExitStack() as running:
            unix_socket = Path(tmp) / "replica.sock" if args.upstream == "unix" else None
            replica_port, replica_pid = running.enter_context(replica(model_dir, args.capacity, unix_socket))
            trees: dict[str, Path | None] = {stack: None for stack in stacks}
            if args.baseline is not None:
                trees.update({f"{stack}@base": args.baseline.resolve() for stack in stacks})
            routers = {
                label: running.enter_context(
                    router(
                        "--stack", label.split("@")[0], "--replica-port", str(replica_port),
                        "--replica-socket", str(unix_socket or ""),
                        "--capacity", str(args.capacity), "--model-uri", model_dir.as_uri(),
                        "--home", str(Path(tmp) / f"{label}-home"), tree=tree,
                    )
                )
                for label, tree in trees.items()
            }
            stacks = list(routers)
            token = {label: BENCH_TOKEN if label.startswith("gateway") else "" for label in stacks}
            for concurrency, requests in ((1, n1), (16, n16)):
                # Direct and routed alternate in short rounds, so that a noisy neighbour (the machine is
                # shared) slows all alike instead of whichever ran during the disturbance.
                per_round = requests // ROUNDS
                direct_rounds: list[dict[str, Any]] = []
                routed_rounds: dict[str, list[dict[str, Any]]] = {stack: [] for stack in stacks}
                for _ in range(ROUNDS):
                    warmup = max(100, per_round // 10)
                    direct_rounds.append(
                        load(replica_port, "/invocations", concurrency, per_round, warmup,
                             replica_pid=replica_pid)
                    )
                    for stack, (port, pid) in routers.items():
                        routed_rounds[stack].append(
                            load(port, routed_path, concurrency, per_round, warmup,
                                 token=token[stack], router_pid=pid, replica_pid=replica_pid)
                        )
                direct = _pooled(direct_rounds)
                for stack in stacks:
                    rows.append((stack, concurrency, direct, _pooled(routed_rounds[stack])))
            clients = (
                []
                if args.no_clients
                else uvloop.run(_compare_clients(replica_port, 500 if args.quick else 2000))
            )
        burst = None
        if not args.no_burst:
            with router("--model-uri", model_dir.as_uri(), "--capacity", "4") as (router_port, _):
                burst = load(router_port, routed_path, 1000, 1000, 0)

    print("\nrouter overhead (same replica, direct vs through the router; load generator in its own process)")
    print("  gateway: the full stack as `zeroserve serve` runs it (auth, guard, request id, access log);")
    print("  dataplane: the bare data-plane routes; cpu/req: router process CPU time per routed request;")
    print("  replica cpu/req: the replica's CPU time per request, direct -> routed")
    hop = "loopback TCP"
    if args.upstream == "unix":
        hop = "the replica's Unix socket (as local replicas are reached)"
    print(f"  clients reach the router and (direct) the replica over loopback TCP; router to replica: {hop}")
    print(
        f"{'stack':<14} {'c':>3} {'direct p50':>11} {'routed p50':>11} {'added p50':>10} {'direct p99':>11} "
        f"{'routed p99':>11} {'added p99':>10} {'direct rps':>11} {'routed rps':>11} {'ratio':>6} "
        f"{'cpu/req':>9} {'replica cpu/req':>16}  target"
    )
    for stack, concurrency, direct, routed in rows:
        added50 = routed["p50_ms"] - direct["p50_ms"]
        added99 = routed["p99_ms"] - direct["p99_ms"]
        ratio = routed["rps"] / direct["rps"]
        if concurrency == 1:
            target = f"added p50 <= 0.5 ms: {_verdict(added50 <= 0.5)}"
        else:
            target = f"added p99 <= 2 ms: {_verdict(added99 <= 2.0)}, ratio >= 0.60: {_verdict(ratio >= 0.6)}"
        print(
            f"{stack:<14} {concurrency:>3} {direct['p50_ms']:>9.3f}ms {routed['p50_ms']:>9.3f}ms "
            f"{added50:>8.3f}ms {direct['p99_ms']:>9.3f}ms {routed['p99_ms']:>9.3f}ms {added99:>8.3f}ms "
            f"{direct['rps']:>11.0f} {routed['rps']:>11.0f} {ratio:>6.2f} "
            f"{routed['cpu_us']:>7.0f}us "
            f"{direct['replica_cpu_us']:>6.0f} -> {routed['replica_cpu_us']:>4.0f}us  {target}"
        )
        for label, result in (("direct", direct), ("routed", routed)):
            if result["errors"]:
                print(f"    {label}: {result['errors']} errors {result['statuses']}")
    print("    reference: Knative's queue-proxy alone adds p50 4.3 ms / p99 5.4 ms")
    if burst is not None:
        print("\n1,000 requests at once at an entity scaled to zero (real autoscaler + local backend, C=4)")
        print(
            f"  first response {burst['first_s']:.2f} s, last response {burst['elapsed_s']:.2f} s, "
            f"ok {burst['ok']}, errors {burst['errors']} {_verdict(burst['errors'] == 0)}"
        )
    if clients:
        print("\nupstream client candidates, straight to the replica (same process, one at a time)")
        print(f"  {'client':<32} {'c=1 p50':>9} {'c=16 req/s':>11} {'vs ours':>8}")
        ours = clients[0][2]
        for name, p50, rps in clients:
            print(f"  {name:<32} {p50:>7.3f}ms {rps:>11.0f} {rps / ours:>8.2f}")


if __name__ == "__main__":
    main()
