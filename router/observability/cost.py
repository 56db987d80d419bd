"""What serving costs: replica-seconds per served entity, priced per replica-hour by workload type.

A replica costs from the moment it is asked for (starting) until it is gone (draining included),
because that is when it holds a machine's resources. An entity scaled to zero has no replica and so
accumulates nothing: an idle scale-to-zero endpoint costs exactly 0.

The ledger integrates a piecewise-constant replica count: each ``observe(key, ..., replicas, now)``
charges the *previous* count for the time since the previous observation, then remembers the new one.
Observations come from the autoscaler's replica counts, sampled every second and on every change the
gateway hears of, so a replica's lifetime is accounted to within one sampling interval.

Default prices (USD per replica-hour) approximate the on-demand list price of one cloud instance that
fits one replica of that workload type; set your own with ``ZEROSERVE_COST_PRICES_PER_REPLICA_HOUR``
(JSON, merged over the defaults) and ``ZEROSERVE_COST_CURRENCY``:

=================  ======  ===========================================
workload_type      price   reference instance
=================  ======  ===========================================
CPU                0.10    2 vCPU, 8 GiB (general purpose)
GPU_SMALL          0.53    1x NVIDIA T4
GPU_MEDIUM         1.01    1x NVIDIA A10G
MULTIGPU_MEDIUM    5.67    4x NVIDIA A10G
GPU_LARGE          4.10    1x NVIDIA A100 40 GB
=================  ======  ===========================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from autoscaler.types import EntityKey

DEFAULT_PRICES_PER_REPLICA_HOUR: dict[str, float] = {
    "CPU": 0.10,
    "GPU_SMALL": 0.53,
    "GPU_MEDIUM": 1.01,
    "MULTIGPU_MEDIUM": 5.67,
    "GPU_LARGE": 4.10,
}

SECONDS_PER_HOUR = 3600.0


class CostSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZEROSERVE_COST_", extra="ignore")

    prices_per_replica_hour: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES_PER_REPLICA_HOUR))
    currency: str = "USD"
    # A workload type with no price of its own (a new Databricks type, a typo) is priced as this one.
    fallback_workload_type: str = "CPU"

    @field_validator("prices_per_replica_hour")
    @classmethod
    def _merge_over_defaults(cls, prices: dict[str, float]) -> dict[str, float]:
        merged = dict(DEFAULT_PRICES_PER_REPLICA_HOUR)
        for workload_type, price in prices.items():
            if not math.isfinite(price) or price < 0:
                raise ValueError(f"price of {workload_type} must be a finite number >= 0, got {price!r}")
            merged[workload_type.upper()] = float(price)
        return merged

    def price_per_hour(self, workload_type: str) -> float:
        prices = self.prices_per_replica_hour
        price = prices.get(workload_type.upper())
        if price is None:
            price = prices.get(self.fallback_workload_type.upper(), DEFAULT_PRICES_PER_REPLICA_HOUR["CPU"])
        return price


@dataclass(slots=True)
class _Account:
    workload_type: str
    replicas: int
    since: float  # monotonic seconds of the last observation
    replica_seconds: float = 0.0
    cost: float = 0.0
    # Inferences answered by earlier gateway processes (saved with the totals): cost per 1,000
    # inferences divides the whole cost by the whole count, not by this process's alone.
    carried_inferences: int = 0


@dataclass(frozen=True, slots=True)
class CostSummary:
    """What one served entity (or a whole endpoint, summed) has cost so far."""

    replica_seconds: float
    cost: float
    # Cost per hour at the current replica count: 0 for an entity at zero.
    hourly_rate: float
    replicas: int

    def per_thousand(self, inferences: int) -> float | None:
        """Cost per 1,000 inferences; ``None`` before the first one (the ratio has no meaning yet)."""
        if inferences <= 0:
            return None
        return self.cost / inferences * 1000.0


ZERO_COST = CostSummary(0.0, 0.0, 0.0, 0)


def cost_fields(summary: CostSummary, inferences: int, currency: str) -> dict[str, Any]:
    """The ``cost`` extension object on an endpoint's or served entity's state in the API."""
    per_thousand = summary.per_thousand(inferences)
    return {
        "currency": currency,
        "total": round(summary.cost, 6),
        "replica_seconds": round(summary.replica_seconds, 3),
        "hourly_rate": round(summary.hourly_rate, 6),
        "inferences": inferences,
        "per_1k_inferences": round(per_thousand, 6) if per_thousand is not None else None,
    }


def sum_costs(costs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Served entities' ``cost`` objects added up into their endpoint's (same currency, one ledger)."""
    summary = CostSummary(
        replica_seconds=sum(float(c["replica_seconds"]) for c in costs),
        cost=sum(float(c["total"]) for c in costs),
        hourly_rate=sum(float(c["hourly_rate"]) for c in costs),
        replicas=0,
    )
    currency = str(costs[0]["currency"]) if costs else "USD"
    return cost_fields(summary, sum(int(c["inferences"]) for c in costs), currency)


