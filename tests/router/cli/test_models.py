"""``zeroserve models pull`` and ``zeroserve cache ls | prune`` through click's runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import router.cli.models  # noqa: F401  (registers the commands)
from router.cli import cli
from runtime.store import StoreSettings, open_model


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def make_model(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def test_pull_then_pull_again_is_a_cache_hit(tmp_path: Path, cache_dir: Path) -> None:
    model = make_model(tmp_path, "model.onnx", 200_000)
    runner = CliRunner()
    first = runner.invoke(cli, ["models", "pull", model.as_uri(), "--cache-dir", str(cache_dir)])
    assert first.exit_code == 0, first.output
    assert "fetched" in first.output and "195.3 KiB" in first.output
    second = runner.invoke(cli, ["models", "pull", model.as_uri(), "--cache-dir", str(cache_dir)])
    assert second.exit_code == 0, second.output
    assert "already cached" in second.output


def test_pull_of_a_missing_model_fails_with_its_uri(tmp_path: Path, cache_dir: Path) -> None:
    missing = str(tmp_path / "absent")
    result = CliRunner().invoke(cli, ["models", "pull", missing, "--cache-dir", str(cache_dir)])
    assert result.exit_code == 1
    assert "absent" in result.output and "does not exist" in result.output


def test_cache_ls_shows_versions_and_pins(tmp_path: Path, cache_dir: Path) -> None:
    settings = StoreSettings(cache_dir=cache_dir)
    held = open_model(str(make_model(tmp_path, "a.bin", 1000)), settings)
    open_model(str(make_model(tmp_path, "b.bin", 2000)), settings).close()
    result = CliRunner().invoke(cli, ["cache", "ls", "--json", "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    listed = {Path(v["uri"]).name: v for v in json.loads(result.output)}
    assert listed["a.bin"]["pinned"] is True and listed["a.bin"]["bytes"] == 1000
    assert listed["b.bin"]["pinned"] is False and listed["b.bin"]["files"] == 1
    table = CliRunner().invoke(cli, ["cache", "ls", "--cache-dir", str(cache_dir)])
    assert "2 version(s)" in table.output
    held.close()


def test_cache_prune_all_keeps_pinned_versions(tmp_path: Path, cache_dir: Path) -> None:
    settings = StoreSettings(cache_dir=cache_dir)
    held = open_model(str(make_model(tmp_path, "a.bin", 1000)), settings)
    open_model(str(make_model(tmp_path, "b.bin", 2000)), settings).close()
    result = CliRunner().invoke(cli, ["cache", "prune", "--all", "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    assert "evicted 1 version(s)" in result.output
    assert (held.path / "a.bin").stat().st_size == 1000
    held.close()
