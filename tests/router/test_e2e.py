"""The data plane end to end with real processes: replicas are ``python -m runtime`` serving an ONNX
logistic regression, the router is uvicorn serving the data-plane routes on loopback, clients are
aiohttp and the stock tritonclient.

Requests at an entity at zero go through the real ``Autoscaler`` and ``LocalBackend`` (poke → start a
replica process → ``replica_ready`` → dispatch); the tests at steady state announce replicas they started
themselves, to control exactly which replica is killed or which entity takes traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from starlette.applications import Starlette

from autoscaler.backends.local import LocalBackend
from autoscaler.loop import Autoscaler
from autoscaler.spec import AutoscalingSpec, EntitySpec
from autoscaler.types import EntityKey
from router.dataplane.plane import DataPlane, dataplane_routes, error_response, running
from router.dataplane.routing import EndpointRouting
from runtime.errors import ZeroserveError
from runtime.examples import logreg_rows, make_logreg_onnx
from tests.router._replicas import replicas_for_test, start_replica
from tests.router._servers import serving

A = EntityKey("ep", "a")
B = EntityKey("ep", "b")
N_FEATURES = 20


def body(rows: int = 1) -> bytes:
    return b'{"inputs": %s}' % str(logreg_rows(N_FEATURES, rows).tolist()).encode()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_logreg_onnx(tmp_path_factory.mktemp("models") / "logreg", n_features=N_FEATURES)


@contextlib.asynccontextmanager
async def autoscaled(
    dataplane: DataPlane, entity: EntityKey, model_dir: Path, **autoscaling: Any
) -> AsyncIterator[Autoscaler]:
    """The real autoscaler and local backend behind the data plane, managing ``entity`` from zero."""
    backend = LocalBackend(warm_pool_size=0)
    await backend.open()
    autoscaler = Autoscaler(backend, listener=dataplane.listener, tick_s=0.5, max_start_failures=1)
    dataplane.activator.set_scaler(autoscaler)
    spec = EntitySpec(
        model_uri=model_dir.as_uri(),
        served_name=entity.served_entity,
        autoscaling=AutoscalingSpec(**autoscaling),
    )
    autoscaler.apply(entity, spec)
    await autoscaler.start()
    try:
        yield autoscaler
    finally:
        dataplane.activator.set_scaler(None)
        await asyncio.wait_for(autoscaler.stop(), 30)


@pytest.fixture
async def dataplane() -> AsyncIterator[DataPlane]:
    async with running(DataPlane()) as plane:
        yield plane


@pytest.fixture
async def gateway(dataplane: DataPlane) -> AsyncIterator[str]:
    app = Starlette(routes=dataplane_routes(dataplane), exception_handlers={ZeroserveError: error_response})
    async with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return orjson.loads(self.content)


class Client:
    """aiohttp, the fastest client at hand: the router and the client share this process."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._base_url = base_url
        self._session = session

    async def post(self, path: str, data: bytes) -> Answer:
        headers = {"content-type": "application/json"}
        async with self._session.post(self._base_url + path, data=data, headers=headers) as response:
            content = await response.read()
            return Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, content)


@pytest.fixture
async def client(gateway: str) -> AsyncIterator[Client]:
    connector = aiohttp.TCPConnector(limit=300)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield Client(gateway, session)


async def invoke(client: Client, rows: int = 1) -> Answer:
    return await client.post("/serving-endpoints/ep/invocations", body(rows))


async def test_200_concurrent_requests_at_zero_all_succeed_once_a_replica_is_up(
    dataplane: DataPlane, client: Client, model_dir: Path
) -> None:
    dataplane.set_endpoint("ep", [(A, 100)], EndpointRouting(queue_timeout_s=60))
    async with autoscaled(dataplane, A, model_dir) as autoscaler:
        assert autoscaler.status(A).ready == 0
        responses = await asyncio.gather(*(invoke(client) for _ in range(200)))
        assert autoscaler.status(A).ready >= 1
    assert [r.status_code for r in responses] == [200] * 200
    assert all("predictions" in r.json() and r.headers["served-model-name"] == "a" for r in responses)
    assert dataplane.activator.concurrency(A) == (0, 0)


async def test_full_queue_answers_429_at_once_while_queued_ones_succeed(
    dataplane: DataPlane, client: Client, model_dir: Path
) -> None:
    dataplane.set_endpoint("ep", [(A, 100)], EndpointRouting(max_queue=5))
    async with autoscaled(dataplane, A, model_dir):

        async def timed() -> tuple[int, float]:
            began = time.monotonic()
            response = await invoke(client)
            return response.status_code, time.monotonic() - began

        results = await asyncio.gather(*(timed() for _ in range(20)))
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 5, 429: 15}
    assert max(seconds for status, seconds in results if status == 429) < 1.0  # not held for the cold start


