"""``zeroserve tokens create|list|revoke`` and ``zeroserve permissions get|set``: the front door's
admin routes from a terminal. Tokens are shown once, at creation; the gateway keeps only their hashes."""

from __future__ import annotations

import re
from typing import Any

import click
from rich.table import Table

from router.cli import cli
from router.cli._client import GatewayClient, gateway_options, print_json
from router.cli._render import console, err_console, timestamp

TOKENS = "/api/2.0/zeroserve/tokens"
PERMISSIONS = "/api/2.0/permissions/serving-endpoints"
LEVELS = ("CAN_VIEW", "CAN_QUERY", "CAN_MANAGE")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds, as seconds."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 12h, 90m or 3600",
                                 param_hint="--expires-in")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@cli.group()
def tokens() -> None:
    """Create, list and revoke bearer tokens (admin token required)."""


@tokens.command("create")
@click.option("--principal", required=True, help="Who the token is for (user or service name).")
@click.option("--expires-in", help="Lifetime, e.g. 30d, 12h, 90m [default: never expires].")
@click.option("--group", "groups", multiple=True, help="A group the principal belongs to (repeatable).")
@click.option("--admin", is_flag=True, help="Make it an admin token (all endpoints, tokens, audit).")
@click.option("--comment", default="", help="What the token is for.")
@gateway_options
def create_token(client: GatewayClient, output: str, principal: str, expires_in: str | None,
                 groups: tuple[str, ...], admin: bool, comment: str) -> None:
    """Mint a token. It is printed once and cannot be shown again."""
    body: dict[str, Any] = {
        "principal": principal, "groups": list(groups), "admin": admin, "comment": comment,
    }
    if expires_in is not None:
        body["lifetime_seconds"] = parse_duration(expires_in)
    created = client.call("POST", TOKENS, body)
    if output == "json":
        print_json(created)
        return
    console.print(created["token"], soft_wrap=True, highlight=False)
    expiry = timestamp(created["expiry_time"]) if created.get("expiry_time") else "never"
    err_console.print(
        f"Token {created['token_id']} for {created['principal']!r} (expires: {expiry})."
        " Store it now: it is not shown again."
    )


@tokens.command("list")
@click.option("--all", "include_inactive", is_flag=True, help="Include revoked and expired tokens.")
@gateway_options
def list_tokens(client: GatewayClient, output: str, include_inactive: bool) -> None:
    """List tokens (never the tokens themselves, only who holds them)."""
    listed = client.call("GET", TOKENS, params={"include_inactive": str(include_inactive).lower()})
    if output == "json":
        print_json(listed)
        return
    table = Table("TOKEN ID", "PRINCIPAL", "GROUPS", "ADMIN", "CREATED", "EXPIRES", "REVOKED", "COMMENT")
    for token in listed.get("tokens", []):
        table.add_row(
            token["token_id"], token["principal"], ",".join(token.get("groups", [])),
            "yes" if token.get("admin") else "", timestamp(token.get("creation_time")),
            timestamp(token["expiry_time"]) if token.get("expiry_time") else "never",
            timestamp(token["revoked_time"]) if token.get("revoked_time") else "", token.get("comment", ""),
        )
    console.print(table)


@tokens.command("revoke")
@click.argument("token_id")
@gateway_options
def revoke_token(client: GatewayClient, output: str, token_id: str) -> None:
    """Revoke a token by its id; it stops working at once."""
    revoked = client.call("DELETE", f"{TOKENS}/{token_id}")
    if output == "json":
        print_json(revoked)
    else:
        console.print(f"Token {revoked['token_id']} of {revoked['principal']!r} revoked.")


@cli.group()
def permissions() -> None:
    """Who may view, query or manage an endpoint."""


def _endpoint_id(client: GatewayClient, endpoint: str) -> str:
    found = client.call("GET", f"/api/2.0/serving-endpoints/{endpoint}")
    return str(found.get("id") or endpoint)


def _show_permissions(result: dict[str, Any], output: str) -> None:
    if output == "json":
        print_json(result)
        return
    table = Table("PRINCIPAL", "KIND", "PERMISSION", "INHERITED")
    for entry in result.get("access_control_list", []):
        kind = next(k for k in ("user_name", "service_principal_name", "group_name") if entry.get(k))
        for permission in entry.get("all_permissions", []):
            inherited = "yes" if permission.get("inherited") else ""
            table.add_row(entry[kind], kind.removesuffix("_name").replace("_", " "),
                          permission.get("permission_level", ""), inherited)
    console.print(table)


@permissions.command("get")
@click.argument("endpoint")
@gateway_options
def get_permissions(client: GatewayClient, output: str, endpoint: str) -> None:
    """Show the access control list of ENDPOINT (name or id)."""
    _show_permissions(client.call("GET", f"{PERMISSIONS}/{_endpoint_id(client, endpoint)}"), output)


def _grants(values: tuple[str, ...], field: str, hint: str) -> list[dict[str, str]]:
    grants = []
    for value in values:
        name, sep, level = value.rpartition("=")
        if not sep or not name or level.upper() not in LEVELS:
            raise click.BadParameter(f"{value!r} is not NAME={'|'.join(LEVELS)}", param_hint=hint)
        grants.append({field: name, "permission_level": level.upper()})
    return grants


@permissions.command("set")
@click.argument("endpoint")
@click.option("--user", "users", multiple=True, metavar="NAME=LEVEL",
              help="Grant a user a level (repeatable).")
@click.option("--group", "groups", multiple=True, metavar="NAME=LEVEL", help="Grant a group a level.")
@click.option("--service-principal", "services", multiple=True, metavar="NAME=LEVEL",
              help="Grant a service principal a level.")
@click.option("--replace", is_flag=True,
              help="Replace the whole list (PUT) instead of adding to it (PATCH).")
@gateway_options
def set_permissions(client: GatewayClient, output: str, endpoint: str, users: tuple[str, ...],
                    groups: tuple[str, ...], services: tuple[str, ...], replace: bool) -> None:
    """Grant levels (CAN_VIEW, CAN_QUERY, CAN_MANAGE) on ENDPOINT; with --replace, revoke the rest."""
    acl = (_grants(users, "user_name", "--user") + _grants(groups, "group_name", "--group")
           + _grants(services, "service_principal_name", "--service-principal"))
    if not acl and not replace:
        raise click.UsageError("name at least one --user, --group or --service-principal (or --replace)")
    path = f"{PERMISSIONS}/{_endpoint_id(client, endpoint)}"
    _show_permissions(client.call("PUT" if replace else "PATCH", path, {"access_control_list": acl}), output)
