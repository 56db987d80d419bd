"""The HTTP/1.1 protocol replicas (and the gateway, which extends it) serve with: uvicorn's httptools
protocol, with a response's head and body sent in one ``transport.write``.

uvicorn writes a response's head and its body separately: two system calls per response, and over
loopback with ``TCP_NODELAY`` usually two segments, so the reader (the router's upstream client, or a
client) wakes up and reads twice. ``_CoalescingTransport`` holds back the head of a fixed-length response
and sends it with the first body write; on the router it was a sixth of the CPU of a routed request.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose request cycles write through a ``_CoalescingTransport``."""

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        # A new cycle (none for an upgrade) has not run yet: its task starts on the next loop turn.
        if self.cycle is not previous and self.cycle is not None:
            coalescing = _CoalescingTransport(self.transport, self.scope["method"])
            self.cycle.transport = cast(asyncio.Transport, coalescing)
