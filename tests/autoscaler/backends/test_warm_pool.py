"""The warm pool with real worker processes (each imports the runtime and onnxruntime, ~1 s)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from autoscaler.backends.warm_pool import WarmPool, needs_fresh_process


@pytest.mark.parametrize(
    ("environment", "fresh"),
    [({}, False), ({"MLFLOW_TRACKING_URI": "http://x"}, False), ({"ZEROSERVE_OPTIMIZATION": "off"}, False),
     ({"OMP_NUM_THREADS": "2"}, True), ({"PYTHONHASHSEED": "0"}, True), ({"LD_PRELOAD": "x.so"}, True),
     ({"MKL_NUM_THREADS": "1"}, True)],
    ids=["none", "mlflow-uri", "zeroserve-setting", "omp", "python-flag", "ld-preload", "mkl"],
)
def test_variables_read_at_import_need_a_fresh_process(environment: dict[str, str], fresh: bool) -> None:
    assert needs_fresh_process(environment) is fresh


async def test_take_refill_and_close(replica_environment: dict[str, str]) -> None:
    pool = WarmPool(1, ("onnx",), replica_environment)
    pool.start()
    try:
        await pool.wait_full(timeout_s=60)
        assert pool.idle == 1
        worker = pool.take()
        assert worker is not None
        assert worker.process.returncode is None
        assert worker.output.idle.done()
        assert "ZEROSERVE_POOL_IDLE" not in worker.output.text()  # protocol, not log output
        assert pool.idle == 0
        assert pool.take() is None  # empty: the caller starts a process of its own
        # The taken worker dies unassigned (its backend would have handed it a replica instead).
        worker.process.kill()
        await worker.process.wait()
        pool.refill()
        await pool.wait_full(timeout_s=60)
        assert pool.idle == 1
        # A worker that died while idle is skipped, never handed out.
        [pid] = pool.idle_pids
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):  # until the event loop's child watcher reaped it
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.025)
        await asyncio.sleep(0.05)  # and delivered the exit status to the process object
        assert pool.take() is None
    finally:
        await pool.close()
    assert pool.idle == 0
    pool.refill()  # closed: nothing is spawned any more
    assert pool.idle == 0
