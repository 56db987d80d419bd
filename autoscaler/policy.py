"""The scaling policy: how many replicas a served entity should have, as a pure function.

``decide(window, spec, state, now, fleet)`` reads no clock and does no I/O: the loop passes the time,
the traffic reading, the replica counts and the policy's own memory (``PolicyState``) in, and gets a
``Decision`` (with a human-readable reason) and the next ``PolicyState`` back. It is Knative's KPA
(``pkg/autoscaler/scaling/autoscaler.go``) built from small named steps, applied in this order:

    target -> panic/stable -> rate limits -> floor/ceiling -> scale-down delay
           -> scale-to-zero gate -> cold-start fast path

The examples in the comments use the defaults: C = 4, target utilization 0.7 (2.8 concurrent per
replica), stable window 60 s, panic window 6 s, panic threshold 2x, scale-down rate 2x, grace 30 s.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from autoscaler.metrics_window import NoData, WindowReading
from autoscaler.spec import AutoscalingSpec

# Value types are NamedTuples rather than frozen dataclasses: the loop builds three per entity per
# tick, and a NamedTuple is built ~4x faster (10,000 entities must be decided in well under 100 ms).


class Fleet(NamedTuple):
    """The replicas that exist for the entity's current config right now."""

    ready: int
    starting: int = 0


class PolicyState(NamedTuple):
    """The policy's memory between decisions; the loop keeps it and passes it back in."""

    desired: int = 0
    # Last time the panic figure was over the threshold; None when not panicking.
    panic_last_over_at: float | None = None
    # While panicking the desired count only ratchets up; this is the highest one so far.
    panic_peak: int = 0
    # (time, recommendation) pairs still inside the scale-down delay, values strictly decreasing:
    # a sliding-window maximum, so its length is bounded by the ceiling whatever the delay.
    recent_recommendations: tuple[tuple[float, int], ...] = ()

    @property
    def panicking(self) -> bool:
        return self.panic_last_over_at is not None


class Decision(NamedTuple):
    desired: int
    previous: int
    reason: str
    panicking: bool = False

    @property
    def changed(self) -> bool:
        return self.desired != self.previous


def decide(
    window: WindowReading | NoData, spec: AutoscalingSpec, state: PolicyState, now: float, fleet: Fleet
) -> tuple[Decision, PolicyState]:
    """One scaling decision for one served entity. Pure: same inputs, same outputs."""
    if isinstance(window, NoData):
        return _no_data(window, spec, state)
    targets = _target(window, spec)
    desired, panic_last_over_at, panic_peak, reason = _panic_or_stable(
        targets, window, spec, state, now, fleet)
    notes: list[str] = []
    desired = _rate_limits(desired, spec, fleet, notes)
    desired = _floor_ceiling(desired, spec, notes)
    desired, recent = _scale_down_delay(desired, spec, state, now, notes)
    desired = _scale_to_zero_gate(desired, window, spec, state, now, fleet, notes)
    desired, reason = _cold_start(desired, window, fleet, reason)
    if notes:
        reason = "; ".join([reason, *notes])
    next_state = PolicyState(desired, panic_last_over_at, panic_peak, recent)
    return Decision(desired, state.desired, reason, panic_last_over_at is not None), next_state


def _no_data(window: NoData, spec: AutoscalingSpec, state: PolicyState) -> tuple[Decision, PolicyState]:
    # Precondition: nothing was ever reported. No metric-driven change; only the floor and ceiling
    # apply, so a new entity with a reserved floor of 2 starts its 2 replicas before any traffic.
    desired = min(max(state.desired, spec.floor_replicas), spec.ceiling_replicas)
    reason = f"no data ({window.reason}): hold {state.desired}"
    if desired != state.desired:
        reason += f"; floor {spec.floor_replicas}, ceiling {spec.ceiling_replicas} -> {desired}"
    next_state = state._replace(desired=desired)
    return Decision(desired, state.desired, reason), next_state


def _target(window: WindowReading, spec: AutoscalingSpec) -> tuple[int, int]:
    # Replicas (stable, panic) needed so that each carries at most C x utilization concurrent
    # requests: 37.0 concurrent / (4 x 0.7 = 2.8) = 13.2 -> 14 replicas. A tiny epsilon keeps
    # 5.6 / 2.8 at 2 rather than 3 when floating point lands a hair above.
    per_replica = spec.container_concurrency * spec.target_utilization
    return (math.ceil(window.stable_concurrency / per_replica - 1e-9),
            math.ceil(window.panic_concurrency / per_replica - 1e-9))


