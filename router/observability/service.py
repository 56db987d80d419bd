"""The observability of one gateway process, wired together: metrics, cost, time series, capture.

``Observability`` owns the pieces and one background loop. Every ``sample_interval_s`` (1 s) the loop
reads the control plane's endpoints (``EndpointCatalog``) and the autoscaler's status of each served
entity, charges the cost ledger with the replicas running, and counts new scaling decisions; every
``resolution_s`` (5 s) it appends a time-series point per endpoint. The request path never calls into
it: the data plane counts into its own ``DataPlaneStats`` (read here) and hands finished requests to
``tables.capture`` only for endpoints that capture.

Cold starts are seen through ``listener(inner)``, a ``ReplicaListener`` put between the autoscaler and
the activator: a replica becoming ready for an entity that had none ready is a cold start, lasting
from the autoscaler's last scale-from-zero decision to that moment (both on the autoscaler's clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from autoscaler.backend import Clock, MonotonicClock
from autoscaler.status import EntityStatus
from autoscaler.types import EntityKey, ReplicaInfo, ReplicaListener, ReplicaState
from router.dataplane.stats import DataPlaneStats
from router.observability.cost import CostLedger, CostSettings, cost_fields
from router.observability.inference_tables import InferenceTables, InferenceTableSettings, TableCollector
from router.observability.logging import flush_logging
from router.observability.metrics import MetricsHub, ReplicaCounts, by_class
from router.observability.timeseries import TimeSeriesSampler, TimeSeriesStore
from router.state.db import DatabaseUnavailable
from runtime.errors import NotFound

logger = logging.getLogger("zeroserve.observability")


class ObservabilitySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZEROSERVE_OBSERVABILITY_", extra="ignore")

    # Time series for the dashboard: 720 points of 5 s = the last hour, per endpoint.
    resolution_s: float = Field(default=5.0, gt=0)
    retention_s: float = Field(default=3600.0, gt=0)
    # How often replica counts are sampled for cost (a replica is charged to within this).
    sample_interval_s: float = Field(default=1.0, gt=0)
    # How often accumulated cost is saved under ZEROSERVE_HOME (it survives restarts).
    save_interval_s: float = Field(default=60.0, gt=0)
    # Scaling decisions shown per endpoint in the dashboard.
    scaling_events_shown: int = Field(default=50, ge=0)


@dataclass(frozen=True, slots=True)
class EntityView:
    name: str
    workload_type: str = "CPU"
    traffic_percentage: int = 100


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as the control plane knows it, as far as observability needs it."""

    name: str
    ready: bool
    config_update: str = "NOT_UPDATING"
    entities: tuple[EntityView, ...] = ()
    auto_capture_config: Mapping[str, Any] | None = None

    def keys(self) -> list[EntityKey]:
        return [EntityKey(self.name, entity.name) for entity in self.entities]


class EndpointCatalog(Protocol):
    """The control plane's endpoints (active and pending configs' served entities)."""

    def endpoint_views(self) -> Sequence[EndpointView]: ...


class StatusSource(Protocol):
    """The autoscaler (``autoscaler.loop.Autoscaler``): status per entity, ``NotFound`` when unknown."""

    def status(self, entity: EntityKey) -> EntityStatus: ...

    def entities(self) -> list[EntityKey]: ...


class LoadSource(Protocol):
    def concurrency(self, entity: EntityKey) -> tuple[int, int]: ...


_RUNNING = (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.DRAINING)


def replica_counts(status: EntityStatus) -> ReplicaCounts:
    # Counted from the replicas themselves so that old-template replicas still serving during a
    # rollout count (and cost) too; the status' own counts cover the current template only.
    states = [replica.state for replica in status.replicas]
    return ReplicaCounts(
        desired=status.desired,
        starting=states.count(ReplicaState.STARTING),
        ready=states.count(ReplicaState.READY),
        draining=states.count(ReplicaState.DRAINING),
    )


