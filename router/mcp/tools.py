"""The tools a caller sees: one per serving endpoint they may query, plus two that describe endpoints.

An endpoint's tool takes its schema from the signature of the served entity with the largest traffic
share in the endpoint's active config (entities behind one endpoint serve the same task, and a split
normally compares versions of one model). Schemas are cached per endpoint and config version; the
description is rebuilt on every listing, as tags and descriptions change without a new config.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.api.models import ServedEntity
from router.auth import PermissionLevel, filter_visible
from router.auth.directory import endpoint_ref
from router.mcp.arguments import ArgumentChecker
from router.mcp.schema import RECORDS, ToolSchema, tool_schema
from router.mcp.signature import UNKNOWN, ModelSignature
from router.mcp.signatures import SignatureCache
from router.state.endpoints import EndpointRecord, EndpointStore

LIST_ENDPOINTS = "list_endpoints"
GET_ENDPOINT_STATUS = "get_endpoint_status"
BUILTIN_TOOLS = (LIST_ENDPOINTS, GET_ENDPOINT_STATUS)
# An endpoint named like a built-in tool gets this prefix on its tool's name.
QUERY_PREFIX = "query_"
MAX_CACHED_SCHEMAS = 1024
# A call waits this long for the signature (a listing waits the cache's shorter budget).
CALL_SIGNATURE_BUDGET_S = 120.0


def tool_name(endpoint: str) -> str:
    return QUERY_PREFIX + endpoint if endpoint in BUILTIN_TOOLS else endpoint


def endpoint_of_tool(name: str) -> str:
    if name.startswith(QUERY_PREFIX) and name[len(QUERY_PREFIX):] in BUILTIN_TOOLS:
        return name[len(QUERY_PREFIX):]
    return name


@dataclass(frozen=True, slots=True)
class EndpointTool:
    name: str
    endpoint: str
    description: str
    schema: ToolSchema
    checker: ArgumentChecker
    # False while the signature is still being fetched (the generic schema stands in for it).
    final: bool = True


def primary_entity(record: EndpointRecord) -> ServedEntity | None:
    """The served entity with the largest traffic share of the active config."""
    if record.config is None:
        return None
    config = record.config.config
    if not config.served_entities:
        return None
    return max(config.served_entities, key=lambda entity: config.traffic(entity.name))


class ToolCatalog:
    def __init__(self, store: EndpointStore, signatures: SignatureCache) -> None:
        self.store = store
        self.signatures = signatures
        self._schemas: OrderedDict[tuple[str, int], tuple[ToolSchema, ArgumentChecker]] = OrderedDict()
        self._generic: tuple[ToolSchema, ArgumentChecker] | None = None

    def queryable(self, conn: Mapping[str, Any]) -> list[EndpointRecord]:
        """The endpoints with an active config that the caller holds ``CAN_QUERY`` on."""
        records = [record for record in self.store.list_all() if record.config is not None]
        return filter_visible(conn, records, endpoint_ref, PermissionLevel.CAN_QUERY)

    async def tools_for(self, conn: Mapping[str, Any]) -> list[EndpointTool]:
        tools = await asyncio.gather(*(self.tool(record) for record in self.queryable(conn)))
        return [tool for tool in tools if tool is not None]

    async def tool(self, record: EndpointRecord, *, budget_s: float | None = None) -> EndpointTool | None:
        entity = primary_entity(record)
        if entity is None or record.config is None:
            return None
        key = (record.name, record.config.version)
        cached = self._schemas.get(key)
        final = True
        if cached is None:
            signature = await self._signature(key, entity.model_uri, budget_s)
            final = signature is not None
            cached = self._compile(signature) if signature is not None else self._generic_schema()
            if final:
                self._schemas[key] = cached
                while len(self._schemas) > MAX_CACHED_SCHEMAS:
                    self._schemas.popitem(last=False)
        else:
            self._schemas.move_to_end(key)
        schema, checker = cached
        return EndpointTool(tool_name(record.name), record.name, describe(record, entity, schema, final),
                            schema, checker, final)

    async def _signature(
        self, key: tuple[str, int], model_uri: str, budget_s: float | None
    ) -> ModelSignature | None:
        return await self.signatures.get(key, model_uri, budget_s=budget_s)

    @staticmethod
    def _compile(signature: ModelSignature) -> tuple[ToolSchema, ArgumentChecker]:
        schema = tool_schema(signature)
        return schema, ArgumentChecker(schema)

    def _generic_schema(self) -> tuple[ToolSchema, ArgumentChecker]:
        if self._generic is None:
            self._generic = self._compile(UNKNOWN)
        return self._generic


def describe(record: EndpointRecord, entity: ServedEntity, schema: ToolSchema, final: bool = True) -> str:
    """What an agent reads to decide whether and how to call the endpoint's tool."""
    lines = [f"Query the model serving endpoint '{record.name}'."]
    if record.description:
        lines.append(record.description.strip())
    version = f" version {entity.entity_version}" if entity.entity_version else ""
    lines.append(f"Served model: {entity.entity_name}{version} (served entity '{entity.name}').")
    assert record.config is not None
    config = record.config.config
    split = [(route.served_entity_name, route.traffic_percentage) for route in config.routes
             if route.traffic_percentage]
    if len(split) > 1:
        lines.append("Traffic is split: " + ", ".join(f"{name} {share}%" for name, share in split) + ".")
    if record.tags:
        lines.append("Tags: " + ", ".join(key if value is None else f"{key}={value}"
                                          for key, value in sorted(record.tags.items())) + ".")
    lines.append(_input_hint(schema, final))
    lines.append('Returns {"predictions": [...]}, one prediction per input row.')
    routed = {name for name, _ in split}
    if any(e.scale_to_zero_enabled for e in config.served_entities if e.name in routed):
        lines.append("Scales to zero when idle: a call after a quiet period waits while the model starts.")
    return "\n".join(lines)


def _input_hint(schema: ToolSchema, final: bool) -> str:
    columns = ", ".join(schema.fields)
    if schema.form == "row_or_records":
        return f"Input: one row as the columns {columns}; or several rows as '{RECORDS}' (a list of rows)."
    if schema.form == "records":
        return f"Input: '{RECORDS}', a list of rows with the columns {columns}."
    if schema.form == "tensors":
        return f"Input: the tensors {columns} as nested arrays (the first dimension is the batch)."
    if schema.form == "tensor":
        return "Input: 'inputs', the model's input tensor as nested arrays (first dimension: the batch)."
    if not final:
        return ("Input: an MLflow scoring request (the model's signature is still being read; list the "
                "tools again shortly for its own schema).")
    return ("Input: an MLflow scoring request (the model has no signature zeroserve could read): exactly "
            "one of dataframe_split, dataframe_records, instances or inputs.")

