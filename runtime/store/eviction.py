"""Least-recently-used eviction under the cache's size budget, skipping pinned versions.

The budget covers the model versions' blobs and the converted graphs of automatic optimization
(``<cache_dir>/optimized``, see ``runtime.optimize.cache``), evicted in one least-recently-used order.
A converted graph has no pin: a replica serving it built its session from the graph's bytes, and one
converting it holds its lock, which eviction respects.
"""

from __future__ import annotations

import logging

from filelock import FileLock, Timeout

from runtime.optimize.cache import ConversionCache
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
        converted = conversions(cache)
        total = stored_bytes(cache, converted)
        evicted: list[str] = []
        candidates = [(cache.last_used(key), key, False) for key in cache.version_keys()]
        if converted is not None:
            candidates += [(converted.last_used(key), key, True) for key in converted.entry_keys()]
        for _, key, is_conversion in sorted(candidates):
            if not force_all_unpinned and total <= max_bytes:
                break
            if is_conversion:
                assert converted is not None
                size = converted.entry_bytes(key)
                if converted.remove(key):
                    total -= size
                    evicted.append(f"optimized/{key}")
                    metrics.add("evictions")
                    log.info("evicted converted graph %s (%d bytes freed)", key, size)
                continue
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
                    total = stored_bytes(cache, converted)
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


def conversions(cache: Cache) -> ConversionCache | None:
    """The converted graphs kept beside ``cache`` (None when no replica has converted anything)."""
    root = cache.root / "optimized"
    return ConversionCache(root) if root.is_dir() else None


def stored_bytes(cache: Cache, converted: ConversionCache | None = None) -> int:
    """What the budget counts: model blobs (shared ones once) plus converted graphs."""
    converted = converted if converted is not None else conversions(cache)
    return cache.blob_bytes() + (converted.total_bytes() if converted is not None else 0)