def _panic_or_stable(
    targets: tuple[int, int],
    window: WindowReading,
    spec: AutoscalingSpec,
    state: PolicyState,
    now: float,
    fleet: Fleet,
) -> tuple[int, float | None, int, str]:
    """(desired, panic_last_over_at, panic_peak, reason)."""
    # Panic when the panic window asks for >= threshold x the ready replicas (at least 1, so a burst
    # into an entity at zero can panic too): 14 wanted / 3 ready = 4.7 >= 2 -> panic. In panic the
    # count follows the panic window and never goes down; panic ends once a full stable window has
    # passed without the threshold being crossed again.
    stable_target, panic_target = targets
    ready_basis = max(1, fleet.ready)
    over_threshold = panic_target / ready_basis >= spec.panic_threshold
    panic_last_over_at = state.panic_last_over_at
    panic_peak = state.panic_peak
    if over_threshold:
        if panic_last_over_at is None:
            panic_peak = state.desired  # entering panic: never below what was already asked for
        panic_last_over_at = now
    elif panic_last_over_at is not None and now - panic_last_over_at >= spec.stable_window_s:
        panic_last_over_at = None
        panic_peak = 0
    if panic_last_over_at is not None:
        desired = max(panic_target, panic_peak)
        reason = (f"panic: {window.panic_concurrency:.1f} concurrent over {_seconds(spec.panic_window_s)}, "
                  f"{fleet.ready} ready -> {desired}")
        if desired > panic_target:
            reason += f" (holding panic peak {panic_peak}, no scale-down while panicking)"
        return desired, panic_last_over_at, desired, reason
    reason = (f"stable: {window.stable_concurrency:.1f} concurrent over {_seconds(spec.stable_window_s)}, "
              f"{fleet.ready} ready -> {stable_target}")
    if state.panicking:
        reason = f"panic over after {_seconds(spec.stable_window_s)} calm; " + reason
    return stable_target, None, 0, reason


def _rate_limits(desired: int, spec: AutoscalingSpec, fleet: Fleet, notes: list[str]) -> int:
    # Relative to the ready replicas (at least 1): up to 1000 x 3 = 3000, down to floor(8 / 2) = 4.
    ready_basis = max(1, fleet.ready)
    most = math.ceil(spec.max_scale_up_rate * ready_basis)
    least = math.floor(ready_basis / spec.max_scale_down_rate)
    if desired > most:
        notes.append(f"scale-up rate {spec.max_scale_up_rate:g}x of {fleet.ready} ready caps at {most}")
        return most
    if desired < least:
        notes.append(f"scale-down rate {spec.max_scale_down_rate:g}x of {fleet.ready} ready holds {least}")
        return least
    return desired


def _floor_ceiling(desired: int, spec: AutoscalingSpec, notes: list[str]) -> int:
    # Reserved floor ceil(10 / 4) = 3 holds even when idle; ceiling ceil(16 / 4) = 4 for Medium.
    floor = spec.floor_replicas
    if desired < floor:
        notes.append(f"floor {floor}")
        return floor
    ceiling = spec.ceiling_replicas
    if desired > ceiling:
        notes.append(f"ceiling {ceiling}")
        return ceiling
    return desired


def _scale_down_delay(
    desired: int, spec: AutoscalingSpec, state: PolicyState, now: float, notes: list[str]
) -> tuple[int, tuple[tuple[float, int], ...]]:
    # Precondition: a delay is set. The result is the highest recommendation of the last delay
    # seconds: with a 30 s delay, recommendations 6 (t=0), 3 (t=10) give 6 until t=30, then 3.
    if spec.scale_down_delay_s <= 0:
        return desired, ()
    kept = [(at, value) for at, value in state.recent_recommendations
            if now - at < spec.scale_down_delay_s and value > desired]
    recent = (*kept, (now, desired))
    highest = recent[0][1]
    if highest > desired:
        notes.append(f"scale-down delay {_seconds(spec.scale_down_delay_s)} holds {highest}")
    return highest, recent


def _scale_to_zero_gate(
    desired: int,
    window: WindowReading,
    spec: AutoscalingSpec,
    state: PolicyState,
    now: float,
    fleet: Fleet,
    notes: list[str],
) -> int:
    # Precondition: the steps so far say 0 while replicas exist or were asked for. Zero only after a
    # full stable window without traffic plus the grace period: last busy at t=100 -> zero at t=190.
    if desired > 0 or (state.desired == 0 and fleet.ready + fleet.starting == 0):
        return desired
    idle_since = window.last_busy_at if window.last_busy_at is not None else window.observed_since
    idle_s = now - idle_since
    needed_s = spec.stable_window_s + spec.scale_to_zero_grace_s
    if idle_s < needed_s:
        notes.append(f"scale to zero waits for {_seconds(needed_s)} idle "
                     f"({_seconds(spec.stable_window_s)} window + {_seconds(spec.scale_to_zero_grace_s)} "
                     f"grace), idle {idle_s:.1f} s -> 1")
        return 1
    notes.append(f"idle {idle_s:.1f} s >= {_seconds(needed_s)} -> scale to zero")
    return 0


def _cold_start(desired: int, window: WindowReading, fleet: Fleet, reason: str) -> tuple[int, str]:
    # Precondition: no replica ready or starting, and a request is waiting. One replica now, without
    # waiting for the windows to notice (a single queued request over a 60 s window averages ~0).
    demand = window.poked or window.queued > 0 or window.current_concurrency > 0
    if desired > 0 or fleet.ready + fleet.starting > 0 or not demand:
        return desired, reason
    waiting = max(window.queued, 1)
    return 1, f"cold start: {waiting} request{'s' if waiting != 1 else ''} waiting, no replica -> 1"


def _seconds(value: float) -> str:
    return f"{value:g} s"
