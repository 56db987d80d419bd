"""First answer from zero: a replica started by the Kubernetes backend through a real API server, beside
the local backend, N runs each.

Each run starts one replica of a small ONNX model (LogisticRegression, 20 features; already in the
node's model cache after the first run), sends it one query, and times from the start request to the
answer; then stops it and waits until it is gone. The Kubernetes control plane is the real one in
``../shared/k8s`` (etcd, kube-apiserver, scheduler, controller-manager, v1.20) but **the node is
simulated**: fake-node runs the pod's command as a local process — no image pull, no container runtime,
no CNI — so a real cluster adds those on top (to a new pod; a pool pod has them behind it already).
Also reported: Kubernetes API calls per scale-up and per scale-down (the pool's refill not counted
as the scale-up's: it is done in the background).

    python -m benchmarks.kubernetes_cold_start [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from autoscaler.spec import EntitySpec
from autoscaler.types import EntityKey

KEY = EntityKey("bench", "logreg")


def k8s_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    for candidate in (root.parent / "shared" / "k8s", root / "shared" / "k8s", Path("/work/shared/k8s")):
        if (candidate / "start-control-plane").exists():
            return candidate
    raise RuntimeError("the Kubernetes control plane (../shared/k8s) is not here")


async def first_answers(backend: Any, spec: EntitySpec, runs: int, body: dict[str, Any],
                        wait_gone: Any) -> tuple[list[float], list[int], list[int]]:
    times, up_calls, down_calls = [], [], []
    async with httpx.AsyncClient(timeout=60) as client:
        for run in range(runs):
            replica_id = f"bench-logreg-{run}"
            calls = getattr(backend, "api_calls", 0)
            started = time.perf_counter()
            info = await backend.start_replica(KEY, spec, replica_id)
            answer = await client.post(f"{info.url}/invocations", json=body)
            times.append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise RuntimeError(f"the replica answered {answer.status_code}: {answer.text[:200]}")
            up_calls.append(getattr(backend, "api_calls", 0) - calls)
            calls = getattr(backend, "api_calls", 0)
            await backend.stop_replica(replica_id, 2.0)
            down_calls.append(getattr(backend, "api_calls", 0) - calls)
            await wait_gone(replica_id)
    return times, up_calls, down_calls


def row(label: str, times: list[float], up: list[int] | None = None, down: list[int] | None = None) -> str:
    ordered = sorted(times)
    p50 = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    calls = f"{statistics.mean(up):.0f} / {statistics.mean(down):.0f}" if up and down else "-"
    return f"{label:<40} {len(times):>4} {p50 * 1000:>8.0f} {p95 * 1000:>8.0f} {calls:>14}"


async def measure(kubeconfig: str, model: Path, cache: Path, runs: int) -> None:
    from autoscaler.backends.kubernetes import (
        POOL_LABEL,
        KubernetesBackend,
        KubernetesBackendSettings,
        pod_name,
    )
    from autoscaler.backends.local import LocalBackend
    from runtime.examples import logreg_rows

    spec = EntitySpec(model_uri=model.as_uri(), served_name="logreg", drain_timeout_s=2, start_timeout_s=60)
    body = {"inputs": logreg_rows(20, 1).tolist()}
    print(f"first answer from zero, {runs} runs each (Kubernetes v1.20 control plane; the node is"
          " simulated: no image pull, no container runtime)")
    print(f"{'backend':<40} {'runs':>4} {'p50 ms':>8} {'p95 ms':>8} {'API calls up/down':>14}")

    for label, pool_size in (("kubernetes: warm pool pod, specialized", 1),
                             ("kubernetes: a new pod per scale-up", 0)):
        kube = KubernetesBackend(KubernetesBackendSettings(kubeconfig=kubeconfig, python=sys.executable,
                                                           cache_host_path=str(cache), pool_size=pool_size))
        try:
            await kube.open()

            async def settled(replica_id: str, backend: Any = kube) -> None:
                """The stopped pod is gone and, with a pool, an idle pool pod waits again."""
                from lightkube import ApiError
                from lightkube.resources.core_v1 import Pod

                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    pods = [pod async for pod in backend._client.list(Pod, labels={POOL_LABEL: "cpu"})
                            if pod.status.podIP and pod.metadata.deletionTimestamp is None]
                    idle = [pod for pod in pods if await backend._idle(f"http://{pod.status.podIP}:8080")]
                    try:
                        await backend._client.get(Pod, backend._pods.get(replica_id, pod_name(replica_id)))
                    except ApiError:
                        if len(idle) >= backend.settings.pool_size:
                            return
                    await asyncio.sleep(0.1)

            await settled("none")
            times, up, down = await first_answers(kube, spec, runs, body, settled)
            print(row(label, times, up, down) + (f"  ({kube.specialized} of {runs} from the pool)"
                                                 if pool_size else ""))
        except Exception as error:  # a row that says why, not a crashed run
            print(f"{label:<40} failed: {error!r}")
        finally:
            await kube.close()

    local = LocalBackend()
    try:
        await local.open()
        if local.pool is not None:
            await local.pool.wait_full()

        async def process_gone(replica_id: str) -> None:
            if local.pool is not None:
                await local.pool.wait_full()

        times, _, _ = await first_answers(local, spec, runs, body, process_gone)
        print(row("local: warm pool process (default)", times))
    except Exception as error:
        print(f"{'local: warm pool process (default)':<40} failed: {error}")
    finally:
        await local.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 runs instead of 20")
    parser.add_argument("--runs", type=int)
    args = parser.parse_args(argv)
    runs = args.runs or (5 if args.quick else 20)
    from runtime.examples import make_logreg_onnx

    with tempfile.TemporaryDirectory(prefix="zs-k8s-cold-") as scratch:
        root = Path(scratch)
        model = make_logreg_onnx(root / "models" / "logreg", n_features=20)
        state = root / "k8s"
        env = dict(os.environ)
        env.setdefault("K8S_BIN_CACHE", os.path.expanduser("~/.cache/hermetic-k8s-bin"))
        k8s = k8s_dir()
        started = subprocess.run([str(k8s / "start-control-plane"), str(state), "--fake-node", "exec"],
                                 capture_output=True, text=True, env=env, timeout=180)
        if started.returncode != 0:
            print("the Kubernetes control plane did not start:\n" + started.stderr[-3000:])
            return
        kubeconfig = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
        try:
            asyncio.run(measure(kubeconfig, model, root / "node-cache", runs))
        finally:
            subprocess.run([str(k8s / "stop-control-plane"), str(state)], capture_output=True, timeout=120)


if __name__ == "__main__":
    main()
