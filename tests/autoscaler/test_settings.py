from __future__ import annotations

import pytest
from pydantic import ValidationError

from autoscaler.backends.local import LocalBackend
from autoscaler.settings import LocalBackendSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ZEROSERVE_REPLICA_HOST", "ZEROSERVE_WARM_POOL_SIZE", "ZEROSERVE_WARM_POOL_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    settings = LocalBackendSettings()
    assert (settings.replica_host, settings.warm_pool_size, settings.preload) == ("127.0.0.1", 2, ("onnx",))


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROSERVE_WARM_POOL_SIZE", "0")
    monkeypatch.setenv("ZEROSERVE_WARM_POOL_PRELOAD", "onnx, sklearn")
    settings = LocalBackendSettings()
    assert settings.warm_pool_size == 0
    assert settings.preload == ("onnx", "sklearn")
    assert LocalBackend().pool is None


def test_unknown_flavor_is_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown flavors"):
        LocalBackendSettings(warm_pool_preload="onnx,caffe")


def test_explicit_arguments_win_over_settings() -> None:
    backend = LocalBackend(LocalBackendSettings(warm_pool_size=0), warm_pool_size=3, preload=("onnx",))
    assert backend.pool is not None
    assert backend.pool.size == 3
