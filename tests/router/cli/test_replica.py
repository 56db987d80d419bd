"""``zeroserve replica`` as a real process."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

CLI = [sys.executable, "-c", "from router.cli import main; main()", "replica"]


def _lines_until(process: subprocess.Popen[str], pattern: str, timeout: float) -> str:
    """Read stderr and stdout until a line matching ``pattern`` appears; return that line."""
    assert process.stdout is not None and process.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    selector.register(process.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    try:
        while time.monotonic() < deadline:
            for key, _ in selector.select(deadline - time.monotonic()):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                seen.append(line)
                if re.search(pattern, line):
                    return str(line)
            if process.poll() is not None:
                break
    finally:
        selector.close()
    raise AssertionError(f"no line matching {pattern!r}; got {seen}")


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_example_builds_the_propensity_model_once_and_prints_a_working_curl(tmp_path: Path) -> None:
    env = {**os.environ, "ZEROSERVE_HOME": str(tmp_path)}
    process = subprocess.Popen(
        [*CLI, "--example"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        # The example is a custom MLflow pyfunc (it answers records with a probability): nothing to
        # convert, and the CLI says so before serving.
        path = _lines_until(process, r"^Serving path: ", timeout=120)
        assert path.startswith("Serving path: native (no convertible flavor"), path
        curl = _lines_until(process, r"^curl ", timeout=120)
        url = re.search(r"(http://\S+/invocations)", curl)
        body = re.search(r"-d '(.*)'", curl)
        assert url and body
        answer = httpx.post(url.group(1), content=body.group(1), headers={"Content-Type": "application/json"})
        assert answer.status_code == 200
        (record,) = answer.json()["predictions"]
        assert 0.0 < record["probability"] < 1.0
    finally:
        assert _stop(process) == 0
    assert (tmp_path / "models" / "propensity" / "1" / "MLmodel").is_file()


def test_model_uri_and_example_are_exclusive() -> None:
    result = subprocess.run([*CLI], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "exactly one of --model-uri and --example" in result.stderr


def test_a_missing_model_is_reported_without_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    result = subprocess.run(
        [*CLI, "--model-uri", str(missing)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1 and str(missing) in result.stderr and "Traceback" not in result.stderr
