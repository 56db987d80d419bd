"""Authentication at the front door: a pure ASGI middleware that turns a bearer token into a ``Principal``.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) because the latter runs the app in a separate task
and re-streams the response through memory streams: slower on the data-plane hot path and a source of
trouble with streaming responses. Here a request costs one header scan, one SHA-256 and a dict lookup.

Every route needs a token except the public probes (``/healthz``, ``/readyz``, and the v2 live/ready
probes when configured public). No or a malformed token answers 401 with ``WWW-Authenticate``; the
answer never echoes what was presented.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from router.auth._respond import send_error
from router.auth.types import FRONT_DOOR_SCOPE_KEY, PRINCIPAL_SCOPE_KEY, Principal
from runtime.errors import Unauthenticated

if TYPE_CHECKING:
    from router.auth.frontdoor import FrontDoor
    from router.auth.tokens import TokenStore

# The Databricks SDK asks its host for discovery metadata without a token when a client is created (and
# warns on any failure, 401 or 404 alike): public, and it says nothing but that there is nothing to say.
DATABRICKS_DISCOVERY = "/.well-known/databricks-config"
ALWAYS_PUBLIC = frozenset({"/healthz", "/readyz", DATABRICKS_DISCOVERY})
V2_HEALTH = frozenset({"/v2/health/live", "/v2/health/ready"})


def bearer_token(scope: Scope) -> str | None:
    """The token of the first ``Authorization: Bearer ...`` header, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return token_of(value)
    return None


def token_of(authorization: bytes | None) -> str | None:
    """The token in an ``Authorization: Bearer ...`` header's value, or None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    try:
        return token.strip().decode("ascii")
    except UnicodeDecodeError:
        return None


class AuthMiddleware:
    """Puts the caller in ``scope["zeroserve.principal"]`` (None when auth is disabled) or answers 401.

    ``tokens=None`` is the ``--insecure-no-auth`` mode: every caller is let through as None.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: TokenStore | None,
        front_door: FrontDoor | None = None,
        public_paths: Iterable[str] = ALWAYS_PUBLIC,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.front_door = front_door
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope[FRONT_DOOR_SCOPE_KEY] = self.front_door
        if self.tokens is None or scope["path"] in self.public_paths:
            scope[PRINCIPAL_SCOPE_KEY] = None
            await self.app(scope, receive, send)
            return
        principal = authenticate(self.tokens, scope)
        if isinstance(principal, Principal):
            scope[PRINCIPAL_SCOPE_KEY] = principal
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # 1008: policy violation, the websocket equivalent of 401.
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_error(send, principal, {"WWW-Authenticate": challenge(principal)}, path=scope["path"])


def authenticate(tokens: TokenStore, scope: Scope) -> Principal | Unauthenticated:
    return authenticate_token(tokens, bearer_token(scope))


def authenticate_token(tokens: TokenStore, token: str | None) -> Principal | Unauthenticated:
    """``authenticate`` for a bearer token already taken from the request (``token_of``)."""
    if token is None:
        return Unauthenticated("Missing bearer token: send 'Authorization: Bearer <token>'.")
    principal = tokens.authenticate(token)
    if principal is None:
        return Unauthenticated("Invalid, expired or revoked token.")
    return principal


def challenge(error: Unauthenticated) -> str:
    if error.message.startswith("Missing"):
        return 'Bearer realm="zeroserve"'
    return 'Bearer realm="zeroserve", error="invalid_token"'
