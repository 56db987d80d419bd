"""Fetching model versions through the cache, against a real S3-compatible server (moto)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import StoreError
from runtime.store import StoreSettings, cache_stats, fetch_model, open_model
from runtime.store.cache import Cache
from runtime.store.testing import S3Proxy
from tests.runtime.store.conftest import upload_tree

MODEL = {
    "MLmodel": b"flavors:\n  python_function: {}\n",
    "model.onnx": os.urandom(300_000),
    "data/weights.bin": os.urandom(2_500_000),  # > part size: fetched as ranged parts
    "data/empty.txt": b"",
}


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_directory_fetch_lays_out_the_files(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings
) -> None:
    upload_tree(s3, bucket, "churn/v1", MODEL)
    with open_model(f"s3://{bucket}/churn/v1", settings) as handle:
        assert read_tree(handle.path) == MODEL
        assert handle.pinned
        assert handle.manifest is not None and handle.manifest.total_bytes == sum(map(len, MODEL.values()))
    # Three non-empty files, the 2.5 MB one in three 1 MiB ranges; the empty file needs no GET.
    assert proxy.counts["GET"] == 2 + 3
    assert proxy.counts["LIST"] == 1


def test_second_fetch_makes_no_get(s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings) -> None:
    upload_tree(s3, bucket, "m", MODEL)
    first = open_model(f"s3://{bucket}/m", settings)
    proxy.reset()
    before = cache_stats()
    second = open_model(f"s3://{bucket}/m", settings)
    assert second.path == first.path and second.from_cache
    assert proxy.counts["GET"] == 0
    assert proxy.counts["LIST"] == 1  # the freshness check of a mutable prefix
    assert cache_stats().hits == before.hits + 1
    first.close()
    second.close()


async def test_async_fetch_of_a_single_object(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings
) -> None:
    s3.put_object(Bucket=bucket, Key="onnx/model.onnx", Body=MODEL["model.onnx"])
    s3.put_object(Bucket=bucket, Key="onnx/model.onnx.bak", Body=b"not this one")
    with await fetch_model(f"s3://{bucket}/onnx/model.onnx", settings) as handle:
        assert read_tree(handle.path) == {"model.onnx": MODEL["model.onnx"]}


def test_changed_prefix_is_a_new_version_reusing_unchanged_blobs(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings
) -> None:
    upload_tree(s3, bucket, "m", MODEL)
    old = open_model(f"s3://{bucket}/m", settings)
    s3.put_object(Bucket=bucket, Key="m/model.onnx", Body=b"retrained")
    proxy.reset()
    new = open_model(f"s3://{bucket}/m", settings)
    assert new.version_key != old.version_key
    assert (new.path / "model.onnx").read_bytes() == b"retrained"
    assert (old.path / "model.onnx").read_bytes() == MODEL["model.onnx"]  # still pinned, still there
    assert proxy.counts["GET"] == 1  # only the changed object
    # The unchanged 2.5 MB file is one blob linked from both trees.
    assert os.stat(new.path / "data/weights.bin").st_ino == os.stat(old.path / "data/weights.bin").st_ino
    old.close()
    new.close()


def test_version_id_uri_is_immutable_and_costs_nothing_once_cached(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings
) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(Bucket=bucket, Key="model.bin", Body=b"v1")["VersionId"]
    s3.put_object(Bucket=bucket, Key="model.bin", Body=b"v2 overwrites the key")
    uri = f"s3://{bucket}/model.bin?versionId={version}"
    with open_model(uri, settings) as handle:
        assert (handle.path / "model.bin").read_bytes() == b"v1"
    proxy.reset()
    with open_model(uri, settings) as handle:
        assert (handle.path / "model.bin").read_bytes() == b"v1"
    assert sum(proxy.counts.values()) == 0  # not even a listing


def test_missing_prefix_is_an_error_naming_the_uri(bucket: str, settings: StoreSettings) -> None:
    with pytest.raises(StoreError, match=f"s3://{bucket}/nope"):
        open_model(f"s3://{bucket}/nope", settings)
    with pytest.raises(StoreError, match="NoSuchBucket"):
        open_model("s3://no-such-bucket-here/m", settings)


def test_store_down_serves_the_cached_copy(
    s3: Any, bucket: str, settings: StoreSettings, caplog: pytest.LogCaptureFixture
) -> None:
    upload_tree(s3, bucket, "m", MODEL)
    open_model(f"s3://{bucket}/m", settings).close()
    down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{_closed_port()}"})
    before = cache_stats().offline_fallbacks
    with open_model(f"s3://{bucket}/m", down) as handle:
        assert read_tree(handle.path) == MODEL
    assert cache_stats().offline_fallbacks == before + 1
    assert "store unreachable" in caplog.text


def test_store_down_without_a_cached_copy_fails_naming_uri_and_cause(
    bucket: str, settings: StoreSettings
) -> None:
    down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{_closed_port()}"})
    with pytest.raises(StoreError, match=rf"s3://{bucket}/m and no cached copy.*(Connect|connect)"):
        open_model(f"s3://{bucket}/m", down)


@pytest.mark.parametrize("damage", ["truncate", "same-size-edit", "delete"])
def test_corrupted_cache_entry_is_fetched_again(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings, damage: str
) -> None:
    upload_tree(s3, bucket, "m", MODEL)
    with open_model(f"s3://{bucket}/m", settings) as handle:
        victim = handle.path / "model.onnx"
    os.chmod(victim, 0o644)  # cache files are read-only; the damage is deliberate
    if damage == "truncate":
        with open(victim, "r+b") as f:
            f.truncate(1000)
    elif damage == "same-size-edit":
        with open(victim, "r+b") as f:
            f.write(b"\0" * 16)
    else:
        victim.unlink()
    proxy.reset()
    before = cache_stats().corrupt_refetches
    with open_model(f"s3://{bucket}/m", settings) as handle:
        assert read_tree(handle.path) == MODEL
    assert proxy.counts["GET"] == 1  # just the damaged file
    assert cache_stats().corrupt_refetches == before + 1


def test_full_verification_catches_an_edit_that_restored_the_mtime(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings
) -> None:
    upload_tree(s3, bucket, "m", MODEL)
    with open_model(f"s3://{bucket}/m", settings) as handle:
        victim = handle.path / "MLmodel"
    stat = victim.stat()
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as f:
        f.write(b"X")
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with open_model(f"s3://{bucket}/m", settings) as handle:  # "stat" verification is fooled...
        assert (handle.path / "MLmodel").read_bytes() != MODEL["MLmodel"]
    full = settings.model_copy(update={"cache_verify": "full"})
    with open_model(f"s3://{bucket}/m", full) as handle:  # ...a full check is not
        assert read_tree(handle.path) == MODEL


def test_four_processes_fetching_at_once_download_once(
    s3: Any, bucket: str, proxy: S3Proxy, settings: StoreSettings, tmp_path: Path
) -> None:
    upload_tree(s3, bucket, "m", MODEL)
    script = textwrap.dedent(
        f"""
        from runtime.store import StoreSettings, open_model
        settings = StoreSettings.model_validate_json({settings.model_dump_json()!r})
        handle = open_model("s3://{bucket}/m", settings)
        print(handle.version_key, handle.from_cache)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(4)
    ]
    results = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err.decode()
            results.append(out.decode().split())
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert len({key for key, _ in results}) == 1
    assert sorted(hit for _, hit in results) == ["False", "True", "True", "True"]
    assert proxy.counts["GET"] == 2 + 3  # one download's worth, not four


