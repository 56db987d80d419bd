"""OpenAPI documents: one for the whole gateway (``/openapi.json``), one per endpoint (``.../openapi``).

The gateway document is generated from the routes actually mounted, so a new route is described the
moment it exists; request bodies of the control plane come from their pydantic models.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from starlette.routing import BaseRoute, Host, Mount, Route, WebSocketRoute

from router.api.models import CreateEndpointInput, EndpointCoreConfigInput, PatchTagsInput
from router.state.endpoints import EndpointRecord

_SERVING = "/api/2.0/serving-endpoints"
REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", _SERVING): CreateEndpointInput,
    ("put", _SERVING + "/{name}/config"): EndpointCoreConfigInput,
    ("patch", _SERVING + "/{name}/tags"): PatchTagsInput,
}

_ERROR = {
    "type": "object",
    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
    "required": ["error_code", "message"],
}


def gateway_openapi(routes: Iterable[BaseRoute], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": _ERROR}
    for path, method, endpoint in _walk(routes, ""):
        operation: dict[str, Any] = {
            "summary": _summary(endpoint),
            "responses": {
                "200": {"description": "OK"},
                "default": {
                    "description": "Error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
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


def _summary(endpoint: Any) -> str:
    doc = inspect.getdoc(endpoint) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip() or getattr(endpoint, "__name__", "")


def _openapi_path(path: str) -> str:
    # Starlette converters ("{path:path}") are not OpenAPI syntax.
    return "/".join(
        "{" + part[1:-1].split(":")[0] + "}" if part.startswith("{") else part for part in path.split("/")
    )


_DATAFRAME_RECORDS = {"type": "array", "items": {"type": "object"}}
_DATAFRAME_SPLIT = {
    "type": "object",
    "properties": {
        "columns": {"type": "array", "items": {"type": "string"}},
        "data": {"type": "array", "items": {"type": "array"}},
        "index": {"type": "array"},
    },
    "required": ["data"],
}


def endpoint_openapi(record: EndpointRecord, base_url: str) -> dict[str, Any]:
    """How to query one endpoint: the MLflow scoring protocol at its invocations URL."""
    active = record.config or record.pending
    served = [e.name for e in active.config.served_entities] if active is not None else []
    one_of = [
        {"type": "object", "properties": {"dataframe_split": _DATAFRAME_SPLIT},
         "required": ["dataframe_split"]},
        {"type": "object", "properties": {"dataframe_records": _DATAFRAME_RECORDS},
         "required": ["dataframe_records"]},
        {"type": "object", "properties": {"instances": {"type": "array"}}, "required": ["instances"]},
        {"type": "object", "properties": {"inputs": {}}, "required": ["inputs"]},
    ]
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
                        "content": {
                            "application/json": {"schema": {"oneOf": one_of}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
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
