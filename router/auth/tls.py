"""Transport-level security of the gateway's HTTP server: TLS, trusted proxies, header limits, loopback.

``uvicorn_options()`` gives the keyword arguments ``zeroserve serve`` passes to ``uvicorn.Config``;
``harden()`` is applied to the loaded config. Together they make sure that

- HTTPS negotiates TLS 1.2 or newer only, with forward-secret AEAD ciphers for TLS 1.2;
- ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are believed only from the configured trusted proxies
  (uvicorn on its own trusts 127.0.0.1 by default; we switch that off and wrap the app ourselves);
- request heads are bounded in size and time: uvicorn's httptools protocol accepts headers of any
  size and lets a client trickle them forever, so ``HeaderLimitedHttpToolsProtocol`` counts the bytes
  of an unfinished head (431 past ``max_header_bytes``) and closes a connection whose head is not
  complete within ``header_timeout_s``.

The protocol also sends a fixed-length response's head and body in one ``transport.write``, as
replicas do (``runtime.http.CoalescingHttpToolsProtocol``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Sequence
from typing import Any, cast

import uvicorn
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from runtime.http import CoalescingHttpToolsProtocol

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_HEADER_TIMEOUT_S = 30.0
# TLS 1.2 suites with forward secrecy and AEAD; TLS 1.3 suites are fixed by OpenSSL and all strong.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def insecure_bind_error(host: str) -> str | None:
    """Why ``--insecure-no-auth`` may not bind to ``host`` (anything but loopback), or None."""
    if is_loopback(host):
        return None
    return (
        f"--insecure-no-auth serves every request without a token, so it binds to loopback only;"
        f" refusing to listen on {host!r}. Use 127.0.0.1, or drop --insecure-no-auth and use tokens."
    )


INSECURE_BANNER = (
    "\n"
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    "!!  WARNING: --insecure-no-auth: AUTHENTICATION IS OFF.                      !!\n"
    "!!  Anyone who can reach this port can create, change, delete and query      !!\n"
    "!!  every endpoint. For local development only; bound to loopback.           !!\n"
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
)


def trusted_proxy_app(app: ASGIApp, trusted_proxies: Sequence[str]) -> ASGIApp:
    """Wrap ``app`` so ``X-Forwarded-*`` from ``trusted_proxies`` (IPs or CIDR networks) set the client
    address and scheme; from anyone else those headers are ignored. No proxies: ``app`` unchanged."""
    if not trusted_proxies:
        return app
    for proxy in trusted_proxies:
        if proxy != "*":
            ipaddress.ip_network(proxy, strict=False)  # ValueError names a bad entry early
    middleware: Any = ProxyHeadersMiddleware(app, trusted_hosts=list(trusted_proxies))  # type: ignore[arg-type]
    return cast(ASGIApp, middleware)


class HeaderLimitedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """uvicorn's httptools protocol (responses in one write, as replicas send them) with a bound on the
    size and the arrival time of each request head."""

    max_header_bytes = DEFAULT_MAX_HEADER_BYTES
    header_timeout_s = DEFAULT_HEADER_TIMEOUT_S

    _in_head = True
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)
            # Counted after parsing: a chunk that completes the head (even with body bytes) is fine.
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse(431, "Request Header Fields Too Large",
                             f"request head larger than {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        # The head is complete: stop counting its bytes and its time (before any answer, direct or ASGI).
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            message = f"request head not received within {self.header_timeout_s:g} s"
            self._refuse(408, "Request Timeout", message)

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._cancel_head_timer()
        body = b'{"error_code": "BAD_REQUEST", "message": "' + message.encode("ascii") + b'"}'
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason.encode("ascii"), len(body), body)
        )
        self.transport.close()


def header_limited_protocol(max_header_bytes: int, header_timeout_s: float) -> type[HttpToolsProtocol]:
    return type(
        "HeaderLimitedHttpToolsProtocol",
        (HeaderLimitedHttpToolsProtocol,),
        {"max_header_bytes": max_header_bytes, "header_timeout_s": header_timeout_s},
    )


def uvicorn_options(
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    ssl_keyfile_password: str | None = None,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` (besides app, host and port)."""
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ValueError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    options: dict[str, Any] = {
        "http": header_limited_protocol(max_header_bytes, header_timeout_s),
        # Forwarded headers are handled by trusted_proxy_app, only for the proxies configured.
        "proxy_headers": False,
        "server_header": False,
    }
    if ssl_certfile is not None:
        options.update(
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            ssl_keyfile_password=ssl_keyfile_password,
            ssl_version=ssl.PROTOCOL_TLS_SERVER,
            ssl_ciphers=TLS12_CIPHERS,
        )
    return options


def harden(config: uvicorn.Config) -> uvicorn.Config:
    """Load ``config`` and pin its TLS context to 1.2+ (uvicorn has no option for the minimum version)."""
    if not config.loaded:
        config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        config.ssl.options |= ssl.OP_NO_COMPRESSION
    return config
