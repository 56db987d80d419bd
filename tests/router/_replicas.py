"""Real replica processes (``python -m runtime``) for the end-to-end data-plane tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from autoscaler.types import EntityKey, ReplicaInfo
from runtime.ready import READY_PREFIX


@dataclass
class ReplicaProcess:
    info: ReplicaInfo
    process: asyncio.subprocess.Process

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)


async def start_replica(
    model_dir: Path,
    entity: EntityKey,
    replica_id: str,
    *,
    capacity: int = 4,
    timeout_s: float = 60.0,
    unix_socket: Path | None = None,
) -> ReplicaProcess:
    """Start a replica and wait for its ready line; raises with its output if it exits instead. With
    ``unix_socket`` it also listens there, and the router reaches it there (as local replicas are)."""
    extra = ["--unix-socket", str(unix_socket)] if unix_socket is not None else []
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runtime",
        "--model-uri",
        model_dir.as_uri(),
        "--port",
        "0",
        "--name",
        entity.served_entity,
        "--concurrency",
        str(capacity),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ZEROSERVE_LOG_LEVEL": "WARNING"},
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                line = await process.stdout.readline()
                if not line:
                    error = (await process.stderr.read()).decode(errors="replace")
                    raise RuntimeError(f"replica exited with code {await process.wait()}: {error[-2000:]}")
                if line.startswith(READY_PREFIX.encode()):
                    port = orjson.loads(line.split(b" ", 1)[1])["port"]
                    break
    except BaseException:
        await stop(process)
        raise
    socket_path = str(unix_socket) if unix_socket is not None else None
    info = ReplicaInfo(replica_id, entity, f"http://127.0.0.1:{port}", capacity, unix_socket=socket_path)
    return ReplicaProcess(info, process)


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), 10)
    # Close the pipe transports now, not at garbage collection (a ResourceWarning is an error here).
    transport = getattr(process, "_transport", None)
    if transport is not None:
        transport.close()


@contextlib.asynccontextmanager
async def replicas_for_test() -> AsyncIterator[list[ReplicaProcess]]:
    """A list to put started replicas in; every one is stopped when the block ends."""
    started: list[ReplicaProcess] = []
    try:
        yield started
    finally:
        await asyncio.gather(*(stop(replica.process) for replica in started))
