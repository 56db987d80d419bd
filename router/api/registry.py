"""Served entities that name a registered MLflow model are checked against the registry when an endpoint
is created or updated, as Databricks does: a model or version that does not exist is refused at once
(404 ``RESOURCE_DOES_NOT_EXIST`` naming it), instead of being accepted and failing later as
``DEPLOYMENT_FAILED``. A registry that cannot be asked refuses the change with a 503 that says so.

The MLflow client does the asking (any tracking store: a server, a database), in a thread, bounded by
``REGISTRY_TIMEOUT_S`` (its HTTP client retries for minutes on its own; the thread is left to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

from router.api.models import EndpointConfig
from runtime.errors import NotFound, ZeroserveError

REGISTRY_TIMEOUT_S = 10.0


class RegistryUnavailable(ZeroserveError):
    status_code = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


async def check_registered(config: EndpointConfig, where: str = "config.served_entities") -> None:
    """Raise unless every registered model version ``config`` serves exists."""
    wanted = []
    for index, entity in enumerate(config.served_entities):
        if entity.model_uri.startswith("models:/"):
            name, _, version = entity.model_uri.removeprefix("models:/").rpartition("/")
            wanted.append((f"{where}[{index}]", name, version))
    if not wanted:
        return
    try:
        await asyncio.wait_for(_in_daemon_thread(_check, wanted), REGISTRY_TIMEOUT_S)
    except TimeoutError:
        raise RegistryUnavailable(
            f"the MLflow registry at {_tracking_uri()} did not answer within {REGISTRY_TIMEOUT_S:g} s;"
            " the served entities' models could not be checked"
        ) from None


def _in_daemon_thread(function: Callable[..., None], *args: Any) -> asyncio.Future[None]:
    """``function(*args)`` in a thread of its own that nobody waits for at exit: a registry that does
    not answer leaves MLflow's client retrying for minutes, which must not hold up a gateway's shutdown
    (the loop's default executor is joined when the loop closes)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def run() -> None:
        try:
            function(*args)
        except BaseException as error:  # handed to the awaiting coroutine
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
                loop.call_soon_threadsafe(settle, error)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, None)

    threading.Thread(target=run, name="zeroserve-registry-check", daemon=True).start()
    return future


def _tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "(MLFLOW_TRACKING_URI unset)")


def _check(wanted: list[tuple[str, str, str]]) -> None:
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise RegistryUnavailable(
            "served entities name registered models, but mlflow is not installed in the gateway to ask the"
            " registry: pip install 'zeroserve[mlflow]'"
        ) from None
    # The gateway's environment says where the registry is (MLFLOW_REGISTRY_URI when it is not the
    # tracking server), whatever this process's mlflow module was told before.
    tracking = os.environ.get("MLFLOW_TRACKING_URI")
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking
    client = MlflowClient(tracking_uri=tracking, registry_uri=registry_uri)
    for where, name, version in wanted:
        try:
            client.get_model_version(name, version)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise NotFound(
                    f"{where}: registered model {name!r} has no version {version!r}"
                    f" in the MLflow registry at {_tracking_uri()}"
                ) from None
            raise RegistryUnavailable(
                f"{where}: the MLflow registry at {_tracking_uri()} could not be asked about {name!r}"
                f" version {version!r}: {error.message}"
            ) from None
        except Exception as error:  # the store itself failed (connection refused, database locked)
            raise RegistryUnavailable(
                f"{where}: the MLflow registry at {_tracking_uri()} could not be asked about {name!r}"
                f" version {version!r}: {type(error).__name__}: {error}"
            ) from None
