"""The MCP server of the gateway, on the official ``mcp`` SDK: handlers and the Streamable HTTP transport.

The transport is stateless with JSON replies: every POST to ``/mcp`` stands alone (an ``initialize``
handshake included), so any gateway replica behind a load balancer can answer any request, and no
session outlives its request. Every request is authenticated by the gateway's front door before it
gets here; the handlers read the caller from the HTTP request's scope (``ctx.request``), so the tool
list and every call are decided by that caller's permissions.

Importing this module loads the SDK (about a second); ``router.mcp.mount`` imports it on the first
request to ``/mcp``, so a gateway that never serves MCP never pays for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
    ToolAnnotations,
)
from starlette.requests import Request
from starlette.types import ASGIApp

from router.api.views import StateOf
from router.auth import PermissionLevel, authorize
from router.errors import PermissionDenied
from router.mcp.arguments import InvalidArguments
from router.mcp.dispatch import InternalResponse, dispatch
from router.mcp.hosts import HostPolicy
from router.mcp.schema import request_body
from router.mcp.status import (
    LIST_DESCRIPTION,
    LIST_INPUT_SCHEMA,
    LIST_OUTPUT_SCHEMA,
    STATUS_DESCRIPTION,
    STATUS_INPUT_SCHEMA,
    STATUS_OUTPUT_SCHEMA,
    endpoint_status,
    list_endpoints,
)
from router.mcp.tools import (
    CALL_SIGNATURE_BUDGET_S,
    GET_ENDPOINT_STATUS,
    LIST_ENDPOINTS,
    EndpointTool,
    ToolCatalog,
    endpoint_of_tool,
)
from router.state.endpoints import EndpointStore
from runtime.errors import NotFound, ZeroserveError

log = logging.getLogger("zeroserve.mcp")

INSTRUCTIONS = (
    "zeroserve serves machine-learning models. Each tool other than list_endpoints and "
    "get_endpoint_status queries one model serving endpoint and returns its predictions; its input "
    "schema is the model's signature. Send several rows in one call rather than one call per row. "
    "An endpoint that scaled to zero answers its first call after a cold start (seconds to a minute)."
)
_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                             open_world_hint=False)


def transport_security(policy: HostPolicy) -> TransportSecuritySettings:
    return TransportSecuritySettings(enable_dns_rebinding_protection=policy.check,
                                     allowed_hosts=list(policy.hosts), allowed_origins=list(policy.origins))


class McpService:
    """The SDK server and its session manager; ``manager.handle_request`` is the ASGI app of ``/mcp``."""

    def __init__(
        self,
        *,
        store: EndpointStore,
        state_of: StateOf,
        catalog: ToolCatalog,
        gateway_app: Callable[[], ASGIApp],
        hosts: HostPolicy,
        max_body_bytes: int,
        version: str,
    ) -> None:
        self.store = store
        self.state_of = state_of
        self.catalog = catalog
        self.gateway_app = gateway_app
        self.server: Server[Any] = Server(
            "zeroserve",
            version=version,
            title="zeroserve model serving",
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            # Only consulted for Mcp-Param-* headers, which zeroserve's schemas do not declare; without
            # this the SDK would run the whole tools/list handler before each call to find out.
            get_tool_input_schema=lambda name: None,
        )
        self.manager = StreamableHTTPSessionManager(
            self.server,
            json_response=True,
            stateless=True,
            security_settings=transport_security(hosts),
            max_request_body_size=max_body_bytes,
        )

    # ---- handlers ------------------------------------------------------------------------------

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        conn = _connection(ctx)
        tools = [
            Tool(name=LIST_ENDPOINTS, title="List serving endpoints", description=LIST_DESCRIPTION,
                 input_schema=LIST_INPUT_SCHEMA, output_schema=LIST_OUTPUT_SCHEMA, annotations=_READ_ONLY),
            Tool(name=GET_ENDPOINT_STATUS, title="Serving endpoint status", description=STATUS_DESCRIPTION,
                 input_schema=STATUS_INPUT_SCHEMA, output_schema=STATUS_OUTPUT_SCHEMA,
                 annotations=_READ_ONLY),
        ]
        tools += [_as_tool(tool) for tool in await self.catalog.tools_for(conn)]
        return ListToolsResult(tools=tools)

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: CallToolRequestParams
    ) -> CallToolResult:
        conn = _connection(ctx)
        arguments = params.arguments or {}
        if params.name == LIST_ENDPOINTS:
            if arguments:
                return _error(f"list_endpoints takes no arguments, got {sorted(arguments)}")
            return _structured(list_endpoints(conn, self.store, self.state_of))
        if params.name == GET_ENDPOINT_STATUS:
            name = arguments.get("name")
            if not isinstance(name, str) or not name or set(arguments) != {"name"}:
                return _error("arguments do not match the tool's input schema: give exactly 'name', "
                              "the serving endpoint's name (a string)")
            try:
                base_url = str(Request(dict(conn)).base_url).rstrip("/")
                return _structured(endpoint_status(conn, self.store, self.state_of, name, base_url))
            except ZeroserveError as exc:
                return _error(exc.message)
        return await self._query(conn, params.name, arguments)

    async def _query(self, conn: Mapping[str, Any], name: str, arguments: dict[str, Any]) -> CallToolResult:
        endpoint = endpoint_of_tool(name)
        try:
            authorize(conn, endpoint, PermissionLevel.CAN_QUERY)
        except NotFound:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {name}") from None
        except PermissionDenied as exc:
            return _error(exc.message)
        record = self.store.find(endpoint)
        tool = await self.catalog.tool(record, budget_s=CALL_SIGNATURE_BUDGET_S) if record else None
        if tool is None:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {name} (the endpoint has no active config)")
        try:
            checked = tool.checker.check(arguments)
        except InvalidArguments as exc:
            return _error(exc.message)
        body = _dumps(request_body(tool.schema, checked))
        path = f"/serving-endpoints/{endpoint}/invocations"
        response = await dispatch(self.gateway_app(), conn, "POST", path, body)
        return _query_result(tool, response)


def _connection(ctx: ServerRequestContext[Any]) -> Mapping[str, Any]:
    """The HTTP request's ASGI scope: the caller (``zeroserve.principal``) and the front door."""
    request = ctx.request
    if not isinstance(request, Request):
        # Only the HTTP transport is mounted; without a request there is no caller to decide for.
        raise MCPError(INVALID_PARAMS, "zeroserve's MCP server answers over Streamable HTTP only")
    return request.scope


