"""infra/terraform: the examples validate against the real provider's schema under the real terraform
binary (init from the provider's mirror), and the model-bucket module — whose AWS provider cannot be
installed here (no registry) — is held to its promises by parsing it (python-hcl2) and by
``terraform fmt -check``. checkov scans both (test_checkov.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

TERRAFORM_DIR = Path(__file__).resolve().parents[2] / "infra" / "terraform"
TERRAFORM = shutil.which("terraform")
needs_terraform = pytest.mark.skipif(TERRAFORM is None, reason="the terraform binary is not installed")


def terraform(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert TERRAFORM is not None
    rc = cwd / ".test-cli.tfrc"
    rc.write_text("")
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(rc), "TF_IN_AUTOMATION": "1", "TF_INPUT": "0",
           "CHECKPOINT_DISABLE": "1"}
    return subprocess.run([TERRAFORM, *args, "-no-color"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@needs_terraform
def test_everything_is_formatted(tmp_path: Path) -> None:
    done = terraform(tmp_path, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM_DIR))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_terraform
@pytest.mark.slow
@pytest.mark.parametrize("example", ["dev", "production"])
def test_the_examples_validate_against_the_provider(
    example: str, tmp_path: Path, terraform_mirror: Any
) -> None:
    work = tmp_path / example
    shutil.copytree(TERRAFORM_DIR / "examples" / example, work)
    shutil.copyfile(terraform_mirror.root / ".terraform.lock.hcl", work / ".terraform.lock.hcl")
    init = terraform(work, "init", f"-plugin-dir={terraform_mirror.root}")
    assert init.returncode == 0, init.stdout + init.stderr
    # validate asks the provider for its schema: every attribute and block the example uses must exist.
    checked = terraform(work, "validate")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def blocks(parsed: dict[str, Any], section: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``resource "type" "name" {...}`` blocks by (type, name), quotes taken off."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for item in parsed.get(section, []):
        for kind, named in item.items():
            for name, body in named.items():
                found[(kind.strip('"'), name.strip('"'))] = body
    return found


def one(value: Any) -> Any:
    """A nested block as python-hcl2 gives it: a list of one."""
    return value[0] if isinstance(value, list) else value


def test_the_model_bucket_module_keeps_its_promises() -> None:
    with open(TERRAFORM_DIR / "modules" / "model-bucket" / "main.tf") as handle:
        parsed = hcl2.load(handle)
    resources = blocks(parsed, "resource")
    data = blocks(parsed, "data")

    versioning = one(resources[("aws_s3_bucket_versioning", "models")]["versioning_configuration"])
    assert versioning["status"].strip('"') == "Enabled"
    encryption = one(one(resources[("aws_s3_bucket_server_side_encryption_configuration", "models")]["rule"])
                     ["apply_server_side_encryption_by_default"])
    assert encryption["sse_algorithm"].strip('"') == "aws:kms"
    assert resources[("aws_kms_key", "models")]["enable_key_rotation"] is True
    public = resources[("aws_s3_bucket_public_access_block", "models")]
    assert all(public[key] is True for key in
               ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"))

    # The runtime reads models and nothing else: list, get (any version), decrypt.
    statements = data[("aws_iam_policy_document", "runtime_read")]["statement"]
    actions = {action.strip('"') for statement in statements for action in statement["actions"]}
    assert actions == {"s3:ListBucket", "s3:GetObject", "s3:GetObjectVersion", "kms:Decrypt"}
    (deny,) = data[("aws_iam_policy_document", "tls_only")]["statement"]
    assert deny["effect"].strip('"') == "Deny"
    assert one(deny["condition"])["variable"].strip('"') == "aws:SecureTransport"


def test_the_dockerfiles_pin_their_base_image() -> None:
    for path in (TERRAFORM_DIR.parent / "docker").glob("*.Dockerfile"):
        (default,) = [line.split("=", 1)[1] for line in path.read_text().splitlines()
                      if line.startswith("ARG PYTHON_IMAGE=")]
        name, _, tag = default.partition(":")
        assert name and tag and tag != "latest" and any(ch.isdigit() for ch in tag), default
