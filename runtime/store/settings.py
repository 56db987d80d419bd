"""Settings of the model store and its warm cache (env prefix ``ZEROSERVE_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    # The cache belongs with the rest of zeroserve's state when ZEROSERVE_HOME is set, so that one
    # variable moves everything (tests, containers with a mounted volume).
    home = os.environ.get("ZEROSERVE_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".zeroserve"
    return base / "cache"


class StoreSettings(BaseSettings):
    """Where models are cached and how they are fetched."""

    model_config = SettingsConfigDict(env_prefix="ZEROSERVE_", extra="ignore", populate_by_name=True)

    cache_dir: Path = Field(default_factory=_default_cache_dir)
    # 0 disables eviction. The default (20 GiB) holds a handful of large models.
    cache_max_bytes: int = Field(default=20 * 1024**3, ge=0)
    # "stat" checks size and the cache's sentinel mtime of every file on open (microseconds per file);
    # "full" also re-hashes every file (catches a same-size edit that restored the mtime, costs a read).
    cache_verify: Literal["stat", "full"] = "stat"
    # How long a confirmed S3 prefix stays trusted without a new listing. 0 = list on every open, so a
    # changed prefix is picked up at once; a positive value lets replicas start with no network at all.
    cache_freshness_ttl_s: float = Field(default=0.0, ge=0.0)

    s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ZEROSERVE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"),
    )
    s3_region: str | None = Field(
        default=None, validation_alias=AliasChoices("ZEROSERVE_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_verify_tls: bool = True

    # Objects above one part are fetched as parallel ranged GETs: 8 MiB x 10 is what boto3's managed
    # transfer uses, and memory stays bounded because every part streams straight to disk.
    part_size_bytes: int = Field(default=8 * 1024**2, ge=64 * 1024)
    max_concurrency: int = Field(default=10, ge=1, le=256)
    retry_attempts: int = Field(default=5, ge=1, le=20)
    retry_backoff_s: float = Field(default=0.2, ge=0.0)
    retry_backoff_max_s: float = Field(default=5.0, ge=0.0)
    connect_timeout_s: float = Field(default=5.0, gt=0.0)
    read_timeout_s: float = Field(default=60.0, gt=0.0)
    # Wait at most this long for another process that is downloading the same version.
    lock_timeout_s: float = Field(default=1800.0, gt=0.0)

    @field_validator("cache_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()
