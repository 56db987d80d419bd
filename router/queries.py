"""The gateway's query path below ASGI: a query is served by the HTTP protocol object itself.

Every inference request used to cross uvicorn's ASGI cycle (a scope, a task running the app, message
dicts through ``receive``/``send``) and five middleware layers, each wrapping ``send`` in a closure: on
this kind of 2-core machine that was about half of the router's CPU time per routed request, and the
router's CPU is what caps routed throughput when it shares the cores with the replica. Here a query is
handled in one coroutine that does the same checks in the same order, by the same functions:

    content length -> bearer token (401) -> CAN_QUERY + rate limits (403/404/429) -> body (413/408)
        -> data plane, under the request timeout (504) -> answer + x-request-id -> access-log line

``QueryProtocol`` is uvicorn's httptools protocol (with the front door's header limits) that, for a
``POST`` to a query route, puts a ``QueryExchange`` where uvicorn would put its ASGI
``RequestResponseCycle``. The exchange offers the attributes the protocol reads and writes on a cycle
(body, more_body, message_event, disconnected, keep_alive, response_complete, run_asgi), so
keep-alive, pipelining, flow control, graceful shutdown and disconnect detection stay uvicorn's.
Everything else — the control plane, MCP, the dashboard, and queries behind configured trusted proxies
or a root path — goes through the ASGI app unchanged, and ``QueryFastPath`` still serves queries that
arrive over ASGI (in-process transports, MCP tool calls), through the same ``DataPlane.query``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from autoscaler.types import EntityKey
from router.activator import ClientGone
from router.auth.limits import RequestTimeout, content_length
from router.auth.middleware import authenticate, challenge
from router.auth.tls import HeaderLimitedHttpToolsProtocol
from router.auth.types import FRONT_DOOR_SCOPE_KEY, PRINCIPAL_SCOPE_KEY
from router.dataplane import DataPlane, QueryRoutes, body_too_large, error_body, response_headers
from router.deadlines import Deadlines
from router.observability.logging import (
    REQUEST_ID_HEADER,
    REQUEST_ID_SCOPE_KEY,
    access_logger,
    log_access,
    request_id_from,
    request_id_var,
)
from router.proxy import UpstreamResponse
from runtime.errors import PayloadTooLarge, Unauthenticated, UpstreamTimeout, ZeroserveError

if TYPE_CHECKING:
    from router.auth.frontdoor import FrontDoor

log = logging.getLogger("zeroserve.queries")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_JSON = (b"content-type", b"application/json")
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class QueryExchange:
    """One query request and its answer, in the place of uvicorn's ``RequestResponseCycle``."""

    __slots__ = (
        "body", "default_headers", "disconnected", "flow", "handler", "keep_alive", "loop",
        "message_event", "more_body", "on_response", "response_complete", "route", "scope", "transport",
        "waiting_for_100_continue",
    )

    def __init__(
        self,
        scope: dict[str, Any],
        route: tuple[dict[str, str], Callable[[EntityKey], str]],
        handler: Callable[[QueryExchange], Awaitable[None]],
        *,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        flow: FlowControl,
        default_headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        expect_100_continue: bool,
        on_response: Callable[[], None],
    ) -> None:
        self.scope = scope
        self.route = route
        self.handler = handler
        self.loop = loop
        self.transport = transport
        self.flow = flow
        self.default_headers = default_headers
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.on_response = on_response
        self.message_event = asyncio.Event()
        # What the protocol's parser callbacks fill in (``on_body``, ``on_message_complete``,
        # ``connection_lost``), as on uvicorn's cycle.
        self.body = bytearray()
        self.more_body = True
        self.disconnected = False
        self.response_complete = False

    async def run_asgi(self, app: object) -> None:
        """What the protocol runs as the request's task (the name is the protocol's; ``app`` is unused)."""
        try:
            await self.handler(self)
        except BaseException as exc:  # a request task ends quietly, as uvicorn's do
            # The handler answers every error itself; only cancellation (shutdown) or a bug lands here.
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("query task failed")
            if not self.response_complete:
                # The client must not wait on a half-answered connection.
                self.response_complete = True
                self.transport.close()

    async def read_body(self, limit: int, timeout_s: float | None) -> bytes:
        """The whole request body: 413 past ``limit`` bytes, 408 when a chunk takes over ``timeout_s``;
        ``ClientGone`` when the client left. Usually the body came in with the head and nothing waits."""
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(_CONTINUE)
            self.waiting_for_100_continue = False
        while self.more_body and not self.disconnected:
            if len(self.body) > limit:
                raise body_too_large(limit)
            # The protocol pauses reading past its high-water mark until the body is consumed.
            self.flow.resume_reading()
            self.message_event.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self.message_event.wait()
            except TimeoutError:
                raise RequestTimeout(
                    f"Request body did not arrive within {timeout_s:g} s"
                    " (is Content-Length larger than the body sent?)."
                ) from None
        if self.disconnected:
            raise ClientGone()
        if len(self.body) > limit:
            raise body_too_large(limit)
        return bytes(self.body)

    async def wait_disconnect(self) -> dict[str, str]:
        """Returns once the client has gone (the activator watches this while a request is queued)."""
        while not self.disconnected:
            self.message_event.clear()
            await self.message_event.wait()
        return {"type": "http.disconnect"}

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Write the answer (head and body in one write) and hand the connection back to the protocol."""
        if self.response_complete:
            return
        self.response_complete = True
        if not self.disconnected:
            line = STATUS_LINE.get(status) or b"HTTP/1.1 %d \r\n" % status
            parts = [line]
            for name, value in self.default_headers:
                parts += (name, b": ", value, b"\r\n")
            for name, value in headers:
                parts += (name, b": ", value, b"\r\n")
            if not self.keep_alive:
                parts.append(b"connection: close\r\n")
            parts += (b"\r\n", body)
            self.transport.write(b"".join(parts))
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()


def _answer_of(response: UpstreamResponse, entity: EntityKey) -> Answer:
    return response.status, response_headers(response, entity.served_entity), response.body


class GatewayQueries:
    """The query path of one gateway: ``match`` picks the requests it serves, ``serve`` answers them.

    With ``front_door`` None (the bare data plane of the router benchmark, and tests) there is no
    authentication, no rate limits and no request timeout beyond the data plane's own.
    """

    def __init__(
        self, dataplane: DataPlane, front_door: FrontDoor | None, *, access_log: bool = True
    ) -> None:
        self.dataplane = dataplane
        self.front_door = front_door
        self.access_log = access_log
        self.routes = QueryRoutes(dataplane)
        self.match = self.routes.match
        # The front door's request timeout: one timer for all queries in flight (router.deadlines);
        # an overdue query's task is cancelled, and the handler turns that cancellation into the 504.
        self._overdue: set[asyncio.Task[Any]] = set()
        self._deadlines: Deadlines[asyncio.Task[Any]] = Deadlines(self._expire)

    async def serve(self, exchange: QueryExchange) -> None:
        scope = exchange.scope
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        context_token = request_id_var.set(request_id)
        status = 500
        try:
            answer = await self._answer(exchange, scope)
            if answer is None:
                status = 499  # the client left; nobody to answer
                return
            status, headers, body = answer
            headers.append((REQUEST_ID_HEADER, request_id.encode("ascii")))
            await exchange.respond(status, headers, body)
        finally:
            if self.access_log and access_logger.isEnabledFor(logging.INFO):
                log_access(scope, status, time.perf_counter() - started, request_id)
            request_id_var.reset(context_token)

    async def _answer(self, exchange: QueryExchange, scope: dict[str, Any]) -> Answer | None:
        params, upstream_path = exchange.route
        scope["path_params"] = params
        front_door = self.front_door
        try:
            if front_door is None:
                body = await exchange.read_body(self.dataplane.max_body_bytes, None)
                response, entity = await self.dataplane.query(
                    scope, body, upstream_path, exchange.wait_disconnect
                )
                return _answer_of(response, entity)
            settings = front_door.settings
            declared = content_length(scope)
            if declared is not None and declared > settings.max_body_bytes:
                exchange.keep_alive = False  # the body is not read
                raise body_too_large(settings.max_body_bytes)
            scope[FRONT_DOOR_SCOPE_KEY] = front_door
            principal = None
            if front_door.auth_enabled:
                found = authenticate(front_door.tokens, scope)
                if isinstance(found, Unauthenticated):
                    return _error(found, scope["path"], [(b"www-authenticate", challenge(found).encode())])
                principal = found
            scope[PRINCIPAL_SCOPE_KEY] = principal
            front_door.admit_query(principal, params["name"])
            limit = min(settings.max_body_bytes, self.dataplane.max_body_bytes)
            body = await exchange.read_body(limit, settings.body_timeout_s)
            loop = exchange.loop  # the protocol's: asking asyncio for the running loop costs more
            task = asyncio.current_task(loop)
            assert task is not None
            self._deadlines.watch(task, loop.time() + settings.request_timeout_s)
            try:
                response, entity = await self.dataplane.query(
                    scope, body, upstream_path, exchange.wait_disconnect
                )
            except asyncio.CancelledError:
                if task not in self._overdue or task.uncancel() > 0:
                    raise  # cancelled by someone else (shutdown), not by its deadline
                message = f"The request took longer than {settings.request_timeout_s:g} s."
                return _error(UpstreamTimeout(message), scope["path"])
            finally:
                self._deadlines.forget(task)
                self._overdue.discard(task)
            return _answer_of(response, entity)
        except ClientGone:
            return None
        except ZeroserveError as error:
            if isinstance(error, PayloadTooLarge | RequestTimeout):
                exchange.keep_alive = False  # what is left of the body would be read as a request
            return _error(error, scope["path"])
        except Exception:
            return self._internal(scope)

    def _expire(self, task: asyncio.Task[Any]) -> None:
        self._overdue.add(task)
        task.cancel()

    def _internal(self, scope: dict[str, Any]) -> Answer:
        log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
        message = "Internal error."
        if self.front_door is not None and self.front_door.settings.debug:
            message += "\n" + traceback.format_exc()
        return _error(ZeroserveError(message), scope["path"])


def _error(error: ZeroserveError, path: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> Answer:
    """The same answer the ASGI layers give for ``error``: ``{"error_code", "message"}``, plus ``error``
    on Open Inference Protocol paths (where tritonclient and KServe clients look for the message)."""
    body = error_body(error, path)
    headers = [_JSON, (b"content-length", b"%d" % len(body))]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in error.headers.items()]
    headers += extra
    return error.status_code, headers, body


class QueryProtocol(HeaderLimitedHttpToolsProtocol):
    """The header-limited httptools protocol, serving query routes through ``queries`` (see module doc)."""

    queries: GatewayQueries

    def on_headers_complete(self) -> None:
        parser = self.parser
        if (
            parser.get_method() == b"POST"
            and not self.root_path
            and not parser.should_upgrade()
            and self.limit_concurrency is None
        ):
            parsed = httptools.parse_url(self.url)
            raw_path = parsed.path
            if b"%" not in raw_path:
                path = raw_path.decode("ascii")
                route = self.queries.match("POST", path)
                if route is not None:
                    self._start_query(route, path, raw_path, parsed.query or b"")
                    return
        super().on_headers_complete()

    def _start_query(
        self,
        route: tuple[dict[str, str], Callable[[EntityKey], str]],
        path: str,
        raw_path: bytes,
        query_string: bytes,
    ) -> None:
        self._end_of_head()
        scope = cast(dict[str, Any], self.scope)
        scope["method"] = "POST"
        http_version = self.parser.get_http_version()
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = query_string
        existing = self.cycle
        exchange = QueryExchange(
            scope,
            route,
            self.queries.serve,
            loop=self.loop,
            transport=self.transport,
            flow=self.flow,
            default_headers=self.server_state.default_headers,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            expect_100_continue=self.expect_100_continue,
            on_response=self.on_response_complete,
        )
        # uvicorn types its cycle attribute as its own class; the exchange offers what the protocol uses.
        self.cycle = cast(Any, exchange)
        if existing is None or existing.response_complete:
            self._start_asgi_task(self.cycle, self.app)
        else:
            # A pipelined request waits for the one before it, as in the parent.
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))


def query_protocol(
    base: type[HeaderLimitedHttpToolsProtocol], queries: GatewayQueries
) -> type[QueryProtocol]:
    """``QueryProtocol`` with ``base``'s header limits, serving ``queries``."""
    return type(
        "QueryProtocol",
        (QueryProtocol,),
        {
            "queries": queries,
            "max_header_bytes": base.max_header_bytes,
            "header_timeout_s": base.header_timeout_s,
        },
    )
