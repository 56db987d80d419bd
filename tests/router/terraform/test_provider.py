"""The Terraform provider under the real ``terraform`` binary, against a real gateway process: init from
the mirror (with its lock file), plan, apply, update in place, import, drift, a refused config, destroy.

The mirror is ``tests/conftest.py``'s ``terraform_mirror``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.terraform.mirror import Mirror
from runtime.examples import logreg_rows, make_logreg_onnx
from tests.router.gateway_process import ADMIN_TOKEN, GatewayProcess

TERRAFORM = shutil.which("terraform")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(TERRAFORM is None, reason="the terraform binary is not installed"),
]
API = "/api/2.0/serving-endpoints"
BODY = {"inputs": logreg_rows(20, 1).tolist()}
HEADER = """
terraform {
  required_providers {
    zeroserve = { source = "zeroserve.local/zeroserve/zeroserve", version = "0.1.0" }
  }
}
variable "host" {}
variable "token" { sensitive = true }
provider "zeroserve" {
  host  = var.host
  token = var.token
}
"""


@pytest.fixture(scope="module")
def mirror(terraform_mirror: Mirror) -> Mirror:
    return terraform_mirror


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {version: make_logreg_onnx(root / version, n_features=20).as_uri()
            for version in ("v1", "v2")}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path_factory.mktemp("home")) as process:
        yield process


class Workdir:
    """A Terraform working directory: ``main.tf`` written by the test, the mirror's lock file beside it."""

    def __init__(self, path: Path, mirror: Mirror, gateway: GatewayProcess) -> None:
        self.path = path
        self.mirror = mirror
        cli_config = path / "cli.tfrc"
        cli_config.write_text("")  # this machine's own CLI configuration stays out of the test
        self.env = {**os.environ, "TF_CLI_CONFIG_FILE": str(cli_config), "TF_IN_AUTOMATION": "1",
                    "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1", "TF_VAR_host": gateway.url,
                    "TF_VAR_token": ADMIN_TOKEN}
        shutil.copyfile(mirror.root / ".terraform.lock.hcl", path / ".terraform.lock.hcl")

    def write(self, config: str) -> None:
        (self.path / "main.tf").write_text(HEADER + config)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert TERRAFORM is not None
        done = subprocess.run([TERRAFORM, *args, "-no-color"], cwd=self.path, env=self.env,
                              capture_output=True, text=True, timeout=240, check=False)
        if check and done.returncode != 0:
            raise AssertionError(
                f"terraform {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def init(self) -> None:
        self.run("init", f"-plugin-dir={self.mirror.root}")

    def apply(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "-auto-approve", check=check)

    def plan_exit_code(self) -> tuple[int, str]:
        """``plan -detailed-exitcode``: 0 no changes, 2 changes (1 is an error, raised here)."""
        done = self.run("plan", "-detailed-exitcode", check=False)
        if done.returncode == 1:
            raise AssertionError(f"terraform plan failed:\n{done.stdout}\n{done.stderr}")
        return done.returncode, done.stdout


@pytest.fixture
def workdir(tmp_path: Path, mirror: Mirror, gateway: GatewayProcess) -> Workdir:
    return Workdir(tmp_path, mirror, gateway)


def endpoint(name: str, model: str, extra: str = "") -> str:
    return f"""
resource "zeroserve_serving_endpoint" "{name}" {{
  name = "{name}"
  served_entity {{
    name                  = "v1"
    entity_name           = "{model}"
    scale_to_zero_enabled = true
  }}
{extra}
}}
"""


def query(gateway: GatewayProcess, name: str, token: str = ADMIN_TOKEN) -> httpx.Response:
    return httpx.post(f"{gateway.url}/serving-endpoints/{name}/invocations", json=BODY,
                      headers={"Authorization": f"Bearer {token}"}, timeout=60)


def get(gateway: GatewayProcess, name: str) -> httpx.Response:
    with gateway.client(timeout=30) as client:
        return client.get(f"{API}/{name}")


def test_apply_is_ready_and_idempotent_updates_in_place_without_a_failed_query_and_destroys(
    workdir: Workdir, gateway: GatewayProcess, models: dict[str, str]
) -> None:
    extra = """
  tags = { team = "risk" }
  rate_limit {
    calls          = 100000
    renewal_period = "minute"
  }
"""
    access = """
resource "zeroserve_token" "scorer" {
  principal = "scorer"
  comment   = "the transaction pipeline"
}
resource "zeroserve_permissions" "fraud" {
  endpoint = zeroserve_serving_endpoint.fraud.name
  access_control {
    user_name        = zeroserve_token.scorer.principal
    permission_level = "CAN_QUERY"
  }
}
data "zeroserve_serving_endpoint" "fraud" {
  name       = zeroserve_serving_endpoint.fraud.name
  depends_on = [zeroserve_permissions.fraud]
}
output "ready" { value = data.zeroserve_serving_endpoint.fraud.ready }
output "token" {
  value     = zeroserve_token.scorer.token
  sensitive = true
}
"""
    workdir.write(endpoint("fraud", models["v1"], extra) + access)
    workdir.init()
    workdir.apply()

    answer = get(gateway, "fraud").json()
    assert answer["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert answer["tags"] == [{"key": "team", "value": "risk"}]
    assert answer["rate_limits"] == [{"calls": 100000, "renewal_period": "minute"}]
    assert workdir.run("output", "-raw", "ready").stdout == "READY"
    token = workdir.run("output", "-raw", "token").stdout
    assert query(gateway, "fraud", token).status_code == 200  # the token and its grant work
    assert workdir.plan_exit_code()[0] == 0  # a second plan finds nothing to do

    # A second version and a 90/10 split: an in-place update, queried all through it.
    split = extra + '  traffic = { v1 = 90, v2 = 10 }\n'
    second = f"""  served_entity {{
    name        = "v2"
    entity_name = "{models['v2']}"
  }}
"""
    workdir.write(endpoint("fraud", models["v1"], split + second) + access)
    code, plan = workdir.plan_exit_code()
    assert code == 2 and "1 to change, 0 to destroy" in plan, plan
    failures: list[str] = []
    sent = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal sent
        while not stop.is_set():
            answer = query(gateway, "fraud")
            sent += 1
            if answer.status_code != 200:
                failures.append(f"{answer.status_code} {answer.text[:200]}")

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        workdir.apply()
    finally:
        stop.set()
        thread.join(timeout=60)
    assert sent > 0 and failures == []
    routes = get(gateway, "fraud").json()["config"]["traffic_config"]["routes"]
    assert {r["served_entity_name"]: r["traffic_percentage"] for r in routes} == {"v1": 90, "v2": 10}
    assert workdir.plan_exit_code()[0] == 0

    workdir.run("destroy", "-auto-approve")
    assert get(gateway, "fraud").status_code == 404
    with gateway.client(timeout=30) as client:
        tokens = client.get("/api/2.0/zeroserve/tokens", params={"include_inactive": "true"}).json()["tokens"]
    assert all(t["revoked_time"] is not None for t in tokens if t["principal"] == "scorer")


def test_import_of_a_cli_endpoint_then_drift_plans_a_recreation(
    workdir: Workdir, gateway: GatewayProcess, models: dict[str, str]
) -> None:
    cli = "import sys; from router.cli import main; sys.argv[0] = 'zeroserve'; main()"
    made = subprocess.run(
        [sys.executable, "-c", cli, "endpoints", "create", "propensity", "--model", models["v1"],
         "--served-name", "v1", "--scale-to-zero", "--url", gateway.url, "--token", ADMIN_TOKEN],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert made.returncode == 0, made.stderr
    workdir.write(endpoint("propensity", models["v1"]))
    workdir.init()
    imported = workdir.run("import", "zeroserve_serving_endpoint.propensity", "propensity")
    assert "Import successful" in imported.stdout
    assert workdir.plan_exit_code()[0] == 0  # the imported state matches the configuration

    with gateway.client(timeout=30) as client:
        assert client.delete(f"{API}/propensity").status_code == 200
    code, plan = workdir.plan_exit_code()
    assert code == 2 and "1 to add, 0 to change, 0 to destroy" in plan, plan
    workdir.apply()
    assert get(gateway, "propensity").json()["state"]["ready"] == "READY"
    workdir.run("destroy", "-auto-approve")


def test_a_config_the_gateway_refuses_is_a_diagnostic_on_its_attribute(
    workdir: Workdir, gateway: GatewayProcess, models: dict[str, str]
) -> None:
    second = f"""  served_entity {{
    name        = "v2"
    entity_name = "{models['v2']}"
  }}
  traffic = {{ v1 = 90, v2 = 9 }}
"""
    workdir.write(endpoint("refused", models["v1"], second))
    workdir.init()
    done = workdir.apply(check=False)
    assert done.returncode == 1
    assert "zeroserve refused to create endpoint 'refused'" in done.stderr
    assert "traffic percentages sum to 99, not 100" in done.stderr
    assert 'traffic = { v1 = 90, v2 = 9 }' in done.stderr  # Terraform points at the attribute's line
    assert get(gateway, "refused").status_code == 404


def test_init_refuses_a_provider_package_that_does_not_match_the_lock_file(
    workdir: Workdir, mirror: Mirror, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A copy of the mirror with one byte changed: the lock file's h1 hash must catch it, which shows
    # the hash the mirror writes is Terraform's own.
    tampered = tmp_path_factory.mktemp("tampered")
    shutil.copytree(mirror.root / "zeroserve.local", tampered / "zeroserve.local")
    main = next(tampered.rglob("provider_main.py"))
    main.write_text(main.read_text() + "\n")
    workdir.write("")
    done = workdir.run("init", f"-plugin-dir={tampered}", check=False)
    assert done.returncode == 1
    assert "doesn't match any of the checksums" in done.stderr or "checksum" in done.stderr, done.stderr
    workdir.init()  # the real mirror installs


def test_the_cli_writes_a_mirror_with_its_lock_entry(tmp_path: Path, mirror: Mirror) -> None:
    from click.testing import CliRunner

    from router.cli import _register, cli

    _register()
    done = CliRunner().invoke(cli, ["terraform", "mirror", str(tmp_path / "m"), "--python", mirror.python])
    assert done.exit_code == 0, done.output
    assert "zeroserve.local/zeroserve/zeroserve 0.1.0" in done.output and mirror.hash in done.output
    lock = (tmp_path / "m" / ".terraform.lock.hcl").read_text()
    assert f'"{mirror.hash}"' in lock  # the same sources and interpreter: the same package hash
    refused = CliRunner().invoke(cli, ["terraform", "mirror", str(tmp_path / "n"),
                                       "--python", sys.executable])
    assert refused.exit_code != 0 and "cannot import the `tf` framework" in refused.output
