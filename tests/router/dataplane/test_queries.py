"""The gateway's query path below ASGI (``router.dataplane.queries``), over real sockets.

One real gateway (fake autoscaler backend, a real stand-in replica server) is served by two uvicorn
servers in the test's loop: one with the gateway's query protocol (as ``zeroserve serve`` runs it) and one
with the plain header-limited protocol, where every request crosses the ASGI middleware stack. The same
requests must get the same answers from both; the protocol mechanics that uvicorn's ASGI cycle gave
(keep-alive, pipelining, ``Expect: 100-continue``, slow bodies, request timeouts, clients that leave)
are checked on the query path directly.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from pydantic import SecretStr
from starlette.types import Receive, Scope, Send

import router.auth.tokens
from autoscaler.testing import FakeClock
from router.auth.settings import SecuritySettings
from router.auth.tls import uvicorn_options
from router.dataplane.queries import GatewayQueries
from router.gateway import Gateway
from router.observability.logging import configure_logging, flush_logging
from router.settings import GatewaySettings
from runtime.http import DirectExchange
from tests._uvicorn import uvicorn_server
from tests.router._servers import read_body, serving
from tests.router.auth.conftest import ADMIN_TOKEN, StandInBackend

API = "/api/2.0/serving-endpoints"
ENTITY = {"entity_name": "file:///models/propensity", "entity_version": "1"}
MAX_BODY = 4096


async def replica_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The stand-in replica: echoes the body in ``{"echo": ...}``; a body containing ``slow`` waits 2 s,
    one containing ``pause`` 0.3 s, and one containing ``drop`` is cut off mid-answer."""
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    if b"drop" in body:
        # Starts an answer, then fails: uvicorn closes the connection under the gateway's request.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        raise RuntimeError("the stand-in replica drops this request")
    if b"slow" in body:
        await asyncio.sleep(2.0)
    elif b"pause" in body:
        await asyncio.sleep(0.3)
    answer = orjson.dumps({"echo": body.decode()})
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


@dataclass
class Served:
    gateway: Gateway
    fast: int  # port of the server with the query protocol
    plain: int  # port of the server where queries cross the ASGI stack
    tokens: dict[str, str]
    fast_server: uvicorn.Server


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(replica_app) as replica_port:
        clock = FakeClock()
        security = SecuritySettings(admin_token=SecretStr(ADMIN_TOKEN), max_body_bytes=MAX_BODY,
                                    body_timeout_s=0.5, request_timeout_s=0.5)
        gateway = Gateway(GatewaySettings(home=tmp_path, rollout_timeout_s=3.0),
                          backend=StandInBackend(clock, replica_port), clock=clock, security=security)
        base = uvicorn_options()["http"]
        fast_protocol = gateway.http_protocol(base)
        assert gateway.queries is not None
        async with (
            uvicorn_server(gateway.asgi, http=fast_protocol, lifespan="on") as (fast, fast_server),
            uvicorn_server(gateway.asgi, http=base) as (plain, _),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{fast}",
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin,
        ):
            for name, closed in (("ep", False), ("closed", True)):
                created = await admin.post(API, json={"name": name, "config": {"served_entities": [ENTITY]}})
                assert created.status_code == 200, created.text
                await _settle(admin, clock, name)
                if closed:
                    limit = {"rate_limits": [{"calls": 0, "key": "endpoint", "renewal_period": "minute"}]}
                    assert (await admin.put(f"{API}/{name}/rate-limits", json=limit)).status_code == 200
            stranger = await admin.post("/api/2.0/zeroserve/tokens", json={"principal": "stranger"})
            assert stranger.status_code == 200, stranger.text
            viewer = await admin.post("/api/2.0/zeroserve/tokens", json={"principal": "viewer"})
            grant = {"access_control_list": [{"user_name": "viewer", "permission_level": "CAN_VIEW"}]}
            granted = await admin.patch("/api/2.0/permissions/serving-endpoints/ep", json=grant)
            assert granted.status_code == 200, granted.text
            tokens = {"admin": ADMIN_TOKEN, "stranger": stranger.json()["token"],
                      "viewer": viewer.json()["token"]}
            yield Served(gateway, fast, plain, tokens, fast_server)


