"""Faults survived, measured: each fault is made to happen to a real gateway process under load, and
every request sent is accounted for.

A request ends one of three ways: ``ok`` (200), ``clear`` (an error status with a JSON body that says
what went wrong: ``error_code`` and ``message``, or OIP's ``error``), or ``lost`` (no answer — a reset
connection, a timeout — or an answer that does not say why, such as a 500 or an empty body). The goal
is 0 lost for every fault a gateway can see coming; the gateway's own SIGKILL is the exception (what
was in flight in the killed process cannot be answered by it) and its row says so.

Faults:

* ``replica SIGKILL`` — an endpoint with a floor of two replicas under steady load; one replica is
  SIGKILLed. Recovery: until two replicas are ready again.
* ``crash on one input`` — a model that exits its process on one poison value; the poison request is
  sent once among steady traffic. Only its replica dies; the poison answer says why. Recovery: until
  the floor is back.
* ``gateway SIGKILL + restart`` — the gateway is SIGKILLed under load and started again on the same
  home. Endpoints, tokens and floors come back; no replica process is orphaned. Recovery: from the kill
  to the first 200 after the restart (requests sent while no gateway listens are refused by the OS,
  counted as ``refused``, not lost: nothing had accepted them).
* ``store down`` — S3 (moto, a subprocess on loopback) is stopped. A model fetched before cold-starts
  from the cache; one never fetched fails fast, naming the store. Recovery: the cold start from cache.
* ``model hangs on load`` — with ``autoscaling.start_timeout_s`` of 4 s, each start is stopped when it
  runs out; after three the config update fails, naming why, and no replica is left; queries meanwhile
  get a clear 503. Recovery: the seconds until the failure is reported.
* ``model leaks memory`` — a model that keeps 8 MiB per call, its replicas limited to 450 MiB
  (``ZEROSERVE_REPLICA_MEMORY_LIMIT_MIB``; the workload size's memory by default), paced traffic to it
  and to a healthy endpoint beside it. A replica at the limit is killed (its log says why) and replaced;
  what it held gets a clear 503; the other endpoint does not notice. Recovery: first kill to floor back.
* ``store flaky at cold start`` — S3 behind a fault-injecting proxy; five endpoints cold-start once
  each while the store answers 500 twice, cuts the connection mid-object twice, sends a corrupted body,
  is slow, or answers 500 to everything. The first four are absorbed (retries, resumed ranges, checksum
  refetch); the last fails, naming the store. Recovery: the slowest of the five cold starts.

The cache disk filling up is tested where it happens, in ``tests/runtime/store/test_fetch.py`` (a real
4 MiB tmpfs): unused versions are evicted and the fetch tried again, else a clear error.

    python -m benchmarks.reliability_report [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from runtime.store.cache import pid_alive

ADMIN_TOKEN = "reliability-admin-" + "r" * 32
API = "/api/2.0/serving-endpoints"
_CLI = "import sys; from router.cli import cli, serve; sys.argv[0] = 'zeroserve'; cli()"
_READY_LINE = re.compile(r"ZEROSERVE_REPLICA_READY (\{.*\})")
POISON = 666.0

# A model from code (MLflow's models-from-code): doubles ``x``; exits its process on the poison value,
# sleeps forever while loading when the HANG flag is set, and keeps LEAK_MIB more memory per call.
_MODEL_CODE = """
import os
import time

import mlflow
import pandas as pd

POISON = {poison!r}
HANG = {hang!r}
LEAK_MIB = {leak_mib!r}
_KEPT = []


