"""checkov over everything in infra/: the Dockerfiles, the built kustomize overlays and the Terraform
(module and examples). 0 failed checks; every skipped check carries its reason inline.

checkov pins old releases of libraries the gateway uses (boto3, packaging), so it lives in a virtual
environment of its own: ``ZEROSERVE_CHECKOV`` names its executable (.ci/run makes one), else the
``checkov`` on PATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

INFRA = Path(__file__).resolve().parents[2] / "infra"
CHECKOV = os.environ.get("ZEROSERVE_CHECKOV") or shutil.which("checkov")
pytestmark = pytest.mark.skipif(
    CHECKOV is None, reason="checkov is not installed (set ZEROSERVE_CHECKOV; .ci/run installs it)")


def scan(directory: Path, framework: str) -> dict[str, Any]:
    assert CHECKOV is not None
    # --skip-download: no policy updates from the vendor's platform (there is no network to reach it).
    done = subprocess.run([CHECKOV, "-d", str(directory), "--framework", framework, "--skip-download",
                           "-o", "json"], capture_output=True, text=True, timeout=300, check=False)
    assert done.stdout.strip().startswith(("{", "[")), done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    (result,) = report if isinstance(report, list) else [report]
    return dict(result)


def assert_clean(result: dict[str, Any]) -> None:
    results = result["results"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in results["failed_checks"]]
    assert failed == [], failed
    assert result["summary"]["parsing_errors"] == 0
    assert results["passed_checks"], "checkov checked nothing"
    unjustified = [c["check_id"] for c in results["skipped_checks"]
                   if len((c["check_result"].get("suppress_comment") or "").strip()) < 20]
    assert unjustified == [], f"skipped without a reason: {unjustified}"


def test_the_dockerfiles() -> None:
    assert_clean(scan(INFRA / "docker", "dockerfile"))


def test_the_built_overlays(tmp_path: Path) -> None:
    for overlay in ("dev", "production"):
        built = subprocess.run(["kubectl", "kustomize", str(INFRA / "kubernetes" / "overlays" / overlay)],
                               capture_output=True, text=True, timeout=60, check=True)
        (tmp_path / f"{overlay}.yaml").write_text(built.stdout)
    result = scan(tmp_path, "kubernetes")
    assert_clean(result)
    assert result["summary"]["resource_count"] >= 20  # both overlays were read


def test_the_terraform() -> None:
    result = scan(INFRA / "terraform", "terraform")
    assert_clean(result)
    checked = {c["resource"].split(".")[0] for c in result["results"]["passed_checks"]}
    assert {"aws_s3_bucket", "aws_kms_key", "aws_iam_policy_document"} <= checked