async def _settle(admin: httpx.AsyncClient, clock: FakeClock, name: str) -> None:
    for _ in range(250):
        state = (await admin.get(f"{API}/{name}")).json()["state"]
        if state["ready"] == "READY" and state["config_update"] != "IN_PROGRESS":
            return
        await clock.advance(0.5)
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} did not become ready")


CASES: list[tuple[str, str, str | None, bytes, dict[str, str]]] = [
    # (case, path, token, body, extra headers)
    ("ok", "/serving-endpoints/ep/invocations", "admin", b'{"inputs": [[1, 2]]}', {}),
    ("client request id", "/serving-endpoints/ep/invocations", "admin", b'{"inputs": [[1]]}',
     {"x-request-id": "trace-0042"}),
    ("query string", "/serving-endpoints/ep/invocations?debug=1", "admin", b'{"inputs": [[1]]}', {}),
    ("oip infer", "/v2/models/ep/infer", "admin", b'{"inputs": []}', {}),
    ("oip versioned infer", "/v2/models/ep/versions/7/infer", "admin", b'{"inputs": []}', {}),
    ("no token", "/serving-endpoints/ep/invocations", None, b"{}", {}),
    ("bad token", "/serving-endpoints/ep/invocations", "zs_0123456789abcdef_" + "A" * 43, b"{}", {}),
    ("no grant", "/serving-endpoints/ep/invocations", "stranger", b"{}", {}),
    ("may view, not query", "/serving-endpoints/ep/invocations", "viewer", b"{}", {}),
    ("unknown endpoint", "/serving-endpoints/nope/invocations", "admin", b"{}", {}),
    ("oip unknown endpoint", "/v2/models/nope/infer", "admin", b"{}", {}),
    ("rate limited", "/serving-endpoints/closed/invocations", "admin", b"{}", {}),
    ("oip rate limited", "/v2/models/closed/infer", "admin", b"{}", {}),
    ("too large", "/serving-endpoints/ep/invocations", "admin", b"x" * (MAX_BODY + 1), {}),
    ("request timeout", "/serving-endpoints/ep/invocations", "admin", b'"slow"', {}),
    ("replica fails", "/serving-endpoints/ep/invocations", "admin", b'"drop"', {}),
    ("oip replica fails", "/v2/models/ep/infer", "admin", b'"drop"', {}),
    # Every failure on an Open Inference Protocol path too: there the body also carries "error".
    ("oip no token", "/v2/models/ep/infer", None, b"{}", {}),
    ("oip bad token", "/v2/models/ep/infer", "zs_0123456789abcdef_" + "A" * 43, b"{}", {}),
    ("oip no grant", "/v2/models/ep/infer", "stranger", b"{}", {}),
    ("oip may view, not query", "/v2/models/ep/infer", "viewer", b"{}", {}),
    ("oip too large", "/v2/models/ep/infer", "admin", b"x" * (MAX_BODY + 1), {}),
    # Two failures at once: both paths admit in one order (size, token, permission, rate limit).
    ("too large without a token", "/serving-endpoints/ep/invocations", None, b"x" * (MAX_BODY + 1), {}),
    ("rate limited without a grant", "/serving-endpoints/closed/invocations", "stranger", b"{}", {}),
    ("oip request timeout", "/v2/models/ep/versions/7/infer", "admin", b'"slow"', {}),
]
# Headers whose presence (and, except for the generated id, value) the two paths must agree on.
COMPARED = ("content-type", "served-model-name", "www-authenticate", "retry-after", "connection")


async def _call(
    port: int, path: str, token: str | None, body: bytes, extra: dict[str, str]
) -> httpx.Response:
    headers = {"content-type": "application/json", **extra}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        return await http.post(path, content=body, headers=headers)


