"""Fixtures every test folder may use: the control-plane database on either engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from router.state.db import Database, SqliteDatabase
from router.state.testing import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole run (started on first use, ~1 s)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Database]]:
    """Opens the test's database (a new connection each call, like a gateway restart or a second
    gateway), on SQLite and on PostgreSQL: the stores' tests run against both engines."""
    opened: list[Database] = []
    if request.param == "sqlite":
        def make() -> Database:
            opened.append(SqliteDatabase(tmp_path / "state.db"))
            return opened[-1]
    else:
        from router.state.postgres import PostgresDatabase

        url = request.getfixturevalue("postgres_url")

        def make() -> Database:
            opened.append(PostgresDatabase(url))
            return opened[-1]
    try:
        yield make
    finally:
        for database in opened:
            database.close()


def _k8s_dir() -> Path:
    """``../shared/k8s`` beside the checkout (or ``ZEROSERVE_TEST_K8S_DIR``): the test control plane."""
    import os

    configured = os.environ.get("ZEROSERVE_TEST_K8S_DIR")
    root = Path(__file__).resolve().parents[1]
    candidates = [Path(configured)] if configured else [
        root.parent / "shared" / "k8s", root / "shared" / "k8s", Path("/work/shared/k8s")]
    for candidate in candidates:
        if (candidate / "start-control-plane").exists():
            return candidate
    raise RuntimeError(f"the test Kubernetes control plane is not in {', '.join(map(str, candidates))}")


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Kubernetes v1.20 control plane (etcd, apiserver, scheduler, controller-manager) whose
    fake-node runs each pod's command as a local process on its own 127.0.x.y; the kubeconfig path.
    Per module (about 6 s to start): left running, it would take CPU from every later test."""
    import os
    import subprocess

    k8s = _k8s_dir()
    state = tmp_path_factory.mktemp("k8s")
    env = dict(os.environ)
    env.setdefault("K8S_BIN_CACHE", os.path.expanduser("~/.cache/hermetic-k8s-bin"))
    started = subprocess.run([str(k8s / "start-control-plane"), str(state), "--fake-node", "exec"],
                             capture_output=True, text=True, env=env, timeout=180)
    if started.returncode != 0:
        pytest.fail("the Kubernetes control plane did not start:\n" + started.stderr[-4000:])
    kubeconfig = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    try:
        yield kubeconfig
    finally:
        subprocess.run([str(k8s / "stop-control-plane"), str(state)], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def terraform_mirror(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The Terraform provider's filesystem mirror (``router.terraform.mirror``). Its interpreter is
    ``ZEROSERVE_TERRAFORM_PYTHON`` when set, else one the mirror makes with ``tf`` from the package
    index, as ``zeroserve terraform mirror`` does for a user."""
    import os

    from router.terraform.mirror import write_mirror

    python = os.environ.get("ZEROSERVE_TERRAFORM_PYTHON")
    return write_mirror(tmp_path_factory.mktemp("terraform-mirror"), python)
