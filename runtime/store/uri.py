"""Parse model URIs into typed sources; no I/O, no heavy imports."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from runtime.errors import InvalidParameterValue


@dataclass(frozen=True)
class LocalSource:
    """A path on this machine (``file:///...`` or a plain path)."""

    path: Path

    @property
    def immutable(self) -> bool:
        return False


@dataclass(frozen=True)
class S3Source:
    """``s3://bucket/key`` — a single object, or every object under ``key/`` (a "directory")."""

    bucket: str
    key: str
    version_id: str | None = None

    @property
    def immutable(self) -> bool:
        # Only an object version id pins content; a key or prefix can be overwritten at any time.
        return self.version_id is not None

    @property
    def display(self) -> str:
        suffix = f"?versionId={self.version_id}" if self.version_id else ""
        return f"s3://{self.bucket}/{self.key}{suffix}"


@dataclass(frozen=True)
class MlflowSource:
    """``models:/name/version``, ``models:/name@alias`` or ``runs:/run_id/path``."""

    uri: str
    immutable: bool


ModelSource = LocalSource | S3Source | MlflowSource

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")


def parse_model_uri(uri: str) -> ModelSource:
    """Classify ``uri``; raises :class:`InvalidParameterValue` naming what is wrong."""
    text = uri.strip()
    if not text:
        raise InvalidParameterValue("model URI is empty")
    if "://" not in text and not text.startswith(("models:", "runs:")):
        return LocalSource(Path(text).expanduser().resolve())
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidParameterValue(
                f"file URI {uri!r} names host {parts.netloc!r}; only local files work"
            )
        path = unquote(parts.path)
        if not path:
            raise InvalidParameterValue(f"file URI {uri!r} has no path")
        return LocalSource(Path(path).resolve())
    if scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET.match(bucket):
            raise InvalidParameterValue(f"S3 URI {uri!r} has an invalid bucket name {bucket!r}")
        key = unquote(parts.path).lstrip("/").rstrip("/")
        if ".." in key.split("/"):
            raise InvalidParameterValue(f"S3 URI {uri!r} contains '..'")
        version_ids = parse_qs(parts.query).get("versionId")
        version_id = version_ids[0] if version_ids else None
        if version_id is not None and not key:
            raise InvalidParameterValue(f"S3 URI {uri!r}: a versionId needs an object key")
        return S3Source(bucket=bucket, key=key, version_id=version_id)
    if scheme == "models":
        name_and_ref = text[len("models:") :].lstrip("/")
        if not name_and_ref:
            raise InvalidParameterValue(f"model URI {uri!r} names no model")
        if "@" in name_and_ref:  # an alias moves when someone re-points it
            return MlflowSource(text, immutable=False)
        pieces = name_and_ref.split("/")
        # models:/name/3 and MLflow 3's models:/m-<id> name fixed content; latest and stages move.
        fixed = (len(pieces) == 2 and pieces[1].isdigit()) or (
            len(pieces) == 1 and pieces[0].startswith("m-")
        )
        return MlflowSource(text, immutable=fixed)
    if scheme == "runs":
        if not text[len("runs:") :].lstrip("/"):
            raise InvalidParameterValue(f"run URI {uri!r} names no run")
        return MlflowSource(text, immutable=True)  # a run's logged artifacts are write-once
    raise InvalidParameterValue(
        f"unsupported model URI scheme {scheme!r} in {uri!r} (use s3://, file://, models:/ or runs:/)"
    )


def name_from_uri(uri: str) -> str:
    """A served name for a model URI: ``models:/churn/3`` and ``s3://b/m/churn.onnx`` give ``churn``."""
    path = uri.split("?", 1)[0].split("://", 1)[-1]
    if uri.startswith("models:/"):
        path = path.removeprefix("models:/")
        return path.strip("/").split("/", 1)[0] or "model"
    last = path.rstrip("/").rsplit("/", 1)[-1]
    stem = last.rsplit(".", 1)[0] if "." in last else last
    return stem or "model"
