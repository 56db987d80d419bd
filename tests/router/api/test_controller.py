"""Rollout sequencing: traffic moves only when the new entities are up; failures leave the old config
serving; a restarted gateway brings everything back and resumes an interrupted rollout."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from autoscaler.testing import FakeClock
from autoscaler.types import EntityKey
from tests.router.api.conftest import API, Harness, LoopbackFakeBackend, entity, make_gateway

V1 = "file:///models/propensity/1"
V2 = "file:///models/propensity/2"


async def deploy_v1(harness: Harness) -> None:
    body = {"name": "ep", "config": {"served_entities": [entity(V1, "1", name="v1")]}}
    assert (await harness.client.post(API, json=body)).status_code == 200
    assert (await harness.settle("ep"))["state"]["ready"] == "READY"


def split_config() -> dict[str, Any]:
    return {
        "served_entities": [entity(V1, "1", name="v1"), entity(V2, "2", name="v2")],
        "traffic_config": {"routes": [{"served_entity_name": "v1", "traffic_percentage": 10},
                                      {"served_entity_name": "v2", "traffic_percentage": 90}]},
    }


def routes(harness: Harness) -> dict[str, int]:
    entry = harness.gateway.dataplane.table.lookup("ep")
    return {route.entity.served_entity: route.percent for route in entry.routes}


async def test_traffic_moves_only_after_new_entity_is_ready(harness: Harness) -> None:
    await deploy_v1(harness)
    harness.backend.start_delay_s = 10.0  # on the fake clock: v2 stays STARTING until we advance it
    response = await harness.client.put(f"{API}/ep/config", json=split_config())
    assert response.status_code == 200
    body = response.json()
    assert body["state"]["config_update"] == "IN_PROGRESS"
    assert body["config"]["config_version"] == 1 and body["pending_config"]["config_version"] == 2

    await asyncio.sleep(0.2)
    during = (await harness.client.get(f"{API}/ep")).json()
    assert during["state"]["config_update"] == "IN_PROGRESS"
    pending_v2 = during["pending_config"]["served_entities"][1]
    assert pending_v2["state"]["deployment"] == "DEPLOYMENT_CREATING"
    assert routes(harness) == {"v1": 100}, "no traffic may move to an entity that is not up"

    second = await harness.client.put(f"{API}/ep/config", json=split_config())
    assert second.status_code == 409 and second.json()["error_code"] == "RESOURCE_CONFLICT"

    await harness.clock.advance(10.0)
    after = await harness.settle("ep")
    assert after["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert after["config"]["config_version"] == 2
    assert routes(harness) == {"v1": 10, "v2": 90}


async def test_replaced_entity_drains_after_traffic_moved(harness: Harness) -> None:
    await deploy_v1(harness)
    config = {"served_entities": [entity(V2, "2", name="v2")]}
    assert (await harness.client.put(f"{API}/ep/config", json=config)).status_code == 200
    await harness.settle("ep")
    assert routes(harness) == {"v2": 100}
    for _ in range(200):
        if harness.backend.running() == harness.backend.running(EntityKey("ep", "v2")):
            break
        await asyncio.sleep(0.02)
    assert harness.gateway.autoscaler.entities() == [EntityKey("ep", "v2")]
    assert harness.backend.running() == harness.backend.running(EntityKey("ep", "v2"))


async def test_failed_update_keeps_previous_config_serving(harness: Harness) -> None:
    await deploy_v1(harness)
    harness.backend.failing_models[V2] = "ValueError: bad model file"
    assert (await harness.client.put(f"{API}/ep/config", json=split_config())).status_code == 200
    body = await harness.settle("ep")
    assert body["state"]["config_update"] == "UPDATE_FAILED"
    assert "served entity 'v2' failed" in body["state"]["config_update_message"]
    assert "bad model file" in body["state"]["config_update_message"]
    assert body["config"]["config_version"] == 1
    assert body["state"]["ready"] == "READY"
    assert routes(harness) == {"v1": 100}
    for _ in range(100):
        if EntityKey("ep", "v2") not in harness.gateway.autoscaler.entities():
            break
        await asyncio.sleep(0.02)
    assert harness.gateway.autoscaler.entities() == [EntityKey("ep", "v1")]

    # A later, good update goes through, with the next version number (2 is not reused).
    del harness.backend.failing_models[V2]
    response = await harness.client.put(f"{API}/ep/config", json=split_config())
    assert response.json()["pending_config"]["config_version"] == 3
    assert (await harness.settle("ep"))["config"]["config_version"] == 3


async def test_failed_create_shows_failed_deployment(harness: Harness) -> None:
    harness.backend.failing_models[V1] = "ImportError: no module named sklearn"
    body = {"name": "ep", "config": {"served_entities": [entity(V1, "1", name="v1")]}}
    await harness.client.post(API, json=body)
    result = await harness.settle("ep")
    assert result["state"] == {
        "ready": "NOT_READY",
        "config_update": "UPDATE_FAILED",
        "config_update_message": result["state"]["config_update_message"],
    }
    served = result["config"]["served_entities"][0]
    assert served["state"]["deployment"] == "DEPLOYMENT_FAILED"
    assert "no module named sklearn" in served["state"]["deployment_state_message"]


async def test_slow_entity_times_out(harness: Harness) -> None:
    await deploy_v1(harness)
    harness.backend.start_delay_s = 3600.0  # never advanced: the rollout timeout (3 s) must fire
    config = {"served_entities": [entity(V2, "2", name="v2")]}
    await harness.client.put(f"{API}/ep/config", json=config)
    body = await harness.settle("ep", timeout_s=10)
    assert body["state"]["config_update"] == "UPDATE_FAILED"
    assert "no ready replica after 3 s" in body["state"]["config_update_message"]
    assert routes(harness) == {"v1": 100}


async def test_scale_to_zero_entity_is_not_waited_for(harness: Harness) -> None:
    harness.backend.start_delay_s = 3600.0
    body = {"name": "ep", "config": {"served_entities": [entity(V1, "1", scale_to_zero_enabled=True)]}}
    await harness.client.post(API, json=body)
    result = await harness.settle("ep")
    assert result["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    served = result["config"]["served_entities"][0]
    assert served["state"]["replicas"]["desired"] == 0
    assert "Scaled to zero" in served["state"]["deployment_state_message"]


async def test_restart_restores_endpoints_and_resumes_rollouts(tmp_path: Path) -> None:
    clock = FakeClock()
    backend = LoopbackFakeBackend(clock)
    first = make_gateway(tmp_path, backend, clock)
    await first.start()
    await first.controller.create({"name": "ep", "config": {"served_entities": [entity(V1, "1", name="v1")]}})
    await first.controller.wait_rollout("ep")
    backend.start_delay_s = 3600.0
    await first.controller.update_config("ep", split_config())
    await asyncio.sleep(0.1)
    await first.aclose()  # mid-rollout: the store still says IN_PROGRESS

    clock = FakeClock()
    backend = LoopbackFakeBackend(clock)
    second = make_gateway(tmp_path, backend, clock)
    await second.start()
    try:
        record = second.store.get("ep")
        assert record.config is not None and record.config.version == 1
        assert record.pending is not None and record.pending.version == 2
        assert {r.entity.served_entity for r in second.dataplane.table.lookup("ep").routes} == {"v1"}
        await second.controller.wait_rollout("ep")
        record = second.store.get("ep")
        assert record.config is not None and record.config.version == 2
        assert record.pending is None
        entry = second.dataplane.table.lookup("ep")
        assert {r.entity.served_entity: r.percent for r in entry.routes} == {"v1": 10, "v2": 90}
        assert len(backend.running()) == 2  # both entities have a floor of one replica
    finally:
        await second.aclose()
