"""A real gateway process for end-to-end tests: ``zeroserve serve --port 0`` in a temporary home.

The gateway announces its URL in ``$ZEROSERVE_HOME/gateway.json`` once it has restored its state; the
helper waits for that and for ``/readyz``. ``stop()`` sends SIGTERM (an orderly drain), ``kill()``
SIGKILL (a crash); both wait for the process, and the context manager always cleans up.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

ADMIN_TOKEN = "e2e-admin-token-" + "z" * 32
# Never reach for real credentials: moto accepts any.
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# Runs the CLI as the `zeroserve` entry point does, importing only the command groups it needs.
_CLI = "import sys; from router.cli import cli, serve; sys.argv[0] = 'zeroserve'; cli()"


class GatewayProcess:
    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = {**os.environ, **(env or {})}
        self.env.update(ZEROSERVE_HOME=str(home), ZEROSERVE_ADMIN_TOKEN=ADMIN_TOKEN)
        self.env.pop("ZEROSERVE_URL", None)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.home / "gateway-test.log"

    def start(self, timeout_s: float = 60.0) -> GatewayProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        announced = self.home / "gateway.json"
        announced.unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _cleanup
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CLI, "serve", "--host", "127.0.0.1", "--port", "0"],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.logs()}")
            try:
                info = json.loads(announced.read_text())
                if info.get("pid") == self.process.pid:
                    self.url = info["url"]
                    if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                        return self
            except (OSError, ValueError, httpx.HTTPError):
                pass
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"gateway not ready within {timeout_s} s:\n{self.logs()}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def access_log(
        self, until: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 10.0
    ) -> list[dict[str, Any]]:
        """The gateway's access-log entries, once ``until`` holds for them. The gateway writes its log in
        one write per flush interval (about a second at most), so a line can trail its request."""
        deadline = time.monotonic() + timeout_s
        while True:
            entries = [json.loads(line) for line in self.log_path.read_text(errors="replace").splitlines()
                       if line.startswith("{") and '"zeroserve.access"' in line]
            if until(entries) or time.monotonic() > deadline:
                return entries
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30.0) -> int:
        return self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> int:
        return self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: signal.Signals, timeout_s: float) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        code = self.process.returncode
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kwargs)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def wait_for(condition: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@contextmanager
def s3_models(bucket: str, models: Mapping[str, Path]) -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback holding each model directory under ``s3://bucket/<prefix>/``.

    Yields the environment a gateway needs to reach it; the server stops when the block ends.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=bucket)
        for prefix, directory in models.items():
            for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
                s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")
        yield {**DUMMY_AWS, "ZEROSERVE_S3_ENDPOINT_URL": endpoint}
    finally:
        server.stop()