class CostLedger:
    def __init__(self, settings: CostSettings | None = None) -> None:
        self.settings = settings or CostSettings()
        self._accounts: dict[EntityKey, _Account] = {}

    @property
    def currency(self) -> str:
        return self.settings.currency

    def observe(self, key: EntityKey, workload_type: str, replicas: int, now: float) -> None:
        """``key`` has ``replicas`` costing replicas at monotonic time ``now``."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        account = self._accounts.get(key)
        if account is None:
            self._accounts[key] = _Account(workload_type, replicas, now)
            return
        self._charge(account, now)
        account.replicas = replicas
        account.workload_type = workload_type

    def _charge(self, account: _Account, now: float) -> None:
        elapsed = now - account.since
        if elapsed <= 0:
            return
        # 2 replicas for 90 s = 180 replica-seconds; at 0.10/h that is 180 / 3600 * 0.10 = 0.005.
        replica_seconds = account.replicas * elapsed
        account.replica_seconds += replica_seconds
        price = self.settings.price_per_hour(account.workload_type)
        account.cost += replica_seconds / SECONDS_PER_HOUR * price
        account.since = now

    def settle(self, now: float) -> None:
        """Charge every account up to ``now`` (before reading totals or saving)."""
        for account in self._accounts.values():
            self._charge(account, now)

    def forget(self, key: EntityKey) -> None:
        self._accounts.pop(key, None)

    def summary(self, key: EntityKey) -> CostSummary:
        account = self._accounts.get(key)
        if account is None:
            return ZERO_COST
        return CostSummary(
            replica_seconds=account.replica_seconds,
            cost=account.cost,
            hourly_rate=account.replicas * self.settings.price_per_hour(account.workload_type),
            replicas=account.replicas,
        )

    def endpoint_summary(self, endpoint: str) -> CostSummary:
        summaries = [self.summary(key) for key in self._accounts if key.endpoint == endpoint]
        return CostSummary(
            replica_seconds=sum(s.replica_seconds for s in summaries),
            cost=sum(s.cost for s in summaries),
            hourly_rate=sum(s.hourly_rate for s in summaries),
            replicas=sum(s.replicas for s in summaries),
        )

    def replica_seconds(self, key: EntityKey) -> float:
        account = self._accounts.get(key)
        return account.replica_seconds if account else 0.0

    def cost(self, key: EntityKey) -> float:
        account = self._accounts.get(key)
        return account.cost if account else 0.0

    def entities(self) -> list[EntityKey]:
        return list(self._accounts)

    def carried_inferences(self, key: EntityKey) -> int:
        """Inferences of ``key`` answered before this process began (restored by ``load``)."""
        account = self._accounts.get(key)
        return account.carried_inferences if account else 0

    # Totals survive a gateway restart (the state they describe does too): replica-seconds, cost and
    # the inferences they bought, together, so that cost per 1,000 inferences means the same after a
    # restart. Replica counts at the moment of saving do not: the autoscaler's sampling says what runs.
    def save(self, path: Path, inferences: Mapping[EntityKey, int] | None = None) -> None:
        """Write the totals; ``inferences``: each entity's inferences answered by this process."""
        answered = inferences or {}
        data: dict[str, Any] = {
            f"{key.endpoint}/{key.served_entity}": {
                "workload_type": account.workload_type,
                "replica_seconds": account.replica_seconds,
                "cost": account.cost,
                "inferences": account.carried_inferences + answered.get(key, 0),
            }
            for key, account in self._accounts.items()
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"version": 1, "entities": data}))
        temporary.replace(path)

    def load(self, path: Path, now: float) -> None:
        """Restore totals saved by ``save``; a missing or unreadable file starts from zero."""
        try:
            data = json.loads(path.read_text())
            entities = data["entities"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        for name, saved in entities.items():
            endpoint, _, served_entity = name.partition("/")
            try:
                # "inferences" is absent from files written before it was kept: 0 (as it was).
                account = _Account(str(saved["workload_type"]), 0, now, float(saved["replica_seconds"]),
                                   float(saved["cost"]), int(saved.get("inferences", 0)))
            except (KeyError, TypeError, ValueError):
                continue
            self._accounts[EntityKey(endpoint, served_entity)] = account
