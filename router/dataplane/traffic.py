"""The traffic split: which served entity of an endpoint takes a request.

A request that carries ``client_request_id`` always lands on the same entity (as long as the routes do
not change), so a client retrying a request sees the same model version; other requests draw at random.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import orjson

from autoscaler.types import EntityKey
from router.dataplane.routing import EndpointEntry, Route
from runtime.errors import InvalidParameterValue, NoCapacity

_CLIENT_REQUEST_ID = b'"client_request_id"'
_USAGE_CONTEXT = b'"usage_context"'


def bucket_of(client_request_id: str) -> int:
    """A stable bucket in [0, 100) for a request id (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(client_request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100


def choose_entity(
    entry: EndpointEntry,
    client_request_id: str | None = None,
    draw: Callable[[], float] = random.random,
) -> EntityKey:
    """The served entity for one request of ``entry``; ``draw`` returns a float in [0, 1)."""
    cumulative = entry.cumulative
    if not cumulative:
        raise NoCapacity(f"Endpoint '{entry.name}' has no served entity receiving traffic.")
    if len(cumulative) == 1:
        return cumulative[0][1]
    point = bucket_of(client_request_id) if client_request_id is not None else int(draw() * 100)
    for bound, entity in cumulative:
        if point < bound:
            return entity
    return cumulative[-1][1]  # draw() == 1.0 from a custom source; the last route takes it


def shadow_targets(entry: EndpointEntry, draw: Callable[[], float] = random.random) -> list[EntityKey]:
    """The shadow entities that get a mirrored copy of this request (each by its own percentage)."""
    if not entry.shadows:
        return []
    return [route.entity for route in entry.shadows if _takes(route, draw)]


def _takes(route: Route, draw: Callable[[], float]) -> bool:
    return draw() * 100 < route.percent


def peek_client_request_id(body: bytes) -> tuple[str | None, bytes]:
    """Find ``client_request_id`` in a JSON body and return it with the body stripped of it.

    ``usage_context`` is stripped too: like the request id it is metadata for the gateway (the inference
    tables keep both, from the body as the client sent it), not input for the model.

    The hot path pays one substring search per key; only bodies that mention one are parsed (and then
    re-serialized without it, because the model's scoring protocol does not accept extra keys).
    """
    if _CLIENT_REQUEST_ID not in body and _USAGE_CONTEXT not in body:
        return None, body
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, body  # not JSON (CSV, binary): the replica reports the problem itself
    if not isinstance(document, dict) or not ("client_request_id" in document or "usage_context" in document):
        return None, body
    usage_context = document.pop("usage_context", None)
    if usage_context is not None and not isinstance(usage_context, dict):
        raise InvalidParameterValue(f"usage_context must be an object, got {type(usage_context).__name__}")
    value = document.pop("client_request_id", None)
    if value is not None and not isinstance(value, str):
        raise InvalidParameterValue(f"client_request_id must be a string, got {type(value).__name__}")
    return value, orjson.dumps(document)
