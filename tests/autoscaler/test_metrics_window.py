from __future__ import annotations

import pytest

from autoscaler.metrics_window import MetricsWindow, NoData, WindowReading

STABLE_S = 60.0
PANIC_S = 6.0


def read(window: MetricsWindow, now: float) -> WindowReading:
    reading = window.reading(now, STABLE_S, PANIC_S)
    assert isinstance(reading, WindowReading)
    return reading


def test_no_reports_is_no_data_not_an_error() -> None:
    assert isinstance(MetricsWindow(retention_s=60).reading(100.0, STABLE_S, PANIC_S), NoData)


def test_first_report_is_taken_at_face_value() -> None:
    window = MetricsWindow(retention_s=60)
    window.report(100.0, in_flight=3, queued=2)
    reading = read(window, 100.0)
    assert reading.stable_concurrency == 5.0
    assert reading.panic_concurrency == 5.0
    assert reading.current_concurrency == 5.0
    assert reading.queued == 2
    assert reading.last_busy_at == 100.0
    assert reading.observed_since == 100.0


def test_constant_level_averages_to_itself() -> None:
    window = MetricsWindow(retention_s=60, sample_ttl_s=5)
    for second in range(120):
        window.report(1000.0 + second, in_flight=4, queued=0)
    reading = read(window, 1119.5)
    assert reading.stable_concurrency == pytest.approx(4.0)
    assert reading.panic_concurrency == pytest.approx(4.0)


def test_level_holds_between_sparse_reports() -> None:
    # One report of 10, then nothing for 5 s (within the TTL): the level is 10 the whole time.
    window = MetricsWindow(retention_s=60, sample_ttl_s=10)
    window.report(0.0, in_flight=0, queued=0)
    window.report(50.0, in_flight=10, queued=0)
    reading = read(window, 55.0)
    # Stable: 10 over 5 of the 55 observed seconds; panic: 10 over 5 of 6 s.
    assert reading.stable_concurrency == pytest.approx(10 * 5 / 55)
    assert reading.panic_concurrency == pytest.approx(10 * 5 / 6)


def test_time_weighted_not_sample_weighted() -> None:
    # 100 reports of 1 within the first second, then a level of 7 for 5 s: the mean over the 6 s
    # panic window is (1 x 1 + 7 x 5) / 6 = 6, however many reports carried the first level.
    window = MetricsWindow(retention_s=60, sample_ttl_s=10)
    for step in range(100):
        window.report(100.0 + step / 100, in_flight=1, queued=0)
    window.report(101.0, in_flight=7, queued=0)
    assert read(window, 106.0).panic_concurrency == pytest.approx(6.0)


def test_window_only_counts_its_own_span() -> None:
    window = MetricsWindow(retention_s=60, sample_ttl_s=100)
    window.report(0.0, in_flight=20, queued=0)
    window.report(30.0, in_flight=0, queued=0)
    # Window [0, 60]: 20 for 30 s -> 10.
    assert read(window, 60.0).stable_concurrency == pytest.approx(10.0)
    # Window [15, 75]: 20 for the 15 s up to 30. Then [30, 90]: no traffic at all.
    assert read(window, 75.0).stable_concurrency == pytest.approx(20 * 15 / 60)
    reading = read(window, 90.0)
    assert reading.stable_concurrency == pytest.approx(0.0)
    assert reading.last_busy_at == 30.0


def test_partial_bucket_at_window_start_is_prorated() -> None:
    window = MetricsWindow(retention_s=60, sample_ttl_s=100)
    window.report(0.0, in_flight=10, queued=0)
    window.report(10.0, in_flight=0, queued=0)
    # Panic window [4.5, 10.5]: 10 for 5.5 s of 6 -> 9.1666.
    assert read(window, 10.5).panic_concurrency == pytest.approx(10 * 5.5 / 6)


def test_sources_add_up() -> None:
    window = MetricsWindow(retention_s=60, sample_ttl_s=10)
    window.report(0.0, in_flight=2, queued=1, source="router-a")
    window.report(0.0, in_flight=3, queued=0, source="router-b")
    reading = read(window, 3.0)
    assert reading.current_concurrency == 6.0
    assert reading.queued == 1
    assert reading.panic_concurrency == pytest.approx(6.0)


def test_late_source_segment_lands_in_an_older_bucket() -> None:
    window = MetricsWindow(retention_s=60, sample_ttl_s=10)
    window.report(0.0, in_flight=4, queued=0, source="slow")
    for second in range(1, 6):
        window.report(float(second), in_flight=2, queued=0, source="fast")
    window.report(3.0 + 0.5, in_flight=0, queued=0, source="slow")  # closes 0..3.5 into old buckets
    # Area: slow 4 x 3.5 = 14, fast 2 x (6 - 1) = 10, over 6 s.
    assert read(window, 6.0).panic_concurrency == pytest.approx(24 / 6)


