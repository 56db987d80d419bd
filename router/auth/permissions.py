"""Who may do what to which endpoint: per-endpoint access control lists and the one decision function.

An ACL entry grants a level (``CAN_VIEW`` < ``CAN_QUERY`` < ``CAN_MANAGE``) to a user, a service
principal or a group; a principal's level on an endpoint is the highest of its entries, its groups'
entries, and ``CAN_MANAGE`` if it created the endpoint. Admins hold every level everywhere.

``Authorizer.authorize`` answers 404 when the caller may not even see the endpoint — the same answer as
for an endpoint that does not exist, so names cannot be probed — and 403 when it may see it but not
do what it asked. ACLs are keyed by endpoint id, so a new endpoint reusing a deleted one's name starts
with no grants.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from router.auth.types import EndpointDirectory, EndpointRef, PermissionLevel, Principal
from router.errors import EndpointNotFound, PermissionDenied
from router.state.db import Database, DatabaseUnavailable
from runtime.errors import InvalidParameterValue, NotFound

T = TypeVar("T")

# The Databricks ACL field for each kind of grantee, in the order responses list them.
GRANTEE_FIELDS = ("user_name", "service_principal_name", "group_name")

MIGRATIONS = [
    """
    CREATE TABLE auth_endpoint_acl (
        endpoint_id TEXT NOT NULL,
        grantee_kind TEXT NOT NULL,
        grantee TEXT NOT NULL,
        permission_level TEXT NOT NULL,
        PRIMARY KEY (endpoint_id, grantee_kind, grantee)
    );
    """,
]


@dataclass(frozen=True, slots=True)
class AclEntry:
    grantee_kind: str  # one of GRANTEE_FIELDS
    grantee: str
    level: PermissionLevel

    def applies_to(self, principal: Principal) -> bool:
        if self.grantee_kind == "group_name":
            return principal.in_group(self.grantee)
        # Tokens name one principal; whether it is a person or a service is the issuer's business.
        return principal.name == self.grantee

    def to_request_dict(self) -> dict[str, str]:
        return {self.grantee_kind: self.grantee, "permission_level": self.level.value}


def parse_access_control_list(body: Any) -> list[AclEntry]:
    """The entries of a PUT/PATCH body, validated; 400 naming the first problem otherwise."""
    if not isinstance(body, dict):
        raise InvalidParameterValue("request body must be a JSON object with 'access_control_list'")
    raw = body.get("access_control_list", [])
    if not isinstance(raw, list):
        raise InvalidParameterValue("'access_control_list' must be a list")
    entries: dict[tuple[str, str], AclEntry] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidParameterValue(f"access_control_list[{index}] must be an object")
        named = [name for name in GRANTEE_FIELDS if item.get(name) is not None]
        if len(named) != 1:
            raise InvalidParameterValue(
                f"access_control_list[{index}] must name exactly one of {', '.join(GRANTEE_FIELDS)}"
            )
        grantee = item[named[0]]
        if not isinstance(grantee, str) or not grantee.strip():
            raise InvalidParameterValue(f"access_control_list[{index}].{named[0]} must be a non-empty string")
        try:
            level = PermissionLevel.parse(item.get("permission_level"))
        except ValueError as exc:
            raise InvalidParameterValue(f"access_control_list[{index}]: {exc}") from None
        # A later entry for the same grantee wins, as a PATCH of both in turn would.
        entries[(named[0], grantee.strip())] = AclEntry(named[0], grantee.strip(), level)
    return list(entries.values())


class PermissionStore:
    """The ACLs (table ``auth_endpoint_acl``), cached per endpoint: the data plane reads them per request."""

    def __init__(
        self, db: Database, *, monotonic: Callable[[], float] = time.monotonic, cache_ttl_s: float = 5.0
    ) -> None:
        self._db = db
        self._monotonic = monotonic
        self._cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, tuple[AclEntry, ...]]] = {}
        db.migrate("auth_permissions", MIGRATIONS)

    def entries(self, endpoint_id: str) -> tuple[AclEntry, ...]:
        now = self._monotonic()
        cached = self._cache.get(endpoint_id)
        if cached is not None and now - cached[0] < self._cache_ttl_s:
            return cached[1]
        try:
            rows = self._db.query(
                "SELECT grantee_kind, grantee, permission_level FROM auth_endpoint_acl WHERE endpoint_id = ?"
                " ORDER BY grantee_kind, grantee",
                (endpoint_id,),
            )
        except DatabaseUnavailable:
            if cached is not None:
                return cached[1]  # the database is down: the grants it last said still hold
            raise
        entries = tuple(AclEntry(row[0], row[1], PermissionLevel(row[2])) for row in rows)
        self._cache[endpoint_id] = (now, entries)
        return entries

    def invalidate(self) -> None:
        """Every cached grant list is stale: read again on next use, kept for when the database is down."""
        self._cache = {key: (-math.inf, entries) for key, (_, entries) in self._cache.items()}

    def replace(self, endpoint_id: str, entries: Sequence[AclEntry]) -> None:
        """PUT: the endpoint's direct grants become exactly ``entries``."""
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM auth_endpoint_acl WHERE endpoint_id = ?", (endpoint_id,))
            self._insert(conn, endpoint_id, entries)
        self._cache.pop(endpoint_id, None)

    def update(self, endpoint_id: str, entries: Sequence[AclEntry]) -> None:
        """PATCH: grant or change the level of each grantee named; others keep theirs."""
        with self._db.transaction() as conn:
            self._insert(conn, endpoint_id, entries)
        self._cache.pop(endpoint_id, None)

    def forget(self, endpoint_id: str) -> None:
        """Drop every grant on an endpoint (call when the endpoint is deleted)."""
        self.replace(endpoint_id, ())

    @staticmethod
    def _insert(conn: Any, endpoint_id: str, entries: Sequence[AclEntry]) -> None:
        conn.executemany(
            "INSERT INTO auth_endpoint_acl(endpoint_id, grantee_kind, grantee, permission_level)"
            " VALUES (?, ?, ?, ?) ON CONFLICT(endpoint_id, grantee_kind, grantee)"
            " DO UPDATE SET permission_level = excluded.permission_level",
            [(endpoint_id, entry.grantee_kind, entry.grantee, entry.level.value) for entry in entries],
        )


