"""The HTTP/1.1 protocol replicas (and the gateway, which extends it) serve with: uvicorn's httptools
protocol, with a response's head and body sent in one ``transport.write``, and with a way to answer a
request below ASGI (``DirectExchange``).

uvicorn writes a response's head and its body separately: two system calls per response, and over
loopback with ``TCP_NODELAY`` usually two segments, so the reader (the router's upstream client, or a
client) wakes up and reads twice. ``_CoalescingTransport`` holds back the head of a fixed-length response
and sends it with the first body write; on the router it was a sixth of the CPU of a routed request.

The hot routes (a replica's inference routes, the gateway's query routes) skip uvicorn's ASGI cycle
altogether: a scope, a task running the app, message dicts through ``receive``/``send`` and uvicorn's
checks of every response header are a large part of what a trivial request costs (measured on one core:
~30 µs per request for a do-nothing ASGI app under uvicorn, ~14 µs for a bare httptools protocol that
answers from a task; a replica spent ~10 µs less per request once its inference routes went direct). A
protocol names such requests in ``direct_handler``; for them ``on_headers_complete`` puts a
``DirectExchange`` where uvicorn would put its ``RequestResponseCycle`` and the handler answers with one
write. The
exchange offers the attributes the protocol reads and writes on a cycle (body, more_body,
message_event, disconnected, keep_alive, response_complete, run_asgi), so keep-alive, pipelining, flow
control, graceful shutdown and disconnect detection stay uvicorn's.

A handler may also answer at once, without a task (``ImmediateHandler.at_once``): the gateway's queries
do, when the request can go straight to a replica. Such an exchange starts when its whole body has
arrived (``on_message_complete``, usually inside the same ``data_received`` as the head) instead of on
the next loop turn; ``at_once`` then does all it can synchronously (it forwards the request, and
answers from the upstream connection's callback), or hands the exchange to a task
(``DirectExchange.run_in_task``). A body that has not arrived by the end of ``data_received`` (a large
body, ``Expect: 100-continue``) and a pipelined request get the task as before. On a 2-core machine
this took ~10 µs of router CPU off a routed request (a task, its coroutine frames and the futures it
awaits), and a request reaches its replica one loop turn sooner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from runtime.errors import PayloadTooLarge

log = logging.getLogger(__name__)

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Past this size a body is not copied behind its head: the two go out as one vectored write instead.
_COPY_LIMIT = 16 * 1024


class _CoalescingTransport:
    """The transport one request/response cycle writes to: holds back the head of a response that has a
    ``content-length`` and sends it with the first body write, so a plain response is one syscall.

    uvicorn's cycle writes exactly three kinds of data: an interim ``100 Continue``, then the response
    head (once), then body chunks. Chunked (streaming) responses and responses to HEAD (which get no
    body write at all) pass straight through, so their head is never delayed. A held head is also
    flushed by ``close()``, which the cycle calls when the app fails after starting its response."""

    __slots__ = ("_awaiting_head", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, method: str) -> None:
        self._transport = transport
        self._pending: bytes | None = None
        self._awaiting_head = method != "HEAD"

    def write(self, data: bytes) -> None:
        if self._pending is not None:
            head, self._pending = self._pending, None
            if len(data) <= _COPY_LIMIT:
                self._transport.write(head + data)
            else:
                self._transport.writelines((head, data))
        elif self._awaiting_head and data != _CONTINUE:
            self._awaiting_head = False
            # uvicorn lower-cases header names; without content-length the body is chunked.
            if b"\r\ncontent-length:" in data:
                self._pending = data
            else:
                self._transport.write(data)
        else:
            self._transport.write(data)

    def close(self) -> None:
        if self._pending is not None:
            head, self._pending = self._pending, None
            self._transport.write(head)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # Anything else a future uvicorn cycle may use goes to the real transport.
        return getattr(self._transport, name)


DirectHandler = Callable[["DirectExchange"], Awaitable[None]]


class ImmediateHandler:
    """A ``DirectHandler`` that can also serve a request whose body has fully arrived without a task:
    ``at_once(exchange)`` must answer it (``respond_now``, at once or from a callback) or hand it to
    ``exchange.run_in_task``. Calling the handler itself is the task path (body still arriving)."""

    __slots__ = ()

    def __call__(self, exchange: DirectExchange) -> Awaitable[None]:
        raise NotImplementedError

    def at_once(self, exchange: DirectExchange) -> None:
        raise NotImplementedError


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose request cycles write through a ``_CoalescingTransport``, which
    serves the ``POST`` requests that ``direct_handler`` claims below ASGI (``DirectExchange``), and
    whose keep-alive timeout costs no timer per request.

    uvicorn arms a loop timer for the keep-alive timeout after every response and cancels it when the
    next request arrives: about 2.3 µs per request under uvloop in a tight loop, several times that
    between other work. Here a connection notes when it went idle (``_idle_since``; None while a
    request is being received or served) and holds at most one timer: armed when the connection goes
    idle with none pending, and when it fires, closing the connection if it has been idle for the
    whole timeout, else re-armed for the end of the current idle spell (or left unarmed while busy,
    until the next response). A connection serving back-to-back requests arms one timer per keep-alive
    period instead of one per request; the timeout itself is uvicorn's, as before.
    """

    _idle_since: float | None = None
    _keep_alive_timer: asyncio.TimerHandle | None = None
    # An answer given with ``respond_now`` is waiting for the client to read (DirectExchange.respond_now).
    _draining = False

    def direct_handler(self, path: str) -> DirectHandler | None:
        """The handler that answers ``POST path`` below ASGI, or None to leave it to the ASGI app.
        Subclasses name their hot routes here (a replica's inference routes, the gateway's queries)."""
        return None

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
            # Percent-encoded paths (never sent by our router or the usual clients) take the ASGI way,
            # which decodes them.
            if b"%" not in raw_path:
                path = raw_path.decode("ascii")
                handler = self.direct_handler(path)
                if handler is not None:
                    self._start_direct(handler, path, raw_path, parsed.query or b"")
                    return
        previous = self.cycle
        super().on_headers_complete()
        # A new cycle (none for an upgrade) has not run yet: its task starts on the next loop turn.
        if self.cycle is not previous and self.cycle is not None:
            coalescing = _CoalescingTransport(self.transport, self.scope["method"])
            self.cycle.transport = cast(asyncio.Transport, coalescing)

    # Immediate handlers (see the module doc) -------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and type(cycle) is DirectExchange and cycle.deferred:
            # The body is still on its way (or a 100 Continue is expected): the task reads the rest.
            cycle.deferred = False
            self._start_asgi_task(cycle, self.app)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is DirectExchange and cycle.deferred:
            cycle.deferred = False
            cycle.more_body = False
            cast(ImmediateHandler, cycle.handler).at_once(cycle)
            return
        super().on_message_complete()

    # Keep-alive (see the class docstring) ---------------------------------------------------------

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this as data arrives (and on connection loss): the connection is busy.
        self._idle_since = None

    def on_response_complete(self) -> None:
        # uvicorn's, but for the keep-alive timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        # No need to mark the connection busy: the request's data arriving did (_unset_keepalive...).
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        now = self.loop.time()
        self._idle_since = now
        if self._keep_alive_timer is None:
            self._keep_alive_timer = self.loop.call_at(now + self.timeout_keep_alive, self._keep_alive_due)

    def _keep_alive_due(self) -> None:
        self._keep_alive_timer = None
        idle_since = self._idle_since
        if idle_since is None or self.transport.is_closing():
            return  # busy: the next response arms the timer again
        due = idle_since + self.timeout_keep_alive
        # A loop timer may fire up to a millisecond early (libuv counts milliseconds).
        if self.loop.time() + 0.001 >= due:
            self.timeout_keep_alive_handler()
        else:
            self._keep_alive_timer = self.loop.call_at(due, self._keep_alive_due)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._keep_alive_timer is not None:
            self._keep_alive_timer.cancel()
            self._keep_alive_timer = None
        super().connection_lost(exc)

    def _start_direct(self, handler: DirectHandler, path: str, raw_path: bytes, query: bytes) -> None:
        """Serve the request whose head just ended with a ``DirectExchange`` instead of an ASGI cycle;
        its scope is filled in as uvicorn fills it."""
        scope = cast(dict[str, Any], self.scope)
        scope["method"] = "POST"
        http_version = self.parser.get_http_version()
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = query
        exchange = DirectExchange(
            scope,
            handler,
            self,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
        )
        existing = self.cycle
        # uvicorn types its cycle attribute as its own class; the exchange offers what the protocol uses.
        self.cycle = cast(Any, exchange)
        if (existing is None or existing.response_complete) and not self._draining:
            if isinstance(handler, ImmediateHandler):
                exchange.deferred = True  # started when the body is complete (see the module doc)
            else:
                self._start_asgi_task(self.cycle, self.app)
        else:
            # A pipelined request waits for the one before it, as uvicorn's own cycles do.
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))


