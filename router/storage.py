"""Tables on local disk or S3, as the gateway's table features reach them (batch scoring, Delta inference
tables, Delta Sharing): one reading of the S3 settings — ``runtime.store``'s ``StoreSettings``
(``ZEROSERVE_S3_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, region, addressing style, TLS verification) —
turned into what pyarrow, deltalake and botocore each take.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from runtime.store.settings import StoreSettings


def _settings() -> StoreSettings:
    return StoreSettings()  # read each time: cheap, and the environment may change (tests, reloads)


def _region(settings: StoreSettings) -> str:
    return settings.s3_region or "us-east-1"


def arrow_filesystem(location: str) -> tuple[Any, str]:
    """The pyarrow filesystem and path of a local path, ``file://`` URI or ``s3://`` URI."""
    import pyarrow.fs as pafs

    if location.startswith("s3://"):
        settings = _settings()
        options: dict[str, Any] = {"region": _region(settings)}
        if settings.s3_endpoint_url:
            scheme, _, host = settings.s3_endpoint_url.partition("://")
            options.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        if settings.s3_addressing_style == "virtual":
            options["force_virtual_addressing"] = True
        return pafs.S3FileSystem(**options), location.removeprefix("s3://").rstrip("/")
    return pafs.LocalFileSystem(), str(Path(location.removeprefix("file://")).absolute())


def s3_client() -> Any:
    """A synchronous botocore client, one per S3 configuration (making one costs tens of milliseconds:
    not per object)."""
    settings = _settings()
    return _client(settings.s3_endpoint_url, _region(settings), settings.s3_addressing_style,
                   settings.s3_verify_tls)


@lru_cache(maxsize=4)
def _client(endpoint: str | None, region: str, addressing_style: str, verify: bool) -> Any:
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=region, verify=verify,
        config=Config(s3={"addressing_style": addressing_style}))


def delta_storage_options(location: str) -> dict[str, str] | None:
    """deltalake's ``storage_options`` for ``location`` (None for local tables)."""
    if not location.startswith("s3://"):
        return None
    settings = _settings()
    # One writer per table (a capture task, a batch run): no lock service is needed to commit safely.
    options = {"AWS_REGION": _region(settings), "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    if settings.s3_endpoint_url:
        options["AWS_ENDPOINT_URL"] = settings.s3_endpoint_url
        if settings.s3_endpoint_url.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if settings.s3_addressing_style == "virtual":
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "true"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if os.environ.get(name):
            options[name] = os.environ[name]
    return options


def is_delta(location: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = arrow_filesystem(location)
    return bool(fs.get_file_info(f"{path}/_delta_log").type == pafs.FileType.Directory)
