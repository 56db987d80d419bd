"""The replica's HTTP protocol: a fixed-length response leaves in one write, and nothing else is held.

The unit tests drive ``_CoalescingTransport`` with a recording transport. The protocol tests run
uvicorn's real httptools protocol on a real event loop; its transport is a recording stand-in (the
thing under test is which bytes go to ``transport.write`` and how many calls, which a socket hides)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from runtime.http import CoalescingHttpToolsProtocol, DirectExchange, ImmediateHandler, _CoalescingTransport
from tests._uvicorn import uvicorn_server

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


class RecordingTransport:
    """Records each write as one entry; what uvicorn's protocol and cycle call on a transport."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.vectored = 0  # writes given as parts (writelines), not joined by the caller
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: Iterable[bytes]) -> None:
        self.writes.append(b"".join(parts))
        self.vectored += 1

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: object) -> None:
        pass


def coalescing(method: str = "POST") -> tuple[_CoalescingTransport, RecordingTransport]:
    recording = RecordingTransport()
    return _CoalescingTransport(cast(asyncio.Transport, recording), method), recording


def test_fixed_length_head_is_sent_with_the_body() -> None:
    transport, recording = coalescing()
    transport.write(HEAD)
    assert recording.writes == []
    transport.write(b"{}")
    assert recording.writes == [HEAD + b"{}"]
    assert recording.vectored == 0  # a small body is joined to its head: one plain write


def test_a_large_body_goes_with_its_head_without_being_copied_behind_it() -> None:
    transport, recording = coalescing()
    body = b"x" * (1024 * 1024)
    transport.write(HEAD)
    transport.write(body)
    assert recording.writes == [HEAD + body]  # one call, head first
    assert recording.vectored == 1


def test_later_body_writes_pass_straight_through() -> None:
    transport, recording = coalescing()
    transport.write(HEAD)
    transport.write(b"{")
    transport.write(b"}")
    assert recording.writes == [HEAD + b"{", b"}"]


def test_chunked_head_is_not_held() -> None:
    transport, recording = coalescing()
    transport.write(CHUNKED_HEAD)
    assert recording.writes == [CHUNKED_HEAD]


def test_head_request_gets_its_head_at_once() -> None:
    # A HEAD response has a content-length but never a body write: holding its head would hang it.
    transport, recording = coalescing("HEAD")
    transport.write(HEAD)
    assert recording.writes == [HEAD]


def test_interim_continue_passes_and_the_real_head_is_still_held() -> None:
    transport, recording = coalescing()
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    transport.write(HEAD)
    assert recording.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    transport.write(b"{}")
    assert recording.writes[-1] == HEAD + b"{}"


def test_close_flushes_a_held_head() -> None:
    transport, recording = coalescing()
    transport.write(HEAD)
    transport.close()
    assert recording.writes == [HEAD]
    assert recording.closed
    assert transport.is_closing()


def test_other_attributes_reach_the_real_transport() -> None:
    transport, _ = coalescing()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 50000)


App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def fixed(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"one", "more_body": True})
    await send({"type": "http.response.body", "body": b"two"})


