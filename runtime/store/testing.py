"""Test helpers: a counting, fault-injecting HTTP proxy to put in front of an S3-compatible server.

Counting at the server side of the wire (not in the client) is what proves "a warm start makes no
GET"; cutting a response mid-body is what proves resumed retries. Standard library only; used by the
tests and by ``benchmarks.model_fetch``.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "proxy-connection",
    "te",
    "upgrade",
    "trailer",
}
_CHUNK = 256 * 1024


def request_kind(method: str, target: str) -> str:
    """``GET`` (an object read), ``LIST``, ``HEAD`` or the method, for an S3 path-style request."""
    parts = urlsplit(target)
    key = parts.path.lstrip("/").partition("/")[2]
    if method == "GET":
        return "GET" if key and "list-type" not in parse_qs(parts.query) else "LIST"
    return method


class S3Proxy:
    """Forwards HTTP to ``upstream`` ("host:port"), counting requests and injecting faults.

    ``counts["GET"]`` is the number of object GETs seen. ``cut_gets(n, after_bytes)`` makes the next
    ``n`` object GETs drop the connection after that many body bytes; ``fail_gets(n, status)`` answers
    the next ``n`` with an S3 error (503 SlowDown by default) without forwarding them;
    ``corrupt_gets(n)`` flips the first body byte of the next ``n``; ``before_get`` (if set) runs
    before each object GET is forwarded.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.counts: Counter[str] = Counter()
        self.ranges: list[str] = []
        self._lock = threading.Lock()
        self._cuts: list[int] = []
        self._failures: list[int] = []
        self._corruptions = 0
        self.before_get: Callable[[], None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-proxy", daemon=True)

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> S3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> S3Proxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.ranges.clear()

    def cut_gets(self, count: int, after_bytes: int) -> None:
        with self._lock:
            self._cuts.extend([after_bytes] * count)

    def fail_gets(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    def corrupt_gets(self, count: int) -> None:
        with self._lock:
            self._corruptions += count

    def clear_faults(self) -> None:
        with self._lock:
            self._cuts.clear()
            self._failures.clear()
            self._corruptions = 0

    def _next_fault(self, kind: str) -> tuple[int | None, int | None, bool]:
        with self._lock:
            self.counts[kind] += 1
            if kind != "GET":
                return None, None, False
            if self._failures:
                return self._failures.pop(0), None, False
            if self._cuts:
                return None, self._cuts.pop(0), False
            if self._corruptions:
                self._corruptions -= 1
                return None, None, True
            return None, None, False

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

            def _forward(self) -> None:
                kind = request_kind(self.command, self.path)
                status, cut_after, corrupt = proxy._next_fault(kind)
                if kind == "GET" and proxy.before_get is not None:
                    proxy.before_get()
                if kind == "GET" and self.headers.get("Range"):
                    with proxy._lock:
                        proxy.ranges.append(self.headers["Range"])
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if status is not None:
                    self._send_error(status)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    self.send_response(response.status, response.reason)
                    has_length = False
                    for name, value in response.getheaders():
                        if name.lower() in _HOP_BY_HOP:
                            continue
                        has_length = has_length or name.lower() == "content-length"
                        self.send_header(name, value)
                    if not has_length:
                        self.close_connection = True
                        self.send_header("Connection", "close")
                    self.end_headers()
                    sent = 0
                    while chunk := response.read(_CHUNK):
                        if corrupt and sent == 0 and response.status < 300:
                            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                        if cut_after is not None and sent + len(chunk) > cut_after:
                            self.wfile.write(chunk[: cut_after - sent])
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)  # the mid-body drop
                            return
                        self.wfile.write(chunk)
                        sent += len(chunk)
                finally:
                    upstream.close()

            def _send_error(self, status: int) -> None:
                code = {503: "SlowDown", 403: "AccessDenied", 404: "NoSuchKey"}.get(status, "InternalError")
                payload = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>injected by S3Proxy</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        return Handler
