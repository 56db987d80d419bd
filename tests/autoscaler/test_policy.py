"""The scaling policy, rule by rule and boundary by boundary, then as scenarios over time.

Cases are small dataclasses with readable ids; every one goes through ``expect_decision``. Scenarios
feed a real ``MetricsWindow`` and step a fake ``now`` (no clock is read anywhere in the policy).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest

from autoscaler.metrics_window import MetricsWindow, NoData, WindowReading
from autoscaler.policy import Decision, Fleet, PolicyState, decide
from autoscaler.spec import AutoscalingSpec, PrewarmWindow, WorkloadSize

NOW = 1000.0
# Wide enough that the ceiling is not what the case is about (ceil(400 / 4) = 100 replicas).
ROOMY = AutoscalingSpec(max_provisioned_concurrency=400)
ROOMY_FLOOR_1 = replace(ROOMY, scale_to_zero_enabled=False)


@dataclass(frozen=True)
class Case:
    id: str
    want: int
    stable: float = 0.0
    panic: float | None = None  # None: same as stable
    ready: int = 0
    starting: int = 0
    state: PolicyState = field(default_factory=PolicyState)
    spec: AutoscalingSpec = ROOMY
    now: float = NOW
    queued: int = 0
    current: float | None = None  # None: same as the panic figure
    poked: bool = False
    last_busy_at: float | None = NOW  # NOW: traffic right now
    observed_since: float = 0.0
    reason: str = ""  # a substring the reason must contain
    exact_reason: str | None = None
    panicking: bool | None = None
    # The routers' counts (None: they send none, and the policy is Knative's).
    stable_rate: float | None = None
    panic_rate: float | None = None  # None: same as stable_rate
    service_s: float | None = None
    wall: float | None = None


def reading_for(case: Case) -> WindowReading:
    panic = case.stable if case.panic is None else case.panic
    return WindowReading(
        stable_concurrency=case.stable,
        panic_concurrency=panic,
        current_concurrency=panic if case.current is None else case.current,
        queued=case.queued,
        last_busy_at=case.last_busy_at,
        observed_since=case.observed_since,
        poked=case.poked,
        stable_arrival_rate=case.stable_rate,
        panic_arrival_rate=case.stable_rate if case.panic_rate is None else case.panic_rate,
        service_time_s=case.service_s,
    )


def expect_decision(case: Case) -> tuple[Decision, PolicyState]:
    decision, state = decide(reading_for(case), case.spec, case.state, case.now,
                             Fleet(ready=case.ready, starting=case.starting), case.wall)
    assert decision.desired == case.want, decision.reason
    assert state.desired == case.want
    assert decision.previous == case.state.desired
    assert case.reason in decision.reason
    if case.exact_reason is not None:
        assert decision.reason == case.exact_reason
    if case.panicking is not None:
        assert decision.panicking is case.panicking
        assert state.panicking is case.panicking
    return decision, state


def run_cases(cases: Sequence[Case]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", cases, ids=lambda case: case.id)


# --- target: ceil(concurrency / (C x utilization)) ------------------------------------------------

TARGET_CASES = [
    Case("idle-at-zero-stays-zero", want=0, stable=0.0, last_busy_at=None,
         exact_reason="stable: 0.0 concurrent over 60 s, 0 ready -> 0"),
    Case("exactly-one-target-is-one", want=1, stable=2.8, ready=1, state=PolicyState(desired=1)),
    Case("just-over-one-target-is-two", want=2, stable=2.81, ready=1, state=PolicyState(desired=1)),
    Case("exactly-two-targets-is-two", want=2, stable=5.6, ready=2, state=PolicyState(desired=2),
         exact_reason="stable: 5.6 concurrent over 60 s, 2 ready -> 2"),
    Case("just-over-two-targets-is-three", want=3, stable=5.61, ready=2, state=PolicyState(desired=2)),
    Case("any-traffic-needs-one", want=1, stable=0.01, ready=1, state=PolicyState(desired=1)),
    Case("ten-replicas", want=10, stable=28.0, ready=10, state=PolicyState(desired=10)),
    Case("concurrency-10-util-half", want=3, stable=12.0, ready=3, state=PolicyState(desired=3),
         spec=replace(ROOMY, container_concurrency=10, target_utilization=0.5)),
    Case("full-utilization", want=2, stable=8.0, ready=2, state=PolicyState(desired=2),
         spec=replace(ROOMY, target_utilization=1.0)),
    Case("custom-window-named-in-reason", want=1, stable=1.0, ready=1, state=PolicyState(desired=1),
         spec=replace(ROOMY, stable_window_s=30.0), reason="over 30 s"),
]


@run_cases(TARGET_CASES)
def test_target(case: Case) -> None:
    expect_decision(case)


# --- panic: the panic figure >= 2x ready replicas -------------------------------------------------

PANIC_CASES = [
    Case("issue-example", want=14, stable=8.0, panic=37.0, ready=3, state=PolicyState(desired=3),
         exact_reason="panic: 37.0 concurrent over 6 s, 3 ready -> 14", panicking=True),
    Case("threshold-exactly-2x-panics", want=4, stable=5.6, panic=11.2, ready=2,
         state=PolicyState(desired=2), panicking=True),
    Case("just-under-threshold-stays-stable", want=2, stable=5.6, panic=8.4, ready=2,
         state=PolicyState(desired=2), panicking=False, reason="stable:"),
    Case("from-zero-burst-panics", want=2, stable=0.5, panic=5.6, ready=0, panicking=True),
    Case("from-zero-one-request-is-not-panic", want=1, stable=2.8, panic=2.8, ready=0, panicking=False),
    Case("custom-threshold-3x-not-reached", want=1, stable=2.8, panic=14.0, ready=2,
         state=PolicyState(desired=2), spec=replace(ROOMY, panic_threshold=3.0), panicking=False),
    Case("custom-threshold-3x-reached", want=6, stable=2.8, panic=16.8, ready=2,
         state=PolicyState(desired=2), spec=replace(ROOMY, panic_threshold=3.0), panicking=True),
    Case("custom-panic-window-in-reason", want=8, stable=1.0, panic=22.4, ready=1,
         state=PolicyState(desired=1), spec=replace(ROOMY, panic_window_pct=20.0), reason="over 12 s"),
    Case("panicking-never-scales-down", want=10, stable=2.8, panic=2.8, ready=10,
         state=PolicyState(desired=10, panic_last_over_at=NOW - 10, panic_peak=10), panicking=True,
         reason="holding panic peak 10"),
    Case("panicking-still-scales-up", want=20, stable=10.0, panic=56.0, ready=10,
         state=PolicyState(desired=10, panic_last_over_at=NOW - 10, panic_peak=10), panicking=True),
    Case("panic-stays-one-tick-before-a-full-calm-window", want=10, stable=2.8, panic=2.8, ready=10,
         state=PolicyState(desired=10, panic_last_over_at=NOW - 59.9, panic_peak=10), panicking=True),
    Case("panic-ends-after-a-full-calm-window", want=5, stable=2.8, panic=2.8, ready=10,
         state=PolicyState(desired=10, panic_last_over_at=NOW - 60.0, panic_peak=10), panicking=False,
         reason="panic over after 60 s calm; stable: 2.8 concurrent over 60 s, 10 ready -> 1"),
    Case("entering-panic-keeps-what-was-asked", want=5, stable=1.0, panic=8.4, ready=1,
         state=PolicyState(desired=5), panicking=True, reason="holding panic peak 5"),
]


@run_cases(PANIC_CASES)
def test_panic(case: Case) -> None:
    expect_decision(case)


def test_panic_is_extended_while_over_threshold() -> None:
    case = Case("re-over", want=20, stable=10.0, panic=56.0, ready=10,
                state=PolicyState(desired=10, panic_last_over_at=NOW - 50, panic_peak=10))
    _, state = expect_decision(case)
    assert state.panic_last_over_at == NOW
    assert state.panic_peak == 20


def test_leaving_panic_forgets_the_peak() -> None:
    case = Case("leave", want=5, stable=2.8, ready=10,
                state=PolicyState(desired=10, panic_last_over_at=NOW - 61, panic_peak=10))
    _, state = expect_decision(case)
    assert state.panic_last_over_at is None
    assert state.panic_peak == 0


# --- rate limits: up to 1000x, down to 1/2 of the ready replicas per decision --------------------

RATE_CASES = [
    Case("scale-down-halves-at-most", want=4, stable=2.8, ready=8, state=PolicyState(desired=8),
         reason="scale-down rate 2x of 8 ready holds 4"),
    Case("scale-down-exactly-half-has-no-note", want=4, stable=11.2, ready=8, state=PolicyState(desired=8),
         exact_reason="stable: 11.2 concurrent over 60 s, 8 ready -> 4"),
    Case("scale-down-rate-4x", want=2, stable=2.8, ready=8, state=PolicyState(desired=8),
         spec=replace(ROOMY, max_scale_down_rate=4.0)),
    Case("scale-down-odd-rounds-down", want=2, stable=0.5, ready=5, state=PolicyState(desired=5)),
    Case("scale-up-rate-caps", want=6, stable=28.0, ready=3, state=PolicyState(desired=3),
         spec=replace(ROOMY, max_scale_up_rate=2.0), reason="scale-up rate 2x of 3 ready caps at 6"),
    Case("scale-up-rate-from-zero-counts-one", want=2, stable=28.0, panic=2.0, ready=0,
         spec=replace(ROOMY, max_scale_up_rate=2.0)),
    Case("scale-up-rate-applies-in-panic", want=4, stable=2.0, panic=56.0, ready=2,
         state=PolicyState(desired=2), spec=replace(ROOMY, max_scale_up_rate=2.0), panicking=True),
    Case("default-up-rate-is-not-limiting", want=100, stable=280.0, ready=1, state=PolicyState(desired=1)),
]


@run_cases(RATE_CASES)
def test_rate_limits(case: Case) -> None:
    expect_decision(case)


# --- floor and ceiling ---------------------------------------------------------------------------

FLOOR_CEILING_CASES = [
    Case("no-scale-to-zero-floor-1", want=1, stable=0.0, ready=1, state=PolicyState(desired=1),
         spec=ROOMY_FLOOR_1, last_busy_at=0.0, reason="the reserved floor keeps 1"),
    Case("reserved-floor-3", want=3, stable=0.0, ready=3, state=PolicyState(desired=3),
         spec=replace(ROOMY, min_provisioned_concurrency=10), last_busy_at=0.0,
         reason="the reserved floor keeps 3"),
    Case("rate-limit-above-the-floor-still-applies", want=5, stable=0.0, ready=10,
         state=PolicyState(desired=10), spec=replace(ROOMY, min_provisioned_concurrency=12),
         last_busy_at=0.0),
    Case("reserved-floor-under-the-rate-limit", want=3, stable=0.0, ready=4, state=PolicyState(desired=4),
         spec=replace(ROOMY, min_provisioned_concurrency=12), last_busy_at=0.0,
         reason="the reserved floor keeps 3"),
    Case("small-ceiling-1", want=1, stable=28.0, ready=1, state=PolicyState(desired=1),
         spec=AutoscalingSpec(), reason="max provisioned concurrency caps it at 1"),
    Case("medium-ceiling-4", want=4, stable=28.0, ready=1, state=PolicyState(desired=1),
         spec=AutoscalingSpec(workload_size=WorkloadSize.MEDIUM),
         reason="max provisioned concurrency caps it at 4"),
    Case("large-ceiling-16", want=16, stable=100.0, ready=4, state=PolicyState(desired=4),
         spec=AutoscalingSpec(workload_size=WorkloadSize.LARGE)),
    Case("explicit-max-ceiling", want=3, stable=100.0, ready=1, state=PolicyState(desired=1),
         spec=AutoscalingSpec(max_provisioned_concurrency=10)),
    Case("ceiling-caps-panic", want=4, stable=5.0, panic=100.0, ready=1, state=PolicyState(desired=1),
         spec=AutoscalingSpec(workload_size=WorkloadSize.MEDIUM), panicking=True,
         reason="max provisioned concurrency caps it at 4"),
    Case("ceiling-lowered-scales-down-at-once", want=1, stable=28.0, ready=10, state=PolicyState(desired=10),
         spec=AutoscalingSpec()),
]


@run_cases(FLOOR_CEILING_CASES)
def test_floor_and_ceiling(case: Case) -> None:
    expect_decision(case)


# --- scale-down delay: the highest recommendation of the last delay seconds ---------------------

DELAYED = replace(ROOMY, scale_down_delay_s=30.0)

DELAY_CASES = [
    Case("no-delay-scales-down-now", want=3, stable=8.4, ready=6, state=PolicyState(desired=6)),
    Case("delay-holds-earlier-higher", want=6, stable=8.4, ready=6, spec=DELAYED,
         state=PolicyState(desired=6, recent_recommendations=((NOW - 10, 6),)),
         reason="scale-down delay 30 s holds 6"),
    Case("delay-expires-exactly", want=3, stable=8.4, ready=6, spec=DELAYED,
         state=PolicyState(desired=6, recent_recommendations=((NOW - 30, 6),))),
    Case("delay-never-delays-scale-up", want=9, stable=25.2, ready=6, spec=DELAYED,
         state=PolicyState(desired=6, recent_recommendations=((NOW - 10, 6),))),
    Case("delay-takes-the-max-not-the-latest", want=8, stable=2.8, ready=8, spec=DELAYED,
         state=PolicyState(desired=5, recent_recommendations=((NOW - 20, 8), (NOW - 5, 5)))),
]


@run_cases(DELAY_CASES)
def test_scale_down_delay(case: Case) -> None:
    expect_decision(case)


def test_delay_memory_is_a_decreasing_sliding_maximum() -> None:
    state = PolicyState(desired=8, recent_recommendations=((NOW - 20, 8), (NOW - 5, 5)))
    _, next_state = expect_decision(Case("m", want=8, stable=16.8, ready=8, spec=DELAYED, state=state))
    # 6 replaces the 5 it dominates; 8 stays because it is older and higher.
    assert next_state.recent_recommendations == ((NOW - 20, 8), (NOW, 6))


def test_delay_memory_stays_bounded_over_a_long_decline() -> None:
    state = PolicyState(desired=100)
    spec = replace(ROOMY, scale_down_delay_s=3600.0)
    for step in range(2000):
        # Each tick asks for a little less: at most one entry per distinct value survives.
        concurrency = max(0.0, 280.0 - step * 0.14)
        _, state = decide(reading_for(Case("x", want=0, stable=concurrency)), spec, state,
                          NOW + 2 * step, Fleet(ready=100))
    assert len(state.recent_recommendations) <= 101


# --- scale to zero: a full stable window without traffic, plus the grace period ----------------

GATE_CASES = [
    Case("idle-too-short-holds-one", want=1, stable=0.0, ready=1, state=PolicyState(desired=1),
         last_busy_at=NOW - 89.9, reason="scale to zero waits for 90 s idle (60 s window + 30 s grace)"),
    Case("idle-window-plus-grace-scales-to-zero", want=0, stable=0.0, ready=1, state=PolicyState(desired=1),
         last_busy_at=NOW - 90.0, reason="idle 90.0 s >= 90 s -> scale to zero"),
    Case("grace-zero-window-10", want=0, stable=0.0, ready=1, state=PolicyState(desired=1),
         spec=replace(ROOMY, stable_window_s=10.0, scale_to_zero_grace_s=0.0), last_busy_at=NOW - 10.0),
    Case("grace-zero-window-10-one-short", want=1, stable=0.0, ready=1, state=PolicyState(desired=1),
         spec=replace(ROOMY, stable_window_s=10.0, scale_to_zero_grace_s=0.0), last_busy_at=NOW - 9.0),
    Case("never-busy-counts-from-first-observation", want=1, stable=0.0, ready=1,
         state=PolicyState(desired=1), last_busy_at=None, observed_since=NOW - 50),
    Case("never-busy-long-enough", want=0, stable=0.0, ready=1, state=PolicyState(desired=1),
         last_busy_at=None, observed_since=NOW - 500),
    Case("gate-also-covers-a-starting-replica", want=1, stable=0.0, starting=1,
         state=PolicyState(desired=1), last_busy_at=NOW - 5),
    Case("already-at-zero-no-gate", want=0, stable=0.0, last_busy_at=NOW - 5,
         exact_reason="stable: 0.0 concurrent over 60 s, 0 ready -> 0"),
    Case("floor-wins-over-gate", want=1, stable=0.0, ready=1, state=PolicyState(desired=1),
         spec=ROOMY_FLOOR_1, last_busy_at=NOW - 1000),
    Case("gate-after-rate-limit-from-one", want=1, stable=0.0, ready=1, state=PolicyState(desired=1),
         last_busy_at=NOW - 1),
]


@run_cases(GATE_CASES)
def test_scale_to_zero_gate(case: Case) -> None:
    expect_decision(case)


# --- cold start: a waiting request at zero gets a replica at once -------------------------------

COLD_CASES = [
    Case("poke-at-zero-starts-one", want=1, stable=0.0, poked=True,
         exact_reason="cold start: 1 request waiting, no replica -> 1"),
    Case("queued-at-zero-starts-one", want=1, stable=0.0, panic=0.0, current=3.0, queued=3,
         exact_reason="cold start: 3 requests waiting, no replica -> 1"),
    Case("in-flight-level-at-zero", want=1, stable=0.0, panic=0.0, current=1.0),
    Case("already-starting-no-fast-path", want=1, stable=0.0, starting=1, poked=True,
         state=PolicyState(desired=1),
         reason="stable: 0.0 concurrent over 60 s, 0 ready -> 0; scale to zero"),
    Case("no-demand-no-start", want=0, stable=0.0, current=0.0, last_busy_at=NOW - 200),
    Case("windows-already-want-more", want=2, stable=0.0, panic=5.6, poked=True, panicking=True),
    Case("cold-start-respects-small-ceiling", want=1, stable=0.0, poked=True, spec=AutoscalingSpec()),
]


@run_cases(COLD_CASES)
def test_cold_start_fast_path(case: Case) -> None:
    expect_decision(case)


# --- no data: no metric-driven change; floor and ceiling still apply -----------------------------

NO_DATA_CASES = [
    (PolicyState(desired=0), ROOMY, 0),
    (PolicyState(desired=0), replace(ROOMY, min_provisioned_concurrency=8), 2),
    (PolicyState(desired=0), ROOMY_FLOOR_1, 1),
    (PolicyState(desired=3), ROOMY, 3),
    (PolicyState(desired=5), AutoscalingSpec(), 1),
]


@pytest.mark.parametrize(("state", "spec", "want"), NO_DATA_CASES,
                         ids=["zero-stays", "reserved-floor-2", "floor-1", "holds-3", "ceiling-1"])
def test_no_data_is_no_change(state: PolicyState, spec: AutoscalingSpec, want: int) -> None:
    decision, next_state = decide(NoData(), spec, state, NOW, Fleet(ready=state.desired))
    assert decision.desired == want == next_state.desired
    assert decision.reason.startswith("no traffic reported yet: holding")
    # Said in the user's terms: why a replica runs before any request came.
    if want > state.desired:
        assert ("reserved capacity" in decision.reason) is (spec.min_provisioned_concurrency > 0)
        assert ("scale to zero is off" in decision.reason) is (spec.min_provisioned_concurrency == 0)
    assert "None" not in decision.reason and not decision.reason.endswith(" 0 -> 0")
    assert decision.changed is (want != state.desired)


def test_decide_is_pure() -> None:
    case = Case("p", want=14, stable=8.0, panic=37.0, ready=3, state=PolicyState(desired=3))
    first = expect_decision(case)
    assert expect_decision(case) == first


# --- scenarios: a real window, a fake now stepped tick by tick ----------------------------------


@dataclass
class Scenario:
    """Drives window + policy like the loop does, with the replicas becoming ready at once."""

    spec: AutoscalingSpec
    now: float = 0.0
    tick_s: float = 2.0
    window: MetricsWindow = field(init=False)
    state: PolicyState = field(default_factory=PolicyState)
    history: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.window = MetricsWindow(retention_s=self.spec.stable_window_s, sample_ttl_s=10.0)

    @property
    def desired(self) -> int:
        return self.state.desired

    def tick(self) -> Decision:
        reading = self.window.reading(self.now, self.spec.stable_window_s, self.spec.panic_window_s)
        decision, self.state = decide(reading, self.spec, self.state, self.now,
                                      Fleet(ready=self.state.desired))
        self.window.clear_poke()
        self.history.append(decision)
        return decision

    def run(self, seconds: float, concurrency: int) -> None:
        """Hold a level of concurrency for ``seconds``, reporting and deciding every tick."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.window.report(self.now, in_flight=concurrency, queued=0)
            self.tick()
            self.now += self.tick_s

    def direction_changes(self) -> int:
        moves = [d.desired - d.previous for d in self.history if d.changed]
        return sum(1 for a, b in itertools.pairwise(moves) if (a > 0) != (b > 0))