class Authorizer:
    """The one place that decides access to endpoints (control plane, data plane, v2 and MCP alike)."""

    def __init__(self, permissions: PermissionStore, directory: EndpointDirectory) -> None:
        self.permissions = permissions
        self.directory = directory

    def level(self, principal: Principal, endpoint: EndpointRef) -> PermissionLevel | None:
        """The highest level ``principal`` holds on ``endpoint``; None when it may not see it."""
        if principal.is_admin or (endpoint.creator is not None and endpoint.creator == principal.name):
            return PermissionLevel.CAN_MANAGE
        best: PermissionLevel | None = None
        for entry in self.permissions.entries(endpoint.id):
            if entry.applies_to(principal) and (best is None or entry.level.rank > best.rank):
                best = entry.level
        return best

    def authorize(
        self, principal: Principal | None, endpoint: str, required: PermissionLevel
    ) -> EndpointRef | None:
        """Raise unless ``principal`` holds ``required`` on the endpoint named (by name or id).

        Returns the endpoint's ref; None only when auth is disabled (``principal is None``) and the
        endpoint does not exist, leaving the 404 to the handler.
        """
        ref = self.directory.lookup_endpoint(endpoint)
        if principal is None:
            return ref
        if ref is None:
            raise not_found(endpoint)
        held = self.level(principal, ref)
        if held is None:
            raise not_found(endpoint)
        if not held.includes(required):
            raise PermissionDenied(
                f"Principal {principal.name!r} holds {held.value} on serving endpoint {ref.name!r};"
                f" this needs {required.value}."
            )
        return ref

    def filter_visible(
        self,
        principal: Principal | None,
        items: Iterable[T],
        ref_of: Callable[[T], EndpointRef],
        min_level: PermissionLevel = PermissionLevel.CAN_VIEW,
    ) -> list[T]:
        """The items (endpoints, MCP tools, ...) on whose endpoint ``principal`` holds ``min_level``."""
        if principal is None or principal.is_admin:
            return list(items)
        kept = []
        for item in items:
            held = self.level(principal, ref_of(item))
            if held is not None and held.includes(min_level):
                kept.append(item)
        return kept


def not_found(endpoint: str) -> NotFound:
    # Identical for "missing" and "not visible": the two must be indistinguishable.
    return EndpointNotFound(endpoint)
