"""The soak's CI form: ``benchmarks/soak.py`` for 60 s against a real gateway — 20 scale-to-zero
endpoints, the hot set moving, mixed valid and invalid traffic — with the report's own checks: 0 lost,
every invalid request its 4xx, RSS growth under 10 %, file descriptors, threads and processes back to
the baseline. The 10-minute form is ``python -m benchmarks.soak``."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import soak

pytestmark = pytest.mark.slow


@pytest.mark.timeout(480)
def test_sixty_seconds_of_cycling_mixed_traffic_loses_nothing_and_leaks_nothing(tmp_path: Path) -> None:
    result = soak.run(tmp_path, duration_s=60.0)
    print(soak.render(result))  # shown with -s, and in the failure report
    assert result.traffic.total("ok") > 0 and result.cold_starts > soak.ENDPOINTS, soak.render(result)
    assert all(result.checks().values()), soak.render(result)
