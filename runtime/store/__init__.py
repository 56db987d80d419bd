"""The model store and its warm cache.

``open_model(uri)`` gives a replica a local directory holding the model, downloading it at most once
per machine: versions are content-addressed on disk, shared by every process, fetched under a
cross-process lock, verified, published atomically, pinned while in use and evicted least-recently-
used. Supported URIs: ``s3://bucket/key-or-prefix[?versionId=...]`` (any S3-compatible store),
``file:///path`` or a plain path, ``models:/name/version`` and ``runs:/run_id/path`` (MLflow).

Importing this package is cheap: aiobotocore and mlflow are imported only by the code paths that talk
to S3 or MLflow, so a local or warm-cache open never loads them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from runtime.store.fetch import FetchProgress, fetch_model
from runtime.store.handle import ModelHandle
from runtime.store.metrics import CacheStats, cache_stats
from runtime.store.settings import StoreSettings
from runtime.store.sources import StoreUnreachable

__all__ = [
    "CacheStats",
    "FetchProgress",
    "ModelHandle",
    "StoreSettings",
    "StoreUnreachable",
    "cache_stats",
    "fetch_model",
    "open_model",
]


def open_model(
    uri: str, settings: StoreSettings | None = None, *, progress: FetchProgress | None = None
) -> ModelHandle:
    """Synchronous :func:`fetch_model`, callable before (or outside) any event loop.

    Runs the fetch on this process's store loop (a background thread, see
    ``runtime.store.background``), which keeps S3 clients and their connections between calls so that
    a warm open of an ``s3://`` prefix costs one listing on a live connection.
    """
    from runtime.store import background

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None and background.is_background_loop(running):
        # Called from code running on the store loop itself (a progress callback): waiting on that
        # loop would deadlock, so this call gets a private loop in a helper thread.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zeroserve-store") as pool:
            return pool.submit(asyncio.run, fetch_model(uri, settings, progress=progress)).result()
    return background.run(fetch_model(uri, settings, progress=progress))
