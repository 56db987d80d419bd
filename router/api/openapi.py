"""OpenAPI documents: one for the whole gateway (``/openapi.json``), one per endpoint (``.../openapi``).

The gateway document is generated from the routes actually mounted, so a new route is described the
moment it exists; request bodies of the control plane come from their pydantic models.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from starlette.routing import BaseRoute, Host, Mount, Route, WebSocketRoute, compile_path

from router.api.models import CreateEndpointInput, EndpointCoreConfigInput, PatchTagsInput
from router.dataplane.routes import DATAPLANE_ROUTES
from router.state.endpoints import EndpointRecord

_SERVING = "/api/2.0/serving-endpoints"
REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", _SERVING): CreateEndpointInput,
    ("put", _SERVING + "/{name}/config"): EndpointCoreConfigInput,
    ("patch", _SERVING + "/{name}/tags"): PatchTagsInput,
}

_ERROR_PROPERTIES = {"error_code": {"type": "string"}, "message": {"type": "string"}}
_ERROR = {"type": "object", "properties": _ERROR_PROPERTIES, "required": ["error_code", "message"]}
# Open Inference Protocol errors carry the message as "error" too (its clients read that field).
_V2_ERROR = {
    "type": "object",
    "properties": {**_ERROR_PROPERTIES, "error": {"type": "string"}},
    "required": ["error"],
}

# MCP answers a malformed JSON-RPC message with a JSON-RPC error, the protocol's own shape.
_JSON_RPC_ERROR = {
    "type": "object",
    "properties": {"jsonrpc": {"const": "2.0"}, "id": {}, "error": {
        "type": "object", "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
        "required": ["code", "message"]}},
    "required": ["jsonrpc", "error"],
}

_DATAFRAME_RECORDS = {"type": "array", "items": {"type": "object"}}
_DATAFRAME_SPLIT = {
    "type": "object",
    "properties": {
        "columns": {"type": "array", "items": {"type": ["string", "integer"]}},
        "data": {"type": "array", "items": {"type": "array"}},
        "index": {"type": "array"},
    },
    "required": ["data"],
}
_SCORING = {"oneOf": [
    {"type": "object", "properties": {"dataframe_split": _DATAFRAME_SPLIT}, "required": ["dataframe_split"]},
    {"type": "object", "properties": {"dataframe_records": _DATAFRAME_RECORDS},
     "required": ["dataframe_records"]},
    {"type": "object", "properties": {"instances": {"type": "array"}}, "required": ["instances"]},
    {"type": "object", "properties": {"inputs": {}}, "required": ["inputs"]},
]}
_SCORING_CONTENT = {"application/json": {"schema": _SCORING}, "text/csv": {"schema": {"type": "string"}}}
_TENSOR = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                   "datatype": {"type": "string"}, "data": {"type": "array"}},
    "required": ["name", "shape", "datatype"],
}
_V2_INFER_CONTENT = {
    "application/json": {"schema": {
        "type": "object",
        "properties": {"id": {"type": "string"}, "inputs": {"type": "array", "items": _TENSOR},
                       "outputs": {"type": "array"}, "parameters": {"type": "object"}},
        "required": ["inputs"],
    }},
    # The binary tensor extension: a JSON header of Inference-Header-Content-Length bytes, then raw data.
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}
_ACL = {"type": "object", "properties": {"access_control_list": {"type": "array", "items": {
    "type": "object",
    "properties": {"user_name": {"type": "string"}, "group_name": {"type": "string"},
                   "service_principal_name": {"type": "string"},
                   "permission_level": {"type": "string", "enum": ["CAN_VIEW", "CAN_QUERY", "CAN_MANAGE"]}},
    "required": ["permission_level"],
}}}}
_RATE_LIMITS = {"type": "object", "properties": {"rate_limits": {"type": "array", "items": {
    "type": "object",
    "properties": {"calls": {"type": "integer", "minimum": 0},
                   "key": {"type": "string", "enum": ["user", "endpoint"]},
                   "renewal_period": {"type": "string", "enum": ["minute"]}},
    "required": ["calls", "renewal_period"],
}}}}
_TOKEN = {
    "type": "object",
    "properties": {"principal": {"type": "string", "minLength": 1, "maxLength": 256},
                   "comment": {"type": "string"},
                   "lifetime_seconds": {"type": ["number", "null"], "exclusiveMinimum": 0},
                   "groups": {"type": "array", "items": {"type": "string"}}, "admin": {"type": "boolean"}},
    "required": ["principal"],
}
_QUERY_CONTENT = {"mlflow": _SCORING_CONTENT, "oip": _V2_INFER_CONTENT}
_PERMISSIONS = "/api/2.0/permissions/serving-endpoints/{endpoint_id}"
# Bodies that are not pydantic models: the data plane's protocols (from its route table) and the access
# routes' plain JSON.
PLAIN_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    **{(route.method.lower(), route.path): _QUERY_CONTENT[route.protocol]
       for route in DATAPLANE_ROUTES if route.query},
    ("put", _PERMISSIONS): {"application/json": {"schema": _ACL}},
    ("patch", _PERMISSIONS): {"application/json": {"schema": _ACL}},
    ("put", _SERVING + "/{name}/rate-limits"): {"application/json": {"schema": _RATE_LIMITS}},
    ("post", "/api/2.0/zeroserve/tokens"): {"application/json": {"schema": _TOKEN}},
    # Model Context Protocol over Streamable HTTP: one JSON-RPC message (or a batch) per POST.
    ("post", "/mcp"): {"application/json": {"schema": {"type": ["object", "array"]}}},
}


def gateway_openapi(
    routes: Iterable[BaseRoute], version: str, public_paths: Iterable[str] = ()
) -> dict[str, Any]:
    """``public_paths`` answer without a token (their operations say so with an empty ``security``)."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": _ERROR, "V2Error": _V2_ERROR, "JsonRpcError": _JSON_RPC_ERROR}
    public = frozenset(public_paths)
    oip = {route.path for route in DATAPLANE_ROUTES if route.protocol == "oip"}
    for path, method, endpoint in _walk(routes, ""):
        error: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
        if path in oip:
            error = {"$ref": "#/components/schemas/V2Error"}
        elif path == "/mcp":
            error = {"anyOf": [error, {"$ref": "#/components/schemas/JsonRpcError"}]}
        operation: dict[str, Any] = {
            "summary": _summary(endpoint),
            "responses": {
                "200": {"description": "OK"},
                "default": {"description": "Error", "content": {"application/json": {"schema": error}}},
            },
        }
        if path in public:
            operation["security"] = []
        parameters = [
            {"name": part[1:-1].split(":")[0], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in path.split("/")
            if part.startswith("{") and part.endswith("}")
        ]
        if parameters:
            operation["parameters"] = parameters
        model = REQUEST_BODIES.get((method, path))
        if model is not None:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
            ref = {"$ref": f"#/components/schemas/{model.__name__}"}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        elif (method, path) in PLAIN_BODIES:
            operation["requestBody"] = {"required": True, "content": PLAIN_BODIES[(method, path)]}
        paths.setdefault(_openapi_path(path), {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "zeroserve gateway", "version": version},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _walk(routes: Iterable[BaseRoute], prefix: str) -> Iterable[tuple[str, str, Any]]:
    for route in routes:
        if isinstance(route, Route):
            methods = sorted(m.lower() for m in (route.methods or {"GET"}) if m != "HEAD")
            for method in methods:
                yield prefix + route.path, method, route.endpoint
        elif isinstance(route, Mount | Host):
            sub = getattr(route, "routes", None) or []
            yield from _walk(sub, prefix + getattr(route, "path", ""))
        elif isinstance(route, WebSocketRoute):
            continue


def allowed_methods(routes: Iterable[BaseRoute], path: str) -> list[str]:
    """The methods some route answers at ``path`` (the ``Allow`` header of a 405), HEAD with GET."""
    methods = {method.upper() for template, method, _ in _walk(routes, "")
               if compile_path(template)[0].match(path)}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _summary(endpoint: Any) -> str:
    doc = inspect.getdoc(endpoint) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip() or getattr(endpoint, "__name__", "")


def _openapi_path(path: str) -> str:
    # Starlette converters ("{path:path}") are not OpenAPI syntax.
    return "/".join(
        "{" + part[1:-1].split(":")[0] + "}" if part.startswith("{") else part for part in path.split("/")
    )



def endpoint_openapi(record: EndpointRecord, base_url: str) -> dict[str, Any]:
    """How to query one endpoint: the MLflow scoring protocol at its invocations URL."""
    active = record.config or record.pending
    served = [e.name for e in active.config.served_entities] if active is not None else []
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"serving endpoint {record.name}",
            "version": str(record.config.version if record.config else 0),
            "description": f"Served entities: {', '.join(served) or 'none yet'}.",
        },
        "servers": [{"url": base_url}],
        "paths": {
            f"/serving-endpoints/{record.name}/invocations": {
                "post": {
                    "summary": f"Query {record.name}",
                    "requestBody": {
                        "required": True,
                        "content": _SCORING_CONTENT,
                    },
                    "responses": {
                        "200": {
                            "description": "Predictions",
                            "headers": {
                                "served-model-name": {"schema": {"type": "string", "enum": served}},
                            },
                            "content": {
                                "application/json": {
                                    "schema": {"type": "object", "properties": {"predictions": {}}},
                                }
                            },
                        },
                        "default": {
                            "description": "Error", "content": {"application/json": {"schema": _ERROR}}
                        },
                    },
                }
            }
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
