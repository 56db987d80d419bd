"""Transfers from S3: parallel ranged GETs, retries through injected faults, nothing half-written."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import StoreError
from runtime.store import StoreSettings, StoreUnreachable, cache_stats, open_model
from runtime.store.testing import S3Proxy

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def big_blob() -> bytes:
    return os.urandom(64 * MiB)


def test_64_mib_object_through_parallel_ranged_gets_is_byte_identical(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings, big_blob: bytes
) -> None:
    s3.put_object(Bucket=bucket, Key="big/weights.bin", Body=big_blob)
    tuned = settings.model_copy(update={"part_size_bytes": 8 * MiB, "max_concurrency": 8})
    with open_model(f"s3://{bucket}/big", tuned) as handle:
        path = handle.path / "weights.bin"
        assert path.stat().st_size == len(big_blob)
        assert _sha256(path) == hashlib.sha256(big_blob).hexdigest()
        assert handle.manifest is not None
        assert handle.manifest.files[0].sha256 == hashlib.sha256(big_blob).hexdigest()
    assert proxy.counts["GET"] == 8
    assert sorted(proxy.ranges) == sorted(f"bytes={i * 8 * MiB}-{(i + 1) * 8 * MiB - 1}" for i in range(8))


def test_transfer_cut_mid_way_resumes_to_a_correct_result(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings
) -> None:
    data = os.urandom(5 * MiB + 123)
    s3.put_object(Bucket=bucket, Key="m/model.bin", Body=data)
    proxy.cut_gets(3, after_bytes=200_000)  # the first three GETs drop after 200 kB
    before = cache_stats().retries
    with open_model(f"s3://{bucket}/m", settings) as handle:
        assert (handle.path / "model.bin").read_bytes() == data
    assert cache_stats().retries - before == 3
    assert proxy.counts["GET"] == 6 + 3
    # A retry asks only for what is still missing: its range starts 200 kB into the part.
    resumed = [r for r in proxy.ranges if int(r[6:].split("-")[0]) % MiB == 200_000]
    assert len(resumed) == 3


def test_throttling_and_server_errors_are_retried(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings
) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.bin", Body=b"abc" * 1000)
    proxy.fail_gets(2, status=503)  # SlowDown
    proxy.fail_gets(1, status=500)
    with open_model(f"s3://{bucket}/m", settings) as handle:
        assert (handle.path / "model.bin").read_bytes() == b"abc" * 1000
    assert proxy.counts["GET"] == 4


def test_persistent_failure_fails_cleanly_and_publishes_nothing(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings
) -> None:
    data = os.urandom(3 * MiB)
    s3.put_object(Bucket=bucket, Key="m/model.bin", Body=data)
    proxy.cut_gets(100, after_bytes=0)  # every GET dies before its first byte
    with pytest.raises(StoreUnreachable, match=r"model\.bin: transfer failed 4 times"):
        open_model(f"s3://{bucket}/m", settings)
    cache = settings.cache_dir
    assert list((cache / "versions").iterdir()) == []
    assert list((cache / "tmp").iterdir()) == []  # no half-written file left behind
    assert [p for p in (cache / "blobs").rglob("*") if p.is_file()] == []
    # Once the store recovers, the same URI fetches normally.
    proxy.clear_faults()
    with open_model(f"s3://{bucket}/m", settings) as handle:
        assert (handle.path / "model.bin").read_bytes() == data


def test_access_errors_are_not_retried(s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.bin", Body=b"x")
    proxy.fail_gets(1, status=403)
    with pytest.raises(StoreError, match="AccessDenied"):
        open_model(f"s3://{bucket}/m", settings)
    assert proxy.counts["GET"] == 1


def test_bytes_failing_the_stores_checksum_are_fetched_again(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings
) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.bin", Body=b"precious weights")  # stored with a CRC32
    proxy.corrupt_gets(1)
    with open_model(f"s3://{bucket}/m", settings) as handle:
        assert (handle.path / "model.bin").read_bytes() == b"precious weights"
    assert proxy.counts["GET"] == 2


def test_bytes_not_matching_the_md5_etag_are_rejected(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings, moto_endpoint: str
) -> None:
    import boto3
    from botocore.config import Config

    # Without a stored checksum the single-part ETag (the content's MD5) is the only reference.
    plain = boto3.client(
        "s3",
        endpoint_url=f"http://{moto_endpoint}",
        config=Config(request_checksum_calculation="when_required"),
    )
    plain.put_object(Bucket=bucket, Key="m/model.bin", Body=b"precious weights")
    proxy.corrupt_gets(1)
    with pytest.raises(StoreError, match=r"model\.bin: MD5 .* does not match ETag"):
        open_model(f"s3://{bucket}/m", settings)
    assert list((settings.cache_dir / "versions").iterdir()) == []
    with open_model(f"s3://{bucket}/m", settings) as handle:  # the next attempt gets good bytes
        assert (handle.path / "model.bin").read_bytes() == b"precious weights"


def test_object_replaced_during_the_transfer_is_refused(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings
) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.bin", Body=b"version one")

    def overwrite() -> None:  # between the listing and the GET: If-Match must catch it
        proxy.before_get = None
        s3.put_object(Bucket=bucket, Key="m/model.bin", Body=b"version two!")

    proxy.before_get = overwrite
    with pytest.raises(StoreError, match="changed while it was being fetched"):
        open_model(f"s3://{bucket}/m", settings)
    with open_model(f"s3://{bucket}/m", settings) as handle:
        assert (handle.path / "model.bin").read_bytes() == b"version two!"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()
