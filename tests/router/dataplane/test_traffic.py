"""Traffic split and the routing table: validation, deterministic and random entity choice."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import orjson
import pytest

from autoscaler.types import EntityKey
from router.dataplane.routing import EndpointRouting, RoutingTable
from router.dataplane.traffic import bucket_of, choose_entity, peek_client_request_id, shadow_targets
from runtime.errors import InvalidParameterValue, NoCapacity, NotFound

A = EntityKey("ep", "a")
B = EntityKey("ep", "b")
C = EntityKey("ep", "c")


@dataclass
class BadRoutesCase:
    id: str
    routes: list[tuple[EntityKey, int]]
    message: str


BAD_ROUTES = [
    BadRoutesCase("sum below 100", [(A, 50), (B, 40)], "sum to 90"),
    BadRoutesCase("sum above 100", [(A, 80), (B, 40)], "sum to 120"),
    BadRoutesCase("negative share", [(A, 110), (B, -10)], "within 0..100"),
    BadRoutesCase("entity routed twice", [(A, 50), (A, 50)], "routed twice"),
    BadRoutesCase("entity of another endpoint", [(EntityKey("other", "a"), 100)], "does not belong"),
]


@pytest.mark.parametrize("case", BAD_ROUTES, ids=[case.id for case in BAD_ROUTES])
def test_invalid_routes_are_refused_and_change_nothing(case: BadRoutesCase) -> None:
    table = RoutingTable()
    table.set_endpoint("ep", [(A, 100)])
    with pytest.raises(InvalidParameterValue, match=case.message):
        table.set_endpoint("ep", case.routes)
    assert table.lookup("ep").routes[0].entity == A


@pytest.mark.parametrize(
    "settings",
    [
        {"queue_timeout_s": 0},
        {"queue_timeout_s": float("inf")},
        {"max_queue": -1},
        {"upstream_timeout_s": -1.0},
    ],
    ids=["zero queue timeout", "infinite queue timeout", "negative queue", "negative upstream timeout"],
)
def test_invalid_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(InvalidParameterValue):
        EndpointRouting(**settings)  # type: ignore[arg-type]


def test_lookup_of_unknown_endpoint_is_404_and_removal_forgets() -> None:
    table = RoutingTable()
    table.set_endpoint("ep", [(A, 100)])
    assert "ep" in table and len(table) == 1 and table.names() == ["ep"]
    table.remove_endpoint("ep")
    with pytest.raises(NotFound, match="'ep' does not exist"):
        table.lookup("ep")
    table.remove_endpoint("ep")  # idempotent


def test_endpoint_without_traffic_answers_503() -> None:
    table = RoutingTable()
    entry = table.set_endpoint("ep", [])
    with pytest.raises(NoCapacity, match="no served entity"):
        choose_entity(entry)
    entry = table.set_endpoint("ep", [(A, 0), (B, 100)])
    assert choose_entity(entry) == B  # a 0% route never takes traffic


def test_single_route_takes_everything_without_drawing() -> None:
    entry = RoutingTable().set_endpoint("ep", [(A, 100)])

    def no_draw() -> float:
        raise AssertionError("must not draw")

    assert choose_entity(entry, draw=no_draw) == A


@dataclass
class DrawCase:
    id: str
    draw: float
    expect: EntityKey


DRAWS = [
    DrawCase("0.00 -> first", 0.0, A),
    DrawCase("0.699 -> first (bucket 69 < 70)", 0.699, A),
    DrawCase("0.70 -> second", 0.70, B),
    DrawCase("0.899 -> second (bucket 89 < 90)", 0.899, B),
    DrawCase("0.90 -> third", 0.90, C),
    DrawCase("0.999 -> third", 0.999, C),
]


@pytest.mark.parametrize("case", DRAWS, ids=[case.id for case in DRAWS])
def test_random_draw_maps_to_cumulative_shares(case: DrawCase) -> None:
    entry = RoutingTable().set_endpoint("ep", [(A, 70), (B, 20), (C, 10)])
    assert choose_entity(entry, draw=lambda: case.draw) == case.expect


def test_random_split_follows_percentages() -> None:
    entry = RoutingTable().set_endpoint("ep", [(A, 90), (B, 10)])
    rng = random.Random(5)
    counts = Counter(choose_entity(entry, draw=rng.random) for _ in range(20000))
    assert abs(counts[A] / 20000 - 0.9) < 0.01


def test_client_request_id_always_lands_on_the_same_entity() -> None:
    entry = RoutingTable().set_endpoint("ep", [(A, 50), (B, 50)])
    ids = [f"req-{index}" for index in range(200)]
    first = [choose_entity(entry, request_id) for request_id in ids]
    again = [choose_entity(entry, request_id, draw=random.Random(1).random) for request_id in ids]
    assert first == again
    assert 60 < sum(entity == A for entity in first) < 140  # the hash spreads ids over both
    assert bucket_of("req-1") == bucket_of("req-1") and 0 <= bucket_of("req-1") < 100


def test_shadow_targets_follow_their_own_percentage() -> None:
    entry = RoutingTable().set_endpoint("ep", [(A, 100)], shadows=[(B, 25)])
    rng = random.Random(3)
    mirrored = sum(bool(shadow_targets(entry, rng.random)) for _ in range(4000))
    assert abs(mirrored / 4000 - 0.25) < 0.03
    assert shadow_targets(RoutingTable().set_endpoint("ep", [(A, 100)])) == []


def test_peek_leaves_bodies_without_request_id_untouched() -> None:
    body = b'{"inputs": [[1, 2]]}'
    request_id, forwarded = peek_client_request_id(body)
    assert request_id is None and forwarded is body


def test_peek_extracts_and_strips_the_request_id() -> None:
    body = b'{"client_request_id": "abc", "inputs": [[1.5, 2]]}'
    request_id, forwarded = peek_client_request_id(body)
    assert request_id == "abc"
    assert orjson.loads(forwarded) == {"inputs": [[1.5, 2]]}


@pytest.mark.parametrize(
    "body",
    [b"client_request_id,x\n1,2\n", b'{"client_request_id": "x", broken', b'["client_request_id"]'],
    ids=["csv", "invalid json", "json array"],
)
def test_peek_passes_bodies_it_cannot_read_through(body: bytes) -> None:
    assert peek_client_request_id(body) == (None, body)


def test_peek_rejects_a_non_string_request_id() -> None:
    with pytest.raises(InvalidParameterValue, match="client_request_id must be a string"):
        peek_client_request_id(b'{"client_request_id": [1], "inputs": [1]}')
