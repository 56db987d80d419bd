"""Transport security over real sockets: HTTPS with a certificate the test makes, TLS < 1.2 refused,
request heads bounded in size and time, X-Forwarded-* believed only from trusted proxies."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.types import Receive, Scope, Send

from router.auth.tls import insecure_bind_error, is_loopback, trusted_proxy_app, uvicorn_options
from tests.router.auth.conftest import running_server


async def whoami(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with what the server believes about the client: address and scheme."""
    if scope["type"] != "http":
        return
    body = f"{scope['client'][0]} {scope['scheme']}".encode()
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zeroserve test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def https_port(certificate: tuple[Path, Path]) -> Iterator[int]:
    cert_path, key_path = certificate
    options = uvicorn_options(ssl_certfile=str(cert_path), ssl_keyfile=str(key_path))
    with running_server(whoami, harden=True, **options) as port:
        yield port


def client_context(cert_path: Path, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert_path))
    if version is not None:
        # Let the client offer old versions at all (OpenSSL 3 refuses them at its default level).
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = version
        context.maximum_version = version
    return context


def test_https_with_the_test_certificate(https_port: int, certificate: tuple[Path, Path]) -> None:
    cert_path, _ = certificate
    response = httpx.get(f"https://127.0.0.1:{https_port}/", verify=client_context(cert_path), timeout=5)
    assert response.status_code == 200
    assert response.text == "127.0.0.1 https"
    with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw, \
            client_context(cert_path).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_tls12_is_accepted(https_port: int, certificate: tuple[Path, Path]) -> None:
    context = client_context(certificate[0], ssl.TLSVersion.TLSv1_2)
    with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.2"
        cipher = tls.cipher()
        assert cipher is not None and ("GCM" in cipher[0] or "CHACHA20" in cipher[0])


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # offering them is the point
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["tls1.0", "tls1.1"])
def test_old_tls_is_refused(https_port: int, certificate: tuple[Path, Path], version: ssl.TLSVersion) -> None:
    context = client_context(certificate[0], version)
    raw = socket.create_connection(("127.0.0.1", https_port), timeout=5)
    with raw, pytest.raises(ssl.SSLError) as err:
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    # The server's refusal, not the client's inability to offer the version.
    # (the server alerts or hangs up; a client unable to offer the version would say NO_PROTOCOLS_AVAILABLE).
    refused = isinstance(err.value, ssl.SSLEOFError) or "PROTOCOL_VERSION" in str(err.value)
    assert refused and "NO_PROTOCOLS_AVAILABLE" not in str(err.value), err.value
    httpx.get(f"https://127.0.0.1:{https_port}/", verify=client_context(certificate[0]), timeout=5)


def test_untrusted_certificate_is_rejected_by_clients(https_port: int) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://127.0.0.1:{https_port}/", timeout=5)


def test_options_need_both_files() -> None:
    with pytest.raises(ValueError, match="both"):
        uvicorn_options(ssl_certfile="cert.pem")


def head_exchange(port: int, data: bytes, wait_s: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


@pytest.fixture(scope="module")
def limited_port() -> Iterator[int]:
    with running_server(whoami, **uvicorn_options(max_header_bytes=8192, header_timeout_s=0.5)) as port:
        yield port


def test_oversized_head_is_refused_431(limited_port: int) -> None:
    # Sent in pieces, as a client would stream a huge header.
    with socket.create_connection(("127.0.0.1", limited_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ")
        try:
            for _ in range(100):
                sock.sendall(b"a" * 4096)
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 431")
    assert httpx.get(f"http://127.0.0.1:{limited_port}/", timeout=5).status_code == 200


def test_normal_heads_pass_and_keep_alive_works(limited_port: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{limited_port}", timeout=5) as client:
        for _ in range(3):
            assert client.get("/", headers={"x-ok": "b" * 4000}).status_code == 200


def test_trickled_head_times_out(limited_port: int) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", limited_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        answer = b""
        try:
            for _ in range(40):
                sock.sendall(b"x-slow: 1\r\n")  # keeps the connection busy, never finishes the head
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        with contextlib.suppress(ConnectionResetError):
            answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [(["127.0.0.1"], "203.0.113.9 https"), (["127.0.0.0/8"], "203.0.113.9 https"),
     (["10.0.0.0/8"], "127.0.0.1 http"), ([], "127.0.0.1 http")],
    ids=["trusted-ip", "trusted-network", "untrusted", "none-configured"],
)
def test_forwarded_headers_only_from_trusted_proxies(trusted: list[str], expected: str) -> None:
    with running_server(trusted_proxy_app(whoami, trusted), **uvicorn_options()) as port:
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=5,
                             headers={"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"})
    assert response.text == expected


def test_bad_trusted_proxy_is_rejected() -> None:
    with pytest.raises(ValueError):
        trusted_proxy_app(whoami, ["not-an-ip"])


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.5.5.5", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.4", False), ("example.com", False)],
)
def test_insecure_mode_binds_to_loopback_only(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert (insecure_bind_error(host) is None) is loopback


stream_may_continue = threading.Event()


async def shapes(scope: Scope, receive: Receive, send: Send) -> None:
    """Fixed-length, streamed and failing responses, to check how their heads reach the client."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if scope["method"] == "POST":
        while (await receive()).get("more_body"):
            pass
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(500):  # the client must see the head before the first chunk exists
            if stream_may_continue.is_set():
                break
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"chunk", "more_body": False})
        return
    headers = [(b"content-length", b"5")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if path == "/fail":
        raise RuntimeError("the app fails after starting its response")
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.fixture(scope="module")
def shapes_port() -> Iterator[int]:
    with running_server(shapes, **uvicorn_options()) as port:
        yield port


def test_fixed_length_response_is_one_write(shapes_port: int) -> None:
    with socket.create_connection(("127.0.0.1", shapes_port), timeout=5) as sock:
        for _ in range(2):  # and again on the kept-alive connection
            sock.sendall(b"GET /plain HTTP/1.1\r\nhost: x\r\n\r\n")
            first = sock.recv(65536)  # a single write arrives whole on loopback; two writes need not
            assert first.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"content-length: 5\r\n" in first
            assert first.endswith(b"\r\n\r\nhello")


def test_head_request_gets_its_head_without_body(shapes_port: int) -> None:
    answer = head_exchange(shapes_port, b"HEAD /plain HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"content-length: 5\r\nconnection: close\r\n\r\n")


def test_streamed_head_is_not_held_back(shapes_port: int) -> None:
    stream_may_continue.clear()
    with socket.create_connection(("127.0.0.1", shapes_port), timeout=3) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        head = sock.recv(65536)  # times out if the head waits for the first chunk
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert head.endswith(b"transfer-encoding: chunked\r\n\r\n")
        stream_may_continue.set()
        rest = b""
        while not rest.endswith(b"0\r\n\r\n"):
            rest += sock.recv(65536)
    assert rest == b"5\r\nchunk\r\n0\r\n\r\n"


def test_failing_app_still_sends_the_head_it_started(shapes_port: int) -> None:
    answer = head_exchange(shapes_port, b"GET /fail HTTP/1.1\r\nhost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"content-length: 5\r\n\r\n")  # then the connection closes


def test_expect_100_continue(shapes_port: int) -> None:
    with socket.create_connection(("127.0.0.1", shapes_port), timeout=5) as sock:
        sock.sendall(b"POST /plain HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        answer = b""
        while not answer.endswith(b"hello"):
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
