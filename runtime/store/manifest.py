"""The manifest of one resolved model version: which files, how big, what content."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from runtime.errors import StoreError


@dataclass(frozen=True)
class RemoteFile:
    """One object as the store lists it, before it is fetched."""

    path: str  # relative to the model root, "/"-separated
    key: str  # the object key (or absolute local path) it comes from
    size: int
    etag: str | None = None
    version_id: str | None = None

    @property
    def md5(self) -> str | None:
        """The content MD5 when the ETag is one (single-part uploads); multipart ETags end in -N."""
        if self.etag is None:
            return None
        tag = self.etag.strip('"').lower()
        if len(tag) == 32 and all(c in "0123456789abcdef" for c in tag):
            return tag
        return None


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    etag: str | None = None
    version_id: str | None = None


@dataclass(frozen=True)
class Manifest:
    version_key: str
    uri: str
    location: str  # what the URI resolved to (an s3:// prefix, an MLflow artifact location)
    immutable: bool
    files: tuple[FileEntry, ...]
    created_at: float = field(default=0.0, compare=False)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = [asdict(entry) for entry in self.files]
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data: dict[str, Any] = json.loads(text)
        files = tuple(FileEntry(**entry) for entry in data.pop("files"))
        return cls(files=files, **data)


def version_key(location: str, files: list[RemoteFile]) -> str:
    """A stable name for the content a listing describes.

    Two listings with the same location, paths, sizes, ETags and version ids are the same version; any
    changed object changes the key, so a re-uploaded prefix becomes a new version beside the old one.
    """
    canonical = json.dumps(
        [location, sorted((f.path, f.size, f.etag, f.version_id) for f in files)], separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:40]


def check_relative_path(path: str, origin: str) -> str:
    """Reject listing entries that would escape the model directory once laid out on disk."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or path.endswith("/"):
        raise StoreError(f"{origin}: refusing unsafe object path {path!r}")
    return str(pure)
