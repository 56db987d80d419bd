"""Replay a request trace through the scaling policy on a simulated clock: what a setting would cost.

Each request arrives at its time and takes its service time on a replica; a replica serves
``container_concurrency`` requests at once; requests beyond the fleet's capacity wait in the activator
queue (FIFO); a new replica is ready ``cold_start_s`` after it is asked for. The decisions come from the
real ``autoscaler.policy.decide`` over the real ``MetricsWindow``, called as the loop and the balancer
call them: every tick, and when a request has to wait (at most every 0.1 s); the router reports its
levels and counts every second and before each poke, as the activator does. A fleet of
``fixed_replicas`` with no policy is the comparison point.

Used by ``zeroserve endpoints cost`` (a recorded trace against an endpoint's settings and a few
alternatives) and by ``benchmarks.autoscaler_sim`` (synthetic traces against other policies).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from autoscaler.metrics_window import MetricsWindow
from autoscaler.policy import Fleet, PolicyState, decide
from autoscaler.spec import AutoscalingSpec

TICK_S = 2.0  # autoscaler.loop's default tick
POKE_INTERVAL_S = 0.1  # router.dataplane.balancer's default


@dataclass
class ReplayResult:
    starts: int = 0  # replicas asked for (each one a cold start)
    replica_seconds: float = 0.0  # replicas existing (starting, serving or draining) x time: the cost
    waits: list[float] = field(default_factory=list)  # each request's time in the queue
    direction_changes: int = 0  # the count went up after going down, or the reverse
    peak_replicas: int = 0

    @property
    def p99_wait_ms(self) -> float:
        return float(np.percentile(self.waits, 99)) * 1000 if self.waits else 0.0


@dataclass
class _Replica:
    ready_at: float
    in_flight: int = 0
    draining: bool = False


_ARRIVAL, _DONE, _READY, _TICK, _REPORT = range(5)
REPORT_INTERVAL_S = 1.0  # router.dataplane.activator's default


def replay(
    arrivals: Sequence[float] | np.ndarray,
    service_times: Sequence[float] | np.ndarray,
    spec: AutoscalingSpec | None,
    *,
    duration_s: float,
    fixed_replicas: int = 0,
    container_concurrency: int | None = None,
    cold_start_s: float = 1.0,
    counts: bool = True,
    tick_s: float = TICK_S,
    report_interval_s: float = REPORT_INTERVAL_S,
) -> ReplayResult:
    """One trace through one fleet, event by event. ``arrivals``: seconds from the trace's start, in
    order; ``service_times``: seconds each request takes on a replica. ``spec`` None: a fixed fleet of
    ``fixed_replicas`` serving ``container_concurrency`` each. ``counts`` False: the routers send no
    counts, so the policy runs without its drain-aware estimate (the previous policy). The router
    reports every ``report_interval_s`` and before each poke, as the activator does; 0 reports on
    every change (an exact window, kinder than the real router)."""
    if len(arrivals) != len(service_times):
        raise ValueError(f"{len(arrivals)} arrivals but {len(service_times)} service times")
    concurrency = spec.container_concurrency if spec is not None else (container_concurrency or 1)
    result = ReplayResult()
    replicas: dict[int, _Replica] = {}
    ids = iter(range(1 << 30))
    queue: deque[tuple[float, float]] = deque()  # (arrival time, service time) of waiting requests
    window = MetricsWindow(retention_s=spec.stable_window_s if spec else tick_s)
    state = PolicyState()
    last_direction = 0
    events: list[tuple[float, int, int, int]] = []  # (time, order, kind, replica id or request index)
    order = iter(range(1 << 62))
    arrived = completed = 0
    last_poke = -math.inf

    def push(at: float, kind: int, subject: int = -1) -> None:
        heapq.heappush(events, (at, next(order), kind, subject))

    def start_replicas(count: int, now: float) -> None:
        for _ in range(count):
            replica_id = next(ids)
            delay = cold_start_s if spec else 0.0
            replicas[replica_id] = _Replica(ready_at=now + delay)
            push(now + delay, _READY, replica_id)
        if spec:
            result.starts += count
        result.peak_replicas = max(result.peak_replicas, len(replicas))

    def live() -> list[tuple[int, _Replica]]:
        return [(rid, r) for rid, r in replicas.items() if not r.draining]

    def run_policy(now: float) -> None:
        nonlocal state, last_direction
        assert spec is not None
        current = live()
        ready = sum(1 for _, r in current if r.ready_at <= now)
        reading = window.reading(now, spec.stable_window_s, spec.panic_window_s)
        decision, state = decide(reading, spec, state, now, Fleet(ready, len(current) - ready))
        window.clear_poke()
        if decision.changed:
            direction = 1 if decision.desired > decision.previous else -1
            if last_direction and direction != last_direction:
                result.direction_changes += 1
            last_direction = direction
        if len(current) < decision.desired:
            start_replicas(decision.desired - len(current), now)
        elif len(current) > decision.desired:
            # Newest first: a replica still starting is the cheapest to give up.
            for rid, replica in sorted(current, key=lambda item: -item[1].ready_at)[
                    : len(current) - decision.desired]:
                replica.draining = True
                if replica.in_flight == 0:
                    del replicas[rid]

    def report(now: float) -> None:
        in_flight = sum(r.in_flight for r in replicas.values())
        if counts:
            window.report(now, in_flight, len(queue), arrivals=arrived, completions=completed)
        else:
            window.report(now, in_flight, len(queue))

    def dispatch(now: float) -> None:
        while queue:
            free = [(r.in_flight, rid) for rid, r in replicas.items()
                    if not r.draining and r.ready_at <= now and r.in_flight < concurrency]
            if not free:
                return
            _, rid = min(free)
            arrived_at, service_s = queue.popleft()
            result.waits.append(now - arrived_at)
            replicas[rid].in_flight += 1
            push(now + service_s, _DONE, rid)

    if spec is None:
        start_replicas(fixed_replicas, 0.0)
    else:
        push(0.0, _TICK)
        if report_interval_s > 0:
            push(0.0, _REPORT)
    for index, arrival in enumerate(arrivals):
        push(float(arrival), _ARRIVAL, index)
    previous_time = 0.0
    while events:
        now, _, kind, subject = heapq.heappop(events)
        if now > duration_s:
            break
        result.replica_seconds += len(replicas) * (now - previous_time)
        previous_time = now
        if kind == _ARRIVAL:
            arrived += 1
            queue.append((now, float(service_times[subject])))
            dispatch(now)
            # The balancer's poke: a request that must wait asks the autoscaler to decide now (at
            # most every POKE_INTERVAL_S while they keep coming), not at the next tick; the activator
            # reports its counts first.
            if spec is not None and queue and (len(queue) <= 1 or now - last_poke >= POKE_INTERVAL_S):
                last_poke = now
                report(now)
                window.poke(now)
                run_policy(now)
        elif kind == _DONE:
            replica = replicas.get(subject)
            completed += 1
            if replica is not None:
                replica.in_flight -= 1
                if replica.draining and replica.in_flight == 0:
                    del replicas[subject]
        elif kind == _TICK:
            run_policy(now)
            push(now + tick_s, _TICK)
        elif kind == _REPORT:
            report(now)
            push(now + report_interval_s, _REPORT)
        dispatch(now)
        if spec is not None and report_interval_s == 0:
            report(now)
    result.replica_seconds += len(replicas) * (duration_s - previous_time)
    return result


def alternatives(spec: AutoscalingSpec) -> list[tuple[str, AutoscalingSpec]]:
    """The settings as they are, then a few a user right-sizing the endpoint would weigh: another
    utilization target, a reserved floor of one replica or none, scale to zero the other way."""
    options = [("as configured", spec)]
    for utilization in (0.5, 0.9):
        if utilization != spec.target_utilization:
            options.append((f"target utilization {utilization:g}",
                            replace(spec, target_utilization=utilization)))
    if spec.min_provisioned_concurrency == 0:
        options.append((f"reserved floor of 1 replica (min concurrency {spec.container_concurrency})",
                        replace(spec, min_provisioned_concurrency=spec.container_concurrency)))
    else:
        options.append(("no reserved floor", replace(spec, min_provisioned_concurrency=0)))
    if spec.floor_replicas == 0:
        options.append(("scale to zero off", replace(spec, scale_to_zero_enabled=False)))
    elif spec.min_provisioned_concurrency == 0:
        options.append(("scale to zero on", replace(spec, scale_to_zero_enabled=True)))
    return options
