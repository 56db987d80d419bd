"""Autoscaler simulation: request traces replayed through the real policy on a fake clock.

Each trace (steady, diurnal, a spike from idle into an entity that never served, the same spike into
one that served a trickle earlier, a sawtooth that tempts oscillation) is a Poisson arrival process
with a time-varying rate; requests take ``--service-ms`` each, a replica serves
``C`` = 4 at once, requests beyond the fleet's capacity wait in the activator queue, and a new
replica takes ``--cold-start-s`` to become ready. The scaling decisions come from the real
``autoscaler.policy.decide`` over the real ``MetricsWindow``, ticking every 2 s plus the poke of a
request that has to wait (at most every 0.1 s) — the same calls the loop and the balancer make.
Fleets side by side:

* ``zeroserve``: the defaults (60 s stable / 6 s panic window, 2x panic, 2x scale-down, 30 s grace),
  with the routers' counts, so the drain-aware estimate applies;
* ``previous (KPA)``: the same settings without the counts: Knative's concurrency target, queued
  requests counted as concurrency and the panic peak held for a stable window;
* ``no-panic/no-window``: the same policy reacting to the last tick only (2 s window, panic off);
* ``fixed-peak``: a fixed fleet sized for the trace's peak (no cold starts, the cost ceiling).

Printed per trace: replica starts (each one a cold start), replica-seconds (cost), p99 queueing delay,
and scale direction changes; then the time to decide one tick for 10,000 served entities.

    python3 -m benchmarks.autoscaler_sim [--quick] [--seed N] [--cold-start-s S] [--service-ms MS]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from autoscaler.metrics_window import MetricsWindow
from autoscaler.policy import Fleet, PolicyState, decide
from autoscaler.replay import TICK_S, ReplayResult, replay
from autoscaler.spec import AutoscalingSpec

CONCURRENCY = 4

DEFAULTS = AutoscalingSpec(container_concurrency=CONCURRENCY, max_provisioned_concurrency=4000)
# "Without panic mode / windows": decide on the last tick's average only, never panic.
NO_WINDOWS = replace(DEFAULTS, stable_window_s=TICK_S, panic_threshold=1e9)


@dataclass(frozen=True)
class Trace:
    name: str
    duration_s: float
    rate: Callable[[float], float]  # requests per second at time t
    peak_rps: float


def traces(scale: float) -> list[Trace]:
    """``scale`` < 1 shortens every trace (``--quick``) keeping its shape."""

    def steady(t: float) -> float:
        return 60.0

    def diurnal(t: float) -> float:
        # One "day" every 20 minutes: 5 rps at night, 95 at noon.
        period = 1200 * scale
        return 50.0 - 45.0 * math.cos(2 * math.pi * t / period)

    def spike(t: float) -> float:
        # Idle, then 150 rps out of nowhere for 2 minutes, then idle again.
        start, end = 300 * scale, 420 * scale
        return 150.0 if start <= t < end else 0.0

    def spike_after_traffic(t: float) -> float:
        # The same spike into an entity that served a trickle (1 req/s) an earlier minute: what a
        # production endpoint usually is. It knows its service time when the spike comes.
        if t < 60 * scale:
            return 1.0
        return spike(t)

    def sawtooth(t: float) -> float:
        # 90 s ramps from 0 to 120 rps that fall off a cliff: up-down-up, forever.
        return 120.0 * ((t % 90.0) / 90.0)

    return [
        Trace("steady", 1200 * scale, steady, 60.0),
        Trace("diurnal", 2400 * scale, diurnal, 95.0),
        Trace("spike-from-idle", 900 * scale, spike, 150.0),
        Trace("spike-after-use", 900 * scale, spike_after_traffic, 150.0),
        Trace("sawtooth", 1200 * scale, sawtooth, 120.0),
    ]


def arrivals(trace: Trace, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a Poisson process with rate ``trace.rate(t)`` (thinning at the peak rate)."""
    expected = int(trace.peak_rps * trace.duration_s * 1.1) + 100
    candidates = np.cumsum(rng.exponential(1.0 / trace.peak_rps, expected))
    candidates = candidates[candidates < trace.duration_s]
    keep = rng.random(len(candidates)) * trace.peak_rps < np.array([trace.rate(t) for t in candidates])
    return candidates[keep]


