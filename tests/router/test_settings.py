"""The gateway's settings: a new home is owner-only, an existing one open to others is warned about."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from router.settings import GatewaySettings


def test_a_new_home_is_owner_only(tmp_path: Path) -> None:
    home = GatewaySettings(home=tmp_path / "new" / "home").ensure_home()
    assert home.stat().st_mode & 0o777 == 0o700


def test_an_existing_home_open_to_others_is_warned_about_and_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="router.settings"):
        GatewaySettings(home=home).ensure_home()
    assert home.stat().st_mode & 0o777 == 0o755
    assert "is open to other users (mode 755)" in caplog.text and f"chmod 700 {home}" in caplog.text
    caplog.clear()
    home.chmod(0o700)
    with caplog.at_level(logging.WARNING, logger="router.settings"):
        GatewaySettings(home=home).ensure_home()
    assert caplog.text == ""
