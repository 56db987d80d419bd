"""The upstream client against real loopback servers: uvicorn for normal traffic, scripted raw TCP
servers for the protocol edge cases (stale keep-alive, resets, chunked and close-delimited bodies)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router.dataplane.proxy import (
    UpstreamConnectError,
    UpstreamLost,
    UpstreamPool,
    UpstreamProtocolError,
    forwardable,
)
from router.errors import UpstreamTimeout
from tests.router._servers import echo_replica, free_port, raw_server, read_request


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    upstream = UpstreamPool()
    try:
        yield upstream
    finally:
        await upstream.aclose()


async def test_keep_alive_connection_is_reused(pool: UpstreamPool) -> None:
    async with echo_replica("r1") as replica:
        ports = set()
        for index in range(5):
            body = b'{"inputs": [%d]}' % index
            headers = [(b"content-type", b"application/json")]
            response = await pool.request(
                "127.0.0.1", replica.port, "POST", "/invocations", headers, body, timeout_s=5
            )
            assert response.status == 200 and response.body == body
            assert (b"content-type", b"application/json") in response.headers
            ports.add(dict(response.headers)[b"x-client-port"])
        assert len(ports) == 1  # one connection for all five
        assert pool.idle_connections() == 1


async def test_a_replica_with_a_unix_socket_is_reached_there(pool: UpstreamPool, tmp_path: Path) -> None:
    path = str(tmp_path / "r1.sock")
    async with echo_replica("r1", unix_socket=path) as replica:
        for index in range(3):
            body = b'{"inputs": [%d]}' % index
            response = await pool.request(
                "127.0.0.1", replica.port, "POST", "/invocations", [], body, timeout_s=5, unix_socket=path
            )
            assert response.status == 200 and response.body == body
            assert dict(response.headers)[b"x-client-port"] == b"unix"  # not over TCP
        assert pool.idle_connections() == 1  # kept alive and reused, as over TCP
        over_tcp = await pool.request(
            "127.0.0.1", replica.port, "POST", "/invocations", [], b"x", timeout_s=5
        )
        assert dict(over_tcp.headers)[b"x-client-port"] != b"unix"
        assert pool.idle_connections() == 2  # pooled apart: one per address


async def test_a_replica_whose_socket_file_vanished_is_reached_over_tcp(
    pool: UpstreamPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "r1.sock"
    async with echo_replica("r1", unix_socket=str(path)) as replica:
        first = await pool.request("127.0.0.1", replica.port, "POST", "/invocations", [], b"a",
                                   timeout_s=5, unix_socket=str(path))
        assert dict(first.headers)[b"x-client-port"] == b"unix"
        fresh = UpstreamPool()  # no pooled connection to hide the missing file
        try:
            path.unlink()  # e.g. a tmp cleaner; the replica itself is fine
            for body in (b"b", b"c"):
                response = await fresh.request("127.0.0.1", replica.port, "POST", "/invocations", [], body,
                                              timeout_s=5, unix_socket=str(path))
                assert response.status == 200 and response.body == body
                assert dict(response.headers)[b"x-client-port"] != b"unix"
            gone = [record for record in caplog.records if "r1.sock" in record.getMessage()]
            assert len(gone) == 1 and "over TCP" in gone[0].getMessage()  # said once, then TCP directly
        finally:
            await fresh.aclose()


async def test_a_missing_socket_and_no_tcp_listener_is_a_connect_error(
    pool: UpstreamPool, tmp_path: Path
) -> None:
    path = str(tmp_path / "gone.sock")
    port = free_port()
    with pytest.raises(UpstreamConnectError, match=rf"127\.0\.0\.1:{port}"):
        await pool.request("127.0.0.1", port, "GET", "/", [], b"", timeout_s=5, unix_socket=path)


async def test_a_socket_with_nobody_listening_is_a_connect_error_naming_it(
    pool: UpstreamPool, tmp_path: Path
) -> None:
    # The file exists but its replica died (SIGKILL leaves it behind): no TCP detour, a plain failure.
    import socket

    path = str(tmp_path / "dead.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.close()
    with pytest.raises(UpstreamConnectError, match=r"dead\.sock"):
        await pool.request("127.0.0.1", free_port(), "GET", "/", [], b"", timeout_s=5, unix_socket=path)


async def test_concurrent_requests_open_parallel_connections(pool: UpstreamPool) -> None:
    async with echo_replica("r1", delay_s=0.05) as replica:
        responses = await asyncio.gather(
            *(
                pool.request("127.0.0.1", replica.port, "POST", "/invocations", [], b"x", timeout_s=5)
                for _ in range(4)
            )
        )
        assert {dict(r.headers)[b"x-client-port"] for r in responses}.__len__() == 4
        assert replica.max_in_flight == 4


async def test_chunked_response_is_decoded(pool: UpstreamPool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        await reader.read()  # keep the connection until the client closes it

    async with raw_server(script) as port:
        response = await pool.request("127.0.0.1", port, "GET", "/x", [], b"", timeout_s=5)
    assert response.body == b"hello world"


async def test_close_delimited_response_reads_to_eof(pool: UpstreamPool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    async with raw_server(script) as port:
        response = await pool.request("127.0.0.1", port, "GET", "/x", [], b"", timeout_s=5)
    assert response.body == b"all of it"
    assert pool.idle_connections() == 0


async def test_connection_refused_is_a_retryable_connect_error(pool: UpstreamPool) -> None:
    with pytest.raises(UpstreamConnectError, match="cannot connect"):
        await pool.request("127.0.0.1", free_port(), "POST", "/invocations", [], b"{}", timeout_s=5)


async def test_a_close_after_the_request_arrived_is_lost_not_retryable(pool: UpstreamPool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # then hang up without a word, as a replica that crashed on it

    async with raw_server(script) as port:
        with pytest.raises(UpstreamLost, match="while serving the request, without answering"):
            await pool.request("127.0.0.1", port, "POST", "/invocations", [], b"{}", timeout_s=5)


async def test_stale_idle_connection_is_replaced_transparently(pool: UpstreamPool) -> None:
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # Keep-alive was promised, but the server closes once the client has sent its next request.
        await reader.read(1)

    async with raw_server(script) as port:
        for _ in range(3):
            response = await pool.request("127.0.0.1", port, "POST", "/invocations", [], b"{}", timeout_s=5)
            assert response.body == b"ok"
    assert connections == 3


async def test_connections_of_replicas_that_went_away_are_not_kept() -> None:
    # Found by the soak: each replica that scaled away left its closed connections listed under its
    # address, never asked for again — a leak of one parser and its buffers per connection per cold start.
    pool = UpstreamPool(idle_timeout_s=0.2)
    try:
        async with echo_replica("r1") as r1, echo_replica("r2") as r2, echo_replica("r3") as r3:
            for replica in (r1, r2, r3):
                await pool.request("127.0.0.1", replica.port, "POST", "/invocations", [], b"{}", timeout_s=5)
        assert pool.idle_connections() == 3  # the replicas are gone; their connections are still listed
        await asyncio.sleep(0.25)
        async with echo_replica("r4") as replica:
            await pool.request("127.0.0.1", replica.port, "POST", "/invocations", [], b"{}", timeout_s=5)
            assert pool.idle_connections() == 1  # a sweep ran: only the live replica's is left
    finally:
        await pool.aclose()


async def test_reset_mid_response_is_a_protocol_error(pool: UpstreamPool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async with raw_server(script) as port:
        with pytest.raises(UpstreamProtocolError, match="mid-response"):
            await pool.request("127.0.0.1", port, "POST", "/invocations", [], b"{}", timeout_s=5)


async def test_garbage_response_is_a_protocol_error(pool: UpstreamPool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SPDY/9 what\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(script) as port:
        with pytest.raises(UpstreamProtocolError, match="malformed"):
            await pool.request("127.0.0.1", port, "GET", "/", [], b"", timeout_s=5)


async def test_timeout_answers_504_and_drops_the_connection(pool: UpstreamPool) -> None:
    async with echo_replica("slow", delay_s=0.5) as replica:
        with pytest.raises(UpstreamTimeout) as caught:
            await pool.request("127.0.0.1", replica.port, "POST", "/invocations", [], b"{}", timeout_s=0.1)
        assert caught.value.status_code == 504
        assert pool.idle_connections() == 0


async def test_each_exchange_times_out_at_its_own_deadline(pool: UpstreamPool) -> None:
    # The pool's one timer is set for a 5 s deadline first; a later exchange with a 0.1 s deadline
    # must still fail on time, and the long one must not be disturbed.
    async with echo_replica("slow") as replica:
        port = replica.port
        loop = asyncio.get_running_loop()
        long_wait = asyncio.ensure_future(
            pool.request("127.0.0.1", port, "POST", "/invocations?sleep=0.4", [], b"{}", timeout_s=5)
        )
        await asyncio.sleep(0.05)
        began = loop.time()
        with pytest.raises(UpstreamTimeout, match=r"0\.1 s"):
            await pool.request("127.0.0.1", port, "POST", "/invocations?sleep=1", [], b"{}", timeout_s=0.1)
        assert 0.09 <= loop.time() - began < 0.7  # well before the 1 s answer and the 5 s deadline
        assert (await long_wait).status == 200
        # After the sweeps, a new short deadline is enforced again.
        began = loop.time()
        with pytest.raises(UpstreamTimeout):
            await pool.request("127.0.0.1", port, "POST", "/invocations?sleep=1", [], b"{}", timeout_s=0.2)
        assert 0.19 <= loop.time() - began < 0.8


async def test_closed_pool_refuses_requests() -> None:
    pool = UpstreamPool()
    async with echo_replica("r1") as replica:
        await pool.request("127.0.0.1", replica.port, "GET", "/v2/models/m", [], b"", timeout_s=5)
        assert pool.idle_connections() == 1
        await pool.aclose()
        assert pool.idle_connections() == 0
        with pytest.raises(UpstreamConnectError, match="closed"):
            await pool.request("127.0.0.1", replica.port, "GET", "/v2/models/m", [], b"", timeout_s=5)


def test_forwardable_drops_hop_by_hop_headers() -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"host", b"gateway"),
        (b"content-length", b"10"),
        (b"inference-header-content-length", b"42"),
    ]
    assert forwardable(headers) == [
        (b"content-type", b"application/json"),
        (b"inference-header-content-length", b"42"),
    ]
