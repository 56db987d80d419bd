"""Model signatures for the gateway's tools: fetched once per served model version, never in the way.

The signature lives with the model, so the gateway opens the model through the store's warm cache
(``runtime.store.fetch_model``), reads the signature files (``router.mcp.signature``) and lets go.
On one machine the cache is the one the replicas use, so this fetch also warms the next cold start;
a local directory is read in place.

Entries are keyed by endpoint name and config version: a config version never changes, and a new one
(a new model, say) gets a new key. Concurrent listings share one fetch (single flight). A listing
waits at most ``budget_s`` for a signature: a large model still downloading lists its tool with the
generic MLflow scoring schema until the fetch completes. A failed fetch is retried after
``retry_after_s``, not on every listing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from router.mcp.signature import UNKNOWN, ModelSignature, read_signature

log = logging.getLogger("zeroserve.mcp")

Loader = Callable[[str], Awaitable[ModelSignature]]
MAX_ENTRIES = 1024


async def load_from_store(model_uri: str) -> ModelSignature:
    """Open ``model_uri`` through the model store and read its signature (files only, no model load)."""
    from runtime.store import fetch_model

    handle = await fetch_model(model_uri)
    try:
        return await asyncio.to_thread(read_signature, handle.path)
    finally:
        handle.close()


@dataclass(slots=True)
class _Entry:
    task: asyncio.Task[ModelSignature]
    finished_at: float | None = None


class SignatureCache:
    def __init__(
        self,
        load: Loader = load_from_store,
        *,
        budget_s: float = 5.0,
        retry_after_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.budget_s = budget_s
        self.retry_after_s = retry_after_s
        self._monotonic = monotonic
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()

    async def get(
        self, key: Hashable, model_uri: str, *, budget_s: float | None = None
    ) -> ModelSignature | None:
        """The signature for ``key``; None while it is still being fetched after ``budget_s`` (by
        default the cache's own).
        A model whose signature cannot be read gets ``UNKNOWN`` (the generic schema), not an error."""
        entry = self._entry(key, model_uri)
        if not entry.task.done():
            wait_s = budget_s if budget_s is not None else self.budget_s
            # asyncio.wait neither cancels the fetch when the time is up (or when this listing is
            # cancelled) nor raises its failure: the fetch outlives a listing that stops waiting for it.
            await asyncio.wait([entry.task], timeout=wait_s)
        if not entry.task.done():
            return None
        if entry.task.cancelled() or entry.task.exception() is not None:
            return UNKNOWN
        return entry.task.result()

    def _entry(self, key: Hashable, model_uri: str) -> _Entry:
        entry = self._entries.get(key)
        now = self._monotonic()
        if entry is not None and entry.task.done() and entry.task.cancelled():
            entry = None
        if (entry is not None and entry.task.done() and entry.task.exception() is not None
                and entry.finished_at is not None and now - entry.finished_at >= self.retry_after_s):
            entry = None
        if entry is None:
            entry = _Entry(asyncio.create_task(self._fetch(model_uri), name=f"mcp-signature {model_uri}"))
            entry.task.add_done_callback(functools.partial(self._finished, entry))
            self._entries[key] = entry
            while len(self._entries) > MAX_ENTRIES:
                _, evicted = self._entries.popitem(last=False)
                evicted.task.cancel()
        self._entries.move_to_end(key)
        return entry

    def _finished(self, entry: _Entry, task: asyncio.Task[ModelSignature]) -> None:
        entry.finished_at = self._monotonic()
        if not task.cancelled():
            task.exception()  # retrieved here: a failure is logged once by _fetch, not again by asyncio

    async def _fetch(self, model_uri: str) -> ModelSignature:
        started = time.perf_counter()
        try:
            signature = await self._load(model_uri)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cannot read the signature of %s (tools use the generic schema): %s", model_uri, exc)
            raise
        log.info("signature of %s read from %s in %.2f s", model_uri, signature.source,
                 time.perf_counter() - started)
        return signature

    async def aclose(self) -> None:
        tasks = [entry.task for entry in self._entries.values() if not entry.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
