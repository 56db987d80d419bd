"""The tool catalog over a real endpoint store and real model directories (read in place)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from router.api.models import EndpointConfig, Route, ServedEntity
from router.mcp.signature import ModelSignature
from router.mcp.signatures import SignatureCache, load_from_store
from router.mcp.tools import ToolCatalog, endpoint_of_tool, primary_entity, tool_name
from router.state.db import SqliteDatabase
from router.state.endpoints import EndpointStore

NO_FRONT_DOOR: dict[str, object] = {}  # a scope without the front door: every endpoint is visible


def write_model(directory: Path, columns: dict[str, str]) -> Path:
    directory.mkdir(parents=True)
    inputs = json.dumps([{"type": kind, "name": name, "required": True} for name, kind in columns.items()])
    (directory / "MLmodel").write_text(
        f"flavors:\n  python_function: {{}}\nsignature:\n  inputs: '{inputs}'\n")
    return directory


def entity(name: str, model: Path, *, scale_to_zero: bool = False) -> ServedEntity:
    return ServedEntity(
        name=name, entity_name=f"file://{model}", entity_version=None, model_uri=f"file://{model}",
        workload_size="Small", workload_type="CPU", scale_to_zero_enabled=scale_to_zero,
        min_provisioned_concurrency=0, max_provisioned_concurrency=None, environment_vars={}, autoscaling={},
    )


def config(*routes: tuple[ServedEntity, int]) -> EndpointConfig:
    return EndpointConfig(served_entities=[served for served, _ in routes],
                          routes=[Route(served_entity_name=served.name, traffic_percentage=share)
                                  for served, share in routes])


@pytest.fixture
def store(tmp_path: Path) -> EndpointStore:
    return EndpointStore(SqliteDatabase(tmp_path / "state.db"))


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    return {
        "churn-v1": write_model(tmp_path / "churn-v1", {"tenure": "long"}),
        "churn-v2": write_model(tmp_path / "churn-v2", {"tenure": "long", "plan": "string"}),
    }


def deploy(store: EndpointStore, name: str, endpoint_config: EndpointConfig, **fields: object) -> None:
    store.create(name, endpoint_config, **fields)  # type: ignore[arg-type]
    store.finish_update(name, 1)


async def test_one_tool_per_endpoint_with_an_active_config(
    store: EndpointStore, models: dict[str, Path]
) -> None:
    deploy(store, "churn", config((entity("churn-1", models["churn-v1"], scale_to_zero=True), 100)),
           description="Who is about to leave.", tags={"team": "retention", "tier": None})
    store.create("starting", config((entity("s-1", models["churn-v1"]), 100)))  # no active config yet
    catalog = ToolCatalog(store, SignatureCache())
    [tool] = await catalog.tools_for(NO_FRONT_DOOR)
    assert (tool.name, tool.endpoint, tool.final) == ("churn", "churn", True)
    assert tool.schema.form == "row_or_records" and tool.schema.fields == ("tenure",)
    assert tool.description.splitlines() == [
        "Query the model serving endpoint 'churn'.",
        "Who is about to leave.",
        f"Served model: file://{models['churn-v1']} (served entity 'churn-1').",
        "Tags: team=retention, tier.",
        "Input: one row as the columns tenure; or several rows as 'records' (a list of rows).",
        'Returns {"predictions": [...]}, one prediction per input row.',
        "Scales to zero when idle: a call after a quiet period waits while the model starts.",
    ]


async def test_the_schema_follows_the_largest_traffic_share_and_the_config_version(
    store: EndpointStore, models: dict[str, Path]
) -> None:
    v1, v2 = entity("churn-1", models["churn-v1"]), entity("churn-2", models["churn-v2"])
    deploy(store, "churn", config((v1, 20), (v2, 80)))
    record = store.get("churn")
    assert primary_entity(record) == v2
    catalog = ToolCatalog(store, SignatureCache())
    tool = await catalog.tool(record)
    assert tool is not None and tool.schema.fields == ("tenure", "plan")
    assert "Traffic is split: churn-1 20%, churn-2 80%." in tool.description

    store.submit_config("churn", config((v1, 100)))
    record = store.finish_update("churn", 2)
    tool = await catalog.tool(record)
    assert tool is not None and tool.schema.fields == ("tenure",)


async def test_a_signature_still_loading_lists_the_generic_schema_until_it_arrives(
    store: EndpointStore, models: dict[str, Path]
) -> None:
    deploy(store, "churn", config((entity("churn-1", models["churn-v1"]), 100)))
    gate = asyncio.Event()

    async def slow_store(model_uri: str) -> ModelSignature:
        await gate.wait()
        return await load_from_store(model_uri)

    catalog = ToolCatalog(store, SignatureCache(slow_store, budget_s=0.01))
    [pending] = await catalog.tools_for(NO_FRONT_DOOR)
    assert not pending.final and pending.schema.form == "scoring"
    assert "signature is still being read" in pending.description
    gate.set()
    tool = await catalog.tool(store.get("churn"), budget_s=5.0)
    assert tool is not None and tool.final and tool.schema.form == "row_or_records"
    await catalog.signatures.aclose()


@pytest.mark.parametrize(("endpoint", "tool"), [
    ("churn", "churn"), ("list_endpoints", "query_list_endpoints"),
    ("get_endpoint_status", "query_get_endpoint_status"), ("query_x", "query_x"),
])
def test_endpoints_named_like_a_builtin_tool_get_a_prefix(endpoint: str, tool: str) -> None:
    assert tool_name(endpoint) == tool
    assert endpoint_of_tool(tool) == endpoint
