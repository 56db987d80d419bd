"""MCP end to end: the official MCP client over Streamable HTTP against a real `zeroserve serve` process,
whose endpoints serve models kept in an S3-compatible store (moto on loopback) through real replicas.

The tests share one gateway and run in file order: the first tool call on ``propensity`` is its cold
start, so it comes before anything else that queries the endpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from prometheus_client.parser import text_string_to_metric_families

from tests.router.gateway_process import ADMIN_TOKEN, GatewayProcess, s3_models, wait_for

pytestmark = pytest.mark.slow

BUCKET = "mcp-models"
PUBLIC_HOST = "models.example.com"
CUSTOMERS = [
    {"age": 41, "tenure_months": 20, "num_purchases": 6, "avg_basket": 37.5, "days_since_last_visit": 12,
     "is_member": True},
    {"age": 67, "tenure_months": 2, "num_purchases": 1, "avg_basket": 12.0, "days_since_last_visit": 200,
     "is_member": False},
]
BUILTINS = {"list_endpoints", "get_endpoint_status"}
# An MLflow model from code that refuses negative inputs: a model error at inference time.
PICKY_MODEL = """
import mlflow
import pandas as pd


class Picky(mlflow.pyfunc.PythonModel):
    # The hint only keeps MLflow from warning (inside its own filter) that predict has none.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        if (model_input["x"] < 0).any():
            raise ValueError("x must not be negative")
        return model_input["x"] * 2.0


mlflow.models.set_model(Picky())
"""


def make_picky_model(directory: Path) -> Path:
    import warnings

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    code = directory.parent / "picky_model.py"
    code.write_text(PICKY_MODEL)
    signature = ModelSignature(inputs=Schema([ColSpec("double", "x")]), outputs=Schema([ColSpec("double")]))
    with warnings.catch_warnings():  # mlflow's own deprecation and style warnings while saving
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(str(directory), python_model=str(code), signature=signature,
                                 pip_requirements=["mlflow"])
    return directory


@dataclass(frozen=True)
class Deployment:
    url: str
    tokens: dict[str, str]  # principal -> bearer token
    gateway: GatewayProcess  # its access log: gateway.access_log(until=...)


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto holding the propensity model, the custom pyfunc (columns x, y; param scale) and picky."""
    from runtime.examples import make_custom_pyfunc, make_propensity_mlflow

    local = tmp_path_factory.mktemp("models")
    makers = (("propensity", make_propensity_mlflow), ("uplift", make_custom_pyfunc),
              ("picky", make_picky_model))
    with s3_models(BUCKET, {f"{name}/1": make(local / name) for name, make in makers}) as env:
        yield env


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, model_store: dict[str, str]) -> Iterator[Deployment]:
    env = {**model_store, "ZEROSERVE_ALLOWED_HOSTS": f"{PUBLIC_HOST},127.0.0.1"}
    with GatewayProcess(tmp_path_factory.mktemp("home"), env) as gateway, gateway.client(timeout=60) as admin:
        for name, description in (("propensity", "Probability that a customer buys in the next 30 days."),
                                  ("uplift", None), ("picky", None)):
            body: dict[str, Any] = {"name": name, "tags": [{"key": "team", "value": "growth"}], "config": {
                "served_entities": [{"name": f"{name}-1", "entity_name": f"s3://{BUCKET}/{name}/1",
                                     "workload_size": "Small", "scale_to_zero_enabled": True}]}}
            if description:
                body["description"] = description
            assert admin.post("/api/2.0/serving-endpoints", json=body).status_code == 200, name
        for name in ("propensity", "uplift", "picky"):
            wait_for(lambda n=name: admin.get(f"/api/2.0/serving-endpoints/{n}").json()["state"]["ready"]
                     == "READY", 60, f"{name} READY")
        tokens = {"admin": ADMIN_TOKEN}
        for principal in ("analyst", "viewer", "limited"):
            created = admin.post("/api/2.0/zeroserve/tokens", json={"principal": principal})
            tokens[principal] = created.json()["token"]
        grants = {"propensity": [("analyst", "CAN_QUERY"), ("viewer", "CAN_VIEW"), ("limited", "CAN_QUERY")],
                  "uplift": [("analyst", "CAN_VIEW")], "picky": [("analyst", "CAN_QUERY")]}
        for name, entries in grants.items():
            endpoint_id = admin.get(f"/api/2.0/serving-endpoints/{name}").json()["id"]
            acl = [{"user_name": user, "permission_level": level} for user, level in entries]
            response = admin.patch(f"/api/2.0/permissions/serving-endpoints/{endpoint_id}",
                                   json={"access_control_list": acl})
            assert response.status_code == 200, response.text
        # "limited" may query, but its own rate limit is zero calls a minute.
        closed = {"rate_limits": [{"calls": 0, "key": "user", "renewal_period": "minute",
                                   "principal": "limited"}]}
        assert admin.put("/api/2.0/serving-endpoints/propensity/ai-gateway", json=closed).status_code == 200
        yield Deployment(gateway.url, tokens, gateway)


