"""``python -m runtime.pool --host H --port P``: a generic replica waiting for its model (a pod of the
Kubernetes backend's warm pool).

It imports the runtime and the model libraries of ``--preload`` ahead, then listens on ``H:P`` for one
assignment, ``POST /zeroserve/assign`` with ``{"argv": [...], "env": {...}}`` (the arguments ``python -m
runtime`` would get, and the entity's environment). It stops listening before it answers 202, then
becomes that replica in this process, on the same address: fetching the model (from the node's warm
cache), loading it and serving it, without paying the imports again. Until then ``GET /zeroserve/pool``
answers 200 (an idle worker), ``/v2/health/live`` 200 and ``/v2/health/ready`` 503 (no model yet).

Only the standard library serves the wait: the pool worker is idle by design, one request is all it takes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

ASSIGN_PATH = "/zeroserve/assign"
POOL_PATH = "/zeroserve/pool"
_MAX_ASSIGNMENT_BYTES = 1 << 20


class _Waiting(BaseHTTPRequestHandler):
    server: _PoolServer

    def do_GET(self) -> None:
        if self.path == POOL_PATH:
            self._answer(200, {"state": "idle"})
        elif self.path == "/v2/health/live":
            self._answer(200, {"live": True})
        elif self.path == "/v2/health/ready":
            self._answer(503, {"ready": False, "reason": "a pool worker has no model yet"})
        else:
            self._answer(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        if self.path != ASSIGN_PATH:
            self._answer(404, {"error": f"no route {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > _MAX_ASSIGNMENT_BYTES:
            self._answer(400, {"error": "an assignment is a JSON body of at most 1 MiB"})
            return
        try:
            assignment = json.loads(self.rfile.read(length))
            argv = [str(item) for item in assignment["argv"]]
            env = {str(key): str(value) for key, value in dict(assignment.get("env") or {}).items()}
        except (ValueError, KeyError, TypeError) as error:
            self._answer(400, {"error": f"not an assignment: {error}"})
            return
        if self.server.assignment is not None:
            self._answer(409, {"error": "this worker was assigned already"})
            return
        self.server.assignment = (argv, env)
        # Nothing listens here any more once the caller hears 202: the next answer on this address is
        # the replica's own (its readiness probe fails until the model is loaded).
        self.server.socket.close()
        self._answer(202, {"state": "assigned"})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return  # probes every second would fill the pod's log


class _PoolServer(HTTPServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Waiting)
        self.assignment: tuple[list[str], dict[str, str]] | None = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.pool", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--preload", default="onnx", help="flavors to import ahead, comma-separated")
    args = parser.parse_args(argv)
    import runtime.__main__
    import runtime.server
    import runtime.store
    from runtime.loaders import preload

    preload([flavor for flavor in args.preload.split(",") if flavor])
    gc.collect()
    server = _PoolServer((args.host, args.port))
    print(f"zeroserve pool worker idle on {args.host}:{args.port}", flush=True)
    while server.assignment is None:  # one request at a time: probes, then the assignment
        server.handle_request()
    replica_argv, env = server.assignment
    os.environ.update(env)
    print(f"zeroserve pool worker assigned: {' '.join(replica_argv)}", flush=True)
    return runtime.__main__.main(replica_argv)


if __name__ == "__main__":
    sys.exit(main())
