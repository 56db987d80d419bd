"""Several gateways on one PostgreSQL: what losing the leader costs, and what PostgreSQL costs the data path.

Failover: three gateway processes (``zeroserve serve``) share a throwaway PostgreSQL; an endpoint with a
floor of one replica (a small ONNX model) takes steady open-loop traffic through the two gateways that
do not lead; the leader is SIGKILLed. Reported: seconds until another gateway leads (the fleet status
says so, and its autoscaler is deciding), requests sent and lost (anything but a 200), whether the floor
replica kept running (the same process before and after), and the lease time it is measured against.

Data path: one gateway alone, the same endpoint, ``benchmarks._loadgen`` at c=16 — on PostgreSQL and
on SQLite, replicas reached over loopback TCP both times (a fleet's replicas are detached and TCP only),
and SQLite with its default Unix sockets as a third row. The goal is that PostgreSQL is not slower: no
request reads the database.

    python -m benchmarks.gateway_failover [--quick] [--lease-s S] [--duration S]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.autoscaler_replay import ADMIN_TOKEN, admin_client, start_gateway, stop_gateway
from runtime.store.cache import pid_alive

ENDPOINT = "steady"
FLEET = "/api/2.0/zeroserve/fleet"


def make_model(directory: Path) -> Path:
    from runtime.examples import make_logreg_onnx

    return make_logreg_onnx(directory / "logreg", n_features=20)


def query_body() -> dict[str, Any]:
    from runtime.examples import logreg_rows

    return {"inputs": logreg_rows(20, 1).tolist()}


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def create_endpoint(urls: list[str], model: Path) -> None:
    """Create the endpoint through the first gateway; return once every gateway serves it."""
    entity = {"name": "logreg", "entity_name": model.as_uri(), "entity_version": "1",
              "workload_size": "Small", "scale_to_zero_enabled": False}
    with admin_client(urls[0]) as client:
        client.post("/api/2.0/serving-endpoints",
                    json={"name": ENDPOINT, "config": {"served_entities": [entity]}}).raise_for_status()
    deadline = time.monotonic() + 60
    for url in urls:
        with admin_client(url) as client:
            path = f"/serving-endpoints/{ENDPOINT}/invocations"
            while client.post(path, json=query_body()).status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} did not serve the endpoint within 60 s")
                time.sleep(0.1)


def leader_url(url: str) -> str | None:
    with admin_client(url) as client:
        status = client.get(FLEET).raise_for_status().json()
    leader = status.get("leader")
    if leader is None:
        return None
    return next((g["url"] for g in status["gateways"] if g["gateway_id"] == leader["gateway_id"]), None)


def registry(database_url: str) -> list[tuple[str, int | None]]:
    import psycopg

    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT replica_id, pid FROM fleet_replicas ORDER BY replica_id").fetchall()
    return [(str(row[0]), row[1]) for row in rows]


def failover(root: Path, model: Path, database_url: str, lease_s: float, rate: float) -> dict[str, Any]:
    env = {"ZEROSERVE_DATABASE_URL": database_url, "ZEROSERVE_FLEET_LEASE_S": str(lease_s),
           "ZEROSERVE_WARM_POOL_SIZE": "0"}
    gateways: list[tuple[subprocess.Popen[bytes], str]] = []
    with environment(**env):
        for index in range(3):
            gateways.append(start_gateway(root / f"gw{index}", None))
    try:
        create_endpoint([url for _, url in gateways], model)
        before = registry(database_url)
        leading = next(g for g in gateways if g[1] == leader_url(gateways[0][1]))
        survivors = [g for g in gateways if g is not leading]
        sent: list[int] = []
        lost: list[str] = []
        stop = threading.Event()

        def load(url: str, every_s: float) -> None:
            body = query_body()
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                next_at = time.monotonic()
                while not stop.is_set():
                    next_at += every_s
                    try:
                        answer = client.post(f"/serving-endpoints/{ENDPOINT}/invocations", json=body)
                        if answer.status_code != 200:
                            lost.append(f"{answer.status_code}: {answer.text[:120]}")
                    except httpx.HTTPError as error:
                        lost.append(repr(error))
                    sent.append(1)
                    time.sleep(max(0.0, next_at - time.monotonic()))

        every_s = len(survivors) / rate
        threads = [threading.Thread(target=load, args=(url, every_s)) for _, url in survivors]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        killed_at = time.monotonic()
        leading[0].send_signal(signal.SIGKILL)
        leading[0].wait()
        new_leader = None
        while new_leader is None and time.monotonic() - killed_at < lease_s + 30:
            found = leader_url(survivors[0][1])
            new_leader = found if found in {url for _, url in survivors} else None
            if new_leader is None:
                time.sleep(0.05)
        took_over_s = time.monotonic() - killed_at
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        after = registry(database_url)
        alive = all(pid is not None and pid_alive(pid) for _, pid in after)
        return {"lease_s": lease_s, "took_over_s": took_over_s if new_leader else None, "sent": len(sent),
                "lost": len(lost), "lost_examples": lost[:3], "floor_kept": before == after and alive}
    finally:
        for process, _ in gateways:
            if process.poll() is None:
                stop_gateway(process)


def throughput(root: Path, model: Path, database_url: str | None, unix_sockets: bool, duration_s: float
               ) -> dict[str, Any]:
    env = {"ZEROSERVE_DATABASE_URL": database_url, "ZEROSERVE_WARM_POOL_SIZE": "0",
           "ZEROSERVE_REPLICA_UNIX_SOCKETS": "1" if unix_sockets else "0"}
    with environment(**env):
        process, url = start_gateway(root, None)
    try:
        create_endpoint([url], model)
        body_file = root / "body.json"
        body_file.write_text(json.dumps(query_body()))
        port = int(url.rsplit(":", 1)[1])
        run = subprocess.run(
            [sys.executable, "-m", "benchmarks._loadgen", "--port", str(port), "--body-file", str(body_file),
             "--path", f"/serving-endpoints/{ENDPOINT}/invocations", "--concurrency", "16",
             "--duration", str(duration_s), "--warmup", "1",
             "--header", f"Authorization: Bearer {ADMIN_TOKEN}"],
            capture_output=True, text=True, timeout=duration_s + 60, check=True,
        )
        result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
        return result
    finally:
        stop_gateway(process)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short lease, shorter throughput runs")
    parser.add_argument("--lease-s", type=float, action="append",
                        help="lease time(s) to fail over with [15 and 5; quick 3]")
    parser.add_argument("--rate", type=float, default=40.0, help="steady requests per second during failover")
    parser.add_argument("--duration", type=float, help="seconds of c=16 load per data-path row [10; quick 4]")
    args = parser.parse_args(argv)
    leases = args.lease_s or ([3.0] if args.quick else [15.0, 5.0])
    duration = args.duration or (4.0 if args.quick else 10.0)
    from router.state.testing import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="zs-failover-") as scratch:
            root = Path(scratch)
            model = make_model(root / "models")
            print(f"failover: 3 gateways, leader SIGKILLed under {args.rate:g} req/s through the other two")
            print(f"{'lease s':>8} {'new leader after s':>19} {'sent':>6} {'lost':>5}"
                  f" {'floor replica kept':>19}")
            for index, lease in enumerate(leases):
                try:
                    row = failover(root / f"failover{index}", model, server.new_database(), lease, args.rate)
                except Exception as error:  # a row that says why, not a crashed run
                    print(f"{lease:>8g}  failed: {error}")
                    continue
                took = f"{row['took_over_s']:.2f}" if row["took_over_s"] is not None else "never"
                print(f"{lease:>8g} {took:>19} {row['sent']:>6} {row['lost']:>5}"
                      f" {row['floor_kept']!s:>19}")
                for example in row["lost_examples"]:
                    print(f"{'':>8} lost: {example}")
            print()
            print(f"data path: one gateway, c=16 for {duration:g} s")
            rows: list[tuple[str, dict[str, Any] | str]] = []
            for label, url, sockets in (("PostgreSQL, TCP to replicas", server.new_database(), False),
                                        ("SQLite, TCP to replicas", None, False),
                                        ("SQLite, Unix sockets (default)", None, True)):
                try:
                    rows.append((label, throughput(root / f"tp-{len(rows)}", model, url, sockets, duration)))
                except Exception as error:
                    rows.append((label, f"failed: {error}"))
            base = next((r for label, r in rows if label.startswith("SQLite, TCP") and isinstance(r, dict)),
                        None)
            print(f"{'state':<32} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'vs SQLite TCP':>14}"
                  f" {'non-200':>8}")
            for label, result in rows:
                if isinstance(result, str):
                    print(f"{label:<32} {result}")
                    continue
                ratio = f"{result['rps'] / base['rps']:.2f}x" if base else "-"
                errors = sum(v for k, v in result["statuses"].items() if k != "200")
                print(f"{label:<32} {result['rps']:>8.0f} {result['p50_ms']:>7.2f} {result['p99_ms']:>7.2f}"
                      f" {ratio:>14} {errors:>8}")
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
