"""``zeroserve tokens`` and ``zeroserve permissions`` against a real gateway on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from router.cli import _register, cli
from router.cli.tokens import parse_duration
from tests.router.auth.conftest import ADMIN_TOKEN, serving_gateway


async def run(url: str, *args: str, token: str = ADMIN_TOKEN) -> Result:
    _register()
    runner = CliRunner()
    # The CLI is synchronous and the gateway serves from this loop: run the CLI in a thread.
    return await asyncio.to_thread(runner.invoke, cli, [*args, "--url", url, "--token", token])


async def test_tokens_and_permissions_from_the_command_line(tmp_path: Path) -> None:
    async with serving_gateway(tmp_path) as served:
        endpoint = await served.create_endpoint("fraud")
        created = await run(served.url, "tokens", "create", "--principal", "alice", "--expires-in", "30d",
                            "--group", "ml", "--output", "json")
        assert created.exit_code == 0, created.output
        token = json.loads(created.output)
        assert token["token"].startswith("zs_") and token["groups"] == ["ml"]
        assert token["expiry_time"] - token["creation_time"] == 30 * 86400 * 1000

        text = await run(served.url, "tokens", "create", "--principal", "bob")
        assert text.exit_code == 0 and text.output.startswith("zs_") and "not shown" in text.output

        listed = await run(served.url, "tokens", "list", "--output", "json")
        principals = [t["principal"] for t in json.loads(listed.output)["tokens"]]
        assert "alice" in principals and token["token"] not in listed.output

        granted = await run(served.url, "permissions", "set", "fraud", "--user", "alice=CAN_QUERY",
                            "--group", "ops=can_view", "--output", "json")
        assert granted.exit_code == 0, granted.output
        acl = json.loads(granted.output)
        assert acl["object_id"] == f"/serving-endpoints/{endpoint['id']}"
        shown = await run(served.url, "permissions", "get", "fraud")
        assert "alice" in shown.output and "CAN_QUERY" in shown.output and "ops" in shown.output

        # alice may query but not manage; her own token says so.
        denied = await run(served.url, "permissions", "set", "fraud", "--user", "alice=CAN_MANAGE",
                           token=token["token"])
        assert denied.exit_code == 1 and "PERMISSION_DENIED" in denied.output

        revoked = await run(served.url, "tokens", "revoke", token["token_id"])
        assert revoked.exit_code == 0 and "revoked" in revoked.output
        after = await run(served.url, "permissions", "get", "fraud", token=token["token"])
        assert after.exit_code == 1 and "UNAUTHENTICATED" in after.output

        bad = await run(served.url, "permissions", "set", "fraud", "--user", "alice=CAN_FLY")
        assert bad.exit_code == 2 and "NAME=" in bad.output


@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 2_592_000), ("12h", 43_200), ("90m", 5400), ("45s", 45), ("3600", 3600), ("2w", 1_209_600),
    ("1.5h", 5400),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1d", "10y", "soon"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_duration(text)