@pytest.mark.parametrize(("case", "path", "token", "body", "extra"), CASES, ids=[case[0] for case in CASES])
async def test_query_protocol_answers_as_the_asgi_stack_does(
    served: Served, case: str, path: str, token: str | None, body: bytes, extra: dict[str, str]
) -> None:
    token = served.tokens.get(token or "", token)
    fast = await _call(served.fast, path, token, body, extra)
    plain = await _call(served.plain, path, token, body, extra)
    assert fast.status_code == plain.status_code, (fast.text, plain.text)
    assert fast.content == plain.content  # byte for byte: one error renderer behind both paths
    for name in COMPARED:
        assert fast.headers.get(name) == plain.headers.get(name), name
    assert fast.headers["content-length"] == str(len(fast.content))
    request_id = fast.headers["x-request-id"]
    assert request_id == extra.get("x-request-id", request_id) and len(request_id) >= 8
    expected = {"ok": 200, "no token": 401, "bad token": 401, "no grant": 404, "unknown endpoint": 404,
                "may view, not query": 403, "replica fails": 503,
                "rate limited": 429, "too large": 413, "request timeout": 504}
    if case.removeprefix("oip ") in expected:
        assert fast.status_code == expected[case.removeprefix("oip ")], fast.text
    if fast.status_code >= 400:
        error = fast.json()
        assert error["error_code"] and error["message"], error
        if path.startswith("/v2/"):
            assert error["error"] == error["message"], error
    if case == "ok":
        assert fast.json() == {"echo": body.decode()}


@pytest.mark.parametrize("path", ["/serving-endpoints/ep/invocations", "/v2/models/ep/infer"])
async def test_a_query_route_with_another_method_is_405_alike(served: Served, path: str) -> None:
    answers = []
    for port in (served.fast, served.plain):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                     headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
            answers.append(await http.put(path, content=b"{}"))
    fast, plain = answers
    assert fast.status_code == plain.status_code == 405
    assert fast.content == plain.content and fast.headers["allow"] == plain.headers["allow"] == "POST"


def _connection_cycles(server: uvicorn.Server) -> list[object]:
    return [getattr(protocol, "cycle", None) for protocol in server.server_state.connections]


async def test_queries_on_the_query_protocol_skip_asgi(served: Served) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.fast}",
                                 headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        answer = await http.post("/serving-endpoints/ep/invocations", content=b"{}")
        assert answer.status_code == 200
        assert any(isinstance(cycle, DirectExchange) for cycle in _connection_cycles(served.fast_server))
        # The same keep-alive connection then serves a control-plane request through ASGI.
        listed = await http.get(API)
        assert listed.status_code == 200
        assert not any(isinstance(cycle, DirectExchange) for cycle in _connection_cycles(served.fast_server))


