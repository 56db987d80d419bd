"""The upstream HTTP/1.1 client: pooled keep-alive connections to replicas, on the hot path.

A deliberately small client — an ``asyncio.Protocol`` per connection with ``httptools`` parsing the
response — because every inference request pays for it twice (request out, response back). Measured
against a runtime replica on a 2-core machine (``python -m benchmarks.router_overhead`` prints the
table): c=1 p50 0.26 ms vs aiohttp 0.53 ms vs httpx 2.2 ms; c=16 about 2.5x aiohttp's and 14x httpx's
requests/s. It speaks only what replicas speak: one request at a time per connection, bodies buffered
(inference payloads are bounded by the gateway's body limit), ``Content-Length``, chunked or
close-delimited responses.

Errors say whether a retry is safe: ``UpstreamConnectError`` means the request never reached a replica
(refused, no such socket, a pooled connection already closed when it was to be written), so it can go
to another replica; ``UpstreamLost`` means the replica had the request and closed the connection
without a byte of answer — it went away holding it, and the request may be what killed it (a model that
crashes on one input), so it is not sent to another replica to do the same there;
``UpstreamProtocolError`` means it broke mid-response. Replicas keep idle connections open longer than
this pool does (75 s against 4 s), so a pooled connection is never closed under a request by a
replica that is alive.

A replica on this machine that listens on a Unix socket (``ReplicaInfo.unix_socket``) is reached
there: a request and its answer over a Unix socket cost about half the system time of loopback TCP,
at both ends, and the router shares its cores with such replicas. If the socket file is gone while the
replica may still run (a tmp cleaner removed it), the replica is reached over TCP from then on, so a
healthy replica never becomes unreachable because of a file.

Upstream timeouts cost no timer per request (a loop timer is several microseconds under uvloop, an
``asyncio.timeout`` twice that): the pool's ``Deadlines`` (router.dataplane.deadlines) holds the
deadline of each exchange in flight under one timer, and fails those that are overdue.

``UpstreamPool.try_send`` is the callback form of ``request`` for the gateway's immediate query path
(``runtime.http.ImmediateHandler``): it sends over an idle pooled connection at once and reports the
answer, or the error, to a function called from the connection's own callbacks, with no future and no
task; with no idle connection at hand it sends nothing and the caller takes the coroutine path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, cast

import httptools

from router.dataplane.deadlines import Deadlines
from router.errors import UpstreamTimeout

Headers = list[tuple[bytes, bytes]]

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones this client or the router's server sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
    }
)


logger = logging.getLogger(__name__)

# Response headers that delimit the body; a response with neither ends when the connection does.
_DELIMITING = frozenset({b"content-length", b"transfer-encoding"})


class UpstreamConnectError(ConnectionError):
    """No response byte came back: the request may be retried on another replica."""


class UpstreamLost(ConnectionError):
    """The replica had the request and closed the connection before any byte of answer: not retried
    elsewhere (see the module docstring)."""


class _SocketGone(UpstreamConnectError):
    """A replica's Unix socket file does not exist (as opposed to existing with nobody listening)."""


class UpstreamProtocolError(ConnectionError):
    """The replica broke the response off (or sent garbage) after it started answering."""


class UpstreamResponse(NamedTuple):
    status: int
    headers: Headers  # as received, names lower-cased
    body: bytes


# Called once with the response, or with None and the error (see ``UpstreamPool.try_send``).
OnAnswer = Callable[[UpstreamResponse | None, Exception | None], None]


