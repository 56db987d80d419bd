"""``zeroserve shares ...``: Delta Sharing shares, their tables and recipients (admin)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from router.cli import cli
from router.cli._client import GatewayClient, gateway_options, print_json
from router.cli._render import console

SHARES = "/api/2.0/zeroserve/shares"


@cli.group()
def shares() -> None:
    """Share Delta tables (inference tables, batch scores) with partners over Delta Sharing."""


@shares.command("create")
@click.argument("name")
@gateway_options
def create(client: GatewayClient, output: str, name: str) -> None:
    """Create share NAME."""
    made = client.call("POST", SHARES, {"name": name})
    print_json(made) if output == "json" else console.print(f"share {made['name']} created")


@shares.command("list")
@gateway_options
def list_shares(client: GatewayClient, output: str) -> None:
    """The shares."""
    found = client.call("GET", SHARES)["shares"]
    if output == "json":
        print_json(found)
        return
    for share in found:
        console.print(share["name"])


@shares.command("show")
@click.argument("name")
@gateway_options
def show(client: GatewayClient, output: str, name: str) -> None:
    """Share NAME: its tables and recipients."""
    share = client.call("GET", f"{SHARES}/{name}")
    if output == "json":
        print_json(share)
        return
    console.print(f"share {share['name']}")
    for table in share["tables"]:
        console.print(f"  table {table['schema']}.{table['name']} <- {table['location']}", markup=False)
    for recipient in share["recipients"]:
        console.print(f"  recipient {recipient}", markup=False)


@shares.command("add-table")
@click.argument("share")
@click.argument("table", metavar="SCHEMA.TABLE")
@click.argument("location")
@gateway_options
def add_table(client: GatewayClient, output: str, share: str, table: str, location: str) -> None:
    """Share the Delta table at LOCATION (a path or s3:// URI) in SHARE as SCHEMA.TABLE."""
    schema, _, name = table.rpartition(".")
    added = client.call("POST", f"{SHARES}/{share}/tables",
                        {"schema": schema or "default", "name": name, "location": location})
    print_json(added) if output == "json" else console.print(
        f"{added['schema']}.{added['name']} shared in {share}")


@shares.command("add-recipient")
@click.argument("share")
@click.argument("principal")
@click.option("--profile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Mint a token for PRINCIPAL and write the Delta Sharing profile file to hand over.")
@click.option("--lifetime-days", type=float, default=None, help="The minted token's lifetime.")
@gateway_options
def add_recipient(client: GatewayClient, output: str, share: str, principal: str, profile: Path | None,
                  lifetime_days: float | None) -> None:
    """Let PRINCIPAL (anyone holding a token of that name) read every table of SHARE."""
    added = client.call("POST", f"{SHARES}/{share}/recipients", {"principal": principal})
    if profile is not None:
        body: dict[str, object] = {"principal": principal, "comment": f"Delta Sharing recipient of {share}"}
        if lifetime_days is not None:
            body["lifetime_seconds"] = lifetime_days * 86400
        token = client.call("POST", "/api/2.0/zeroserve/tokens", body)
        document = {"shareCredentialsVersion": 1, "endpoint": added["endpoint"].rstrip("/") + "/",
                    "bearerToken": token["token"]}
        if token.get("expiry_time"):
            document["expirationTime"] = token["expiry_time"]
        profile.write_text(json.dumps(document, indent=1))
        profile.chmod(0o600)  # it holds a token
    if output == "json":
        print_json({**added, "profile": str(profile) if profile else None})
        return
    handed = f"; profile written to {profile} (it holds a token: hand it over privately)" if profile else ""
    console.print(f"{principal} may read share {share}{handed}")


@shares.command("remove-recipient")
@click.argument("share")
@click.argument("principal")
@gateway_options
def remove_recipient(client: GatewayClient, output: str, share: str, principal: str) -> None:
    """Stop sharing SHARE with PRINCIPAL."""
    client.call("DELETE", f"{SHARES}/{share}/recipients/{principal}")
    console.print(f"{principal} may no longer read share {share}")


@shares.command("delete")
@click.argument("name")
@gateway_options
def delete(client: GatewayClient, output: str, name: str) -> None:
    """Delete share NAME (the tables' data stays where it is)."""
    client.call("DELETE", f"{SHARES}/{name}")
    console.print(f"share {name} deleted")
