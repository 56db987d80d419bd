"""Fetching a model version into the cache: resolve, check, single-flight download, publish, pin."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Protocol

from runtime.errors import StoreError
from runtime.store.cache import Cache, Ref
from runtime.store.eviction import evict
from runtime.store.handle import ModelHandle
from runtime.store.manifest import FileEntry, Manifest, RemoteFile, version_key
from runtime.store.metrics import metrics
from runtime.store.pins import Pin
from runtime.store.settings import StoreSettings
from runtime.store.sources import (
    LocalFileDownloader,
    Progress,
    Resolved,
    StoreUnreachable,
    list_local,
)
from runtime.store.uri import LocalSource, ModelSource, S3Source, parse_model_uri

log = logging.getLogger("zeroserve.store")


class FetchProgress(Protocol):
    """Progress of one fetch: ``start`` once with the bytes to download, then ``advance`` per chunk."""

    def start(self, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...


async def fetch_model(
    uri: str, settings: StoreSettings | None = None, *, progress: FetchProgress | None = None
) -> ModelHandle:
    """Fetch ``uri`` into the cache (or find it there) and return a pinned handle to it.

    A local directory is served in place: it is already on this machine, and a copy would cost time
    and disk while protecting nothing the cache exists for (network round trips). Its handle is not
    pinned and its ``version_key`` is a fingerprint of the file names, sizes and mtimes.
    """
    settings = settings or StoreSettings()
    source = parse_model_uri(uri)
    if isinstance(source, LocalSource) and source.path.is_dir():
        return _local_directory(uri, source.path)
    cache = Cache(settings.cache_dir)
    handle = _open_from_ref(cache, uri, settings, offline=False)
    if handle is not None:
        return handle
    async with AsyncExitStack() as stack:
        try:
            resolved = await _resolve(source, uri, settings, stack)
        except StoreUnreachable as exc:
            handle = _open_from_ref(cache, uri, settings, offline=True)
            if handle is None:
                raise StoreError(f"cannot fetch {uri} and no cached copy exists: {exc.message}") from exc
            metrics.add("offline_fallbacks")
            log.warning(
                "store unreachable for %s (%s); serving cached version %s", uri, exc, handle.version_key
            )
            return handle
        if isinstance(resolved, ModelHandle):  # an MLflow URI whose artifacts are a local directory
            if source.immutable:
                cache.write_ref(Ref(uri, resolved.version_key, True, time.time(), str(resolved.path)))
            return resolved
        return await _materialize(cache, uri, resolved, settings, progress)


def _local_directory(uri: str, path: Path) -> ModelHandle:
    fingerprint = hashlib.sha256()
    for file in list_local(path, uri):
        fingerprint.update(f"{file.path}\0{file.size}\0{file.etag}\n".encode())
    return ModelHandle(uri=uri, path=path, version_key=f"local-{fingerprint.hexdigest()[:32]}")


def _open_from_ref(cache: Cache, uri: str, settings: StoreSettings, *, offline: bool) -> ModelHandle | None:
    """The cached version of ``uri`` when no store round trip is needed to trust it."""
    ref = cache.read_ref(uri)
    if ref is None:
        return None
    fresh = ref.immutable or (
        settings.cache_freshness_ttl_s > 0 and time.time() - ref.checked_at < settings.cache_freshness_ttl_s
    )
    if not (fresh or offline):
        return None
    if ref.local_path is not None:
        path = Path(ref.local_path)
        return ModelHandle(uri=uri, path=path, version_key=ref.version_key) if path.is_dir() else None
    return _open_published(cache, uri, ref.version_key, settings)


def _open_published(cache: Cache, uri: str, key: str, settings: StoreSettings) -> ModelHandle | None:
    pin = cache.pin(key)  # pin before checking, so an evictor cannot remove it in between
    manifest, bad = cache.check_version(key, full=settings.cache_verify == "full")
    if manifest is None or bad:
        pin.release()
        return None
    cache.touch(key)
    metrics.add("hits")
    return ModelHandle(
        uri=uri, path=cache.tree_path(key), version_key=key, manifest=manifest, pin=pin, from_cache=True
    )


async def _resolve(
    source: ModelSource, uri: str, settings: StoreSettings, stack: AsyncExitStack
) -> Resolved | ModelHandle:
    if isinstance(source, LocalSource):  # a single local file: copied into the cache like any object
        files = list_local(source.path, uri)
        return Resolved(source.path.as_uri(), files, LocalFileDownloader(), immutable=False)
    if isinstance(source, S3Source):
        from runtime.store.s3 import S3Store  # aiobotocore is imported only when S3 is used

        store = await stack.enter_async_context(S3Store.connect(settings))
        return await store.resolve(source, uri)
    from runtime.store.mlflow_source import resolve_mlflow

    return await resolve_mlflow(source, uri, settings, stack, _resolve)


async def _materialize(
    cache: Cache, uri: str, resolved: Resolved, settings: StoreSettings, progress: FetchProgress | None
) -> ModelHandle:
    key = version_key(resolved.location, resolved.files)
    pin = cache.pin(key)
    try:
        handle = _adopt_if_published(cache, uri, key, resolved, settings, pin, repair=False)
        if handle is not None:
            return handle
        async with _single_flight(cache.lock_path(key), settings.lock_timeout_s, uri):
            # Another process may have published it while this one waited for the lock.
            handle = _adopt_if_published(cache, uri, key, resolved, settings, pin, repair=True)
            if handle is not None:
                return handle
            metrics.add("misses")
            manifest, path = await _download_making_room(cache, uri, key, resolved, settings, progress)
        cache.write_ref(Ref(uri, key, resolved.immutable, time.time()))
        evicted = evict(cache, settings.cache_max_bytes)
        if evicted:
            log.info(
                "evicted %d cached version(s) to stay under %d bytes", len(evicted), settings.cache_max_bytes
            )
        return ModelHandle(uri=uri, path=path, version_key=key, manifest=manifest, pin=pin)
    except BaseException:
        pin.release()
        raise


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


async def _download_and_publish(
    cache: Cache, uri: str, key: str, resolved: Resolved, settings: StoreSettings,
    progress: FetchProgress | None,
) -> tuple[Manifest, Path]:
    entries = await _download_all(cache, resolved, settings, progress)
    manifest = Manifest(version_key=key, uri=uri, location=resolved.location, immutable=resolved.immutable,
                        files=tuple(entries), created_at=time.time())
    return manifest, cache.publish_version(manifest)


async def _download_making_room(
    cache: Cache, uri: str, key: str, resolved: Resolved, settings: StoreSettings,
    progress: FetchProgress | None,
) -> tuple[Manifest, Path]:
    """Download and publish; when the cache's disk is full, make room from versions no replica uses
    (least recently used first, as the budget would) and try once more; a second failure says so."""
    freed: list[str] | None = None
    while True:
        try:
            return await _download_and_publish(cache, uri, key, resolved, settings, progress)
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            if freed is not None:
                raise StoreError(_disk_full(cache, uri, resolved, freed)) from exc
            freed = evict(cache, settings.cache_max_bytes, force_all_unpinned=True)
            log.warning("cache disk full fetching %s; evicted %d unused version(s), trying again",
                        uri, len(freed))


def _disk_full(cache: Cache, uri: str, resolved: Resolved, freed: list[str]) -> str:
    needed = sum(file.size for file in resolved.files)
    try:
        free = f"{shutil.disk_usage(cache.root).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    return (f"no space left on the model cache's disk ({cache.root}, {free}) for {uri}, which needs "
            f"{needed:,} bytes; {len(freed)} cached version(s) no replica uses were evicted first")


def _adopt_if_published(
    cache: Cache,
    uri: str,
    key: str,
    resolved: Resolved,
    settings: StoreSettings,
    pin: Pin,
    *,
    repair: bool,
) -> ModelHandle | None:
    """A handle on the published version ``key`` if it verifies; ``repair`` (under the fetch lock)
    drops the blobs of a damaged one so that the fetch that follows replaces them."""
    manifest, bad = cache.check_version(key, full=settings.cache_verify == "full")
    if manifest is None:
        return None
    if bad and not repair:
        return None
    if bad:
        # Never load a damaged file: drop the damaged blobs (their inodes stay valid for any process
        # that has them open) so that the fetch below writes fresh ones and republishes the version.
        metrics.add("corrupt_refetches", len(bad))
        log.warning("cached %s failed verification (%s); fetching again", uri, ", ".join(e.path for e in bad))
        for entry in bad:
            cache.discard_blob(entry.sha256)
        return None
    cache.touch(key)
    previous = cache.read_ref(uri)
    # Rewritten only when it changes or when its timestamp matters (a freshness TTL is configured).
    if previous is None or previous.version_key != key or settings.cache_freshness_ttl_s > 0:
        cache.write_ref(Ref(uri, key, resolved.immutable, time.time()))
    metrics.add("hits")
    return ModelHandle(
        uri=uri, path=cache.tree_path(key), version_key=key, manifest=manifest, pin=pin, from_cache=True
    )


@contextlib.asynccontextmanager
async def _single_flight(path: Path, timeout_s: float, uri: str) -> AsyncIterator[None]:
    """An exclusive cross-process lock, awaited without blocking the event loop."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            lock.acquire(timeout=0)
            break
        except Timeout:
            if time.monotonic() > deadline:
                raise StoreError(
                    f"timed out after {timeout_s:.0f}s waiting for another fetch of {uri}"
                ) from None
            await asyncio.sleep(0.05)
    try:
        yield
    finally:
        lock.release()


