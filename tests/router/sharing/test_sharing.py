"""Delta Sharing from a real gateway process: the REST protocol directly, and the stock ``delta-sharing``
client reading what was written. The client pins an aiohttp older than the one this project's
aiobotocore needs, so it runs from a virtualenv of its own (``ZEROSERVE_DELTA_SHARING_PYTHON``, which
``.ci/run`` makes; else one is made here with pip, and the test is skipped, saying why, if it cannot be).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pyarrow as pa
import pytest

from tests.router.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow
SHARES = "/api/2.0/zeroserve/shares"
TABLE = "/delta-sharing/shares/partners/schemas/risk/tables/scores"


@dataclass
class Shared:
    gateway: GatewayProcess
    token: str  # the recipient's
    stranger: str  # a token of someone the share was not given to
    table: Path


def write_scores(location: Path) -> None:
    from deltalake import write_deltalake

    write_deltalake(str(location), pa.table({"customer_id": [1, 2, 3], "score": [0.1, 0.5, 0.9],
                                             "date": ["2026-12-01"] * 3}), partition_by=["date"])
    write_deltalake(str(location), pa.table({"customer_id": [4], "score": [0.7], "date": ["2026-12-02"]}),
                    mode="append", partition_by=["date"])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    pytest.importorskip("deltalake", reason="the batch extra is not installed")
    root = tmp_path_factory.mktemp("sharing")
    write_scores(root / "scores")
    with GatewayProcess(root / "home", env={"ZEROSERVE_SHARING_URL_TTL_S": "2"}) as gw, \
            gw.client(timeout=30) as admin:
        assert admin.post(SHARES, json={"name": "partners"}).status_code == 200
        added = admin.post(f"{SHARES}/partners/tables", json={"schema": "risk", "name": "scores",
                                                             "location": str(root / "scores")})
        assert added.status_code == 200, added.text
        tokens = {principal: admin.post("/api/2.0/zeroserve/tokens",
                                        json={"principal": principal}).json()["token"]
                  for principal in ("bank", "someone-else")}
        assert admin.post(f"{SHARES}/partners/recipients", json={"principal": "bank"}).status_code == 200
        yield Shared(gw, tokens["bank"], tokens["someone-else"], root / "scores")


def as_(shared: Shared, token: str) -> httpx.Client:
    return httpx.Client(base_url=shared.gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_the_protocol_shows_a_recipient_its_share_and_nothing_else(shared: Shared) -> None:
    with as_(shared, shared.token) as bank, as_(shared, shared.stranger) as stranger:
        assert [item["name"] for item in bank.get("/delta-sharing/shares").json()["items"]] == ["partners"]
        tables = bank.get("/delta-sharing/shares/partners/all-tables").json()["items"]
        assert [(t["schema"], t["name"]) for t in tables] == [("risk", "scores")]
        assert bank.get(f"{TABLE}/version").headers["delta-table-version"] == "1"
        assert stranger.get("/delta-sharing/shares").json()["items"] == []
        assert stranger.get(f"{TABLE}/metadata").status_code == 404  # not shared with them: as if absent
        other = "/delta-sharing/shares/partners/schemas/risk/tables/other/metadata"
        assert bank.get(other).status_code == 404
        assert bank.post(f"{TABLE}/query", json={"version": -1}).status_code == 400
    with httpx.Client(base_url=shared.gateway.url) as anonymous:
        assert anonymous.get("/delta-sharing/shares").status_code == 401
        wrong = anonymous.get("/delta-sharing/shares", headers={"Authorization": "Bearer zs_0_nope"})
        assert wrong.status_code == 401


def test_what_cannot_be_shared_or_read_is_named(shared: Shared) -> None:
    root = shared.table.parent
    broken = root / "broken" / "_delta_log"
    broken.mkdir(parents=True)
    (broken / "00000000000000000000.json").write_text("not a log")
    with shared.gateway.client(timeout=30) as admin:
        empty = admin.post(f"{SHARES}/partners/tables",
                           json={"schema": "risk", "name": "nothing", "location": str(root / "nothing")})
        assert empty.status_code == 400 and "holds no Delta table" in empty.json()["message"], empty.text
        unreadable = admin.post(f"{SHARES}/partners/tables",
                                json={"schema": "risk", "name": "broken", "location": str(root / "broken")})
        assert unreadable.status_code == 502, unreadable.text
        assert "cannot be read" in unreadable.json()["message"]
        assert "\n" not in unreadable.json()["message"]  # not the storage library's backtrace
        tables = admin.get(f"{SHARES}/partners").json()["tables"]
        assert [table["name"] for table in tables] == ["scores"]  # neither was added
    with as_(shared, shared.token) as bank:
        future = bank.post(f"{TABLE}/query", json={"version": 99})
        assert future.status_code == 400
        assert future.json()["message"] == "version 99 of the table does not exist; its latest version is 1"


def test_file_urls_need_no_token_but_expire_and_cannot_be_forged(shared: Shared) -> None:
    with as_(shared, shared.token) as bank:
        lines = [orjson.loads(line) for line in bank.post(f"{TABLE}/query", json={}).text.splitlines()]
    assert list(lines[0]) == ["protocol"] and list(lines[1]) == ["metaData"]
    assert lines[1]["metaData"]["partitionColumns"] == ["date"]
    files = [line["file"] for line in lines[2:]]
    assert sorted(file["partitionValues"]["date"] for file in files) == ["2026-12-01", "2026-12-02"]
    url = files[0]["url"]
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content.startswith(b"PAR1")
    assert httpx.get(url[:-4] + "0000").status_code == 403  # a signature that does not match
    time.sleep(2.2)  # the gateway's URLs live 2 s here
    expired = httpx.get(url)
    assert expired.status_code == 403 and "expired" in expired.json()["message"]


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    given = os.environ.get("ZEROSERVE_DELTA_SHARING_PYTHON")
    if given:
        return given
    venv = tmp_path_factory.mktemp("delta-sharing-client") / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    python = str(venv / "bin" / "python")
    installed = made.returncode == 0 and subprocess.run(
        [python, "-m", "pip", "install", "-q", "delta-sharing>=1.0"], capture_output=True, text=True,
        timeout=600).returncode == 0
    if not installed:
        pytest.skip("the delta-sharing client could not be installed into its own virtualenv here")
    return python


def test_the_stock_client_reads_what_was_written(shared: Shared, client_python: str, tmp_path: Path) -> None:
    profile = tmp_path / "bank.share"
    profile.write_text(json.dumps({"shareCredentialsVersion": 1, "bearerToken": shared.token,
                                   "endpoint": f"{shared.gateway.url}/delta-sharing/"}))
    stranger = tmp_path / "stranger.share"
    stranger.write_text(json.dumps({"shareCredentialsVersion": 1, "bearerToken": shared.stranger,
                                    "endpoint": f"{shared.gateway.url}/delta-sharing/"}))
    script = f"""
