"""Child processes of the local backend: their output, captured line by line, and stopping them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import deque
from collections.abc import Mapping

from autoscaler.backends._worker import IDLE_MARKER
from runtime.ready import READY_PREFIX as READY_MARKER

_MAX_LINE_CHARS = 4096


class ProcessOutput:
    """Reads a child's merged stdout/stderr: keeps the last ``max_lines`` lines for the logs API and
    resolves ``idle`` / ``ready`` when the worker and runtime markers go by."""

    def __init__(self, stream: asyncio.StreamReader, max_lines: int = 2000) -> None:
        self._lines: deque[str] = deque(maxlen=max_lines)
        loop = asyncio.get_running_loop()
        self.idle: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[dict[str, int]] = loop.create_future()
        self.closed = asyncio.Event()
        self._task = asyncio.create_task(self._read(stream))

    def note(self, line: str) -> None:
        self._lines.append(line)

    def text(self) -> str:
        return "".join(f"{line}\n" for line in self._lines)

    def tail(self, lines: int = 40) -> str:
        return "".join(f"{line}\n" for line in list(self._lines)[-lines:])

    async def _read(self, stream: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    raw = await stream.readline()
                except ValueError:  # a line longer than the stream limit: keep reading past it
                    raw = await stream.read(65536)
                if not raw:
                    break
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith(READY_MARKER) and not self.ready.done():
                    with contextlib.suppress(ValueError):
                        self.ready.set_result(json.loads(line[len(READY_MARKER):]))
                elif line == IDLE_MARKER:
                    # Pool protocol, not replica output: kept out of the logs users read.
                    if not self.idle.done():
                        self.idle.set_result(None)
                    continue
                self._lines.append(line[:_MAX_LINE_CHARS])
        finally:
            self.closed.set()
            for future in (self.idle, self.ready):
                if not future.done():
                    future.cancel()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def spawn(
    arguments: list[str], env: Mapping[str, str], *, stdin: bool = False
) -> asyncio.subprocess.Process:
    """Start ``python -m autoscaler.backends._worker ARGUMENTS`` with stdout and stderr merged."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autoscaler.backends._worker", *arguments,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**env, "PYTHONUNBUFFERED": "1", "ZEROSERVE_BACKEND_PID": str(os.getpid())},
        # Its own session: a Ctrl+C at the gateway's terminal must not reach replicas before they are
        # drained; the backend stops them itself.
        start_new_session=True,
        limit=1024 * 1024,
    )


async def terminate(process: asyncio.subprocess.Process, timeout_s: float) -> int:
    """SIGTERM (the runtime drains and exits 0), then SIGKILL after ``timeout_s``; returns the code."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout_s):
                await process.wait()
        except TimeoutError:
            pass
    return await kill(process)


async def kill(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    return await process.wait()
