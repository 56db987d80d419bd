"""The data plane: the query routes of the gateway, from endpoint name to a replica's answer.

``DataPlane`` owns the routing table, the activator and the upstream connection pool; the gateway mounts
``dataplane_routes(dataplane)`` and registers ``error_response`` as its handler of ``ZeroserveError``.
The handlers are plain ASGI callables, not Starlette request/response functions: bodies go through as
bytes (the JSON is never parsed on the hot path) and no Request/Response objects are built per call.
``QueryFastPath`` goes one step further for the query routes (``POST`` invocations and OIP infer): it
sits in front of the gateway's Starlette app and matches them with string operations, so a query pays
neither the scan over every route of the gateway nor Starlette's exception middleware.

One request: read the body → find the endpoint → pick a served entity by traffic share → get a replica
slot from the activator (waiting while the entity scales up) → forward over a pooled connection →
answer with the replica's response and a ``served-model-name`` header. A request that never reached a
replica (refused, no socket) is retried once on another; one the replica had when it went away is not
(it may be what crashed it) and gets a 503 that says so.

``query`` is that path as a coroutine. ``query_at_once`` is its first step without one, for the gateway's
immediate query path: when the chosen entity has a replica with room, nobody queued before it and an
idle pooled connection, the request is sent at once and the caller is called back with the answer;
otherwise (and when that idle connection was closed before the request was written) the caller is
told to fall back to ``query``, with the entity already chosen so that the traffic split is not drawn
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from autoscaler.probe import ReadinessProbe
from autoscaler.types import EntityKey
from router.auth._respond import error_body
from router.auth.admission import body_too_large
from router.dataplane.activator import Activator, ClientGone, Clock, ScaleRequester
from router.dataplane.balancer import EntityRemoved
from router.dataplane.proxy import (
    HOP_BY_HOP,
    UpstreamConnectError,
    UpstreamLost,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
)
from router.dataplane.routes import DATAPLANE_ROUTES, DataPlaneRoute, Kind, RouteMatcher
from router.dataplane.routing import EndpointEntry, EndpointRouting, RoutingTable
from router.dataplane.stats import DataPlaneStats
from router.dataplane.traffic import choose_entity, peek_client_request_id, shadow_targets
from router.errors import UpstreamTimeout
from runtime.errors import NoCapacity, ZeroserveError

if TYPE_CHECKING:
    from router.observability.inference_tables import InferenceTables

logger = logging.getLogger(__name__)

SERVED_MODEL_NAME = "served-model-name"
# Credentials and cookies are the gateway's business, never the replica's. ``Expect: 100-continue`` was
# the gateway's to answer: the replica gets the whole body at once, and an interim 100 from it would
# read as its answer.
_DROP_REQUEST_HEADERS = HOP_BY_HOP | {b"authorization", b"cookie", b"expect"}
# The router's server writes its own date/server headers; the length is set for the body we send.
_DROP_RESPONSE_HEADERS = HOP_BY_HOP | {b"date", b"server"}


class QueryCaller(Protocol):
    """Who ``DataPlane.query_at_once`` reports to: exactly one of these is called, once."""

    def answered(self, response: UpstreamResponse, entity: EntityKey) -> None:
        """The replica's answer (any status: a model's 4xx passes through)."""

    def failed(self, error: ZeroserveError) -> None:
        """The query failed (504, 503) after it was sent; ``error`` names the served entity (in its
        ``served-model-name`` header) unless the caller's own deadline is what passed."""

    def fall_back(self, entity: EntityKey | None) -> None:
        """Nothing was answered: serve the query with ``DataPlane.query(..., first_choice=entity)``."""


