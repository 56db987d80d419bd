"""Least-recently-used eviction under the cache's size budget, skipping pinned versions."""

from __future__ import annotations

import logging

from filelock import FileLock, Timeout

from runtime.store.cache import Cache
from runtime.store.metrics import metrics
from runtime.store.pins import exclusive_if_unpinned

log = logging.getLogger("zeroserve.store")


def evict(cache: Cache, max_bytes: int, *, force_all_unpinned: bool = False) -> list[str]:
    """Remove least-recently-used unpinned versions until the blobs fit in ``max_bytes``.

    ``max_bytes == 0`` means no budget (nothing is evicted unless ``force_all_unpinned``). Returns the
    evicted version keys. Pinned versions stay even when they alone exceed the budget: a running
    replica's files are never pulled from under it.
    """
    if max_bytes == 0 and not force_all_unpinned:
        return []
    # One evictor at a time; a process that finds another collecting leaves it to that one.
    gc_lock = FileLock(str(cache.locks / "evict.lock"))
    try:
        gc_lock.acquire(timeout=0)
    except Timeout:
        return []
    try:
        total = cache.blob_bytes()
        evicted: list[str] = []
        for key in sorted(cache.version_keys(), key=cache.last_used):
            if not force_all_unpinned and total <= max_bytes:
                break
            # Holding the fetch lock too keeps a concurrent fetch of this version from racing the removal.
            fetch_lock = FileLock(str(cache.lock_path(key)))
            try:
                fetch_lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                with exclusive_if_unpinned(cache.pin_path(key)) as unpinned:
                    if not unpinned:
                        continue
                    before = total
                    cache.remove_version(key)
                    total = cache.blob_bytes()
                    evicted.append(key)
                    metrics.add("evictions")
                    log.info("evicted cached version %s (%d bytes freed)", key, before - total)
            finally:
                fetch_lock.release()
        if total > max_bytes > 0:
            log.warning("cache holds %d bytes of pinned versions, over its %d byte budget", total, max_bytes)
        return evicted
    finally:
        gc_lock.release()