class Model(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        while HANG:
            time.sleep(3600)

    def predict(self, context, model_input: pd.DataFrame, params=None):
        if LEAK_MIB:
            _KEPT.append(b"\\x01" * (LEAK_MIB << 20))  # written, so resident: a real leak
        if (model_input["x"] == POISON).any():
            os._exit(3)  # a native crash, as a segfaulting library would: no exception, no answer
        return model_input["x"] * 2.0


mlflow.models.set_model(Model())
"""


# ---- accounting ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    at: float
    kind: str  # ok | clear | lost | refused
    detail: str


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, detail: str = "") -> None:
        with self.lock:
            self.outcomes.append(Outcome(time.monotonic(), kind, detail))

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)

    def details(self, kind: str, limit: int = 3) -> list[str]:
        return list(dict.fromkeys(o.detail for o in self.outcomes if o.kind == kind))[:limit]


def classify(response: httpx.Response) -> tuple[str, str]:
    if response.status_code == 200:
        return "ok", ""
    try:
        body = response.json()
    except ValueError:
        return "lost", f"{response.status_code} without a JSON body: {response.text[:120]!r}"
    said = body.get("message") or body.get("error") if isinstance(body, dict) else None
    if response.status_code == 500 or not said:
        return "lost", f"{response.status_code} {str(body)[:160]}"
    return "clear", f"{response.status_code} {str(said)[:400]}"


def send(client: httpx.Client, url: str, body: Any, tally: Tally, token: str = ADMIN_TOKEN) -> str:
    try:
        response = client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    except httpx.ConnectError as exc:
        tally.add("refused", f"connect: {exc}")
        return "refused"
    except httpx.HTTPError as exc:
        tally.add("lost", f"{type(exc).__name__}: {exc}")
        return "lost"
    kind, detail = classify(response)
    tally.add(kind, detail)
    return kind


class Load:
    """``threads`` clients sending ``body`` to ``url()`` back to back until stopped."""

    def __init__(self, url: Callable[[], str], body: Any, threads: int, token: str = ADMIN_TOKEN) -> None:
        self.url, self.body, self.token = url, body, token
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                if send(client, self.url(), self.body, self.tally, self.token) == "refused":
                    time.sleep(0.02)  # no gateway listening: do not spin

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


@dataclass
class Row:
    fault: str
    sent: int
    ok: int
    clear: int
    lost: int
    refused: int
    recovery_s: float | None
    outcome: str
    checks: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def of(cls, fault: str, tally: Tally, recovery_s: float | None, outcome: str,
           checks: dict[str, bool]) -> Row:
        counts = {kind: tally.count(kind) for kind in ("ok", "clear", "lost", "refused")}
        lost = "; lost: " + " | ".join(tally.details("lost")) if counts["lost"] else ""
        return cls(fault, len(tally.outcomes), counts["ok"], counts["clear"], counts["lost"],
                   counts["refused"], recovery_s, outcome + lost, checks)


# ---- a gateway process ---------------------------------------------------------------------------


class Gateway:
    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = {**os.environ, "ZEROSERVE_HOME": str(home), "ZEROSERVE_ADMIN_TOKEN": ADMIN_TOKEN,
                    **(env or {})}
        self.env.pop("ZEROSERVE_URL", None)
        # The replicas' interpreter finds its tools beside this one (benchmarks run without a venv).
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout_s: float = 90) -> Gateway:
        self.home.mkdir(parents=True, exist_ok=True)
        announced = self.home / "gateway.json"
        announced.unlink(missing_ok=True)
        log = open(self.home / "gateway.log", "ab")  # noqa: SIM115 - the process keeps it
        self.process = subprocess.Popen([sys.executable, "-c", _CLI, "serve", "--host", "127.0.0.1",
                                         "--port", "0"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}: {self.log_tail()}")
            with suppress(OSError, ValueError, httpx.HTTPError):
                info = json.loads(announced.read_text())
                mine = info.get("pid") == self.process.pid
                if mine and httpx.get(f"{info['url']}/readyz", timeout=2).status_code == 200:
                    self.url = str(info["url"])
                    return self
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"the gateway did not come up within {timeout_s} s: {self.log_tail()}")

    def log_tail(self) -> str:
        with suppress(OSError):
            return (self.home / "gateway.log").read_text(errors="replace")[-3000:]
        return ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, token: str = ADMIN_TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def invocations(self, name: str) -> str:
        return f"{self.url}/serving-endpoints/{name}/invocations"


@contextmanager
def gateway(home: Path, env: dict[str, str] | None = None) -> Iterator[Gateway]:
    process = Gateway(home, env).start()
    try:
        yield process
    finally:
        process.stop()


def create(gw: Gateway, name: str, model_uri: str, **entity: Any) -> None:
    served = {"name": "m", "entity_name": model_uri, "optimization": "off", **entity}
    with gw.client() as client:
        answer = client.post(API, json={"name": name, "config": {"served_entities": [served]}})
        if answer.status_code != 200:
            raise RuntimeError(f"create {name}: {answer.status_code} {answer.text}")


def entity_state(gw: Gateway, name: str) -> dict[str, Any]:
    with gw.client() as client:
        body = client.get(f"{API}/{name}").json()
    config = body.get("pending_config") or body.get("config") or {}
    entities = config.get("served_entities") or [{}]
    return {"endpoint": body.get("state", {}), **(entities[0].get("state") or {})}


def ready_replicas(gw: Gateway, name: str) -> int:
    return int((entity_state(gw, name).get("replicas") or {}).get("ready", 0))


def replica_pids(gw: Gateway, name: str) -> list[int]:
    """The pids of the entity's ready replicas, from the READY lines in its logs."""
    with gw.client() as client:
        logs = client.get(f"{API}/{name}/served-models/m/logs").json().get("logs", "")
    pids = [int(json.loads(match)["pid"]) for match in _READY_LINE.findall(logs)]
    return [pid for pid in dict.fromkeys(pids) if alive(pid)]


def alive(pid: int) -> bool:
    """``pid_alive``, except that a zombie (killed, not yet reaped by its parent) counts as gone."""
    if not pid_alive(pid):
        return False
    with suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return True


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> float:
    """Seconds until ``condition`` held; TimeoutError naming ``what`` otherwise."""
    start = time.monotonic()
    while True:
        with suppress(httpx.HTTPError, ValueError, OSError):
            if condition():
                return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def holds(condition: Callable[[], Any], timeout_s: float) -> bool:
    """Whether ``condition`` holds within ``timeout_s`` (a state read once can be mid-change)."""
    try:
        wait_until(condition, timeout_s, "")
    except TimeoutError:
        return False
    return True


# ---- models --------------------------------------------------------------------------------------


def onnx_model(root: Path) -> tuple[str, dict[str, Any]]:
    from runtime.examples import logreg_rows, make_logreg_onnx

    path = root / "logreg"
    if not path.exists():
        make_logreg_onnx(path, n_features=20)
    return path.as_uri(), {"inputs": logreg_rows(20, 1).tolist()}


def code_model(root: Path, name: str, *, hang: bool = False, leak_mib: int = 0) -> str:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    path = root / name
    if path.exists():
        return path.as_uri()
    code = root / f"{name}_model.py"
    code.write_text(_MODEL_CODE.format(poison=POISON, hang=hang, leak_mib=leak_mib))
    signature = ModelSignature(inputs=Schema([ColSpec("double", "x")]), outputs=Schema([ColSpec("double")]))
    with warnings.catch_warnings():  # mlflow's own deprecation and style warnings while saving
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(str(path), python_model=str(code), signature=signature,
                                 pip_requirements=["mlflow"])
    return path.as_uri()


# ---- faults --------------------------------------------------------------------------------------

FLOOR_OF_TWO = {"min_provisioned_concurrency": 8, "max_provisioned_concurrency": 8,
                "autoscaling": {"container_concurrency": 4}}


def replica_sigkill(root: Path, duration_s: float) -> Row:
    uri, body = onnx_model(root)
    with gateway(root / "home-replica-kill") as gw:
        create(gw, "fraud", uri, **FLOOR_OF_TWO)
        wait_until(lambda: ready_replicas(gw, "fraud") == 2, 120, "two replicas")
        victim = replica_pids(gw, "fraud")[0]
        with Load(lambda: gw.invocations("fraud"), body, threads=4) as load:
            time.sleep(duration_s / 3)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: not alive(victim) and victim not in replica_pids(gw, "fraud")
                       and ready_replicas(gw, "fraud") == 2, 120, "the floor of two back")
            recovery = time.monotonic() - killed
            time.sleep(max(0.0, duration_s - (time.monotonic() - killed) - duration_s / 3))
        checks = {"floor back": holds(lambda: ready_replicas(gw, "fraud") == 2, 30),
                  "none lost": load.tally.count("lost") == 0}
        return Row.of("replica SIGKILL under load", load.tally, recovery,
                      "in flight on the killed replica: a clear 503 each; the rest served by the other;"
                      " floor restored", checks)