import json, delta_sharing
table = {str(profile)!r} + "#partners.risk.scores"
client = delta_sharing.SharingClient({str(profile)!r})
latest = delta_sharing.load_as_pandas(table).sort_values("customer_id")
first = delta_sharing.load_as_pandas(table, version=0)
try:
    delta_sharing.load_as_pandas({str(stranger)!r} + "#partners.risk.scores")
    refused = None
except Exception as error:
    refused = str(error)
print(json.dumps({{"tables": [t.name for t in client.list_all_tables()],
                  "latest": latest.to_dict(orient="records"), "first": len(first), "refused": refused}}))
"""
    run = subprocess.run([client_python, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert answer["tables"] == ["scores"]
    assert answer["latest"] == [
        {"customer_id": 1, "score": 0.1, "date": "2026-12-01"},
        {"customer_id": 2, "score": 0.5, "date": "2026-12-01"},
        {"customer_id": 3, "score": 0.9, "date": "2026-12-01"},
        {"customer_id": 4, "score": 0.7, "date": "2026-12-02"}]
    assert answer["first"] == 3  # the table as of its first commit
    assert answer["refused"] is not None and "404" in answer["refused"]


def test_the_cli_defines_a_share_and_writes_the_profile_to_hand_over(shared: Shared, tmp_path: Path) -> None:
    from tests.router.gateway_process import ADMIN_TOKEN

    def zeroserve(*args: str) -> str:
        run = subprocess.run([sys.executable, "-c", "from router.cli import main; main()", *args,
                              "--url", shared.gateway.url, "--token", ADMIN_TOKEN],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return " ".join(run.stdout.split())

    profile = tmp_path / "insurer.share"
    assert "created" in zeroserve("shares", "create", "insurers")
    assert "fraud.scores shared in insurers" in zeroserve("shares", "add-table", "insurers", "fraud.scores",
                                                        str(shared.table))
    assert "profile written" in zeroserve("shares", "add-recipient", "insurers", "insurer",
                                          "--profile", str(profile))
    assert "recipient insurer" in zeroserve("shares", "show", "insurers")
    document = json.loads(profile.read_text())
    assert oct(profile.stat().st_mode & 0o777) == "0o600"
    assert document["endpoint"] == f"{shared.gateway.url}/delta-sharing/"
    with as_(shared, document["bearerToken"]) as insurer:
        assert [item["name"] for item in insurer.get("/delta-sharing/shares").json()["items"]] == ["insurers"]
        version = insurer.get("/delta-sharing/shares/insurers/schemas/fraud/tables/scores/version")
        assert version.status_code == 200 and version.headers["delta-table-version"] == "1"


def test_a_table_on_s3_is_shared_with_presigned_urls(
    client_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltalake import write_deltalake

    from router.storage import delta_storage_options as storage_options
    from tests.router.gateway_process import s3_models

    with s3_models("lake", {}) as environment:
        location = "s3://lake/scores"
        for name, value in environment.items():  # the writer here reads what the gateway is given
            monkeypatch.setenv(name, value)
        write_deltalake(location, pa.table({"customer_id": [7, 8], "score": [0.2, 0.8]}),
                        storage_options=storage_options(location))
        with GatewayProcess(tmp_path / "home", env=environment) as gw, gw.client(timeout=30) as admin:
            admin.post(SHARES, json={"name": "lake"})
            admin.post(f"{SHARES}/lake/tables",
                       json={"schema": "risk", "name": "scores", "location": location})
            token = admin.post("/api/2.0/zeroserve/tokens", json={"principal": "bank"}).json()["token"]
            admin.post(f"{SHARES}/lake/recipients", json={"principal": "bank"})
            with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {token}"}) as bank:
                query = bank.post("/delta-sharing/shares/lake/schemas/risk/tables/scores/query", json={})
            [line] = [orjson.loads(text)["file"] for text in query.text.splitlines()[2:]]
            assert line["url"].startswith(environment["ZEROSERVE_S3_ENDPOINT_URL"])
            assert "Signature" in line["url"]
            assert httpx.get(line["url"]).content.startswith(b"PAR1")  # presigned: no credentials needed
            profile = tmp_path / "bank.share"
            profile.write_text(json.dumps({"shareCredentialsVersion": 1, "bearerToken": token,
                                           "endpoint": f"{gw.url}/delta-sharing/"}))
            script = ("import delta_sharing; print(sorted(delta_sharing.load_as_pandas("
                      f"{str(profile)!r} + '#lake.risk.scores')['customer_id'].tolist()))")
            run = subprocess.run([client_python, "-c", script], capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr[-3000:]
            assert run.stdout.strip().splitlines()[-1] == "[7, 8]"
