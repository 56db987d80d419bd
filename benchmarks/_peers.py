# mypy: disable-error-code="import-untyped"
# (joblib ships no type hints)
"""Peer model servers for the benchmarks: MLServer, KServe's Python server and BentoML, each in its own
virtualenv.

Their pins conflict with zeroserve's environment (and with each other), so each peer lives in a virtualenv
under ``~/.cache/zeroserve-bench`` (``ZEROSERVE_BENCH_CACHE`` moves it) that the benchmark makes with
``python -m venv`` + ``pip`` the first time and reuses while its requirement list is unchanged. The peers
serve the same scikit-learn estimator the MLflow model holds, exported with joblib; the virtualenvs pin
the scikit-learn, numpy and joblib versions of this environment so that the pickle loads unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE_DIR = Path(os.environ.get("ZEROSERVE_BENCH_CACHE", "~/.cache/zeroserve-bench")).expanduser()
# uvloop 0.22+ raises from asyncio.get_event_loop() outside a running loop, which MLServer 1.7.1's
# inference worker processes call at start: they die and the server exits before it is ready.
MLSERVER_REQUIREMENTS = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0")
KSERVE_REQUIREMENTS = ("kserve==0.21.0",)
BENTOML_REQUIREMENTS = ("bentoml==1.4.40",)
MODEL_NAME = "sklearn-model"
KSERVE_SCRIPT = Path(__file__).with_name("_kserve_peer.py")
BENTOML_SERVICE = "_bentoml_peer:SklearnForest"  # benchmarks/_bentoml_peer.py
_STAMP = "zeroserve-requirements.txt"


class PeerUnavailable(Exception):
    """A peer's virtualenv could not be made; the message says why (the tail of pip's output)."""


@dataclass
class PeerServer:
    """How to start one peer and talk to it. ``command`` and ``env`` hold ``{port}``, ``{grpc_port}`` and
    ``{metrics_port}`` for the benchmark to fill in at start."""

    command: list[str]
    health: str
    path: str
    body: bytes  # one row
    big_body: bytes  # 1,000 rows
    labels_of: Callable[[Any], list[int]]  # the labels in an answer
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


def mlserver(
    workdir: Path, estimator_file: Path, one: list[list[float]], many: list[list[float]]
) -> PeerServer:
    """MLServer + mlserver-sklearn serving ``estimator_file``, V2 protocol, rows as one FP64 tensor."""
    python = ensure_venv("mlserver", [*MLSERVER_REQUIREMENTS, *model_libraries()])
    repository = mlserver_repository(workdir / "mlserver", estimator_file)
    return PeerServer(
        command=[str(python.parent / "mlserver"), "start", str(repository)],
        health=f"/v2/models/{MODEL_NAME}/ready",
        path=f"/v2/models/{MODEL_NAME}/infer",
        body=v2_body(one),
        big_body=v2_body(many),
        labels_of=v2_labels,
        env={
            "MLSERVER_HTTP_PORT": "{port}",
            "MLSERVER_GRPC_PORT": "{grpc_port}",
            "MLSERVER_METRICS_PORT": "{metrics_port}",
        },
        cwd=repository,  # MLServer writes scratch folders into its working directory
    )


def kserve(
    workdir: Path, estimator_file: Path, one: list[list[float]], many: list[list[float]]
) -> PeerServer:
    """KServe's Python model server (``_kserve_peer.py``) serving ``estimator_file``, V1 protocol.

    gRPC off (nothing here speaks it) and per-request latency log lines off, as in every server measured;
    KServe binds 0.0.0.0 (not configurable), the load reaches it on 127.0.0.1."""
    python = ensure_venv("kserve", [*KSERVE_REQUIREMENTS, *model_libraries()])
    command = [
        str(python), str(KSERVE_SCRIPT), "--model_file", str(estimator_file), "--model_name", MODEL_NAME,
        "--http_port", "{port}", "--enable_grpc", "false", "--enable_latency_logging", "false",
    ]  # fmt: skip
    return PeerServer(
        command=command,
        health=f"/v1/models/{MODEL_NAME}",
        path=f"/v1/models/{MODEL_NAME}:predict",
        body=v1_body(one),
        big_body=v1_body(many),
        labels_of=v1_labels,
        cwd=workdir,
    )


def bentoml(
    workdir: Path, estimator_file: Path, one: list[list[float]], many: list[list[float]]
) -> PeerServer:
    """BentoML (``_bentoml_peer.py``, started by ``bentoml serve``) serving ``estimator_file``.

    One worker; BentoML's usage tracking off (nothing here reaches the internet) and its home in the
    benchmark's scratch folder, so the run leaves nothing in ``~/bentoml``."""
    python = ensure_venv("bentoml", [*BENTOML_REQUIREMENTS, *model_libraries()])
    command = [
        str(python.parent / "bentoml"), "serve", BENTOML_SERVICE, "--host", "127.0.0.1", "--port", "{port}",
    ]  # fmt: skip
    return PeerServer(
        command=command,
        health="/readyz",
        path="/predict",
        body=v1_body(one),
        big_body=v1_body(many),
        labels_of=lambda answer: [int(label) for label in answer],
        env={
            "ZEROSERVE_BENCH_MODEL_FILE": str(estimator_file),
            "BENTOML_DO_NOT_TRACK": "True",
            "BENTOML_HOME": str(workdir / "bentoml-home"),
        },
        cwd=Path(__file__).parent,  # where bentoml finds the service module (_bentoml_peer.py)
    )


