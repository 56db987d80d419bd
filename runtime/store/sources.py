"""What a URI resolves to: a listing of files and a way to download each one."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runtime.errors import StoreError
from runtime.store.manifest import RemoteFile, check_relative_path

Progress = Callable[[int], None]  # called with the number of new bytes received


class StoreUnreachable(StoreError):
    """The store did not answer (connection refused/reset, timeouts, 5xx or throttling past retries).

    Distinct from a definitive answer (404, 403): only this one lets a cached copy stand in.
    """


@dataclass(frozen=True)
class Digests:
    sha256: str
    md5: str | None  # computed when the listing gave an MD5 ETag to verify against


class Downloader(Protocol):
    async def download(self, file: RemoteFile, dest: Path, progress: Progress | None) -> Digests:
        """Write ``file`` to ``dest`` (a new temporary path) and return its digests."""
        ...


@dataclass(frozen=True)
class Resolved:
    location: str  # the canonical place the files come from, part of the version key
    files: list[RemoteFile]
    downloader: Downloader
    immutable: bool


class LocalFileDownloader:
    """Copies local files into the cache (single-file URIs; MLflow artifacts staged in a temp dir)."""

    _CHUNK = 4 * 1024 * 1024

    async def download(self, file: RemoteFile, dest: Path, progress: Progress | None) -> Digests:
        return await asyncio.to_thread(self._copy, Path(file.key), dest, file.md5 is not None, progress)

    def _copy(self, source: Path, dest: Path, want_md5: bool, progress: Progress | None) -> Digests:
        sha = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None
        with open(source, "rb") as reader, open(dest, "wb") as writer:
            while chunk := reader.read(self._CHUNK):
                writer.write(chunk)
                sha.update(chunk)
                if md5 is not None:
                    md5.update(chunk)
                if progress is not None:
                    progress(len(chunk))
        return Digests(sha.hexdigest(), md5.hexdigest() if md5 is not None else None)


def list_local(root: Path, origin: str) -> list[RemoteFile]:
    """Every regular file under ``root`` (or ``root`` itself), keyed by its absolute path."""
    if root.is_file():
        return [RemoteFile(path=root.name, key=str(root), size=root.stat().st_size)]
    if not root.is_dir():
        raise StoreError(f"{origin}: {root} does not exist")
    files: list[RemoteFile] = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            full = Path(directory) / name
            if not full.is_file():
                continue
            relative = check_relative_path(full.relative_to(root).as_posix(), origin)
            stat = full.stat()
            # size + mtime stand in for an ETag: a rewritten file makes a new version.
            files.append(RemoteFile(relative, str(full), stat.st_size, etag=f"mtime:{stat.st_mtime_ns}"))
    files.sort(key=lambda f: f.path)
    return files
