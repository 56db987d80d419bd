"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium, loads the page after
traffic went through the real data plane, signs in with a token, and finds every chart drawn with data.

The gateway here is assembled in the test from the real parts (data plane, activator, autoscaler loop,
observability, token middleware) around a loopback HTTP replica; the autoscaler's backend is a small
stand-in that hands out that replica instead of starting processes (the end-to-end gateway test covers
real replica processes). Screenshots are kept in ``artifacts/``: ``dashboard-sign-in.png`` (a first
visit) and ``dashboard.png`` (signed in, after traffic).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from autoscaler.backend import MonotonicClock, ReplicaHealth
from autoscaler.loop import Autoscaler
from autoscaler.spec import AutoscalingSpec, EntitySpec
from autoscaler.types import EntityKey, ReplicaInfo
from router.auth.admission import ALWAYS_PUBLIC, Admission, AdmissionMiddleware
from router.auth.tokens import TokenStore
from router.dataplane.plane import DataPlane, dataplane_routes, error_response
from router.observability.dashboard import DASHBOARD_PUBLIC_PATHS, dashboard_routes
from router.observability.logging import RequestIdMiddleware
from router.observability.service import EndpointView, EntityView, Observability, ObservabilitySettings
from router.state.db import SqliteDatabase
from runtime.errors import ZeroserveError
from tests.router._servers import EchoReplica, echo_replica, serving

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1700")
ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts"
KEY = EntityKey("fraud", "fraud-1")
FRAUD_ROW = 'tr[data-endpoint="fraud"]'
CHARTS_WITH_DATA = ("requests", "latency", "errors", "replicas", "queue", "cold_starts", "cost")

if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    # CI installs both (.ci/run); elsewhere say what is missing instead of failing obscurely.
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} and {CHROMEDRIVER} are required: "
                           "apt-get install chromium chromium-driver")
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)


@dataclass
class LoopbackBackend:
    """Every replica it 'starts' is the same loopback replica, ready after ``start_delay_s``."""

    replica: EchoReplica
    start_delay_s: float = 0.3
    running: dict[str, ReplicaInfo] = field(default_factory=dict)

    async def open(self) -> None:
        return None

    async def start_replica(self, entity: EntityKey, spec: EntitySpec, replica_id: str) -> ReplicaInfo:
        await asyncio.sleep(self.start_delay_s)
        info = ReplicaInfo(replica_id, entity, f"http://127.0.0.1:{self.replica.port}", 4)
        self.running[replica_id] = info
        return info

    async def stop_replica(self, replica_id: str, timeout_s: float) -> None:
        self.running.pop(replica_id, None)

    async def health(self, replica_id: str) -> ReplicaHealth:
        return ReplicaHealth.HEALTHY if replica_id in self.running else ReplicaHealth.EXITED

    def list_replicas(self) -> list[ReplicaInfo]:
        return list(self.running.values())

    def logs(self, replica_id: str) -> str:
        return ""

    async def close(self) -> None:
        self.running.clear()


@dataclass
class Catalog:
    def endpoint_views(self) -> Sequence[EndpointView]:
        return [EndpointView("fraud", ready=True, entities=(EntityView("fraud-1"),))]


def drive_browser(url: str, token: str) -> dict[str, object]:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        wait = WebDriverWait(driver, 30)
        driver.get(f"{url}/dashboard")
        wait.until(expected_conditions.visibility_of_element_located((By.ID, "token")))
        # A first visit, no token given yet: a sign-in form and nothing else — no error, no empty table,
        # no buttons that act on a session there is not.
        first_visit = driver.execute_script("""
            const shown = (id) => getComputedStyle(document.getElementById(id)).display !== 'none';
            return {error: shown('login-error'), main: shown('main'), controls: shown('controls'),
                    placeholder: document.getElementById('token').placeholder,
                    status: document.getElementById('status').innerText};
        """)
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard-sign-in.png"))
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, FRAUD_ROW)))
        Select(driver.find_element(By.ID, "range")).select_by_value("300")

        # The page redraws every few seconds, so read it in one script rather than element by element.
        read_page = """
            const points = {};
            for (const figure of document.querySelectorAll('figure.chart')) {
                points[figure.dataset.chart] = Number(figure.dataset.points);
            }
            const row = document.querySelector('tr[data-endpoint="fraud"]');
            const reasons = document.getElementById('reasons').innerText;
            const latencyAxis = [...document.querySelectorAll('figure[data-chart="latency"] g.axis text')]
                .map((text) => text.textContent);
            const header = document.querySelector('table.overview thead').innerText;
            return {points, row: row ? row.innerText : '', reasons, latencyAxis, header};
        """

        last_seen: list[object] = []

        def charts_drawn(_: object) -> dict[str, object] | None:
            page: dict[str, object] = driver.execute_script(read_page)
            last_seen[:] = [page]
            points = page["points"]
            assert isinstance(points, dict)
            return page if all(points.get(chart, 0) > 0 for chart in CHARTS_WITH_DATA) else None

        try:
            page = wait.until(charts_drawn)
        except TimeoutException:
            raise AssertionError(f"charts never all had data; last seen: {last_seen}") from None
        assert page is not None  # until() returns only a true value
        stored = driver.execute_script("return sessionStorage.getItem('zeroserve.token')")
        paths = driver.execute_script("return document.querySelectorAll('figure.chart path.line').length")
        driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        favicon = driver.execute_script(
            "return fetch('/favicon.ico').then((response) => response.status)")
        # The token outlives a reload (same tab), so the page goes straight to the data.
        driver.refresh()
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, FRAUD_ROW)))
        login_hidden = driver.execute_script("return document.getElementById('login').hidden")
        # The first load, before the token was given, gets 401s by design; anything else is a fault.
        errors = [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"
                  and not (entry.get("source") == "network" and "status of 401" in str(entry.get("message")))]
        return {**page, "stored": stored, "paths": paths, "login_hidden": login_hidden, "errors": errors,
                "first_visit": first_visit, "favicon": favicon}
    finally:
        driver.quit()