async def _download_all(
    cache: Cache, resolved: Resolved, settings: StoreSettings, progress: FetchProgress | None
) -> list[FileEntry]:
    todo: list[RemoteFile] = []
    entries: dict[str, FileEntry] = {}
    for file in resolved.files:
        # Unchanged objects of a new version (same ETag) reuse their blob: no GET.
        sha = cache.blob_for_etag(file.etag, file.size, file.version_id)
        if sha is not None:
            entries[file.path] = FileEntry(file.path, file.size, sha, file.etag, file.version_id)
        else:
            todo.append(file)
    if progress is not None:
        progress.start(sum(f.size for f in todo))
    advance: Progress | None = progress.advance if progress is not None else None

    async def one(file: RemoteFile) -> None:
        temp = cache.temp_path(Path(file.path).name[:60])
        try:
            digests = await resolved.downloader.download(file, temp, advance)
            size = temp.stat().st_size
            if size != file.size:
                raise StoreError(f"{resolved.location}/{file.path}: got {size} bytes, expected {file.size}")
            if file.md5 is not None and digests.md5 is not None and digests.md5 != file.md5:
                raise StoreError(
                    f"{resolved.location}/{file.path}: MD5 {digests.md5} does not match ETag {file.md5}"
                )
            # fsync + rename in a worker thread, overlapping the other files still downloading.
            await asyncio.to_thread(cache.adopt_blob, temp, digests.sha256)
            cache.remember_etag(file.etag, file.size, file.version_id, digests.sha256)
            entries[file.path] = FileEntry(file.path, file.size, digests.sha256, file.etag, file.version_id)
        finally:
            temp.unlink(missing_ok=True)

    try:
        async with asyncio.TaskGroup() as group:
            for file in todo:
                group.create_task(one(file))
    except BaseExceptionGroup as failed:
        # The first failure cancels the siblings; report it, not the group wrapper.
        raise failed.exceptions[0] from None
    return [entries[f.path] for f in resolved.files]
