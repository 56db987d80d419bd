"""S3 (and any S3-compatible store) through aiobotocore: listing, and parallel ranged GETs to disk.

Imported only when an ``s3://`` URI is fetched, so that replicas serving local or cached models never
pay for aiobotocore's import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore import exceptions as boto_errors

from runtime.errors import StoreError
from runtime.store.hashing import SequentialHasher
from runtime.store.manifest import RemoteFile, check_relative_path
from runtime.store.metrics import metrics
from runtime.store.settings import StoreSettings
from runtime.store.sources import Digests, Progress, Resolved, StoreUnreachable
from runtime.store.uri import S3Source

log = logging.getLogger("zeroserve.store")
T = TypeVar("T")

_WRITE_BATCH = 1024 * 1024  # gather received chunks into ~1 MiB writes
_RETRYABLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
    "RequestTimeout", "InternalError", "ServiceUnavailable", "RequestLimitExceeded",
}  # fmt: skip
# Transport failures: the store may answer if asked again (and if it never does, it is unreachable).
_TRANSPORT_ERRORS = (
    boto_errors.HTTPClientError,  # resets, closed connections, timeouts, proxy errors
    boto_errors.ConnectionError,  # connection refused, endpoint unreachable
    boto_errors.ResponseStreamingError,
    boto_errors.IncompleteReadError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)
# The body failed the store's checksum (CRC32/SHA of the object): refetch the range from its start.
_CORRUPT_BODY = (boto_errors.ChecksumError, boto_errors.FlexibleChecksumError)

_session: AioSession | None = None


def _client_key(settings: StoreSettings) -> tuple[Any, ...]:
    # Every setting _client_context reads; two settings objects equal here get the same client.
    return (
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_addressing_style,
        settings.s3_verify_tls,
        settings.max_concurrency,
        settings.connect_timeout_s,
        settings.read_timeout_s,
    )


def _client_context(settings: StoreSettings) -> Any:
    config = AioConfig(
        # Retries are ours (with resume of partial ranges); botocore's would restart whole bodies.
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=settings.max_concurrency,
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        s3={"addressing_style": settings.s3_addressing_style},
    )
    region = settings.s3_region or ("us-east-1" if settings.s3_endpoint_url else None)
    endpoint = settings.s3_endpoint_url
    # Certificate verification only exists for https; turning it off for a plain-http endpoint loses
    # nothing and skips building an SSL context in a worker thread (~40 ms of every cold open).
    verify = settings.s3_verify_tls and not (endpoint or "").lower().startswith("http://")
    return _shared_session().create_client(
        "s3", endpoint_url=endpoint, region_name=region, config=config, verify=verify
    )


# Clients kept open on open_model's process-wide loop (runtime.store.background), one per client key:
# each is only ever used on that loop, and closed by close_shared_clients at interpreter exit.
_shared_clients: dict[tuple[Any, ...], tuple[Any, Any]] = {}  # key -> (context manager, client)
_shared_lock: asyncio.Lock | None = None
_shared_pid = os.getpid()
# Clients inherited across fork: their connections are the parent's sockets, so the child neither
# uses nor closes them, and keeps them referenced so that garbage collection does not close them.
_inherited_clients: list[tuple[Any, Any]] = []


async def _shared_client(settings: StoreSettings) -> Any:
    global _shared_lock, _shared_pid
    if _shared_pid != os.getpid():
        _inherited_clients.extend(_shared_clients.values())
        _shared_clients.clear()
        _shared_lock, _shared_pid = None, os.getpid()
    if _shared_lock is None:
        _shared_lock = asyncio.Lock()  # created on, and only used on, the background loop
    key = _client_key(settings)
    async with _shared_lock:  # concurrent first opens build one client, not several
        entry = _shared_clients.get(key)
        if entry is None:
            context = _client_context(settings)
            entry = (context, await context.__aenter__())
            _shared_clients[key] = entry
        return entry[1]


async def close_shared_clients() -> None:
    """Close every kept client (called on ``loop``, the background loop, at interpreter exit)."""
    entries = list(_shared_clients.values())
    _shared_clients.clear()
    for context, _client in entries:
        with contextlib.suppress(Exception):
            await context.__aexit__(None, None, None)


class _Cursor:
    """How far a range has been written; survives the exception that interrupts a transfer."""

    __slots__ = ("offset",)

    def __init__(self, offset: int) -> None:
        self.offset = offset


class _ShortRead(Exception):
    """The body ended before the bytes its range promised."""


def _shared_session() -> AioSession:
    # A session caches the parsed service model and credential chain; clients are per event loop.
    global _session
    if _session is None:
        _session = get_session()
    return _session


class S3Store:
    """One S3 client for one fetch; also the :class:`Downloader` of the files it resolves."""

    def __init__(self, client: Any, settings: StoreSettings) -> None:
        self._client = client
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.max_concurrency)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, settings: StoreSettings) -> AsyncIterator[S3Store]:
        from runtime.store.background import is_background_loop

        # On open_model's process-wide loop the client outlives the call.
        if is_background_loop(asyncio.get_running_loop()):
            yield cls(await _shared_client(settings), settings)
            return
        async with _client_context(settings) as client:
            yield cls(client, settings)

    # ---- resolving --------------------------------------------------------------------------------
    async def resolve(self, source: S3Source, uri: str) -> Resolved:
        location = f"s3://{source.bucket}/{source.key}"
        if source.version_id is not None:
            head = await self._call(
                uri,
                lambda: self._client.head_object(
                    Bucket=source.bucket, Key=source.key, VersionId=source.version_id
                ),
            )
            name = PurePosixPath(source.key).name
            file = RemoteFile(
                name, source.key, int(head["ContentLength"]), head.get("ETag"), source.version_id
            )
            return Resolved(source.display, [file], _Downloader(self, source.bucket), immutable=True)
        objects = await self._call(uri, lambda: self._list(source.bucket, source.key))
        files = _select(objects, source.key, uri)
        return Resolved(location, files, _Downloader(self, source.bucket), immutable=False)

    async def _list(self, bucket: str, prefix: str) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = []
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            objects.extend(page.get("Contents", []))
        return objects

    # ---- downloading ------------------------------------------------------------------------------
    async def download(self, bucket: str, file: RemoteFile, dest: Path, progress: Progress | None) -> Digests:
        part = self._settings.part_size_bytes
        fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, file.size)
            hasher = SequentialHasher(fd, file.size, want_md5=file.md5 is not None)
            ranges = [(start, min(start + part, file.size)) for start in range(0, file.size, part)]
            async with asyncio.TaskGroup() as group:
                hashing = group.create_task(hasher.run())
                parts = [
                    group.create_task(self._fetch_range(bucket, file, fd, start, end, hasher, progress))
                    for start, end in ranges
                ]
                group.create_task(_flush_when_written(fd, parts))
            return hashing.result()
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        finally:
            os.close(fd)

    async def _fetch_range(
        self,
        bucket: str,
        file: RemoteFile,
        fd: int,
        start: int,
        end: int,
        hasher: SequentialHasher,
        progress: Progress | None,
    ) -> None:
        """Fetch bytes [start, end) into ``fd``; a failed attempt resumes where the last one stopped."""
        cursor = _Cursor(start)
        failures = 0
        whole = start == 0 and end == file.size
        while cursor.offset < end:
            began_at = cursor.offset
            try:
                async with self._slots:
                    args: dict[str, Any] = {"Bucket": bucket, "Key": file.key}
                    if not (whole and cursor.offset == 0):
                        args["Range"] = f"bytes={cursor.offset}-{end - 1}"
                    # If-Match: a re-upload during the transfer fails it rather than mixing two versions.
                    if file.version_id:
                        args["VersionId"] = file.version_id
                    elif file.etag:
                        args["IfMatch"] = file.etag
                    metrics.add("get_requests")
                    response = await self._client.get_object(**args)
                    async with response["Body"] as body:
                        await self._drain(body, fd, cursor, end, progress)
                if cursor.offset < end:
                    raise _ShortRead(f"body ended at byte {cursor.offset} of {end}")
            except (
                *_TRANSPORT_ERRORS,
                _ShortRead,
                boto_errors.ClientError,
                *_CORRUPT_BODY,
            ) as exc:
                if isinstance(exc, boto_errors.ClientError) and not _retryable(exc):
                    raise _definitive(exc, f"s3://{bucket}/{file.key}") from exc
                if isinstance(exc, _CORRUPT_BODY):
                    # The store's own checksum of the body failed: what was written is suspect, so the
                    # range starts over instead of resuming.
                    cursor.offset = began_at = start
                # Progress resets the count: a link that keeps dropping but keeps moving gets there.
                failures = 0 if cursor.offset > began_at else failures + 1
                if failures >= self._settings.retry_attempts:
                    raise StoreUnreachable(
                        f"s3://{bucket}/{file.key}: transfer failed {failures} times: {_describe(exc)}"
                    ) from exc
                metrics.add("retries")
                log.info(
                    "retrying s3://%s/%s from byte %d: %s", bucket, file.key, cursor.offset, _describe(exc)
                )
                await asyncio.sleep(self._backoff(failures))
        hasher.part_done(start, end)

    async def _drain(self, body: Any, fd: int, cursor: _Cursor, end: int, progress: Progress | None) -> None:
        pending: list[bytes] = []
        pending_bytes = 0
        try:
            async for chunk in body.iter_chunks(_WRITE_BATCH):
                if cursor.offset + pending_bytes + len(chunk) > end:
                    raise StoreError(f"store sent more than the {end - cursor.offset} bytes requested")
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= _WRITE_BATCH:
                    # Disk writes go to a worker thread: the loop keeps every other stream moving
                    # (page-cache writes on a slow disk otherwise stall all parts at once).
                    written = await asyncio.to_thread(os.pwritev, fd, pending, cursor.offset)
                    self._advance(cursor, written, progress)
                    pending, pending_bytes = [], 0
        finally:
            # Keep whatever arrived before a fault, so that the retry resumes after it.
            if pending:
                self._advance(cursor, os.pwritev(fd, pending, cursor.offset), progress)

    @staticmethod
    def _advance(cursor: _Cursor, written: int, progress: Progress | None) -> None:
        cursor.offset += written
        metrics.add("bytes_fetched", written)
        if progress is not None:
            progress(written)

    # ---- retries ----------------------------------------------------------------------------------
    def _backoff(self, failures: int) -> float:
        # Full jitter: spreads replicas that failed together so they do not retry together.
        ceiling = min(
            self._settings.retry_backoff_max_s, self._settings.retry_backoff_s * 2 ** (failures - 1)
        )
        return random.uniform(ceiling / 2, ceiling)

    async def _call(self, what: str, request: Callable[[], Awaitable[T]]) -> T:
        """A metadata request, retried on throttling, 5xx and transport faults."""
        failures = 0
        while True:
            try:
                return await request()
            except (*_TRANSPORT_ERRORS, boto_errors.ClientError) as exc:
                if isinstance(exc, boto_errors.ClientError) and not _retryable(exc):
                    raise _definitive(exc, what) from exc
                failures += 1
                if failures >= self._settings.retry_attempts:
                    raise StoreUnreachable(f"{what}: store unreachable: {_describe(exc)}") from exc
                metrics.add("retries")
                await asyncio.sleep(self._backoff(failures))
            except boto_errors.NoCredentialsError as exc:
                raise StoreError(f"{what}: no AWS credentials found ({exc})") from exc


async def _flush_when_written(fd: int, parts: list[asyncio.Task[None]]) -> None:
    """Flush the file to disk once every part is written, while the hasher still reads the last one.

    The fsync before publishing (which still runs) then finds nothing left to write: on a cold fetch
    the flush of the last file is otherwise added, whole, after its hash.
    """
    if parts:
        await asyncio.wait(parts)
    if all(not part.cancelled() and part.exception() is None for part in parts):
        await asyncio.to_thread(os.fdatasync, fd)


class _Downloader:
    def __init__(self, store: S3Store, bucket: str) -> None:
        self._store = store
        self._bucket = bucket

    async def download(self, file: RemoteFile, dest: Path, progress: Progress | None) -> Digests:
        return await self._store.download(self._bucket, file, dest, progress)


def _select(objects: list[dict[str, Any]], key: str, uri: str) -> list[RemoteFile]:
    """The files of ``key``: everything under ``key/`` if that exists, else the object ``key`` itself."""
    prefix = f"{key}/" if key else ""
    files = [
        RemoteFile(check_relative_path(o["Key"][len(prefix) :], uri), o["Key"], int(o["Size"]), o.get("ETag"))
        for o in objects
        if o["Key"].startswith(prefix) and not o["Key"].endswith("/")  # "folder" markers hold nothing
    ]
    if files:
        return sorted(files, key=lambda f: f.path)
    exact = [o for o in objects if o["Key"] == key]
    if exact:
        obj = exact[0]
        return [RemoteFile(PurePosixPath(key).name, key, int(obj["Size"]), obj.get("ETag"))]
    raise StoreError(f"{uri}: no object or prefix with that name in the store")


def _retryable(exc: boto_errors.ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return error.get("Code") in _RETRYABLE_CODES or status == 429 or status >= 500


def _definitive(exc: boto_errors.ClientError, what: str) -> StoreError:
    error = exc.response.get("Error", {})
    code = error.get("Code", "?")
    if code in ("PreconditionFailed", "412"):
        return StoreError(f"{what}: the object changed while it was being fetched; try again")
    return StoreError(f"{what}: {code}: {error.get('Message') or exc}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