_joined_from: list[tuple[bytes, bytes]] | None = None
_joined_lines = b""


def _joined(headers: list[tuple[bytes, bytes]]) -> bytes:
    """``headers`` as header lines. uvicorn replaces its list of default headers (a fresh date) once a
    second, so the lines are made once per list, not once per response."""
    global _joined_from, _joined_lines
    if headers is not _joined_from:
        _joined_lines = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
        _joined_from = headers
    return _joined_lines


async def _complete_when_drained(exchange: DirectExchange) -> None:
    """Hand the connection back once an answer given with ``respond_now`` has drained."""
    try:
        await exchange.flow.drain()
    finally:
        exchange.protocol._draining = False
    exchange.protocol.on_response_complete()  # resumes reading, starts a pipelined request


class ClientDisconnected(Exception):
    """The client closed the connection before the whole request body arrived."""


class DirectExchange:
    """One request and its answer, served by ``handler`` where uvicorn would run its ASGI cycle."""

    __slots__ = (
        "body", "default_headers", "deferred", "disconnected", "flow", "handler", "keep_alive", "loop",
        "message_event", "more_body", "protocol", "response_complete", "scope", "transport",
        "waiting_for_100_continue",
    )

    def __init__(
        self,
        scope: dict[str, Any],
        handler: DirectHandler,
        protocol: CoalescingHttpToolsProtocol,
        *,
        keep_alive: bool,
    ) -> None:
        self.scope = scope
        self.handler = handler
        self.protocol = protocol
        # The protocol's, kept here because each request reads them several times.
        self.loop = protocol.loop
        self.transport = protocol.transport
        self.flow: FlowControl = protocol.flow
        self.default_headers = _joined(protocol.server_state.default_headers)  # date, server
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = protocol.expect_100_continue
        self.message_event = asyncio.Event()
        # What the protocol's parser callbacks fill in (``on_body``, ``on_message_complete``,
        # ``connection_lost``), as on uvicorn's cycle.
        self.body = bytearray()
        self.more_body = True
        self.disconnected = False
        self.response_complete = False
        # Set while an ``ImmediateHandler``'s request waits for the rest of its body to start.
        self.deferred = False

    async def run_asgi(self, app: object) -> None:
        """What the protocol runs as the request's task (the name is the protocol's; ``app`` is unused)."""
        try:
            await self.handler(self)
        except BaseException as exc:  # a request task ends quietly, as uvicorn's do
            # Handlers answer every error themselves; only cancellation (shutdown) or a bug lands here.
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("request task failed")
            self.abandon()

    def abandon(self) -> None:
        """After a failure that left the request unanswered: close the connection (the client must not
        wait on it); nothing when the answer went out."""
        if not self.response_complete:
            self.response_complete = True
            self.transport.close()

    async def read_body(self, limit: int, timeout_s: float | None) -> bytes:
        """The whole request body. Raises ``PayloadTooLarge`` past ``limit`` bytes, ``TimeoutError`` when a
        chunk takes over ``timeout_s`` and ``ClientDisconnected`` when the client left. Usually the body
        came in with the head and nothing waits."""
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(_CONTINUE)
            self.waiting_for_100_continue = False
        while self.more_body and not self.disconnected:
            if len(self.body) > limit:
                raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
            # The protocol pauses reading past its high-water mark until the body is consumed.
            self.flow.resume_reading()
            self.message_event.clear()
            if timeout_s is None:
                await self.message_event.wait()
            else:
                async with asyncio.timeout(timeout_s):
                    await self.message_event.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if len(self.body) > limit:
            raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
        return bytes(self.body)

    async def wait_disconnect(self) -> dict[str, str]:
        """Returns once the client has gone."""
        while not self.disconnected:
            self.message_event.clear()
            await self.message_event.wait()
        return {"type": "http.disconnect"}

    def run_in_task(self, handler: DirectHandler) -> None:
        """Serve the rest of this request in a task running ``handler``, tracked by the server as
        uvicorn's own request tasks are (graceful shutdown waits for it, or cancels it)."""
        self.handler = handler
        self.protocol._start_asgi_task(cast(Any, self), self.protocol.app)

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Write the answer (head and body in one write) and hand the connection back to the protocol.
        ``headers`` must carry the body's ``content-length``."""
        if self._write(status, headers, body):
            self.message_event.set()
            self.protocol.on_response_complete()
            if self.flow.write_paused and not self.disconnected:
                await self.flow.drain()

    def respond_now(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """``respond`` without awaiting: for ``ImmediateHandler.at_once``. When the client is not reading
        (the transport's buffer is over its high-water mark), the connection reads and serves no
        further request until the answers have drained."""
        if self._write(status, headers, body):
            if self.flow.write_paused and not self.disconnected:
                self.protocol._draining = True
                self.flow.pause_reading()
                self.run_in_task(_complete_when_drained)
            else:
                self.protocol.on_response_complete()

    def _write(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """Send the answer; False when one was sent already."""
        if self.response_complete:
            return False
        self.response_complete = True
        if not self.disconnected:
            line = STATUS_LINE.get(status) or b"HTTP/1.1 %d \r\n" % status
            parts = [line, self.default_headers]
            for name, value in headers:
                parts += (name, b": ", value, b"\r\n")
            if not self.keep_alive:
                parts.append(b"connection: close\r\n")
            parts += (b"\r\n", body)
            if len(body) <= _COPY_LIMIT:
                self.transport.write(b"".join(parts))
            else:
                body_part = parts.pop()
                self.transport.writelines((b"".join(parts), body_part))
        if not self.keep_alive:
            self.transport.close()
        return True