def test_silent_source_expires_after_ttl() -> None:
    window = MetricsWindow(retention_s=60, sample_ttl_s=5)
    window.report(0.0, in_flight=10, queued=3)
    reading = read(window, 20.0)
    assert reading.current_concurrency == 0.0
    assert reading.queued == 0
    # It counted while it was fresh: (10 + 3) x 5 s over 20 s.
    assert reading.stable_concurrency == pytest.approx(13 * 5 / 20)
    assert reading.last_busy_at == 5.0


def test_poke_is_demand_before_any_report() -> None:
    window = MetricsWindow(retention_s=60)
    window.poke(42.0)
    reading = read(window, 42.0)
    assert reading.poked
    assert reading.last_busy_at == 42.0
    assert reading.current_concurrency == 0.0
    window.clear_poke()
    assert not read(window, 43.0).poked


def test_memory_is_bounded_by_retention() -> None:
    window = MetricsWindow(retention_s=60, sample_ttl_s=5)
    for tick in range(10_000):
        window.report(tick * 0.5, in_flight=tick % 7, queued=0)
    assert window.retained_buckets <= 63


def test_negative_report_is_rejected() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        MetricsWindow(retention_s=60).report(0.0, in_flight=-1, queued=0)


@pytest.mark.parametrize("seed", range(8))
def test_averages_match_a_brute_force_integral(seed: int) -> None:
    """Random reports on whole seconds from two routers, read at whole seconds: the bucketed running
    sums must equal a second-by-second integral of the piecewise-constant signal exactly."""
    import random

    rng = random.Random(seed)
    ttl = 5.0
    window = MetricsWindow(retention_s=STABLE_S, sample_ttl_s=ttl)
    levels: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
    now = 0
    for _ in range(150):
        now += rng.choice([0, 1, 1, 2, 3, 7])
        source = rng.choice(["a", "b"])
        value = rng.choice([0, 0, 1, 2, 5, 9])
        window.report(float(now), in_flight=value, queued=0, source=source)
        levels[source].append((now, value))
        if rng.random() < 0.3:
            at = now + rng.choice([0, 1, 4, 6])
            expected = _brute_force(levels, at, ttl)
            reading = read(window, float(at))
            first = min(t for series in levels.values() for t, _ in series[:1])
            averages = ((STABLE_S, reading.stable_concurrency), (PANIC_S, reading.panic_concurrency))
            for span, actual in averages:
                start = max(at - span, first)
                if at > start:
                    want = sum(expected[second] for second in range(int(start), at)) / (at - start)
                    assert actual == pytest.approx(want, abs=1e-9), (seed, at, span)
            now = at  # time only moves forward


def _brute_force(levels: dict[str, list[tuple[int, int]]], until: int, ttl: float) -> dict[int, float]:
    """Concurrency during each second [s, s + 1) up to ``until``, summed over sources."""
    per_second: dict[int, float] = {}
    for series in levels.values():
        for index, (since, value) in enumerate(series):
            # A report later at the same instant replaces this one at once.
            ends = [t for t, _ in series[index + 1:]]
            end = min([*ends, since + ttl, until])
            for second in range(since, int(end)):
                per_second[second] = per_second.get(second, 0.0) + value
    for second in range(until + 1):
        per_second.setdefault(second, 0.0)
    return per_second


# --- arrival and completion counts: rates and the service time (Little's law) ---------------------


