"""``router.gateway.serve``, the gateway process's entry point: what it does to the process itself."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path

from pydantic import SecretStr

from autoscaler.testing import FakeBackend, FakeClock
from router.auth.settings import SecuritySettings
from router.gateway import Gateway, serve
from router.settings import GatewaySettings
from runtime.server import YOUNG_GC_THRESHOLD


def _gateway_child(home: str, conn: Connection) -> None:
    async def report(gateway: Gateway) -> None:
        conn.send((gateway.ready, gc.get_freeze_count(), gc.get_threshold()[0]))

    serve(
        GatewaySettings(home=Path(home), host="127.0.0.1", port=0),
        security=SecuritySettings(admin_token=SecretStr("heap-test-token-" + "x" * 32)),
        on_ready=[report],
        backend=FakeBackend(FakeClock()),
    )


def test_the_gateway_process_freezes_its_heap_once_started(tmp_path: Path) -> None:
    # A forked child: freezing the heap of the test process itself would keep every later test's
    # garbage from being collected.
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=_gateway_child, args=(str(tmp_path), child))
    process.start()
    try:
        assert parent.poll(60), "the gateway never became ready"
        ready, frozen, young_threshold = parent.recv()
        # By the time user hooks run (``zeroserve up --example`` deploys from one), start-up's heap is
        # frozen and young collections are as rare as in a replica.
        assert ready
        assert frozen > 10_000
        assert young_threshold == YOUNG_GC_THRESHOLD
        assert process.pid is not None
        os.kill(process.pid, signal.SIGTERM)  # an orderly stop: exit status 0
        process.join(timeout=30)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def test_the_body_limit_setting_reaches_the_data_plane(tmp_path: Path) -> None:
    # Raising (or lowering) ZEROSERVE_MAX_BODY_BYTES must change what queries may send, not only what
    # the control plane takes.
    for limit in (1024, 200 * 1024 * 1024):
        token = SecretStr("body-limit-token-" + "x" * 32)
        security = SecuritySettings(admin_token=token, max_body_bytes=limit)
        gateway = Gateway(GatewaySettings(home=tmp_path / str(limit)), security=security,
                          backend=FakeBackend(FakeClock()))
        try:
            assert gateway.dataplane.max_body_bytes == limit
        finally:
            gateway.db.close()


async def test_v2_ready_only_once_endpoints_are_restored(tmp_path: Path) -> None:
    from importlib.metadata import version

    import httpx

    clock = FakeClock()
    gateway = Gateway(GatewaySettings(home=tmp_path), backend=FakeBackend(clock), clock=clock,
                      security=SecuritySettings(admin_token=SecretStr("t" * 40), public_v2_health=True))
    transport = httpx.ASGITransport(app=gateway.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        # Constructed, not started: alive, not ready (a load balancer must not send traffic yet).
        assert (await client.get("/v2/health/live")).status_code == 200
        starting = await client.get("/v2/health/ready")
        assert starting.status_code == 503 and "not restored" in starting.text
        await gateway.start()
        try:
            assert (await client.get("/v2/health/ready")).status_code == 200
            metadata = (await client.get("/v2", headers={"Authorization": "Bearer " + "t" * 40})).json()
            assert metadata["version"] == version("zeroserve")
        finally:
            await gateway.aclose()