def crash_on_input(root: Path, duration_s: float) -> Row:
    uri = code_model(root, "poison")
    with gateway(root / "home-poison") as gw:
        create(gw, "scores", uri, **FLOOR_OF_TWO)
        wait_until(lambda: ready_replicas(gw, "scores") == 2, 180, "two replicas")
        before = set(replica_pids(gw, "scores"))
        with Load(lambda: gw.invocations("scores"), {"inputs": {"x": [1.0]}}, threads=4) as load:
            time.sleep(duration_s / 3)
            with httpx.Client(timeout=60) as client:
                poison = Tally()
                send(client, gw.invocations("scores"), {"inputs": {"x": [POISON]}}, poison)
            sent = time.monotonic()
            wait_until(lambda: len(before & set(replica_pids(gw, "scores"))) == 1
                       and ready_replicas(gw, "scores") == 2, 180, "the floor of two back")
            recovery = time.monotonic() - sent
            time.sleep(max(0.0, duration_s * 2 / 3 - recovery))
        survivors = before & set(replica_pids(gw, "scores"))
        (poisoned,) = poison.outcomes
        checks = {"only one replica died": len(survivors) == 1,
                  "the poison request is told why": poisoned.kind == "clear",
                  "none lost": load.tally.count("lost") == 0}
        load.tally.outcomes.append(poisoned)
        return Row.of("model crashes on one input", load.tally, recovery,
                      f"poison request: {poisoned.detail}", checks)


