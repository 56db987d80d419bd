"""The data plane's one route table and everything derived from it: the Starlette routes, and the string
matchers of the query path and of admission, which must match exactly what Starlette's would."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.routing import Route, compile_path

from router.dataplane.plane import DataPlane, dataplane_routes
from router.dataplane.routes import DATAPLANE_ROUTES, DataPlaneRoute, RouteMatcher


def test_the_asgi_routes_are_the_table() -> None:
    routes = dataplane_routes(DataPlane())
    assert all(isinstance(route, Route) for route in routes)
    declared = {(route.path, method) for route in routes if isinstance(route, Route)
                for method in route.methods or () if method != "HEAD"}
    assert declared == {(route.path, route.method) for route in DATAPLANE_ROUTES}


def test_every_query_names_an_endpoint_and_needs_a_permission_on_it() -> None:
    queries = [route for route in DATAPLANE_ROUTES if route.query]
    assert all(route.level is not None and "{name}" in route.path for route in queries)
    assert all("{name}" in route.path for route in DATAPLANE_ROUTES if route.level is not None)


def _starlette_match(
    method: str, path: str, select: Callable[[DataPlaneRoute], bool]
) -> tuple[str, dict[str, str]] | None:
    for route in DATAPLANE_ROUTES:
        if select(route) and route.method == method:
            found = compile_path(route.path)[0].match(path)
            if found is not None:
                return route.path, found.groupdict()
    return None


SEGMENTS = st.sampled_from(["serving-endpoints", "invocations", "v2", "models", "infer", "versions", "ep",
                            "7", "", "a b", "%2F", "ready", "infer.json"])


QUERIES, GUARDED = RouteMatcher.queries(), RouteMatcher.guarded()


@given(method=st.sampled_from(["POST", "GET"]), segments=st.lists(SEGMENTS, max_size=7),
       trailing=st.booleans())
def test_the_matchers_match_exactly_what_starlette_would(
    method: str, segments: list[str], trailing: bool
) -> None:
    path = "/" + "/".join(segments) + ("/" if trailing else "")
    for matcher, select in ((QUERIES, lambda route: route.query),
                            (GUARDED, lambda route: route.level is not None)):
        found = matcher.match(method, path)
        mine = (found[0].path, found[1]) if found is not None else None
        assert mine == _starlette_match(method, path, select), path


def test_a_template_without_a_parameter_is_not_taken() -> None:
    with pytest.raises(ValueError, match="only templates with a parameter"):
        RouteMatcher(lambda route: route.path == "/v2")


def test_known_paths() -> None:
    route, params = GUARDED.match("GET", "/v2/models/fraud") or (None, None)
    assert route is not None and route.upstream == "metadata" and params == {"name": "fraud"}
    assert GUARDED.match("GET", "/v2/models/fraud/versions/3/ready") is not None
    assert GUARDED.match("GET", "/v2/health/ready") is None
    matcher = QUERIES
    route, params = matcher.match("POST", "/v2/models/fraud/versions/3/infer") or (None, None)
    assert route is not None and route.upstream == "infer" and params == {"name": "fraud", "version": "3"}
    assert matcher.match("POST", "/serving-endpoints/fraud/invocations") is not None
    assert matcher.match("GET", "/serving-endpoints/fraud/invocations") is None
    assert matcher.match("POST", "/serving-endpoints//invocations") is None
    assert matcher.match("POST", "/serving-endpoints/a/b/invocations") is None