async def failing_after_start(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
    raise RuntimeError("the model failed mid-answer")


async def exchange(app: App, requests: bytes) -> RecordingTransport:
    """Feeds raw request bytes to one protocol instance and lets its request cycles run to the end."""
    config = uvicorn.Config(cast(Any, app), http=CoalescingHttpToolsProtocol, lifespan="off",
                            access_log=False, log_level="critical")
    config.load()
    protocol = CoalescingHttpToolsProtocol(config, ServerState(), {})
    recording = RecordingTransport()
    protocol.connection_made(cast(asyncio.Transport, recording))
    protocol.data_received(requests)
    # The cycles are tasks of this loop; a few turns finish them (no I/O is involved).
    for _ in range(20):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return recording


def post(path: str = "/invocations", body: bytes = b"{}", extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (path.encode(), len(body), extra, body))


async def test_each_response_of_a_keep_alive_connection_is_one_write() -> None:
    recording = await exchange(fixed, post() + post())
    assert len(recording.writes) == 2
    for write in recording.writes:
        head, _, body = write.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 2" in head
        assert body == b"{}"


async def test_streaming_response_head_leaves_before_its_body() -> None:
    recording = await exchange(streaming, post())
    assert recording.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert recording.writes[0].endswith(b"\r\n\r\n")
    assert b"".join(recording.writes[1:]) == b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"


async def test_expect_continue_is_answered_before_the_body_is_read() -> None:
    recording = await exchange(fixed, post(extra=b"expect: 100-continue\r\n"))
    assert recording.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert recording.writes[1].endswith(b"\r\n\r\n{}")


async def test_a_held_head_is_not_lost_when_the_app_fails_after_starting() -> None:
    recording = await exchange(failing_after_start, post())
    # The client gets the head that was started and a closed connection, never silence.
    assert recording.writes and recording.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert recording.closed


async def test_a_large_response_arrives_whole_over_a_real_socket() -> None:
    """uvloop's transport (the one replicas run on) takes the vectored write of head and a large body."""
    import uvloop

    body = bytes(range(256)) * 4096  # 1 MiB

    async def large(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    def serve_once() -> bytes:
        async def main() -> bytes:
            config = uvicorn.Config(cast(Any, large), http=CoalescingHttpToolsProtocol, lifespan="off",
                                    access_log=False, log_level="critical")
            config.load()
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                lambda: CoalescingHttpToolsProtocol(config, ServerState(), {}), "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post(body=b"{}"))
            head = await reader.readuntil(b"\r\n\r\n")
            received = await reader.readexactly(len(body))
            writer.close()
            server.close()
            assert head.startswith(b"HTTP/1.1 200 OK")
            return received

        return uvloop.run(main())

    assert await asyncio.to_thread(serve_once) == body


# Keep-alive: the idle timeout without a loop timer per request ------------------------------------


class CountingLoop:
    """The running loop, counting the timers asked of it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timers = 0

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        self.timers += 1
        return self.loop.call_later(delay, callback, *args)

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        self.timers += 1
        return self.loop.call_at(when, callback, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


async def test_back_to_back_requests_on_a_keep_alive_connection_arm_one_timer() -> None:
    config = uvicorn.Config(cast(Any, fixed), http=CoalescingHttpToolsProtocol, lifespan="off",
                            access_log=False, log_level="critical")
    config.load()
    protocol = CoalescingHttpToolsProtocol(config, ServerState(), {})
    counting = CountingLoop(asyncio.get_running_loop())
    protocol.loop = cast(Any, counting)
    recording = RecordingTransport()
    protocol.connection_made(cast(asyncio.Transport, recording))
    for _ in range(50):
        protocol.data_received(post())
        for _ in range(5):
            await asyncio.sleep(0)
    assert len(recording.writes) == 50 and not recording.closed
    # uvicorn's own protocol arms (and cancels) a timer after every response: 50 here.
    assert counting.timers == 1
    protocol.connection_lost(None)


async def _answered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(post())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"{}"


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout_from_its_last_answer() -> None:
    timeout_s = 0.4
    server = uvicorn_server(fixed, http=CoalescingHttpToolsProtocol, timeout_keep_alive=timeout_s)
    async with server as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            # Busy for three timeouts, never idle for one: the connection stays open throughout.
            loop = asyncio.get_running_loop()
            started = loop.time()
            while loop.time() - started < 3 * timeout_s:
                await _answered(reader, writer)
                await asyncio.sleep(timeout_s / 4)
            await _answered(reader, writer)
            idle_from = loop.time()
            # Then idle: closed one timeout after the last answer, not after the first.
            assert await asyncio.wait_for(reader.read(), 5) == b""
            idle_for = loop.time() - idle_from
            assert timeout_s - 0.05 <= idle_for < timeout_s + 1.0
        finally:
            writer.close()


# Immediate handlers: answered without a task when the whole body came with the head --------------


class Echo(ImmediateHandler):
    """Echoes the body; records which path served it. ``at_once`` answers at once, a moment later
    (body ``later``), or hands the request to its task path (body ``task``)."""

    __slots__ = ("served",)

    def __init__(self, served: list[tuple[str, bytes]]) -> None:
        self.served = served

    def __call__(self, exchange: DirectExchange) -> Awaitable[None]:
        return self._serve(exchange)

    async def _serve(self, exchange: DirectExchange) -> None:
        body = await exchange.read_body(1 << 20, 5.0)
        self.served.append(("task", body))
        await exchange.respond(200, [(b"content-length", b"%d" % len(body))], body)

    def at_once(self, exchange: DirectExchange) -> None:
        body = bytes(exchange.body)
        self.served.append(("at_once", body))
        headers = [(b"content-length", b"%d" % len(body))]
        if body == b"later":
            exchange.loop.call_later(0.02, exchange.respond_now, 200, headers, body)
        elif body == b"task":
            exchange.run_in_task(self)
        else:
            exchange.respond_now(200, headers, body)


class ImmediateProtocol(CoalescingHttpToolsProtocol):
    served: list[tuple[str, bytes]]

    def direct_handler(self, path: str) -> Echo | None:
        return Echo(self.served) if path == "/invocations" else None


def immediate_protocol() -> tuple[ImmediateProtocol, RecordingTransport, list[tuple[str, bytes]]]:
    config = uvicorn.Config(cast(Any, fixed), http=ImmediateProtocol, lifespan="off",
                            access_log=False, log_level="critical")
    config.load()
    protocol = ImmediateProtocol(config, ServerState(), {})
    protocol.served = []
    recording = RecordingTransport()
    protocol.connection_made(cast(asyncio.Transport, recording))
    return protocol, recording, protocol.served


async def _turns(count: int = 20) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def _bodies(recording: RecordingTransport) -> list[bytes]:
    return [write.partition(b"\r\n\r\n")[2] for write in recording.writes]


async def test_a_request_that_arrives_whole_is_answered_before_the_loop_turns() -> None:
    protocol, recording, served = immediate_protocol()
    protocol.data_received(post(body=b"one"))
    # Answered inside data_received: no task was created, no loop turn was needed.
    assert served == [("at_once", b"one")] and _bodies(recording) == [b"one"]
    assert not protocol.tasks
    protocol.data_received(post(body=b"two"))  # and the keep-alive connection takes the next one
    assert _bodies(recording) == [b"one", b"two"] and not recording.closed
    protocol.connection_lost(None)


async def test_a_body_still_arriving_and_an_expected_continue_take_the_task_path() -> None:
    protocol, recording, served = immediate_protocol()
    request = post(body=b"split")
    protocol.data_received(request[:-3])
    await _turns()
    protocol.data_received(request[-3:])
    await _turns()
    asking = post(body=b"asked", extra=b"expect: 100-continue\r\n")
    protocol.data_received(asking[:-5])  # the client waits for the 100 before it sends the body
    await _turns()
    protocol.data_received(asking[-5:])
    await _turns()
    assert served == [("task", b"split"), ("task", b"asked")]
    assert recording.writes[1] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert _bodies(recording) == [b"split", b"", b"asked"]
    protocol.connection_lost(None)


async def test_pipelined_requests_behind_an_immediate_one_are_answered_in_order() -> None:
    protocol, recording, served = immediate_protocol()
    protocol.data_received(post(body=b"later") + post(body=b"second") + post(body=b"third"))
    assert recording.writes == []  # the first answers a moment later; the others wait their turn
    await asyncio.sleep(0.1)
    await _turns()
    assert _bodies(recording) == [b"later", b"second", b"third"]
    assert served == [("at_once", b"later"), ("task", b"second"), ("task", b"third")]
    protocol.connection_lost(None)


async def test_an_immediate_handler_can_hand_the_request_to_a_task() -> None:
    protocol, recording, served = immediate_protocol()
    protocol.data_received(post(body=b"task"))
    assert recording.writes == []
    await _turns()
    assert served == [("at_once", b"task"), ("task", b"task")] and _bodies(recording) == [b"task"]
    protocol.connection_lost(None)


async def test_a_client_not_reading_holds_the_next_request_until_its_answers_drain() -> None:
    protocol, recording, served = immediate_protocol()
    protocol.pause_writing()  # the transport's buffer is over its high-water mark
    protocol.data_received(post(body=b"first") + post(body=b"second"))
    await _turns()
    assert _bodies(recording) == [b"first"]  # written, but the connection takes no more meanwhile
    protocol.resume_writing()
    await _turns()
    assert _bodies(recording) == [b"first", b"second"]
    assert served == [("at_once", b"first"), ("task", b"second")]
    protocol.connection_lost(None)
