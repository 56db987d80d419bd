"""Request ids and structured JSON logs."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from router.observability.logging import (
    REQUEST_ID_SCOPE_KEY,
    JsonFormatter,
    RequestIdMiddleware,
    configure_logging,
    flush_logging,
    log_access,
    request_id_var,
)

app_logger = logging.getLogger("zeroserve.test_app")


async def hello(request: Request) -> Response:
    app_logger.info("handling", extra={"endpoint": "fraud"})
    return PlainTextResponse(request.scope[REQUEST_ID_SCOPE_KEY])


async def boom(request: Request) -> Response:
    raise RuntimeError("kaput")


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved_level = root.level
    handler = configure_logging("INFO", stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)


def client() -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/hello", hello), Route("/boom", boom)])
    transport = httpx.ASGITransport(app=RequestIdMiddleware(app), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    flush_logging()  # lines are written by the logging thread
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_every_response_carries_a_fresh_request_id(log_stream: io.StringIO) -> None:
    async with client() as http:
        first = await http.get("/hello")
        second = await http.get("/hello")
    assert first.status_code == 200
    assert first.headers["x-request-id"] == first.text  # the handler saw the same id
    assert len(first.headers["x-request-id"]) == 32
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    records = lines(log_stream)
    handled = [r for r in records if r["message"] == "handling"]
    assert handled[0]["request_id"] == first.headers["x-request-id"]
    assert handled[0]["endpoint"] == "fraud" and handled[0]["level"] == "info"
    access = [r for r in records if r["logger"] == "zeroserve.access"]
    assert access[0]["request_id"] == first.headers["x-request-id"]
    assert access[0]["method"] == "GET" and access[0]["path"] == "/hello" and access[0]["status"] == 200
    assert isinstance(access[0]["duration_ms"], float)
    assert request_id_var.get() is None  # nothing leaks out of the request


async def test_a_sane_client_id_is_kept_and_an_unsafe_one_replaced(log_stream: io.StringIO) -> None:
    async with client() as http:
        kept = await http.get("/hello", headers={"x-request-id": "trace-42.a_b:c"})
        replaced = await http.get("/hello", headers={"x-request-id": "bad id\twith spaces"})
        too_long = await http.get("/hello", headers={"x-request-id": "x" * 200})
    assert kept.headers["x-request-id"] == "trace-42.a_b:c"
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert len(replaced.headers["x-request-id"]) == 32
    assert len(too_long.headers["x-request-id"]) == 32


async def test_a_failing_handler_is_logged_with_its_request_id(log_stream: io.StringIO) -> None:
    async with client() as http:
        response = await http.get("/boom", headers={"x-request-id": "req-boom"})
    assert response.status_code == 500
    access = [r for r in lines(log_stream) if r["logger"] == "zeroserve.access"]
    assert access[-1]["status"] == 500 and access[-1]["request_id"] == "req-boom"


def test_formatter_writes_exceptions_and_non_json_extras() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed %s", ("here",), exc_info=sys.exc_info(),
            extra={"path": Path("/tmp")})
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed here" and entry["level"] == "error"
    assert "ValueError: bad value" in entry["exception"]
    assert entry["path"] == "/tmp"
    assert entry["ts"].endswith("Z")


def test_the_access_line_written_directly_is_the_formatters_line(log_stream: io.StringIO) -> None:
    # With our handler as the only listener, log_access builds the line itself (it runs per request);
    # it must be exactly what the formatter makes of the same access record, keys in the same order.
    scope = {"method": "POST", "path": "/serving-endpoints/fraud/invocations", "client": ("10.1.2.3", 4567)}
    log_access(scope, 200, 0.0012345, "req-7")
    direct = lines(log_stream)[-1]
    record = logging.getLogger("zeroserve.access").makeRecord(
        "zeroserve.access", logging.INFO, __file__, 0, "%s %s %d",
        ("POST", "/serving-endpoints/fraud/invocations", 200), None,
        extra={"method": "POST", "path": "/serving-endpoints/fraud/invocations", "status": 200,
               "duration_ms": 1.234, "principal": None, "client": "10.1.2.3", "request_id": "req-7"},
    )
    formatted = orjson.loads(JsonFormatter().format(record))
    assert list(direct) == list(formatted)
    assert {**direct, "ts": None} == {**formatted, "ts": None}


def test_an_access_line_formatted_when_written_keeps_the_time_it_was_logged(
    log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Access-log entries are formatted a batch at a time when the handler writes them out: the line's
    # time, principal and duration are those of the request, whatever happens until then.
    import router.observability.logging as logs

    monkeypatch.setattr(logs.time, "time", lambda: 1_700_000_000.25)  # 2023-11-14T22:13:20.250Z
    principal = type("Principal", (), {"name": "ada"})()
    scope = {"method": "POST", "path": "/serving-endpoints/fraud/invocations", "client": ("10.1.2.3", 4567),
             "zeroserve.principal": principal}
    log_access(scope, 201, 0.0025, "req-late")
    monkeypatch.undo()
    principal.name = "somebody else"
    (entry,) = lines(log_stream)
    assert entry["ts"] == "2023-11-14T22:13:20.250Z"
    assert (entry["principal"], entry["status"], entry["duration_ms"]) == ("ada", 201, 2.5)
    assert entry["message"] == "POST /serving-endpoints/fraud/invocations 201"


async def test_httpx_request_lines_stay_out_of_the_log(log_stream: io.StringIO) -> None:
    # The replica health probes go through httpx every two seconds; its per-request INFO lines would
    # drown the gateway's own log. Warnings still pass.
    async with client() as http:
        assert (await http.get("/hello")).status_code == 200
    logging.getLogger("httpx").warning("a real problem")
    logged = [(line["logger"], line["message"]) for line in lines(log_stream)]
    assert not any(name == "httpx" and "HTTP Request" in str(message) for name, message in logged)
    assert ("httpx", "a real problem") in logged
    assert ("zeroserve.test_app", "handling") in logged


class CountingStream(io.StringIO):
    """Counts write calls: on stderr (unbuffered, write-through) each one is a system call."""

    def __init__(self) -> None:
        super().__init__()
        self.write_calls = 0

    def write(self, text: str) -> int:
        self.write_calls += 1
        return super().write(text)


def test_access_lines_reach_the_stream_in_one_write_per_interval() -> None:
    stream = CountingStream()
    root = logging.getLogger()
    saved_level = root.level
    handler = configure_logging("INFO", stream=stream)
    try:
        scope = {"method": "POST", "path": "/serving-endpoints/x/invocations", "client": ("127.0.0.1", 1)}
        for index in range(100):
            log_access(scope, 200, 0.001, f"request-{index}")
        assert stream.write_calls == 0  # nothing written yet: the interval has not passed
        flush_logging()
        assert stream.write_calls == 1
        written = [orjson.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["request_id"] for line in written] == [f"request-{index}" for index in range(100)]

        # A warning goes out at once, after the lines logged before it.
        log_access(scope, 200, 0.001, "before-the-warning")
        app_logger.warning("something is wrong")
        tail = [orjson.loads(line) for line in stream.getvalue().splitlines()][-2:]
        assert [line.get("request_id") for line in tail[:1]] == ["before-the-warning"]
        assert tail[1]["message"] == "something is wrong" and stream.write_calls == 2
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)


def test_timestamps_are_utc_to_the_millisecond_across_second_boundaries() -> None:
    formatter = JsonFormatter()
    # The formatter remembers the last second and millisecond it wrote: go back and forth across them.
    expected = {
        1764867600.9994: "2025-12-04T17:00:00.999Z",
        1764867601.0004: "2025-12-04T17:00:01.000Z",
        1764867601.0009: "2025-12-04T17:00:01.000Z",
        1764867601.0011: "2025-12-04T17:00:01.001Z",
        1764867600.0: "2025-12-04T17:00:00.000Z",
        0.25: "1970-01-01T00:00:00.250Z",
    }
    for _ in range(2):
        for created, text in expected.items():
            assert formatter._timestamp(created) == text


def test_uvicorns_colour_copy_of_the_message_is_left_out() -> None:
    record = logging.getLogger("uvicorn.error").makeRecord(
        "uvicorn.error", logging.INFO, __file__, 1, "Started server process [%d]", (42,), None,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"})
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["message"] == "Started server process [42]" and "color_message" not in entry


def test_text_lines_for_a_person_at_a_terminal() -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", stream=stream, text=True)
    try:
        logging.getLogger("zeroserve.autoscaler").warning(
            "fraud/v3: replica %s exited", "r1", extra={"color_message": "\x1b[31mred\x1b[0m"})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("zeroserve.gateway").exception("tick failed")
        flush_logging()
    finally:
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    expected = r"\d\d:\d\d:\d\d warning zeroserve\.autoscaler: fraud/v3: replica r1 exited"
    assert re.fullmatch(expected, lines[0])
    assert lines[1].endswith("error zeroserve.gateway: tick failed")
    assert "RuntimeError: boom" in stream.getvalue()
    assert "\x1b" not in stream.getvalue() and "{" not in lines[0]
