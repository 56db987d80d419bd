"""The data plane's routes, end to end inside one event loop: httpx (ASGI transport) → the data plane
→ real uvicorn stand-in replicas on loopback (``tests.router._servers.EchoReplica``).

Replica arrival is announced to the activator directly, as the autoscaler's backend would.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from autoscaler.types import EntityKey, ReplicaInfo
from router.auth.tls import HeaderLimitedHttpToolsProtocol
from router.dataplane.balancer import ReplicaSlot
from router.dataplane.plane import DataPlane, QueryFastPath, dataplane_routes, error_response, running
from router.dataplane.proxy import UpstreamResponse
from router.dataplane.queries import GatewayQueries, query_protocol
from router.dataplane.routing import EndpointRouting
from router.errors import UpstreamTimeout
from runtime.errors import NoCapacity, ZeroserveError
from tests.router._servers import echo_replica, raw_server, read_request, serving

A = EntityKey("ep", "a")
B = EntityKey("ep", "b")
JSON = {"content-type": "application/json"}


class Poker:
    def __init__(self) -> None:
        self.pokes: list[EntityKey] = []

    def poke(self, entity: EntityKey) -> None:
        self.pokes.append(entity)

    def report(self, entity: EntityKey, in_flight: int, queued: int, *, arrivals: int | None = None,
               completions: int | None = None) -> None:
        pass


@pytest.fixture
async def dataplane(request: pytest.FixtureRequest) -> AsyncIterator[DataPlane]:
    # A test may set the body limit: @pytest.mark.parametrize("dataplane", [limit], indirect=True).
    limit = getattr(request, "param", 16 * 1024 * 1024)
    async with running(DataPlane(scaler=Poker(), max_body_bytes=limit)) as plane:
        yield plane


@pytest.fixture(params=["routes", "fast_path", "protocol"])
async def client(dataplane: DataPlane, request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    # Every test runs against the Starlette routes, against the ASGI fast path in front of them, and
    # over real HTTP against the query protocol (queries served below ASGI, router.dataplane.queries):
    # all three must answer alike.
    routes = dataplane_routes(dataplane)
    app: Any = Starlette(routes=routes, exception_handlers={ZeroserveError: error_response})
    if request.param == "routes":
        transport = httpx.ASGITransport(app=app)
    else:
        app = QueryFastPath(app, dataplane)
        transport = httpx.ASGITransport(app=app)
    if request.param != "protocol":
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http
        return
    protocol = query_protocol(HeaderLimitedHttpToolsProtocol, GatewayQueries(dataplane, None))
    async with (
        serving(app, http=protocol) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        yield http


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/serving-endpoints/ep/invocations", ({"name": "ep"}, "/invocations")),
        ("POST", "/v2/models/ep/infer", ({"name": "ep"}, "/v2/models/a/infer")),
        ("POST", "/v2/models/ep/versions/3/infer", ({"name": "ep", "version": "3"}, "/v2/models/a/infer")),
        ("GET", "/serving-endpoints/ep/invocations", None),  # Starlette answers 405
        ("POST", "/serving-endpoints//invocations", None),
        ("POST", "/serving-endpoints/a/b/invocations", None),
        ("POST", "/serving-endpoints/ep/invocations/", None),
        ("POST", "/v2/models//infer", None),
        ("POST", "/v2/models/ep/versions//infer", None),
        ("POST", "/v2/models/ep/v/3/infer", None),
        ("POST", "/v2/models/ep/ready", None),
        ("POST", "/api/2.0/serving-endpoints", None),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_fast_path_matches_exactly_the_query_routes(
    dataplane: DataPlane, method: str, path: str, expected: tuple[dict[str, str], str] | None
) -> None:
    fast = QueryFastPath(Starlette(), dataplane)
    matched = fast.match(method, path)
    if expected is None:
        assert matched is None
    else:
        assert matched is not None
        params, upstream, _ = matched
        assert (params, upstream(A)) == expected


async def test_a_local_replica_is_reached_over_its_unix_socket(
    dataplane: DataPlane, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with echo_replica("r1", unix_socket=str(tmp_path / "r1.sock")) as replica:
        dataplane.set_endpoint("ep", [(A, 100)])
        dataplane.activator.replica_ready(replica.info(A))
        response = await client.post("/serving-endpoints/ep/invocations", content=b'{"inputs": [1]}')
        assert response.status_code == 200 and response.content == b'{"inputs": [1]}'
        assert response.headers["x-client-port"] == "unix"  # the replica saw no TCP peer
        assert replica.requests == 1


async def test_fast_path_leaves_other_requests_to_the_app(client: httpx.AsyncClient) -> None:
    assert (await client.get("/serving-endpoints/ep/invocations")).status_code == 405
    assert (await client.get("/v2/health/ready")).status_code == 200


async def test_invocation_passes_the_body_through_and_names_the_served_model(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    async with echo_replica("r1") as replica:
        dataplane.set_endpoint("ep", [(A, 100)])
        dataplane.activator.replica_ready(replica.info(A))
        body = b'{"dataframe_split": {"columns": ["x"], "data": [[1.25]]}}'
        headers = {**JSON, "authorization": "Bearer secret", "x-custom": "kept"}
        response = await client.post("/serving-endpoints/ep/invocations?v=1", content=body, headers=headers)
    assert response.status_code == 200
    assert response.content == body
    assert response.headers["served-model-name"] == "a"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-path"] == "/invocations"
    seen = replica.seen_headers[0]
    assert "authorization" not in seen  # the gateway's credentials stay at the gateway
    assert seen["x-custom"] == "kept"


async def test_unknown_endpoint_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/serving-endpoints/nope/invocations", content=b"{}", headers=JSON)
    assert response.status_code == 404
    assert response.json() == {
        "error_code": "RESOURCE_DOES_NOT_EXIST",
        "message": "Serving endpoint 'nope' does not exist.",
    }


async def test_model_errors_pass_through_unchanged(dataplane: DataPlane, client: httpx.AsyncClient) -> None:
    async with echo_replica("r1") as replica:
        dataplane.set_endpoint("ep", [(A, 100)])
        dataplane.activator.replica_ready(replica.info(A))
        response = await client.post(
            "/serving-endpoints/ep/invocations?status=400", content=b"{}", headers=JSON
        )
    assert response.status_code == 400
    assert response.json() == {"error_code": "BAD_REQUEST", "message": "model says no (r1)"}
    assert response.headers["served-model-name"] == "a"


async def test_open_inference_protocol_routes_map_the_endpoint_to_the_replica_model(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    async with echo_replica("r1") as replica:
        dataplane.set_endpoint("ep", [(A, 100)])
        dataplane.activator.replica_ready(replica.info(A))
        header = orjson.dumps(
            {
                "inputs": [
                    {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
                ]
            }
        )
        body = header + struct.pack("<2f", 1.5, 2.5)
        infer = await client.post(
            "/v2/models/ep/infer",
            content=body,
            headers={
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(len(header)),
            },
        )
        metadata = await client.get("/v2/models/ep/versions/3")
        ready = await client.get("/v2/models/ep/ready")
        server = await client.get("/v2/health/ready")
    assert infer.status_code == 200
    assert infer.content == body  # binary tensor bytes untouched
    assert infer.headers["inference-header-content-length"] == str(len(header))
    assert infer.headers["x-path"] == "/v2/models/a/infer"
    # The model the client asked for, not the entity behind it (that one is in the header).
    assert metadata.json() == {"name": "ep"} and metadata.headers["served-model-name"] == "a"
    assert ready.status_code == 200 and ready.headers["served-model-name"] == "a"
    assert server.status_code == 200


async def test_oip_errors_carry_the_error_field_clients_read(client: httpx.AsyncClient) -> None:
    response = await client.post("/v2/models/nope/infer", content=b"{}", headers=JSON)
    assert response.status_code == 404
    assert response.json()["error"] == "Serving endpoint 'nope' does not exist."


async def test_model_ready_is_answered_without_waking_a_scaled_to_zero_entity(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    dataplane.set_endpoint("ep", [(A, 100)])
    assert (await client.get("/v2/models/ep/ready")).status_code == 200
    assert dataplane.activator.concurrency(A) == (0, 0)
    dataplane.activator.entity_failed(A, "bad model")
    assert (await client.get("/v2/models/ep/ready")).status_code == 503


async def test_request_at_zero_waits_for_the_replica_then_succeeds(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    async with echo_replica("r1") as replica:
        dataplane.set_endpoint("ep", [(A, 100)])
        pending = asyncio.create_task(
            client.post("/serving-endpoints/ep/invocations", content=b"[1]", headers=JSON)
        )
        await asyncio.sleep(0.05)
        assert dataplane.activator.concurrency(A) == (0, 1)
        dataplane.activator.replica_ready(replica.info(A))
        response = await asyncio.wait_for(pending, 5)
    assert response.status_code == 200 and response.content == b"[1]"


async def test_full_queue_is_429_and_timeout_is_503_with_retry_after(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    dataplane.set_endpoint("ep", [(A, 100)], EndpointRouting(queue_timeout_s=0.3, max_queue=2))
    waiting = [
        asyncio.create_task(client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON))
        for _ in range(2)
    ]
    await asyncio.sleep(0.05)
    full = await client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
    assert full.status_code == 429
    assert full.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert full.headers["served-model-name"] == "a"
    for response in await asyncio.gather(*waiting):
        assert response.status_code == 503
        assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert response.headers["retry-after"]


async def test_failed_entity_answers_503_with_the_reason(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    dataplane.set_endpoint("ep", [(A, 100)])
    pending = asyncio.create_task(
        client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
    )
    await asyncio.sleep(0.05)
    dataplane.activator.entity_failed(A, "onnxruntime cannot load model.onnx")
    response = await asyncio.wait_for(pending, 1)
    assert response.status_code == 503
    assert "onnxruntime cannot load model.onnx" in response.json()["message"]
    again = await client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
    assert again.status_code == 503 and "cannot load" in again.json()["message"]


async def test_upstream_timeout_is_504(dataplane: DataPlane, client: httpx.AsyncClient) -> None:
    async with echo_replica("slow", delay_s=0.5) as replica:
        dataplane.set_endpoint("ep", [(A, 100)], EndpointRouting(upstream_timeout_s=0.1))
        dataplane.activator.replica_ready(replica.info(A))
        response = await client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
    assert response.status_code == 504
    assert response.json()["error_code"] == "DEADLINE_EXCEEDED"


async def test_an_ejected_replica_returns_once_it_passes_the_readiness_probe(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    # A replica that drops every query (ejected after two in a row) while its readiness probe, the one
    # every backend uses, answers as ``ready`` says: out while it is not ready, back once it is.
    ready = False
    probed = 0

    async def drops_queries(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal probed
        while True:
            request = await read_request(reader)
            if not request.startswith(b"GET /v2/health/ready "):
                return  # closes the connection without an answer
            probed += 1
            writer.write(b"HTTP/1.1 %s\r\ncontent-length: 0\r\n\r\n" % (b"200 OK" if ready else b"503 No"))
            await writer.drain()

    async with raw_server(drops_queries) as port, echo_replica("good", capacity=8) as good:
        dataplane.set_endpoint("ep", [(A, 100)])
        dataplane.activator.replica_ready(ReplicaInfo("flaky", A, f"http://127.0.0.1:{port}", 8))
        dataplane.activator.replica_ready(good.info(A))
        slot = next(slot for slot in dataplane.activator.replicas(A) if slot.replica_id == "flaky")
        for _ in range(40):
            await client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
            if slot.ejected:
                break
        assert slot.ejected
        for _ in range(100):
            if probed:
                break
            await asyncio.sleep(0.05)
        assert probed and slot.ejected  # probed, not ready: stays out
        ready = True
        for _ in range(100):
            if not slot.ejected:
                break
            await asyncio.sleep(0.05)
        assert not slot.ejected
    assert not await dataplane.probe(f"http://127.0.0.1:{port}")  # nothing answers there any more


async def test_a_drained_replicas_idle_connections_are_closed(
    dataplane: DataPlane, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    # Its server waits for open connections while it shuts down: the data plane lets go of them as soon
    # as the replica has drained, and keeps those to the replicas that stay.
    async with (echo_replica("going", unix_socket=str(tmp_path / "going.sock")) as going,
                echo_replica("staying") as staying):
        dataplane.set_endpoint("ep", [(A, 100)])
        for replica in (going, staying):
            dataplane.activator.replica_ready(replica.info(A))
        for _ in range(10):
            await client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
        assert going.requests and staying.requests
        assert dataplane.pool.idle_connections() == 2
        await dataplane.activator.replica_draining(going.info(A))
        assert dataplane.pool.idle_connections() == 1
        await client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
        assert dataplane.pool.idle_connections() == 1  # the one that stays is reused


async def test_unreachable_replica_is_retried_elsewhere_then_ejected(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    # Bound and never listening: connections are refused, and no other process can take the port while
    # the test runs (a port that was merely free once could be, and then the "dead" replica answered).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        async with echo_replica("good", capacity=8) as good:
            dataplane.set_endpoint("ep", [(A, 100)])
            dead = ReplicaInfo("dead", A, f"http://127.0.0.1:{closed.getsockname()[1]}", 8)
            dataplane.activator.replica_ready(dead)
            dataplane.activator.replica_ready(good.info(A))
            responses = [
                await client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
                for _ in range(20)
            ]
    assert all(response.status_code == 200 for response in responses)
    assert good.requests == 20
    dead_slot = next(slot for slot in dataplane.activator.replicas(A) if slot.replica_id == "dead")
    assert dead_slot.ejected  # two failures in a row: out of rotation until a health check passes
    assert dataplane.stats.entity(A).retries == 2


async def test_load_never_exceeds_replica_capacity(dataplane: DataPlane, client: httpx.AsyncClient) -> None:
    async with (
        echo_replica("r1", capacity=3, delay_s=0.02) as one,
        echo_replica("r2", capacity=3, delay_s=0.02) as two,
    ):
        dataplane.set_endpoint("ep", [(A, 100)])
        dataplane.activator.replica_ready(one.info(A))
        dataplane.activator.replica_ready(two.info(A))
        responses = await asyncio.gather(
            *(
                client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
                for _ in range(40)
            )
        )
    assert all(response.status_code == 200 for response in responses)
    assert one.max_in_flight <= 3 and two.max_in_flight <= 3
    assert one.requests + two.requests == 40 and min(one.requests, two.requests) >= 10


async def test_client_request_id_is_stripped_and_pins_the_entity(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    async with echo_replica("ra") as ra, echo_replica("rb") as rb:
        dataplane.set_endpoint("ep", [(A, 50), (B, 50)])
        dataplane.activator.replica_ready(ra.info(A))
        dataplane.activator.replica_ready(rb.info(B))
        served = set()
        for _ in range(10):
            body = b'{"client_request_id": "order-17", "inputs": [1]}'
            response = await client.post("/serving-endpoints/ep/invocations", content=body, headers=JSON)
            assert orjson.loads(response.content) == {"inputs": [1]}
            served.add(response.headers["served-model-name"])
        bad = await client.post(
            "/serving-endpoints/ep/invocations",
            content=b'{"client_request_id": 5, "inputs": [1]}',
            headers=JSON,
        )
    assert len(served) == 1
    assert bad.status_code == 400 and "client_request_id" in bad.json()["message"]


async def test_shadow_entity_gets_a_copy_whose_answer_is_dropped(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    async with echo_replica("main") as main, echo_replica("shadow") as shadow:
        dataplane.set_endpoint("ep", [(A, 100)], shadows=[(B, 100)])
        dataplane.activator.replica_ready(main.info(A))
        dataplane.activator.replica_ready(shadow.info(B))
        for _ in range(5):
            response = await client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
            assert response.headers["served-model-name"] == "a"
        for _ in range(100):
            if shadow.requests == 5:
                break
            await asyncio.sleep(0.01)
    assert main.requests == 5 and shadow.requests == 5


@pytest.mark.parametrize("dataplane", [1000], indirect=True)
async def test_oversized_body_is_413(dataplane: DataPlane, client: httpx.AsyncClient) -> None:
    dataplane.set_endpoint("ep", [(A, 100)])
    response = await client.post("/serving-endpoints/ep/invocations", content=b"x" * 1001, headers=JSON)
    assert response.status_code == 413 and response.json()["error_code"] == "REQUEST_TOO_LARGE"


async def test_request_queued_for_an_entity_that_leaves_the_routes_is_routed_again(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    async with echo_replica("rb") as rb:
        dataplane.set_endpoint("ep", [(A, 100)])
        pending = asyncio.create_task(
            client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
        )
        await asyncio.sleep(0.05)
        assert dataplane.activator.concurrency(A) == (0, 1)
        dataplane.activator.replica_ready(rb.info(B))
        dataplane.set_endpoint("ep", [(B, 100)])  # a config update: A is out, B (ready) takes traffic
        response = await asyncio.wait_for(pending, 2)
    assert response.status_code == 200 and response.headers["served-model-name"] == "b"


async def test_request_queued_for_a_deleted_endpoint_gets_404(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    dataplane.set_endpoint("ep", [(A, 100)])
    pending = asyncio.create_task(
        client.post("/serving-endpoints/ep/invocations", content=b"{}", headers=JSON)
    )
    await asyncio.sleep(0.05)
    dataplane.remove_endpoint("ep")
    response = await asyncio.wait_for(pending, 1)
    assert response.status_code == 404 and response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


async def test_stats_count_requests_by_entity_and_status(
    dataplane: DataPlane, client: httpx.AsyncClient
) -> None:
    async with echo_replica("r1") as replica:
        dataplane.set_endpoint("ep", [(A, 100)])
        dataplane.activator.replica_ready(replica.info(A))
        for path in ("/serving-endpoints/ep/invocations", "/serving-endpoints/ep/invocations?status=422"):
            await client.post(path, content=b"{}", headers=JSON)
        await client.post("/serving-endpoints/missing/invocations", content=b"{}", headers=JSON)
    stats = dataplane.stats.entity(A)
    assert stats.by_status == {200: 1, 422: 1}
    assert stats.count == 2 and stats.errors() == 1
    assert stats.cumulative_buckets()[-1] == (float("inf"), 2)
    assert dataplane.stats.unrouted_by_status == {404: 1}


# -- query_at_once: the gateway's immediate path ------------------------------------------------------


class Outcome:
    """A ``QueryCaller`` that records how ``query_at_once`` ended."""

    def __init__(self) -> None:
        self.ended: asyncio.Future[tuple[str, Any, Any]] = asyncio.get_running_loop().create_future()

    def answered(self, response: UpstreamResponse, entity: EntityKey) -> None:
        self.ended.set_result(("answered", response, entity))

    def failed(self, error: ZeroserveError) -> None:
        self.ended.set_result(("failed", error, None))

    def fall_back(self, entity: EntityKey | None) -> None:
        self.ended.set_result(("fall_back", entity, None))


def _query_scope(query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/serving-endpoints/ep/invocations",
            "path_params": {"name": "ep"}, "headers": [(b"content-type", b"application/json")],
            "query_string": query}


async def _at_once(
    dataplane: DataPlane, body: bytes = b"{}", query: bytes = b"", **deadline: Any
) -> tuple[str, Any, Any]:
    outcome = Outcome()
    dataplane.query_at_once(_query_scope(query), body, lambda entity: "/invocations", outcome,
                            started=time.perf_counter(), **deadline)
    return await asyncio.wait_for(outcome.ended, 5)


def _route_to(dataplane: DataPlane, info: ReplicaInfo, routing: EndpointRouting | None = None) -> ReplicaSlot:
    """Endpoint ``ep`` served by the one replica ``info`` describes; its balancer slot."""
    dataplane.set_endpoint("ep", [(info.entity, 100)], routing)
    dataplane.activator.replica_ready(info)
    [slot] = dataplane.activator.replicas(info.entity)
    return slot


async def _query(dataplane: DataPlane, query: bytes = b"", **kwargs: Any) -> UpstreamResponse:
    scope = _query_scope(query)
    response, _ = await dataplane.query(scope, b"{}", lambda entity: "/invocations", None, **kwargs)
    return response


async def test_query_at_once_sends_over_an_idle_connection_and_falls_back_without_one(
    dataplane: DataPlane,
) -> None:
    async with echo_replica("r1") as replica:
        slot = _route_to(dataplane, replica.info(A))
        # No pooled connection yet: nothing is sent, the slot is given back, and the entity drawn is named.
        assert await _at_once(dataplane) == ("fall_back", A, None)
        assert slot.in_flight == 0 and replica.requests == 0
        assert (await _query(dataplane, first_choice=A)).status == 200  # opens and pools a connection
        kind, response, entity = await _at_once(dataplane, b'{"inputs": [7]}')
        assert (kind, entity, response.status, response.body) == ("answered", A, 200, b'{"inputs": [7]}')
        assert replica.requests == 2 and slot.in_flight == 0
        assert dataplane.pool.idle_connections() == 1
        stats = dataplane.stats.entity(A)
        assert stats.by_status == {200: 2} and sum(stats.upstream_counts) == 2


async def test_query_at_once_never_jumps_the_queue_nor_exceeds_capacity(dataplane: DataPlane) -> None:
    async with echo_replica("r1", capacity=1) as replica:
        slot = _route_to(dataplane, replica.info(A))
        await _query(dataplane)  # a pooled connection for the immediate path
        busy = asyncio.create_task(_query(dataplane, b"sleep=0.3"))
        await asyncio.sleep(0.05)
        assert slot.in_flight == 1
        assert await _at_once(dataplane) == ("fall_back", A, None)  # full: it would have to wait
        assert slot.in_flight == 1 and not slot.queue.waiters
        await busy
    assert replica.max_in_flight == 1


async def test_the_entity_drawn_before_falling_back_is_the_one_served(dataplane: DataPlane) -> None:
    async with echo_replica("ra") as ra, echo_replica("rb") as rb:
        # B gets no share of the traffic: only a first_choice (what query_at_once drew) sends it there.
        dataplane.set_endpoint("ep", [(A, 100), (B, 0)])
        dataplane.activator.replica_ready(ra.info(A))
        dataplane.activator.replica_ready(rb.info(B))
        response = await _query(dataplane, first_choice=B)
        assert dict(response.headers)[b"x-replica"] == b"rb"
        assert [dict((await _query(dataplane)).headers)[b"x-replica"] for _ in range(3)] == [b"ra"] * 3


async def test_an_idle_connection_the_replica_closed_falls_back_without_blame(dataplane: DataPlane) -> None:
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        if first:
            return  # closes the idle connection: nothing of a second request reaches it
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_server(script) as port:
        slot = _route_to(dataplane, ReplicaInfo("raw", A, f"http://127.0.0.1:{port}", 4))
        await _query(dataplane)
        await asyncio.sleep(0.05)  # the close arrives while the connection is idle in the pool
        assert await _at_once(dataplane) == ("fall_back", A, None)
        assert slot.in_flight == 0 and slot.consecutive_failures == 0
        assert (await _query(dataplane, first_choice=A)).body == b"ok"  # a fresh connection
    assert connections == 2


async def test_a_replica_that_goes_away_holding_the_request_is_not_sent_another(dataplane: DataPlane) -> None:
    # A model that crashes on one input: retrying the request elsewhere would crash the next replica too.
    async def crashes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # then the process "dies": the connection closes without an answer

    async with raw_server(crashes) as port, echo_replica("healthy") as healthy:
        dataplane.set_endpoint("ep", [(A, 100)])
        dataplane.activator.replica_ready(ReplicaInfo("crashing", A, f"http://127.0.0.1:{port}", 1))
        sent = asyncio.create_task(_query(dataplane, first_choice=A))
        await asyncio.sleep(0.05)
        # A second replica arrives: a retry would be sent to it (and crash it in earnest).
        dataplane.activator.replica_ready(healthy.info(A))
        with pytest.raises(NoCapacity, match="closed the connection while serving the request"):
            await sent
        assert healthy.requests == 0
        assert dataplane.stats.entity(A).retries == 0


async def test_query_at_once_timeouts_name_whose_deadline_passed(dataplane: DataPlane) -> None:
    async with echo_replica("slow") as replica:
        slot = _route_to(dataplane, replica.info(A), EndpointRouting(upstream_timeout_s=0.2))
        await _query(dataplane)
        # The caller's deadline (the front door's request timeout) comes first: not the replica's fault.
        loop = asyncio.get_running_loop()
        kind, error, _ = await _at_once(dataplane, query=b"sleep=0.5", deadline=loop.time() + 0.05,
                                        deadline_message="The request took longer than 0.05 s.")
        assert kind == "failed" and isinstance(error, UpstreamTimeout)
        assert error.message == "The request took longer than 0.05 s."
        assert "served-model-name" not in error.headers and slot.consecutive_failures == 0
        await _query(dataplane)  # a pooled connection again (the timed-out one was closed)
        # The endpoint's upstream timeout comes first: the model did not answer; that counts.
        kind, error, _ = await _at_once(dataplane, query=b"sleep=0.5", deadline=loop.time() + 10,
                                        deadline_message="unused")
        assert kind == "failed" and error.message == "The model did not answer within 0.2 s."
        assert slot.consecutive_failures == 1 and slot.in_flight == 0
    assert dataplane.stats.entity(A).by_status == {200: 2, 504: 2}


class BrokenCapture:
    """An inference-table capture that fails (a stand-in: it stands for a bug in the bookkeeping)."""

    def enabled(self, endpoint: str) -> bool:
        return True

    def capture_request(self, *args: Any) -> bool:
        raise RuntimeError("the inference table broke")


async def test_a_failure_while_settling_an_immediate_query_still_answers_it(
    dataplane: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    async with echo_replica("r1") as replica:
        slot = _route_to(dataplane, replica.info(A))
        await _query(dataplane)
        dataplane.capture = BrokenCapture()  # type: ignore[assignment]
        kind, error, _ = await _at_once(dataplane)
    assert kind == "failed" and error.status_code == 500 and error.message == "Internal error."
    assert slot.in_flight == 0  # the slot was released before the bookkeeping failed
    assert "the inference table broke" in caplog.text


async def test_an_oversized_body_that_arrived_whole_is_413_on_the_immediate_path() -> None:
    async with running(DataPlane(scaler=Poker(), max_body_bytes=64)) as plane:
        plane.set_endpoint("ep", [(A, 100)])
        protocol = query_protocol(HeaderLimitedHttpToolsProtocol, GatewayQueries(plane, None))
        async with serving(Starlette(), http=protocol) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = b"x" * 65
            writer.write(b"POST /serving-endpoints/ep/invocations HTTP/1.1\r\nhost: gateway\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            answer = await asyncio.wait_for(reader.read(), 5)  # then the connection is closed
            writer.close()
    assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head
    assert orjson.loads(answer)["error_code"] == "REQUEST_TOO_LARGE" and b"64 bytes" in answer
