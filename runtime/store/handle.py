"""ModelHandle: a fetched model version on local disk, pinned while the handle is open."""

from __future__ import annotations

import weakref
from pathlib import Path
from types import TracebackType

from runtime.store.manifest import Manifest
from runtime.store.pins import Pin


class ModelHandle:
    """A local model directory (``path``) for ``uri``.

    While the handle is open the version cannot be evicted; :meth:`close` (or leaving the ``with``
    block, or the process exiting) releases it.
    """

    def __init__(
        self,
        *,
        uri: str,
        path: Path,
        version_key: str,
        manifest: Manifest | None = None,
        pin: Pin | None = None,
        from_cache: bool = False,
    ) -> None:
        self.uri = uri
        self.path = path
        self.version_key = version_key
        self.manifest = manifest
        self.from_cache = from_cache
        self._pin = pin
        # A handle dropped without close() still releases its pin when collected.
        self._finalizer = weakref.finalize(self, pin.release) if pin is not None else None

    @property
    def pinned(self) -> bool:
        return self._pin is not None and self._pin.held

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> ModelHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "pinned" if self.pinned else "unpinned"
        return f"ModelHandle(uri={self.uri!r}, version_key={self.version_key!r}, path='{self.path}', {state})"