def _as_tool(tool: EndpointTool) -> Tool:
    return Tool(name=tool.name, title=f"{tool.endpoint} (model serving endpoint)",
                description=tool.description, input_schema=tool.schema.input_schema,
                output_schema=tool.schema.output_schema, annotations=_READ_ONLY)


def _dumps(document: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(document)
    except TypeError:  # an integer beyond 64 bits where the schema leaves the type open
        return json.dumps(document).encode()


def _structured(document: dict[str, Any]) -> CallToolResult:
    text = orjson.dumps(document).decode()
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=document)


def _error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _query_result(tool: EndpointTool, response: InternalResponse) -> CallToolResult:
    served = response.header(b"served-model-name")
    try:
        document = response.json()
    except orjson.JSONDecodeError:
        document = None
    if response.status != 200:
        if isinstance(document, dict) and "message" in document:
            message = f"{document.get('error_code', 'ERROR')}: {document['message']}"
        else:
            message = response.body.decode("utf-8", "replace")[:2000] or "no message"
        retry = response.header(b"retry-after")
        hint = f" (retry after {retry} s)" if retry else ""
        return _error(f"The endpoint '{tool.endpoint}' answered {response.status}{hint}: {message}")
    if not isinstance(document, dict):
        return _error(f"The endpoint '{tool.endpoint}' answered with a body that is not a JSON object.")
    violation = tool.checker.output_violation(document)
    if violation is not None:
        # The client would reject structured content its output schema does not describe.
        log.warning("endpoint %s answered outside its output signature: %s", tool.endpoint, violation)
        answer = response.body.decode("utf-8", "replace")[:4000]
        return _error(f"The model behind '{tool.endpoint}' answered outside its declared output "
                      f"signature ({violation}). Its answer: {answer}")
    result = _structured(document)
    if served:
        result.meta = {"zeroserve/served-model-name": served}
    return result