@contextlib.asynccontextmanager
async def mcp(deployment: Deployment, principal: str, *, mode: str = "auto",
              headers: dict[str, str] | None = None) -> AsyncIterator[Client]:
    token = deployment.tokens[principal]
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}", **(headers or {})},
                                  timeout=httpx2.Timeout(30, read=120)) as http:
        transport = streamable_http_client(f"{deployment.url}/mcp", http_client=http)
        async with Client(transport, mode=mode) as client:
            yield client


def http_client(deployment: Deployment, principal: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=deployment.url, timeout=60,
                             headers={"Authorization": f"Bearer {deployment.tokens[principal]}"})


async def tool_names(deployment: Deployment, principal: str) -> set[str]:
    async with mcp(deployment, principal) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


def text_of(result: Any) -> str:
    return "\n".join(item.text for item in result.content if item.type == "text")


async def test_initialize_handshake(deployment: Deployment) -> None:
    async with mcp(deployment, "analyst", mode="legacy") as client:
        assert client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        assert client.server_info is not None and client.server_info.name == "zeroserve"
        assert client.server_capabilities.tools is not None
        assert "serving endpoint" in (client.instructions or "")
        assert {tool.name for tool in (await client.list_tools()).tools} == BUILTINS | {"propensity", "picky"}


