"""The replica's HTTP app in-process (httpx's ASGI transport) on real models."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from runtime.app import build_app
from runtime.config import ReplicaSettings
from runtime.examples import feature_names, logreg_rows
from runtime.loaders import load_model
from runtime.replica import Replica
from runtime.warmup import warm_up

ROW = [round(value, 4) for value in logreg_rows(20, 1)[0].tolist()]


async def _client(model_dir: Path, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Replica]]:
    model = load_model(model_dir)
    replica = Replica(
        model, name="logreg", version="1", settings=ReplicaSettings(**settings), warm=warm_up(model)
    )
    await replica.start()
    transport = httpx.ASGITransport(app=build_app(replica))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            yield client, replica
    finally:
        await replica.stop()
        model.close()


@pytest.fixture
async def onnx(onnx_model: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Replica]]:
    async for pair in _client(onnx_model, max_body_bytes=200_000):
        yield pair


@pytest.fixture
async def client(onnx: tuple[httpx.AsyncClient, Replica]) -> httpx.AsyncClient:
    return onnx[0]


async def invoke(
    client: httpx.AsyncClient, body: Any, content_type: str = "application/json"
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post("/invocations", content=content, headers={"Content-Type": content_type})


async def test_every_mlflow_input_format_gives_the_same_answer(client: httpx.AsyncClient) -> None:
    columns = feature_names(20)
    csv = (",".join(columns) + "\n" + ",".join(str(value) for value in ROW) + "\n").encode()
    answers = [
        await invoke(client, {"inputs": [ROW]}),
        await invoke(client, {"instances": [ROW]}),
        await invoke(client, {"dataframe_split": {"columns": columns, "data": [ROW]}}),
        await invoke(client, {"dataframe_records": [dict(zip(columns, ROW, strict=True))]}),
        await invoke(client, {"inputs": {"float_input": [ROW]}}),
        await invoke(client, csv, "text/csv"),
    ]
    assert [answer.status_code for answer in answers] == [200] * len(answers)
    bodies = [answer.json() for answer in answers]
    assert all(body == bodies[0] for body in bodies)
    assert set(bodies[0]["predictions"]) == {"label", "probabilities"}
    assert abs(sum(bodies[0]["predictions"]["probabilities"][0]) - 1.0) < 1e-5


async def test_concurrent_requests_are_batched_and_a_bad_one_fails_alone(
    onnx: tuple[httpx.AsyncClient, Replica],
) -> None:
    client, replica = onnx
    assert replica.batcher is not None
    rows = logreg_rows(20, 12).tolist()
    bodies: list[Any] = [{"inputs": [row]} for row in rows]
    bodies[5] = {"inputs": [rows[5][:3]]}  # wrong shape
    calls_before = replica.batcher.batches
    answers = await asyncio.gather(*(invoke(client, body) for body in bodies))
    calls = replica.batcher.batches - calls_before
    assert [answer.status_code for answer in answers] == [200] * 5 + [400] + [200] * 6
    assert calls < 11  # several of the 11 good requests shared model calls
    single = [(await invoke(client, {"inputs": [row]})).json() for row in rows]
    assert [answer.json() for answer in answers[:5]] == single[:5]


BAD_REQUESTS = [
    ("malformed JSON", b'{"inputs": [[1, 2', "application/json", 400, "malformed JSON"),
    ("nested too deep", b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}", "application/json", 400,
     "nested deeper than 1024 levels"),
    ("empty body", b"", "application/json", 400, "body is empty"),
    ("wrong key", b'{"data": [[1]]}', "application/json", 400, "unknown key"),
    ("two input keys", b'{"inputs": [[1]], "instances": [[1]]}', "application/json", 400, "exactly one of"),
    (
        "wrong shape",
        b'{"inputs": [[1, 2, 3]]}',
        "application/json",
        400,
        "expects shape [-1, 20], got [1, 3]",
    ),
    ("wrong type", orjson.dumps({"inputs": [["x"] * 20]}), "application/json", 400, "could not convert"),
    ("NaN", orjson.dumps({"inputs": [[None] * 20]}), "application/json", 400, "NaN"),
    ("unknown input", orjson.dumps({"inputs": {"pixels": [ROW]}}), "application/json", 400, "unknown input"),
    (
        "params for ONNX",
        orjson.dumps({"inputs": [ROW], "params": {"k": 1}}),
        "application/json",
        400,
        "no params",
    ),
    ("oversized", orjson.dumps({"inputs": [ROW] * 5000}), "application/json", 413, "limit is 200000"),
    ("plain text", b"1,2,3", "text/plain", 415, "unsupported Content-Type"),
    ("extra parameter", b"{}", "application/json; format=pandas-records", 415, "parameter"),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[c[0] for c in BAD_REQUESTS],
)
async def test_bad_input_gets_a_4xx_naming_the_problem(
    client: httpx.AsyncClient, body: bytes, content_type: str, status: int, message: str
) -> None:
    answer = await invoke(client, body, content_type)
    assert answer.status_code == status
    error = answer.json()
    assert message in error["message"]
    # The code says what kind of problem it is: a 415 is not a BAD_REQUEST.
    expected = {400: "BAD_REQUEST", 413: "REQUEST_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}[status]
    assert error["error_code"] == expected


async def test_gzip_bodies_are_accepted(client: httpx.AsyncClient) -> None:
    body = gzip.compress(orjson.dumps({"inputs": [ROW]}))
    answer = await client.post(
        "/invocations", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert answer.status_code == 200
    bomb = gzip.compress(b" " * 300_000)
    answer = await client.post(
        "/invocations", content=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert answer.status_code == 413


async def test_health_and_metadata(onnx: tuple[httpx.AsyncClient, Replica]) -> None:
    client, replica = onnx
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/ping")).status_code == 200
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/version")).text
    assert "binary_tensor_data" in (await client.get("/v2")).json()["extensions"]
    metadata = (await client.get("/v2/models/logreg/versions/1")).json()
    assert metadata["inputs"] == [{"name": "float_input", "datatype": "FP32", "shape": [-1, 20]}]
    assert metadata["platform"] == "onnx" and metadata["versions"] == ["1"]
    assert (await client.get("/v2/models/logreg/ready")).json() == {"name": "logreg", "ready": True}
    replica.begin_drain()
    assert (await client.get("/v2/health/ready")).status_code == 503
    assert (await client.get("/v2/models/logreg/ready")).status_code == 503


async def test_v2_json_inference_and_errors(client: httpx.AsyncClient) -> None:
    request = {
        "id": "r1",
        "inputs": [{"name": "float_input", "shape": [1, 20], "datatype": "FP32", "data": ROW}],
    }
    answer = await client.post("/v2/models/logreg/infer", json=request)
    assert answer.status_code == 200
    document = answer.json()
    assert document["id"] == "r1" and document["model_name"] == "logreg"
    assert {output["name"] for output in document["outputs"]} == {"label", "probabilities"}
    missing = await client.post("/v2/models/other/infer", json=request)
    assert missing.status_code == 404 and "other" in missing.json()["error"]
    wrong_version = await client.post("/v2/models/logreg/versions/9/infer", json=request)
    assert wrong_version.status_code == 404
    bad = await client.post("/v2/models/logreg/infer", json={"inputs": [{"name": "float_input"}]})
    assert bad.status_code == 400 and "unsupported datatype" in bad.json()["error"]


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    wrong_method = await client.get("/invocations")
    assert wrong_method.status_code == 405
    assert (await client.post("/v2/models/logreg/versions/infer", json={})).status_code == 404


async def test_a_pyfunc_with_params_and_columns(custom_model: Path) -> None:
    async for client, replica in _client(custom_model):
        assert replica.model.accepts_params
        body = {"dataframe_split": {"columns": ["x", "y"], "data": [[1.0, 2.0], [3.0, 0.5]]}}
        assert (await invoke(client, body)).json() == {"predictions": [5.0, 4.0]}
        scaled = await invoke(client, {**body, "params": {"scale": 2.0}})
        assert scaled.json() == {"predictions": [10.0, 8.0]}
        missing = await invoke(client, {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}})
        assert missing.status_code == 400 and "missing column 'y'" in missing.json()["message"]
        answers = await asyncio.gather(
            *(invoke(client, {"inputs": {"x": [float(i)], "y": [1.0]}}) for i in range(6))
        )
        assert [answer.json()["predictions"] for answer in answers] == [[float(i) + 2.0] for i in range(6)]


async def test_a_model_rejecting_its_input_is_a_400(propensity_model: Path) -> None:
    async for client, _ in _client(propensity_model):
        good = {"dataframe_records": [{"age": 40, "tenure_months": 12, "num_purchases": 3, "avg_basket": 25.5,
                                       "days_since_last_visit": 10, "is_member": True}]}  # fmt: skip
        answer = await invoke(client, good)
        assert answer.status_code == 200
        (record,) = answer.json()["predictions"]
        assert 0.0 < record["probability"] < 1.0
        bad = {"dataframe_records": [{**good["dataframe_records"][0], "age": 40.5}]}
        answer = await invoke(client, bad)
        assert answer.status_code == 400 and "column 'age'" in answer.json()["message"]
        assert np.isfinite(record["probability"])
