"""`zeroserve up --example`, the README's first command, as a user runs it: a foreground process that
trains the example model on first run, deploys it, and prints a query that works when pasted."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

_CLI = "import sys; from router.cli import cli, serve; sys.argv[0] = 'zeroserve'; cli()"


class Up:
    """``zeroserve up --example`` in a subprocess, its output read line by line until it is ready."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CLI, "up", "--example", "--port", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.lines: list[str] = []
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == "zeroserve status":
                self._done.set()

    def wait_ready(self) -> str:
        assert self._done.wait(timeout=150), "no ready message:\n" + "\n".join(self.lines)
        return "\n".join(self.lines)

    def curl(self) -> tuple[str, dict[str, str], Any]:
        curl = next(line.strip() for line in self.lines if line.strip().startswith("curl "))
        parts = shlex.split(curl)
        headers = dict(parts[i + 1].split(": ", 1) for i, part in enumerate(parts) if part == "-H")
        return parts[2], headers, json.loads(parts[parts.index("-d") + 1])

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


@pytest.mark.slow
def test_up_example_prints_a_working_query_that_survives_restarts(tmp_path: Path) -> None:
    env = {**os.environ, "ZEROSERVE_HOME": str(tmp_path / "home")}
    for key in ("ZEROSERVE_ADMIN_TOKEN", "ZEROSERVE_URL", "ZEROSERVE_TOKEN"):
        env.pop(key, None)
    first = Up(env)
    try:
        output = first.wait_ready()
        lines = first.lines
        assert re.search(r"zeroserve is up at http://127\.0\.0\.1:\d+", output)
        assert "admin token (shown once" in output
        assert len(re.findall(r"zeroserve is up at", output)) == 1  # said once, not again by the example
        # Scale to zero, shown: how long it idles, and what the first request from zero cost.
        assert "it scales to zero after 90 s without traffic" in output
        assert re.search(r"its first query from zero just took \d+\.\d\d s", output), output
        # Piped (not a terminal), the token lines must still be whole: one line each, pasteable.
        exports = [line.strip() for line in lines if "export ZEROSERVE_TOKEN" in line]
        assert exports and all(re.fullmatch(r"export ZEROSERVE_TOKEN=zs_\S{40,}", line) for line in exports)
        shown = [line for line in lines if line.startswith("admin token (shown once")]
        assert shown and all(re.search(r"keep it\): zs_\S{40,}$", line) for line in shown)
        url, headers, body = first.curl()
        answer = httpx.post(url, headers=headers, json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["served-model-name"] == "propensity-1"
        predictions = answer.json()["predictions"]
        assert len(predictions) == 2 and all(0.0 <= p["probability"] <= 1.0 for p in predictions)
        # The printed query token may query, and nothing more.
        listing = httpx.get(url.split("/serving-endpoints")[0] + "/api/2.0/serving-endpoints",
                            headers=headers, timeout=10)
        assert [e["name"] for e in listing.json().get("endpoints", [])] in ([], ["propensity"])
        delete = httpx.delete(url.split("/serving-endpoints")[0] + "/api/2.0/serving-endpoints/propensity",
                              headers=headers, timeout=10)
        assert delete.status_code == 403
    finally:
        code = first.stop()
    # An orderly shutdown (uvicorn drained, the logs flushed) exits 0, not "terminated by SIGTERM".
    assert code == 0
    assert (tmp_path / "home" / "models" / "propensity" / "1" / "MLmodel").is_file()
    assert not (tmp_path / "home" / "gateway.json").exists(), "an orderly shutdown forgets its URL"
    saved = tmp_path / "home" / "example-query-token"
    assert saved.stat().st_mode & 0o777 == 0o600

    # A restart on the same home prints the same query token, and the first start's query still works.
    second = Up(env)
    try:
        second.wait_ready()
        assert "admin token (shown once" not in "\n".join(second.lines)
        url_again, headers_again, _ = second.curl()
        assert headers_again["Authorization"] == headers["Authorization"]
        answer = httpx.post(url_again, headers=headers, json=body, timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        assert second.stop() == 0


def test_serve_refuses_what_it_cannot_do_with_a_clear_message(tmp_path: Path) -> None:
    import socket

    env = {**os.environ, "ZEROSERVE_HOME": str(tmp_path / "home")}
    env.pop("ZEROSERVE_ADMIN_TOKEN", None)
    insecure = subprocess.run(
        [sys.executable, "-c", _CLI, "serve", "--insecure-no-auth", "--host", "0.0.0.0", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert insecure.returncode == 1
    assert "binds to loopback only" in insecure.stderr and "Traceback" not in insecure.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = subprocess.run([sys.executable, "-c", _CLI, "serve", "--port", port],
                              env=env, capture_output=True, text=True, timeout=60)
    assert busy.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr and "Traceback" not in busy.stderr


@pytest.mark.slow
def test_ctrl_c_is_an_orderly_shutdown_that_exits_0(tmp_path: Path) -> None:
    from tests.router.gateway_process import ADMIN_TOKEN, wait_for

    home = tmp_path / "home"
    env = {**os.environ, "ZEROSERVE_HOME": str(home), "ZEROSERVE_ADMIN_TOKEN": ADMIN_TOKEN}
    process = subprocess.Popen([sys.executable, "-c", _CLI, "serve", "--port", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (home / "gateway.json").is_file(), 60, "the gateway to announce itself")
        process.send_signal(signal.SIGINT)  # what Ctrl-C at a terminal sends
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, output[-2000:]
    assert "Aborted!" not in output and "Traceback" not in output
    assert not (home / "gateway.json").exists(), "an orderly shutdown forgets its URL"
