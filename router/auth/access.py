"""What handlers call: who is calling, may they do this, and (for queries) do they fit the rate limits.

Every function takes the request (a Starlette ``Request`` is a mapping over its scope) or the raw ASGI
scope, and reads what the front door's middleware put there. Without a front door in the scope (a
component tested on its own) or with ``--insecure-no-auth`` (principal None), everything is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from router.auth.types import (
    FRONT_DOOR_SCOPE_KEY,
    PRINCIPAL_SCOPE_KEY,
    EndpointRef,
    PermissionLevel,
    Principal,
)
from router.errors import PermissionDenied

if TYPE_CHECKING:
    from router.auth.frontdoor import FrontDoor
    from router.state.endpoints import EndpointRecord

T = TypeVar("T")
Connection = Mapping[str, Any]


def principal_of(conn: Connection) -> Principal | None:
    principal: Principal | None = conn.get(PRINCIPAL_SCOPE_KEY)
    return principal


def front_door_of(conn: Connection) -> FrontDoor | None:
    front_door: FrontDoor | None = conn.get(FRONT_DOOR_SCOPE_KEY)
    return front_door


def authorize(conn: Connection, endpoint: str, required: PermissionLevel) -> EndpointRef | None:
    """Raise 404 (may not see it) or 403 (may see, not do) unless the caller holds ``required`` on the
    endpoint named (by name or id)."""
    front_door = front_door_of(conn)
    if front_door is None:
        return None
    return front_door.authorizer.authorize(principal_of(conn), endpoint, required)


def admit_query(conn: Connection, endpoint: str) -> EndpointRef | None:
    """``CAN_QUERY`` plus the endpoint's rate limits (429 with Retry-After); call before any queueing."""
    front_door = front_door_of(conn)
    if front_door is None:
        return None
    return front_door.admit_query(principal_of(conn), endpoint)


def require_admin(conn: Connection) -> None:
    principal = principal_of(conn)
    if front_door_of(conn) is not None and principal is not None and not principal.is_admin:
        raise PermissionDenied(f"Principal {principal.name!r} is not an admin; this needs an admin token.")


def filter_visible(
    conn: Connection,
    items: Iterable[T],
    ref_of: Callable[[T], EndpointRef],
    min_level: PermissionLevel = PermissionLevel.CAN_VIEW,
) -> list[T]:
    """The items (endpoints, MCP tools) on whose endpoint the caller holds ``min_level``, in order."""
    front_door = front_door_of(conn)
    if front_door is None:
        return list(items)
    return front_door.authorizer.filter_visible(principal_of(conn), items, ref_of, min_level)


class FrontDoorAccess:
    """The control plane's ``Access`` protocol (``router.api.handlers``) over the front door."""

    def __init__(self, front_door: FrontDoor) -> None:
        self.front_door = front_door

    def check(self, principal: Any, endpoint: str, level: str) -> None:
        self.front_door.authorizer.authorize(principal, endpoint, PermissionLevel(level))

    def visible(self, principal: Any, records: list[EndpointRecord]) -> list[EndpointRecord]:
        from router.auth.directory import endpoint_ref

        return self.front_door.authorizer.filter_visible(principal, records, endpoint_ref)
