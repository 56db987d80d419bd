"""The signature cache: one fetch per key, a bounded wait for listings, retries after failures."""

from __future__ import annotations

import asyncio

from router.mcp.signature import UNKNOWN, ModelSignature
from router.mcp.signatures import SignatureCache

KNOWN = ModelSignature(source="MLmodel")


class FakeStore:
    """Loads signatures on demand; ``gate`` holds every load until it is set."""

    def __init__(self, *, fail: bool = False) -> None:
        self.loads: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = fail

    async def load(self, model_uri: str) -> ModelSignature:
        self.loads.append(model_uri)
        await self.gate.wait()
        if self.fail:
            raise OSError(f"store unreachable for {model_uri}")
        return KNOWN


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_listings_share_one_fetch() -> None:
    store = FakeStore()
    store.gate.clear()
    cache = SignatureCache(store.load, budget_s=5.0)
    waiting = [asyncio.create_task(cache.get(("ep", 1), "s3://b/m/1")) for _ in range(5)]
    await asyncio.sleep(0.01)
    store.gate.set()
    assert await asyncio.gather(*waiting) == [KNOWN] * 5
    assert store.loads == ["s3://b/m/1"]
    assert await cache.get(("ep", 1), "s3://b/m/1") == KNOWN and len(store.loads) == 1


async def test_a_slow_fetch_does_not_hold_up_the_listing_and_keeps_going() -> None:
    store = FakeStore()
    store.gate.clear()
    cache = SignatureCache(store.load, budget_s=0.05)
    assert await cache.get(("ep", 1), "s3://b/big/1") is None  # still downloading
    store.gate.set()
    assert await cache.get(("ep", 1), "s3://b/big/1", budget_s=5.0) == KNOWN
    assert store.loads == ["s3://b/big/1"]  # the same fetch, not a second one


async def test_a_failed_fetch_gives_the_generic_signature_and_is_retried_later() -> None:
    store = FakeStore(fail=True)
    clock = FakeClock()
    cache = SignatureCache(store.load, retry_after_s=30.0, monotonic=clock)
    assert await cache.get(("ep", 1), "s3://b/m/1") is UNKNOWN
    clock.now += 10.0
    assert await cache.get(("ep", 1), "s3://b/m/1") is UNKNOWN
    assert len(store.loads) == 1  # not hammered on every listing
    store.fail = False
    clock.now += 25.0
    assert await cache.get(("ep", 1), "s3://b/m/1") == KNOWN
    assert len(store.loads) == 2


async def test_a_new_config_version_is_a_new_key() -> None:
    store = FakeStore()
    cache = SignatureCache(store.load)
    await cache.get(("ep", 1), "s3://b/m/1")
    await cache.get(("ep", 2), "s3://b/m/2")
    assert store.loads == ["s3://b/m/1", "s3://b/m/2"] and len(cache) == 2


async def test_close_cancels_pending_fetches() -> None:
    store = FakeStore()
    store.gate.clear()
    cache = SignatureCache(store.load, budget_s=0.01)
    assert await cache.get(("ep", 1), "s3://b/m/1") is None
    await cache.aclose()
    assert len(cache) == 0


async def test_a_cancelled_listing_leaves_the_fetch_running() -> None:
    store = FakeStore()
    store.gate.clear()
    cache = SignatureCache(store.load, budget_s=30.0)
    listing = asyncio.create_task(cache.get(("ep", 1), "s3://b/m/1"))
    await asyncio.sleep(0.01)
    listing.cancel()
    await asyncio.gather(listing, return_exceptions=True)
    store.gate.set()
    assert await cache.get(("ep", 1), "s3://b/m/1") == KNOWN
    assert store.loads == ["s3://b/m/1"]