def _request(path: str, body: bytes, *extra: bytes) -> bytes:
    head = [b"POST " + path.encode() + b" HTTP/1.1", b"host: gateway",
            b"authorization: Bearer " + ADMIN_TOKEN.encode(), b"content-type: application/json",
            b"content-length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def _responses(reader: asyncio.StreamReader, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    answers = []
    for _ in range(count):
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        answers.append((int(status_line.split()[1]), headers, body))
    return answers


async def test_pipelined_queries_are_answered_in_order(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.fast)
    try:
        # Three requests in one write: each must be answered, in order, on the same connection.
        writer.write(_request("/serving-endpoints/ep/invocations", b'"first"')
                     + _request("/v2/models/ep/infer", b'"second"')
                     + b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
        async with asyncio.timeout(10):
            answers = await _responses(reader, 3)
    finally:
        writer.close()
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert orjson.loads(answers[0][2]) == {"echo": '"first"'}
    assert orjson.loads(answers[1][2]) == {"echo": '"second"'}
    assert orjson.loads(answers[2][2]) == {"status": "ok"}


async def test_expect_100_continue_gets_the_interim_answer_then_the_result(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.fast)
    try:
        body = b'"waited"'
        writer.write(_request("/serving-endpoints/ep/invocations", b"", b"expect: 100-continue")
                     .replace(b"content-length: 0", b"content-length: %d" % len(body)))
        async with asyncio.timeout(5):
            assert await reader.readline() == b"HTTP/1.1 100 Continue\r\n"
            assert await reader.readline() == b"\r\n"
            writer.write(body)
            [(status, _, answer)] = await _responses(reader, 1)
    finally:
        writer.close()
    assert status == 200 and orjson.loads(answer) == {"echo": '"waited"'}


async def test_a_body_shorter_than_announced_times_out_with_408_and_closes(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.fast)
    try:
        writer.write(_request("/serving-endpoints/ep/invocations", b"{}").replace(
            b"content-length: 2", b"content-length: 200"))
        async with asyncio.timeout(5):
            [(status, headers, body)] = await _responses(reader, 1)
            assert await reader.read() == b""  # the connection is closed after the answer
    finally:
        writer.close()
    assert status == 408 and headers["connection"] == "close"
    assert orjson.loads(body)["error_code"] == "REQUEST_TIMEOUT"


async def test_a_client_that_leaves_mid_query_does_not_disturb_the_gateway(served: Served) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", served.fast)
    writer.write(_request("/serving-endpoints/ep/invocations", b'"slow"'))
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await asyncio.sleep(0.1)
    answer = await _call(served.fast, "/serving-endpoints/ep/invocations", ADMIN_TOKEN, b'"after"', {})
    assert answer.status_code == 200 and answer.json() == {"echo": '"after"'}


async def test_trusted_proxies_send_queries_through_the_asgi_stack(tmp_path: Path) -> None:
    # X-Forwarded-For is applied by the ASGI stack only: with trusted proxies there is no query path.
    security = SecuritySettings(admin_token=SecretStr(ADMIN_TOKEN), trusted_proxies=["10.0.0.0/8"])
    gateway = Gateway(GatewaySettings(home=tmp_path), security=security,
                      backend=StandInBackend(FakeClock(), 9))
    base = uvicorn_options()["http"]
    assert gateway.queries is None and gateway.http_protocol(base) is base
    gateway.db.close()


# The immediate path: a query whose body came with its head is served without a task -----------------


async def _one_write(port: int, path: str, token: str | None, body: bytes, extra: dict[str, str]
                     ) -> tuple[int, dict[str, str], bytes]:
    """One request written in one piece (as requests/databricks-sdk and the load generator send it)."""
    lines = [f"POST {path} HTTP/1.1", "host: gateway", "content-type: application/json",
             f"content-length: {len(body)}", *(f"{name}: {value}" for name, value in extra.items())]
    if token is not None:
        lines.append(f"authorization: Bearer {token}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        async with asyncio.timeout(10):
            [answer] = await _responses(reader, 1)
    finally:
        writer.close()
    return answer


def _count_task_path(queries: GatewayQueries, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records each query served by ``GatewayQueries.serve`` (the task path): its ``resumed`` argument."""
    served: list[object] = []
    serve = queries.serve

    def counted(*args: Any, **kwargs: Any) -> Any:
        served.append(kwargs.get("resumed"))
        return serve(*args, **kwargs)

    monkeypatch.setattr(queries, "serve", counted)
    return served


@pytest.mark.parametrize(("case", "path", "token", "body", "extra"), CASES, ids=[case[0] for case in CASES])
async def test_the_immediate_path_answers_as_the_asgi_stack_does(
    served: Served, case: str, path: str, token: str | None, body: bytes, extra: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queries = served.gateway.queries
    assert queries is not None
    warm = await _one_write(served.fast, "/serving-endpoints/ep/invocations", ADMIN_TOKEN, b"{}", {})
    assert warm[0] == 200  # the gateway now holds an idle connection to the replica
    tasks = _count_task_path(queries, monkeypatch)
    token = served.tokens.get(token or "", token)
    status, headers, answer = await _one_write(served.fast, path, token, body, extra)
    plain = await _call(served.plain, path, token, body, extra)
    assert status == plain.status_code, (answer, plain.text)
    assert orjson.loads(answer) == plain.json()
    for name in COMPARED:
        assert headers.get(name) == plain.headers.get(name), name
    assert headers["content-length"] == str(len(answer))
    assert headers["x-request-id"] == extra.get("x-request-id", headers["x-request-id"])
    assert tasks == []  # answered from the protocol's and the upstream connection's callbacks
    if case == "request timeout":
        assert orjson.loads(answer)["message"] == "The request took longer than 0.5 s."


async def test_a_query_that_must_wait_is_resumed_in_a_task_once_admitted(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    queries = served.gateway.queries
    assert queries is not None
    tasks = _count_task_path(queries, monkeypatch)
    admit = served.gateway.front_door.admit_query
    admitted: list[str] = []

    def counted_admit(principal: Any, endpoint: str) -> Any:
        admitted.append(endpoint)
        return admit(principal, endpoint)

    monkeypatch.setattr(served.gateway.front_door, "admit_query", counted_admit)
    # A fresh gateway holds no connection to the replica: the first query must open one (the task
    # path, resumed where the immediate path stopped); the second finds it idle.
    first = await _one_write(served.fast, "/serving-endpoints/ep/invocations", ADMIN_TOKEN, b'"a"', {})
    assert (first[0], orjson.loads(first[2])) == (200, {"echo": '"a"'})
    assert len(tasks) == 1 and tasks[0] is not None and admitted == ["ep"]
    second = await _one_write(served.fast, "/serving-endpoints/ep/invocations", ADMIN_TOKEN, b'"b"', {})
    assert (second[0], orjson.loads(second[2])) == (200, {"echo": '"b"'})
    assert len(tasks) == 1 and admitted == ["ep", "ep"]
    assert first[1]["served-model-name"] == second[1]["served-model-name"] == "propensity-1"


async def test_shutdown_waits_for_a_query_in_flight_on_the_immediate_path(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    queries = served.gateway.queries
    assert queries is not None
    await _one_write(served.fast, "/serving-endpoints/ep/invocations", ADMIN_TOKEN, b"{}", {})
    tasks = _count_task_path(queries, monkeypatch)
    in_flight = asyncio.create_task(
        _one_write(served.fast, "/serving-endpoints/ep/invocations", ADMIN_TOKEN, b'"pause"', {}))
    await asyncio.sleep(0.1)
    served.fast_server.should_exit = True  # what SIGTERM does: stop accepting, drain, then exit
    status, headers, body = await asyncio.wait_for(in_flight, 5)
    assert (status, orjson.loads(body)) == (200, {"echo": '"pause"'})
    assert headers["connection"] == "close" and tasks == []  # no task for shutdown to wait on
    for _ in range(100):
        if not served.fast_server.server_state.connections:
            break
        await asyncio.sleep(0.02)
    assert not served.fast_server.server_state.connections


async def test_queries_on_the_immediate_path_write_their_access_log_line(served: Served) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved_level = root.level
    handler = configure_logging("INFO", stream=stream)
    try:
        await _one_write(served.fast, "/serving-endpoints/ep/invocations", ADMIN_TOKEN, b"{}", {})
        answers = [
            await _one_write(served.fast, "/serving-endpoints/ep/invocations", token, b"{}",
                             {"x-request-id": f"trace-{n}"})
            for n, token in enumerate((ADMIN_TOKEN, None))
        ]
        flush_logging()
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
    access = {line["request_id"]: line for line in map(orjson.loads, stream.getvalue().splitlines())
              if line["logger"] == "zeroserve.access"}
    assert [status for status, _, _ in answers] == [200, 401]
    ok, refused = access["trace-0"], access["trace-1"]
    assert (ok["method"], ok["path"], ok["status"]) == ("POST", "/serving-endpoints/ep/invocations", 200)
    assert ok["principal"] == "admin" and ok["client"] == "127.0.0.1" and ok["duration_ms"] > 0
    assert refused["status"] == 401 and refused["principal"] is None


async def test_a_keep_alive_connection_verifies_its_token_once_and_still_sees_a_revoke(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = served.gateway.front_door.tokens
    carol, info = tokens.create("carol", is_admin=True)
    hashed: list[str] = []
    hash_token = router.auth.tokens.hash_token

    def counted(token: str) -> bytes:
        hashed.append(token)
        return hash_token(token)

    monkeypatch.setattr(router.auth.tokens, "hash_token", counted)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.fast)

    async def query(token: str) -> int:
        writer.write(b"POST /serving-endpoints/ep/invocations HTTP/1.1\r\nhost: gateway\r\n"
                     b"authorization: Bearer " + token.encode() + b"\r\ncontent-length: 2\r\n\r\n{}")
        async with asyncio.timeout(10):
            [(status, _, _)] = await _responses(reader, 1)
        return status

    try:
        assert [await query(carol) for _ in range(3)] == [200, 200, 200]
        assert hashed == [carol]  # verified on the connection's first request only
        tokens.revoke(info.token_id)
        assert await query(carol) == 401  # at once, on the same connection
        assert await query(ADMIN_TOKEN) == 200  # another token is verified in full
        assert await query(carol[:-1] + "x") == 401
        assert await query(ADMIN_TOKEN) == 200
        assert hashed == [carol, carol, ADMIN_TOKEN, carol[:-1] + "x", ADMIN_TOKEN]
    finally:
        writer.close()
