"""``python -m runtime`` as a real process: readiness line, HTTP, drain on SIGTERM, load failures."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from runtime.examples import logreg_rows
from runtime.store.uri import name_from_uri
from tests.runtime.conftest import ReplicaProcess

ROW = logreg_rows(20, 1).tolist()


def test_serves_an_onnx_model_by_uri(onnx_model: Path, start_replica: Callable[..., ReplicaProcess]) -> None:
    replica = start_replica("--model-uri", onnx_model.as_uri(), "--port", "0", "--name", "scorer")
    assert replica.port > 0
    with httpx.Client(base_url=replica.url, timeout=10) as client:
        assert client.get("/v2/health/ready").json() == {"ready": True}
        answer = client.post("/invocations", json={"inputs": ROW})
        assert answer.status_code == 200 and set(answer.json()["predictions"]) == {"label", "probabilities"}
        assert client.get("/v2/models/scorer").json()["platform"] == "onnx"


def test_ready_line_says_which_path_serves_the_model(
    onnx_model: Path, sklearn_model: Path, start_replica: Callable[..., ReplicaProcess]
) -> None:
    graph = start_replica("--model-uri", str(onnx_model))
    assert graph.announced["optimization"] == {
        "path": "onnx", "mode": "auto", "reason": "the model is an ONNX graph; nothing to convert"
    }
    native = start_replica("--model-uri", str(sklearn_model), "--optimization", "off")
    assert native.announced["optimization"] == {
        "path": "native", "mode": "off", "reason": "optimization is off"
    }
    assert set(native.announced) == {"port", "pid", "cache", "optimization"}


def test_sigterm_finishes_in_flight_requests_then_exits_0(
    onnx_model: Path, start_replica: Callable[..., ReplicaProcess]
) -> None:
    replica = start_replica("--model-uri", str(onnx_model), "--drain-timeout", "10")
    body = orjson.dumps({"inputs": ROW})
    # Expect: 100-continue makes the replica say when it has the request (uvicorn sends the interim
    # answer when the app first reads the body): then the signal surely finds a request in flight.
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: replica\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", replica.port), timeout=10) as conn:
        conn.sendall(head)
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += conn.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100")
        replica.process.send_signal(signal.SIGTERM)

        def refusing() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", replica.port)) != 0

        deadline = time.monotonic() + 10
        while not refusing():  # draining: no longer accepting...
            assert time.monotonic() < deadline, "the replica still accepts connections 10 s after SIGTERM"
            time.sleep(0.02)
        assert replica.process.poll() is None  # ...but not gone: a request is in flight
        conn.sendall(body)
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 200")
    assert b'"predictions"' in response
    assert replica.process.wait(timeout=15) == 0


def _answer(conn: socket.socket) -> bytes:
    """One whole answer with a Content-Length body read from ``conn`` (b"" when it closes first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += conn.recv(65536)
    return data


def test_draining_a_request_on_an_idle_keep_alive_connection_is_served_and_the_connection_closed(
    onnx_model: Path, start_replica: Callable[..., ReplicaProcess]
) -> None:
    # A router may write a request on its pooled connection just as the replica starts draining (a pod
    # deleted before the router has heard): it must be answered, not cut off.
    replica = start_replica("--model-uri", str(onnx_model), "--drain-timeout", "10")
    body = orjson.dumps({"inputs": ROW})
    request = (f"POST /invocations HTTP/1.1\r\nHost: replica\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with (socket.create_connection(("127.0.0.1", replica.port), timeout=10) as used,
          socket.create_connection(("127.0.0.1", replica.port), timeout=10) as idle):
        for conn in (used, idle):
            conn.sendall(request)
            first = _answer(conn)
            assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
        replica.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # draining once it stops accepting connections
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", replica.port)) != 0:
                    break
            assert time.monotonic() < deadline, "the replica still accepts connections 10 s after SIGTERM"
            time.sleep(0.02)
        used.sendall(request)
        answer = _answer(used)
        assert answer.startswith(b"HTTP/1.1 200") and b'"predictions"' in answer, answer
        assert b"connection: close" in answer.lower()
        assert used.recv(1) == b""  # and then it is closed
        started = time.monotonic()
        assert idle.recv(1) == b""  # the connection that stayed idle is closed after the linger
        assert time.monotonic() - started < 5
    assert replica.process.wait(timeout=15) == 0


def test_unix_socket_serves_the_same_routes_owner_only_and_is_removed_on_exit(
    onnx_model: Path, start_replica: Callable[..., ReplicaProcess], tmp_path: Path
) -> None:
    path = tmp_path / "replica.sock"
    replica = start_replica("--model-uri", str(onnx_model), "--name", "scorer", "--unix-socket", str(path))
    assert replica.announced["unix_socket"] == str(path)
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600  # a replica has no auth of its own
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, base_url="http://replica", timeout=10) as client:
        answer = client.post("/invocations", json={"inputs": ROW})
        assert answer.status_code == 200 and set(answer.json()["predictions"]) == {"label", "probabilities"}
        assert client.get("/v2/models/scorer/ready").status_code == 200
    with httpx.Client(base_url=replica.url, timeout=10) as client:  # and TCP as before
        assert client.post("/invocations", json={"inputs": ROW}).status_code == 200
    replica.process.send_signal(signal.SIGTERM)
    assert replica.process.wait(timeout=15) == 0
    assert not path.exists()


def test_a_stale_unix_socket_file_is_replaced(
    onnx_model: Path, start_replica: Callable[..., ReplicaProcess], tmp_path: Path
) -> None:
    path = tmp_path / "replica.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # what a replica killed with SIGKILL leaves behind
    stale.close()
    replica = start_replica("--model-uri", str(onnx_model), "--unix-socket", str(path))
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=10) as client:
        assert client.get("http://replica/v2/health/ready").json() == {"ready": True}
    assert replica.announced["unix_socket"] == str(path)


def test_a_unix_socket_path_too_long_is_a_usage_error(onnx_model: Path, tmp_path: Path) -> None:
    path = tmp_path / ("s" * 120)
    result = _run("--model-uri", str(onnx_model), "--unix-socket", str(path))
    assert result.returncode == 2
    assert "--unix-socket path is longer than 103 bytes" in result.stderr and str(path) in result.stderr


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_model_that_cannot_be_fetched_exits_1_naming_the_uri(tmp_path: Path) -> None:
    uri = (tmp_path / "no-such-model").as_uri()
    result = _run("--model-uri", uri)
    assert result.returncode == 1
    assert uri in result.stderr and "ZEROSERVE_REPLICA_READY" not in result.stdout


def test_a_model_that_cannot_be_loaded_exits_1_naming_the_uri(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.onnx").write_bytes(b"not an onnx graph")
    result = _run("--model-uri", str(tmp_path / "broken"))
    assert result.returncode == 1
    assert "cannot load model" in result.stderr and str(tmp_path / "broken") in result.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("no model here")
    result = _run("--model-uri", str(tmp_path / "empty"))
    assert result.returncode == 1 and "no model found" in result.stderr


def test_invalid_settings_are_a_usage_error(onnx_model: Path) -> None:
    result = _run("--model-uri", str(onnx_model), "--concurrency", "0")
    assert result.returncode == 2 and "concurrency" in result.stderr


def test_served_names_from_uris() -> None:
    assert name_from_uri("models:/churn/3") == "churn"
    assert name_from_uri("s3://bucket/models/churn.onnx") == "churn"
    assert name_from_uri("file:///srv/models/fraud/") == "fraud"
    assert name_from_uri("runs:/abc123/model") == "model"
