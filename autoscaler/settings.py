"""Settings of the local backend (environment prefix ``ZEROSERVE_``)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.loaders import FLAVOR_MODULES


class LocalBackendSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZEROSERVE_", extra="ignore")

    # Replicas listen here (loopback: only the gateway talks to them).
    replica_host: str = "127.0.0.1"
    # Idle pre-imported workers kept ready for cold starts; 0 turns the warm pool off.
    warm_pool_size: int = Field(default=2, ge=0, le=64)
    # Flavors whose libraries the pool imports ahead, comma-separated: "onnx" (~60 MB a worker) covers
    # ONNX models and MLflow models served from their ONNX conversion; add "sklearn"/"mlflow" for models
    # served through mlflow.pyfunc (~250 MB a worker), "torch" for PyTorch.
    warm_pool_preload: str = "onnx"
    # Replicas also listen on an owner-only Unix socket, which the router uses instead of loopback TCP.
    replica_unix_sockets: bool = True
    replica_log_lines: int = Field(default=2000, ge=10)
    # A replica whose resident memory passes this is killed and replaced, as a container's OOM killer
    # would do on Kubernetes. Unset: its workload size's memory (Small 2 GiB, Medium 4, Large 8); 0: none.
    replica_memory_limit_mib: int | None = Field(default=None, ge=0)
    kept_replica_logs: int = Field(default=64, ge=0)

    @field_validator("warm_pool_preload")
    @classmethod
    def _known_flavors(cls, value: str) -> str:
        flavors = [flavor.strip() for flavor in value.split(",") if flavor.strip()]
        unknown = [flavor for flavor in flavors if flavor not in FLAVOR_MODULES]
        if unknown:
            raise ValueError(f"unknown flavors {unknown}; known: {sorted(FLAVOR_MODULES)}")
        return value

    @property
    def preload(self) -> tuple[str, ...]:
        return tuple(flavor.strip() for flavor in self.warm_pool_preload.split(",") if flavor.strip())
