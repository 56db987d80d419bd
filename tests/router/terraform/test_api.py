"""The provider's API side without Terraform: bodies from Terraform values, state from the gateway's
answers (only real drift shows), waiting for READY, and errors pointed at attributes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.terraform import api

ENTITY = {"name": "v1", "entity_name": "s3://models/fraud/1", "entity_version": None, "workload_size": None,
          "workload_type": None, "scale_to_zero_enabled": True, "min_provisioned_concurrency": None,
          "max_provisioned_concurrency": None, "environment_vars": None, "optimization": None}
STATE = {"name": "fraud", "served_entity": [ENTITY], "traffic": None, "tags": {"team": "risk"},
         "rate_limit": [{"calls": 100, "renewal_period": "minute", "key": None}],
         "ready_timeout_seconds": None}


def served(name: str = "v1", **fields: Any) -> dict[str, Any]:
    return {"name": name, "entity_name": "s3://models/fraud/1", "entity_version": None,
            "workload_size": "Small", "workload_type": "CPU", "scale_to_zero_enabled": True,
            "min_provisioned_concurrency": 0, "optimization": "auto",
            "state": {"deployment": "DEPLOYMENT_READY"}, **fields}


def answer(*entities: dict[str, Any], routes: dict[str, int] | None = None, **fields: Any) -> dict[str, Any]:
    routes = routes or {entities[0]["name"]: 100}
    return {"name": "fraud", "id": "abc", "endpoint_url": "http://gw/serving-endpoints/fraud/invocations",
            "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
            "tags": [{"key": "team", "value": "risk"}],
            "rate_limits": [{"calls": 100, "renewal_period": "minute"}],
            "config": {"config_version": 1, "served_entities": list(entities), "traffic_config": {"routes": [
                {"served_entity_name": k, "traffic_percentage": v} for k, v in routes.items()]}},
            **fields}


def test_the_create_body_leaves_unset_settings_to_the_gateway() -> None:
    assert api.create_body(STATE) == {
        "name": "fraud",
        "config": {"served_entities": [{"name": "v1", "entity_name": "s3://models/fraud/1",
                                        "scale_to_zero_enabled": True}]},
        "tags": [{"key": "team", "value": "risk"}],
        "rate_limits": [{"calls": 100, "renewal_period": "minute"}],
    }


def test_a_split_becomes_routes_and_numbers_become_integers() -> None:
    state = {**STATE, "served_entity": [ENTITY, {**ENTITY, "name": "v2", "min_provisioned_concurrency": 2.0}],
             "traffic": {"v2": 10.0, "v1": 90}}
    config = api.config_body(state)
    assert config["traffic_config"]["routes"] == [
        {"served_entity_name": "v1", "traffic_percentage": 90},
        {"served_entity_name": "v2", "traffic_percentage": 10},
    ]
    floor = config["served_entities"][1]["min_provisioned_concurrency"]
    assert floor == 2 and isinstance(floor, int)


def test_state_read_back_matches_the_configuration_when_nothing_drifted() -> None:
    read = api.endpoint_state(answer(served()), STATE)
    assert read["served_entity"] == [ENTITY]  # the gateway's defaults stay unset, as configured
    assert read["traffic"] is None and read["tags"] == {"team": "risk"}
    assert read["rate_limit"] == [{"calls": 100, "renewal_period": "minute", "key": None}]
    assert read["id"] == "abc"


def test_explicit_defaults_stay_explicit_and_real_drift_shows() -> None:
    prior = {**STATE, "served_entity": [{**ENTITY, "workload_size": "Small"}]}
    assert api.endpoint_state(answer(served()), prior)["served_entity"][0]["workload_size"] == "Small"
    drifted = api.endpoint_state(answer(served(workload_size="Large", min_provisioned_concurrency=3)), STATE)
    assert drifted["served_entity"][0]["workload_size"] == "Large"
    assert drifted["served_entity"][0]["min_provisioned_concurrency"] == 3
    retagged = api.endpoint_state(answer(served(), tags=[]), STATE)
    assert retagged["tags"] == {}


def test_a_split_made_outside_terraform_is_read_as_a_traffic_map() -> None:
    read = api.endpoint_state(answer(served(), served("v2"), routes={"v1": 50, "v2": 50}), STATE)
    assert read["traffic"] == {"v1": 50, "v2": 50}
    assert [e["name"] for e in read["served_entity"]] == ["v1", "v2"]


def test_tags_patch_adds_changes_and_deletes() -> None:
    assert api.tags_patch({"a": "1"}, {"a": "1"}) is None
    assert api.tags_patch({"a": "1", "b": "2"}, {"a": "9", "c": "3"}) == {
        "add_tags": [{"key": "a", "value": "9"}, {"key": "c", "value": "3"}], "delete_tags": ["b"]}


class Gateway:
    """A scripted gateway for ``wait_ready``: one answer per poll."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.calls = 0

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        self.calls += 1
        return self.answers[min(self.calls - 1, len(self.answers) - 1)]


