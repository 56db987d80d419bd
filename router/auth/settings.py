"""Settings of the front door (env prefix ``ZEROSERVE_``), read by ``zeroserve serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from router.auth.limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_JSON_DEPTH
from router.auth.tls import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_HEADER_BYTES


class SecuritySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZEROSERVE_", extra="ignore")

    # A fixed admin token (any string of >= 32 characters); without it one is generated on first start.
    admin_token: SecretStr | None = None
    # Local development only: no tokens at all, loopback only (``zeroserve serve --insecure-no-auth``).
    insecure_no_auth: bool = False
    # Let orchestrator probes reach /v2/health/live and /v2/health/ready without a token.
    public_v2_health: bool = False
    # How long a token, ACL or endpoint lookup may be served from memory before it is read again; a
    # revoke or ACL change made through this gateway takes effect at once regardless.
    auth_cache_ttl_s: float = Field(default=5.0, ge=0)

    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    max_header_bytes: int = Field(default=DEFAULT_MAX_HEADER_BYTES, ge=1024)
    max_json_depth: int = Field(default=DEFAULT_MAX_JSON_DEPTH, ge=2)
    header_timeout_s: float = Field(default=DEFAULT_HEADER_TIMEOUT_S, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    request_timeout_s: float = Field(default=300.0, gt=0)
    # Error answers carry stack traces only when this is on.
    debug: bool = False

    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # Proxies (IPs or CIDR networks, comma-separated in the environment) whose X-Forwarded-For and
    # X-Forwarded-Proto are believed.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("admin_token")
    @classmethod
    def _strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("ZEROSERVE_ADMIN_TOKEN must be at least 32 characters (128+ bits of randomness)")
        return value
