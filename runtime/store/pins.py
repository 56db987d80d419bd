"""Pins: a version in use by a live process is never evicted.

A pin is a shared ``flock`` on ``pins/<version>.pin``. The kernel drops it when the process exits,
however it exits, so a crashed replica can never leave a version pinned forever, and pid reuse cannot
fool it (as a pid file could). The evictor takes the exclusive lock without waiting: if it gets it,
nobody holds the version.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class Pin:
    """A shared lock on one version's pin file, held until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = _lock(path, fcntl.LOCK_SH, blocking=True)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock


def _lock(path: Path, mode: int, *, blocking: bool) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # The evictor unlinks a pin file while holding it exclusively; a lock on the unlinked inode
        # would protect nothing, so retry on the file that is there now.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def exclusive_if_unpinned(path: Path) -> Iterator[bool]:
    """Yield True while holding the version exclusively (nobody pins it), False if it is pinned."""
    fd = _lock(path, fcntl.LOCK_EX, blocking=False)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def is_pinned(path: Path) -> bool:
    if not path.exists():
        return False
    fd = _lock(path, fcntl.LOCK_EX, blocking=False)
    if fd is None:
        return True
    os.close(fd)
    return False
