"""Process-wide counters of the model cache, read by the observability exporters."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class CacheStats:
    hits: int = 0  # opens served from a published, verified version
    misses: int = 0  # opens that had to fetch
    bytes_fetched: int = 0  # object bytes received from the store (retried bytes included)
    get_requests: int = 0  # object GETs issued (ranged parts count one each)
    retries: int = 0  # transfer attempts repeated after a fault
    offline_fallbacks: int = 0  # store unreachable, served from the cache
    corrupt_refetches: int = 0  # cached files that failed verification and were fetched again
    evictions: int = 0  # versions removed to stay under the size budget


class CacheMetrics:
    """Thread-safe counters; :meth:`snapshot` returns an immutable :class:`CacheStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = {f.name: 0 for f in fields(CacheStats)}

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def snapshot(self) -> CacheStats:
        with self._lock:
            return CacheStats(**self._values)


metrics = CacheMetrics()


def cache_stats() -> CacheStats:
    """The counters of this process since it started."""
    return metrics.snapshot()