async def test_call_waits_for_the_cold_start_and_scores_like_invocations(deployment: Deployment) -> None:
    async with mcp(deployment, "analyst") as client:
        status = await client.call_tool("get_endpoint_status", {"name": "propensity"})
        assert not status.is_error, text_of(status)
        assert status.structured_content is not None
        [entity] = status.structured_content["served_entities"]
        assert entity["scale_to_zero_enabled"] and entity["replicas"]["ready"] == 0  # at zero

        both = await client.call_tool("propensity", {"records": CUSTOMERS})  # waits for a replica
        one = await client.call_tool("propensity", CUSTOMERS[1])  # the one-row form
    assert not both.is_error and not one.is_error, text_of(both) + text_of(one)
    assert both.meta is not None and both.meta["zeroserve/served-model-name"] == "propensity-1"

    rows = [list(customer.values()) for customer in CUSTOMERS]
    split = {"dataframe_split": {"columns": list(CUSTOMERS[0]), "data": rows}}
    async with http_client(deployment, "analyst") as http:
        answer = await http.post("/serving-endpoints/propensity/invocations", json=split)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [set(row) for row in predictions] == [{"probability"}, {"probability"}]
    assert predictions[0] != predictions[1]
    assert both.structured_content == {"predictions": predictions}
    assert one.structured_content == {"predictions": predictions[1:]}

    # The calls took the query path: counted, cold-started once, logged under the caller.
    async with http_client(deployment, "admin") as http:
        metrics = (await http.get("/metrics")).text
    found = {(s.name, frozenset(s.labels.items())): s.value
             for family in text_string_to_metric_families(metrics) for s in family.samples}
    labels = frozenset({"endpoint": "propensity", "served_entity": "propensity-1"}.items())
    assert found[("zeroserve_requests_total", labels | {("status_class", "2xx")})] == 3
    assert found[("zeroserve_cold_starts_total", labels)] == 1
    def queries_of(access: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [line for line in access if line["path"] == "/serving-endpoints/propensity/invocations"]

    access = deployment.gateway.access_log(until=lambda access: len(queries_of(access)) >= 3)
    queries = queries_of(access)
    assert [(line["principal"], line["status"]) for line in queries] == [("analyst", 200)] * 3
    # Each one carries the request id of the MCP request it answered.
    mcp_ids = {line["request_id"] for line in access if line["path"] == "/mcp"}
    assert {line["request_id"] for line in queries[:2]} <= mcp_ids


async def test_tools_follow_the_callers_permissions(deployment: Deployment) -> None:
    assert await tool_names(deployment, "admin") == BUILTINS | {"propensity", "uplift", "picky"}
    assert await tool_names(deployment, "analyst") == BUILTINS | {"propensity", "picky"}
    assert await tool_names(deployment, "viewer") == BUILTINS

    async with mcp(deployment, "viewer") as client:
        listed = await client.call_tool("list_endpoints", {})
        viewed_only = await client.call_tool("propensity", CUSTOMERS[0])  # may view it, not query it
        with pytest.raises(MCPError, match="Unknown tool: uplift"):  # may not even see it
            await client.call_tool("uplift", {"x": 1.0, "y": 2.0})
    assert listed.structured_content is not None
    assert [(e["name"], e["tool"]) for e in listed.structured_content["endpoints"]] == [("propensity", None)]
    assert viewed_only.is_error and "holds CAN_VIEW" in text_of(viewed_only)

    async with mcp(deployment, "analyst") as client:
        listed = await client.call_tool("list_endpoints", {})
        refused = await client.call_tool("uplift", {"x": 1.0, "y": 2.0})  # may view, not query
        hidden = await client.call_tool("get_endpoint_status", {"name": "nothing-here"})
    assert listed.structured_content is not None
    assert {e["name"]: e["tool"] for e in listed.structured_content["endpoints"]} == {
        "propensity": "propensity", "uplift": None, "picky": "picky"}
    assert refused.is_error and "CAN_QUERY" in text_of(refused)
    assert hidden.is_error and "does not exist" in text_of(hidden)


async def test_schemas_come_from_the_model_signatures(deployment: Deployment) -> None:
    async with mcp(deployment, "admin") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    propensity, uplift = tools["propensity"], tools["uplift"]
    properties = propensity.input_schema["properties"]
    assert properties["age"] == {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
    assert properties["is_member"] == {"type": "boolean"}
    assert properties["records"]["items"]["required"] == list(CUSTOMERS[0])
    assert propensity.output_schema is not None
    assert "Probability that a customer buys" in (propensity.description or "")
    assert "team=growth" in (propensity.description or "")
    assert "Scales to zero" in (propensity.description or "")
    scale = uplift.input_schema["properties"]["params"]["properties"]["scale"]
    assert scale == {"type": "number", "default": 1.0}
    assert uplift.annotations is not None and uplift.annotations.read_only_hint


async def test_bad_arguments_name_the_schema_violation(deployment: Deployment) -> None:
    async with mcp(deployment, "analyst") as client:
        wrong_type = await client.call_tool("propensity", {"records": [{**CUSTOMERS[0], "age": "forty"}]})
        missing = await client.call_tool("propensity", {"age": 41})
        unexpected = await client.call_tool("propensity", {**CUSTOMERS[0], "income": 52000})
        # A JSON integer, but not one the model's int64 column can hold.
        overflow = await client.call_tool("propensity", {**CUSTOMERS[0], "age": 2**70})
        with pytest.raises(MCPError, match="Unknown tool: no-such-model"):
            await client.call_tool("no-such-model", {})
    assert wrong_type.is_error and "records[0].age: 'forty' is not of type 'integer'" in text_of(wrong_type)
    assert missing.is_error and "missing column(s)" in text_of(missing) and "'is_member'" in text_of(missing)
    assert unexpected.is_error and "'income' was unexpected" in text_of(unexpected)
    assert overflow.is_error and f"age: {2**70} is greater than the maximum" in text_of(overflow)


async def test_rate_limits_and_model_errors_are_tool_errors(deployment: Deployment) -> None:
    async with mcp(deployment, "limited") as client:
        limited = await client.call_tool("propensity", CUSTOMERS[0])
    assert limited.is_error and "429" in text_of(limited) and "REQUEST_LIMIT_EXCEEDED" in text_of(limited)

    async with mcp(deployment, "analyst") as client:
        refused = await client.call_tool("picky", {"x": -1.0})  # the model raises (after a cold start)
        doubled = await client.call_tool("picky", {"records": [{"x": 1.5}, {"x": 2.0}]})
    assert refused.is_error
    assert text_of(refused) == ("The endpoint 'picky' answered 400: BAD_REQUEST: "
                                "the model rejected the input: x must not be negative")
    assert doubled.structured_content == {"predictions": [3.0, 4.0]}


async def test_only_the_allowed_host_names_are_answered(deployment: Deployment) -> None:
    # Behind a proxy that keeps the public name in Host.
    async with mcp(deployment, "analyst", headers={"Host": PUBLIC_HOST}) as client:
        assert "propensity" in {tool.name for tool in (await client.list_tools()).tools}

    port = deployment.url.rsplit(":", 1)[1]
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}
    base = {"Authorization": f"Bearer {deployment.tokens['analyst']}",
            "Accept": "application/json, text/event-stream"}

    async with httpx.AsyncClient(base_url=deployment.url, timeout=30) as http:

        async def post(**headers: str) -> int:
            return (await http.post("/mcp", json=initialize, headers={**base, **headers})).status_code

        assert await post() == 200
        assert await post(Host=f"rebound.attacker.example:{port}") == 421
        assert await post(Host=f"localhost:{port}") == 421  # not among the configured names
        assert await post(Origin="http://rebound.attacker.example") == 403
        assert await post(Origin=f"https://{PUBLIC_HOST}", Host=PUBLIC_HOST) == 200
        # The SDK's bare-text refusals come in the gateway's error shape (found by schemathesis).
        rebound = await http.post("/mcp", json=initialize, headers={**base, "Host": "rebound.example"})
        assert rebound.headers["content-type"] == "application/json"
        assert rebound.json()["error_code"] == "BAD_REQUEST" and "host" in rebound.json()["message"].lower()
        untyped = await http.post("/mcp", content=b"{}", headers=base)
        assert untyped.status_code == 400 and "Content-Type" in untyped.json()["message"], untyped.text
        anonymous = await http.post("/mcp", json=initialize)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
