"""The README documents every setting a user meets: each environment variable of each component's
settings class is named there (a new setting without a line in the README fails here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from autoscaler.backends.kubernetes import KubernetesBackendSettings
from autoscaler.settings import LocalBackendSettings
from router.auth.settings import SecuritySettings
from router.observability.cost import CostSettings
from router.observability.inference_tables import InferenceTableSettings
from router.observability.service import ObservabilitySettings
from router.settings import GatewaySettings
from runtime.config import ReplicaSettings
from runtime.store.settings import StoreSettings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SETTINGS: list[type[BaseSettings]] = [GatewaySettings, SecuritySettings, ObservabilitySettings, CostSettings,
                                      InferenceTableSettings, LocalBackendSettings, KubernetesBackendSettings,
                                      ReplicaSettings, StoreSettings]


def variables(settings: type[BaseSettings]) -> list[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    return [f"{prefix}{name}".upper() for name in settings.model_fields]


def documented(name: str) -> bool:
    """Named in full, or as "..._TAIL" after a sibling in the same table cell (``..._MAX_BUFFERED_BYTES``)."""
    if f"`{name}`" in README:
        return True
    words = name.split("_")
    return any(f"`..._{'_'.join(words[start:])}`" in README for start in range(1, len(words) - 1))


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda settings: settings.__name__)
def test_every_setting_is_in_the_readme(settings: type[BaseSettings]) -> None:
    missing = [name for name in variables(settings) if not documented(name)]
    assert not missing, f"not documented in README.md: {', '.join(missing)}"
