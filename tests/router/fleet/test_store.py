"""The fleet's tables on both engines: the lease's rules, heartbeats, the registry and the secret."""

from __future__ import annotations

import time
from collections.abc import Callable

from autoscaler.types import EntityKey, ReplicaInfo, ReplicaOptimization
from router.fleet.store import FleetStore
from router.state.db import Database

OpenDb = Callable[[], Database]


def test_one_holder_at_a_time_until_the_lease_expires(open_db: OpenDb) -> None:
    one, other = FleetStore(open_db()), FleetStore(open_db())
    first = one.acquire("a", ttl_ms=400)
    assert first.holder == "a" and first.expires_ms - first.now_ms == 400
    refused = other.acquire("b", ttl_ms=400)
    assert refused.holder == "a" and refused.since_ms == first.since_ms
    renewed = one.acquire("a", ttl_ms=400)  # renewing keeps "since"
    assert renewed.holder == "a" and renewed.since_ms == first.since_ms
    assert renewed.expires_ms >= first.expires_ms
    time.sleep(0.45)
    taken = other.acquire("b", ttl_ms=400)
    assert taken.holder == "b" and taken.since_ms >= renewed.expires_ms
    assert one.acquire("a", ttl_ms=400).holder == "b"  # the old holder cannot take it back meanwhile


def test_release_hands_the_lease_over_at_once(open_db: OpenDb) -> None:
    one, other = FleetStore(open_db()), FleetStore(open_db())
    one.acquire("a", ttl_ms=60_000)
    other.release("b")  # not the holder: nothing happens
    assert other.acquire("b", ttl_ms=60_000).holder == "a"
    one.release("a")
    assert other.acquire("b", ttl_ms=60_000).holder == "b"
    lease = one.lease()
    assert lease is not None and lease.holder == "b"


def test_heartbeats_and_leaving(open_db: OpenDb) -> None:
    store = FleetStore(open_db())
    store.heartbeat("a", "http://127.0.0.1:1", "host", 10, 1)
    store.heartbeat("b", "http://127.0.0.1:2", "host", 11, 2)
    store.heartbeat("a", "http://127.0.0.1:3", "host", 10, 1)  # the URL may be learnt later
    assert [(g.gateway_id, g.url) for g in store.gateways()] == [("a", "http://127.0.0.1:3"),
                                                                 ("b", "http://127.0.0.1:2")]
    assert len(store.gateways(seen_within_ms=60_000)) == 2
    store.leave("a")
    assert [g.gateway_id for g in store.gateways()] == ["b"]
    time.sleep(0.05)
    assert store.forget_gateways(silent_for_ms=10) == 1 and store.gateways() == []


def test_registry_and_published_state(open_db: OpenDb) -> None:
    store = FleetStore(open_db())
    key = EntityKey("fraud", "m")
    replica = ReplicaInfo("fraud-m-1", key, "http://127.0.0.1:5000", 4,
                          ReplicaOptimization("onnx", "converted", "auto"))
    store.register(replica, "READY", "a", 1234)
    (listed,) = store.replicas()
    assert listed.info == replica and listed.info.optimization == replica.optimization
    assert (listed.state, listed.pid, listed.owner) == ("READY", 1234, "a")
    store.register(replica, "DRAINING", "b", 1234)
    assert [(r.state, r.owner) for r in store.replicas()] == [("DRAINING", "b")]
    store.unregister("fraud-m-1")
    assert store.replicas() == []
    store.publish({key: ({"deployment": "DEPLOYMENT_READY", "ready": 1}, None)})
    store.publish({key: ({"deployment": "DEPLOYMENT_FAILED", "ready": 0}, "it broke")})
    assert store.published() == {key: ({"deployment": "DEPLOYMENT_FAILED", "ready": 0}, "it broke")}


def test_every_gateway_gets_the_same_secret(open_db: OpenDb) -> None:
    first = FleetStore(open_db()).secret()
    assert len(first) >= 40 and FleetStore(open_db()).secret() == first
