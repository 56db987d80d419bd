from __future__ import annotations

import re
from typing import Any

import pytest

from autoscaler.types import EntityKey
from tests.router.api.conftest import API, Harness, entity


async def create(harness: Harness, name: str = "ep", **config: Any) -> dict[str, Any]:
    body = {"name": name, "config": {"served_entities": [entity()], **config}}
    response = await harness.client.post(API, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_create_answers_in_progress_then_becomes_ready(harness: Harness) -> None:
    created = await create(harness)
    assert created["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    assert created["pending_config"]["config_version"] == 1
    assert created["endpoint_url"] == "http://gateway/serving-endpoints/ep/invocations"
    assert isinstance(created["creation_timestamp"], int) and created["creation_timestamp"] > 1e12
    assert len(created["id"]) == 32

    body = await harness.settle("ep")
    assert body["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert "pending_config" not in body
    config = body["config"]
    assert config["config_version"] == 1
    (served,) = config["served_entities"]
    assert served["name"] == "propensity-1"
    assert served["entity_version"] == "1"
    assert served["state"]["deployment"] == "DEPLOYMENT_READY"
    assert served["state"]["replicas"] == {"desired": 1, "starting": 0, "ready": 1, "draining": 0}
    assert served["state"]["scaling"], "the first scale-up has a reason"
    assert served["autoscaling"]["container_concurrency"] == 4
    assert served["optimization"] == "auto"  # the zeroserve extension's default, echoed
    assert served["state"]["optimization"] == {
        "path": "onnx", "mode": "auto", "reason": served["state"]["optimization"]["reason"]
    }
    assert config["traffic_config"]["routes"] == [
        {"served_entity_name": "propensity-1", "served_model_name": "propensity-1", "traffic_percentage": 100}
    ]
    assert harness.gateway.dataplane.table.lookup("ep").entities == (EntityKey("ep", "propensity-1"),)


async def test_list_get_and_errors(harness: Harness) -> None:
    await create(harness, "a")
    await create(harness, "b")
    listed = (await harness.client.get(API)).json()["endpoints"]
    assert [e["name"] for e in listed] == ["a", "b"]
    assert listed[0]["config"]["served_entities"] == [
        {"name": "propensity-1", "entity_name": "file:///models/propensity", "entity_version": "1"}
    ]

    duplicate = await harness.client.post(API, json={"name": "a", "config": {"served_entities": [entity()]}})
    assert duplicate.status_code == 409
    assert duplicate.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"

    missing = await harness.client.get(f"{API}/nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Serving endpoint 'nope' does not exist."
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "bad name", "config": {"served_entities": [entity()]}}, "name 'bad name' is invalid"),
        ({"name": "ep", "config": {"served_entities": [entity(workload_size="XL")]}},
         "config.served_entities[0].workload_size"),
        ({"name": "ep", "config": {"served_entities": [entity(min_provisioned_concurrency=100)]}},
         "config.served_entities[0]: min_provisioned_concurrency must be <= max_provisioned_concurrency (4)"),
        ({"name": "ep"}, "config: Field required"),
        ({"name": "ep", "config": {"name": "other", "served_entities": [entity()]}}, "does not match"),
        ([1, 2], "must be a JSON object"),
        ({"name": "ep", "config": {"served_entities": [entity(optimization="turbo")]}},
         "config.served_entities[0].optimization: must be one of auto, off, required, got 'turbo'"),
    ],
    ids=["bad-name", "bad-size", "floor-above-ceiling", "no-config", "config-name-mismatch", "not-object",
         "bad-optimization"],
)
async def test_invalid_create_is_400_naming_the_field(harness: Harness, body: Any, fragment: str) -> None:
    response = await harness.client.post(API, json=body)
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert fragment in response.json()["message"]
    assert (await harness.client.get(API)).json()["endpoints"] == []


async def test_malformed_json_and_unknown_routes(harness: Harness) -> None:
    headers = {"Content-Type": "application/json"}
    response = await harness.client.post(API, content=b"{not json", headers=headers)
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["message"]
    unknown = await harness.client.get("/api/2.0/nothing-here")
    assert unknown.status_code == 404
    assert unknown.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    # The Databricks SDK's discovery probe: answered, with nothing to add (any failure makes it warn).
    well_known = await harness.client.get("/.well-known/databricks-config")
    assert well_known.status_code == 200 and well_known.json() == {}


async def test_unknown_fields_are_ignored(harness: Harness) -> None:
    body = {"name": "ep", "newer_field": 1, "config": {"served_entities": [entity(newer=True)], "x": {}}}
    assert (await harness.client.post(API, json=body)).status_code == 200


async def test_tags_patch_and_delete(harness: Harness) -> None:
    await create(harness, "ep")
    response = await harness.client.patch(
        f"{API}/ep/tags", json={"add_tags": [{"key": "team", "value": "ds"}, {"key": "flag"}]}
    )
    assert response.json() == {"tags": [{"key": "flag"}, {"key": "team", "value": "ds"}]}
    response = await harness.client.patch(f"{API}/ep/tags", json={"delete_tags": ["flag"]})
    assert response.json() == {"tags": [{"key": "team", "value": "ds"}]}
    assert (await harness.client.get(f"{API}/ep")).json()["tags"] == [{"key": "team", "value": "ds"}]

    await harness.settle("ep")
    assert (await harness.client.delete(f"{API}/ep")).json() == {}
    assert (await harness.client.get(f"{API}/ep")).status_code == 404
    assert "ep" not in harness.gateway.dataplane.table
    assert (await harness.client.delete(f"{API}/ep")).status_code == 404
    # The name is free again at once; the old entity has been removed first.
    await create(harness, "ep")
    assert (await harness.settle("ep"))["state"]["ready"] == "READY"


