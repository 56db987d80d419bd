"""The gateway's query path below ASGI: a query is served by the HTTP protocol object itself.

Every inference request used to cross uvicorn's ASGI cycle (a scope, a task running the app, message
dicts through ``receive``/``send``) and five middleware layers, each wrapping ``send`` in a closure: on
this kind of 2-core machine that was about half of the router's CPU time per routed request, and the
router's CPU is what caps routed throughput when it shares the cores with the replica. Here a query is
admitted by the front door's one admission step (``router.auth.admission``, as on the ASGI stack), then
served under the same limits:

    admission: content length (413) -> bearer token (401) -> CAN_QUERY + rate limits (403/404/429)
        -> body (413/408) -> data plane, under the request timeout (504) -> answer + x-request-id
        -> access-log line

``QueryProtocol`` is uvicorn's httptools protocol (with the front door's header limits) that names the
query routes as its ``direct_handler``s: a ``POST`` to one is answered through a
``runtime.http.DirectExchange`` (as replicas answer their inference routes) where uvicorn would put its
ASGI ``RequestResponseCycle``, so keep-alive, pipelining, flow control, graceful shutdown and disconnect
detection stay uvicorn's.

A query whose whole body came in the same read as its head (clients that write a small body with its
head: requests and the databricks-sdk, curl, the benchmarks' load generator; httpx writes them apart)
is served without a task at all
(``QueryHandler.at_once``, see runtime.http): the front door's checks run synchronously as the message
completes, and ``DataPlane.query_at_once`` sends it to a replica with room over an idle pooled
connection and answers from that connection's callback; the access-log line is written as the answer
goes out. A query that must wait (no replica with room, requests queued before it, no idle connection,
shadow traffic to mirror) continues in a task from where it stands (``serve(..., resumed=...)``): it is
not admitted twice, and its served entity is not drawn twice. The request timeout is the pooled
exchange's deadline on the immediate path; on the task path (``serve``, one coroutine per query) a
cancellation of its task.

Everything else — the control plane, MCP, the dashboard, and queries behind configured trusted proxies
or a root path — goes through the ASGI app unchanged, and ``QueryFastPath`` still serves queries that
arrive over ASGI (in-process transports, MCP tool calls), through the same ``DataPlane.query``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, cast

from autoscaler.types import EntityKey
from router.auth._respond import Answer, error_answer
from router.auth.admission import Admission, body_too_large, content_length
from router.auth.tls import HeaderLimitedHttpToolsProtocol
from router.auth.types import Principal
from router.dataplane.activator import ClientGone
from router.dataplane.deadlines import Deadlines
from router.dataplane.plane import DataPlane, QueryRoutes, response_headers
from router.dataplane.proxy import UpstreamResponse
from router.dataplane.routes import DataPlaneRoute
from router.errors import RequestTimeout, UpstreamTimeout
from router.observability.logging import (
    REQUEST_ID_HEADER,
    REQUEST_ID_SCOPE_KEY,
    access_logger,
    log_access,
    request_id_of,
    request_id_var,
)
from runtime.errors import PayloadTooLarge, ZeroserveError
from runtime.http import ClientDisconnected, DirectExchange, DirectHandler, ImmediateHandler

if TYPE_CHECKING:
    from router.auth.frontdoor import FrontDoor

log = logging.getLogger("zeroserve.queries")


# A query route: its path parameters, the replica's path for the entity chosen, and its line of the table.
QueryRoute = tuple[dict[str, str], Callable[[EntityKey], str], DataPlaneRoute]


async def _read_body(exchange: DirectExchange, limit: int, timeout_s: float | None) -> bytes:
    """The whole request body: 413 past ``limit`` bytes, 408 when a chunk takes over ``timeout_s``;
    ``ClientGone`` when the client left."""
    try:
        return await exchange.read_body(limit, timeout_s)
    except PayloadTooLarge:
        raise body_too_large(limit) from None
    except TimeoutError:
        raise RequestTimeout(
            f"Request body did not arrive within {timeout_s:g} s"
            " (is Content-Length larger than the body sent?)."
        ) from None
    except ClientDisconnected:
        raise ClientGone() from None


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
        # Admission as on the ASGI stack; the body limit is also the data plane's own, if lower.
        if front_door is None:
            self.admission = Admission(front_door=None, tokens=None, max_body_bytes=dataplane.max_body_bytes)
        else:
            self.admission = front_door.admission(dataplane.max_body_bytes)
        self.body_limit = cast(int, self.admission.max_body_bytes)
        self.match = self.routes.match
        # The front door's request timeout: one timer for all queries in flight (router.dataplane.deadlines);
        # an overdue query's task is cancelled, and the handler turns that cancellation into the 504.
        self._overdue: set[asyncio.Task[Any]] = set()
        self._deadlines: Deadlines[asyncio.Task[Any]] = Deadlines(self._expire)

    async def serve(
        self, route: QueryRoute, exchange: DirectExchange, resumed: ImmediateQuery | None = None
    ) -> None:
        """The task path: a query whose body is still arriving, or (``resumed``) one that the immediate
        path admitted and then handed on because it has to wait (see ``serve_at_once``)."""
        scope = exchange.scope
        authorization = None
        if resumed is None:
            started = time.perf_counter()
            request_id, authorization = _request_id_and_authorization(scope)
        else:
            started, request_id = resumed.started, resumed.request_id
        context_token = request_id_var.set(request_id)
        status = 500
        try:
            if resumed is None:
                answer = self._admit(route, exchange, scope, authorization, content_length(scope))
                if answer is None:
                    answer = await self._forward(route, exchange, scope, started)
            else:
                answer = await self._forward(route, exchange, scope, started, resumed.body, resumed.entity)
            if answer is None:
                status = 499  # the client left; nobody to answer
                return
            status, headers, body = answer
            headers.append((REQUEST_ID_HEADER, request_id.encode("ascii")))
            await exchange.respond(status, headers, body)
        finally:
            self._log(scope, status, started, request_id)
            request_id_var.reset(context_token)

    def serve_at_once(self, route: QueryRoute, exchange: DirectExchange) -> None:
        """The immediate path (``runtime.http.ImmediateHandler``): the whole body is here. The front door
        answers synchronously; an admitted query goes to ``DataPlane.query_at_once``, which answers from
        the upstream connection's callback, or back to ``serve`` in a task when it has to wait."""
        scope = exchange.scope
        started = time.perf_counter()
        request_id, authorization = _request_id_and_authorization(scope)
        context_token = request_id_var.set(request_id)
        try:
            # The whole body is here: its size is known, whatever Content-Length said (or if chunked).
            answer = self._admit(route, exchange, scope, authorization, len(exchange.body))
            if answer is None:
                query = ImmediateQuery(self, route, exchange, bytes(exchange.body), started, request_id)
                deadline = message = None
                if self.front_door is not None:
                    timeout_s = self.front_door.settings.request_timeout_s
                    deadline = exchange.loop.time() + timeout_s
                    message = _took_longer(timeout_s)  # made once per timeout value (cached)
                self.dataplane.query_at_once(
                    scope, query.body, route[1], query,
                    started=started, deadline=deadline, deadline_message=message,
                )
                return
        except Exception:
            answer = self._internal(scope)
        finally:
            request_id_var.reset(context_token)
        self.answer_now(exchange, answer, started, request_id)

    def answer_now(self, exchange: DirectExchange, answer: Answer, started: float, request_id: str) -> None:
        status, headers, body = answer
        headers.append((REQUEST_ID_HEADER, request_id.encode("ascii")))
        exchange.respond_now(status, headers, body)
        self._log(exchange.scope, status, started, request_id)

    def _log(self, scope: dict[str, Any], status: int, started: float, request_id: str) -> None:
        if self.access_log and access_logger.isEnabledFor(logging.INFO):
            log_access(scope, status, time.perf_counter() - started, request_id)

    def _admit(
        self,
        route: QueryRoute,
        exchange: DirectExchange,
        scope: dict[str, Any],
        authorization: bytes | None,
        body_size: int | None,
    ) -> Answer | None:
        """The front door's one admission step (``router.auth.admission``), before the body is read;
        ``body_size``: as declared, or None. None: admitted."""
        params = scope["path_params"] = route[0]
        try:
            # Query routes are only served on QueryProtocol connections (its direct_handler), which
            # remember the token they last verified.
            connection: QueryProtocol = exchange.protocol  # type: ignore[assignment]
            refusal = self.admission.admit(
                scope, authorization, body_size, route[2], params["name"], connection
            )
        except Exception:
            return self._internal(scope)
        if refusal is None:
            return None
        if refusal.close:
            exchange.keep_alive = False  # the body is not read (or the rest of it)
        return error_answer(refusal.error, scope["path"], refusal.headers)

    async def _forward(
        self,
        route: QueryRoute,
        exchange: DirectExchange,
        scope: dict[str, Any],
        started: float,
        body: bytes | None = None,
        first_choice: EntityKey | None = None,
    ) -> Answer | None:
        """Read the body (unless given), then the data plane's answer under the request timeout; None
        when the client left."""
        front_door = self.front_door
        task = None  # watched by the request timeout (with a front door)
        request_timeout_s = 0.0
        try:
            if body is None:
                body_timeout_s = None if front_door is None else front_door.settings.body_timeout_s
                body = await _read_body(exchange, self.body_limit, body_timeout_s)
            if front_door is not None:
                loop = exchange.loop  # the protocol's: asking asyncio for the running loop costs more
                task = asyncio.current_task(loop)
                assert task is not None
                request_timeout_s = front_door.settings.request_timeout_s
                self._deadlines.watch(task, loop.time() + request_timeout_s)
            try:
                response, entity = await self.dataplane.query(
                    scope, body, route[1], exchange.wait_disconnect,
                    started=started, first_choice=first_choice,
                )
            except asyncio.CancelledError:
                if task is None or task not in self._overdue or task.uncancel() > 0:
                    raise  # cancelled by someone else (shutdown), not by its deadline
                return error_answer(UpstreamTimeout(_took_longer(request_timeout_s)), scope["path"])
            finally:
                if task is not None:
                    self._deadlines.forget(task)
                    self._overdue.discard(task)
            return _answer_of(response, entity)
        except ClientGone:
            return None
        except ZeroserveError as error:
            if isinstance(error, PayloadTooLarge | RequestTimeout):
                exchange.keep_alive = False  # what is left of the body would be read as a request
            return error_answer(error, scope["path"])
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
        return error_answer(ZeroserveError(message), scope["path"])