def test_scenario_spike_from_idle_then_back_to_zero() -> None:
    sim = Scenario(spec=ROOMY)
    sim.run(20, 0)
    assert sim.desired == 0
    # A request arrives at zero: the poke gets a replica in the same instant.
    sim.window.poke(sim.now)
    assert sim.tick().reason.startswith("cold start")
    assert sim.desired == 1
    # A burst of 30 concurrent: panic follows the 6 s average up to ceil(30 / 2.8) = 11 in 3 ticks.
    sim.run(4, 30)
    assert sim.history[-1].panicking
    sim.run(4, 30)
    assert sim.desired == 11
    assert sim.history[-1].panicking
    # Traffic stops: panic holds 11 for a full calm stable window, then halving steps down.
    sim.run(56, 0)
    assert sim.desired == 11
    sim.run(10, 0)
    assert sim.desired < 11
    # Last busy at t=28 (the burst ended): the gate holds the last replica until t=28+60+30=118.
    sim.run(24, 0)
    assert (sim.now, sim.desired) == (118.0, 1)  # the last tick ran at t=116
    sim.run(2, 0)
    assert sim.desired == 0
    assert sim.history[-1].reason.endswith("idle 90.0 s >= 90 s -> scale to zero")
    assert sim.direction_changes() == 1


