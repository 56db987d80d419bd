"""Soak: a real gateway with 20 scale-to-zero endpoints under mixed valid and invalid traffic, the hot set
moving so that endpoints keep scaling from zero and back; every request accounted for, and the
gateway's memory, file descriptors, threads and replica processes compared before and after.

The baseline is taken after a warm-up in which every endpoint cold-started once and went back to zero,
so the gateway has built what it keeps per endpoint; the final reading is taken once the load has
stopped and every endpoint is at zero again. Requests end as in ``benchmarks.reliability_report``: ok,
a clear error (a JSON body that says what went wrong), or lost. Invalid requests (malformed JSON, a
wrong shape, a wrong content type, a bad token, an unknown endpoint, nesting past the limit) must each
get the 4xx that names the problem.

    python -m benchmarks.soak [--quick] [--duration S]

``--quick`` runs 60 s of load (the CI form, ``tests/router/test_soak.py``); the default is 10 minutes.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import reliability_report as report

ENDPOINTS = 20
HOT = 5  # endpoints receiving traffic at any one time
THREADS = 4
ZERO = {"scale_to_zero_enabled": True,
        "autoscaling": {"scale_to_zero_grace_s": 1.0, "stable_window_s": 1, "scale_down_delay_s": 0}}


# ---- the gateway process as the kernel sees it ----------------------------------------------------


@dataclass(frozen=True)
class Reading:
    rss_mib: float
    fds: int
    threads: int
    processes: int  # the gateway's descendants: replicas, and its warm pool of workers

    def row(self) -> str:
        return f"{self.rss_mib:8.1f} {self.fds:5d} {self.threads:7d} {self.processes:9d}"


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if report.alive(child):
                found.append(child)
                frontier.append(child)
    return found


def read(pid: int) -> Reading:
    status = _status(pid)
    return Reading(rss_mib=int(status["VmRSS"].split()[0]) / 1024, fds=len(os.listdir(f"/proc/{pid}/fd")),
                   threads=int(status["Threads"]), processes=len(descendants(pid)))


# ---- traffic -------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """What was sent, by kind, and how each ended."""

    ended: Counter[tuple[str, str]] = field(default_factory=Counter)  # (request kind, ok|clear|lost|...)
    wrong: list[str] = field(default_factory=list)  # answers that did not fit the request
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, outcome: str, problem: str | None) -> None:
        with self.lock:
            self.ended[(kind, outcome)] += 1
            if problem is not None and len(self.wrong) < 20:
                self.wrong.append(problem)

    def total(self, outcome: str | None = None) -> int:
        return sum(n for (_, ended), n in self.ended.items() if outcome in (None, ended))


Request = tuple[str, dict[str, Any], int]  # path, httpx keyword arguments, the status it must get


def requests_of(row: list[float]) -> dict[str, Callable[[str], Request]]:
    """Request kinds by name: each gives (path, httpx kwargs, expected status) for an endpoint."""
    good = {"inputs": [row]}
    deep = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    return {
        "valid": lambda name: (f"/serving-endpoints/{name}/invocations", {"json": good}, 200),
        "valid-v2": lambda name: (f"/v2/models/{name}/infer", {"json": {"inputs": [
            {"name": "float_input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}}, 200),
        "malformed JSON": lambda name: (f"/serving-endpoints/{name}/invocations",
                                        {"content": b'{"inputs": [1,', "headers": _JSON}, 400),
        "wrong shape": lambda name: (f"/serving-endpoints/{name}/invocations",
                                     {"json": {"inputs": [row[:3]]}}, 400),
        "wrong content type": lambda name: (f"/serving-endpoints/{name}/invocations",
                                            {"content": b"1,2", "headers": _TEXT}, 415),
        "bad token": lambda name: (f"/serving-endpoints/{name}/invocations",
                                   {"json": good, "headers": {"authorization": "Bearer zs_nope"}}, 401),
        "unknown endpoint": lambda name: (f"/serving-endpoints/{name}-gone/invocations", {"json": good}, 404),
        "nested too deep": lambda name: (f"/serving-endpoints/{name}/invocations",
                                         {"content": deep, "headers": _JSON}, 400),
    }


_JSON = {"content-type": "application/json"}
_TEXT = {"content-type": "text/plain"}


def load(gw: report.Gateway, names: list[str], row: list[float], until: float, cycle_s: float,
         traffic: Traffic, seed: int) -> None:
    kinds = requests_of(row)
    invalid = [kind for kind in kinds if not kind.startswith("valid")]
    chooser = random.Random(seed)
    with httpx.Client(base_url=gw.url, timeout=60,
                      headers={"Authorization": f"Bearer {report.ADMIN_TOKEN}"}) as client:
        while time.monotonic() < until:
            phase = int(time.monotonic() / cycle_s)
            name = names[(phase * HOT + chooser.randrange(HOT)) % len(names)]
            valid = chooser.random() < 0.8
            kind = chooser.choice(["valid", "valid-v2"]) if valid else chooser.choice(invalid)
            path, kwargs, expected = kinds[kind](name)
            try:
                response = client.post(path, **kwargs)
            except httpx.HTTPError as exc:
                traffic.add(kind, "lost", f"{kind} to {name}: {type(exc).__name__}: {exc}")
                continue
            outcome, detail = report.classify(response)
            problem = None
            if response.status_code != expected:
                problem = f"{kind} to {name}: expected {expected}, got {detail or response.status_code}"
            traffic.add(kind, outcome, problem)


# ---- the run -------------------------------------------------------------------------------------


def ready_total(gw: report.Gateway) -> int:
    with gw.client() as client:
        families = text_string_to_metric_families(client.get("/metrics").text)
        return int(sum(sample.value for family in families if family.name == "zeroserve_replicas"
                       for sample in family.samples if sample.labels.get("state") != "desired"))


def cold_starts(gw: report.Gateway) -> int:
    with gw.client() as client:
        families = text_string_to_metric_families(client.get("/metrics").text)
        return int(sum(sample.value for family in families if family.name == "zeroserve_cold_starts"
                       for sample in family.samples if sample.name.endswith("_total")))


def at_zero(gw: report.Gateway, pid: int, idle_processes: int) -> bool:
    """No replica, and no more processes than the gateway keeps when idle (its warm pool of workers)."""
    return ready_total(gw) == 0 and len(descendants(pid)) <= idle_processes


def idle_processes(pid: int, timeout_s: float = 60.0) -> int:
    """The gateway's processes before any endpoint exists, once its warm pool has filled."""
    counts = [len(descendants(pid))]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
        counts.append(len(descendants(pid)))
        if counts[-1] == counts[-2]:
            break
    return counts[-1]


