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

import httpx
import pytest

pytestmark = pytest.mark.slow

_CLI = "import sys; from router.cli import cli, serve; sys.argv[0] = 'zeroserve'; cli()"


def test_up_example_prints_a_working_query(tmp_path: Path) -> None:
    env = {**os.environ, "ZEROSERVE_HOME": str(tmp_path / "home")}
    for key in ("ZEROSERVE_ADMIN_TOKEN", "ZEROSERVE_URL", "ZEROSERVE_TOKEN"):
        env.pop(key, None)
    process = subprocess.Popen(
        [sys.executable, "-c", _CLI, "up", "--example", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.strip() == "zeroserve status":
                done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert done.wait(timeout=150), "no ready message:\n" + "\n".join(lines)
        output = "\n".join(lines)
        assert re.search(r"zeroserve is up at http://127\.0\.0\.1:\d+", output)
        assert "admin token (shown once" in output
        # Piped (not a terminal), the token lines must still be whole: one line each, pasteable.
        exports = [line.strip() for line in lines if "export ZEROSERVE_TOKEN" in line]
        assert exports and all(re.fullmatch(r"export ZEROSERVE_TOKEN=zs_\S{40,}", line) for line in exports)
        shown = [line for line in lines if line.startswith("admin token (shown once")]
        assert shown and all(re.search(r"keep it\): zs_\S{40,}$", line) for line in shown)
        curl = next(line.strip() for line in lines if line.strip().startswith("curl "))
        parts = shlex.split(curl)
        url = parts[2]
        headers = dict(parts[i + 1].split(": ", 1) for i, part in enumerate(parts) if part == "-H")
        body = json.loads(parts[parts.index("-d") + 1])
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
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(timeout=10)
        reader.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
    # uvicorn re-raises the signal once it has shut down in order, so the parent sees it.
    assert code in (0, -signal.SIGTERM)
    assert (tmp_path / "home" / "models" / "propensity" / "1" / "MLmodel").is_file()
    assert not (tmp_path / "home" / "gateway.json").exists(), "an orderly shutdown forgets its URL"


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
