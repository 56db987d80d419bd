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
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from autoscaler.backend import AcceleratedBackend, Backend, Clock, HandoverBackend
from autoscaler.loop import Autoscaler
from autoscaler.types import EntityKey, ReplicaListener
from router.api.controller import EndpointController
from router.api.handlers import ControlPlane, JSONResponse
from router.api.lifecycle import Deployment
from router.api.observed import AutoscalerScaler
from router.api.openapi import allowed_methods, gateway_openapi
from router.api.views import EntityState
from router.auth.access import FrontDoorAccess, require_admin
from router.auth.admission import DATABRICKS_DISCOVERY
from router.auth.directory import StoreDirectory
from router.auth.frontdoor import FrontDoor
from router.auth.settings import SecuritySettings
from router.dataplane.plane import DataPlane, QueryFastPath, dataplane_routes, error_response
from router.dataplane.queries import GatewayQueries, query_protocol
from router.errors import MethodNotAllowed, NoSuchRoute, NotLeader, PermissionDenied
from router.fleet.member import (
    INTERNAL_PREFIX,
    LIVE_HEARTBEATS,
    SECRET_HEADER,
    FleetMember,
    LeaderLink,
    RegistryPublisher,
)
from router.fleet.metrics import merge_expositions
from router.fleet.store import FleetStore
from router.mcp import McpMount
from router.observability import Observability
from router.observability.catalog import StoreCatalog, with_cost
from router.observability.dashboard import dashboard_routes
from router.observability.logging import RequestIdMiddleware, configure_logging, flush_logging
from router.observability.metrics import ReplicaCounts
from router.settings import GatewaySettings
from router.sharing.server import FILES_PATH as SHARING_FILES_PATH
from router.sharing.server import SharingServer
from router.state.db import DatabaseUnavailable, open_database
from router.state.endpoints import EndpointStore
from runtime.devices import Accelerators
from runtime.errors import InvalidInput, InvalidParameterValue, ZeroserveError
from runtime.server import settle_heap

if TYPE_CHECKING:
    import uvicorn

logger = logging.getLogger(__name__)

