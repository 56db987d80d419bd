"""Fixtures for the replica's tests: example models built once per session, real replica processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtime.__main__ import READY_PREFIX


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def onnx_model(models_dir: Path) -> Path:
    from runtime.examples import make_logreg_onnx

    return make_logreg_onnx(models_dir / "logreg-onnx", n_features=20)


@pytest.fixture(scope="session")
def sklearn_model(models_dir: Path) -> Path:
    from runtime.examples import make_logreg_mlflow_sklearn

    return make_logreg_mlflow_sklearn(models_dir / "logreg-sklearn", n_features=20)


@pytest.fixture(scope="session")
def custom_model(models_dir: Path) -> Path:
    from runtime.examples import make_custom_pyfunc

    return make_custom_pyfunc(models_dir / "custom")


@pytest.fixture(scope="session")
def propensity_model(models_dir: Path) -> Path:
    from runtime.examples import make_propensity_mlflow

    return make_propensity_mlflow(models_dir / "propensity")


@pytest.fixture(scope="session")
def torchscript_model(models_dir: Path) -> Path:
    from runtime.examples import make_torchscript

    return make_torchscript(models_dir / "torchscript")


@dataclass
class ReplicaProcess:
    process: subprocess.Popen[str]
    port: int
    # The ready line's JSON (port, pid, cache counters, optimization path).
    announced: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_process(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_ready(process: subprocess.Popen[str], timeout: float = 60.0) -> int:
    """Read the replica's stdout until its ready line; fail with its stderr if it exits first."""
    port: int = wait_announced(process, timeout)["port"]
    return port


def wait_announced(process: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    """The JSON of the replica's ready line (see ``wait_ready``)."""
    import selectors

    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise AssertionError(f"replica not ready after {timeout} s")
        line = process.stdout.readline()
    finally:
        selector.close()
    if not line.startswith(READY_PREFIX):
        stderr = process.stderr.read() if process.stderr and process.wait(timeout=10) is not None else ""
        raise AssertionError(f"replica did not become ready: {line!r} {stderr}")
    announced: dict[str, Any] = json.loads(line[len(READY_PREFIX) :])
    return announced


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def start_replica() -> Iterator[Callable[..., ReplicaProcess]]:
    """Start ``python -m runtime`` with the given arguments; every replica is stopped at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ReplicaProcess:
        process = start_process(list(args), env)
        started.append(process)
        announced = wait_announced(process)
        return ReplicaProcess(process, announced["port"], announced)

    try:
        yield start
    finally:
        for process in started:
            stop(process)
