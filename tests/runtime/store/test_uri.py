"""Model URI parsing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.errors import InvalidParameterValue
from runtime.store.uri import LocalSource, MlflowSource, ModelSource, S3Source, parse_model_uri


@dataclass(frozen=True)
class Case:
    uri: str
    expected: ModelSource
    immutable: bool


CASES = [
    Case("s3://bucket/models/churn", S3Source("bucket", "models/churn"), False),
    Case("s3://bucket/models/churn/", S3Source("bucket", "models/churn"), False),
    Case("s3://bucket/m.onnx?versionId=abc", S3Source("bucket", "m.onnx", "abc"), True),
    Case("s3://bucket", S3Source("bucket", ""), False),
    Case("file:///srv/models/x", LocalSource(Path("/srv/models/x")), False),
    Case("file://localhost/srv/x", LocalSource(Path("/srv/x")), False),
    Case("/srv/models/x", LocalSource(Path("/srv/models/x")), False),
    Case("models:/churn/3", MlflowSource("models:/churn/3", True), True),
    Case("models:/churn/latest", MlflowSource("models:/churn/latest", False), False),
    Case("models:/churn/Production", MlflowSource("models:/churn/Production", False), False),
    Case("models:/churn@champion", MlflowSource("models:/churn@champion", False), False),
    Case("models:/m-0123abcd", MlflowSource("models:/m-0123abcd", True), True),
    Case("runs:/0a1b2c/model", MlflowSource("runs:/0a1b2c/model", True), True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.uri for c in CASES])
def test_parse(case: Case) -> None:
    source = parse_model_uri(case.uri)
    assert source == case.expected
    assert source.immutable is case.immutable


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("", "empty"),
        ("gs://bucket/x", "unsupported model URI scheme 'gs'"),
        ("file://remotehost/x", "names host 'remotehost'"),
        ("s3://Bad_Bucket!/x", "invalid bucket name"),
        ("s3://bucket/a/../b", "'..'"),
        ("s3://bucket?versionId=1", "needs an object key"),
        ("models:/", "names no model"),
        ("runs:/", "names no run"),
    ],
)
def test_invalid_uris_name_the_problem(uri: str, problem: str) -> None:
    with pytest.raises(InvalidParameterValue, match=problem.replace("?", r"\?")):
        parse_model_uri(uri)


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_model_uri("models-dir/x") == LocalSource(tmp_path / "models-dir" / "x")
