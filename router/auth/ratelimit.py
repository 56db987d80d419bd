"""Rate limits per endpoint and per principal: the GCRA decision, the limiter state, and the stored config.

Config comes in the two Databricks shapes: ``PUT .../{name}/rate-limits`` (``{"rate_limits": [{"calls":
10, "key": "user", "renewal_period": "minute"}]}``) and the ``rate_limits`` of ``PUT .../{name}/ai-gateway``
(which may also name a ``principal`` and use the keys ``service_principal`` and ``user_group``). Every
rule of both applies; a request must fit all of them.

The decision is GCRA (the generic cell rate algorithm, a token bucket kept as one number per bucket):
with ``calls`` per ``period``, the emission interval is ``T = period / calls`` and a burst of up to
``calls`` is allowed (tolerance ``tau = period - T``). Each bucket stores its theoretical arrival time
``tat``; a request at ``now`` fits when ``max(tat, now) - now <= tau`` and then moves ``tat`` on by ``T``.
Worked example, 2 calls/minute: T = 30 s, tau = 30 s; at t=0 two requests pass (tat 30, then 60), a third
is refused with Retry-After 30 s (60 - 0 - 30), and at t=30 one more passes.

Limits hold for the whole fleet of gateways sharing one state: each gateway admits its share,
``calls / live gateways`` per period (``share``), so N gateways behind a load balancer that spreads
requests evenly admit ``calls`` together. Counting in the shared database instead would put it on every
request's path. A load balancer that sends one gateway more than its share makes the fleet admit less.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from router.auth.types import ALL_USERS_GROUP, RENEWAL_PERIODS_S, EndpointRef, Principal, RateLimitRule
from router.errors import RateLimited
from runtime.errors import InvalidParameterValue

log = logging.getLogger("zeroserve.auth")
_KEYS = {
    "rate_limits": ("endpoint", "user"),
    "ai_gateway": ("endpoint", "user", "service_principal", "user_group"),
}
_PRUNE_AT = 50_000
_PER = {"endpoint": "for the endpoint", "user": "per user", "service_principal": "per service principal",
        "user_group": "per group"}


def parse_rate_limits(raw: Any, source: str) -> tuple[RateLimitRule, ...]:
    """Validate the ``rate_limits`` list of a request body; 400 naming the first problem otherwise."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidParameterValue("'rate_limits' must be a list")
    keys = _KEYS[source]
    rules = []
    for index, item in enumerate(raw):
        where = f"rate_limits[{index}]"
        if not isinstance(item, dict):
            raise InvalidParameterValue(f"{where} must be an object")
        if item.get("tokens") is not None:
            raise InvalidParameterValue(f"{where}: token-based limits are not supported; use 'calls'")
        calls = item.get("calls")
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 0:
            raise InvalidParameterValue(f"{where}.calls must be a non-negative integer, got {calls!r}")
        key = item.get("key") or "endpoint"
        if key not in keys:
            raise InvalidParameterValue(f"{where}.key must be one of {', '.join(keys)}, got {key!r}")
        period = item.get("renewal_period")
        if period not in RENEWAL_PERIODS_S:
            raise InvalidParameterValue(
                f"{where}.renewal_period must be one of {', '.join(RENEWAL_PERIODS_S)}, got {period!r}"
            )
        principal = item.get("principal")
        bad_principal = source != "ai_gateway" or not isinstance(principal, str) or not principal
        if principal is not None and bad_principal:
            raise InvalidParameterValue(f"{where}.principal must be a non-empty string (ai-gateway only)")
        rules.append(RateLimitRule(calls, key, period, principal))
    return tuple(rules)


def gcra(tat: float | None, now: float, calls: float, period_s: float) -> tuple[bool, float, float]:
    """One GCRA step: ``(allowed, new_tat, retry_after_s)``. ``tat`` None is a fresh bucket."""
    if calls <= 0:
        # 0 calls: the endpoint is closed for this key; nothing will change that within a period.
        return False, now if tat is None else tat, period_s
    interval = period_s / calls
    tolerance = period_s - interval
    start = now if tat is None else max(tat, now)
    if start - now > tolerance:
        return False, start, start - now - tolerance
    return True, start + interval, 0.0


def bucket_subjects(rule: RateLimitRule, principal: Principal | None) -> list[str]:
    """The buckets a request by ``principal`` draws from under ``rule`` (none: the rule does not apply)."""
    if rule.key == "endpoint":
        return [""]
    name = principal.name if principal is not None else "anonymous"
    if rule.key in ("user", "service_principal"):
        if rule.principal is not None and rule.principal != name:
            return []
        return [name]
    # user_group: one bucket per group, shared by its members.
    if principal is None:
        return []
    if rule.principal is not None:
        return [rule.principal] if principal.in_group(rule.principal) else []
    return sorted(group for group in principal.groups if group != ALL_USERS_GROUP)


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after_s: float = 0.0
    rule: RateLimitRule | None = None  # the rule that refused


BucketKey = tuple[str, RateLimitRule, str]


class RateLimiter:
    """Bucket state for every (endpoint, rule, subject); ``check`` is pure apart from that state."""

    def __init__(self, share: Callable[[], int] | None = None) -> None:
        self._tat: dict[BucketKey, float] = {}
        # How many gateways share each limit (live ones); 1 when this gateway is alone.
        self.share: Callable[[], int] = share or (lambda: 1)

    def check(
        self, endpoint_id: str, rules: Iterable[RateLimitRule], principal: Principal | None, now: float
    ) -> RateDecision:
        """Admit the request only if every applicable bucket has room; then charge all of them.

        A refused request charges nothing, so being limited by one rule does not eat into another.
        """
        updates: list[tuple[BucketKey, float]] = []
        gateways = max(1, self.share())
        for rule in rules:
            for subject in bucket_subjects(rule, principal):
                key = (endpoint_id, rule, subject)
                calls = rule.calls / gateways
                allowed, new_tat, retry_after = gcra(self._tat.get(key), now, calls, rule.period_s)
                if not allowed:
                    return RateDecision(False, retry_after, rule)
                updates.append((key, new_tat))
        for key, new_tat in updates:
            self._tat[key] = new_tat
        if len(self._tat) > _PRUNE_AT:
            self.prune(now)
        return RateDecision(True)

    def prune(self, now: float) -> None:
        # A bucket whose tat has passed is indistinguishable from a fresh one: drop it.
        self._tat = {key: tat for key, tat in self._tat.items() if tat > now}

    def __len__(self) -> int:
        return len(self._tat)


def rules_of(config: Any, source: str) -> tuple[RateLimitRule, ...]:
    """Rules from stored config, skipping what does not validate (config written before validation)."""
    try:
        return parse_rate_limits(config, source)
    except InvalidParameterValue as exc:
        log.warning("ignoring invalid stored %s: %s", source, exc.message)
        return ()


def enforce(
    limiter: RateLimiter, endpoint: EndpointRef, principal: Principal | None, now: float
) -> None:
    """Raise 429 ``REQUEST_LIMIT_EXCEEDED`` with ``Retry-After`` when the request does not fit."""
    if not endpoint.rate_limits:
        return
    decision = limiter.check(endpoint.id, endpoint.rate_limits, principal, now)
    if decision.allowed or decision.rule is None:
        return
    retry_after = max(1, math.ceil(decision.retry_after_s))
    raise RateLimited(
        f"Rate limit of {decision.rule.calls} calls per {decision.rule.renewal_period}"
        f" {_PER[decision.rule.key]} exceeded on serving endpoint {endpoint.name!r};"
        f" retry in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )
