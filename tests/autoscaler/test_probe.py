"""The one readiness probe (``autoscaler.probe``), against real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from autoscaler.probe import READY_PATH, ReadinessProbe


@contextlib.asynccontextmanager
async def answering(head: bytes | None) -> AsyncIterator[str]:
    """A server that answers every request with ``head`` (no body), or never answers (None); its URL.
    It also records the request lines it saw."""
    seen: list[bytes] = []
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            request = await reader.readuntil(b"\r\n\r\n")
            seen.append(request.split(b"\r\n", 1)[0])
            if head is None:
                await asyncio.sleep(10)
            else:
                writer.write(head + b"\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        assert all(line == b"GET " + READY_PATH.encode() + b" HTTP/1.1" for line in seen), seen
    finally:
        server.close()
        for task in handlers:  # the one that never answers is still waiting: end it inside the loop
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def test_ready_only_for_a_200_in_time() -> None:
    probe = ReadinessProbe(timeout_s=0.3)
    try:
        async with answering(b"HTTP/1.1 200 OK") as url:
            assert await probe(url)
        async with answering(b"HTTP/1.1 503 Service Unavailable") as url:
            assert not await probe(url)
        async with answering(None) as url:
            started = asyncio.get_running_loop().time()
            assert not await probe(url)
            assert asyncio.get_running_loop().time() - started < 2.0  # the timeout, not a hang
        with socket.socket() as closed:  # bound, never listening: refused
            closed.bind(("127.0.0.1", 0))
            assert not await probe(f"http://127.0.0.1:{closed.getsockname()[1]}")
    finally:
        await probe.aclose()
    assert not probe.opened