def test_local_directory_is_served_in_place(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "sub" / "a.txt").write_text("a")
    settings = StoreSettings(cache_dir=tmp_path / "cache")
    with open_model(model.as_uri(), settings) as by_uri, open_model(str(model), settings) as by_path:
        assert by_uri.path == by_path.path == model
        assert by_uri.version_key == by_path.version_key
    (model / "sub" / "a.txt").write_text("changed")
    assert open_model(str(model), settings).version_key != by_uri.version_key


def test_local_single_file_is_copied_into_the_cache(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"onnx bytes")
    settings = StoreSettings(cache_dir=tmp_path / "cache")
    with open_model(source.as_uri(), settings) as handle:
        assert read_tree(handle.path) == {"model.onnx": b"onnx bytes"}
        assert handle.path.is_relative_to(tmp_path / "cache")


def test_missing_local_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_model(str(tmp_path / "absent"), StoreSettings(cache_dir=tmp_path / "cache"))


def test_open_model_works_inside_a_running_event_loop(tmp_path: Path) -> None:
    import asyncio

    source = tmp_path / "m.bin"
    source.write_bytes(b"x")

    async def main() -> bytes:
        with open_model(str(source), StoreSettings(cache_dir=tmp_path / "cache")) as handle:
            return (handle.path / "m.bin").read_bytes()

    assert asyncio.run(main()) == b"x"


def test_local_and_warm_opens_import_neither_aiobotocore_nor_mlflow(
    s3: Any, bucket: str, settings: StoreSettings, tmp_path: Path
) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(Bucket=bucket, Key="model.bin", Body=b"v1")["VersionId"]
    uri = f"s3://{bucket}/model.bin?versionId={version}"
    open_model(uri, settings).close()
    (tmp_path / "local").mkdir()
    script = textwrap.dedent(
        f"""
        import sys
        from runtime.store import StoreSettings, open_model
        settings = StoreSettings.model_validate_json({settings.model_dump_json()!r})
        open_model({uri!r}, settings).close()
        open_model({str(tmp_path / "local")!r}, settings).close()
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("aiobotocore", "botocore", "mlflow")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )  # fmt: skip
    assert out.stdout.strip() == "[]"


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a real disk that fills up. Mounting needs root (CAP_SYS_ADMIN): where it is not
    allowed the test is skipped, saying why, since no other real way to run out of disk exists here."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_full_cache_disk_evicts_unused_versions_or_fails_saying_so(
    s3: Any, bucket: str, settings: StoreSettings, small_disk: Path
) -> None:
    on_small_disk = settings.model_copy(update={"cache_dir": small_disk / "cache"})
    models = {name: {"model.onnx": os.urandom(1_400_000), "data/weights.bin": os.urandom(1_400_000)}
              for name in ("a", "b", "c")}
    for name, files in models.items():
        upload_tree(s3, bucket, name, files)
    with open_model(f"s3://{bucket}/a", on_small_disk) as handle:
        assert read_tree(handle.path) == models["a"]
    # b does not fit beside a: a (no replica holds it) is evicted and b fetched on the second try.
    with open_model(f"s3://{bucket}/b", on_small_disk) as held:
        assert read_tree(held.path) == models["b"]
        assert Cache(small_disk / "cache").version_keys() == [held.version_key]
        # c does not fit beside b, which is in use: a clear failure, and nothing half-written left.
        with pytest.raises(StoreError, match=r"no space left on the model cache's disk .* needs 2,800,000"):
            open_model(f"s3://{bucket}/c", on_small_disk)
        assert read_tree(held.path) == models["b"]
        assert not list(Cache(small_disk / "cache").tmp.iterdir())
    # b released: c now fits.
    with open_model(f"s3://{bucket}/c", on_small_disk) as handle:
        assert read_tree(handle.path) == models["c"]
