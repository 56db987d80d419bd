"""Per-endpoint checks for routes whose handlers do not make them themselves (the data plane's).

The data-plane handlers are raw ASGI callables on the hot path; rather than each of them asking, this
middleware matches the request against ``GuardRule``s and, before the handler reads a byte of the body,
requires the rule's permission level on the endpoint named in the path and, for queries, charges the
endpoint's rate limits. A refused query is therefore never queued.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from router.auth._respond import send_error
from router.auth.types import PRINCIPAL_SCOPE_KEY, PermissionLevel
from router.dataplane.routes import DATAPLANE_ROUTES
from runtime.errors import ZeroserveError

if TYPE_CHECKING:
    from router.auth.frontdoor import FrontDoor


@dataclass(frozen=True)
class GuardRule:
    path: str  # a Starlette path template naming the endpoint as {name}
    methods: frozenset[str]
    level: PermissionLevel
    query: bool = False  # charge the rate limits
    regex: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if "{name}" not in self.path:
            raise ValueError(f"guard rule {self.path!r} must name the endpoint as {{name}}")
        object.__setattr__(self, "regex", compile_path(self.path)[0])


# From the data plane's one route table: each route that names an endpoint, with its level; queries
# are also charged the rate limits.
DATAPLANE_RULES = tuple(GuardRule(route.path, frozenset({route.method}), route.level, route.query)
                        for route in DATAPLANE_ROUTES if route.level is not None)


class EndpointGuard:
    def __init__(self, app: ASGIApp, *, front_door: FrontDoor, rules: Iterable[GuardRule] = DATAPLANE_RULES):
        self.app = app
        self.front_door = front_door
        self.rules = tuple(rules)
        # Cheap pre-filter: most requests (control plane, health) match no rule's first path segment.
        self._prefixes = tuple({"/" + rule.path.split("/")[1] + "/" for rule in self.rules})

    def match(self, method: str, path: str) -> tuple[GuardRule, str] | None:
        if not path.startswith(self._prefixes):
            return None
        for rule in self.rules:
            if method in rule.methods:
                found = rule.regex.match(path)
                if found is not None:
                    return rule, found.group("name")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            matched = self.match(scope["method"], scope["path"])
            if matched is not None:
                rule, name = matched
                principal = scope.get(PRINCIPAL_SCOPE_KEY)
                try:
                    if rule.query:
                        self.front_door.admit_query(principal, name)
                    else:
                        self.front_door.authorizer.authorize(principal, name, rule.level)
                except ZeroserveError as error:
                    await send_error(send, error, path=scope["path"])
                    return
        await self.app(scope, receive, send)
