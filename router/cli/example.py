"""The example endpoint of ``zeroserve up --example``: a purchase-propensity model, trained locally the
first time (``runtime.examples``), kept as a ``file://`` model under ``ZEROSERVE_HOME``, served by an
endpoint that scales to zero — the headline feature, shown: the deploy sends one query from zero and
prints how long it took, and the banner says how long the endpoint idles before it goes back to zero."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
from pathlib import Path
from typing import Any

from rich.markup import escape

from autoscaler.spec import AutoscalingSpec
from router.api.lifecycle import ConfigUpdate

EXAMPLE_ENDPOINT = "propensity"
EXAMPLE_PRINCIPAL = "example-client"
_TOKEN_COMMENT = "zeroserve up --example"


def example_model_dir(home: Path) -> Path:
    return home / "models" / "propensity" / "1"


def ensure_example_model(home: Path) -> Path:
    """The trained example model, built once; an interrupted earlier build is redone."""
    from runtime.examples import make_propensity_mlflow

    directory = example_model_dir(home)
    if (directory / "MLmodel").is_file():
        return directory
    partial = directory.with_name(directory.name + ".partial")
    if partial.exists():
        import shutil

        shutil.rmtree(partial)
    make_propensity_mlflow(partial)
    partial.rename(directory)  # the model appears whole or not at all
    return directory


def example_config(model_dir: Path) -> dict[str, Any]:
    return {
        "served_entities": [
            {
                "name": "propensity-1",
                "entity_name": model_dir.as_uri(),
                "entity_version": "1",
                "workload_size": "Small",
                "scale_to_zero_enabled": True,
            }
        ]
    }


# The example's query token, kept (owner-only) beside the state so that a restart prints the same one:
# saved curls and scripts keep working. It may query the example endpoint and nothing else.
EXAMPLE_TOKEN_FILE = "example-query-token"


def example_query_token(gateway: Any) -> str | None:
    """The CAN_QUERY token for the example endpoint: the one an earlier start printed while it still
    works, else a new one (earlier example tokens are revoked); None when auth is off."""
    from router.auth.permissions import AclEntry
    from router.auth.types import PermissionLevel

    front_door = gateway.front_door
    if not front_door.auth_enabled:
        return None
    saved = gateway.settings.home / EXAMPLE_TOKEN_FILE
    token = _read_saved(saved)
    principal = front_door.tokens.authenticate(token) if token else None
    if token is None or principal is None or principal.name != EXAMPLE_PRINCIPAL:
        for info in front_door.tokens.list():
            if info.principal == EXAMPLE_PRINCIPAL and info.comment == _TOKEN_COMMENT:
                front_door.tokens.revoke(info.token_id)
        token, _ = front_door.tokens.create(EXAMPLE_PRINCIPAL, comment=_TOKEN_COMMENT)
        _save_owner_only(saved, token)
    record = gateway.store.get(EXAMPLE_ENDPOINT)
    entry = AclEntry("service_principal_name", EXAMPLE_PRINCIPAL, PermissionLevel.CAN_QUERY)
    front_door.permissions.update(record.id, [entry])
    return str(token)


async def _timed_query(url: str, token: str | None, body: dict[str, Any], timeout_s: float) -> str:
    """Query the example once and say how long the answer took (from zero: a cold start included)."""
    import time

    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.post(f"{url}/serving-endpoints/{EXAMPLE_ENDPOINT}/invocations",
                                         json=body, headers=headers)
    except httpx.HTTPError as error:
        return f"a first query failed: {error}"
    elapsed_s = time.perf_counter() - started
    if response.status_code != 200:
        return f"a first query answered {response.status_code}: {response.text[:200]}"
    return (f"its first query from zero just took {elapsed_s:.2f} s (a replica started for it; "
            "`zeroserve status` shows the scaling)")


def _read_saved(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _save_owner_only(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text + "\n")
    os.replace(partial, path)


async def deploy_example(gateway: Any, timeout_s: float = 300.0) -> list[str]:
    """Train (first run), create or re-apply the example endpoint, wait until it serves; return the lines
    to print: the URL, tokens and a ready-to-paste query."""
    from router.cli.serve import curl_command
    from runtime.examples import propensity_request

    home: Path = gateway.settings.home
    model_dir = await asyncio.to_thread(ensure_example_model, home)
    config = example_config(model_dir)
    record = gateway.store.find(EXAMPLE_ENDPOINT)
    if record is None:
        await gateway.controller.create({"name": EXAMPLE_ENDPOINT, "config": config}, "zeroserve-up")
    elif record.config_update is ConfigUpdate.UPDATE_FAILED:
        await gateway.controller.update_config(EXAMPLE_ENDPOINT, config, "zeroserve-up")  # try again
    async with asyncio.timeout(timeout_s):
        await gateway.controller.wait_rollout(EXAMPLE_ENDPOINT)
    record = gateway.store.get(EXAMPLE_ENDPOINT)
    if record.update_message:
        raise RuntimeError(f"the example endpoint failed to deploy: {record.update_message}")
    token = example_query_token(gateway)
    url = gateway.url or gateway.settings.local_url
    body = propensity_request(2)
    # One query from zero, timed: the replica it starts stays up for the newcomer's first curl, and the
    # banner can say what a request after idling costs instead of promising it.
    first = await _timed_query(url, token, body, timeout_s)
    idle = AutoscalingSpec()
    idle_s = idle.stable_window_s + idle.scale_to_zero_grace_s
    # The URL and the admin token were printed when the gateway came up (router.cli.serve): not again.
    lines = [f"endpoint [bold]{EXAMPLE_ENDPOINT}[/] is serving model {model_dir.as_uri()}",
             f"  it scales to zero after {idle_s:g} s without traffic ({idle.stable_window_s:g} s window + "
             f"{idle.scale_to_zero_grace_s:g} s grace); {first}"]
    if token:
        lines.append(f"query token for it (CAN_QUERY): {token}")
    lines.append("try it:")
    lines.append("  " + escape(curl_command(url, EXAMPLE_ENDPOINT, body, token)))
    lines.append("or with the CLI:")
    prefix = f"ZEROSERVE_TOKEN={token} " if token else ""
    invoke = f"{prefix}zeroserve invoke {EXAMPLE_ENDPOINT} --json {shlex.quote(json.dumps(body))}"
    lines.append("  " + escape(invoke))
    lines.append("  zeroserve status")
    return lines
