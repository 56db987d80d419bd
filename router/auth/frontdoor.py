"""The front door assembled: stores, authorizer, rate limiter, audit, and the middleware stack.

The gateway builds one ``FrontDoor`` over its database and endpoint directory, mounts ``routes()``,
wraps its app with ``wrap()``, and calls ``startup()`` once (which may return a freshly generated admin
token to print). Outermost first, a request passes:

    trusted proxies -> limits (body as it arrives, time, last-resort 500) -> audit
        -> admission (declared size, token, data-plane permissions and rate limits) -> app

The query path below ASGI (router.dataplane.queries) admits its queries through the same
``admission()`` and applies the same limits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from router.auth.admission import ALWAYS_PUBLIC, V2_HEALTH, Admission, AdmissionMiddleware
from router.auth.audit import AuditLog, AuditMiddleware
from router.auth.limits import LimitsMiddleware
from router.auth.permissions import Authorizer, PermissionStore
from router.auth.ratelimit import RateLimiter, enforce
from router.auth.settings import SecuritySettings
from router.auth.tls import trusted_proxy_app
from router.auth.tokens import TokenStore
from router.auth.types import EndpointDirectory, EndpointRef, PermissionLevel, Principal
from router.state.db import Database
from router.state.endpoints import EndpointStore

log = logging.getLogger("zeroserve.auth")


class FrontDoor:
    def __init__(
        self,
        db: Database,
        directory: EndpointDirectory,
        settings: SecuritySettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else SecuritySettings()
        admin = self.settings.admin_token
        ttl = self.settings.auth_cache_ttl_s
        self.tokens = TokenStore(
            db, clock=clock, monotonic=monotonic, cache_ttl_s=ttl,
            static_admin_token=admin.get_secret_value() if admin is not None else None,
        )
        self.permissions = PermissionStore(db, monotonic=monotonic, cache_ttl_s=ttl)
        self.directory = directory
        self.authorizer = Authorizer(self.permissions, directory)
        self.limiter = RateLimiter()
        self.audit = AuditLog(db, clock=clock)
        self._monotonic = monotonic
        # Routes that check a credential of their own (the fleet's internal routes).
        self.extra_public: set[str] = set()

    @property
    def auth_enabled(self) -> bool:
        return not self.settings.insecure_no_auth

    def startup(self) -> str | None:
        """Make sure an admin can get in; returns a newly generated admin token to print once, or None."""
        if not self.auth_enabled:
            return None
        return self.tokens.ensure_admin_token()

    def admit_query(self, principal: Principal | None, endpoint: str) -> EndpointRef | None:
        """``CAN_QUERY`` on the endpoint, then its rate limits (429 REQUEST_LIMIT_EXCEEDED)."""
        ref = self.authorizer.authorize(principal, endpoint, PermissionLevel.CAN_QUERY)
        if ref is not None:
            enforce(self.limiter, ref, principal, self._monotonic())
        return ref

    def public_paths(self) -> frozenset[str]:
        # The dashboard's page and assets hold no data (its JSON APIs need a token): a browser must be
        # able to load them before the user has given one.
        from router.observability.dashboard import DASHBOARD_PUBLIC_PATHS

        v2_health = V2_HEALTH if self.settings.public_v2_health else frozenset()
        return ALWAYS_PUBLIC | DASHBOARD_PUBLIC_PATHS | v2_health | frozenset(self.extra_public)

    def invalidate(self) -> None:
        """The shared state changed (maybe through another gateway): forget every cached token,
        grant and endpoint, so that a revoke or a new grant is in force here at once."""
        self.tokens.invalidate()
        self.permissions.invalidate()
        invalidate = getattr(self.directory, "invalidate", None)
        if callable(invalidate):
            invalidate()

    def routes(self, endpoint_store: EndpointStore | None = None) -> list[BaseRoute]:
        """Token, audit, identity and permissions routes; with the endpoint store, also the
        ``rate-limits`` and ``ai-gateway`` settings of endpoints."""
        from router.auth.api import front_door_routes

        return front_door_routes(self, endpoint_store)

    def admission(self, max_body_bytes: int | None = None) -> Admission:
        """The admission step of this front door (``max_body_bytes``: a lower body limit than its own)."""
        limit = self.settings.max_body_bytes
        return Admission(
            front_door=self,
            tokens=self.tokens if self.auth_enabled else None,
            max_body_bytes=limit if max_body_bytes is None else min(limit, max_body_bytes),
            public_paths=self.public_paths(),
        )

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """The gateway app behind the front door's middleware (see the module docstring for the order)."""
        settings = self.settings
        wrapped: ASGIApp = AdmissionMiddleware(app, self.admission())
        wrapped = AuditMiddleware(wrapped, audit=self.audit)
        wrapped = LimitsMiddleware(
            wrapped,
            max_body_bytes=settings.max_body_bytes,
            body_timeout_s=settings.body_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            debug=settings.debug,
        )
        return trusted_proxy_app(wrapped, settings.trusted_proxies)