@dataclass
class Result:
    duration_s: float
    before: Reading
    after: Reading
    traffic: Traffic
    cold_starts: int
    settled_s: float

    @property
    def rss_growth(self) -> float:
        return self.after.rss_mib / self.before.rss_mib - 1

    def checks(self) -> dict[str, bool]:
        return {
            "0 lost": self.traffic.total("lost") == 0,
            "every answer fits its request": not self.traffic.wrong,
            "RSS growth < 10 %": self.rss_growth < 0.10,
            "fds back to baseline": self.after.fds <= self.before.fds,
            "threads back to baseline": self.after.threads <= self.before.threads,
            "processes back to baseline (no replica left)": self.after.processes <= self.before.processes,
        }


def run(root: Path, duration_s: float, cycle_s: float = 6.0) -> Result:
    uri, body = report.onnx_model(root)
    row = body["inputs"][0]
    names = [f"soak-{index:02d}" for index in range(ENDPOINTS)]
    with report.gateway(root / "home") as gw:
        assert gw.process is not None
        pid = gw.process.pid
        idle = idle_processes(pid)
        for name in names:
            report.create(gw, name, uri, **ZERO)
        # Warm-up: every endpoint cold-starts once (its replica path, stats and series exist), then idles.
        with httpx.Client(timeout=60) as client:
            for name in names:
                report.send(client, gw.invocations(name), body, report.Tally())
        report.wait_until(lambda: at_zero(gw, pid, idle), 120,
                          "every endpoint back at zero after the warm-up")
        before = read(pid)
        traffic = Traffic()
        until = time.monotonic() + duration_s
        workers = [threading.Thread(target=load, args=(gw, names, row, until, cycle_s, traffic, seed))
                   for seed in range(THREADS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        settled = report.wait_until(lambda: at_zero(gw, pid, idle), 120,
                                    "every endpoint back at zero after the load")
        # A reading at the moment the last replica is reaped can still count its closing sockets.
        time.sleep(1.0)
        return Result(duration_s, before, read(pid), traffic, cold_starts(gw), settled)


def render(result: Result) -> str:
    traffic = result.traffic
    lines = [f"soak: {ENDPOINTS} scale-to-zero endpoints, {HOT} hot at a time (the hot set moves every few "
             f"seconds), {THREADS} clients, {result.duration_s:g} s",
             "",
             "requests      sent      ok   clear    lost",
             f"{'all':10} {traffic.total():7d} {traffic.total('ok'):7d} {traffic.total('clear'):7d} "
             f"{traffic.total('lost'):7d}"]
    for kind in sorted({kind for kind, _ in traffic.ended}):
        counts = {outcome: traffic.ended[(kind, outcome)] for outcome in ("ok", "clear", "lost")}
        lines.append(f"  {kind:18} {sum(counts.values()):6d} {counts['ok']:7d} {counts['clear']:7d} "
                     f"{counts['lost']:7d}")
    lines += ["", f"cold starts from zero: {result.cold_starts}; every endpoint back at zero "
              f"{result.settled_s:.1f} s after the load", "",
              "gateway      RSS MiB   fds threads processes",
              f"before      {result.before.row()}",
              f"after       {result.after.row()}",
              f"RSS growth  {result.rss_growth * 100:+.1f} %", ""]
    lines += [f"{name}: {'✓' if ok else '✗'}" for name, ok in result.checks().items()]
    lines += [f"  {problem}" for problem in traffic.wrong[:10]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="60 s of load instead of 10 minutes")
    parser.add_argument("--duration", type=float, help="seconds of load (overrides --quick)")
    args = parser.parse_args(argv)
    duration = args.duration or (60.0 if args.quick else 600.0)
    with tempfile.TemporaryDirectory(prefix="zeroserve-soak-") as root:
        result = run(Path(root), duration)
    print(render(result))
    raise SystemExit(0 if all(result.checks().values()) else 1)


if __name__ == "__main__":
    main()
