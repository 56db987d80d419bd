"""The gateway: one asyncio process holding the control-plane API, the data plane, the autoscaler
loop and its backend, with desired state in SQLite under ``ZEROSERVE_HOME``.

Start-up order matters for a restart after a crash: open the database, start the data plane (so it can
take replica announcements), start the autoscaler, then restore every stored endpoint (its active
config is applied and routed, interrupted rollouts resume). Only then does ``/readyz`` answer 200 and
``gateway.json`` tell the CLI where the gateway is. Shutdown runs the other way round.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from autoscaler.backend import Backend, Clock
from autoscaler.loop import Autoscaler
from router.api.controller import EndpointController
from router.api.handlers import ControlPlane, JSONResponse
from router.api.observed import AutoscalerScaler
from router.api.openapi import gateway_openapi
from router.auth.access import FrontDoorAccess
from router.auth.directory import StoreDirectory
from router.auth.frontdoor import FrontDoor
from router.auth.middleware import DATABRICKS_DISCOVERY
from router.auth.settings import SecuritySettings
from router.dataplane import DataPlane, QueryFastPath, dataplane_routes, error_response
from router.mcp import McpMount
from router.observability import Observability
from router.observability.catalog import StoreCatalog, with_cost
from router.observability.dashboard import dashboard_routes
from router.observability.logging import RequestIdMiddleware, configure_logging, flush_logging
from router.queries import GatewayQueries, query_protocol
from router.settings import GatewaySettings
from router.state.db import open_database
from router.state.endpoints import EndpointStore
from runtime.errors import ZeroserveError
from runtime.server import settle_heap

if TYPE_CHECKING:
    import uvicorn

logger = logging.getLogger(__name__)

ReadyHook = Callable[["Gateway"], Awaitable[None]]


def _version() -> str:
    try:
        return package_version("zeroserve")
    except Exception:
        return "0"


class Gateway:
    """All parts of one gateway process, wired together; ``app`` is the ASGI application to serve."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        backend: Backend | None = None,
        clock: Clock | None = None,
        security: SecuritySettings | None = None,
    ) -> None:
        self.settings = settings
        settings.ensure_home()
        self.db = open_database(settings.database_url, settings.db_path)
        self.store = EndpointStore(self.db)
        self.front_door = FrontDoor(self.db, StoreDirectory(self.store), security)
        # One body limit for the whole gateway (ZEROSERVE_MAX_BODY_BYTES): the data plane's own default
        # (16 MiB) made raising the setting do nothing for queries.
        self.dataplane = DataPlane(max_body_bytes=self.front_door.settings.max_body_bytes)
        self.observability = Observability(
            stats=self.dataplane.stats, state_dir=settings.home / "observability", clock=clock
        )
        self.dataplane.capture = self.observability.tables
        self.backend = backend if backend is not None else _local_backend(settings)
        # Observability sits between the autoscaler and the activator to see cold starts.
        listener = self.observability.listener(self.dataplane.listener)
        self.autoscaler = Autoscaler(self.backend, clock, listener)
        self.dataplane.activator.set_scaler(self.autoscaler)
        self.scaler = AutoscalerScaler(self.autoscaler)
        self.catalog = StoreCatalog(self.store, self.scaler.entity_state)
        self.observability.bind(catalog=self.catalog,
                                autoscaler=self.autoscaler, load=self.dataplane.activator,
                                cache_counters=self._cache_counters)
        self.controller = EndpointController(
            self.store, self.scaler, self.dataplane, rollout_timeout_s=settings.rollout_timeout_s
        )
        # Grants are keyed by endpoint id: a deleted endpoint's go with it.
        self.controller.on_deleted.append(lambda record: self.front_door.permissions.forget(record.id))
        self.control_plane = ControlPlane(
            controller=self.controller,
            state_of=with_cost(self.scaler.entity_state, self.observability),
            logs_of=self.scaler.logs,
            build_logs_of=self.scaler.build_logs,
            metrics_of=self.endpoint_metrics,
            access=FrontDoorAccess(self.front_door),
        )
        # MCP: endpoints as tools; a tool call is dispatched through ``self.asgi`` like any query.
        self.mcp = McpMount(
            store=self.store,
            state_of=self.control_plane.state_of,
            allowed_hosts=settings.allowed_hosts,
            listen_host=settings.host,
            max_body_bytes=self.front_door.settings.max_body_bytes,
            version=_version(),
        )
        self.ready = False
        self.url: str | None = None
        # A generated admin token (first start only), to be shown once.
        self.admin_token: str | None = None
        self.on_ready: list[ReadyHook] = []
        self.background: set[asyncio.Task[Any]] = set()
        self.app = Starlette(
            routes=self.routes(),
            exception_handlers={ZeroserveError: error_response, HTTPException: _http_error},
            lifespan=self._lifespan,
        )
        # What the server runs: the app behind the front door (auth, limits, audit, rate limits), with
        # a request id on every answer (401s included) and one JSON access-log line per request. Queries
        # skip the app's route scan: the data plane's fast path answers them right behind the front door.
        self.asgi = RequestIdMiddleware(self.front_door.wrap(QueryFastPath(self.app, self.dataplane)))
        # Over HTTP, queries skip ASGI altogether (router.queries): the same checks in one coroutine on
        # the protocol object. Behind trusted proxies the client address comes from X-Forwarded-For,
        # which only the ASGI stack applies, so there every request takes the ASGI path.
        self.queries = (
            None
            if self.front_door.settings.trusted_proxies
            else GatewayQueries(self.dataplane, self.front_door)
        )
        self.mcp.bind(self.asgi)

    def http_protocol(self, base: type[Any]) -> type[Any]:
        """The uvicorn ``http`` protocol class to serve this gateway with: ``base`` (the front door's
        header-limited httptools protocol, from ``uvicorn_options``) with the query path on it."""
        return base if self.queries is None else query_protocol(base, self.queries)

    def routes(self) -> list[BaseRoute]:
        return [
            *self.control_plane.routes(),
            *self.front_door.routes(self.store),
            *dataplane_routes(self.dataplane),
            *dashboard_routes(self.observability),
            *self.mcp.routes(),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route(DATABRICKS_DISCOVERY, self.databricks_discovery, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.admin_token = self.front_door.startup()
        await self.dataplane.start()
        await self.autoscaler.start()
        await self.controller.restore()
        await self.observability.start()
        self.ready = True
        for hook in self.on_ready:
            await hook(self)

    async def aclose(self) -> None:
        self.ready = False
        self._forget_url()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.mcp.aclose()  # ends MCP requests before the data plane they query goes away
        await self.controller.aclose()
        await self.autoscaler.stop()  # drains and stops every replica, closes the backend
        await self.observability.close()  # writes captured requests and the cost so far
        await self.dataplane.aclose()
        self.db.close()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.aclose()

    def announce(self, url: str) -> None:
        """Record where this gateway listens, for the CLI on this machine (``gateway.json``)."""
        self.url = url
        path = self.settings.home / "gateway.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"url": url, "pid": os.getpid()}))
        temporary.replace(path)

    def _forget_url(self) -> None:
        path = self.settings.home / "gateway.json"
        # Best effort at shutdown: the file may be gone or already rewritten by a newer gateway of this
        # home, and a stale one is harmless (the CLI checks that the URL answers).
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()

    # ---- operational routes ------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        """Liveness: the process answers."""
        return JSONResponse({"status": "ok"})

    async def databricks_discovery(self, request: Request) -> Response:
        """The Databricks SDK's host metadata: a self-hosted gateway has no account, workspace id or OIDC
        issuer, so the SDK keeps the configuration it was given (host and token) and stays quiet."""
        return JSONResponse({})

    async def readyz(self, request: Request) -> Response:
        """Readiness: state restored, endpoints re-applied."""
        if not self.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok", "endpoints": len(self.store.list_all())})

    async def openapi(self, request: Request) -> Response:
        """The OpenAPI document of every route of this gateway."""
        return JSONResponse(gateway_openapi(self.app.routes, _version()))

    def _cache_counters(self) -> tuple[int, int, int]:
        """Model-cache counters of this process (models stored by the gateway) and of its replicas."""
        from runtime.store import cache_stats

        stats = cache_stats()
        hits, misses, fetched = stats.hits, stats.misses, stats.bytes_fetched
        from_replicas = getattr(self.backend, "cache_counters", None)
        if callable(from_replicas):
            replica_hits, replica_misses, replica_fetched = from_replicas()
            hits, misses, fetched = hits + replica_hits, misses + replica_misses, fetched + replica_fetched
        return hits, misses, fetched

    def endpoint_metrics(self, name: str) -> bytes:
        record = self.store.get(name)  # 404 for an unknown endpoint
        return self.observability.endpoint_metrics(self.catalog.view(record))


def _local_backend(settings: GatewaySettings) -> Backend:
    from autoscaler.backends.local import LocalBackend

    backend: Backend = LocalBackend()
    return backend


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown routes and methods answer in the API's error shape, like everything else.
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        code, message = "ENDPOINT_NOT_FOUND", f"No API found for '{request.method} {request.url.path}'"
    elif exc.status_code == 405:
        code, message = "BAD_REQUEST", f"Method {request.method} is not allowed on {request.url.path}"
    else:
        code, message = "BAD_REQUEST", str(exc.detail)
    return JSONResponse({"error_code": code, "message": message}, status_code=exc.status_code,
                        headers=exc.headers)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving, so that port 0 resolves to a real port we can announce."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def serve(
    settings: GatewaySettings,
    *,
    security: SecuritySettings | None = None,
    on_ready: list[ReadyHook] | None = None,
    **gateway_args: Any,
) -> None:
    """Run the gateway until SIGINT/SIGTERM (uvicorn with uvloop and httptools)."""
    from router.auth.tls import INSECURE_BANNER, insecure_bind_error

    security = security or SecuritySettings()
    # Structured JSON logs, each line of a request carrying its x-request-id; plain lines at a terminal.
    text = settings.log_format == "text" or (settings.log_format == "auto" and sys.stderr.isatty())
    configure_logging(settings.log_level, text=text)
    if security.insecure_no_auth:
        refusal = insecure_bind_error(settings.host)
        if refusal is not None:
            raise OSError(refusal)
        logger.warning(INSECURE_BANNER)
    sock = bind_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    display_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    scheme = "https" if security.ssl_certfile else "http"
    url = f"{scheme}://{'[' + display_host + ']' if ':' in display_host else display_host}:{port}"
    gateway = Gateway(settings, security=security, **gateway_args)

    async def announce(gw: Gateway) -> None:
        gw.announce(url)
        logger.info("zeroserve gateway ready at %s", url)

    gateway.on_ready.append(announce)
    server = gateway_server(
        gateway,
        security,
        loop="uvloop",
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
    )
    gateway.on_ready.extend(on_ready or [])
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the SIGTERM or SIGINT (Ctrl-C) it caught once it has shut down, with these
        # handlers back in place: the log lines still pending (written once per flush interval) go out,
        # and the process exits 0 — the shutdown was orderly — instead of dying by the signal (143) or
        # as click's "Aborted!" (1).
        for orderly in (signal.SIGTERM, signal.SIGINT):
            signal.signal(orderly, _flush_logs_then_exit)
    server.run(sockets=[sock])


def gateway_server(gateway: Gateway, security: SecuritySettings, **config: Any) -> uvicorn.Server:
    """The uvicorn server a gateway process runs ``gateway`` with (``serve``; the router benchmark):
    the front door's HTTP protocol, header limits and TLS, queries answered below ASGI, the JSON logs
    kept, and the process's heap settled once the gateway has started. ``config`` adds to or overrides
    the ``uvicorn.Config`` options (``loop``, ``log_level``, ...)."""
    import uvicorn

    from router.auth.tls import harden, uvicorn_options

    options = uvicorn_options(
        ssl_certfile=str(security.ssl_certfile) if security.ssl_certfile else None,
        ssl_keyfile=str(security.ssl_keyfile) if security.ssl_keyfile else None,
        max_header_bytes=security.max_header_bytes,
        header_timeout_s=security.header_timeout_s,
    )
    gateway.on_ready.append(settle_gateway_heap)
    options = {
        **options,
        "http": gateway.http_protocol(options["http"]),
        "lifespan": "on",
        "log_config": None,  # keep the JSON handler configure_logging installed
        "access_log": False,  # the gateway writes its own access log (router.observability.logging)
        **config,
    }
    return uvicorn.Server(harden(uvicorn.Config(gateway.asgi, **options)))


async def settle_gateway_heap(gateway: Gateway) -> None:
    """An ``on_ready`` hook for a process that is the gateway (``gateway_server`` adds it; not for a
    test process holding gateways among other things): what start-up built — imports, the apps,
    restored endpoints — lives as long as the process, so it is collected once and frozen
    (``runtime.server.settle_heap``).

    Measured in the gateway under routed load before this: a full collection took 20-40 ms (every
    request in flight stalls meanwhile) and a middle-generation one ~1.3 ms, nine of them in a 30 s
    run. Unlike a replica's, the gateway's start is not on any request's cold path: the collection
    first costs nothing a client waits for, and leaves no start-up garbage frozen in.
    """
    gc.collect()
    settle_heap()


def _flush_logs_then_exit(signum: int, frame: object) -> None:
    flush_logging()
    raise SystemExit(0)