@dataclass(slots=True, eq=False)
class _Callback:
    """Where a connection reports the end of an exchange started by ``UpstreamPool.try_send``: the three
    methods of a future that ``_Connection`` uses. It settles the pool's side (the deadline; the
    connection back to the idle list, or closed after an error) before calling ``on_answer``."""

    pool: UpstreamPool
    key: tuple[str, int] | str
    connection: _Connection
    on_answer: OnAnswer
    _done: bool = False

    def done(self) -> bool:
        return self._done

    def set_result(self, response: UpstreamResponse) -> None:
        self._done = True
        self.pool._deadlines.forget(self.connection)
        self.pool._put_idle(self.key, self.connection)
        self.on_answer(response, None)

    def set_exception(self, exc: Exception) -> None:
        self._done = True
        self.pool._deadlines.forget(self.connection)
        self.connection.close()  # mid-exchange: the connection's state is unknown, never reuse it
        self.on_answer(None, exc)


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_chunks_until_eof",
        "_delimited",
        "_headers",
        "_keep_alive",
        "_parser",
        "_waiter",
        "closed",
        "idle_since",
        "received_any",
        "timeout_message",
        "timeout_s",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | _Callback | None = None
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._chunks_until_eof = False
        self._delimited = False
        self._keep_alive = False
        self.closed = False
        self.received_any = False
        self.idle_since = 0.0
        # The exchange in flight's timeout, for the message when the pool's deadline fails it (or the
        # message itself, when the deadline is the caller's rather than the model's).
        self.timeout_s = 0.0
        self.timeout_message: str | None = None

    # asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"malformed response from replica: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._chunks_until_eof:
            # A response delimited by the end of the connection (no length, not chunked).
            self._complete()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.received_any:
            self._fail(UpstreamProtocolError("replica closed the connection mid-response"))
        else:
            cause = f" ({exc})" if exc is not None else ""
            self._fail(UpstreamLost(f"the replica closed the connection while serving the request, without"
                                    f" answering: it stopped or crashed{cause}"))

    # httptools callbacks ---------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _DELIMITING:
            self._delimited = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # Read now: once the message is complete the parser resets and forgets it.
        self._keep_alive = self._parser.should_keep_alive()
        self._chunks_until_eof = not self._delimited

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete()

    # the client side -------------------------------------------------------------------------------
    def send(self, data: bytes) -> asyncio.Future[UpstreamResponse]:
        """Write one request and return the future of its response."""
        waiter: asyncio.Future[UpstreamResponse] = asyncio.get_running_loop().create_future()
        self._start(data, waiter)
        return waiter

    def send_then(self, data: bytes, callback: _Callback) -> None:
        """Write one request; ``callback`` gets its response or error (from this protocol's callbacks)."""
        self._start(data, callback)

    def _start(self, data: bytes, waiter: asyncio.Future[UpstreamResponse] | _Callback) -> None:
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            raise UpstreamConnectError("pooled connection is closed")
        self._headers = []
        self._body = []
        self._keep_alive = False
        self._delimited = False  # a Content-Length or Transfer-Encoding header came (on_header)
        self.received_any = False
        self._waiter = waiter
        transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def time_out(self) -> None:
        """The exchange in flight passed its deadline: fail it (the pool then closes the connection)."""
        message = self.timeout_message or f"The model did not answer within {self.timeout_s:g} s."
        self._fail(UpstreamTimeout(message))

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep_alive and not self._chunks_until_eof

    def _complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self._waiter = None
        status = self._parser.get_status_code()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        waiter.set_result(UpstreamResponse(status, self._headers, body))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_exception(exc)


