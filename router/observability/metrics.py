"""Prometheus metrics of the gateway, labelled by endpoint and served entity.

Nothing here runs per request. The data plane counts requests and latencies in its own plain-Python
``DataPlaneStats`` (a dict increment and a ``bisect`` per request, no lock, no label lookup), the
autoscaler and the activator know replicas and concurrency, the cost ledger knows replica-seconds;
a prometheus-client ``Collector`` reads all of them when ``/metrics`` is scraped and builds the metric
families then. This keeps recording off the benchmarks: prometheus-client's own ``Histogram.observe``
takes a lock per call (about 3 us, three histograms per request), the data plane's counters cost well
under 1 us. The time-series sampler reads the same counters, so there is one source of truth.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from autoscaler.types import EntityKey
from router.dataplane.stats import LATENCY_BUCKETS_S, DataPlaneStats, RequestStats

COLD_START_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ENTITY_LABELS = ("endpoint", "served_entity")
REPLICA_STATES = ("starting", "ready", "draining")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    # 499 (client closed the request while it waited) counts as 4xx, as nginx logs it.
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


def by_class(by_status: dict[int, int]) -> dict[str, int]:
    classes = {name: 0 for name in STATUS_CLASSES}
    for status, count in by_status.items():
        name = status_class(status)
        classes[name] = classes.get(name, 0) + count
    return classes


def quantile_from_counts(bounds: tuple[float, ...], counts: list[int], q: float) -> float | None:
    """The q-quantile of per-bucket (not cumulative) counts, interpolated linearly inside its bucket as
    Prometheus' ``histogram_quantile`` does: 10 values in (0.005, 0.01] give a p50 of 0.0075.
    ``None`` without observations; values past the last bound are reported as that bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(counts):
        if count and cumulative + count >= rank:
            if index >= len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index > 0 else 0.0
            return lower + (bounds[index] - lower) * max(0.0, rank - cumulative) / count
        cumulative += count
    return bounds[-1]


def _prometheus_buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip(bounds, counts, strict=False):
        cumulative += count
        buckets.append((repr(float(bound)), cumulative))
    buckets.append(("+Inf", cumulative + counts[len(bounds)]))
    return buckets


class LatencyHistogram:
    """Per-bucket counts (the last is +Inf) and their sum; for events rarer than requests."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left puts a value equal to a bound in that bound's bucket: Prometheus' "le".
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


class EntityLifecycle:
    """What happened to one served entity's replicas: cold starts and scaling decisions."""

    __slots__ = ("cold_start_duration", "cold_starts", "scale_downs", "scale_ups")

    def __init__(self) -> None:
        self.cold_starts = 0
        self.cold_start_duration = LatencyHistogram(COLD_START_BUCKETS)
        self.scale_ups = 0
        self.scale_downs = 0

    def record_cold_start(self, duration_s: float) -> None:
        """A replica became ready for an entity that had none: ``duration_s`` since it was asked for."""
        self.cold_starts += 1
        self.cold_start_duration.observe(duration_s)

    def record_scaling(self, previous: int, desired: int) -> None:
        if desired > previous:
            self.scale_ups += 1
        elif desired < previous:
            self.scale_downs += 1


@dataclass(frozen=True, slots=True)
class ReplicaCounts:
    desired: int
    starting: int
    ready: int
    draining: int

    @property
    def running(self) -> int:
        """Replicas that hold a machine's resources, and so cost money."""
        return self.starting + self.ready + self.draining


ZERO_REPLICAS = ReplicaCounts(0, 0, 0, 0)


class ReplicaSource(Protocol):
    """How many replicas an entity wants and has, by state (the autoscaler)."""

    def replica_counts(self, key: EntityKey) -> ReplicaCounts: ...


class LoadSource(Protocol):
    """In flight and queued requests of an entity right now (the activator's ``concurrency``)."""

    def concurrency(self, entity: EntityKey) -> tuple[int, int]: ...


