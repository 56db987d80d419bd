"""What the cache holds, and pruning it: the data behind ``zeroserve cache ls | prune``."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.store.cache import Cache
from runtime.store.eviction import evict, stored_bytes
from runtime.store.pins import is_pinned
from runtime.store.settings import StoreSettings


@dataclass(frozen=True)
class CachedVersion:
    version_key: str
    uri: str
    location: str
    files: int
    bytes: int
    last_used: float  # epoch seconds
    pinned: bool  # some live process has it open
    immutable: bool


@dataclass(frozen=True)
class PruneResult:
    evicted: list[str]
    bytes_before: int
    bytes_after: int
    stale_temp_removed: int


def list_cached(settings: StoreSettings | None = None) -> list[CachedVersion]:
    """Published versions, most recently used first."""
    cache = Cache((settings or StoreSettings()).cache_dir)
    versions: list[CachedVersion] = []
    for key in cache.version_keys():
        manifest = cache.read_manifest(key)
        if manifest is None:
            continue
        versions.append(
            CachedVersion(
                version_key=key,
                uri=manifest.uri,
                location=manifest.location,
                files=len(manifest.files),
                bytes=manifest.total_bytes,
                last_used=cache.last_used(key),
                pinned=is_pinned(cache.pin_path(key)),
                immutable=manifest.immutable,
            )
        )
    return sorted(versions, key=lambda v: v.last_used, reverse=True)


def cache_bytes(settings: StoreSettings | None = None) -> int:
    """Bytes on disk (shared blobs counted once, converted graphs included)."""
    return stored_bytes(Cache((settings or StoreSettings()).cache_dir))


def prune(
    settings: StoreSettings | None = None, *, max_bytes: int | None = None, everything: bool = False
) -> PruneResult:
    """Evict least-recently-used unpinned versions down to ``max_bytes`` (default: the configured
    budget), or every unpinned version with ``everything``; also clears crashed downloads' leftovers."""
    settings = settings or StoreSettings()
    cache = Cache(settings.cache_dir)
    before = stored_bytes(cache)
    stale = cache.remove_stale_temp()
    budget = settings.cache_max_bytes if max_bytes is None else max_bytes
    evicted = evict(cache, budget, force_all_unpinned=everything)
    return PruneResult(evicted, before, stored_bytes(cache), stale)