async def test_failing_model_answers_503_with_the_reason_fast(
    dataplane: DataPlane, client: Client, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"this is not an onnx model")
    dataplane.set_endpoint("ep", [(A, 100)], EndpointRouting(queue_timeout_s=60))
    async with autoscaled(dataplane, A, broken):
        began = time.monotonic()
        responses = await asyncio.gather(*(invoke(client) for _ in range(20)))
        waited = time.monotonic() - began
        again = await invoke(client)  # after the failure: answered at once, not queued
    assert waited < 10  # the failed start (~1-2 s), not the 60 s queue timeout, ends the wait
    for response in [*responses, again]:
        assert response.status_code == 503
        assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert "failed to deploy" in response.json()["message"]


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
async def test_replica_killed_mid_load_loses_no_request_and_what_it_held_is_told_why(
    dataplane: DataPlane, client: Client, model_dir: Path, tmp_path: Path, upstream: str
) -> None:
    # Over TCP (a remote replica) and over the replica's Unix socket (how local replicas are reached; the
    # killed replica's socket file stays behind, so reconnecting fails with "refused", not "not found").
    def socket_of(name: str) -> Path | None:
        return tmp_path / f"{name}.sock" if upstream == "unix" else None

    async with replicas_for_test() as started:
        first, second = await asyncio.gather(
            start_replica(model_dir, A, "a-1", unix_socket=socket_of("a-1")),
            start_replica(model_dir, A, "a-2", unix_socket=socket_of("a-2")),
        )
        started += [first, second]
        dataplane.set_endpoint("ep", [(A, 100)])
        dataplane.activator.replica_ready(first.info)
        dataplane.activator.replica_ready(second.info)
        done = 0

        async def worker(count: int) -> list[tuple[int, str]]:
            nonlocal done
            statuses = []
            for _ in range(count):
                response = await invoke(client, rows=4)
                statuses.append((response.status_code, response.content.decode(errors="replace")))
                done += 1
                if done == 100:
                    first.kill()  # SIGKILL with requests in flight and pooled connections open
            return statuses

        results = await asyncio.gather(*(worker(25) for _ in range(12)))
    statuses = [status for worker_statuses in results for status in worker_statuses]
    # Requests the killed replica held get a 503 saying so (not sent to another replica: a request
    # that crashes its replica would crash the next one); every other request is answered.
    held = [text for status, text in statuses if status != 200]
    assert len(statuses) == 300 and len(held) <= 12
    assert all("closed the connection while serving the request" in text for text in held), held
    killed = next(slot for slot in dataplane.activator.replicas(A) if slot.replica_id == "a-1")
    assert killed.ejected  # no health check passes: it stays out of rotation


async def test_traffic_split_90_10_within_3_percent(
    dataplane: DataPlane, client: Client, model_dir: Path
) -> None:
    async with replicas_for_test() as started:
        started += await asyncio.gather(
            start_replica(model_dir, A, "a-1"), start_replica(model_dir, B, "b-1")
        )
        dataplane.set_endpoint("ep", [(A, 90), (B, 10)])
        for replica in started:
            dataplane.activator.replica_ready(replica.info)
        served: Counter[str] = Counter()

        async def worker(count: int) -> None:
            for _ in range(count):
                response = await invoke(client)
                assert response.status_code == 200
                served[response.headers["served-model-name"]] += 1

        await asyncio.gather(*(worker(125) for _ in range(16)))
    assert sum(served.values()) == 2000
    assert abs(served["a"] / 2000 - 0.90) <= 0.03, served


async def test_stock_tritonclient_infers_through_the_router(
    dataplane: DataPlane, gateway: str, model_dir: Path
) -> None:
    import tritonclient.http as triton

    async with replicas_for_test() as started:
        started.append(await start_replica(model_dir, A, "a-1"))
        dataplane.set_endpoint("ep", [(A, 100)])
        dataplane.activator.replica_ready(started[0].info)
        rows = logreg_rows(N_FEATURES, 3).astype(np.float32)

        def call() -> tuple[bool, dict[str, object], np.ndarray]:
            client = triton.InferenceServerClient(gateway.removeprefix("http://"))
            try:
                tensor = triton.InferInput("float_input", list(rows.shape), "FP32")
                tensor.set_data_from_numpy(rows, binary_data=True)
                output = triton.InferRequestedOutput("probabilities", binary_data=True)
                result = client.infer("ep", [tensor], outputs=[output])
                return (
                    client.is_model_ready("ep"),
                    client.get_model_metadata("ep"),
                    result.as_numpy("probabilities"),
                )
            finally:
                client.close()

        ready, metadata, probabilities = await asyncio.to_thread(call)
    assert ready
    assert metadata["name"] == "ep"  # the model asked for (the endpoint), not the served entity
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


async def test_client_that_hangs_up_leaves_the_queue(dataplane: DataPlane, gateway: str) -> None:
    dataplane.set_endpoint("ep", [(A, 100)])  # nobody will start a replica: the request can only wait
    host, port = gateway.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    payload = body()
    writer.write(
        b"POST /serving-endpoints/ep/invocations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    await writer.drain()
    for _ in range(100):
        if dataplane.activator.concurrency(A) == (0, 1):
            break
        await asyncio.sleep(0.01)
    assert dataplane.activator.concurrency(A) == (0, 1)
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if dataplane.activator.concurrency(A) == (0, 0):
            break
        await asyncio.sleep(0.01)
    assert dataplane.activator.concurrency(A) == (0, 0)
    assert dataplane.stats.entity(A).by_status == {499: 1}