class UpstreamPool:
    """Keep-alive connections per replica address; one request per connection at a time."""

    def __init__(
        self,
        *,
        max_idle_per_host: int = 64,
        idle_timeout_s: float = 4.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        # Replicas run uvicorn, whose keep-alive timeout is 5 s: retire idle connections before that.
        self._idle_timeout_s = idle_timeout_s
        self._max_idle_per_host = max_idle_per_host
        self._connect_timeout_s = connect_timeout_s
        # Idle connections by replica address: (host, port), or the replica's Unix socket path.
        self._idle: dict[tuple[str, int] | str, list[_Connection]] = {}
        # Unix sockets found missing: their replicas are reached over TCP from then on.
        self._gone_sockets: set[str] = set()
        self._closed = False
        # The deadlines of the connections with an exchange in flight.
        self._deadlines: Deadlines[_Connection] = Deadlines(_Connection.time_out)
        self._swept_at = time.monotonic()

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        *,
        timeout_s: float,
        unix_socket: str | None = None,
    ) -> UpstreamResponse:
        """Send one request; ``headers`` must not contain hop-by-hop ones (see ``HOP_BY_HOP``).

        With ``unix_socket`` the request goes over that socket (``host:port`` is still its Host)."""
        if self._closed:
            raise UpstreamConnectError("upstream pool is closed")
        data = _request_bytes(host, port, method, target, headers, body)
        key = self._key(host, port, unix_socket)
        deadline = asyncio.get_running_loop().time() + timeout_s
        connection = self._take_idle(key)
        lost: UpstreamLost | None = None
        if connection is not None:
            try:
                response = await self._send(connection, data, deadline, timeout_s)
            except UpstreamConnectError:
                # Closed before the request could be written: nothing was delivered; a fresh one decides.
                connection = None
            except UpstreamLost as exc:
                # A keep-alive close that crossed this request (an HTTP server may close an idle
                # connection as a request is written), or the replica went away holding it: a fresh
                # connection decides — if none can be opened, the replica is gone and so is the request.
                lost = exc
                connection = None
            else:
                self._put_idle(key, connection)
                return response
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    connection = await self._connect(key)
                except _SocketGone as exc:
                    self._gone_sockets.add(cast(str, key))
                    logger.warning("%s; reaching that replica over TCP at %s:%d from now on", exc, host, port)
                    key = (host, port)
                    connection = await self._connect(key)
        except TimeoutError:
            raise UpstreamTimeout(f"The model did not answer within {timeout_s:g} s.") from None
        except UpstreamConnectError:
            if lost is not None:
                raise lost from None
            raise
        response = await self._send(connection, data, deadline, timeout_s)
        self._put_idle(key, connection)
        return response

    def try_send(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        *,
        deadline: float,
        timeout_s: float,
        on_answer: OnAnswer,
        unix_socket: str | None = None,
        timeout_message: str | None = None,
    ) -> bool:
        """``request`` without awaiting: send over an idle pooled connection now and call
        ``on_answer(response, None)`` or ``on_answer(None, error)`` when the exchange ends (the errors
        ``request`` raises; ``UpstreamConnectError`` when the replica had closed the idle connection).
        False, with nothing sent, when no idle connection is at hand (``request`` opens one).

        ``deadline`` is in loop time; when it passes, the error is ``UpstreamTimeout`` with
        ``timeout_message`` (by default, that the model did not answer within ``timeout_s``)."""
        if self._closed:
            return False
        key = self._key(host, port, unix_socket)
        connection = self._take_idle(key)
        if connection is None:
            return False
        connection.timeout_s = timeout_s
        connection.timeout_message = timeout_message
        data = _request_bytes(host, port, method, target, headers, body)
        try:
            connection.send_then(data, _Callback(self, key, connection, on_answer))
        except UpstreamConnectError:
            connection.close()
            return False
        self._deadlines.watch(connection, deadline)
        return True

    def close_idle(self, host: str, port: int, unix_socket: str | None = None) -> None:
        """Close the idle connections to one replica: it has drained, nothing more will be sent to it,
        and its server waits for open connections while it shuts down (runtime.app.ReplicaProtocol)."""
        for key in ((host, port), unix_socket):
            if key is not None:
                for connection in self._idle.pop(key, ()):
                    connection.close()

    def _key(self, host: str, port: int, unix_socket: str | None) -> tuple[str, int] | str:
        if unix_socket is not None and unix_socket not in self._gone_sockets:
            return unix_socket
        return (host, port)

    async def _send(
        self, connection: _Connection, data: bytes, deadline: float, timeout_s: float
    ) -> UpstreamResponse:
        connection.timeout_s = timeout_s
        connection.timeout_message = None
        deadlines = self._deadlines
        deadlines.watch(connection, deadline)
        try:
            return await connection.send(data)
        except BaseException:
            connection.close()  # mid-exchange: the connection's state is unknown, never reuse it
            raise
        finally:
            deadlines.forget(connection)

    async def _connect(self, key: tuple[str, int] | str) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if isinstance(key, str):
                    _, connection = await loop.create_unix_connection(_Connection, key)
                else:
                    _, connection = await loop.create_connection(_Connection, key[0], key[1])
        except (OSError, TimeoutError) as exc:
            where = key if isinstance(key, str) else f"{key[0]}:{key[1]}"
            error = _SocketGone if isinstance(exc, FileNotFoundError) else UpstreamConnectError
            raise error(f"cannot connect to replica at {where}: {exc}") from exc
        return connection

    def _take_idle(self, key: tuple[str, int] | str) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        expired_before = time.monotonic() - self._idle_timeout_s
        while idle:
            connection = idle.pop()  # most recently used first: its peer is least likely to close it
            if not connection.closed and connection.idle_since > expired_before:
                return connection
            connection.close()
        return None

    def _put_idle(self, key: tuple[str, int] | str, connection: _Connection) -> None:
        if self._closed or not connection.reusable:
            connection.close()
            return
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self._max_idle_per_host:
            connection.close()
            return
        connection.idle_since = now = time.monotonic()
        idle.append(connection)
        if now - self._swept_at > self._idle_timeout_s:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Drop the idle connections that closed or expired, and the addresses left with none: a replica
        that scaled away is never asked for again, and its closed connections (each with its parser and
        buffers) stayed listed under its address — found by the soak, 814 cold starts in 10 minutes."""
        self._swept_at = now
        expired_before = now - self._idle_timeout_s
        for key in list(self._idle):
            kept = []
            for connection in self._idle[key]:
                if connection.closed or connection.idle_since <= expired_before:
                    connection.close()
                else:
                    kept.append(connection)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]

    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def aclose(self) -> None:
        self._closed = True
        if not self._deadlines:  # exchanges in flight keep their deadlines
            self._deadlines.close()
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks


def _request_bytes(host: str, port: int, method: str, target: str, headers: Headers, body: bytes) -> bytes:
    head = [f"{method} {target} HTTP/1.1\r\nhost: {host}:{port}\r\n".encode("latin-1")]
    if body or method in ("POST", "PUT", "PATCH"):
        head.append(b"content-length: %d\r\n" % len(body))
    for name, value in headers:
        head.append(b"%s: %s\r\n" % (name, value))
    head.append(b"\r\n")
    head.append(body)
    return b"".join(head)


def forwardable(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes] = HOP_BY_HOP) -> Headers:
    """The end-to-end headers of a message (names must already be lower-case, as ASGI gives them)."""
    return [(name, value) for name, value in headers if name not in drop]
