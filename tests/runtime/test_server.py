"""``serve()`` inside an already-running, pre-imported process, as the autoscaler's warm pool uses it."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path

import httpx

from runtime.config import ReplicaSettings
from runtime.examples import logreg_rows
from runtime.loaders import preload
from runtime.server import YOUNG_GC_THRESHOLD, bind_socket, serve


def _warm_child(model_dir: str, sock_fd: int, conn: Connection) -> None:
    import socket

    preload(["onnx"])  # what a warm process does before it is given a model
    sock = socket.socket(fileno=sock_fd)
    serve(
        model_dir,
        served_name="warm",
        settings=ReplicaSettings(max_batch_size=8),
        sock=sock,
        on_ready=lambda port: conn.send((port, gc.get_freeze_count(), gc.get_threshold()[0])),
    )
    conn.send("stopped")


def test_serve_in_a_forked_warm_process_with_a_given_socket(onnx_model: Path) -> None:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(
        target=_warm_child, args=(str(onnx_model), sock.fileno(), child)
    )
    process.start()
    sock.close()
    try:
        assert parent.poll(60), "the warm process never became ready"
        ready_port, frozen, young_threshold = parent.recv()
        assert ready_port == port
        # The loaded heap is frozen (the collector no longer walks it) before the first request.
        assert frozen > 1000
        assert young_threshold == YOUNG_GC_THRESHOLD
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            answer = client.post("/v2/models/warm/infer", json={
                "inputs": [{"name": "float_input", "shape": [2, 20], "datatype": "FP64",
                            "data": logreg_rows(20, 2).ravel().tolist()}],
            })  # fmt: skip
            assert answer.status_code == 200
            assert answer.json()["outputs"][0]["shape"] == [2]
        assert process.pid is not None
        os.kill(process.pid, signal.SIGTERM)
        assert parent.poll(20) and parent.recv() == "stopped"  # serve() returned after the drain
        process.join(timeout=10)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
