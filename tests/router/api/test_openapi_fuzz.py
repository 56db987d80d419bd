"""schemathesis against a real gateway's ``/openapi.json``, once as the admin and once as a caller who may
only query one endpoint: no response >= 500 and none that breaks the document (status, content type,
headers, body schema, Allow on 405, auth required where the document says so).

The real CLI runs every phase (examples, coverage, fuzzing, stateful) against a gateway process that
serves a real ONNX model. One check is left out, ``positive_data_acceptance``: it expects every body the
schema allows to succeed, and a serving API refuses schema-valid bodies on purpose (a model URI that
does not exist, an endpoint name that is taken, traffic that does not sum to 100), with a 400 that says
why. What it found when first run, each fixed with its own test: a huge integer in any audited body
made every later read of the audit log a 500; ``"admin": "false"`` minted an admin token; a 401 on a
``/v2/`` path lacked the ``error`` field; a 405's Allow named one route's methods; the MCP SDK's refusals
were bare text without a Content-Type.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.examples import make_logreg_onnx
from tests.router.gateway_process import ADMIN_TOKEN, GatewayProcess, wait_for

pytestmark = pytest.mark.slow
API = "/api/2.0/serving-endpoints"
EXAMPLES = "20"  # per operation and phase: about 30 s per caller on 2 cores


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, str]]:
    root = tmp_path_factory.mktemp("openapi-fuzz")
    model = root / "logreg"
    make_logreg_onnx(model, n_features=4)
    with GatewayProcess(root / "home") as gw, gw.client(timeout=30) as client:
        served = {"name": "m", "entity_name": model.as_uri(), "optimization": "off"}
        created = client.post(API, json={"name": "fraud", "config": {"served_entities": [served]}})
        assert created.status_code == 200, created.text
        endpoint = wait_for(lambda: (body := client.get(f"{API}/fraud").json())["state"]["ready"] == "READY"
                            and body, 60, "the endpoint to be ready")
        token = client.post("/api/2.0/zeroserve/tokens", json={"principal": "analyst"}).json()["token"]
        granted = client.patch(f"/api/2.0/permissions/serving-endpoints/{endpoint['id']}", json={
            "access_control_list": [{"user_name": "analyst", "permission_level": "CAN_QUERY"}]})
        assert granted.status_code == 200, granted.text
        yield gw, token


@pytest.mark.parametrize("caller", ["admin", "query-only"])
def test_no_server_error_and_no_response_outside_the_document(
    gateway: tuple[GatewayProcess, str], caller: str, tmp_path: Path
) -> None:
    gw, query_token = gateway
    token = ADMIN_TOKEN if caller == "admin" else query_token
    # DELETE is left out for the admin only: it would delete the endpoint and revoke the tokens the rest
    # of the run needs (the query-only caller's DELETEs are refusals, which are checked).
    skip_delete = ["--exclude-method", "DELETE"] if caller == "admin" else []
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{gw.url}/openapi.json",
         "-H", f"Authorization: Bearer {token}", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--max-examples", EXAMPLES, "--seed", "7",
         "--workers", "2", "--no-color", *skip_delete],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
    )
    report = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, f"schemathesis found failures:\n{report}\n\ngateway log:\n{gw.logs()[-2000:]}"
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert tested and int(tested.group(1)) >= 40, report  # every documented operation was exercised
    # The gateway is still healthy after it.
    with gw.client(timeout=10) as client:
        assert client.get("/readyz").status_code == 200
        assert client.post("/serving-endpoints/fraud/invocations",
                           json={"inputs": [[0.1, 0.2, 0.3, 0.4]]}).status_code == 200