async def test_the_dashboard_shows_live_charts_after_traffic(tmp_path: Path) -> None:
    dataplane = DataPlane()
    observability = Observability(settings=ObservabilitySettings(resolution_s=0.5, sample_interval_s=0.25),
                                  stats=dataplane.stats)
    async with echo_replica("replica-1", delay_s=0.002) as replica:
        autoscaler = Autoscaler(LoopbackBackend(replica), MonotonicClock(),
                                observability.listener(dataplane.listener), tick_s=0.5)
        dataplane.activator.set_scaler(autoscaler)
        dataplane.set_endpoint("fraud", [(KEY, 100)])
        autoscaler.apply(KEY, EntitySpec("file:///models/fraud", "fraud-1", autoscaling=AutoscalingSpec(
            stable_window_s=6.0, scale_to_zero_grace_s=30.0)))
        observability.bind(catalog=Catalog(), autoscaler=autoscaler, load=dataplane.activator)
        db = SqliteDatabase(tmp_path / "state.db")
        tokens = TokenStore(db)
        token, _ = tokens.create("operator", is_admin=True)
        app = Starlette(routes=[*dashboard_routes(observability), *dataplane_routes(dataplane)],
                        exception_handlers={ZeroserveError: error_response})
        admission = Admission(front_door=None, tokens=tokens, max_body_bytes=None,
                              public_paths=ALWAYS_PUBLIC | DASHBOARD_PUBLIC_PATHS)
        asgi = RequestIdMiddleware(AdmissionMiddleware(app, admission))
        await dataplane.start()
        await autoscaler.start()
        await observability.start()
        try:
            async with serving(asgi) as port, httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                    timeout=30) as http:
                url = f"http://127.0.0.1:{port}"
                # The entity starts at zero: the first requests wait for a cold start, then ~3 s of load.
                statuses: list[int] = []
                for _ in range(30):
                    batch = await asyncio.gather(*(
                        http.post("/serving-endpoints/fraud/invocations", json={"inputs": [[1.0, 2.0]]})
                        for _ in range(8)))
                    statuses += [response.status_code for response in batch]
                    await asyncio.sleep(0.1)
                assert statuses.count(200) == 240
                assert all(response.headers["x-request-id"] for response in batch)
                await asyncio.sleep(1.2)  # two more points after the traffic
                result = await asyncio.to_thread(drive_browser, url, token)
        finally:
            await observability.close()
            await autoscaler.stop()
            await dataplane.aclose()
            db.close()
    assert result["errors"] == []
    assert result["stored"] == token and result["login_hidden"] is True
    assert "fraud" in str(result["row"]) and "ready" in str(result["row"])
    assert "stable:" in str(result["reasons"]) or "panic:" in str(result["reasons"])
    assert int(str(result["paths"])) >= 5
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    assert result["first_visit"] == {"error": False, "main": False, "controls": False, "placeholder": "zs_…",
                                     "status": "signed out"}
    assert (ARTIFACTS / "dashboard-sign-in.png").stat().st_size > 5_000
    assert result["favicon"] == 200
    # The latency axis says its unit (time labels under the chart aside): "12.5 ms", "1.5 s", never "5.4k".
    values = [label for label in result["latencyAxis"] if ":" not in label]  # type: ignore[attr-defined]
    assert values and all(label.endswith((" ms", " s")) for label in values), values
    # The overview's error column says what it counts.
    assert "server errors" in str(result["header"]) and "5xx" in str(result["header"])
