"""Types shared by the front door's parts and by the handlers that consult it.

A handler learns who is calling from ``scope["zeroserve.principal"]`` (a ``Principal``, or ``None`` when
auth is disabled for local development) and asks ``router.auth.authorize`` whether that caller may act
on an endpoint. Endpoints themselves belong to the control plane; the front door sees them only through
``EndpointDirectory``, so it never imports the control plane.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

# Keys of the ASGI scope that the front door fills in.
PRINCIPAL_SCOPE_KEY = "zeroserve.principal"
FRONT_DOOR_SCOPE_KEY = "zeroserve.front_door"

# Every authenticated principal belongs to this group, as in Databricks workspaces, so an ACL entry
# ``{"group_name": "users", "permission_level": "CAN_QUERY"}`` opens an endpoint to everyone with a token.
ALL_USERS_GROUP = "users"
ADMINS_GROUP = "admins"


class PermissionLevel(enum.Enum):
    """Per-endpoint permission levels; each includes the ones below it."""

    CAN_VIEW = "CAN_VIEW"  # read config, state, metrics, logs and permissions
    CAN_QUERY = "CAN_QUERY"  # also invoke (invocations, v2 infer, MCP tools)
    CAN_MANAGE = "CAN_MANAGE"  # also change config, rate limits, tags, permissions; delete

    @property
    def rank(self) -> int:
        return _RANKS[self._value_]

    def includes(self, other: PermissionLevel) -> bool:
        # Looked up by value: an Enum member's hash is a Python-level method, and this runs per query.
        return _RANKS[self._value_] >= _RANKS[other._value_]

    @classmethod
    def parse(cls, value: object) -> PermissionLevel:
        """The level named by ``value``; ``ValueError`` naming the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(level.value for level in cls)
            raise ValueError(f"permission_level must be one of {choices}, got {value!r}") from None


_RANKS = {"CAN_VIEW": 1, "CAN_QUERY": 2, "CAN_MANAGE": 3}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the name a token was issued to, its groups, and whether it is an admin."""

    name: str
    groups: frozenset[str] = field(default_factory=frozenset)
    is_admin: bool = False
    # The token that authenticated this call (None for ZEROSERVE_ADMIN_TOKEN, which has no row).
    token_id: str | None = None

    def in_group(self, group: str) -> bool:
        if group == ALL_USERS_GROUP:
            return True
        if group == ADMINS_GROUP:
            return self.is_admin
        return group in self.groups


RENEWAL_PERIODS_S = {"minute": 60.0}


@dataclass(frozen=True, slots=True)
class RateLimitRule:
    calls: int
    key: str = "endpoint"
    renewal_period: str = "minute"
    # ai_gateway only: the rule applies to this principal (or, for key user_group, this group) alone.
    principal: str | None = None

    @property
    def period_s(self) -> float:
        return RENEWAL_PERIODS_S[self.renewal_period]

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"calls": self.calls, "key": self.key, "renewal_period": self.renewal_period}
        if self.principal is not None:
            out["principal"] = self.principal
        return out


@dataclass(frozen=True, slots=True)
class EndpointRef:
    """What the front door needs to know about an endpoint to decide access to it."""

    id: str
    name: str
    # The creator manages the endpoint without an ACL entry, as in Databricks.
    creator: str | None = None
    # Every rate-limit rule in force on the endpoint (``rate_limits`` and ``ai_gateway.rate_limits``).
    rate_limits: tuple[RateLimitRule, ...] = ()


class EndpointDirectory(Protocol):
    """Resolves an endpoint name or id to its ``EndpointRef`` (implemented over the control plane's state)."""

    def lookup_endpoint(self, name_or_id: str) -> EndpointRef | None: ...