def expected_labels(estimator_file: Path, rows: list[list[float]]) -> list[int]:
    """What the exported estimator itself answers for ``rows``: every server running it must agree."""
    import joblib
    import numpy as np

    return [int(label) for label in joblib.load(estimator_file).predict(np.asarray(rows))]


def model_libraries() -> tuple[str, ...]:
    """This environment's scikit-learn, numpy and joblib, pinned: the peers unpickle what this one saved."""
    import joblib
    import numpy
    import sklearn

    return (
        f"scikit-learn=={sklearn.__version__}",
        f"numpy=={numpy.__version__}",
        f"joblib=={joblib.__version__}",
    )


def ensure_venv(name: str, requirements: Sequence[str], timeout: float = 900.0) -> Path:
    """The Python of virtualenv ``CACHE_DIR/venv-NAME`` holding ``requirements``: reused when its stamp lists
    exactly these, otherwise made afresh. Raises PeerUnavailable when venv or pip fails."""
    from filelock import FileLock

    venv = CACHE_DIR / f"venv-{name}"
    python = venv / "bin" / "python"
    wanted = "\n".join(requirements) + "\n"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE_DIR / f"venv-{name}.lock"), timeout=timeout):  # two benchmarks at once build once
        stamp = venv / _STAMP
        if python.exists() and stamp.exists() and stamp.read_text() == wanted:
            return python
        shutil.rmtree(venv, ignore_errors=True)
        print(f"making the {name} virtualenv in {venv} (once; minutes) ...", file=sys.stderr, flush=True)
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        ]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise PeerUnavailable(f"{' '.join(step[:4])} ... took over {timeout:g} s") from exc
            if done.returncode != 0:
                # pip's own notes about absent local indexes bury the error; keep the lines that matter
                errors = [line for line in done.stderr.splitlines() if "is ignored: it is" not in line]
                raise PeerUnavailable(f"{' '.join(step[:5])} ... failed: {' | '.join(errors[-4:])}")
        # Written last: a virtualenv cut short (timeout, Ctrl-C) has no stamp and is made again next time.
        stamp.write_text(wanted)
        return python


def export_estimator(sklearn_model_dir: Path, target: Path) -> Path:
    """The MLflow sklearn model's estimator, saved with joblib for the peers' own loaders."""
    import joblib

    from runtime.loaders._imports import quiet_import

    estimator = quiet_import("mlflow.sklearn").load_model(str(sklearn_model_dir))
    # It was fitted on a DataFrame; the peers get bare tensors (V2 FP64, V1 instances), on which scikit-learn
    # would warn on every call about the missing column names. The coefficients are untouched.
    if hasattr(estimator, "feature_names_in_"):
        del estimator.feature_names_in_
    target.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, target)
    return target


def mlserver_repository(directory: Path, model_file: Path) -> Path:
    """An MLServer model repository serving ``model_file`` through mlserver-sklearn as ``MODEL_NAME``.

    Ports come from the environment (``MLSERVER_HTTP_PORT`` ...), as they are picked at start. Each peer
    runs in its best configuration for this machine: ``debug`` off drops the per-request access log (no
    server here writes one), and ``parallel_workers`` 0 runs inference in the server process instead of a
    worker process behind a queue — on 2 cores that hop halves MLServer's requests/s at c=16 (480 vs
    1,000 measured). The rest (adaptive batching off) is MLServer's default."""
    model_dir = directory / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "parallel_workers": 0,
        "host": "127.0.0.1",
        "metrics_dir": str(directory / ".metrics"),
        "environments_dir": str(directory / ".envs"),
    }
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model_file)},
    }
    (directory / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return directory


def v2_body(rows: list[list[float]]) -> bytes:
    """An Open Inference Protocol (V2) request carrying ``rows`` as one FP64 tensor."""
    flat = [value for row in rows for value in row]
    tensor = {"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": flat}
    return json.dumps({"inputs": [tensor]}).encode()


def v1_body(rows: list[list[float]]) -> bytes:
    """A KServe V1 request: ``{"instances": rows}``."""
    return json.dumps({"instances": rows}).encode()


def v2_labels(answer: Any) -> list[int]:
    return [int(value) for value in answer["outputs"][0]["data"]]


def v1_labels(answer: Any) -> list[int]:
    return [int(value) for value in answer["predictions"]]


def free_port() -> int:
    """A loopback port free right now (the server started on it binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_filler(port: int) -> Callable[[str], str]:
    """Fill ``{port}`` (and fresh ``{grpc_port}``/``{metrics_port}``) in a server's command and env."""
    ports = {"{port}": str(port), "{grpc_port}": str(free_port()), "{metrics_port}": str(free_port())}

    def fill(text: str) -> str:
        for placeholder, value in ports.items():
            text = text.replace(placeholder, value)
        return text

    return fill
