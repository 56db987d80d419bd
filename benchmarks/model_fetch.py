"""Cold and warm model fetch: zeroserve's store vs boto3's managed transfer, against one local S3.

    python3 -m benchmarks.model_fetch [--quick] [--size-mib 256] [--repeats 3]

One moto server (a subprocess on loopback) holds a model directory. Cold: zeroserve fetches it into an
empty cache; boto3 lists the prefix and runs ``download_file`` (its managed, multi-threaded transfer,
8 MiB parts x 10 threads) per object, as MLflow's S3 artifact store does. Runs alternate; the best of
``--repeats`` counts. Warm: zeroserve opens the already-cached version again, through a counting
proxy that reports how many object GETs reached the server. moto is a Python server and often the
bottleneck: compare the ratio, not the absolute MB/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return server, endpoint
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("moto server did not start within 30 s")


def _make_model(root: Path, total_mib: int) -> dict[str, int]:
    """A model directory: a few large weight shards plus small metadata files."""
    sizes = {"MLmodel": 300, "conda.yaml": 200, "config.json": 4096}
    shard = max(1, total_mib // 4)
    for index in range(4):
        sizes[f"weights/shard-{index}.bin"] = shard * MiB
    for name, size in sizes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            remaining = size
            while remaining:
                chunk = min(remaining, 8 * MiB)
                handle.write(os.urandom(chunk))
                remaining -= chunk
    return sizes


def _boto3_download(client: Any, bucket: str, prefix: str, dest: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig()  # the defaults: 8 MiB threshold and parts, 10 threads
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target), Config=config)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB model, 2 repeats")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size_mib = 64 if args.quick else args.size_mib
    repeats = 2 if args.quick else args.repeats

    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    import boto3

    import runtime.store.s3  # noqa: F401  (import costs stay out of the timings, as boto3's do)
    from runtime.store import StoreSettings, open_model
    from runtime.store.testing import S3Proxy

    work = Path(tempfile.mkdtemp(prefix="zeroserve-bench-"))
    server, endpoint = _start_moto()
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bench")
        sizes = _make_model(work / "source", size_mib)
        total = sum(sizes.values())
        for name in sizes:
            client.upload_file(str(work / "source" / name), "bench", f"model/{name}")
        uri = "s3://bench/model"
        # Warm-up, kept out of the timings as boto3's client set-up is: aiobotocore's first client in a
        # process loads and parses the S3 service model (~0.5 s), once per process.
        client.put_object(Bucket="bench", Key="warmup/x", Body=b"x")
        open_model(
            "s3://bench/warmup", StoreSettings(cache_dir=work / "warmup", s3_endpoint_url=endpoint)
        ).close()
        print(f"model: {len(sizes)} files, {total / MiB:.0f} MiB, moto at {endpoint}")

        zeroserve_times: list[float] = []
        boto3_times: list[float] = []
        for attempt in range(repeats):
            cache = work / f"cache-{attempt}"
            settings = StoreSettings(cache_dir=cache, s3_endpoint_url=endpoint, cache_max_bytes=0)
            started = time.perf_counter()
            handle = open_model(uri, settings)
            zeroserve_times.append(time.perf_counter() - started)
            for name, size in sizes.items():
                if (handle.path / name).stat().st_size != size:
                    raise SystemExit(f"zeroserve fetched a wrong size for {name}")
            handle.close()
            shutil.rmtree(cache)

            dest = work / f"boto3-{attempt}"
            started = time.perf_counter()
            _boto3_download(client, "bench", "model", dest)
            boto3_times.append(time.perf_counter() - started)
            shutil.rmtree(dest)

        # Warm: the cached version opened again. Timed straight against the server; then once more
        # through a counting proxy, to count the object GETs at the server side of the wire.
        settings = StoreSettings(cache_dir=work / "warm", s3_endpoint_url=endpoint)
        open_model(uri, settings).close()
        warm_times = []
        for _ in range(7):
            started = time.perf_counter()
            open_model(uri, settings).close()
            warm_times.append(time.perf_counter() - started)
        with S3Proxy(endpoint.removeprefix("http://")) as proxy:
            open_model(uri, settings.model_copy(update={"s3_endpoint_url": proxy.endpoint_url})).close()
            warm_gets, warm_lists = proxy.counts["GET"], proxy.counts["LIST"]

        best_zs, best_boto = min(zeroserve_times), min(boto3_times)
        mbps_zs, mbps_boto = total / MiB / best_zs, total / MiB / best_boto
        warm_ms = statistics.median(warm_times) * 1000
        print()
        print(f"{'path':<34}{'time':>10}{'MB/s':>10}{'GETs':>8}{'ratio':>9}")
        print(f"{'cold  boto3 download_file':<34}{best_boto:>9.2f}s{mbps_boto:>10.1f}{'':>8}{1.0:>8.2f}x")
        ratio = mbps_zs / mbps_boto
        print(f"{'cold  zeroserve open_model':<34}{best_zs:>9.2f}s{mbps_zs:>10.1f}{'':>8}{ratio:>8.2f}x")
        print(f"{'warm  zeroserve (median of 7)':<34}{warm_ms:>8.1f}ms{'':>10}{warm_gets:>8}")
        print()
        warm_met = warm_ms <= 20 and warm_gets == 0
        print(f"targets: cold >= 1.0x boto3: {'met' if ratio >= 1.0 else 'NOT met'}; "
              f"warm <= 20 ms with 0 GETs: {'met' if warm_met else 'NOT met'} "
              f"({warm_lists} listing per warm open: freshness check of an s3:// prefix)")  # fmt: skip
        print(f"all runs (s): zeroserve {[round(t, 2) for t in zeroserve_times]}, "
              f"boto3 {[round(t, 2) for t in boto3_times]}")  # fmt: skip
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