class DataPlane:
    """The routing table, activator, upstream pool and stats of one gateway process."""

    def __init__(
        self,
        table: RoutingTable | None = None,
        *,
        scaler: ScaleRequester | None = None,
        pool: UpstreamPool | None = None,
        activator: Activator | None = None,
        max_body_bytes: int = 16 * 1024 * 1024,
        upstream_model_name: Callable[[EntityKey], str] = lambda entity: entity.served_entity,
        clock: Clock | None = None,
    ) -> None:
        """``clock``: the autoscaler's, on which queued requests time out (the loop's timer if None)."""
        self.table = table if table is not None else RoutingTable()
        self.pool = pool if pool is not None else UpstreamPool()
        self.activator = activator if activator is not None else Activator(scaler, clock=clock)
        # An ejected replica gets traffic again once it passes the one readiness probe its backend uses.
        self.probe = ReadinessProbe()
        self.activator.set_health_check(lambda replica: self.probe(replica.url))
        # A drained replica is sent nothing more: its idle connections go, so that its shutdown does not
        # wait on them.
        self.activator.on_drained = lambda slot: self.pool.close_idle(slot.host, slot.port, slot.unix_socket)
        self.stats = DataPlaneStats()
        # Inference tables (observability): handed each finished request of an endpoint that captures.
        self.capture: InferenceTables | None = None
        self.max_body_bytes = max_body_bytes
        # The model name a replica answers to on its /v2/models/{name} routes (the runtime's --name).
        self.upstream_model_name = upstream_model_name
        # Whether the gateway around it has restored its endpoints (``/v2/health/ready``); a bare data
        # plane is ready as soon as it exists. ``version``: what ``GET /v2`` reports.
        self.ready = True
        self.version = _package_version()
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    @property
    def listener(self) -> Activator:
        """The autoscaler's ``ReplicaListener``."""
        return self.activator

    async def start(self) -> None:
        await self.activator.start()

    async def aclose(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        await self.activator.aclose()
        await self.pool.aclose()
        await self.probe.aclose()

    # -- routing table (called by the control plane) -------------------------------------------------

    def set_endpoint(
        self,
        name: str,
        routes: Iterable[tuple[EntityKey, int]],
        settings: EndpointRouting | None = None,
        *,
        shadows: Iterable[tuple[EntityKey, int]] = (),
    ) -> EndpointEntry:
        """Route endpoint ``name``; requests still queued for entities it no longer routes get 503."""
        previous = self.table.get(name)
        entry = self.table.set_endpoint(name, routes, settings, shadows=shadows)
        if previous is not None:
            kept = set(entry.entities) | {route.entity for route in entry.shadows}
            gone = [entity for entity in previous.entities if entity not in kept]
            self.activator.forget_entities(gone, "the endpoint's config no longer routes to it")
        return entry

    def remove_endpoint(self, name: str) -> None:
        previous = self.table.get(name)
        self.table.remove_endpoint(name)
        if previous is not None:
            self.activator.forget_entities(previous.entities, f"endpoint {name!r} was deleted")

    # -- the request path ---------------------------------------------------------------------------

    async def forward(
        self,
        entry: EndpointEntry,
        entity: EntityKey,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        disconnected: Callable[[], Awaitable[Any]] | None = None,
    ) -> UpstreamResponse:
        """Send one request to a replica of ``entity`` (waiting for one if needed), retrying once on
        another replica when the first one cannot be reached."""
        settings = entry.settings
        exclude: frozenset[str] = frozenset()
        for attempt in (1, 2):
            waited_from = time.perf_counter()
            slot = await self.activator.acquire(
                entity,
                queue_timeout_s=settings.queue_timeout_s,
                max_queue=settings.max_queue,
                exclude=exclude,
                disconnected=disconnected,
            )
            sent_at = time.perf_counter()
            try:
                response = await self.pool.request(
                    slot.host, slot.port, method, target, headers, body,
                    timeout_s=settings.upstream_timeout_s, unix_socket=slot.unix_socket,
                )
            except UpstreamConnectError as exc:
                self.activator.release(slot, failed=True)
                if attempt == 2:
                    raise NoCapacity(
                        f"No replica of '{entity.served_entity}' could be reached: {exc}"
                    ) from exc
                self.stats.entity(entity).retries += 1
                exclude = frozenset({slot.replica_id})
                continue
            except (UpstreamTimeout, UpstreamProtocolError, UpstreamLost) as exc:
                # Not retried: the replica had the request (a crash on this input must not take the
                # next replica down too).
                self.activator.release(slot, failed=True)
                if isinstance(exc, UpstreamProtocolError | UpstreamLost):
                    raise NoCapacity(f"The replica of '{entity.served_entity}' failed: {exc}") from exc
                raise
            except BaseException:
                self.activator.release(slot)
                raise
            self.activator.release(slot)
            stats = self.stats.entity(entity)
            stats.record_queue_wait(sent_at - waited_from)
            stats.record_upstream(time.perf_counter() - sent_at)
            return response
        raise NoCapacity("unreachable: the retry loop always returns or raises")

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        upstream_path: Callable[[EntityKey], str],
        answer: Callable[[UpstreamResponse, Scope], UpstreamResponse] | None = None,
    ) -> None:
        """Serve one query request (ASGI) for the endpoint named in the path; ``upstream_path`` gives the
        replica's path for the chosen entity, ``answer`` (when given) what the client gets of the
        replica's answer."""
        started = time.perf_counter()
        try:
            body = await _read_body(receive, self.max_body_bytes)
        except ZeroserveError as exc:
            self.stats.record(None, exc.status_code, time.perf_counter() - started)
            raise
        except ClientGone:
            self.stats.record(None, 499, time.perf_counter() - started)
            return
        try:
            response, entity = await self.query(scope, body, upstream_path, receive, started=started)
        except ClientGone:
            return
        if answer is not None:
            response = answer(response, scope)
        await _send_response(send, response, entity.served_entity)

    async def query(
        self,
        scope: Scope,
        body: bytes,
        upstream_path: Callable[[EntityKey], str],
        disconnected: Callable[[], Awaitable[Any]] | None,
        *,
        started: float | None = None,
        first_choice: EntityKey | None = None,
    ) -> tuple[UpstreamResponse, EntityKey]:
        """The replica's answer to one query whose body has been read, and the entity that gave it.

        Shared by the ASGI handler above and the gateway's protocol-level query path
        (``router.dataplane.queries``), so both route, retry, record stats and capture alike. Raises
        ``ZeroserveError`` (with a ``served-model-name`` header once an entity was chosen) or
        ``ClientGone``. ``first_choice``: the entity ``query_at_once`` chose before it fell back.
        """
        if started is None:
            started = time.perf_counter()
        entity: EntityKey | None = None
        status = 500
        raw_body, response_body = body, b""
        try:
            name = scope["path_params"]["name"]
            entry = self.table.lookup(name)
            client_request_id, body = peek_client_request_id(body)
            query, headers = _forwarded(scope)
            method = scope["method"]
            rerouted = False
            while True:
                chosen = entity = first_choice or choose_entity(entry, client_request_id)
                first_choice = None
                target = upstream_path(chosen) + query
                if entry.shadows and method == "POST" and not rerouted:
                    self._mirror(entry, method, target, headers, body)
                try:
                    response = await self.forward(entry, chosen, method, target, headers, body, disconnected)
                except EntityRemoved:
                    if rerouted:
                        raise
                    # A config update took the entity out of the routes while this request waited for
                    # it: route it again under the endpoint's new config (404 if it was deleted).
                    rerouted = True
                    entry = self.table.lookup(name)
                    continue
                break
            status = response.status
            response_body = response.body
            return response, chosen
        except ZeroserveError as exc:
            status = exc.status_code
            response_body = orjson.dumps(exc.to_dict())
            if entity is not None:
                exc.headers.setdefault(SERVED_MODEL_NAME, entity.served_entity)
            raise
        except ClientGone:
            status = 499  # nginx's "client closed request": nobody is left to answer
            raise
        finally:
            self._finished(scope, entity, status, started, raw_body, response_body)

    def query_at_once(
        self,
        scope: Scope,
        body: bytes,
        upstream_path: Callable[[EntityKey], str],
        caller: QueryCaller,
        *,
        started: float,
        deadline: float | None = None,
        deadline_message: str | None = None,
    ) -> None:
        """``query`` without awaiting, when nothing has to wait (see the module doc); ``caller`` hears
        how it ended. ``deadline`` (loop time) is the caller's own (the front door's request timeout):
        when it comes before the endpoint's upstream timeout, ``UpstreamTimeout(deadline_message)``
        fails the query then, without counting against the replica."""
        entry = self.table.get(scope["path_params"]["name"])
        if entry is None or entry.shadows:
            caller.fall_back(None)  # the 404, and mirroring, are ``query``'s
            return
        raw_body = body
        try:
            client_request_id, body = peek_client_request_id(body)
        except ZeroserveError:
            caller.fall_back(None)  # a malformed client_request_id: ``query`` answers the 400
            return
        entity = choose_entity(entry, client_request_id)
        slot = self.activator.try_acquire(entity)
        if slot is None:
            caller.fall_back(entity)
            return
        settings = entry.settings
        timeout_s = settings.upstream_timeout_s
        upstream_deadline = asyncio.get_running_loop().time() + timeout_s
        callers_deadline = deadline is not None and deadline < upstream_deadline
        sent_at = time.perf_counter()

        def on_answer(response: UpstreamResponse | None, error: Exception | None) -> None:
            # Called from the upstream connection's callbacks: nothing may escape from here, and the
            # caller must hear how the query ended even if the bookkeeping fails (a client must never
            # be left waiting on a request nobody will answer).
            told = False
            try:
                if response is not None:
                    self.activator.release(slot)
                    stats = self.stats.entity(entity)
                    stats.record_queue_wait(0.0)
                    stats.record_upstream(time.perf_counter() - sent_at)
                    self._finished(scope, entity, response.status, started, raw_body, response.body)
                    told = True
                    caller.answered(response, entity)
                    return
                if isinstance(error, UpstreamConnectError):
                    # The idle connection was closed before the request was written: ``query`` opens a
                    # fresh one, as ``UpstreamPool.request`` would have, without counting it against the
                    # replica. (``UpstreamLost`` — the replica had it — is a failure, below.)
                    self.activator.give_back(slot)
                    told = True
                    caller.fall_back(entity)
                    return
                failure: ZeroserveError
                if isinstance(error, UpstreamTimeout):
                    failure = error
                    self.activator.release(slot, failed=not callers_deadline)
                else:
                    failure = NoCapacity(f"The replica of '{entity.served_entity}' failed: {error}")
                    self.activator.release(slot, failed=True)
                if not (callers_deadline and isinstance(error, UpstreamTimeout)):
                    # The caller's own deadline is answered as the caller answers it elsewhere (the
                    # front door's request timeout names no served entity); replica failures name it.
                    failure.headers.setdefault(SERVED_MODEL_NAME, entity.served_entity)
                response_body = orjson.dumps(failure.to_dict())
                self._finished(scope, entity, failure.status_code, started, raw_body, response_body)
                told = True
                caller.failed(failure)
            except Exception:
                logger.exception("finishing a query of served entity %r failed", entity.served_entity)
                if not told:
                    caller.failed(ZeroserveError("Internal error."))

        try:
            query, headers = _forwarded(scope)
            sent = self.pool.try_send(
                slot.host, slot.port, scope["method"], upstream_path(entity) + query, headers, body,
                deadline=cast(float, deadline) if callers_deadline else upstream_deadline,
                timeout_s=timeout_s, on_answer=on_answer, unix_socket=slot.unix_socket,
                timeout_message=deadline_message if callers_deadline else None,
            )
        except BaseException:
            self.activator.give_back(slot)  # nothing was sent: the slot must not stay taken
            raise
        if not sent:
            self.activator.give_back(slot)
            caller.fall_back(entity)

    def _finished(
        self,
        scope: Scope,
        entity: EntityKey | None,
        status: int,
        started: float,
        request_body: bytes,
        response_body: bytes,
    ) -> None:
        """Stats and inference-table capture of one finished query."""
        elapsed = time.perf_counter() - started
        self.stats.record(entity, status, elapsed)
        if self.capture is not None and entity is not None and self.capture.enabled(entity.endpoint):
            self.capture.capture_request(scope, entity, status, elapsed, request_body, response_body)

    def _mirror(
        self, entry: EndpointEntry, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        # Shadow traffic is best effort: it never waits in a queue, and its answer is dropped.
        for shadow in shadow_targets(entry):
            task = asyncio.create_task(self._shadow(entry, shadow, method, target, headers, body))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self,
        entry: EndpointEntry,
        entity: EntityKey,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        started = time.perf_counter()
        status = 500
        try:
            slot = await self.activator.acquire(
                entity, queue_timeout_s=entry.settings.queue_timeout_s, max_queue=0
            )
        except ZeroserveError as exc:
            self.stats.record(entity, exc.status_code, time.perf_counter() - started)
            return
        try:
            response = await self.pool.request(
                slot.host,
                slot.port,
                method,
                target,
                headers,
                body,
                timeout_s=entry.settings.upstream_timeout_s,
                unix_socket=slot.unix_socket,
            )
            status = response.status
        except (ConnectionError, ZeroserveError) as exc:
            logger.debug("shadow request to %s failed: %s", entity, exc)
            status = getattr(exc, "status_code", 503)
        finally:
            self.activator.release(slot)
            self.stats.record(entity, status, time.perf_counter() - started)

    async def handle_model_ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        """OIP model readiness, answered here without waking a scaled-to-zero entity: an endpoint is
        ready when it routes traffic and none of its entities failed to deploy."""
        entry = self.table.lookup(scope["path_params"]["name"])
        failed = [self.activator.failed_reason(route.entity) for route in entry.routes if route.percent]
        ready = bool(entry.cumulative) and not any(failed)
        served = entry.cumulative[0][1].served_entity if entry.cumulative else ""
        await _send_response(send, UpstreamResponse(200 if ready else 503, [], b""), served)


def _forwarded(scope: Scope) -> tuple[str, list[tuple[bytes, bytes]]]:
    """What a query passes on to the replica besides its body: its query string (``?...`` to append to
    the replica's path, or empty) and its end-to-end headers, less the caller's credentials."""
    query = "?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""
    return query, [(key, value) for key, value in scope["headers"] if key not in _DROP_REQUEST_HEADERS]


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def response_headers(response: UpstreamResponse, served_model_name: str) -> list[tuple[bytes, bytes]]:
    """The headers the client gets with a replica's answer: the replica's own, less hop-by-hop ones and
    those the router's server writes itself, plus the length and ``served-model-name``."""
    headers = [(name, value) for name, value in response.headers if name not in _DROP_RESPONSE_HEADERS]
    headers.append((b"content-length", b"%d" % len(response.body)))
    headers.append((b"served-model-name", served_model_name.encode()))
    return headers


async def _send_response(send: Send, response: UpstreamResponse, served_model_name: str) -> None:
    await send({"type": "http.response.start", "status": response.status,
                "headers": response_headers(response, served_model_name)})
    await send({"type": "http.response.body", "body": response.body})


def error_response(request: Request, exc: Exception) -> Response:
    """The one place a ``ZeroserveError`` becomes an HTTP answer (register it on the gateway app).

    Open Inference Protocol paths also get an ``error`` field: that is where tritonclient and KServe
    clients look for the message.
    """
    if not isinstance(exc, ZeroserveError):
        raise exc
    return Response(
        error_body(exc, request.url.path),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


class _Handler:
    """An ASGI endpoint (Starlette's Route passes a callable object through as ASGI, unwrapped)."""

    def __init__(self, call: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._call(scope, receive, send)


def _proxied(
    dataplane: DataPlane,
    upstream_path: Callable[[EntityKey], str],
    answer: Callable[[UpstreamResponse, Scope], UpstreamResponse] | None = None,
) -> _Handler:
    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        await dataplane.handle(scope, receive, send, upstream_path, answer)

    return _Handler(call)


def _as_requested_model(response: UpstreamResponse, scope: Scope) -> UpstreamResponse:
    """A replica's model metadata names the served entity it runs; the client asked for the endpoint's
    model (``/v2/models/{name}``), and that is the name its OIP metadata must carry (tritonclient and
    KServe clients check it). Which entity answered stays in the ``served-model-name`` header."""
    if response.status != 200:
        return response
    try:
        document = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return response
    if not isinstance(document, dict) or "name" not in document:
        return response
    document["name"] = scope["path_params"]["name"]
    return response._replace(body=orjson.dumps(document))


def _v2_server_live(_: Request) -> Response:
    return Response(b"", status_code=200)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zeroserve")
    except PackageNotFoundError:
        return "0"


def _invocations_path(_: EntityKey) -> str:
    return "/invocations"


def upstream_paths(dataplane: DataPlane) -> dict[str, Callable[[EntityKey], str]]:
    """Where a forwarded route goes on the replica (``DataPlaneRoute.upstream``), by entity."""
    model = dataplane.upstream_model_name
    return {
        "invocations": _invocations_path,
        "infer": lambda entity: f"/v2/models/{model(entity)}/infer",
        "metadata": lambda entity: f"/v2/models/{model(entity)}",
    }


class QueryRoutes:
    """Matches the query routes of ``DATAPLANE_ROUTES`` (``POST`` invocations and OIP infer): their path
    params and the replica path each is forwarded to."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self._matcher = RouteMatcher.queries()
        self._upstream = upstream_paths(dataplane)

    def match(
        self, method: str, path: str
    ) -> tuple[dict[str, str], Callable[[EntityKey], str], DataPlaneRoute] | None:
        """(path params, upstream path, the route) when ``method path`` is a query route."""
        found = self._matcher.match(method, path)
        if found is None:
            return None
        route, params = found
        return params, self._upstream[cast(str, route.upstream)], route


class QueryFastPath(QueryRoutes):
    """ASGI middleware: serves the query routes straight from the data plane, anything else via ``app``.

    The query routes (see ``QueryRoutes``) are handled here, so a query pays neither the scan over
    every route of the gateway nor Starlette's exception middleware; a ``ZeroserveError`` becomes its
    answer through ``error_response``, as the app's handler would make it. Every other request, and
    these paths with another method, go to ``app`` unchanged (which keeps the routes for 405s, OpenAPI
    and anything mounted under a root path).
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], dataplane: DataPlane) -> None:
        super().__init__(dataplane)
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = (
            self.match(scope["method"], scope["path"])
            if scope["type"] == "http" and not scope.get("root_path")
            else None
        )
        if matched is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"], upstream_path, _ = matched
        try:
            await self.dataplane.handle(scope, receive, send, upstream_path)
        except ZeroserveError as exc:
            # Raised before the response started (handle sends its answer last): answer it here.
            await error_response(Request(scope), exc)(scope, receive, send)


def dataplane_routes(dataplane: DataPlane) -> list[BaseRoute]:
    """The Starlette routes of ``DATAPLANE_ROUTES``: MLflow scoring invocations and the Open Inference
    Protocol v2, where the model name is the endpoint name (and any version maps to the endpoint's
    current config)."""

    async def server_ready(_: Request) -> Response:
        # Not before the gateway has restored its endpoints: a probe must not send traffic to a gateway
        # that would answer 404 for endpoints it has not routed yet.
        if not dataplane.ready:
            return Response(orjson.dumps({"error": "the gateway is starting: endpoints not restored yet"}),
                            status_code=503, media_type="application/json")
        return Response(b"", status_code=200)

    async def server_metadata(_: Request) -> Response:
        body = {"name": "zeroserve", "version": dataplane.version, "extensions": ["binary_tensor_data"]}
        return Response(orjson.dumps(body), media_type="application/json")

    upstream = upstream_paths(dataplane)
    handlers: dict[Kind, Callable[[DataPlaneRoute], Any]] = {
        Kind.QUERY: lambda route: _proxied(dataplane, upstream[cast(str, route.upstream)]),
        Kind.MODEL_METADATA: lambda route: _proxied(dataplane, upstream[cast(str, route.upstream)],
                                                    _as_requested_model),
        Kind.MODEL_READY: lambda _: _Handler(dataplane.handle_model_ready),
        Kind.SERVER_METADATA: lambda _: server_metadata,
        Kind.SERVER_LIVE: lambda _: _v2_server_live,
        Kind.SERVER_READY: lambda _: server_ready,
    }
    return [Route(route.path, handlers[route.kind](route), methods=[route.method])
            for route in DATAPLANE_ROUTES]


@contextlib.asynccontextmanager
async def running(dataplane: DataPlane) -> Any:
    """``async with running(dataplane):`` start it, and close it however the block ends."""
    await dataplane.start()
    try:
        yield dataplane
    finally:
        await dataplane.aclose()
