"""How CLI commands reach a gateway: URL and token resolution, JSON calls, errors, output format.

The gateway is ``--url`` / ``ZEROSERVE_URL``, else the one this machine's ``ZEROSERVE_HOME`` says is
running (``gateway.json``, written by ``zeroserve serve``), else the default local address. Every failure
becomes a ``click.ClickException``: one clear line and exit status 1, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from router.settings import GatewaySettings

F = TypeVar("F", bound=Callable[..., Any])

GATEWAY_FILE = "gateway.json"


class GatewayError(click.ClickException):
    """An error answer from the gateway, shown as ``Error: CODE: message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.status = status
        self.code = code
        self.detail = message


def gateway_file(home: Path) -> Path:
    return home / GATEWAY_FILE


def local_gateway(settings: GatewaySettings | None = None) -> dict[str, Any] | None:
    """What ``zeroserve serve`` recorded about the gateway running from this home, if any."""
    settings = settings or GatewaySettings()
    try:
        info = json.loads(gateway_file(settings.home).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def resolve_url(explicit: str | None) -> str:
    if explicit:
        return explicit.rstrip("/")
    settings = GatewaySettings()
    info = local_gateway(settings)
    if info and isinstance(info.get("url"), str):
        return str(info["url"]).rstrip("/")
    return settings.local_url


def resolve_token(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    return os.environ.get("ZEROSERVE_ADMIN_TOKEN") or None


class GatewayClient:
    def __init__(self, url: str, token: str | None, timeout_s: float = 60.0) -> None:
        self.url = url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._has_token = bool(token)
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout_s)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise click.ClickException(
                f"cannot reach the gateway at {self.url}"
                " (is `zeroserve serve` running? set --url or ZEROSERVE_URL)"
            ) from None
        except httpx.TimeoutException:
            raise click.ClickException(f"the gateway at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise click.ClickException(f"request to {self.url} failed: {exc}") from None
        if response.status_code == 401:
            raise self._unauthenticated(_error(response))
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _unauthenticated(self, error: GatewayError) -> GatewayError:
        # Say what the CLI reads, not what the HTTP API wants: a person at a terminal sets a variable.
        if self._has_token:
            hint = ("the token was not accepted (wrong, revoked or expired): check ZEROSERVE_TOKEN or "
                    "--token")
        else:
            hint = ("no token given: set ZEROSERVE_TOKEN or pass --token (the admin token "
                    "`zeroserve up` printed on its first start; lost it? see the README)")
        return GatewayError(error.status, error.code, f"{hint} (the gateway said: {error.detail})")

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        if body is not None:
            kwargs["json"] = body
        response = self.request(method, path, **kwargs)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise click.ClickException(f"the gateway answered {path} with something not JSON") from None

    def close(self) -> None:
        self._http.close()


def _error(response: httpx.Response) -> GatewayError:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and "message" in payload:
        return GatewayError(response.status_code, str(payload.get("error_code", "")), str(payload["message"]))
    text = response.text.strip()[:500] or response.reason_phrase
    return GatewayError(response.status_code, f"HTTP {response.status_code}", text)


def gateway_options(command: F) -> F:
    """Add ``--url``, ``--token`` and ``--output`` to a command, which receives ``client`` and ``output``."""

    @functools.wraps(command)
    def wrapper(*args: Any, url: str | None, token: str | None, output: str, **kwargs: Any) -> Any:
        client = GatewayClient(resolve_url(url), resolve_token(token))
        try:
            return command(*args, client=client, output=output, **kwargs)
        finally:
            client.close()

    options = [
        click.option("--url", envvar="ZEROSERVE_URL", default=None,
                     help="Gateway URL [env ZEROSERVE_URL; default: the local gateway of ZEROSERVE_HOME]."),
        click.option("--token", envvar="ZEROSERVE_TOKEN", default=None,
                     help="Bearer token [env ZEROSERVE_TOKEN]."),
        click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
                     show_default=True, help="Human-readable text, or JSON for scripts."),
    ]
    decorated: Callable[..., Any] = wrapper
    for option in options:
        decorated = option(decorated)
    return decorated  # type: ignore[return-value]


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def load_json_argument(text: str | None, file: str | None, what: str) -> Any:
    """A JSON document given inline (``--json``) or as a file (``--file``, ``-`` for stdin)."""
    if (text is None) == (file is None):
        raise click.UsageError(f"give {what} with exactly one of --json or --file")
    if file is not None:
        try:
            text = click.open_file(file).read()
        except OSError as exc:
            raise click.ClickException(f"cannot read {file}: {exc.strerror}") from None
    assert text is not None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.ClickException(f"{what} is not valid JSON: {exc}") from None
