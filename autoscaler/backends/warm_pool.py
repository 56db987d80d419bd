"""The warm pool: processes that already imported the runtime and the model libraries, waiting.

A scale-up takes an idle worker and sends it one line (the replica's arguments and environment); it
then fetches the model from the warm cache, loads, warms up and serves, without paying ~0.5-3 s of
imports (onnxruntime + numpy + uvicorn; pandas + sklearn + mlflow for MLflow models). The pool refills
in the background.

Why idle pre-started processes and not fork from a pre-imported parent: measured on the 2-core
development machine, time from the command to the replica's ready line for a small ONNX model was
45-110 ms for assignment to an idle worker against 67-194 ms for fork (the child pays copy-on-write
faults on the parent's heap, and the first fork after import is the slowest). Assignment is also
simpler and sturdier: each worker is a direct child of the backend with its own stdout pipe (logs per
replica for free), its own exit status (no zygote relaying waitpid results) and no fork-safety
questions about threads that onnxruntime, torch or mlflow may have started at import. Fork's one
advantage, bursts larger than the pool, is covered by falling back to a plain process start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from autoscaler.backends._process import ProcessOutput, kill, spawn

logger = logging.getLogger("zeroserve.autoscaler.pool")

# Variables read when a library is imported or the interpreter starts (thread pools of the BLAS that
# numpy loaded, the interpreter's own flags): a replica whose spec sets one of them must start fresh.
_IMPORT_TIME_PREFIXES = ("PYTHON", "LD_", "OMP_", "OPENBLAS_", "MKL_", "KMP_", "MALLOC_")
_SPAWN_TIMEOUT_S = 120.0
_MAX_SPAWN_FAILURES = 5


def needs_fresh_process(environment: Mapping[str, str]) -> bool:
    return any(name.startswith(_IMPORT_TIME_PREFIXES) for name in environment)


@dataclass(eq=False)
class PoolWorker:
    process: asyncio.subprocess.Process
    output: ProcessOutput

    def assign(self, argv: list[str], environment: Mapping[str, str]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps({"argv": argv, "env": dict(environment)}) + b"\n")


class WarmPool:
    def __init__(
        self,
        size: int,
        preload: tuple[str, ...],
        environment: Mapping[str, str] | None = None,
        log_lines: int = 2000,
    ) -> None:
        self.size = size
        self.preload = preload
        self._log_lines = log_lines
        self._environment = dict(os.environ if environment is None else environment)
        self._idle: list[PoolWorker] = []
        self._spawning: set[asyncio.Task[None]] = set()
        self._failures = 0
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def idle_pids(self) -> list[int]:
        return [worker.process.pid for worker in self._idle]

    def start(self) -> None:
        self._closed = False  # a backend that detached (closing its pool) may lead again later
        self._refill()

    def take(self) -> PoolWorker | None:
        """An idle worker (alive and done importing), or None: the caller starts a process itself.

        Taking does not refill: the caller calls ``refill()`` once its replica is up, so that a new
        worker's imports do not compete for the CPU with the cold start they are meant to speed up.
        """
        while self._idle:
            worker = self._idle.pop(0)
            if worker.process.returncode is None:
                return worker
            logger.warning("warm pool worker %s died while idle:\n%s",
                           worker.process.pid, worker.output.tail())
        return None

    def refill(self) -> None:
        self._refill()

    async def wait_full(self, timeout_s: float = 60.0) -> None:
        """Wait until every slot holds an idle worker (tests and benchmarks)."""
        async with asyncio.timeout(timeout_s):
            while len(self._idle) < self.size and not self._closed and self._failures < _MAX_SPAWN_FAILURES:
                if self._spawning:
                    await asyncio.gather(*list(self._spawning), return_exceptions=True)
                else:
                    self._refill()
                    await asyncio.sleep(0.05)

    def _refill(self) -> None:
        if self._closed or self._failures >= _MAX_SPAWN_FAILURES:
            return
        for _ in range(self.size - len(self._idle) - len(self._spawning)):
            task = asyncio.create_task(self._spawn_one())
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    async def _spawn_one(self) -> None:
        arguments = ["--pool", "--preload", ",".join(self.preload)]
        process = await spawn(arguments, self._environment, stdin=True)
        assert process.stdout is not None
        output = ProcessOutput(process.stdout, self._log_lines)
        try:
            async with asyncio.timeout(_SPAWN_TIMEOUT_S):
                await asyncio.shield(output.idle)
        except (TimeoutError, asyncio.CancelledError) as error:
            await kill(process)
            await output.closed.wait()
            if isinstance(error, asyncio.CancelledError) and self._closed:
                raise
            self._failures += 1
            logger.error("warm pool worker failed to start (%d/%d):\n%s", self._failures,
                         _MAX_SPAWN_FAILURES, output.tail())
            return
        if self._closed:
            await kill(process)
            return
        self._failures = 0
        self._idle.append(PoolWorker(process, output))

    async def close(self) -> None:
        self._closed = True
        for task in list(self._spawning):
            task.cancel()
        await asyncio.gather(*list(self._spawning), return_exceptions=True)
        workers, self._idle = self._idle, []
        for worker in workers:
            if worker.process.stdin is not None:
                with contextlib.suppress(Exception):
                    worker.process.stdin.close()
            await kill(worker.process)
            await worker.output.aclose()