def steady_traffic(window: MetricsWindow, start: float, seconds: int, rate: int, service_s: float,
                   source: str = "router", counts: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """``rate`` requests a second, each in service ``service_s``: the router's 1 s reports of a steady
    load (in flight = rate x service time), with its cumulative counts. Returns the counts at the end."""
    arrivals, completions = counts
    for second in range(seconds):
        window.report(start + second, in_flight=round(rate * service_s), queued=0, source=source,
                      arrivals=arrivals, completions=completions)
        arrivals += rate
        completions += rate
    return arrivals, completions


def test_without_counts_there_is_no_rate_and_no_service_time() -> None:
    window = MetricsWindow(retention_s=60)
    for second in range(30):
        window.report(float(second), in_flight=4, queued=0)
    reading = read(window, 30.0)
    assert (reading.stable_arrival_rate, reading.panic_arrival_rate, reading.service_time_s) == (None,) * 3


def test_steady_counts_give_the_rate_and_the_service_time() -> None:
    window = MetricsWindow(retention_s=60)
    steady_traffic(window, 1000.0, 120, rate=50, service_s=0.2)  # 10 in flight
    reading = read(window, 1119.0)
    assert reading.stable_arrival_rate == pytest.approx(50.0, rel=0.02)
    assert reading.panic_arrival_rate == pytest.approx(50.0, rel=0.02)
    # 10 in flight / 50 completions a second = 0.2 s each.
    assert reading.service_time_s == pytest.approx(0.2, rel=0.02)


def test_queued_requests_are_not_in_service() -> None:
    # 4 in flight and 20 queued, 20 completions a second: 0.2 s in service, whatever the queue.
    window = MetricsWindow(retention_s=60)
    arrivals = completions = 0
    for second in range(30):
        window.report(float(second), in_flight=4, queued=20, arrivals=arrivals, completions=completions)
        arrivals += 20
        completions += 20
    reading = read(window, 30.0)
    assert reading.service_time_s == pytest.approx(0.2, rel=0.05)
    assert reading.stable_concurrency == pytest.approx(24.0, rel=0.05)


def test_a_burst_shows_in_the_panic_rate_first() -> None:
    window = MetricsWindow(retention_s=60)
    counts = steady_traffic(window, 0.0, 60, rate=10, service_s=0.1)
    steady_traffic(window, 60.0, 6, rate=100, service_s=0.1, counts=counts)
    reading = read(window, 66.0)
    assert reading.panic_arrival_rate == pytest.approx(100.0, rel=0.2)
    assert reading.stable_arrival_rate is not None and reading.stable_arrival_rate < 25.0


def test_rates_of_several_routers_add_up() -> None:
    window = MetricsWindow(retention_s=60)
    steady_traffic(window, 0.0, 60, rate=30, service_s=0.1, source="gateway-a")
    steady_traffic(window, 0.0, 60, rate=20, service_s=0.1, source="gateway-b")
    reading = read(window, 60.0)
    assert reading.stable_arrival_rate == pytest.approx(50.0, rel=0.05)
    assert reading.service_time_s == pytest.approx(0.1, rel=0.05)


def test_a_router_restart_is_not_negative_traffic() -> None:
    # The counts fall back to zero: what came after the restart counts, nothing is subtracted.
    window = MetricsWindow(retention_s=60)
    steady_traffic(window, 0.0, 30, rate=10, service_s=0.1, counts=(5000, 5000))
    steady_traffic(window, 30.0, 30, rate=10, service_s=0.1)
    reading = read(window, 60.0)
    assert reading.stable_arrival_rate == pytest.approx(10.0, rel=0.1)


def test_a_first_report_sets_the_baseline_not_a_burst() -> None:
    # A gateway that served a million requests before the autoscaler heard of it is not a burst.
    window = MetricsWindow(retention_s=60)
    window.report(0.0, in_flight=0, queued=0, arrivals=1_000_000, completions=1_000_000)
    window.report(1.0, in_flight=0, queued=0, arrivals=1_000_000, completions=1_000_000)
    reading = read(window, 2.0)
    assert reading.panic_arrival_rate == 0.0


def test_too_few_completions_keep_the_last_service_time() -> None:
    window = MetricsWindow(retention_s=60)
    counts = steady_traffic(window, 0.0, 60, rate=10, service_s=0.3)
    assert read(window, 60.0).service_time_s == pytest.approx(0.3, rel=0.05)
    # Idle for ten minutes: the window is empty, the entity's service time is still known.
    window.report(60.0, in_flight=0, queued=0, arrivals=counts[0], completions=counts[1])
    window.report(660.0, in_flight=0, queued=0, arrivals=counts[0], completions=counts[1])
    reading = read(window, 660.0)
    assert reading.service_time_s == pytest.approx(0.3, rel=0.05)
    assert reading.stable_arrival_rate == 0.0


def test_no_service_time_before_enough_completions() -> None:
    # Two requests done, 30 still in flight after a cold start: 2 says nothing of the service time.
    window = MetricsWindow(retention_s=60)
    window.report(0.0, in_flight=0, queued=32, arrivals=0, completions=0)
    window.report(1.0, in_flight=4, queued=28, arrivals=32, completions=0)
    window.report(1.5, in_flight=4, queued=26, arrivals=32, completions=2)
    assert read(window, 1.5).service_time_s is None


@pytest.mark.parametrize(("arrivals", "completions"), [(1, None), (None, 1), (-1, 0), (0, -1)])
def test_counts_must_come_together_and_not_be_negative(arrivals: int | None, completions: int | None) -> None:
    with pytest.raises(ValueError, match="counts"):
        MetricsWindow(retention_s=60).report(0.0, 1, 0, arrivals=arrivals, completions=completions)


def test_counts_after_a_long_silence_are_spread_over_it_and_stay_bounded() -> None:
    # 3,600 requests reported after an hour of silence: one a second, mostly outside every window.
    window = MetricsWindow(retention_s=60)
    window.report(0.0, in_flight=0, queued=0, arrivals=0, completions=0)
    window.report(3600.0, in_flight=0, queued=0, arrivals=3600, completions=3600)
    assert window.retained_buckets <= 62
    assert read(window, 3600.0).stable_arrival_rate == pytest.approx(1.0, rel=0.05)
