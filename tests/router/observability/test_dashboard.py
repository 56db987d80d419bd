"""The dashboard's routes and JSON APIs, behind the real token middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from autoscaler.testing import FakeClock
from autoscaler.types import EntityKey
from router.auth.admission import ALWAYS_PUBLIC, Admission, AdmissionMiddleware
from router.auth.tokens import TokenStore
from router.dataplane.plane import error_response
from router.observability.dashboard import DASHBOARD_PUBLIC_PATHS, dashboard_routes, endpoint_metrics
from router.observability.service import EndpointView, EntityView, Observability, ObservabilitySettings
from router.state.db import SqliteDatabase
from runtime.errors import ZeroserveError

KEY = EntityKey("fraud", "fraud-1")


@dataclass
class Catalog:
    views: list[EndpointView] = field(default_factory=lambda: [
        EndpointView("fraud", ready=True, entities=(EntityView("fraud-1"),)),
        EndpointView("churn", ready=False, config_update="IN_PROGRESS", entities=(EntityView("churn-1"),)),
    ])

    def endpoint_views(self) -> Sequence[EndpointView]:
        return self.views


@dataclass
class Served:
    http: httpx.AsyncClient
    token: str
    observability: Observability
    clock: FakeClock


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    clock = FakeClock()
    observability = Observability(settings=ObservabilitySettings(), clock=clock)
    observability.bind(catalog=Catalog())
    db = SqliteDatabase(tmp_path / "state.db")
    tokens = TokenStore(db)
    token, _ = tokens.create("ops", is_admin=True)

    async def metrics_of(request: Request) -> Response:
        return endpoint_metrics(observability, request, request.path_params["name"])

    app = Starlette(routes=[*dashboard_routes(observability),
                            Route("/api/2.0/serving-endpoints/{name}/metrics", metrics_of)],
                    exception_handlers={ZeroserveError: error_response})
    asgi = AdmissionMiddleware(app, Admission(front_door=None, tokens=tokens, max_body_bytes=None,
                                              public_paths=ALWAYS_PUBLIC | DASHBOARD_PUBLIC_PATHS))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://gw") as http:
        yield Served(http, token, observability, clock)
    db.close()


def auth(served: Served) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.token}"}


async def traffic(served: Served) -> None:
    stats = served.observability.hub.request_stats
    served.observability.tick()  # the first point: levels only
    for second in range(3):
        for _ in range(10):
            stats.record(KEY, 200, 0.004)
        stats.record(KEY, 500, 0.2)
        await served.clock.advance(5.0)
        served.observability.tick()
        assert second >= 0


@pytest.mark.parametrize("path", sorted(DASHBOARD_PUBLIC_PATHS))
async def test_the_page_and_its_assets_are_public_and_locked_down(served: Served, path: str) -> None:
    response = await served.http.get(path)
    assert response.status_code == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    if path == "/dashboard":
        assert response.headers["content-type"].startswith("text/html")
        # Everything the page loads is its own: no CDN, no external network.
        assert "http://" not in response.text and "https://" not in response.text


@pytest.mark.parametrize(
    "path", ["/metrics", "/api/2.0/zeroserve/overview", "/api/2.0/zeroserve/timeseries/fraud"])
async def test_the_data_needs_a_token(served: Served, path: str) -> None:
    assert (await served.http.get(path)).status_code == 401
    assert (await served.http.get(path, headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await served.http.get(path, headers=auth(served))).status_code == 200


async def test_overview_lists_endpoints_with_state_replicas_and_cost(served: Served) -> None:
    await traffic(served)
    body = (await served.http.get("/api/2.0/zeroserve/overview", headers=auth(served))).json()
    assert body["currency"] == "USD" and body["resolution_s"] == 5.0
    by_name = {endpoint["name"]: endpoint for endpoint in body["endpoints"]}
    assert set(by_name) == {"fraud", "churn"}
    fraud = by_name["fraud"]
    assert fraud["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert fraud["requests_per_s"] == pytest.approx(11 / 5.0)
    assert fraud["error_rate"] == pytest.approx(1 / 11)
    assert fraud["scaled_to_zero"] is True and fraud["cost"]["total"] == 0.0
    assert fraud["served_entities"][0]["name"] == "fraud-1"
    assert by_name["churn"]["state"]["config_update"] == "IN_PROGRESS"


async def test_timeseries_has_the_ring_and_honours_since(served: Served) -> None:
    await traffic(served)
    response = await served.http.get("/api/2.0/zeroserve/timeseries/fraud", headers=auth(served))
    body = response.json()
    series = body["series"]
    assert len(series["t"]) == 4
    assert series["requests_per_s"] == [None, 2.2, 2.2, 2.2]
    assert all(value is not None for value in series["p99_ms"][1:])
    assert body["retention_s"] == 3600.0 and body["scaling_events"] == []
    since = series["t"][1]
    later = (await served.http.get(f"/api/2.0/zeroserve/timeseries/fraud?since={since}",
                                   headers=auth(served))).json()
    assert later["series"]["t"] == series["t"][2:]


@pytest.mark.parametrize("since", ["yesterday", "-5", "nan", "inf"])
async def test_a_bad_since_is_a_400_naming_it(served: Served, since: str) -> None:
    path = f"/api/2.0/zeroserve/timeseries/fraud?since={since}"
    response = await served.http.get(path, headers=auth(served))
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "since" in response.json()["message"]


async def test_an_unknown_endpoint_is_a_404(served: Served) -> None:
    served.observability.tick()
    response = await served.http.get("/api/2.0/zeroserve/timeseries/nope", headers=auth(served))
    assert response.status_code == 404
    assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


async def test_gateway_and_endpoint_metrics_text(served: Served) -> None:
    await traffic(served)
    whole = await served.http.get("/metrics", headers=auth(served))
    assert whole.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(whole.text)}
    assert {"zeroserve_requests", "zeroserve_request_duration_seconds", "zeroserve_replicas",
            "zeroserve_cold_starts", "zeroserve_inference_table_records"} <= names
    one = await served.http.get("/api/2.0/serving-endpoints/fraud/metrics", headers=auth(served))
    samples = [sample for family in text_string_to_metric_families(one.text) for sample in family.samples]
    assert samples and {sample.labels.get("endpoint") for sample in samples} == {"fraud"}
    requests = {s.labels["status_class"]: s.value for s in samples if s.name == "zeroserve_requests_total"}
    assert requests["2xx"] == 30 and requests["5xx"] == 3
