"""``python -m runtime --model-uri URI --port PORT``: one replica process.

Prints exactly one line, ``ZEROSERVE_REPLICA_READY {"port": ..., "pid": ..., "cache": {...},
"optimization": {"path": "onnx"|"native", "mode": ..., "reason": ...}}``, once the model is loaded,
warmed and the port accepts requests (``optimization`` says which path serves the model and why;
``unix_socket``, with ``--unix-socket PATH``, the socket it also listens on).
Exits 1 with a message naming the URI when the model cannot be fetched or loaded, and 0 after a
graceful drain on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.loaders.base import LoadedModel

from runtime.ready import READY_PREFIX, optimization_status
from runtime.store.uri import name_from_uri


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtime", description="Serve one model version.")
    parser.add_argument("--model-uri", required=True, help="s3://, file://, models:/, runs:/ or a local path")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed when ready)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--unix-socket",
        metavar="PATH",
        help="also listen on a Unix socket at PATH (owner-only; announced in the ready line)",
    )
    parser.add_argument("--name", help="the served model name (default: the model directory's name)")
    parser.add_argument("--model-version", help="the version reported by the Open Inference Protocol")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-batch-delay-ms", type=float)
    parser.add_argument("--no-batching", action="store_true", help="run every request on its own")
    parser.add_argument("--concurrency", type=int, help="requests processed at once (container concurrency)")
    parser.add_argument("--drain-timeout", type=float, help="seconds to finish in-flight requests on SIGTERM")
    parser.add_argument("--execution", choices=["auto", "inline", "thread"])
    parser.add_argument(
        "--optimization",
        choices=["auto", "off", "required"],
        help="serve MLflow models as verified ONNX conversions (default auto; env ZEROSERVE_OPTIMIZATION)",
    )
    parser.add_argument("--log-level", default=os.environ.get("ZEROSERVE_LOG_LEVEL", "WARNING"))
    return parser.parse_args(argv)


def _settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "max_batch_size": args.max_batch_size,
        "max_batch_delay_ms": args.max_batch_delay_ms,
        "concurrency": args.concurrency,
        "drain_timeout_s": args.drain_timeout,
        "execution": args.execution,
        "optimization": args.optimization,
    }
    if args.no_batching:
        overrides["batching"] = False
    return {key: value for key, value in overrides.items() if value is not None}


def announce_ready(
    port: int, optimization: dict[str, str] | None = None, unix_socket: str | None = None
) -> None:
    from runtime.store import cache_stats

    # The model was fetched (or found in the cache) by this process: the gateway adds these counters
    # up over replicas for its model-cache metrics.
    cache = cache_stats()
    counters = {"hits": cache.hits, "misses": cache.misses, "bytes_fetched": cache.bytes_fetched}
    announcement: dict[str, Any] = {"port": port, "pid": os.getpid(), "cache": counters}
    if optimization is not None:
        announcement["optimization"] = optimization
    if unix_socket is not None:
        announcement["unix_socket"] = unix_socket
    line = json.dumps(announcement)
    sys.stdout.write(f"{READY_PREFIX} {line}\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from pydantic import ValidationError

    from runtime.config import MAX_UNIX_SOCKET_PATH, ReplicaSettings
    from runtime.errors import ZeroserveError

    try:
        settings = ReplicaSettings(**_settings_overrides(args))
    except ValidationError as exc:
        print(f"zeroserve replica: invalid settings: {exc}", file=sys.stderr)
        return 2

    from runtime.server import serve
    from runtime.store import open_model

    if args.unix_socket is not None and len(os.fsencode(args.unix_socket)) > MAX_UNIX_SOCKET_PATH:
        print(f"zeroserve replica: --unix-socket path is longer than {MAX_UNIX_SOCKET_PATH} bytes:"
              f" {args.unix_socket!r}", file=sys.stderr)
        return 2

    uri = args.model_uri
    optimization: dict[str, str] = {}

    def loaded(model: LoadedModel) -> None:
        optimization.update(optimization_status(model, settings.optimization))

    try:
        handle = open_model(uri)
    except Exception as exc:  # any store failure ends the process with a message naming the URI
        print(f"zeroserve replica: cannot fetch model {uri!r}: {_reason(exc)}", file=sys.stderr)
        return 1
    try:
        serve(
            handle.path,
            host=args.host,
            port=args.port,
            served_name=args.name or name_from_uri(uri),
            settings=settings,
            on_ready=lambda port: announce_ready(port, optimization, args.unix_socket),
            model_version=args.model_version,
            on_loaded=loaded,
            unix_socket=args.unix_socket,
        )
    except ZeroserveError as exc:
        print(f"zeroserve replica: cannot load model {uri!r}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{args.host}:{args.port}" + (f" and {args.unix_socket}" if args.unix_socket else "")
        print(f"zeroserve replica: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1
    finally:
        handle.close()
    return 0


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message)


if __name__ == "__main__":
    sys.exit(main())
