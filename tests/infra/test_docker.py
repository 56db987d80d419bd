"""infra/docker: the images' Dockerfiles, linted with hadolint (no Docker engine runs here, so they
are not built by the tests) and held to the rules the issue set: multi-stage, the base image a build
argument, a non-root user, a health check, nothing installed in the final stage."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "infra" / "docker"
FILES = sorted(DOCKER.glob("*.Dockerfile"))


def test_both_images_have_a_dockerfile() -> None:
    assert [path.name for path in FILES] == ["gateway.Dockerfile", "runtime.Dockerfile"]


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    linted = subprocess.run(["hadolint", "--failure-threshold", "info", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_the_image_rules(path: Path) -> None:
    text = path.read_text().splitlines()
    lines = [line.strip() for line in text if line.strip() and not line.startswith("#")]
    stages = [index for index, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage"
    assert lines[0].startswith("ARG PYTHON_IMAGE="), "the base image is a build argument"
    assert all("${PYTHON_IMAGE}" in lines[index] for index in stages)
    final = lines[stages[-1]:]
    assert not any("pip install" in line for line in final), "nothing built in the final stage"
    users = [line for line in final if line.startswith("USER ")]
    assert users and users[-1] != "USER root" and users[-1] != "USER 0"
    assert any(line.startswith("HEALTHCHECK ") for line in final)
