"""One long-lived event loop per process for the synchronous :func:`runtime.store.open_model`.

A private loop per call (``asyncio.run``) cannot keep anything alive between opens, so every warm open
of an ``s3://`` prefix paid for a new S3 client (endpoint rules, operation methods: ~5 ms) and a new
TCP connection for its freshness listing. On this loop the S3 clients outlive one call (see
``runtime.store.s3``) and their idle keep-alive connections are watched, so a connection the store
closed is dropped before it is reused.

The loop is per process: a forked child cannot use its parent's thread (it does not exist there) nor
its sockets (shared with the parent), so it starts its own and leaves the inherited one untouched.
It is closed at interpreter exit, after closing the clients, so no "unclosed session" warning fires.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_CLOSE_TIMEOUT_S = 5.0


class _LoopThread:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="zeroserve-store-loop", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def close(self) -> None:
        s3 = sys.modules.get("runtime.store.s3")  # loaded only if this process ever opened an s3:// URI
        if s3 is not None:
            future = asyncio.run_coroutine_threadsafe(s3.close_shared_clients(), self.loop)
            # Exiting anyway: a store that does not answer a close must not hold up the exit.
            with contextlib.suppress(concurrent.futures.TimeoutError, OSError):
                future.result(_CLOSE_TIMEOUT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_CLOSE_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()


_lock = threading.Lock()
_current: _LoopThread | None = None
# Loops inherited across fork: never closed (their sockets are the parent's), only kept referenced so
# that garbage collection does not try to close them either.
_inherited: list[_LoopThread] = []


def _new_lock_in_child() -> None:
    # Another thread of the parent may have held the lock at the fork; in the child it never unlocks.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def _get() -> _LoopThread:
    global _current
    with _lock:
        if _current is not None and _current.pid != os.getpid():
            _inherited.append(_current)
            _current = None
        if _current is None:
            _current = _LoopThread()
        return _current


def is_background_loop(loop: asyncio.AbstractEventLoop) -> bool:
    current = _current
    return current is not None and current.loop is loop and current.pid == os.getpid()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on this process's store loop and wait for its result (from any other thread)."""
    future = asyncio.run_coroutine_threadsafe(coro, _get().loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()  # e.g. KeyboardInterrupt in the caller: do not leave the fetch running unseen
        raise


@atexit.register
def _close_at_exit() -> None:
    global _current
    with _lock:
        current, _current = _current, None
    if current is not None and current.pid == os.getpid():
        current.close()
