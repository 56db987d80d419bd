from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from router.auth.ratelimit import RateLimiter, enforce, gcra, parse_rate_limits
from router.auth.types import EndpointRef, Principal, RateLimitRule
from router.errors import RateLimited
from runtime.errors import InvalidParameterValue

ALICE, BOB = Principal("alice", frozenset({"ml"})), Principal("bob", frozenset({"ml"}))
CAROL = Principal("carol", frozenset({"ops"}))


def test_gcra_worked_example() -> None:
    # 2 calls/minute: T = 30 s, tau = 30 s (the module docstring's example).
    allowed, tat, _ = gcra(None, 0.0, 2, 60.0)
    assert (allowed, tat) == (True, 30.0)
    allowed, tat, _ = gcra(tat, 0.0, 2, 60.0)
    assert (allowed, tat) == (True, 60.0)
    assert gcra(tat, 0.0, 2, 60.0) == (False, 60.0, 30.0)
    assert gcra(tat, 30.0, 2, 60.0)[0] is True
    assert gcra(None, 0.0, 0, 60.0) == (False, 0.0, 60.0)


@dataclass(frozen=True)
class Step:
    at: float  # seconds since the start of the scenario
    principal: Principal | None
    allowed: bool
    retry_after: int | None = None  # the Retry-After header when refused


@dataclass(frozen=True)
class Scenario:
    id: str
    rules: tuple[RateLimitRule, ...]
    steps: tuple[Step, ...] = field(default=())


SCENARIOS = [
    Scenario("endpoint-3-per-minute-shared", (RateLimitRule(3, "endpoint"),), (
        Step(0, ALICE, True), Step(0, BOB, True), Step(0, CAROL, True), Step(1, ALICE, False, 19),
        Step(20, BOB, True), Step(21, CAROL, False, 19), Step(40, CAROL, True),
    )),
    Scenario("per-user-buckets-are-separate", (RateLimitRule(1, "user"),), (
        Step(0, ALICE, True), Step(0, BOB, True), Step(5, ALICE, False, 55), Step(60, ALICE, True),
    )),
    Scenario("user-and-endpoint-both-apply", (RateLimitRule(10, "endpoint"), RateLimitRule(1, "user")), (
        Step(0, ALICE, True), Step(0, ALICE, False, 60), Step(0, BOB, True),
    )),
    Scenario("refused-request-charges-nothing", (RateLimitRule(2, "endpoint"), RateLimitRule(1, "user")), (
        Step(0, ALICE, True), Step(0, ALICE, False, 60), Step(0, ALICE, False, 60), Step(0, BOB, True),
        Step(0, CAROL, False, 30),
    )),
    Scenario("ai-gateway-rule-for-one-principal", (RateLimitRule(1, "user", principal="alice"),), (
        Step(0, ALICE, True), Step(0, ALICE, False, 60), Step(0, BOB, True), Step(0, BOB, True),
    )),
    Scenario("user-group-bucket-shared-by-members", (RateLimitRule(2, "user_group"),), (
        Step(0, ALICE, True), Step(0, BOB, True), Step(0, ALICE, False, 30), Step(0, CAROL, True),
    )),
    Scenario("zero-calls-closes-the-endpoint", (RateLimitRule(0, "endpoint"),), (
        Step(0, ALICE, False, 60),
    )),
    Scenario("auth-disabled-counts-as-one-user", (RateLimitRule(1, "user"),), (
        Step(0, None, True), Step(0, None, False, 60),
    )),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_rate_limit_scenarios(scenario: Scenario) -> None:
    limiter = RateLimiter()
    endpoint = EndpointRef("ep-1", "fraud", rate_limits=scenario.rules)
    start = 1000.0  # a monotonic clock's value, not zero
    for index, step in enumerate(scenario.steps):
        where = f"step {index} at t={step.at}"
        if step.allowed:
            enforce(limiter, endpoint, step.principal, start + step.at)
            continue
        with pytest.raises(RateLimited) as refused:
            enforce(limiter, endpoint, step.principal, start + step.at)
        assert refused.value.status_code == 429, where
        assert refused.value.error_code == "REQUEST_LIMIT_EXCEEDED", where
        assert refused.value.headers["Retry-After"] == str(step.retry_after), where
        assert "fraud" in refused.value.message


def test_endpoints_do_not_share_buckets() -> None:
    limiter = RateLimiter()
    rules = (RateLimitRule(1, "endpoint"),)
    enforce(limiter, EndpointRef("ep-1", "a", rate_limits=rules), ALICE, 0.0)
    enforce(limiter, EndpointRef("ep-2", "b", rate_limits=rules), ALICE, 0.0)
    with pytest.raises(RateLimited):
        enforce(limiter, EndpointRef("ep-1", "a", rate_limits=rules), ALICE, 0.0)


def test_prune_forgets_only_full_buckets() -> None:
    limiter = RateLimiter()
    rules = (RateLimitRule(60, "user"),)  # T = 1 s
    for user in ("a", "b", "c"):
        limiter.check("ep", rules, Principal(user), 0.0)
    limiter.check("ep", rules, Principal("d"), 5.0)
    limiter.prune(2.0)
    assert len(limiter) == 1


def test_parse_rate_limits() -> None:
    assert parse_rate_limits([{"calls": 5, "renewal_period": "minute"}], "rate_limits") == (
        RateLimitRule(5, "endpoint", "minute"),)
    assert parse_rate_limits(None, "rate_limits") == ()
    ai = parse_rate_limits([{"calls": 1, "key": "user_group", "renewal_period": "minute",
                             "principal": "ml"}], "ai_gateway")
    assert ai == (RateLimitRule(1, "user_group", "minute", "ml"),)


@pytest.mark.parametrize(
    ("raw", "source", "problem"),
    [
        ({}, "rate_limits", "must be a list"),
        ([5], "rate_limits", "must be an object"),
        ([{"calls": -1, "renewal_period": "minute"}], "rate_limits", "calls"),
        ([{"calls": "5", "renewal_period": "minute"}], "rate_limits", "calls"),
        ([{"calls": True, "renewal_period": "minute"}], "rate_limits", "calls"),
        ([{"calls": 5, "renewal_period": "hour"}], "rate_limits", "renewal_period"),
        ([{"calls": 5, "renewal_period": "minute", "key": "user_group"}], "rate_limits", "key"),
        ([{"calls": 5, "renewal_period": "minute", "principal": "a"}], "rate_limits", "principal"),
        ([{"tokens": 5, "renewal_period": "minute"}], "ai_gateway", "token-based"),
    ],
    ids=["not-list", "not-object", "negative", "string", "bool", "hour", "group-key-legacy",
         "principal-legacy", "tokens"],
)
def test_parse_rate_limits_rejects(raw: object, source: str, problem: str) -> None:
    with pytest.raises(InvalidParameterValue, match=problem):
        parse_rate_limits(raw, source)


def test_each_gateway_admits_its_share_of_a_limit() -> None:
    # 30 calls a minute over 3 live gateways: 10 here, refused after that; alone again, 30.
    from router.auth.ratelimit import RateLimiter
    from router.auth.types import RateLimitRule

    gateways = [3]
    limiter = RateLimiter(share=lambda: gateways[0])
    rule = RateLimitRule(30, "endpoint", "minute", None)
    admitted = sum(limiter.check("ep", [rule], None, now=0.0).allowed for _ in range(40))
    assert admitted == 10
    gateways[0] = 1
    alone = RateLimiter(share=lambda: gateways[0])
    assert sum(alone.check("ep", [rule], None, now=0.0).allowed for _ in range(40)) == 30
