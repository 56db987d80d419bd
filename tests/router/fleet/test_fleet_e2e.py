"""Three real gateway processes on loopback sharing one real PostgreSQL: any gateway serves any request,
a change made through one is in force on all within a second, one leads the autoscaler, and losing the
leader (SIGKILL) loses no request and stops no replica."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from router.cli import _register, cli
from router.fleet.member import INTERNAL_PREFIX, SECRET_HEADER
from router.state.testing import PostgresServer
from runtime.examples import logreg_rows, make_logreg_onnx
from runtime.store.cache import pid_alive
from tests.router.gateway_process import ADMIN_TOKEN, GatewayProcess, wait_for

pytestmark = pytest.mark.slow

LEASE_S = 2.0
FLEET = "/api/2.0/zeroserve/fleet"
API = "/api/2.0/serving-endpoints"
BODY = {"inputs": logreg_rows(20, 1).tolist()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_logreg_onnx(tmp_path_factory.mktemp("models") / "logreg", n_features=20)


class Fleet:
    def __init__(self, root: Path, database_url: str) -> None:
        self.database_url = database_url
        self.env = {"ZEROSERVE_DATABASE_URL": database_url, "ZEROSERVE_FLEET_LEASE_S": str(LEASE_S),
                    "ZEROSERVE_WARM_POOL_SIZE": "0", "ZEROSERVE_LOG_LEVEL": "info"}
        self.gateways = [GatewayProcess(root / f"gw{index}", self.env) for index in range(3)]

    def start(self) -> Fleet:
        for gateway in self.gateways:
            gateway.start()
        return self

    def status(self, gateway: GatewayProcess | None = None) -> dict[str, Any]:
        gateway = gateway or next(g for g in self.gateways if g.process is not None)
        with gateway.client(timeout=10) as client:
            response = client.get(FLEET)
            response.raise_for_status()
            answer: dict[str, Any] = response.json()
            return answer

    def leader(self) -> GatewayProcess:
        """The gateway that leads once the fleet agrees on one."""
        def agreed() -> GatewayProcess | None:
            try:
                status = self.status()
            except httpx.HTTPStatusError as error:
                # Right after the database comes back, a gateway answers 503 until it has reconnected
                # (within a second, by itself): ask again.
                if error.response.status_code == 503:
                    return None
                raise
            leader = status["leader"]
            if leader is None:
                return None
            mine = next(g for g in status["gateways"] if g["gateway_id"] == leader["gateway_id"])
            return next((g for g in self.gateways if g.process is not None and g.url == mine["url"]), None)

        found: GatewayProcess = wait_for(agreed, 30, "a leader")
        return found

    def registry(self) -> list[tuple[str, int | None, str]]:
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute("SELECT replica_id, pid, state FROM fleet_replicas ORDER BY replica_id")
            return [(str(r[0]), r[1], str(r[2])) for r in rows.fetchall()]

    def stop(self) -> None:
        pids = [pid for _, pid, _ in self.registry()]
        for gateway in self.gateways:
            gateway.stop()
        # The last gateway standing stops the replicas; any left now would be orphans.
        orphans = [pid for pid in pids if pid is not None and pid_alive(pid)]
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
        assert not orphans, f"replica processes left running after every gateway stopped: {orphans}"


@pytest.fixture
def fleet(tmp_path: Path, postgres_url: str) -> Iterator[Fleet]:
    started = Fleet(tmp_path, postgres_url)
    try:
        yield started.start()
    finally:
        started.stop()


def create_endpoint(gateway: GatewayProcess, name: str, model_dir: Path, **extra: Any) -> None:
    entity = {"name": "logreg", "entity_name": model_dir.as_uri(), "entity_version": "1",
              "workload_size": "Small", "scale_to_zero_enabled": False}
    with gateway.client(timeout=30) as client:
        response = client.post(API, json={"name": name, "config": {"served_entities": [entity]}, **extra})
        assert response.status_code == 200, response.text


def query(gateway: GatewayProcess, name: str, token: str = ADMIN_TOKEN) -> httpx.Response:
    return httpx.post(f"{gateway.url}/serving-endpoints/{name}/invocations", json=BODY,
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)


def served_everywhere(fleet: Fleet, name: str) -> None:
    for gateway in fleet.gateways:
        wait_for(lambda g=gateway: query(g, name).status_code == 200, 60, f"{name} served by {gateway.url}")


def test_one_truth_across_three_gateways(fleet: Fleet, model_dir: Path) -> None:
    first, second, third = fleet.gateways
    status = fleet.status(second)
    assert status["shared_state"] is True and len(status["gateways"]) == 3
    assert sum(1 for g in status["gateways"] if g["leader"]) == 1

    # Created through one gateway, served through every one, by one replica (the floor).
    create_endpoint(second, "fraud", model_dir)
    served_everywhere(fleet, "fraud")
    assert len(fleet.registry()) == 1
    for gateway in fleet.gateways:
        # A follower shows the state the leader published at its last heartbeat.
        with gateway.client(timeout=10) as client:
            wait_for(lambda c=client: c.get(f"{API}/fraud").json()["config"]["served_entities"][0]["state"][
                "deployment"] == "DEPLOYMENT_READY", 3, f"the state on {gateway.url}")

    # Any gateway shows the whole fleet: its gateways and leader (zeroserve status), every gateway's
    # series in one exposition, the replica the leader runs.
    _register()
    shown = CliRunner().invoke(cli, ["status", "--url", third.url, "--token", ADMIN_TOKEN])
    assert shown.exit_code == 0, shown.output
    assert "leads since" in shown.output and shown.output.count("follower") == 2, shown.output
    with third.client(timeout=10) as client:
        exposition = client.get("/metrics", params={"scope": "fleet"}).text
        overview = client.get("/api/2.0/zeroserve/overview").json()
    ids = {g["gateway_id"] for g in status["gateways"]}
    assert {f'gateway="{gateway_id}"' for gateway_id in ids} <= set(
        part for line in exposition.splitlines() for part in line.replace("{", ",").split(",")
        if part.startswith('gateway="'))
    (fraud,) = [e for e in overview["endpoints"] if e["name"] == "fraud"]
    assert fraud["replicas"]["ready"] == 1 and overview["gateways"] == 3, overview
    with third.client(timeout=10) as client:
        series = client.get("/api/2.0/zeroserve/timeseries/fraud")
        assert series.status_code == 200 and "requests_per_s" in series.json()["series"], series.text

    # The fleet's internal routes take the fleet's secret, and refuse in the API's error shape.
    leader = fleet.leader()
    with httpx.Client(base_url=leader.url, timeout=10) as raw:
        refused = raw.get(f"{INTERNAL_PREFIX}/logs", params={"endpoint": "fraud", "served_entity": "logreg"})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error_code"] == "PERMISSION_DENIED"
        with psycopg.connect(fleet.database_url) as conn:
            row = conn.execute("SELECT value FROM fleet_secrets WHERE name = 'internal'").fetchone()
        secret = str(row[0]) if row else ""
        missing = raw.get(f"{INTERNAL_PREFIX}/logs", headers={SECRET_HEADER: secret})
        assert missing.status_code == 400 and "served_entity" in missing.json()["message"], missing.text

    # A token minted on one, a grant made on another, a revoke on the third: in force on all within 1 s.
    with first.client(timeout=10) as client:
        minted = client.post("/api/2.0/zeroserve/tokens", json={"principal": "alice"}).json()
        endpoint_id = client.get(f"{API}/fraud").json()["id"]
    with second.client(timeout=10) as client:
        granted = client.patch(f"/api/2.0/permissions/serving-endpoints/{endpoint_id}", json={
            "access_control_list": [{"user_name": "alice", "permission_level": "CAN_QUERY"}]})
        assert granted.status_code == 200, granted.text
    for gateway in fleet.gateways:
        wait_for(lambda g=gateway: query(g, "fraud", minted["token"]).status_code == 200, 1.5,
                 f"the grant on {gateway.url}")
    with third.client(timeout=10) as client:
        assert client.delete(f"/api/2.0/zeroserve/tokens/{minted['token_id']}").status_code == 200
    revoked_at = time.monotonic()
    for gateway in fleet.gateways:
        wait_for(lambda g=gateway: query(g, "fraud", minted["token"]).status_code == 401, 1.0,
                 f"the revoke on {gateway.url}")
    assert time.monotonic() - revoked_at < 1.5

    # A rate limit set on one gateway holds for the fleet: 30 per minute, 90 requests spread evenly.
    with first.client(timeout=10) as client:
        limited = client.put(f"{API}/fraud/rate-limits", json={"rate_limits": [
            {"calls": 30, "key": "endpoint", "renewal_period": "minute"}]})
        assert limited.status_code == 200, limited.text
    time.sleep(1.0)  # every gateway has seen the new limit
    answers = [query(fleet.gateways[index % 3], "fraud").status_code for index in range(90)]
    admitted = answers.count(200)
    assert 27 <= admitted <= 33, answers
    assert set(answers) == {200, 429}

    # Deleted through one gateway: gone from all, and its replica stops.
    with third.client(timeout=10) as client:
        assert client.delete(f"{API}/fraud").status_code == 200
    for gateway in fleet.gateways:
        wait_for(lambda g=gateway: query(g, "fraud").status_code == 404, 2, f"the delete on {gateway.url}")
    wait_for(lambda: fleet.registry() == [], 30, "the replica to stop")


def test_scale_from_zero_through_a_follower(fleet: Fleet, model_dir: Path) -> None:
    # The request waits on a follower; its poke reaches the leader at once, whose replica the follower
    # learns from the registry.
    leader = fleet.leader()
    follower = next(g for g in fleet.gateways if g is not leader)
    entity = {"name": "logreg", "entity_name": model_dir.as_uri(), "entity_version": "1",
              "workload_size": "Small", "scale_to_zero_enabled": True}
    with follower.client(timeout=30) as client:
        created = client.post(API, json={"name": "sleepy", "config": {"served_entities": [entity]}})
        assert created.status_code == 200, created.text
        wait_for(lambda: client.get(f"{API}/sleepy").json()["state"]["config_update"] == "NOT_UPDATING", 30,
                 "the config to be applied")
    assert fleet.registry() == []
    deadline = time.monotonic() + 5
    while True:  # the follower routes the endpoint within a poll; the first routed query starts a replica
        started = time.monotonic()
        answer = query(follower, "sleepy")
        if answer.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < LEASE_S + 5
    assert len(fleet.registry()) == 1


def test_leader_sigkill_loses_nothing(fleet: Fleet, model_dir: Path) -> None:
    create_endpoint(fleet.gateways[0], "steady", model_dir)
    served_everywhere(fleet, "steady")
    ((replica_id, pid, _),) = fleet.registry()
    leader = fleet.leader()
    survivors = [g for g in fleet.gateways if g is not leader]

    failures: list[str] = []
    sent = [0]
    stop = threading.Event()

    def load(gateway: GatewayProcess) -> None:
        while not stop.is_set():
            try:
                answer = query(gateway, "steady")
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")
            except httpx.HTTPError as error:
                failures.append(repr(error))
            sent[0] += 1

    threads = [threading.Thread(target=load, args=(g,)) for g in survivors]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    killed_at = time.monotonic()
    leader.kill()
    new_leader = fleet.leader()
    took_over_s = time.monotonic() - killed_at
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    assert new_leader in survivors
    assert took_over_s <= LEASE_S + 3.0, took_over_s
    assert failures == [] and sent[0] > 20, (failures[:5], sent[0])
    # The floor replica kept running through it: adopted by the new leader, not started again.
    assert fleet.registry() == [(replica_id, pid, "READY")]
    assert pid is not None and pid_alive(pid)

    # The killed gateway comes back as a follower and serves again.
    leader.start()
    assert query(leader, "steady").status_code == 200 or wait_for(
        lambda: query(leader, "steady").status_code == 200, 10, "the restarted gateway to serve")
    assert fleet.leader() is new_leader


def test_a_gateway_without_its_database_keeps_serving(
    fleet: Fleet, model_dir: Path, postgres: PostgresServer
) -> None:
    create_endpoint(fleet.gateways[0], "resilient", model_dir)
    served_everywhere(fleet, "resilient")
    postgres.stop()
    try:
        for gateway in fleet.gateways:
            assert query(gateway, "resilient").status_code == 200
        with fleet.gateways[1].client(timeout=30) as client:
            started = time.monotonic()
            refused = client.put(f"{API}/resilient/rate-limits", json={"rate_limits": []})
            assert time.monotonic() - started < 10
        assert refused.status_code == 503, refused.text
        assert refused.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert "database is unreachable" in refused.json()["message"]
        time.sleep(LEASE_S + 1)  # past the lease: the leader steps down, stopping nothing
        for gateway in fleet.gateways:
            assert query(gateway, "resilient").status_code == 200
    finally:
        postgres.start()
    with fleet.gateways[1].client(timeout=30) as client:
        path = f"{API}/resilient/rate-limits"
        wait_for(lambda: client.put(path, json={"rate_limits": []}).status_code == 200, 15,
                 "the gateway to reconnect")
    fleet.leader()
    assert len(fleet.registry()) == 1