class MetricsHub:
    """The gateway's registry of what to export, and where each number comes from."""

    def __init__(self, request_stats: DataPlaneStats | None = None) -> None:
        self.request_stats = request_stats if request_stats is not None else DataPlaneStats()
        self.load_source: LoadSource | None = None
        self.replica_source: ReplicaSource | None = None
        # Model cache counters, (hits, misses, bytes fetched); the store's ``cache_stats`` adapted.
        self.cache_counters: Callable[[], tuple[int, int, int]] | None = None
        # The CUDA devices replicas can be placed on, each as (index, name, memory in bytes or None).
        self.gpus: Callable[[], list[tuple[int, str, int | None]]] | None = None
        # Filled by the cost ledger; read at scrape time.
        self.replica_seconds: Callable[[EntityKey], float] | None = None
        self.cost: Callable[[EntityKey], float] | None = None
        self.extra_collectors: list[Collector] = []
        # Called before each scrape, so that counters fed by sampling (cost, decisions) are current.
        self.before_collect: Callable[[], None] | None = None
        self._served: dict[EntityKey, str] = {}  # entity -> workload type
        self._lifecycle: dict[EntityKey, EntityLifecycle] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_HubCollector(self, endpoint=None))

    # The set of entities ---------------------------------------------------------------------------

    def track(self, key: EntityKey, workload_type: str = "CPU") -> None:
        """``key`` is served: export its series (zeros included) from now on."""
        self._served[key] = workload_type

    def untrack(self, key: EntityKey) -> None:
        self._served.pop(key, None)
        self._lifecycle.pop(key, None)
        self.request_stats.forget(key)

    def entities(self, endpoint: str | None = None) -> list[EntityKey]:
        keys = set(self._served) | set(self._lifecycle) | {key for key, _ in self.request_stats.items()}
        return sorted(key for key in keys if endpoint is None or key.endpoint == endpoint)

    def endpoints(self) -> list[str]:
        return sorted({key.endpoint for key in self.entities()})

    def workload_type(self, key: EntityKey) -> str:
        return self._served.get(key, "CPU")

    # Readings -------------------------------------------------------------------------------------

    def lifecycle(self, key: EntityKey) -> EntityLifecycle:
        lifecycle = self._lifecycle.get(key)
        if lifecycle is None:
            lifecycle = self._lifecycle[key] = EntityLifecycle()
        return lifecycle

    def requests(self, key: EntityKey) -> RequestStats:
        return self.request_stats.entity(key)

    def load(self, key: EntityKey) -> tuple[int, int]:
        return self.load_source.concurrency(key) if self.load_source is not None else (0, 0)

    def replicas(self, key: EntityKey) -> ReplicaCounts:
        return self.replica_source.replica_counts(key) if self.replica_source is not None else ZERO_REPLICAS

    # Exposition ------------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Prometheus text for the whole gateway (``GET /metrics``)."""
        return generate_latest(self.registry)

    def endpoint_exposition(self, endpoint: str) -> bytes:
        """Prometheus text for one endpoint's series (``GET .../serving-endpoints/{name}/metrics``)."""
        return generate_latest(_EndpointView(self, endpoint))


class _EndpointView:
    """What ``generate_latest`` needs (a ``collect``): the hub's families for one endpoint."""

    def __init__(self, hub: MetricsHub, endpoint: str) -> None:
        self._collector = _HubCollector(hub, endpoint=endpoint)

    def collect(self) -> Iterable[Metric]:
        return self._collector.collect()


class _HubCollector(Collector):
    def __init__(self, hub: MetricsHub, endpoint: str | None) -> None:
        self._hub = hub
        self._endpoint = endpoint

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        if hub.before_collect is not None:
            hub.before_collect()
        keys = hub.entities(self._endpoint)
        yield from _request_families(hub, keys)
        yield from _live_families(hub, keys)
        yield from _lifecycle_families(hub, keys)
        if self._endpoint is None:
            yield from _gateway_families(hub)
            for collector in hub.extra_collectors:
                yield from collector.collect()


def _labels(key: EntityKey) -> list[str]:
    return [key.endpoint, key.served_entity]


def _request_families(hub: MetricsHub, keys: list[EntityKey]) -> Iterator[Metric]:
    requests = CounterMetricFamily("zeroserve_requests", "Inference requests answered, by HTTP status class.",
                                   labels=(*ENTITY_LABELS, "status_class"))
    retries = CounterMetricFamily("zeroserve_upstream_retries",
                                  "Requests retried on another replica after a connect error.",
                                  labels=ENTITY_LABELS)
    duration = HistogramMetricFamily(
        "zeroserve_request_duration_seconds",
        "End-to-end time of an inference request in the gateway, queue wait included.", labels=ENTITY_LABELS)
    queue_wait = HistogramMetricFamily(
        "zeroserve_queue_wait_seconds",
        "Time a request waited in the activator for a replica with room.", labels=ENTITY_LABELS)
    upstream = HistogramMetricFamily(
        "zeroserve_upstream_duration_seconds",
        "Time from forwarding a request to a replica to the end of its response.", labels=ENTITY_LABELS)
    for key in keys:
        stats = hub.requests(key)
        labels = _labels(key)
        for name, count in by_class(stats.by_status).items():
            requests.add_metric([*labels, name], count)
        retries.add_metric(labels, stats.retries)
        duration.add_metric(labels, _prometheus_buckets(LATENCY_BUCKETS_S, stats.latency_counts),
                            stats.latency_sum_s)
        queue_wait.add_metric(labels, _prometheus_buckets(LATENCY_BUCKETS_S, stats.queue_wait_counts),
                              stats.queue_wait_sum_s)
        upstream.add_metric(labels, _prometheus_buckets(LATENCY_BUCKETS_S, stats.upstream_counts),
                            stats.upstream_sum_s)
    yield from (requests, retries, duration, queue_wait, upstream)


