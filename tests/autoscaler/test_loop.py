"""The autoscaler loop driven by the fake backend and the fake clock: time moves only when a test
advances it, and every tick is the loop's own (it sleeps on the fake clock)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from autoscaler.lifecycle import DeploymentState
from autoscaler.loop import Autoscaler
from autoscaler.spec import AutoscalingSpec, EntitySpec
from autoscaler.testing import FakeBackend, FakeClock, RecordingListener, let_tasks_run
from autoscaler.types import EntityKey, ReplicaInfo, ReplicaState
from runtime.errors import NotFound

KEY = EntityKey("fraud", "fraud-1")
# Short windows so scenarios take seconds of fake time: 10 s stable, 1 s panic, 5 s grace.
SCALING = AutoscalingSpec(stable_window_s=10.0, scale_to_zero_grace_s=5.0, max_provisioned_concurrency=64)
SPEC = EntitySpec("file:///models/fraud/1", "fraud-1", autoscaling=SCALING)


def with_scaling(**changes: object) -> EntitySpec:
    return dataclasses.replace(SPEC, autoscaling=dataclasses.replace(SCALING, **changes))  # type: ignore[arg-type]


@dataclass
class Harness:
    clock: FakeClock
    backend: FakeBackend
    listener: RecordingListener
    scaler: Autoscaler

    async def run_for(self, seconds: float, in_flight: int = 0, queued: int = 0) -> None:
        """Report a level every second for ``seconds`` while the loop ticks on its own."""
        for _ in range(round(seconds)):
            self.scaler.report(KEY, in_flight, queued)
            await self.clock.advance(1.0)

    def running(self) -> int:
        return len(self.backend.running(KEY))


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    clock = FakeClock()
    backend = FakeBackend(clock)
    listener = RecordingListener()
    scaler = Autoscaler(backend, clock, listener, tick_s=2.0)
    await scaler.start()
    try:
        yield Harness(clock, backend, listener, scaler)
    finally:
        await scaler.stop()
    assert backend.closed
    assert backend.running() == []


async def test_new_entity_with_scale_to_zero_starts_nothing(harness: Harness) -> None:
    harness.scaler.apply(KEY, SPEC)
    await harness.clock.advance(30)
    status = harness.scaler.status(KEY)
    assert (status.desired, status.ready, status.starting) == (0, 0, 0)
    assert status.deployment is DeploymentState.READY
    assert harness.backend.starts == 0


async def test_poke_starts_a_replica_without_waiting_for_a_tick(harness: Harness) -> None:
    harness.scaler.apply(KEY, SPEC)
    harness.scaler.poke(KEY)
    await let_tasks_run()  # no clock movement at all
    assert harness.running() == 1
    assert harness.listener.events == [("ready", harness.backend.running(KEY)[0])]
    [replica] = harness.scaler.replicas(KEY)
    assert replica.capacity == 4
    assert harness.scaler.status(KEY).history[-1].reason == "cold start: 1 request waiting, no replica -> 1"


async def test_reserved_floor_starts_on_apply_and_holds_while_idle(harness: Harness) -> None:
    harness.scaler.apply(KEY, with_scaling(min_provisioned_concurrency=8))
    await let_tasks_run()
    assert harness.running() == 2
    await harness.run_for(120)
    assert harness.running() == 2
    assert harness.scaler.status(KEY).deployment is DeploymentState.READY


async def test_scales_up_under_load_then_back_down_to_zero(harness: Harness) -> None:
    harness.scaler.apply(KEY, SPEC)
    harness.scaler.poke(KEY)
    await harness.run_for(12, in_flight=20)
    assert harness.running() == 8  # ceil(20 / 2.8)
    status = harness.scaler.status(KEY)
    assert status.desired == 8
    assert any(record.reason.startswith("panic:") for record in status.history)
    # Load stops at t=12: the stable average falls and the fleet follows it down to the gate's 1.
    await harness.run_for(10)
    assert harness.running() == 1
    # Idle since t=12: zero after the 10 s window + 5 s grace, at the tick of t=27.
    await harness.run_for(4)
    assert harness.running() == 1
    await harness.run_for(2)
    assert harness.running() == 0
    assert harness.scaler.status(KEY).deployment is DeploymentState.READY
    history = harness.scaler.status(KEY).history
    assert history[-1].to_replicas == 0
    assert "-> scale to zero" in history[-1].reason
    assert history[-1].at_unix_ms > 1_700_000_000_000


async def test_scale_down_drains_before_the_backend_stops() -> None:
    stopped_while_draining: list[bool] = []
    clock = FakeClock()
    backend = FakeBackend(clock)

    class CheckingListener(RecordingListener):
        async def replica_draining(self, replica: ReplicaInfo) -> None:
            stopped_while_draining.append(backend.replicas[replica.replica_id].stopped)
            await super().replica_draining(replica)

    listener = CheckingListener()
    harness = Harness(clock, backend, listener, Autoscaler(backend, clock, listener, tick_s=2.0))
    await harness.scaler.start()
    harness.scaler.apply(KEY, SPEC)
    harness.scaler.poke(KEY)
    await harness.run_for(10, in_flight=10)
    assert harness.running() == 4
    await harness.run_for(40)
    assert harness.running() == 0
    assert stopped_while_draining == [False] * 4
    for replica_id in backend.stops:
        events = [event for event, rid in listener.events if rid == replica_id]
        assert events == ["ready", "draining", "gone"]
    await harness.scaler.stop()


async def test_slow_start_is_starting_then_ready(harness: Harness) -> None:
    harness.backend.start_delay_s = 5.0
    harness.scaler.apply(KEY, SPEC)
    harness.scaler.poke(KEY)
    await let_tasks_run()
    status = harness.scaler.status(KEY)
    assert (status.desired, status.starting, status.ready) == (1, 1, 0)
    assert status.deployment is DeploymentState.CREATING
    assert status.replicas[0].state is ReplicaState.STARTING
    await harness.clock.advance(5.0)
    status = harness.scaler.status(KEY)
    assert (status.starting, status.ready) == (0, 1)
    assert status.deployment is DeploymentState.READY


async def test_a_model_that_fails_to_load_marks_the_entity_failed_for_good(harness: Harness) -> None:
    harness.backend.failing_models[SPEC.model_uri] = "ModuleNotFoundError: No module named 'sklearn2'"
    harness.scaler.apply(KEY, SPEC)
    harness.scaler.poke(KEY)
    await harness.clock.advance(10)  # retries after 1 s, then 2 s
    assert harness.backend.starts == 3
    status = harness.scaler.status(KEY)
    assert status.deployment is DeploymentState.FAILED
    assert status.failed_reason is not None
    assert "3 replica starts failed" in status.failed_reason
    assert "No module named 'sklearn2'" in status.failed_reason
    assert "log tail:\nTraceback" in status.failed_reason
    assert harness.listener.failures[KEY] == status.failed_reason
    assert any("retrying in 2 s" in record.reason for record in status.history)
    # No retry forever, whatever the traffic says.
    for _ in range(10):
        harness.scaler.poke(KEY)
        await harness.run_for(10, queued=3)
    assert harness.backend.starts == 3
    # Every new waiter hears the reason at once.
    assert harness.listener.events.count(("failed", str(KEY))) == 11
    assert "fake replica" in harness.scaler.replica_logs(KEY)


async def test_applying_again_after_a_failure_retries(harness: Harness) -> None:
    harness.backend.failing_models[SPEC.model_uri] = "boom"
    harness.scaler.apply(KEY, SPEC)
    harness.scaler.poke(KEY)
    await harness.clock.advance(10)
    assert harness.scaler.status(KEY).deployment is DeploymentState.FAILED
    del harness.backend.failing_models[SPEC.model_uri]
    harness.scaler.apply(KEY, SPEC)
    await let_tasks_run()
    status = harness.scaler.status(KEY)
    assert (status.ready, status.failed_reason, status.deployment) == (1, None, DeploymentState.READY)


async def test_a_crashed_replica_is_replaced_with_backoff(harness: Harness) -> None:
    harness.scaler.apply(KEY, with_scaling(scale_to_zero_enabled=False))
    await let_tasks_run()
    [first] = harness.backend.running(KEY)
    harness.backend.crash(first)
    await harness.clock.advance(2.0)  # the next tick's probe finds it gone
    assert ("gone", first) in harness.listener.events
    assert harness.scaler.status(KEY).deployment is DeploymentState.RECOVERING
    await harness.clock.advance(1.0)  # first crash: 1 s backoff
    [second] = harness.backend.running(KEY)
    assert second != first
    harness.backend.crash(second)  # at t=1003
    await harness.clock.advance(1.0)  # the tick of t=1004 finds it gone
    assert harness.running() == 0
    await harness.clock.advance(1.9)
    assert harness.running() == 0  # second crash in a row: 2 s backoff, until t=1006
    await harness.clock.advance(0.1)
    assert harness.running() == 1
    history = [record.reason for record in harness.scaler.status(KEY).history]
    assert any(f"replica {first} exited unexpectedly; replacing it in 1 s" in r for r in history)
    assert any("replacing it in 2 s" in r for r in history)


async def test_an_unhealthy_replica_is_replaced_after_three_failed_probes(harness: Harness) -> None:
    harness.scaler.apply(KEY, with_scaling(scale_to_zero_enabled=False))
    await let_tasks_run()
    [sick] = harness.backend.running(KEY)
    harness.backend.replicas[sick].unhealthy = True
    await harness.clock.advance(4.0)
    assert harness.backend.running(KEY) == [sick]  # two failed probes: still given a chance
    await harness.clock.advance(2.0)
    assert sick in harness.backend.stops
    await harness.clock.advance(1.0)
    assert len(harness.backend.running(KEY)) == 1
    assert harness.backend.running(KEY) != [sick]


async def test_a_new_model_rolls_replicas_without_a_gap(harness: Harness) -> None:
    floor = dataclasses.replace(SCALING, min_provisioned_concurrency=8)
    harness.scaler.apply(KEY, dataclasses.replace(SPEC, autoscaling=floor))
    await let_tasks_run()
    old = set(harness.backend.running(KEY))
    assert len(old) == 2
    harness.backend.start_delay_s = 5.0
    new_model = dataclasses.replace(SPEC, model_uri="file:///models/fraud/2", autoscaling=floor)
    harness.scaler.apply(KEY, new_model)
    await harness.clock.advance(4.0)
    assert set(harness.backend.running(KEY)) == old  # old ones serve while the new ones start
    assert harness.scaler.status(KEY).generation == 2
    await harness.clock.advance(1.0)
    new = set(harness.backend.running(KEY))
    assert len(new) == 2
    assert not new & old
    assert all(harness.backend.replicas[rid].spec.model_uri.endswith("/2") for rid in new)


async def test_a_scaling_only_change_keeps_the_replicas(harness: Harness) -> None:
    floor = dataclasses.replace(SCALING, min_provisioned_concurrency=4)
    harness.scaler.apply(KEY, dataclasses.replace(SPEC, autoscaling=floor))
    await let_tasks_run()
    before = harness.backend.running(KEY)
    harness.scaler.apply(KEY, dataclasses.replace(SPEC, autoscaling=dataclasses.replace(floor, max_queue=5)))
    await harness.clock.advance(4)
    assert harness.backend.running(KEY) == before
    assert harness.scaler.status(KEY).generation == 1


async def test_scale_down_cancels_starting_replicas_first(harness: Harness) -> None:
    harness.backend.start_delay_s = 30.0
    harness.scaler.apply(KEY, SPEC)
    harness.scaler.poke(KEY)
    await harness.run_for(4, in_flight=20)
    assert harness.scaler.status(KEY).starting == 8
    small = dataclasses.replace(SCALING, max_provisioned_concurrency=4)
    harness.scaler.apply(KEY, dataclasses.replace(SPEC, autoscaling=small))
    await let_tasks_run()
    status = harness.scaler.status(KEY)
    assert (status.desired, status.starting, status.draining) == (1, 1, 0)
    assert sum(1 for replica in harness.backend.replicas.values() if replica.stopped) == 7


async def test_remove_drains_everything_and_forgets_the_entity(harness: Harness) -> None:
    floor = dataclasses.replace(SCALING, min_provisioned_concurrency=12)
    harness.scaler.apply(KEY, dataclasses.replace(SPEC, autoscaling=floor))
    await let_tasks_run()
    assert harness.running() == 3
    await harness.scaler.remove(KEY)
    assert harness.running() == 0
    assert [event for event, _ in harness.listener.events].count("gone") == 3
    with pytest.raises(NotFound):
        harness.scaler.status(KEY)
    with pytest.raises(NotFound):
        await harness.scaler.remove(KEY)
    harness.scaler.report(KEY, 1, 0)  # a late report for a removed entity is dropped, not an error
    assert harness.scaler.entities() == []


async def test_unknown_entity_is_not_found(harness: Harness) -> None:
    for call in (harness.scaler.status, harness.scaler.poke, harness.scaler.replicas,
                 harness.scaler.replica_logs):
        with pytest.raises(NotFound, match="served entity fraud/fraud-1 does not exist"):
            call(KEY)


async def test_history_is_bounded() -> None:
    clock = FakeClock()
    scaler = Autoscaler(FakeBackend(clock), clock, history_size=5)
    await scaler.start()
    try:
        scaler.apply(KEY, SPEC)
        for level in (3, 30, 3, 30, 3, 30, 3, 30):
            for _ in range(15):
                scaler.report(KEY, level, 0)
                await clock.advance(1.0)
        assert len(scaler.status(KEY).history) == 5
    finally:
        await scaler.stop()


async def test_a_failing_listener_does_not_stop_scaling() -> None:
    class BrokenListener(RecordingListener):
        def replica_ready(self, replica: ReplicaInfo) -> None:
            raise RuntimeError("router bug")

    clock = FakeClock()
    backend = FakeBackend(clock)
    scaler = Autoscaler(backend, clock, BrokenListener())
    await scaler.start()
    try:
        scaler.apply(KEY, SPEC)
        scaler.poke(KEY)
        await let_tasks_run()
        assert scaler.status(KEY).ready == 1
    finally:
        await scaler.stop()


async def test_logs_keep_the_last_gone_replicas(harness: Harness) -> None:
    harness.scaler.apply(KEY, SPEC)
    harness.scaler.poke(KEY)
    await let_tasks_run()
    [replica_id] = harness.backend.running(KEY)
    await harness.run_for(40)
    assert harness.running() == 0
    logs = harness.scaler.replica_logs(KEY)
    assert f"--- replica {replica_id} (GONE) ---" in logs
    assert "serving file:///models/fraud/1" in logs


async def test_entities_configured_before_start_are_reconciled_on_start() -> None:
    clock = FakeClock()
    backend = FakeBackend(clock)
    scaler = Autoscaler(backend, clock)
    scaler.apply(KEY, with_scaling(scale_to_zero_enabled=False))
    await let_tasks_run()
    assert backend.starts == 0
    await scaler.start()
    try:
        await let_tasks_run()
        assert backend.running(KEY) != []
    finally:
        await scaler.stop()
    assert backend.running() == []


async def test_removing_one_entity_does_not_wait_for_another_entitys_start(harness: Harness) -> None:
    other = EntityKey("other", "slow-1")
    harness.backend.start_delay_s = 3600.0  # the other entity's model takes an hour to load
    harness.scaler.apply(other, SPEC)
    harness.scaler.poke(other)
    await let_tasks_run()
    harness.backend.start_delay_s = 0.0
    harness.scaler.apply(KEY, with_scaling(scale_to_zero_enabled=False))
    await let_tasks_run()
    assert harness.running() == 1
    await harness.scaler.remove(KEY)  # returns without any clock movement
    assert harness.running() == 0
    assert harness.scaler.status(other).starting == 1