FLEET_STATUS = "/api/2.0/zeroserve/fleet"

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
        # Several gateways share the state when it is in PostgreSQL: one leads the autoscaler at a time.
        self.fleet_enabled = self.db.dialect == "postgresql"
        self.gateway_id = uuid.uuid4().hex[:12]
        self.front_door = FrontDoor(self.db, StoreDirectory(self.store), security)
        # One body limit for the whole gateway (ZEROSERVE_MAX_BODY_BYTES): the data plane's own default
        # (16 MiB) made raising the setting do nothing for queries.
        self.dataplane = DataPlane(max_body_bytes=self.front_door.settings.max_body_bytes, clock=clock)
        self.dataplane.ready = False  # until start() has restored the endpoints
        self.observability = Observability(
            stats=self.dataplane.stats, state_dir=settings.home / "observability", clock=clock
        )
        self.dataplane.capture = self.observability.tables
        self.backend = backend if backend is not None else _backend(settings, self.fleet_enabled)
        # Observability sits between the autoscaler and the activator to see cold starts.
        listener: ReplicaListener = self.observability.listener(self.dataplane.listener)
        self.fleet: FleetMember | None = None
        self.publisher: RegistryPublisher | None = None
        if self.fleet_enabled:
            # The leader writes its replicas to the registry the followers route by.
            self.fleet_store = FleetStore(self.db)
            pid_of = getattr(self.backend, "pid", lambda replica_id: None)
            self.publisher = RegistryPublisher(self.fleet_store, listener, self.gateway_id, pid_of,
                                               follower_poll_s=settings.fleet_poll_s)
        self.autoscaler = Autoscaler(self.backend, clock, self.publisher or listener,
                                     replica_prefix=f"{self.gateway_id[:6]}-" if self.fleet_enabled else "")
        self.dataplane.activator.set_scaler(self.autoscaler)
        self.scaler = AutoscalerScaler(self.autoscaler)
        self.catalog = StoreCatalog(self.store, self.entity_state)
        self.observability.bind(catalog=self.catalog,
                                autoscaler=self.autoscaler, load=self.dataplane.activator,
                                cache_counters=self._cache_counters)
        self.controller = EndpointController(
            self.store, self.scaler, self.dataplane, rollout_timeout_s=settings.rollout_timeout_s
        )
        if isinstance(self.backend, AcceleratedBackend):
            self.controller.gpu_capacity = self.backend.gpu_capacity
        if isinstance(getattr(self.backend, "accelerators", None), Accelerators):
            self.observability.hub.gpus = self._gpus  # local replicas: this machine's devices
        # Grants are keyed by endpoint id: a deleted endpoint's go with it.
        self.controller.on_deleted.append(lambda record: self.front_door.permissions.forget(record.id))
        if self.fleet_enabled:
            self.fleet = FleetMember(
                self.fleet_store, gateway_id=self.gateway_id, lease_s=settings.fleet_lease_s,
                poll_s=settings.fleet_poll_s, on_change=self._changed, on_lead=self._lead,
                on_follow=self._follow, listener=listener, statuses=self._statuses,
            )
            self.link = LeaderLink(self.fleet)
            self.front_door.limiter.share = lambda: self.fleet.live_gateways if self.fleet else 1
            self.front_door.extra_public |= {route.path for route in self._internal_routes()
                                             if isinstance(route, Route)}
            self.observability.published_counts = self._published_counts
            self.observability.fleet_exposition = self._fleet_exposition
            self.observability.fleet_peers = self._fleet_dashboards
        self.control_plane = ControlPlane(
            controller=self.controller,
            state_of=with_cost(self.entity_state, self.observability),
            logs_of=self.logs,
            build_logs_of=self.build_logs,
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
        # Delta Sharing for partners (/delta-sharing); its file URLs are fetched without a token.
        self.sharing = SharingServer(self.db, url_ttl_s=settings.sharing_url_ttl_s)
        self.sharing.base_url = settings.advertise_url or ""
        self.front_door.extra_public.add(SHARING_FILES_PATH)
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
        # Over HTTP, queries skip ASGI altogether (router.dataplane.queries): the same checks in one
        # coroutine on the protocol object. Behind trusted proxies the client address comes from
        # X-Forwarded-For, which only the ASGI stack applies, so there every request takes the ASGI path.
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
            *self.sharing.routes(),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route(DATABRICKS_DISCOVERY, self.databricks_discovery, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route(FLEET_STATUS, self.fleet_status, methods=["GET"]),
            *self._internal_routes(),
        ]

    def _internal_routes(self) -> list[BaseRoute]:
        if not self.fleet_enabled:
            return []
        handlers = {"load": (self.fleet_load, "POST"), "logs": (self.fleet_logs, "GET"),
                    "metrics": (self.fleet_metrics, "GET"), "dashboard": (self.fleet_dashboard, "GET")}
        return [Route(f"{INTERNAL_PREFIX}/{name}", handler, methods=[method], include_in_schema=False)
                for name, (handler, method) in handlers.items()]

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.admin_token = self.front_door.startup()
        await self.dataplane.start()
        if self.fleet is None:
            # Configs first (no decision is taken before the autoscaler starts), then what still runs
            # from before (pods outlive a gateway), then the first decisions: no duplicate, no gap.
            await self.controller.restore()
            await self._adopt_discovered()
            await self.autoscaler.start()
        else:
            # A follower until the lease says otherwise: route every endpoint, run no replica.
            self.controller.leading = False
            self.dataplane.activator.set_scaler(self.link)
            await self.controller.restore()
            if self.settings.advertise_url:
                self.fleet.url = self.settings.advertise_url
            await self.fleet.start()
        await self.observability.start()
        self.ready = True
        self.dataplane.ready = True
        for hook in self.on_ready:
            await hook(self)

    async def aclose(self) -> None:
        self.ready = False
        self.dataplane.ready = False
        self._forget_url()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.mcp.aclose()  # ends MCP requests before the data plane they query goes away
        await self.controller.aclose()
        others = self.fleet is not None and await self.fleet.others_alive()
        keeps = isinstance(self.backend, HandoverBackend) and self.backend.keeps_replicas
        if self.fleet is None and keeps:
            await self.autoscaler.relinquish()  # pods stay; the gateway's next start adopts them
        elif self.fleet is not None and self.fleet.leading and (others or keeps):
            # A rolling restart: the replicas keep serving, the next leader adopts them at once.
            await self.fleet.aclose(hand_over=True)
            await self.autoscaler.relinquish()
        else:
            if self.fleet is not None and not self.fleet.leading and not others and not keeps:
                await self._last_out()
            if self.fleet is not None:
                await self.fleet.aclose(hand_over=False)
            await self.autoscaler.stop()  # drains and stops every replica, closes the backend
        if self.fleet is not None:
            await self.link.aclose()
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
        if not self.settings.advertise_url:
            self.sharing.base_url = url
        if self.fleet is not None and not self.settings.advertise_url:
            self.fleet.url = url
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

    # ---- several gateways ----------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.fleet is None or self.fleet.leading

    async def _changed(self) -> None:
        """Another gateway (or this one) changed the shared state: drop what is cached, re-route."""
        self.front_door.invalidate()
        if self.ready:
            self.controller.sync()

    async def _lead(self) -> None:
        assert self.fleet is not None and self.publisher is not None
        self.publisher.enabled = True
        self.controller.lead()
        # The replicas a previous leader started keep serving: adopt them rather than start others.
        adopted = 0
        for registered in self.fleet_store.replicas():
            info = registered.info
            if registered.state == "READY" and await self.autoscaler.adopt(info, registered.pid):
                self.fleet_store.register(info, "READY", self.gateway_id, registered.pid)
                adopted += 1
                continue
            # Gone, draining when its manager died, or of an endpoint deleted meanwhile: stop it.
            self.fleet_store.unregister(info.replica_id)
            await _stop_orphan(registered.pid)
            self.dataplane.listener.replica_gone(info)
        if adopted:
            logger.info("adopted %d running replica(s)", adopted)
        await self._adopt_discovered()
        await self.autoscaler.start()
        self.dataplane.activator.set_scaler(self.autoscaler)
        self.controller.resume_rollouts()

    async def _adopt_discovered(self) -> None:
        """Adopt the replicas the backend finds running (pods of a previous gateway process)."""
        if not isinstance(self.backend, HandoverBackend):
            return
        try:
            found = await self.backend.discover()
        except Exception:
            logger.exception("could not list the replicas that run already; new ones will be started")
            return
        adopted = [replica for replica in found if await self.autoscaler.adopt(replica, None)]
        if adopted:
            logger.info("adopted %d replica(s) that were running: %s", len(adopted),
                        ", ".join(r.replica_id for r in adopted))

    async def _last_out(self) -> None:
        """The last gateway of the fleet stops: the replicas a leader handed over go with it, unless a
        gateway that died still holds the lease (then they keep running for the next one to adopt)."""
        assert self.fleet is not None
        try:
            lease = self.fleet_store.acquire(self.gateway_id, int(self.fleet.lease_s * 1000))
            if lease.holder != self.gateway_id:
                logger.info("the autoscaler lease is still %s's: its replicas keep running", lease.holder)
                return
            registered = self.fleet_store.replicas()
            await asyncio.gather(*(_stop_orphan(r.pid) for r in registered))
            for replica in registered:
                self.fleet_store.unregister(replica.info.replica_id)
            self.fleet_store.release(self.gateway_id)
        except DatabaseUnavailable as error:
            logger.warning("could not stop the fleet's replicas on the way out: %s", error.message)

    async def _follow(self) -> None:
        assert self.publisher is not None
        self.publisher.enabled = False
        self.dataplane.activator.set_scaler(self.link)
        await self.controller.follow()
        await self.autoscaler.relinquish()

    def _statuses(self) -> dict[EntityKey, tuple[dict[str, Any], str | None]]:
        statuses = {}
        for key in self.autoscaler.entities():
            state = self.scaler.entity_state(key)
            if state is not None:
                view = dataclasses.asdict(state)
                view["deployment"] = state.deployment.value
                statuses[key] = (view, self.scaler.failure(key))
        return statuses

    def entity_state(self, key: EntityKey) -> EntityState | None:
        """What runs for a served entity: this gateway's autoscaler knows when it leads; otherwise the
        leader's view as it published it (each heartbeat)."""
        if self.leading:
            return self.scaler.entity_state(key)
        assert self.fleet is not None
        published = self.fleet.published.get(key)
        if published is None:
            return None
        view = dict(published[0])
        view["deployment"] = Deployment(view["deployment"])
        return EntityState(**view)

    async def logs(self, key: EntityKey) -> str:
        return self.scaler.logs(key) if self.leading else await self.link.logs(key, build=False)

    async def build_logs(self, key: EntityKey) -> str:
        return self.scaler.build_logs(key) if self.leading else await self.link.logs(key, build=True)

    async def fleet_status(self, request: Request) -> Response:
        """The gateways sharing this state, which one leads the autoscaler, and since when (admin)."""
        require_admin(request)
        accelerators = await self._accelerators()
        if self.fleet is None:
            return JSONResponse({"shared_state": False, "database": self.db.location, "gateways": [
                {"gateway_id": self.gateway_id, "url": self.url, "leader": True}],
                "accelerators": accelerators})
        lease = self.fleet_store.lease()
        gateways = self.fleet_store.gateways()
        window_ms = int(LIVE_HEARTBEATS * self.fleet.heartbeat_s * 1000) + 1000
        now_ms = self.fleet_store.now_ms()
        return JSONResponse({
            "shared_state": True,
            "database": self.db.location,
            "accelerators": accelerators,
            "lease_seconds": self.fleet.lease_s,
            "leader": None if lease is None or lease.expires_ms <= now_ms else {
                "gateway_id": lease.holder, "since": lease.since_ms, "expires": lease.expires_ms},
            "gateways": [
                {"gateway_id": g.gateway_id, "url": g.url, "host": g.host, "pid": g.pid,
                 "started": g.started_ms, "last_seen": g.seen_ms, "live": now_ms - g.seen_ms <= window_ms,
                 "leader": lease is not None and lease.holder == g.gateway_id and lease.expires_ms > now_ms,
                 "this": g.gateway_id == self.gateway_id}
                for g in gateways
            ],
        })

    def _gpus(self) -> list[tuple[int, str, int | None]]:
        detected = getattr(self.backend, "accelerators", None)
        gpus = detected.gpus if isinstance(detected, Accelerators) else ()
        return [(gpu.index, gpu.name, gpu.memory_mib << 20 if gpu.memory_mib is not None else None)
                for gpu in gpus]

    async def _accelerators(self) -> dict[str, Any]:
        """What GPUs the backend can place replicas on; for local replicas, the machine's devices."""
        if not isinstance(self.backend, AcceleratedBackend):
            return {"gpus": None, "where": "this backend cannot tell"}
        capacity = await self.backend.gpu_capacity()
        found: dict[str, Any] = {"gpus": capacity.gpus, "where": capacity.where}
        detected = getattr(self.backend, "accelerators", None)
        if isinstance(detected, Accelerators):
            found["devices"] = detected.to_dict()
        return found

    def _fleet_only(self, request: Request) -> None:
        """The fleet's internal routes take the fleet's shared secret, not a token."""
        assert self.fleet is not None
        if not self.fleet.check_secret(request.headers.get(SECRET_HEADER)):
            raise PermissionDenied("not a gateway of this fleet")

    async def fleet_load(self, request: Request) -> Response:
        """A follower's load reports and pokes (internal: the fleet's shared secret, not a token)."""
        assert self.fleet is not None
        self._fleet_only(request)
        if not self.fleet.leading:
            raise NotLeader("this gateway does not lead")
        body = orjson.loads(await request.body())
        source = f"gateway:{body.get('gateway')}"
        for item in body.get("reports", []):
            self.autoscaler.report(EntityKey(item["endpoint"], item["served_entity"]), int(item["in_flight"]),
                                   int(item["queued"]), source, arrivals=item.get("arrivals"),
                                   completions=item.get("completions"))
        for item in body.get("pokes", []):
            with contextlib.suppress(ZeroserveError):  # not applied here yet: the next sync does
                self.autoscaler.poke(EntityKey(item["endpoint"], item["served_entity"]))
        return JSONResponse({})

    def _published_counts(self, key: EntityKey) -> ReplicaCounts | None:
        if self.fleet is None or self.fleet.leading:
            return None
        published = self.fleet.published.get(key)
        if published is None:
            return None
        view = published[0]
        return ReplicaCounts(desired=int(view.get("desired", 0)), starting=int(view.get("starting", 0)),
                             ready=int(view.get("ready", 0)), draining=int(view.get("draining", 0)))

    async def _from_peers(self, path: str, params: dict[str, str]) -> list[tuple[str, httpx.Response]]:
        """``path`` of every other live gateway (internal routes, the fleet's secret); a gateway that
        does not answer is left out, with a warning (its absence is the signal)."""
        assert self.fleet is not None
        window_ms = int(LIVE_HEARTBEATS * self.fleet.heartbeat_s * 1000) + 1000
        gateways = await asyncio.to_thread(self.fleet_store.gateways, seen_within_ms=window_ms)
        headers = {SECRET_HEADER: self.fleet.secret}
        async with httpx.AsyncClient(timeout=5, trust_env=False, verify=False) as client:
            async def fetch(gateway_id: str, url: str) -> tuple[str, httpx.Response] | None:
                try:
                    answer = await client.get(f"{url}{path}", params=params, headers=headers)
                    answer.raise_for_status()
                except httpx.HTTPError as error:
                    logger.warning("gateway %s did not answer %s: %s", gateway_id, path, error)
                    return None
                return gateway_id, answer

            fetched = await asyncio.gather(*(fetch(g.gateway_id, g.url) for g in gateways
                                             if g.url and g.gateway_id != self.gateway_id))
        return [answer for answer in fetched if answer is not None]

    async def _fleet_exposition(self) -> bytes:
        """Every live gateway's /metrics, labelled by gateway."""
        peers = await self._from_peers(f"{INTERNAL_PREFIX}/metrics", {})
        own = (self.gateway_id, self.observability.hub.exposition())
        return merge_expositions([own, *((gateway_id, answer.content) for gateway_id, answer in peers)])

    async def _fleet_dashboards(self, params: dict[str, str]) -> list[dict[str, Any]]:
        peers = await self._from_peers(f"{INTERNAL_PREFIX}/dashboard", params)
        return [answer.json() for _, answer in peers]

    async def fleet_dashboard(self, request: Request) -> Response:
        assert self.fleet is not None
        self._fleet_only(request)
        since = request.query_params.get("since")
        return JSONResponse(self.observability.dashboard_share(request.query_params.get("endpoint"),
                                                               float(since) if since else None))

    async def fleet_metrics(self, request: Request) -> Response:
        assert self.fleet is not None
        self._fleet_only(request)
        return Response(self.observability.hub.exposition(), media_type="text/plain; version=0.0.4")

    async def fleet_logs(self, request: Request) -> Response:
        assert self.fleet is not None
        self._fleet_only(request)
        params = request.query_params
        if "endpoint" not in params or "served_entity" not in params:
            raise InvalidParameterValue("the endpoint and served_entity query parameters are required")
        key = EntityKey(params["endpoint"], params["served_entity"])
        build = request.query_params.get("build") == "1"
        return JSONResponse({"logs": self.scaler.build_logs(key) if build else self.scaler.logs(key)})

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
        return JSONResponse(gateway_openapi(self.app.routes, _version(), self.front_door.public_paths()))

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


def _backend(settings: GatewaySettings, detached: bool) -> Backend:
    backend: Backend
    if settings.backend == "kubernetes":
        from autoscaler.backends.kubernetes import KubernetesBackend

        backend = KubernetesBackend()
    else:
        from autoscaler.backends.local import LocalBackend

        backend = LocalBackend(detached=detached)
    return backend


async def _stop_orphan(pid: int | None) -> None:
    """Stop a replica process nobody manages any more (its gateway died while it drained)."""
    from autoscaler.backends.local import terminate_pid

    await terminate_pid(pid, 5.0)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown routes and methods (Starlette's HTTPExceptions) answer through the one error renderer,
    # like every other refusal: the API's error shape, plus OIP's "error" on /v2 paths.
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path
    error: ZeroserveError
    if exc.status_code == 404:
        error = NoSuchRoute(method, path)
    elif exc.status_code == 405:
        # Starlette's Allow names the first route that matched the path; a path served by several
        # routes (GET and POST /api/2.0/serving-endpoints) must list every method (RFC 9110, 15.5.6).
        error = MethodNotAllowed(method, path, allowed_methods(request.app.routes, path))
    else:
        error = InvalidInput(str(exc.detail), headers=dict(exc.headers or {}))
        error.status_code = exc.status_code
    return error_response(request, error)


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