@dataclass(slots=True, eq=False)
class ImmediateQuery:
    """One admitted query on the immediate path: the ``QueryCaller`` that ``DataPlane.query_at_once``
    reports to, from the upstream connection's callbacks (so nothing may escape from here)."""

    queries: GatewayQueries
    route: QueryRoute
    exchange: DirectExchange
    body: bytes
    started: float
    request_id: str
    entity: EntityKey | None = None  # the one drawn, when the query falls back to ``serve``

    def answered(self, response: UpstreamResponse, entity: EntityKey) -> None:
        self._answer(_answer_of(response, entity))

    def failed(self, error: ZeroserveError) -> None:
        self._answer(error_answer(error, self.exchange.scope["path"]))

    def fall_back(self, entity: EntityKey | None) -> None:
        self.entity = entity
        self.exchange.run_in_task(partial(self.queries.serve, self.route, resumed=self))

    def _answer(self, answer: Answer) -> None:
        try:
            self.queries.answer_now(self.exchange, answer, self.started, self.request_id)
        except Exception:
            context_token = request_id_var.set(self.request_id)
            try:
                log.exception("answering %s failed", self.exchange.scope.get("path"))
            finally:
                request_id_var.reset(context_token)
            self.exchange.abandon()


class QueryHandler(ImmediateHandler):
    """What ``QueryProtocol.direct_handler`` gives for a query route: called, the task path
    (``GatewayQueries.serve``); ``at_once``, the immediate path (``serve_at_once``)."""

    __slots__ = ("queries", "route")

    def __init__(self, queries: GatewayQueries, route: QueryRoute) -> None:
        self.queries = queries
        self.route = route

    def __call__(self, exchange: DirectExchange) -> Awaitable[None]:
        return self.queries.serve(self.route, exchange)

    def at_once(self, exchange: DirectExchange) -> None:
        self.queries.serve_at_once(self.route, exchange)


def _request_id_and_authorization(scope: dict[str, Any]) -> tuple[str, bytes | None]:
    """The request's id (now also in the scope) and its first ``Authorization`` header: one pass over
    the headers for both."""
    sent_id = authorization = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorization is None:
                authorization = value
        elif name == REQUEST_ID_HEADER and sent_id is None:
            sent_id = value
    request_id = scope[REQUEST_ID_SCOPE_KEY] = request_id_of(sent_id)
    return request_id, authorization


@lru_cache(maxsize=8)
def _took_longer(timeout_s: float) -> str:
    return f"The request took longer than {timeout_s:g} s."


class QueryProtocol(HeaderLimitedHttpToolsProtocol):
    """The header-limited httptools protocol, serving query routes through ``queries`` (see module doc)."""

    queries: GatewayQueries
    # The Authorization header last verified on this connection, and who it authenticated (_authenticate).
    verified_token: tuple[bytes, Principal] | None = None

    def direct_handler(self, path: str) -> DirectHandler | None:
        route = self.queries.match("POST", path)
        return None if route is None else QueryHandler(self.queries, route)


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
