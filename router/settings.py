"""Settings of the gateway process (env prefix ``ZEROSERVE_``).

Everything that lives on disk lives under ``home`` (``ZEROSERVE_HOME``, default ``~/.zeroserve``): the
SQLite state database, example models, replica logs. The CLI reads the same settings to find the local
gateway when no ``--url`` is given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8484


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZEROSERVE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".zeroserve")
    host: str = "127.0.0.1"
    # Shared state for several gateways: a postgresql:// URL. Unset: the embedded SQLite database under
    # home (one gateway).
    database_url: str | None = None
    # With a shared database: how long the autoscaler's lease lasts (a dead leader is replaced within
    # it), how often each gateway looks for changes (a change is in force everywhere within it), and
    # the URL the other gateways reach this one at (default: where it listens).
    fleet_lease_s: float = Field(default=15.0, ge=1.0, le=300.0)
    fleet_poll_s: float = Field(default=0.25, gt=0, le=5.0)
    advertise_url: str | None = None
    # Where replicas run: "local" (processes on this machine) or "kubernetes" (pods; the
    # ZEROSERVE_KUBERNETES_* settings).
    backend: Literal["local", "kubernetes"] = "local"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    # How long a config update may take to bring its new served entities up before it is declared
    # failed (the previous config keeps serving).
    rollout_timeout_s: float = Field(default=300.0, gt=0)
    # Graceful shutdown: how long in-flight requests get to finish when the gateway stops.
    drain_timeout_s: float = Field(default=10.0, ge=0)
    # How long the file URLs of a Delta Sharing query stay valid (presigned on S3, signed by the gateway
    # for local tables); at most 7 days, the longest an S3 presigned URL may live.
    sharing_url_ttl_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    log_level: str = "info"
    # "json": one JSON object per line (for log collectors); "text": plain lines for a person; "auto":
    # text when the gateway's stderr is a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "text"] = "auto"
    # Host names clients reach the gateway under (comma-separated in the environment), e.g.
    # "serving.example.com" (any port) or "serving.example.com:8443"; "*" for any. /mcp answers only
    # these (DNS-rebinding protection); empty: loopback, the listen address and this machine's name.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def local_url(self) -> str:
        """The URL a client on this machine uses to reach the gateway."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def ensure_home(self) -> Path:
        """The home, made owner-only when it is new (it holds token hashes, configs and models); an
        existing one that others may read is left as it is, with a warning that says how to close it."""
        if not self.home.exists():
            self.home.mkdir(parents=True, mode=0o700)
            self.home.chmod(0o700)  # mkdir's mode is filtered by the umask
            return self.home
        mode = self.home.stat().st_mode & 0o777
        if mode & 0o077:
            logger.warning("ZEROSERVE_HOME %s is open to other users (mode %o) and holds token hashes and "
                           "endpoint configs: chmod 700 %s", self.home, mode, self.home)
        return self.home