def gateway_restart(root: Path, duration_s: float) -> Row:
    uri, body = onnx_model(root)
    home = root / "home-gateway-kill"
    gw = Gateway(home).start()
    try:
        create(gw, "ltv", uri, min_provisioned_concurrency=4, max_provisioned_concurrency=4)
        with gw.client() as client:
            token = client.post("/api/2.0/zeroserve/tokens", json={"principal": "pipeline"}).json()["token"]
            endpoint_id = client.get(f"{API}/ltv").json()["id"]
            client.put(f"/api/2.0/permissions/serving-endpoints/{endpoint_id}", json={
                "access_control_list": [{"user_name": "pipeline", "permission_level": "CAN_QUERY"}]})
        wait_until(lambda: ready_replicas(gw, "ltv") == 1, 120, "the floor replica")
        old_replicas = set(replica_pids(gw, "ltv"))
        with Load(lambda: gw.invocations("ltv"), body, threads=2, token=token) as load:
            time.sleep(duration_s / 3)
            gw.kill()
            killed = time.monotonic()
            gw.start()
            wait_until(lambda: load.tally.outcomes and load.tally.outcomes[-1].kind == "ok"
                       and load.tally.outcomes[-1].at > killed, 120, "a 200 after the restart")
            recovery = time.monotonic() - killed
            time.sleep(max(0.0, duration_s * 2 / 3 - recovery))
        wait_until(lambda: ready_replicas(gw, "ltv") == 1, 120, "the floor replica after the restart")
        now = set(replica_pids(gw, "ltv"))
        orphans = [pid for pid in old_replicas - now if alive(pid)]
        with httpx.Client(timeout=30) as client:
            token_works = client.post(gw.invocations("ltv"), json=body,
                                      headers={"Authorization": f"Bearer {token}"}).status_code == 200
        checks = {"endpoint, token and grant back": token_works, "floor kept": len(now) == 1,
                  "no orphan replica": not orphans}
        in_flight = load.tally.count("lost")
        return Row.of("gateway SIGKILL + restart", load.tally, recovery,
                      f"{in_flight} in flight in the killed gateway; replicas "
                      f"{'adopted' if now & old_replicas else 'replaced'}", checks)
    finally:
        gw.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def _moto_models() -> Iterator[tuple[subprocess.Popen[bytes], str, Any]]:
    """moto's S3 server, a subprocess on loopback (a fault may kill it), with a ``models`` bucket: the
    process, its address (host:port) and a boto3 client for it."""
    import boto3

    address = f"127.0.0.1:{_free_port()}"
    host, port = address.split(":")
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", port],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: httpx.get(f"http://{address}/moto-api/", timeout=1).status_code == 200, 30,
                   "moto")
        s3 = boto3.client("s3", endpoint_url=f"http://{address}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="models")
        yield moto, address, s3
    finally:
        if moto.poll() is None:
            moto.kill()
            moto.wait(timeout=30)


def store_down(root: Path, duration_s: float) -> Row:
    from runtime.examples import logreg_rows

    uri, body = onnx_model(root)
    with _moto_models() as (moto, address, s3):
        endpoint = f"http://{address}"
        local = Path(uri.removeprefix("file://"))
        for prefix in ("cached", "never-fetched"):
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                s3.upload_file(str(path), "models", f"{prefix}/{path.relative_to(local).as_posix()}")
        zero = {"scale_to_zero_enabled": True,
                "autoscaling": {"scale_to_zero_grace_s": 0.5, "stable_window_s": 1, "scale_down_delay_s": 0}}
        tally = Tally()
        with gateway(root / "home-store", {**_AWS, "ZEROSERVE_S3_ENDPOINT_URL": endpoint}) as gw:
            create(gw, "cached", "s3://models/cached", **zero)
            create(gw, "never-fetched", "s3://models/never-fetched", **zero)
            with httpx.Client(timeout=120) as client:
                send(client, gw.invocations("cached"), body, tally)  # cold start: fetched, cached
                wait_until(lambda: ready_replicas(gw, "cached") == 0, 120, "scale to zero")
                moto.kill()
                moto.wait(timeout=30)
                started = time.monotonic()
                from_cache = send(client, gw.invocations("cached"), body, tally)
                recovery = time.monotonic() - started
                started = time.monotonic()
                send(client, gw.invocations("never-fetched"), {"inputs": logreg_rows(20, 1).tolist()}, tally)
                failed_in = time.monotonic() - started
        names_store = any("models" in o.detail or "store" in o.detail.lower() or "s3" in o.detail.lower()
                          for o in tally.outcomes if o.kind == "clear")
        checks = {"cold start from the cache": from_cache == "ok",
                  "uncached model fails clearly": tally.count("clear") == 1 and names_store,
                  "none lost": tally.count("lost") == 0}
        return Row.of("object store down", tally, recovery,
                      f"cached model served from cache; uncached failed in {failed_in:.1f} s: "
                      f"{tally.details('clear', 1)}", checks)


def hang_on_load(root: Path, duration_s: float) -> Row:
    uri = code_model(root, "hangs", hang=True)
    start_timeout_s = 4.0
    with gateway(root / "home-hang") as gw:
        started = time.monotonic()
        create(gw, "stuck", uri, min_provisioned_concurrency=4,
               autoscaling={"start_timeout_s": start_timeout_s})
        tally = Tally()
        with httpx.Client(timeout=60) as client:
            while time.monotonic() - started < start_timeout_s:
                send(client, gw.invocations("stuck"), {"inputs": {"x": [1.0]}}, tally)
                time.sleep(0.5)
        wait_until(lambda: entity_state(gw, "stuck")["endpoint"].get("config_update") == "UPDATE_FAILED",
                   start_timeout_s * 3 + 60, "the update to fail")
        failed_after = time.monotonic() - started
        state = entity_state(gw, "stuck")
        reason = state["endpoint"].get("config_update_message") or state.get("deployment_state_message", "")
        def running() -> int:  # ``desired`` stays at the floor: the failed deployment is not retried
            replicas = entity_state(gw, "stuck").get("replicas") or {}
            return sum(int(replicas.get(kind, 0)) for kind in ("starting", "ready", "draining"))

        wait_until(lambda: running() == 0, 30, "no replica left starting")
        with httpx.Client(timeout=60) as client:
            send(client, gw.invocations("stuck"), {"inputs": {"x": [1.0]}}, tally)
        checks = {"the update fails, saying why": f"within {start_timeout_s:g} s" in reason,
                  "no replica left running": running() == 0,
                  "none lost": tally.count("lost") == 0,
                  "queries get a clear error": tally.count("clear") == len(tally.outcomes)}
        return Row.of("model hangs on load", tally, failed_after, f"update failed: {reason[:200]}", checks)


def _paced(gw: Gateway, name: str, body: Any, rate: float, tally: Tally, stop: threading.Event) -> None:
    """``rate`` requests a second to ``name`` until ``stop`` is set (a closed loop would outrun a leak)."""
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            send(client, gw.invocations(name), body, tally)
            stop.wait(1.0 / rate)


def memory_leak(root: Path, duration_s: float) -> Row:
    leaky = code_model(root, "leaky", leak_mib=8)
    uri, body = onnx_model(root)
    limit_mib = 450  # a pyfunc replica of this model starts at about 200 MiB resident
    with gateway(root / "home-leak", {"ZEROSERVE_REPLICA_MEMORY_LIMIT_MIB": str(limit_mib)}) as gw:
        create(gw, "leaky", leaky, **FLOOR_OF_TWO)
        create(gw, "steady", uri, **FLOOR_OF_TWO)
        wait_until(lambda: ready_replicas(gw, "leaky") == 2 and ready_replicas(gw, "steady") == 2, 180,
                   "two replicas of each")
        steady_pids = set(replica_pids(gw, "steady"))
        leaky_pids = set(replica_pids(gw, "leaky"))

        def kills() -> int:
            with gw.client() as client:
                return client.get(f"{API}/leaky/served-models/m/logs").json()["logs"].count(
                    f"over its limit of {limit_mib} MiB")

        leaking, steady, stop = Tally(), Tally(), threading.Event()
        loads = [threading.Thread(target=_paced, args=(gw, "leaky", {"inputs": {"x": [1.0]}}, 10.0, leaking,
                                                       stop)),
                 threading.Thread(target=_paced, args=(gw, "steady", body, 20.0, steady, stop))]
        started = time.monotonic()
        for thread in loads:
            thread.start()
        try:
            wait_until(lambda: kills() >= 1, 120, "a leaking replica to be killed")
            killed_at = time.monotonic()
            # Back: a replacement (a pid not there before) is ready and the floor is two again.
            wait_until(lambda: ready_replicas(gw, "leaky") == 2
                       and set(replica_pids(gw, "leaky")) - leaky_pids, 120, "a replacement at the floor")
            recovery = time.monotonic() - killed_at
            time.sleep(max(0.0, duration_s - (time.monotonic() - started)))
        finally:
            stop.set()
            for thread in loads:
                thread.join()
        killed = kills()
        with gw.client() as client:
            healthy = client.get("/readyz").status_code == 200
        tally = Tally(leaking.outcomes + steady.outcomes)
        checks = {"leaking replicas killed at the limit": killed >= 1,
                  "the other endpoint untouched": steady.count("ok") == len(steady.outcomes)
                  and set(replica_pids(gw, "steady")) == steady_pids,
                  "gateway healthy": healthy, "none lost": tally.count("lost") == 0}
        return Row.of("model leaks memory", tally, recovery,
                      f"{killed} replica(s) killed at {limit_mib} MiB and replaced; the leaking endpoint: "
                      f"{leaking.count('ok')} ok, {leaking.count('clear')} clear "
                      f"({leaking.details('clear', 1)}); the other endpoint: {steady.count('ok')} ok", checks)


def store_flaky(root: Path, duration_s: float) -> Row:
    """The store misbehaves at cold start, one way per endpoint: each cold start is one request."""
    import onnx

    from runtime.store.testing import S3Proxy

    uri, body = onnx_model(root)
    slow_s = 2.0
    with _moto_models() as (_, address, s3):
        proxy = S3Proxy(address).start()
        faults: dict[str, Callable[[], None]] = {
            "answers 500 twice": lambda: proxy.fail_gets(2, 500),
            "cuts the connection mid-object twice": lambda: proxy.cut_gets(2, after_bytes=64),
            "sends a corrupted body once": lambda: proxy.corrupt_gets(1),
            f"takes {slow_s:g} s per object":
                lambda: setattr(proxy, "before_get", lambda: time.sleep(slow_s)),
            "answers 500 to every read": lambda: proxy.fail_gets(10_000, 500),
        }
        try:
            graph = onnx.load(str(Path(uri.removeprefix("file://")) / "model.onnx"))
            names = [f"cold-{index}" for index in range(len(faults))]
            for name in names:
                # Each its own bytes: the cache reuses an object it already holds (same ETag) without a GET.
                graph.doc_string = name
                s3.put_object(Bucket="models", Key=f"{name}/model.onnx", Body=graph.SerializeToString())
            tally, results = Tally(), []
            env = {**_AWS, "ZEROSERVE_S3_ENDPOINT_URL": proxy.endpoint_url}
            with gateway(root / "home-flaky", env) as gw:
                for name in names:
                    create(gw, name, f"s3://models/{name}", scale_to_zero_enabled=True)
                with httpx.Client(timeout=120) as client:
                    for name, (what, make_fault) in zip(names, faults.items(), strict=True):
                        proxy.clear_faults()
                        proxy.before_get = None
                        make_fault()
                        started = time.monotonic()
                        kind = send(client, gw.invocations(name), body, tally)
                        results.append((what, kind, time.monotonic() - started, tally.outcomes[-1].detail))
        finally:
            proxy.stop()
    expected = ["ok"] * (len(faults) - 1) + ["clear"]
    persistent = results[-1]
    checks = {"transient faults absorbed": [kind for _, kind, _, _ in results] == expected,
              "a store that keeps failing is named": "models" in persistent[3] or "s3" in persistent[3],
              "none lost": tally.count("lost") == 0}
    summary = "; ".join(f"{what}: {kind} in {seconds:.1f} s" for what, kind, seconds, _ in results)
    return Row.of("object store flaky at cold start", tally, max(seconds for _, _, seconds, _ in results),
                  f"{summary}. Persistent: {persistent[3][:200]}", checks)


FAULTS: dict[str, Callable[[Path, float], Row]] = {
    "replica-sigkill": replica_sigkill,
    "crash-on-input": crash_on_input,
    "gateway-restart": gateway_restart,
    "store-down": store_down,
    "hang-on-load": hang_on_load,
    "memory-leak": memory_leak,
    "store-flaky": store_flaky,
}


def run(fault: str, root: Path, duration_s: float) -> Row:
    try:
        return FAULTS[fault](root, duration_s)
    except Exception as exc:  # a fault that could not be staged is a row that says why
        return Row(fault, 0, 0, 0, 0, 0, None, f"not measured: {type(exc).__name__}: {exc}"[:400],
                   {"staged": False})


def table(rows: list[Row]) -> str:
    lines = ["| fault | sent | ok | clear errors | lost | refused (no gateway) | recovery s | checks"
             " | outcome |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        checks = ", ".join(f"{name} {'✓' if ok else '✗'}" for name, ok in row.checks.items())
        recovery = f"{row.recovery_s:.2f}" if row.recovery_s is not None else "-"
        outcome = " ".join(row.outcome.split()).replace("|", "/")[:300]
        lines.append(f"| {row.fault} | {row.sent} | {row.ok} | {row.clear} | {row.lost} | {row.refused} "
                     f"| {recovery} | {checks} | {outcome} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="6 s of load per fault instead of 30")
    parser.add_argument("--only", choices=sorted(FAULTS), action="append", help="run only these faults")
    args = parser.parse_args(argv)
    duration = 6.0 if args.quick else 30.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="zeroserve-reliability-") as scratch:
        for fault in args.only or list(FAULTS):
            print(f"... {fault}", file=sys.stderr, flush=True)
            rows.append(run(fault, Path(scratch), duration))
    mode = "--quick" if args.quick else "full"
    print(f"python -m benchmarks.reliability_report ({mode}; {duration:g} s of load per fault)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
