"""The process a local replica runs in: ``python -m autoscaler.backends._worker``.

Two ways in:

* ``--pool --preload onnx,sklearn``: a warm-pool worker. It imports the runtime and the model
  libraries, prints ``ZEROSERVE_POOL_IDLE``, and waits for one JSON line on stdin,
  ``{"argv": [...], "env": {...}}``; then it becomes a replica exactly as ``python -m runtime ARGV``
  would, without paying the imports again.
* ``-- ARGV``: a plain start, ``python -m runtime ARGV`` with the parent-death guard below.

Either way the process asks the kernel to SIGTERM it when the backend that started it dies, so a
crashed gateway leaves no orphaned replicas behind; unless it is detached
(``ZEROSERVE_REPLICA_DETACHED``): then it outlives that gateway and the next leading gateway adopts it.
This module imports only the standard library until it knows what it is for: a plain start must
cost what ``python -m runtime`` costs.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sys
from typing import Any

IDLE_MARKER = "ZEROSERVE_POOL_IDLE"
# Set by a backend whose replicas must outlive it (several gateways, one leading at a time).
DETACHED_ENV = "ZEROSERVE_REPLICA_DETACHED"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    expected_parent = os.environ.get("ZEROSERVE_BACKEND_PID")
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The parent may have died before the guard was in place: then nobody would ever stop us.
    if expected_parent is not None and str(os.getppid()) != expected_parent:
        sys.exit(f"zeroserve replica: the backend (pid {expected_parent}) is gone; exiting")


def run_replica(argv: list[str]) -> int:
    from runtime.__main__ import main

    return main(argv)


def pool_worker(flavors: list[str]) -> int:
    # Importing what a replica needs is the whole point of the pool: the server stack, the store,
    # and the model libraries of the configured flavors.
    import runtime.__main__
    import runtime.server
    import runtime.store
    from runtime.loaders import preload

    preload(flavors)
    del runtime
    # Idle now, so collecting costs no request anything; the replica freezes the heap once its model
    # is loaded (runtime.server.settle_heap), and what the imports left as garbage is not kept with it.
    gc.collect()
    sys.stdout.write(f"{IDLE_MARKER}\n")
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        return 0  # the backend closed the pool
    assignment = json.loads(line)
    os.environ.update(assignment.get("env", {}))
    return run_replica(list(assignment["argv"]))


class _Unbreakable:
    """A stream whose writes are dropped once its reader is gone: a detached replica's gateway may die
    (its leadership moves), and a log line must not then end the replica that serves."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(arguments: list[str]) -> int:
    if os.environ.get(DETACHED_ENV) == "1":
        sys.stdout = _Unbreakable(sys.stdout)
        sys.stderr = _Unbreakable(sys.stderr)
    else:
        die_with_parent()
    if arguments[:1] == ["--pool"]:
        flavors: list[str] = []
        if arguments[1:2] == ["--preload"] and len(arguments) > 2:
            flavors = [flavor for flavor in arguments[2].split(",") if flavor]
        return pool_worker(flavors)
    if arguments[:1] == ["--"]:
        return run_replica(arguments[1:])
    sys.stderr.write("usage: python -m autoscaler.backends._worker (--pool [--preload F,G] | -- ARGV)\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
