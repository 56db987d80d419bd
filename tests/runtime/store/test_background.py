"""The process-wide store loop of open_model: S3 clients kept between opens, closed at exit, not forked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from runtime.store import StoreSettings, open_model
from tests.runtime.store.conftest import upload_tree

# Runs in a fresh interpreter with every warning an error, so an unclosed client session or event loop
# at exit (a ResourceWarning raised while the interpreter shuts down) shows up in stderr or the exit code.
_SCRIPT = textwrap.dedent(
    """
    import multiprocessing
    import os
    import sys

    from runtime.store import StoreSettings, open_model
    from runtime.store import background, s3

    settings = StoreSettings(cache_dir=sys.argv[1], s3_endpoint_url=sys.argv[2], s3_addressing_style="path")
    uri = sys.argv[3]

    def open_twice() -> tuple[int, int]:
        clients = []
        for _ in range(2):
            with open_model(uri, settings) as handle:
                assert (handle.path / "model.bin").read_bytes() == b"weights"
            clients.extend(entry[1] for entry in s3._shared_clients.values())
        assert len(s3._shared_clients) == 1, s3._shared_clients
        assert clients[0] is clients[1], "the second open built a new client"
        return id(background._current.loop), os.getpid(), id(clients[0])

    def child(queue: multiprocessing.Queue) -> None:
        queue.put(open_twice())

    parent = open_twice()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    process = ctx.Process(target=child, args=(queue,))
    process.start()
    child_loop, child_pid, child_client = queue.get(timeout=60)
    process.join(60)
    assert process.exitcode == 0, process.exitcode
    assert child_pid != parent[1] and child_loop != parent[0]
    assert child_client != parent[2], "the child used the client (and sockets) of its parent"
    assert background._current.loop is not None and id(background._current.loop) == parent[0]
    with open_model(uri, settings):  # the parent's loop and client still work after the fork
        pass
    print("ok")
    """
)


def test_warm_opens_share_one_client_close_it_at_exit_and_rebuild_after_fork(
    s3: Any, bucket: str, moto_endpoint: str, tmp_path: Path
) -> None:
    upload_tree(s3, bucket, "m", {"model.bin": b"weights"})
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", _SCRIPT, str(tmp_path / "cache"),
         f"http://{moto_endpoint}", f"s3://{bucket}/m"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    for symptom in ("Unclosed", "unclosed", "Exception ignored", "Traceback"):
        assert symptom not in done.stderr, done.stderr


def test_open_model_from_inside_a_running_loop_still_works(
    s3: Any, bucket: str, settings: StoreSettings
) -> None:
    import asyncio

    upload_tree(s3, bucket, "m", {"model.bin": b"weights"})

    async def caller() -> bytes:
        with open_model(f"s3://{bucket}/m", settings) as handle:
            return (handle.path / "model.bin").read_bytes()

    assert asyncio.run(caller()) == b"weights"
