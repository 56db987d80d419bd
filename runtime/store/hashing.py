"""Checksums of a file written out of order by parallel ranged GETs."""

from __future__ import annotations

import asyncio
import hashlib
import os

from runtime.store.sources import Digests

_READ = 1024 * 1024


class SequentialHasher:
    """Hashes a file front to back as its parts land, overlapping the hashing with the transfer.

    Parts finish in any order; whenever the finished prefix grows, the new span is read back (from the
    page cache, it was just written) and hashed in a worker thread. Nothing is held in memory.
    """

    def __init__(self, fd: int, size: int, *, want_md5: bool) -> None:
        self._fd = fd
        self._size = size
        self._sha = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None
        self._finished: dict[int, int] = {}  # part start -> part end
        self._hashed = 0
        self._wakeup = asyncio.Event()

    def part_done(self, start: int, end: int) -> None:
        self._finished[start] = end
        self._wakeup.set()

    async def run(self) -> Digests:
        while self._hashed < self._size:
            await self._wakeup.wait()
            self._wakeup.clear()
            end = self._hashed
            while end in self._finished:
                end = self._finished.pop(end)
            if end > self._hashed:
                await asyncio.to_thread(self._hash_span, self._hashed, end)
                self._hashed = end
        return Digests(self._sha.hexdigest(), self._md5.hexdigest() if self._md5 is not None else None)

    def _hash_span(self, start: int, end: int) -> None:
        offset = start
        while offset < end:
            chunk = os.pread(self._fd, min(_READ, end - offset), offset)
            if not chunk:
                raise OSError(f"file ended at byte {offset} while hashing up to {end}")
            self._sha.update(chunk)
            if self._md5 is not None:
                self._md5.update(chunk)
            offset += len(chunk)
