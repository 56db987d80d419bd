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

    Runs the fetch on a private event loop; when the calling thread already runs a loop (a
    synchronous call from inside async code), the private loop runs in a helper thread instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(fetch_model(uri, settings, progress=progress))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="zeroserve-store") as pool:
        return pool.submit(asyncio.run, fetch_model(uri, settings, progress=progress)).result()