def updating(update: str, ready: str = "NOT_READY", **entity: Any) -> dict[str, Any]:
    body = answer(served(**entity))
    body["state"] = {"ready": ready, "config_update": update}
    return body


def test_wait_ready_polls_until_the_update_is_done() -> None:
    gateway = Gateway([updating("IN_PROGRESS"), updating("IN_PROGRESS"), updating("NOT_UPDATING", "READY")])
    body = api.wait_ready(gateway, "fraud", 60, sleep=lambda s: None)  # type: ignore[arg-type]
    assert body["state"]["ready"] == "READY" and gateway.calls == 3


def test_a_failed_update_says_why_in_the_served_entitys_words() -> None:
    failed = updating("UPDATE_FAILED", state={"deployment": "DEPLOYMENT_FAILED",
                                              "deployment_state_message": "model.onnx: no such file"})
    failed["state"]["config_update_message"] = "served entity v1 failed to deploy"
    with pytest.raises(api.NotReady) as caught:
        api.wait_ready(Gateway([failed]), "fraud", 60, sleep=lambda s: None)  # type: ignore[arg-type]
    assert "served entity v1 failed to deploy" in caught.value.message
    assert "model.onnx: no such file" in caught.value.message
    assert caught.value.attribute == "served_entity"


def test_a_timeout_names_what_it_was_waiting_for() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(api.NotReady) as caught:
        api.wait_ready(Gateway([updating("IN_PROGRESS")]), "fraud", 5,  # type: ignore[arg-type]
                       clock=lambda: now[0], sleep=sleep)
    assert "not READY within 5 s (config_update IN_PROGRESS" in caught.value.message
    assert caught.value.attribute == "ready_timeout_seconds"


@pytest.mark.parametrize(("message", "attribute"), [
    ("config.traffic_config.routes: traffic percentages sum to 99, not 100", "traffic"),
    ("config.served_entities[0].workload_size: must be one of Small, Medium, Large", "served_entity"),
    ("rate_limits[0].renewal_period must be one of minute, got 'week'", "rate_limit"),
    ("endpoint name 'a b' is invalid", "name"),
    ("Endpoint with name 'fraud' already exists.", "name"),
    ("something else entirely", None),
])
def test_api_errors_point_at_the_attribute_they_are_about(message: str, attribute: str | None) -> None:
    assert api.attribute_of(message) == attribute


def test_the_creators_implied_grant_is_not_drift() -> None:
    body = {"access_control_list": [
        {"user_name": "admin", "all_permissions": [{"permission_level": "CAN_MANAGE", "inherited": False}]},
        {"user_name": "scorer", "all_permissions": [{"permission_level": "CAN_QUERY", "inherited": False}]},
        {"group_name": "admins", "all_permissions": [{"permission_level": "CAN_MANAGE", "inherited": True}]},
    ]}
    prior = {"access_control": [{"user_name": "scorer", "group_name": None, "permission_level": "CAN_QUERY"}]}
    assert api.acl_state(body, "admin", prior) == prior["access_control"]
    assert api.acl_body(prior) == {
        "access_control_list": [{"permission_level": "CAN_QUERY", "user_name": "scorer"}]}


def test_the_client_reads_the_gateways_error_and_retries_only_what_is_worth_retrying() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            unavailable = {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "database reconnecting"}
            missing = {"error_code": "RESOURCE_DOES_NOT_EXIST",
                       "message": "Serving endpoint 'x' does not exist."}
            status, body = (503, unavailable) if len(seen) == 1 else (404, missing)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # a 502 may come after the change was made: a write is not retried
            seen.append(self.path)
            data = b'{"error_code": "BAD_GATEWAY", "message": "upstream went away"}'
            self.send_response(502)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = api.Client(f"http://127.0.0.1:{server.server_address[1]}", "t", sleep=lambda s: None)
        with pytest.raises(api.ApiError) as caught:
            client.call("GET", "/api/2.0/serving-endpoints/x")
        assert caught.value.not_found and caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        assert len(seen) == 2  # the 503 was tried again, the 404 was not
        with pytest.raises(api.ApiError) as bad_gateway:
            client.call("POST", "/api/2.0/serving-endpoints", {"name": "x"})
        assert bad_gateway.value.status == 502 and len(seen) == 3
        unreachable = api.Client("http://127.0.0.1:1", None, timeout_s=2, sleep=lambda s: None)
        with pytest.raises(api.ApiError) as down:
            unreachable.call("GET", "/x")
        assert down.value.status == 0 and "cannot reach the zeroserve gateway" in str(down.value)
    finally:
        server.shutdown()
        server.server_close()