def _live_families(hub: MetricsHub, keys: list[EntityKey]) -> Iterator[Metric]:
    in_flight = GaugeMetricFamily("zeroserve_in_flight_requests",
                                  "Requests forwarded to replicas and not yet answered.",
                                  labels=ENTITY_LABELS)
    queued = GaugeMetricFamily("zeroserve_queue_depth",
                               "Requests held in the activator queue, waiting for a replica.",
                               labels=ENTITY_LABELS)
    replicas = GaugeMetricFamily("zeroserve_replicas", "Replicas of a served entity, by state.",
                                 labels=(*ENTITY_LABELS, "state"))
    desired = GaugeMetricFamily("zeroserve_replicas_desired",
                                "Replicas the autoscaler wants for a served entity.", labels=ENTITY_LABELS)
    for key in keys:
        labels = _labels(key)
        now_in_flight, now_queued = hub.load(key)
        in_flight.add_metric(labels, now_in_flight)
        queued.add_metric(labels, now_queued)
        counts = hub.replicas(key)
        by_state = (counts.starting, counts.ready, counts.draining)
        for state, value in zip(REPLICA_STATES, by_state, strict=True):
            replicas.add_metric([*labels, state], value)
        desired.add_metric(labels, counts.desired)
    yield from (in_flight, queued, replicas, desired)


def _lifecycle_families(hub: MetricsHub, keys: list[EntityKey]) -> Iterator[Metric]:
    cold_starts = CounterMetricFamily("zeroserve_cold_starts",
                                      "Replicas started while their served entity had none ready.",
                                      labels=ENTITY_LABELS)
    cold_start_duration = HistogramMetricFamily(
        "zeroserve_cold_start_duration_seconds",
        "Time from asking for a replica of an entity at zero to that replica being ready.",
        labels=ENTITY_LABELS)
    decisions = CounterMetricFamily("zeroserve_scaling_decisions",
                                    "Autoscaler decisions that changed the desired replica count.",
                                    labels=(*ENTITY_LABELS, "direction"))
    replica_seconds = CounterMetricFamily(
        "zeroserve_replica_seconds", "Replica lifetime accumulated (starting, ready or draining).",
        labels=(*ENTITY_LABELS, "workload_type"))
    cost = CounterMetricFamily(
        "zeroserve_cost", "Estimated cost from replica-seconds and the price per replica-hour.",
        labels=(*ENTITY_LABELS, "workload_type"))
    for key in keys:
        labels = _labels(key)
        lifecycle = hub.lifecycle(key)
        cold_starts.add_metric(labels, lifecycle.cold_starts)
        histogram = lifecycle.cold_start_duration
        cold_start_duration.add_metric(labels, _prometheus_buckets(histogram.bounds, histogram.counts),
                                       histogram.total)
        decisions.add_metric([*labels, "up"], lifecycle.scale_ups)
        decisions.add_metric([*labels, "down"], lifecycle.scale_downs)
        workload = hub.workload_type(key)
        if hub.replica_seconds is not None:
            replica_seconds.add_metric([*labels, workload], hub.replica_seconds(key))
        if hub.cost is not None:
            cost.add_metric([*labels, workload], hub.cost(key))
    yield from (cold_starts, cold_start_duration, decisions, replica_seconds, cost)


def _gateway_families(hub: MetricsHub) -> Iterator[Metric]:
    unrouted = CounterMetricFamily(
        "zeroserve_unrouted_requests",
        "Inference requests answered before reaching a served entity (unknown endpoint, bad input).",
        labels=("status_class",))
    for name, count in by_class(hub.request_stats.unrouted_by_status).items():
        unrouted.add_metric([name], count)
    yield unrouted
    if hub.gpus is not None:
        gpus = hub.gpus()
        yield GaugeMetricFamily("zeroserve_gpus", "CUDA devices replicas can be placed on.", value=len(gpus))
        memory = GaugeMetricFamily("zeroserve_gpu_memory_bytes", "Memory of each CUDA device, where known.",
                                   labels=("gpu", "name"))
        for index, name, memory_bytes in gpus:
            if memory_bytes is not None:
                memory.add_metric([str(index), name], memory_bytes)
        yield memory
    if hub.cache_counters is not None:
        hits, misses, fetched = hub.cache_counters()
        yield CounterMetricFamily("zeroserve_model_cache_hits", "Model versions found in the local cache.",
                                  value=hits)
        yield CounterMetricFamily("zeroserve_model_cache_misses",
                                  "Model versions that had to be fetched from the store.", value=misses)
        yield CounterMetricFamily("zeroserve_model_cache_fetched_bytes",
                                  "Bytes downloaded from model stores into the cache.", value=fetched)
