"""``models:/`` and ``runs:/`` URIs: resolved through MLflow to their artifact location.

The location is then fetched by the same S3 or local code as any other URI; only locations that code
cannot read (``mlflow-artifacts:`` proxied stores, other clouds) are downloaded by MLflow itself into
a staging directory and copied into the cache. mlflow is imported here, lazily, and only when a URI
is not already cached.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

from runtime.errors import StoreError
from runtime.store.handle import ModelHandle
from runtime.store.settings import StoreSettings
from runtime.store.sources import LocalFileDownloader, Resolved, StoreUnreachable, list_local
from runtime.store.uri import LocalSource, MlflowSource, ModelSource, S3Source, parse_model_uri

ResolveFn = Callable[[ModelSource, str, StoreSettings, AsyncExitStack], Awaitable["Resolved | ModelHandle"]]


def _underlying_uri(uri: str) -> str:
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    if uri.startswith("runs:"):
        return str(RunsArtifactRepository.get_underlying_uri(uri))
    return str(ModelsArtifactRepository.get_underlying_uri(uri))


async def resolve_mlflow(
    source: MlflowSource, uri: str, settings: StoreSettings, stack: AsyncExitStack, resolve: ResolveFn
) -> Resolved | ModelHandle:
    try:
        location = await asyncio.to_thread(_underlying_uri, uri)
    except ImportError as exc:
        raise StoreError(f"{uri}: MLflow URIs need the 'mlflow' package ({exc})") from exc
    except Exception as exc:  # MlflowException, requests errors: the registry could not answer
        text = str(exc)
        unreachable = any(s in text for s in ("Connection", "connect", "Max retries", "timed out"))
        error = StoreUnreachable if unreachable else StoreError
        raise error(f"{uri}: MLflow could not resolve it: {text}") from exc
    target = parse_model_uri(location) if location.startswith(("s3://", "file:", "/")) else None
    if isinstance(target, LocalSource):
        if target.path.is_dir():
            return ModelHandle(
                uri=uri, path=target.path, version_key=f"local-{_short_hash(str(target.path))}"
            )
        files = list_local(target.path, uri)
        return Resolved(location, files, LocalFileDownloader(), immutable=source.immutable)
    if isinstance(target, S3Source):
        if settings.s3_endpoint_url is None and os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
            # MLflow's own variable names where its artifacts live; honour it for its URIs.
            settings = settings.model_copy(update={"s3_endpoint_url": os.environ["MLFLOW_S3_ENDPOINT_URL"]})
        resolved = await resolve(target, uri, settings, stack)
        if isinstance(resolved, Resolved):
            # A registered model version never changes; its ref lets later opens skip MLflow and S3.
            return replace(resolved, immutable=source.immutable)
        return resolved
    return await _stage_with_mlflow(source, uri, location, settings, stack)


async def _stage_with_mlflow(
    source: MlflowSource, uri: str, location: str, settings: StoreSettings, stack: AsyncExitStack
) -> Resolved:
    import tempfile

    staging = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-mlflow-", dir=settings.cache_dir / "tmp"))
    stack.callback(shutil.rmtree, staging, True)  # once the files are in the cache

    def download() -> str:
        import mlflow.artifacts

        return str(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(staging)))

    try:
        local = Path(await asyncio.to_thread(download))
    except Exception as exc:
        raise StoreError(f"{uri}: MLflow could not download {location}: {exc}") from exc
    files = [replace(f, etag=None) for f in list_local(local, uri)]  # mtimes of a fresh copy mean nothing
    return Resolved(location, files, LocalFileDownloader(), immutable=source.immutable)


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:32]
