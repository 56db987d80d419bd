"""The data plane's one route table and everything derived from it: the Starlette routes, the front door's
rules, and the query path's string matcher, which must match exactly what Starlette's would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from starlette.routing import Route, compile_path

from router.auth.guard import DATAPLANE_RULES
from router.dataplane.plane import DataPlane, dataplane_routes
from router.dataplane.routes import DATAPLANE_ROUTES, Kind, QueryMatcher


def test_the_asgi_routes_are_the_table() -> None:
    routes = dataplane_routes(DataPlane())
    assert all(isinstance(route, Route) for route in routes)
    declared = {(route.path, method) for route in routes if isinstance(route, Route)
                for method in route.methods or () if method != "HEAD"}
    assert declared == {(route.path, route.method) for route in DATAPLANE_ROUTES}


def test_the_front_doors_rules_are_the_tables_routes_that_name_an_endpoint() -> None:
    rules = {(rule.path, next(iter(rule.methods)), rule.level, rule.query) for rule in DATAPLANE_RULES}
    assert rules == {(route.path, route.method, route.level, route.kind is Kind.QUERY)
                     for route in DATAPLANE_ROUTES if route.level is not None}
    assert all(route.level is not None for route in DATAPLANE_ROUTES if route.query)


def _starlette_match(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    for route in DATAPLANE_ROUTES:
        if route.query and route.method == method:
            found = compile_path(route.path)[0].match(path)
            if found is not None:
                return route.path, found.groupdict()
    return None


SEGMENTS = st.sampled_from(["serving-endpoints", "invocations", "v2", "models", "infer", "versions", "ep",
                            "7", "", "a b", "%2F", "ready", "infer.json"])


@given(method=st.sampled_from(["POST", "GET"]), segments=st.lists(SEGMENTS, max_size=7),
       trailing=st.booleans())
def test_the_query_matcher_matches_exactly_what_starlette_would(
    method: str, segments: list[str], trailing: bool
) -> None:
    path = "/" + "/".join(segments) + ("/" if trailing else "")
    found = QueryMatcher().match(method, path)
    mine = (found[0].path, found[1]) if found is not None else None
    assert mine == _starlette_match(method, path), path


def test_known_paths() -> None:
    matcher = QueryMatcher()
    route, params = matcher.match("POST", "/v2/models/fraud/versions/3/infer") or (None, None)
    assert route is not None and route.upstream == "infer" and params == {"name": "fraud", "version": "3"}
    assert matcher.match("POST", "/serving-endpoints/fraud/invocations") is not None
    assert matcher.match("GET", "/serving-endpoints/fraud/invocations") is None
    assert matcher.match("POST", "/serving-endpoints//invocations") is None
    assert matcher.match("POST", "/serving-endpoints/a/b/invocations") is None
