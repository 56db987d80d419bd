"""A real S3-compatible server for the store tests: moto on loopback, behind a counting proxy."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.store import StoreSettings
from runtime.store.testing import S3Proxy

_DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    saved = {k: os.environ.get(k) for k in _DUMMY_AWS}
    os.environ.update(_DUMMY_AWS)  # never reach for real credentials
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    for key, value in _DUMMY_AWS.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "ZEROSERVE_S3_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[S3Proxy]:
    with S3Proxy(moto_endpoint) as running:
        yield running


@pytest.fixture
def s3(aws_env: None, moto_endpoint: str) -> Any:
    """A boto3 client talking to moto directly (setup traffic stays out of the proxy's counts)."""
    import boto3

    return boto3.client("s3", endpoint_url=f"http://{moto_endpoint}", region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any, request: pytest.FixtureRequest) -> str:
    name = "models-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def settings(tmp_path: Path, proxy: S3Proxy, aws_env: None) -> StoreSettings:
    return StoreSettings(
        cache_dir=tmp_path / "cache",
        s3_endpoint_url=proxy.endpoint_url,
        s3_addressing_style="path",
        part_size_bytes=1024 * 1024,
        max_concurrency=4,
        retry_attempts=4,
        retry_backoff_s=0.01,
        retry_backoff_max_s=0.05,
        connect_timeout_s=2,
        read_timeout_s=20,
    )


def upload_tree(s3: Any, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)