def simulate(trace: Trace, spec: AutoscalingSpec | None, fixed_replicas: int, service_s: float,
             cold_start_s: float, seed: int, counts: bool = True) -> ReplayResult:
    """One trace through one fleet (``autoscaler.replay``); the same seed, the same requests for every
    fleet. ``spec`` None: a fixed fleet of ``fixed_replicas``."""
    rng = np.random.default_rng(seed)
    times = arrivals(trace, rng)
    service_times = rng.exponential(service_s, len(times))
    return replay(times, service_times, spec, duration_s=trace.duration_s, fixed_replicas=fixed_replicas,
                  container_concurrency=CONCURRENCY, cold_start_s=cold_start_s, counts=counts, tick_s=TICK_S)


def tick_cost(entities: int, seed: int) -> tuple[float, float]:
    """CPU milliseconds to read the windows and decide once for ``entities`` entities (two thirds
    busy, one third at zero): (best, median) of 7 ticks. CPU time, and the best of several, because
    the machine is shared: other processes only ever add to it."""
    rng = np.random.default_rng(seed)
    spec = DEFAULTS
    windows = []
    states = []
    for index in range(entities):
        window = MetricsWindow(retention_s=spec.stable_window_s)
        if index % 3 == 0:
            # A third scaled to zero: their last report (0) is old. Serverless fleets are mostly idle;
            # this keeps two thirds busy, which is pessimistic.
            window.report(0.0, in_flight=0, queued=0)
            states.append(PolicyState())
        else:
            level = int(rng.integers(1, 40))
            for second in range(0, 60, 2):
                window.report(float(second), in_flight=max(0, level + int(rng.integers(-3, 4))), queued=0)
            states.append(PolicyState(desired=math.ceil(level / 2.8)))
        windows.append(window)
    cpu_ms = []
    for round_ in range(7):
        now = 61.0 + 2 * round_
        started = time.process_time()
        for index in range(entities):
            reading = windows[index].reading(now, spec.stable_window_s, spec.panic_window_s)
            _, states[index] = decide(reading, spec, states[index], now, Fleet(states[index].desired, 0))
        cpu_ms.append((time.process_time() - started) * 1000)
    return min(cpu_ms), float(np.median(cpu_ms))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter traces (a quarter of the length)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cold-start-s", type=float, default=1.0,
                        help="replica start to ready (1 s: a plain process; the warm pool is ~0.15 s)")
    parser.add_argument("--service-ms", type=float, default=100.0, help="mean service time of a request")
    parser.add_argument("--entities", type=int, default=10_000)
    args = parser.parse_args(argv)
    scale = 0.25 if args.quick else 1.0
    service_s = args.service_ms / 1000

    print(f"autoscaler simulation: C={CONCURRENCY}, service {args.service_ms:g} ms (exp.), "
          f"cold start {args.cold_start_s:g} s, tick {TICK_S:g} s, seed {args.seed}")
    header = (f"{'trace':<16} {'fleet':<20} {'starts':>7} {'replica-s':>10} {'cost x':>7} "
              f"{'p99 wait ms':>12} {'dir changes':>12}")
    print(header)
    print("-" * len(header))
    for trace in traces(scale):
        peak_replicas = math.ceil(trace.peak_rps * service_s / (CONCURRENCY * DEFAULTS.target_utilization))
        fleets: list[tuple[str, AutoscalingSpec | None, bool]] = [
            ("zeroserve", DEFAULTS, True),
            ("previous (KPA)", DEFAULTS, False),
            ("no-panic/no-window", NO_WINDOWS, False),
            (f"fixed-peak ({peak_replicas})", None, False),
        ]
        results = [(name, simulate(trace, spec, peak_replicas, service_s, args.cold_start_s, args.seed,
                                   counts)) for name, spec, counts in fleets]
        fixed_cost = results[-1][1].replica_seconds
        for name, result in results:
            print(f"{trace.name:<16} {name:<20} {result.starts:>7} {result.replica_seconds:>10.0f} "
                  f"{result.replica_seconds / fixed_cost:>7.2f} {result.p99_wait_ms:>12.1f} "
                  f"{result.direction_changes:>12}")
    best_ms, median_ms = tick_cost(args.entities, args.seed)
    verdict = "meets" if best_ms <= 100 else "misses"
    print(f"\none tick for {args.entities:,} served entities (window reading + decide), CPU time: "
          f"best {best_ms:.1f} ms, median {median_ms:.1f} ms of 7 ({verdict} the 100 ms target)")


if __name__ == "__main__":
    main()