@dataclass
class _EntityWatch:
    """What the loop remembers about an entity between samples."""

    history_cursor: float | None = None  # ``at`` of the newest decision already counted
    ready: set[str] = field(default_factory=set)


class Observability:
    def __init__(
        self,
        *,
        settings: ObservabilitySettings | None = None,
        cost_settings: CostSettings | None = None,
        table_settings: InferenceTableSettings | None = None,
        stats: DataPlaneStats | None = None,
        state_dir: Path | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings or ObservabilitySettings()
        self.clock: Clock = clock or MonotonicClock()
        self.hub = MetricsHub(stats)
        self.ledger = CostLedger(cost_settings)
        self.timeseries = TimeSeriesStore(self.settings.resolution_s, self.settings.retention_s)
        self.sampler = TimeSeriesSampler(self.hub, self.ledger, self.timeseries)
        self.tables = InferenceTables(table_settings)
        self.hub.replica_seconds = self.ledger.replica_seconds
        self.hub.cost = self.ledger.cost
        self.hub.extra_collectors.append(TableCollector(self.tables))
        self.hub.before_collect = self.refresh
        self.catalog: EndpointCatalog | None = None
        self.autoscaler: StatusSource | None = None
        # On a gateway that does not lead: the replica counts the leader published (its autoscaler
        # knows none); and the whole fleet's exposition (``/metrics?scope=fleet``). Set by the gateway.
        self.published_counts: Callable[[EntityKey], ReplicaCounts | None] | None = None
        self.fleet_exposition: Callable[[], Awaitable[bytes]] | None = None
        # The other gateways' dashboard numbers (``/internal/fleet/dashboard`` with these parameters).
        self.fleet_peers: Callable[[dict[str, str]], Awaitable[list[dict[str, Any]]]] | None = None
        self._cost_path = state_dir / "cost.json" if state_dir is not None else None
        self._views: dict[str, EndpointView] = {}
        self._watches: dict[EntityKey, _EntityWatch] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_point: float | None = None
        self._last_save: float | None = None
        if self._cost_path is not None:
            self.ledger.load(self._cost_path, self.clock.now())

    # Wiring -----------------------------------------------------------------------------------------

    def bind(
        self,
        *,
        catalog: EndpointCatalog | None = None,
        autoscaler: StatusSource | None = None,
        load: LoadSource | None = None,
        cache_counters: Callable[[], tuple[int, int, int]] | None = None,
    ) -> None:
        if catalog is not None:
            self.catalog = catalog
            self.tables.resolver = self._capture_config
        if autoscaler is not None:
            self.autoscaler = autoscaler
            self.hub.replica_source = self
        if load is not None:
            self.hub.load_source = load
        if cache_counters is not None:
            self.hub.cache_counters = cache_counters

    def _capture_config(self, endpoint: str) -> Mapping[str, Any] | None:
        if self.catalog is None:
            return None
        for view in self.catalog.endpoint_views():
            if view.name == endpoint:
                return view.auto_capture_config
        return None

    def listener(self, inner: ReplicaListener) -> ReplicaListener:
        """``inner`` (the activator) as the autoscaler's listener, with cold starts counted on the way."""
        return _ListenerTap(self, inner)

    # Readings ---------------------------------------------------------------------------------------

    def known_endpoints(self) -> set[str]:
        """The catalog's endpoints now, or those with series when there is no catalog."""
        if self.catalog is None:
            return set(self.hub.endpoints())
        return {view.name for view in self.catalog.endpoint_views()}

    def status(self, key: EntityKey) -> EntityStatus | None:
        if self.autoscaler is None:
            return None
        try:
            return self.autoscaler.status(key)
        except NotFound:
            return None

    def replica_counts(self, key: EntityKey) -> ReplicaCounts:
        status = self.status(key)
        if status is not None:
            return replica_counts(status)
        published = self.published_counts(key) if self.published_counts is not None else None
        return published if published is not None else ReplicaCounts(0, 0, 0, 0)

    def inferences(self, keys: Sequence[EntityKey]) -> int:
        """Requests a model answered successfully (2xx), earlier gateway processes' included: what "cost
        per 1,000 inferences" divides by."""
        return sum(self._answered(key) + self.ledger.carried_inferences(key) for key in keys)

    def _answered(self, key: EntityKey) -> int:
        return by_class(self.hub.requests(key).by_status)["2xx"]

    def entity_cost(self, key: EntityKey) -> dict[str, Any]:
        """The ``cost`` extension object of a served entity's state."""
        return cost_fields(self.ledger.summary(key), self.inferences([key]), self.ledger.currency)

    def dashboard_share(self, endpoint: str | None, since: float | None) -> dict[str, Any]:
        """This gateway's part of the fleet's dashboard: one endpoint's series and cost, or every
        endpoint's latest point and costs (what ``/internal/fleet/dashboard`` answers)."""
        from router.observability.timeseries import FIELDS

        if endpoint is not None:
            ring = self.timeseries.get(endpoint)
            series = ring.series(since) if ring is not None else {"t": [], **{name: [] for name in FIELDS}}
            return {"series": series, "cost": self.endpoint_cost(endpoint)}
        shares = {}
        for name in self.hub.endpoints():
            ring = self.timeseries.get(name)
            shares[name] = {
                "last": (ring.last() if ring is not None else None) or {},
                "cost": self.endpoint_cost(name),
                "entities": {key.served_entity: self.entity_cost(key) for key in self.hub.entities(name)},
            }
        return {"endpoints": shares}

    def endpoint_cost(self, endpoint: str) -> dict[str, Any]:
        """The ``cost`` extension object of an endpoint's state (its entities summed)."""
        # The ledger's entities too: right after a restart it holds totals the hub has not seen yet.
        keys = list(dict.fromkeys([*self.hub.entities(endpoint),
                                   *(key for key in self.ledger.entities() if key.endpoint == endpoint)]))
        summary = self.ledger.endpoint_summary(endpoint)
        return cost_fields(summary, self.inferences(keys), self.ledger.currency)

    def endpoint_metrics(self, view: EndpointView) -> bytes:
        """Prometheus text of one endpoint; its entities are exported even before the loop's next pass."""
        for entity in view.entities:
            self.hub.track(EntityKey(view.name, entity.name), entity.workload_type)
        return self.hub.endpoint_exposition(view.name)

    # The loop ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.tables.start()
        if self._task is None:
            self.tick()
            self._task = asyncio.create_task(self._run(), name="zeroserve-observability")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.tables.close()
        self._save()

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.settings.sample_interval_s)
            try:
                self.tick()
            except Exception:  # one bad sample must not end observability for the process
                logger.exception("observability sample failed")

    def refresh(self) -> None:
        """Bring entities, cost and scaling-decision counts up to now (each tick, and before a scrape)."""
        now = self.clock.now()
        self._sync_endpoints()
        for key in self._entities():
            self._sample_entity(key, now)

    def tick(self) -> None:
        """One pass of the loop (public for tests that drive time by hand)."""
        flush_logging()  # log lines are written at once but flushed in batches
        self.refresh()
        now = self.clock.now()
        if self._last_point is None or now - self._last_point >= self.settings.resolution_s - 1e-6:
            self._last_point = now
            self.sampler.sample(self.clock.wall(), now)
        if self._last_save is None or now - self._last_save >= self.settings.save_interval_s:
            self._last_save = now
            self._save()

    def _save(self) -> None:
        if self._cost_path is None:
            return
        self.ledger.settle(self.clock.now())
        try:
            answered = {key: self._answered(key) for key in self.ledger.entities()}
            self.ledger.save(self._cost_path, answered)
        except OSError as error:
            logger.warning("could not save accumulated cost to %s: %s", self._cost_path, error)

    def _sync_endpoints(self) -> None:
        if self.catalog is None:
            return
        try:
            views = {view.name: view for view in self.catalog.endpoint_views()}
        except DatabaseUnavailable:
            return  # the endpoints as last seen: sampling goes on while the database is down
        for gone in set(self._views) - set(views):
            self._forget_endpoint(gone)
        for view in views.values():
            previous = self._views.get(view.name)
            if previous is None or previous.auto_capture_config != view.auto_capture_config:
                self.tables.configure(view.name, view.auto_capture_config)
            current = set(view.keys())
            if previous is not None:
                for key in set(previous.keys()) - current:
                    # A served entity left the config: its replicas drain (and still cost) until the
                    # autoscaler forgets it; its series go when it is gone from both.
                    if self.status(key) is None:
                        self._forget_entity(key)
            for entity in view.entities:
                self.hub.track(EntityKey(view.name, entity.name), entity.workload_type)
        self._views = views

    def _entities(self) -> list[EntityKey]:
        keys = set(self.hub.entities())
        if self.autoscaler is not None:
            keys.update(key for key in self.autoscaler.entities() if key.endpoint in self._views
                        or self.catalog is None)
        return sorted(keys)

    def _forget_endpoint(self, endpoint: str) -> None:
        for key in self.hub.entities(endpoint):
            self._forget_entity(key)
        self.timeseries.forget(endpoint)
        self.tables.forget(endpoint)

    def _forget_entity(self, key: EntityKey) -> None:
        self.hub.untrack(key)
        self.ledger.forget(key)
        self._watches.pop(key, None)

    def _sample_entity(self, key: EntityKey, now: float) -> None:
        status = self.status(key)
        if status is None:
            self.ledger.observe(key, self.hub.workload_type(key), 0, now)
            return
        workload_type = status.spec.workload_type
        self.hub.track(key, workload_type)
        self.ledger.observe(key, workload_type, replica_counts(status).running, now)
        watch = self._watches.setdefault(key, _EntityWatch())
        lifecycle = self.hub.lifecycle(key)
        for record in status.history:
            if watch.history_cursor is not None and record.at <= watch.history_cursor:
                continue
            lifecycle.record_scaling(record.from_replicas, record.to_replicas)
        if status.history:
            watch.history_cursor = status.history[-1].at

    # Listener events --------------------------------------------------------------------------------

    def _replica_ready(self, replica: ReplicaInfo) -> None:
        key = replica.entity
        watch = self._watches.setdefault(key, _EntityWatch())
        was_cold = not watch.ready
        watch.ready.add(replica.replica_id)
        status = self.status(key)
        now = self.clock.now()
        if status is not None:
            self.ledger.observe(key, status.spec.workload_type, replica_counts(status).running, now)
        if not was_cold or status is None:
            return
        from_zero = [record for record in status.history
                     if record.from_replicas == 0 and record.to_replicas > 0]
        if from_zero:
            self.hub.lifecycle(key).record_cold_start(max(0.0, now - from_zero[-1].at))

    def _replica_leaving(self, replica: ReplicaInfo) -> None:
        watch = self._watches.get(replica.entity)
        if watch is not None:
            watch.ready.discard(replica.replica_id)


class _ListenerTap:
    def __init__(self, observability: Observability, inner: ReplicaListener) -> None:
        self._observability = observability
        self._inner = inner

    def replica_ready(self, replica: ReplicaInfo) -> None:
        self._inner.replica_ready(replica)
        try:
            self._observability._replica_ready(replica)
        except Exception:  # counting must never break serving
            logger.exception("observability failed on replica_ready")

    async def replica_draining(self, replica: ReplicaInfo) -> None:
        self._observability._replica_leaving(replica)
        await self._inner.replica_draining(replica)

    def replica_gone(self, replica: ReplicaInfo) -> None:
        self._observability._replica_leaving(replica)
        self._inner.replica_gone(replica)

    def entity_failed(self, entity: EntityKey, reason: str) -> None:
        self._inner.entity_failed(entity, reason)