def test_scenario_steady_load_is_stable() -> None:
    sim = Scenario(spec=ROOMY)
    sim.window.poke(sim.now)
    sim.tick()
    sim.run(600, 5)  # 5 concurrent / 2.8 -> 2 replicas
    assert sim.desired == 2
    assert sim.direction_changes() == 0
    # Going from 1 to 2 replicas is 2x: panic, which ends after a calm stable window (t >= 70 s).
    assert sim.history[2].panicking
    assert all(not d.panicking for d in sim.history[40:])


def test_scenario_sawtooth_does_not_oscillate() -> None:
    sim = Scenario(spec=ROOMY)
    sim.window.poke(sim.now)
    sim.tick()
    for _ in range(30):  # 10 s at 12 concurrent, 10 s at 2: averages 7 over the stable window
        sim.run(10, 12)
        sim.run(10, 2)
    late = sim.history[len(sim.history) // 2:]
    assert {d.desired for d in late} <= {3, 4, 5}
    assert sim.direction_changes() <= 2


def test_scenario_reserved_floor_holds_while_idle() -> None:
    sim = Scenario(spec=replace(ROOMY, min_provisioned_concurrency=8))
    assert sim.tick().desired == 2  # no data yet: straight to the floor
    sim.run(3600, 0)
    assert sim.desired == 2
    sim.run(60, 20)  # 20 / 2.8 -> 8
    assert sim.desired == 8
    sim.run(600, 0)
    assert sim.desired == 2


def test_scenario_scale_down_delay_smooths_a_dip() -> None:
    spec = replace(ROOMY, stable_window_s=6.0, scale_down_delay_s=20.0)
    sim = Scenario(spec=spec)
    sim.window.poke(sim.now)
    sim.tick()
    sim.run(30, 14)  # 14 / 2.8 -> 5
    assert sim.desired == 5
    sim.run(10, 2)  # a dip shorter than the delay: held
    assert sim.desired == 5
    # Rate limit and delay together: 5 -> 2 (floor(5 / 2)) after the delay, then 2 -> 1 after another.
    sim.run(30, 2)
    assert sim.desired == 2
    sim.run(20, 2)
    assert sim.desired == 1


def test_scenario_panic_threshold_boundary_over_time() -> None:
    five_per_replica = replace(ROOMY, container_concurrency=10, target_utilization=0.5)
    sim = Scenario(spec=five_per_replica)
    sim.window.poke(sim.now)
    sim.tick()
    sim.run(120, 5)
    assert sim.desired == 1
    assert not sim.history[-1].panicking
    # 10 concurrent asks 2 = 2x the 1 ready replica: that is panic, by the >= rule.
    sim.run(6, 10)
    assert sim.history[-1].panicking
    assert sim.desired == 2


def test_scenario_traffic_just_before_zero_restarts_the_gate() -> None:
    sim = Scenario(spec=ROOMY)
    sim.window.poke(sim.now)
    sim.tick()
    sim.run(10, 2)
    sim.run(86, 0)  # last busy at t=10: zero would come at t=100
    assert sim.desired == 1
    sim.run(2, 1)  # one request at t=96
    sim.run(90, 0)
    assert sim.desired == 1  # 90 s after t=98 is t=188: not yet
    sim.run(4, 0)
    assert sim.desired == 0


def test_scenario_two_routers_add_up_and_a_dead_one_expires() -> None:
    sim = Scenario(spec=ROOMY)
    sim.window.poke(sim.now)
    sim.tick()
    for _ in range(40):  # 80 s: router a sees 4 concurrent, router b 4 -> 8 / 2.8 -> 3
        sim.window.report(sim.now, in_flight=4, queued=0, source="router-a")
        sim.window.report(sim.now, in_flight=4, queued=0, source="router-b")
        sim.tick()
        sim.now += sim.tick_s
    assert sim.desired == 3
    # Router b dies without a last report: its level expires after 10 s, the stable window forgets it.
    for _ in range(60):
        sim.window.report(sim.now, in_flight=4, queued=0, source="router-a")
        sim.tick()
        sim.now += sim.tick_s
    assert sim.desired == 2


def test_scenario_burst_over_a_reserved_floor() -> None:
    sim = Scenario(spec=replace(ROOMY, min_provisioned_concurrency=8))
    sim.tick()
    assert sim.desired == 2
    sim.run(120, 2)
    assert sim.desired == 2
    sim.run(8, 40)  # 40 / 2.8 -> 15: 7.5x the 2 ready, panic
    assert sim.history[-1].panicking
    assert sim.desired == 15
    sim.run(600, 0)
    assert sim.desired == 2
    assert min(d.desired for d in sim.history) == 2  # never under the floor


def test_scenario_ceiling_bounds_a_burst() -> None:
    sim = Scenario(spec=AutoscalingSpec(workload_size=WorkloadSize.MEDIUM))
    sim.window.poke(sim.now)
    sim.tick()
    sim.run(20, 200)
    assert sim.desired == 4
    assert max(d.desired for d in sim.history) == 4
    assert "caps it at 4" in sim.history[-1].reason


def test_scenario_every_reason_reads_as_a_sentence() -> None:
    sim = Scenario(spec=replace(ROOMY, scale_down_delay_s=10.0))
    sim.tick()
    sim.window.poke(sim.now)
    sim.tick()
    for level in (3, 30, 0, 12, 0):
        sim.run(80, level)
    kinds = {d.reason.split(":")[0].split(" ")[0] for d in sim.history}
    assert kinds <= {"no", "cold", "stable", "panic"}
    assert {"no", "cold", "stable", "panic"} <= kinds
    for decision in sim.history:
        assert "None" not in decision.reason
        # The last number said is the outcome ("... -> 14", "holds 4", "the reserved floor keeps 3"), or it
        # says zero.
        if decision.reason.endswith("scale to zero"):
            assert decision.desired == 0
        else:
            assert re.findall(r"\d+", decision.reason)[-1] == str(decision.desired), decision.reason


def test_scenario_slow_starts_do_not_double_the_fleet() -> None:
    """Replicas that are still starting are not 'ready': the rate limit and panic use ready ones, but
    the desired count itself does not pile up while they start (the loop starts only the difference)."""
    spec = ROOMY
    window = MetricsWindow(retention_s=60, sample_ttl_s=10)
    state = PolicyState()
    now = 0.0
    desired_seen = []
    for step in range(10):  # 20 s of 20 concurrent while nothing becomes ready
        window.report(now, in_flight=0, queued=20)
        reading = window.reading(now, spec.stable_window_s, spec.panic_window_s)
        decision, state = decide(reading, spec, state, now, Fleet(ready=0, starting=state.desired))
        desired_seen.append(decision.desired)
        now += 2.0
        del step
    assert max(desired_seen) == 8  # ceil(20 / 2.8), not growing tick after tick
    assert desired_seen[-1] == 8


@pytest.mark.parametrize("spec", [ROOMY, replace(ROOMY, scale_down_delay_s=30.0), AutoscalingSpec()],
                         ids=["roomy", "with-delay", "defaults"])
def test_idle_shortcut_agrees_with_the_full_path(spec: AutoscalingSpec) -> None:
    idle = reading_for(Case("idle", want=0, stable=0.0, current=0.0, last_busy_at=NOW - 3600))
    # A hair of traffic that rounds to nothing takes the full path through every step.
    almost_idle = idle._replace(panic_concurrency=1e-12)
    short, short_state = decide(idle, spec, PolicyState(), NOW, Fleet(0, 0))
    full, full_state = decide(almost_idle, spec, PolicyState(), NOW, Fleet(0, 0))
    assert (short.desired, short.reason, short.panicking) == (full.desired, full.reason, full.panicking)
    assert short_state.desired == full_state.desired == 0
    assert short_state.panic_last_over_at is full_state.panic_last_over_at is None


def test_reason_is_formatted_only_when_read() -> None:
    decision, _ = expect_decision(Case("r", want=14, stable=8.0, panic=37.0, ready=3,
                                       state=PolicyState(desired=3)))
    assert decision.why[0][0].startswith("panic: {:.1f} concurrent")
    assert decision.reason == "panic: 37.0 concurrent over 6 s, 3 ready -> 14"


# --- drain-aware: arrival rate x service time, plus what drains the backlog ----------------------
# Pairs: the same moment read with the counts (drain-aware) and without them (Knative's concurrency,
# the previous policy), so the over-scaling it replaces stays written down.

DRAIN_CASES = [
    Case("kpa-counts-a-backlog-as-concurrency", want=15, stable=5.0, panic=40.0, queued=34, ready=1,
         state=PolicyState(desired=1), panicking=True),
    Case("drain-aware-same-backlog", want=3, stable=5.0, panic=40.0, queued=34, ready=1,
         state=PolicyState(desired=1), stable_rate=20.0, panic_rate=60.0, service_s=0.1, panicking=True,
         exact_reason="panic: 60 req/s x 100 ms + 34 queued drained in 5 s = 6.68 concurrent over 6 s, "
                      "1 ready -> 3"),
    Case("drain-aware-shorter-drain-time", want=4, stable=5.0, panic=40.0, queued=34, ready=1,
         state=PolicyState(desired=1), stable_rate=20.0, panic_rate=60.0, service_s=0.1,
         spec=replace(ROOMY, backlog_drain_s=1.0)),  # 6 + 34 x 0.1 / 1 = 9.4 -> 4
    Case("drain-aware-steady", want=3, stable=6.0, ready=3, state=PolicyState(desired=3), stable_rate=60.0,
         service_s=0.1, panicking=False,
         exact_reason="stable: 60 req/s x 100 ms = 6 concurrent over 60 s, 3 ready -> 3"),
    Case("drain-aware-up-on-the-panic-window", want=3, stable=2.0, ready=2, state=PolicyState(desired=2),
         stable_rate=20.0, panic_rate=60.0, service_s=0.1, panicking=False, reason="panic: 60 req/s"),
    Case("one-request-a-minute-reads-as-such", want=1, stable=0.01, ready=1, state=PolicyState(desired=1),
         stable_rate=1 / 60, service_s=0.05, reason="stable: 0.0167 req/s x 50 ms = 0.000833 concurrent"),
    Case("drain-aware-uses-rates-not-concurrency", want=1, stable=30.0, panic=30.0, ready=1,
         state=PolicyState(desired=1), stable_rate=10.0, service_s=0.1),  # 1 concurrent -> 1
    Case("kpa-holds-the-panic-peak", want=15, stable=3.0, panic=3.0, ready=15,
         state=PolicyState(desired=15, panic_last_over_at=NOW - 10, panic_peak=15), panicking=True,
         reason="holding panic peak 15"),
    Case("drain-aware-follows-the-drain-down", want=7, stable=3.0, panic=3.0, ready=15,
         state=PolicyState(desired=15, panic_last_over_at=NOW - 10, panic_peak=15), stable_rate=30.0,
         panic_rate=60.0, service_s=0.1, panicking=True, reason="scale-down rate 2x of 15 ready holds 7"),
    Case("drain-aware-holds-a-panic-target-two-panic-windows", want=5, stable=2.0, panic=3.0, ready=5,
         state=PolicyState(desired=5, recent_panic_targets=((NOW - 11.9, 5),)), stable_rate=20.0,
         panic_rate=30.0, service_s=0.1, reason="the last 12 s asked for 5"),
    Case("drain-aware-lets-it-go-after-two-panic-windows", want=2, stable=2.0, panic=3.0, ready=3,
         state=PolicyState(desired=3, recent_panic_targets=((NOW - 12.0, 3),)), stable_rate=20.0,
         panic_rate=30.0, service_s=0.1),
    Case("first-burst-waits-for-the-service-time", want=1, stable=2.0, panic=50.0, queued=50, starting=1,
         state=PolicyState(desired=1), stable_rate=5.0, panic_rate=50.0, service_s=None,
         exact_reason="0 ready, 1 starting: holding 1 until the first requests served say how long one "
                      "takes"),
    Case("a-few-requests-then-quiet-still-goes-to-zero", want=0, stable=0.0, panic=0.0, current=0.0,
         ready=1, state=PolicyState(desired=1), stable_rate=0.05, service_s=None, last_busy_at=NOW - 200,
         reason="scale to zero"),
    Case("a-few-requests-then-quiet-scales-down", want=1, stable=0.0, panic=0.0, current=0.0, ready=3,
         state=PolicyState(desired=3), stable_rate=0.05, service_s=None, last_busy_at=NOW - 10),
    Case("first-burst-without-counts-is-kpa", want=18, stable=2.0, panic=50.0, queued=50, starting=1,
         state=PolicyState(desired=1)),
    Case("cold-start-needs-no-service-time", want=1, stable=0.0, poked=True, stable_rate=0.0, service_s=None,
         reason="cold start"),
    Case("remembered-service-time-sizes-a-burst-at-once", want=2, stable=0.5, panic=20.0, queued=20,
         stable_rate=2.0, panic_rate=20.0, service_s=0.2, poked=True, panicking=True),
]


@run_cases(DRAIN_CASES)
def test_drain_aware_estimate(case: Case) -> None:
    expect_decision(case)


def test_scenario_one_request_then_idle_goes_back_to_zero() -> None:
    """One request, so never enough completions for a service time: the entity still scales to zero
    (the wait for a service time holds a burst, not an idle replica)."""
    spec = replace(ROOMY, stable_window_s=2.0, scale_to_zero_grace_s=0.0)
    window = MetricsWindow(retention_s=spec.stable_window_s, sample_ttl_s=10.0)
    window.report(0.0, in_flight=0, queued=1, arrivals=1, completions=0)
    window.poke(0.0)
    decision, state = decide(window.reading(0.0, 2.0, 0.2), spec, PolicyState(), 0.0, Fleet(0))
    window.clear_poke()
    assert decision.desired == 1
    window.report(0.5, in_flight=1, queued=0, arrivals=1, completions=0)
    window.report(0.6, in_flight=0, queued=0, arrivals=1, completions=1)
    now = 0.6
    for _ in range(10):
        now += 1.0
        window.report(now, in_flight=0, queued=0, arrivals=1, completions=1)
        decision, state = decide(window.reading(now, 2.0, 0.2), spec, state, now, Fleet(state.desired))
    assert state.desired == 0, decision.reason


def test_drain_aware_panic_memory_stays_bounded() -> None:
    older = tuple((NOW - 5 + i * 0.01, 100 - i) for i in range(99))
    state = PolicyState(desired=100, recent_panic_targets=older)
    _, next_state = expect_decision(Case("m", want=100, stable=0.0, ready=100, state=state, stable_rate=0.0,
                                         panic_rate=280.0, service_s=1.0))
    # 280 req/s x 1 s / 2.8 = 100 now: every older, lower entry is dominated and dropped.
    assert next_state.recent_panic_targets == ((NOW, 100),)


def test_scenario_spike_from_idle_gets_what_it_needs_and_lets_it_go() -> None:
    """A burst of 150 req/s at 100 ms into an entity at zero that served before: the drain-aware count
    asks for ceil(15 / 2.8) = 6 (7 while the backlog drains), where counting the backlog asked for
    dozens; when the burst ends the extra replicas go with the stable window, not after it."""
    spec = ROOMY
    window = MetricsWindow(retention_s=spec.stable_window_s, sample_ttl_s=10.0)
    state = PolicyState()
    arrivals = completions = 0
    now = 0.0
    for _ in range(30):  # an earlier minute at 10 req/s: the service time is known from then on
        window.report(now, in_flight=1, queued=0, arrivals=arrivals, completions=completions)
        arrivals += 20
        completions += 20
        _, state = decide(window.reading(now, 60, 6), spec, state, now, Fleet(state.desired))
        now += 2.0
    while state.desired:  # idle until it is back at zero; the router reports every second
        window.report(now, in_flight=0, queued=0, arrivals=arrivals, completions=completions)
        window.report(now + 1, in_flight=0, queued=0, arrivals=arrivals, completions=completions)
        _, state = decide(window.reading(now, 60, 6), spec, state, now, Fleet(state.desired))
        now += 2.0
    history = []  # a second after the last idle report
    # The burst: 300 requests a tick; the first report finds 150 queued at zero (a replica is starting).
    window.report(now, in_flight=0, queued=150, arrivals=arrivals + 150, completions=completions)
    window.poke(now)
    decision, state = decide(window.reading(now, 60, 6), spec, state, now, Fleet(0))
    window.clear_poke()
    history.append(decision.desired)
    arrivals += 150
    for _ in range(60):  # two minutes at 150 req/s, 15 in flight
        now += 2.0
        arrivals += 300
        completions += 300
        window.report(now, in_flight=15, queued=0, arrivals=arrivals, completions=completions)
        decision, state = decide(window.reading(now, 60, 6), spec, state, now, Fleet(state.desired))
        history.append(decision.desired)
    assert history[0] >= 6  # sized from the rate at once, not one replica at a time
    assert max(history) <= 8
    assert history[-1] == 6
    peak = max(history)
    for _ in range(40):  # the burst ends
        now += 2.0
        window.report(now, in_flight=0, queued=0, arrivals=arrivals, completions=completions)
        decision, state = decide(window.reading(now, 60, 6), spec, state, now, Fleet(state.desired))
        history.append(decision.desired)
    after = history[61:]
    assert after[7] < peak  # within two panic windows and a tick, not a whole stable window
    assert after[-1] <= 1


# --- scheduled warm-up ------------------------------------------------------------------------------

MORNING = replace(ROOMY, prewarm=(PrewarmWindow("08:30", "10:00", 3),))
NIGHT = replace(ROOMY, prewarm=(PrewarmWindow("22:00", "02:00", 2), PrewarmWindow("23:00", "01:00", 4)))
DAY = 86_400.0
AT_9 = 20 * DAY + 9 * 3600
AT_10 = 20 * DAY + 10 * 3600
AT_0030 = 20 * DAY + 1800

PREWARM_CASES = [
    Case("idle-at-zero-warms-before-the-ramp", want=3, stable=0.0, last_busy_at=None, spec=MORNING, wall=AT_9,
         exact_reason="stable: 0.0 concurrent over 60 s, 0 ready -> 0; scheduled warm-up 08:30-10:00 UTC "
                      "holds 3"),
    Case("traffic-above-the-schedule-wins", want=5, stable=14.0, ready=5, state=PolicyState(desired=5),
         spec=MORNING, wall=AT_9),
    Case("window-end-is-exclusive", want=0, stable=0.0, last_busy_at=None, spec=MORNING, wall=AT_10),
    Case("no-wall-time-no-schedule", want=0, stable=0.0, last_busy_at=None, spec=MORNING),
    Case("across-midnight-largest-minimum", want=4, stable=0.0, last_busy_at=None, spec=NIGHT, wall=AT_0030,
         reason="scheduled warm-up 23:00-01:00 UTC holds 4"),
    Case("after-the-window-the-gate-decides", want=0, stable=0.0, ready=1, state=PolicyState(desired=1),
         last_busy_at=AT_9 - 3600, now=AT_10, spec=MORNING, wall=AT_10),
]


@run_cases(PREWARM_CASES)
def test_scheduled_warm_up(case: Case) -> None:
    expect_decision(case)


def test_scheduled_warm_up_applies_before_any_report() -> None:
    decision, state = decide(NoData(), MORNING, PolicyState(), NOW, Fleet(0), AT_9)
    assert decision.desired == state.desired == 3
    assert decision.reason.endswith("scheduled warm-up 08:30-10:00 UTC holds 3")
