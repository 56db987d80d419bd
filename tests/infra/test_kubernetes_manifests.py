"""infra/kubernetes: the kustomize base and its overlays, built with kubectl's kustomize, checked against
the schemas of a current Kubernetes release (kubernetes-validate, strict), and applied to the real
control plane in ../shared/k8s, where the dev overlay's gateway pod runs (fake-node runs its command as a
local process) and answers a query through its pod address."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from runtime.examples import logreg_rows, make_logreg_onnx

INFRA = Path(__file__).resolve().parents[2] / "infra" / "kubernetes"
OVERLAYS = ("dev", "production")
ADMIN = "infra-test-admin-" + "k" * 32


def kustomize(directory: Path) -> list[dict[str, Any]]:
    built = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True,
                           timeout=60, check=True)
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_build_and_match_a_current_schema(overlay: str, tmp_path: Path) -> None:
    documents = kustomize(INFRA / "overlays" / overlay)
    kinds = {str(doc["kind"]) for doc in documents}
    assert {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget",
            "NetworkPolicy", "Ingress", "ConfigMap"} <= kinds
    (deployment,) = [doc for doc in documents if doc["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == {"dev": 1, "production": 3}[overlay]
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(documents))
    checked = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                              "-k", "1.32.0", str(rendered)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_role_grants_what_the_backend_uses_and_no_more() -> None:
    (role,) = [doc for doc in kustomize(INFRA / "base") if doc["kind"] == "Role"]
    rules = {tuple(rule["resources"]): set(rule["verbs"]) for rule in role["rules"]}
    assert rules == {("pods",): {"create", "get", "list", "watch", "patch", "delete"}, ("pods/log",): {"get"}}


def run(kube: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", "--kubeconfig", kube, *args], capture_output=True, text=True,
                          timeout=90, check=check)


TEST_OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {namespace}
resources:
  - ../{base}
configMapGenerator:
  - name: zeroserve-settings
    behavior: merge
    literals:
      - ZEROSERVE_HOME={home}
      - ZEROSERVE_WARM_POOL_SIZE=0
secretGenerator:
  - name: zeroserve-secrets
    literals: [admin-token={admin}]
  - name: zeroserve-database
    literals: [url=postgresql://nobody@127.0.0.1:1/none]
patches:
  # policy/v1 is 1.21+; this control plane is 1.20 (the current schema is checked above).
  - patch: |-
      $patch: delete
      apiVersion: policy/v1
      kind: PodDisruptionBudget
      metadata: {{name: zeroserve-gateway}}
  # No storage provisioner here (an unbound claim would keep the pod from being scheduled).
  - patch: |-
      $patch: delete
      apiVersion: v1
      kind: PersistentVolumeClaim
      metadata: {{name: zeroserve-home}}
  - target: {{kind: Deployment, name: zeroserve-gateway}}
    patch: |-
      - op: replace
        path: /spec/template/spec/volumes/0
        value: {{name: home, emptyDir: {{}}}}
"""


@pytest.mark.slow
def test_the_dev_overlay_serves_on_the_cluster(kube: str, tmp_path: Path) -> None:
    tree = tmp_path / "kubernetes"
    shutil.copytree(INFRA, tree)
    namespace = "zs-dev-test"
    overlay = tree / "overlays" / "test-dev"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(TEST_OVERLAY.format(
        namespace=namespace, base="dev", home=tmp_path / "home", admin=ADMIN))
    run(kube, "create", "namespace", namespace, check=True)
    applied = run(kube, "apply", "-k", str(overlay))
    assert applied.returncode == 0, applied.stderr

    def gateway_url() -> str | None:
        ip = run(kube, "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=gateway", "-o",
                 "jsonpath={.items[0].status.podIP}").stdout.strip()
        if not ip:
            return None
        try:
            ready = httpx.get(f"http://{ip}:8484/readyz", timeout=2).is_success
        except httpx.HTTPError:
            return None
        return f"http://{ip}:8484" if ready else None

    deadline = time.monotonic() + 90
    url = gateway_url()
    while url is None and time.monotonic() < deadline:
        time.sleep(0.5)
        url = gateway_url()
    assert url is not None, run(kube, "get", "pods", "-A", "-o", "wide").stdout
    model = make_logreg_onnx(tmp_path / "models" / "logreg")
    headers = {"Authorization": f"Bearer {ADMIN}"}
    entity = {"name": "logreg", "entity_name": model.as_uri(), "entity_version": "1",
              "workload_size": "Small", "scale_to_zero_enabled": True}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        created = client.post("/api/2.0/serving-endpoints",
                              json={"name": "fraud", "config": {"served_entities": [entity]}})
        assert created.status_code == 200, created.text
        answer = None
        for _ in range(100):
            answer = client.post("/serving-endpoints/fraud/invocations",
                                 json={"inputs": logreg_rows(20, 1).tolist()})
            if answer.status_code != 404:  # routed once the first config is applied
                break
            time.sleep(0.1)
        assert answer is not None and answer.status_code == 200, answer.text if answer else None
    run(kube, "delete", "namespace", namespace, "--wait=false")


@pytest.mark.slow
def test_the_production_overlay_is_accepted_by_the_api_server(kube: str, tmp_path: Path) -> None:
    tree = tmp_path / "kubernetes"
    shutil.copytree(INFRA, tree)
    overlay = tree / "overlays" / "test-production"
    overlay.mkdir()
    text = TEST_OVERLAY.format(namespace="zs-prod-test", base="production", home=tmp_path / "home",
                               admin=ADMIN)
    # Production has no claim to delete.
    text = text.split("  # No storage provisioner")[0]
    (overlay / "kustomization.yaml").write_text(text)
    run(kube, "create", "namespace", "zs-prod-test", check=True)
    checked = run(kube, "apply", "-k", str(overlay), "--dry-run=server")
    assert checked.returncode == 0, checked.stderr
    assert "deployment.apps/zeroserve-gateway created (server dry run)" in checked.stdout
