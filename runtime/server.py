"""Serving a model directory: load → warm up → listen → drain on SIGTERM → exit.

``serve`` is usable from an already-running, pre-imported process (the autoscaler's warm pool forks a
process that imported onnxruntime/numpy and calls ``serve`` in it), and from ``python -m runtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from runtime.app import build_app, replica_protocol
from runtime.config import MAX_UNIX_SOCKET_PATH, ReplicaSettings
from runtime.loaders import LoadedModel, load_model
from runtime.replica import Replica
from runtime.warmup import warm_up

logger = logging.getLogger(__name__)

_DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# Container objects allocated (net of those freed) before a young-generation collection; CPython's
# default is 700. Parsing a 1,000-row JSON request alone allocates 1,000 lists that stay alive until
# the request is decoded, so with the default the collector ran about 1.4 times per such request,
# walking every row, and promoted them to older generations to be walked again.
YOUNG_GC_THRESHOLD = 10_000


def settle_heap() -> None:
    """Call once the model is loaded and warm, before serving: what exists now lives as long as the
    process, so the garbage collector stops walking it (``gc.freeze``), and young collections run
    less often (``YOUNG_GC_THRESHOLD``).

    Measured on this kind of machine: a full collection of a loaded replica's heap (libraries, model)
    took 20-40 ms — a stall for every request in flight, several times a minute under 1,000-row
    requests; frozen, it takes microseconds. Collector time under 1,000-row requests fell from ~0.25 ms
    to ~0.03 ms per request. There is no ``gc.collect()`` first, which would add its 20-40 ms to every
    cold start: the little cyclic garbage of loading stays, once (warm-pool workers collect while idle).
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_unix_socket(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, readable and writable by this user only.

    A replica has no authentication of its own (the router in front of it has): the socket's mode keeps
    other local users out, as they cannot be kept off a loopback TCP port. A stale file left by a
    process that died is replaced.
    """
    if len(os.fsencode(path)) > MAX_UNIX_SOCKET_PATH:
        raise ValueError(f"unix socket path is longer than {MAX_UNIX_SOCKET_PATH} bytes: {path!r}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Created owner-only from the start (no window in which another user could connect).
    previous = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(previous)
    try:
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server with zeroserve's lifecycle around it.

    uvicorn re-raises a captured SIGTERM after its graceful shutdown, which would end the process with
    the signal; a replica that drained cleanly must exit 0 instead, so signals are handled here.
    """

    def __init__(
        self, config: uvicorn.Config, replica: Replica, on_ready: Callable[[int], None] | None
    ) -> None:
        super().__init__(config)
        self.replica = replica
        self.on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _DRAIN_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.replica.begin_drain()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.replica.start()
        await super().startup(sockets=sockets)
        if self.started and self.on_ready is not None and sockets:
            self.on_ready(sockets[0].getsockname()[1])  # the TCP listener comes first

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.replica.begin_drain()
        await super().shutdown(sockets=sockets)
        await self.replica.stop()


def default_name(model_dir: str | os.PathLike[str]) -> str:
    name = Path(model_dir).name
    return name if name and name not in (".", "..") else "model"


def serve(
    model_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    served_name: str | None = None,
    settings: ReplicaSettings | None = None,
    sock: socket.socket | None = None,
    on_ready: Callable[[int], None] | None = None,
    model_version: str | None = None,
    on_loaded: Callable[[LoadedModel], None] | None = None,
    unix_socket: str | None = None,
) -> None:
    """Load, warm up and serve the model in ``model_dir`` until SIGTERM/SIGINT (or ``Ctrl+C``).

    Blocks. ``on_loaded(model)`` is called once the model is loaded and warmed, before listening (to
    read what loading decided, such as ``model.optimization``); ``on_ready(port)`` once the socket
    accepts requests. With ``unix_socket``, the same server also listens on a Unix socket at that path
    (the router reaches local replicas there: a request and its answer cost about half the system time
    of loopback TCP), removed again on exit. Raises ``ModelLoadError`` (before listening) when the
    model cannot be loaded. On a signal, stops accepting, finishes in-flight requests within
    ``settings.drain_timeout_s`` and returns.
    """
    settings = settings or ReplicaSettings()
    model = load_model(model_dir, settings=settings)
    try:
        warm = warm_up(model)
        if on_loaded is not None:
            on_loaded(model)
        replica = Replica(
            model,
            name=served_name or default_name(model_dir),
            version=model_version,
            settings=settings,
            warm=warm,
        )
        logger.info("serving %r (warm-up: %s)", replica, warm)
        settle_heap()
        listeners = [sock if sock is not None else bind_socket(host, port)]
        try:
            if unix_socket is not None:
                listeners.append(bind_unix_socket(unix_socket))
            _run(replica, listeners, on_ready, settings)
        finally:
            for listener in listeners:
                listener.close()
            if unix_socket is not None and len(listeners) > 1:
                with contextlib.suppress(OSError):
                    os.unlink(unix_socket)
    finally:
        model.close()


def _run(
    replica: Replica,
    listeners: list[socket.socket],
    on_ready: Callable[[int], None] | None,
    settings: ReplicaSettings,
) -> None:
    app = build_app(replica)
    config = uvicorn.Config(
        app,
        # Inference requests answered below ASGI, and every response in one write (runtime.http).
        # Draining, an idle keep-alive connection lingers up to a second for a request already sent on
        # it (runtime.app.ReplicaProtocol), within the drain timeout.
        http=replica_protocol(app, linger_s=min(1.0, settings.drain_timeout_s)),
        loop="none",
        lifespan="off",
        access_log=False,
        log_config=None,
        log_level="warning",
        server_header=False,
        proxy_headers=False,  # the router terminates client connections; replicas see only the router
        # uvicorn counts whole seconds; round up so that the drain is never shorter than asked.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
        timeout_keep_alive=75,  # longer than the router's pool idle timeout, so the router closes first
    )
    server = _Server(config, replica, on_ready)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(server.serve(sockets=listeners))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