async def test_logs_metrics_openapi_and_events(harness: Harness) -> None:
    await create(harness, "ep")
    await harness.settle("ep")
    logs = await harness.client.get(f"{API}/ep/served-models/propensity-1/logs")
    assert "fake replica" in logs.json()["logs"]
    build = await harness.client.get(f"{API}/ep/served-models/propensity-1/build-logs")
    assert "model file:///models/propensity" in build.json()["logs"]
    # Each event with a UTC time a person can read, not epoch milliseconds.
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S", build.json()["logs"], re.M)
    missing = await harness.client.get(f"{API}/ep/served-models/nope/logs")
    assert missing.status_code == 404

    metrics = await harness.client.get(f"{API}/ep/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'zeroserve_replicas{endpoint="ep",served_entity="propensity-1",state="ready"} 1.0' in metrics.text

    document = (await harness.client.get("/openapi.json")).json()
    paths = document["paths"]
    for path in ("/api/2.0/serving-endpoints", "/api/2.0/serving-endpoints/{name}/config",
                 "/serving-endpoints/{name}/invocations", "/v2/models/{name}/infer", "/healthz"):
        assert path in paths
    assert "requestBody" in paths["/api/2.0/serving-endpoints"]["post"]
    # Queries and tokens are documented too, public probes say they need no token, and a v2 error is
    # documented with the "error" field its clients read.
    for path in ("/serving-endpoints/{name}/invocations", "/v2/models/{name}/infer",
                 "/api/2.0/zeroserve/tokens"):
        assert "requestBody" in paths[path]["post"], path
    assert paths["/healthz"]["get"]["security"] == [] and "security" not in paths["/v2"]["get"]
    v2_error = paths["/v2/models/{name}/infer"]["post"]["responses"]["default"]["content"]["application/json"]
    schema_name = v2_error["schema"]["$ref"].rsplit("/", 1)[1]
    assert document["components"]["schemas"][schema_name]["required"] == ["error"]
    endpoint_doc = (await harness.client.get(f"{API}/ep/openapi")).json()
    assert "/serving-endpoints/ep/invocations" in endpoint_doc["paths"]

    events = (await harness.client.get(f"{API}/ep/events")).json()["events"]
    assert [e["kind"] for e in events] == ["CREATED", "UPDATE_SUCCEEDED"]
    assert events[0]["principal"] == "admin"


async def test_a_405_lists_every_method_the_path_answers(harness: Harness) -> None:
    # Found by schemathesis: GET and POST /api/2.0/serving-endpoints are two routes, and Starlette's
    # Allow named only the first.
    refused = await harness.client.request("OPTIONS", API)
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD, POST"
    refused = await harness.client.request("POST", f"{API}/ep")
    assert refused.status_code == 405 and refused.headers["allow"] == "DELETE, GET, HEAD"
    assert refused.json()["message"] == f"Method POST is not allowed on {API}/ep"
    # On Open Inference Protocol paths, with OIP's "error" too: the one error renderer answers these.
    oip = await harness.client.request("PUT", "/v2/models/ep/infer")
    assert oip.status_code == 405 and oip.headers["allow"] == "POST"
    said = "Method PUT is not allowed on /v2/models/ep/infer"
    assert oip.json() == {"error_code": "BAD_REQUEST", "message": said, "error": said}
    missing = await harness.client.get("/v2/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"] == "No API found for 'GET /v2/nothing-here'"


async def test_no_token_is_401_and_probes_are_public(harness: Harness) -> None:
    client = harness.client
    assert (await client.get(API, headers={"Authorization": ""})).status_code == 401
    assert (await client.get("/healthz", headers={"Authorization": ""})).status_code == 200
    ready = await client.get("/readyz", headers={"Authorization": ""})
    assert ready.json()["status"] == "ok"


async def test_auto_capture_config_is_kept_and_echoed(harness: Harness) -> None:
    capture = {"enabled": True, "catalog_name": "main", "schema_name": "ml", "table_name_prefix": "ep"}
    await create(harness, "ep", auto_capture_config=capture)
    body = await harness.settle("ep")
    assert body["config"]["auto_capture_config"] == capture
    assert harness.gateway.store.get("ep").config.config.auto_capture_config == capture  # type: ignore[union-attr]


async def test_an_unknown_inference_table_format_is_refused(harness: Harness) -> None:
    body = {"name": "ep", "config": {"served_entities": [{"entity_name": "file:///m", "name": "m"}],
                                     "auto_capture_config": {"enabled": True, "format": "csv"}}}
    refused = await harness.client.post(API, json=body)
    assert refused.status_code == 400 and "format must be parquet or delta, got 'csv'" in refused.text


async def test_optimization_is_stored_echoed_and_rolls_replicas(harness: Harness) -> None:
    await create(harness)
    await harness.settle("ep")
    update = await harness.client.put(f"{API}/ep/config",
                                      json={"served_entities": [entity(optimization="off")]})
    assert update.status_code == 200, update.text
    assert update.json()["pending_config"]["served_entities"][0]["optimization"] == "off"
    body = await harness.settle("ep")
    (served,) = body["config"]["served_entities"]
    assert served["optimization"] == "off"
    # Only new replicas started under "off" are reported: the old ones' path no longer applies.
    assert served["state"]["optimization"]["path"] == "native"
    assert served["state"]["optimization"]["mode"] == "off"
    assert harness.backend.starts == 2  # a new mode needs a new replica
    invalid = await harness.client.put(f"{API}/ep/config",
                                       json={"served_entities": [entity(optimization="sometimes")]})
    assert invalid.status_code == 400
    assert invalid.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "served_entities[0].optimization" in invalid.json()["message"]
