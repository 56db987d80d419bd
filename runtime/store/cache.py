"""The on-disk, content-addressed cache.

Layout under ``cache_dir``::

    blobs/sha256/ab/<sha256>     file content, stored once however many versions share it (read-only)
    versions/<key>/manifest.json one resolved version: its files, sizes, ETags, checksums
    versions/<key>/tree/...      the model directory as in the source: hard links to the blobs
    refs/<sha256(uri)>.json      the version a URI last resolved to (immutable URIs skip the store)
    etags/<sha256(etag,size)>    blob a given ETag produced, so a new version reuses unchanged files
    pins/<key>.pin               shared flocks of the processes using a version (see pins.py)
    locks/<key>.lock             cross-process single flight for fetching a version
    tmp/                         downloads and trees in progress; nothing here is ever served

Every blob carries a sentinel mtime. Blobs are read-only, and any write to one resets its mtime, so a
stat per file on open (size + sentinel) detects truncation or an edit without reading the content.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from runtime.store.manifest import FileEntry, Manifest
from runtime.store.pins import Pin

log = logging.getLogger("zeroserve.store")

SENTINEL_MTIME_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09: no write to a blob produces it
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Ref:
    uri: str
    version_key: str
    immutable: bool
    checked_at: float  # wall-clock time of the last confirmation by the store (for the freshness TTL)
    local_path: str | None = None  # an MLflow URI whose artifacts are a local directory, served in place


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.versions = root / "versions"
        self.refs = root / "refs"
        self.etags = root / "etags"
        self.pins = root / "pins"
        self.locks = root / "locks"
        self.tmp = root / "tmp"
        for directory in (self.blobs, self.versions, self.refs, self.etags, self.pins, self.locks, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)

    # ---- paths ----------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256

    def tree_path(self, key: str) -> Path:
        return self.versions / key / "tree"

    def pin_path(self, key: str) -> Path:
        return self.pins / f"{key}.pin"

    def lock_path(self, key: str) -> Path:
        return self.locks / f"{key}.lock"

    def temp_path(self, label: str) -> Path:
        # The pid lets `cache prune` tell a crashed download's leftovers from a live one.
        return self.tmp / f"{os.getpid()}-{uuid.uuid4().hex[:12]}-{label}"

    def pin(self, key: str) -> Pin:
        return Pin(self.pin_path(key))

    # ---- refs (uri -> version) ------------------------------------------------------------------
    def _ref_path(self, uri: str) -> Path:
        return self.refs / f"{hashlib.sha256(uri.encode()).hexdigest()[:40]}.json"

    def read_ref(self, uri: str) -> Ref | None:
        try:
            data = json.loads(self._ref_path(uri).read_text())
            return Ref(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def write_ref(self, ref: Ref) -> None:
        # A hint, not data: rename keeps it whole, and losing the latest one to a crash costs only a
        # store round trip, so it is not fsynced (an fsync here would dominate a warm open).
        self._atomic_write(self._ref_path(ref.uri), json.dumps(ref.__dict__), durable=False)

    # ---- etag index (etag, size) -> blob ---------------------------------------------------------
    def _etag_path(self, etag: str, size: int, version_id: str | None) -> Path:
        return self.etags / hashlib.sha256(f"{etag}|{size}|{version_id}".encode()).hexdigest()[:40]

    def blob_for_etag(self, etag: str | None, size: int, version_id: str | None) -> str | None:
        """The sha256 of a valid blob an object with this ETag produced before, if any."""
        if not etag:
            return None
        try:
            sha = self._etag_path(etag, size, version_id).read_text().strip()
        except FileNotFoundError:
            return None
        return sha if self.blob_ok(sha, size) else None

    def remember_etag(self, etag: str | None, size: int, version_id: str | None, sha256: str) -> None:
        if etag:  # a hint as well: a missing entry only means a GET that could have been skipped
            self._atomic_write(self._etag_path(etag, size, version_id), sha256, durable=False)

    # ---- blobs ----------------------------------------------------------------------------------
    def blob_ok(self, sha256: str, size: int) -> bool:
        try:
            stat = self.blob_path(sha256).stat()
        except FileNotFoundError:
            return False
        return stat.st_size == size and stat.st_mtime_ns == SENTINEL_MTIME_NS

    def adopt_blob(self, temp_file: Path, sha256: str) -> Path:
        """Publish a fully written, verified temporary file as the blob for ``sha256``."""
        target = self.blob_path(sha256)
        target.parent.mkdir(exist_ok=True)
        size = temp_file.stat().st_size
        if self.blob_ok(sha256, size):  # stored already (another version, another process)
            temp_file.unlink()
            return target
        with open(temp_file, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temp_file, 0o444)
        os.utime(temp_file, ns=(SENTINEL_MTIME_NS, SENTINEL_MTIME_NS))
        os.replace(temp_file, target)  # atomic: readers see no blob or the whole blob
        fsync_dir(target.parent)
        return target

    def discard_blob(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(sha256).unlink()

    # ---- versions -------------------------------------------------------------------------------
    def read_manifest(self, key: str) -> Manifest | None:
        try:
            return Manifest.from_json((self.versions / key / "manifest.json").read_text())
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None

    def check_version(self, key: str, *, full: bool = False) -> tuple[Manifest | None, list[FileEntry]]:
        """The manifest of a published version and the entries that fail verification.

        Returns ``(None, [])`` when the version is not published.
        """
        manifest = self.read_manifest(key)
        if manifest is None:
            return None, []
        tree = self.tree_path(key)
        bad: list[FileEntry] = []
        for entry in manifest.files:
            path = tree / entry.path
            try:
                stat = path.stat()
            except FileNotFoundError:
                bad.append(entry)
                continue
            if (
                stat.st_size != entry.size
                or stat.st_mtime_ns != SENTINEL_MTIME_NS
                or (full and sha256_file(path) != entry.sha256)
            ):
                bad.append(entry)
        return manifest, bad

    def publish_version(self, manifest: Manifest) -> Path:
        """Lay out a version's tree from its blobs and make it visible in one rename."""
        staging = self.temp_path(f"version-{manifest.version_key}")
        tree = staging / "tree"
        try:
            for entry in manifest.files:
                target = tree / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(self.blob_path(entry.sha256), target)
            self._write_synced(staging / "manifest.json", manifest.to_json())
            final = self.versions / manifest.version_key
            if final.exists():  # a stale or corrupt copy: the caller holds the version's fetch lock
                self.remove_version(manifest.version_key)
            os.rename(staging, final)
            fsync_dir(self.versions)
            self.touch(manifest.version_key)
            return final / "tree"
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def remove_version(self, key: str) -> None:
        """Unpublish a version (rename first, so nobody sees a half-deleted tree), freeing its blobs."""
        manifest = self.read_manifest(key)
        doomed = self.temp_path(f"evict-{key}")
        try:
            os.rename(self.versions / key, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)
        if manifest is not None:
            for entry in manifest.files:
                self._free_blob_if_unused(entry.sha256)

    def _free_blob_if_unused(self, sha256: str) -> None:
        # A blob's only remaining link is its own name once no version tree links it.
        path = self.blob_path(sha256)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_nlink <= 1:
                path.unlink()

    def touch(self, key: str) -> None:
        """Record a use, for least-recently-used eviction."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.versions / key / "manifest.json")

    def last_used(self, key: str) -> float:
        try:
            return (self.versions / key / "manifest.json").stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def version_keys(self) -> list[str]:
        return sorted(p.name for p in self.versions.iterdir() if p.is_dir())

    def blob_bytes(self) -> int:
        total = 0
        for shard in self.blobs.iterdir():
            for blob in shard.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    total += blob.stat().st_size
        return total

    # ---- helpers --------------------------------------------------------------------------------
    def _write_synced(self, path: Path, text: str, *, durable: bool = True) -> None:
        with open(path, "w") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())

    def _atomic_write(self, path: Path, text: str, *, durable: bool) -> None:
        temp = self.temp_path(path.name)
        self._write_synced(temp, text, durable=durable)
        os.replace(temp, path)

    def remove_stale_temp(self) -> int:
        """Delete leftovers of downloads whose process is gone; returns how many."""
        removed = 0
        for entry in self.tmp.iterdir():
            pid_text = entry.name.split("-", 1)[0]
            if pid_text.isdigit() and pid_alive(int(pid_text)):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed

    def now(self) -> float:
        return time.time()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (as ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
