"""Converted graphs in the warm cache: keyed, checksummed, published atomically, built once per machine.

Layout under ``<cache_dir>/optimized``::

    <key>/manifest.json   the decision: verified (with the adapter spec) or rejected (with the reason)
    <key>/model.onnx      the verified graph; its SHA-256 is in the manifest
    locks/<key>.lock      cross-process single flight: the first replica converts, the others wait
    tmp/                  entries being written; nothing here is ever read

The key covers the model's content and every version that can change the outcome (converter, native
library, ONNX Runtime, the tolerance), so an upgrade or a re-logged model converts afresh while an
unchanged one never converts twice. Rejections are cached too: a model that does not convert should not
cost every cold start a failed conversion.
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from runtime.optimize.types import AdapterSpec, Verification

log = logging.getLogger("zeroserve.optimize")

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPH = "model.onnx"
_HASH_CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_digest(model_dir: Path) -> str:
    """The content of a model directory: every file's relative path, size and SHA-256."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        digest.update(f"{relative}\0{path.stat().st_size}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def cache_key(model: str, flavor: str, versions: dict[str, str], rtol: float) -> str:
    canonical = json.dumps(
        {"format": FORMAT_VERSION, "model": model, "flavor": flavor, "versions": versions, "rtol": rtol},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Entry:
    """A cached decision for one key."""

    key: str
    status: Literal["verified", "rejected"]
    reason: str
    flavor: str
    converter: str
    converter_versions: dict[str, str]
    adapter: AdapterSpec | None = None
    verification: Verification | None = None
    onnx_sha256: str | None = None
    directory: Path | None = None
    # The graph's bytes as checksummed by ``lookup`` (or as published): the replica builds its session
    # from these, so what it serves is exactly what was verified, even if the file is replaced or
    # evicted a moment later.
    graph: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def onnx_path(self) -> Path | None:
        return None if self.directory is None or self.status != "verified" else self.directory / GRAPH

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "key": self.key,
            "status": self.status,
            "reason": self.reason,
            "flavor": self.flavor,
            "converter": self.converter,
            "converter_versions": self.converter_versions,
            "adapter": None if self.adapter is None else self.adapter.to_dict(),
            "verification": None if self.verification is None else asdict(self.verification),
            "onnx_sha256": self.onnx_sha256,
        }
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, directory: Path) -> Entry:
        data = json.loads(text)
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"manifest format {data.get('format')!r}, expected {FORMAT_VERSION}")
        verification = data.get("verification")
        return cls(
            key=str(data["key"]),
            status=data["status"],
            reason=str(data["reason"]),
            flavor=str(data["flavor"]),
            converter=str(data["converter"]),
            converter_versions={str(k): str(v) for k, v in data["converter_versions"].items()},
            adapter=None if data.get("adapter") is None else AdapterSpec.from_dict(data["adapter"]),
            verification=None if verification is None else Verification(**verification),
            onnx_sha256=data.get("onnx_sha256"),
            directory=directory,
        )


class ConversionCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.locks = root / "locks"
        self.tmp = root / "tmp"
        for directory in (self.root, self.locks, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)

    def lock(self, key: str, timeout_s: float) -> FileLock:
        return FileLock(str(self.locks / f"{key}.lock"), timeout=timeout_s)

    def lookup(self, key: str) -> tuple[Entry | None, str | None]:
        """The usable entry for ``key`` (or None), and what was wrong with an unusable one (or None).

        A verified entry is usable only if its graph still has the checksum it was verified with: a
        graph edited or truncated on disk is reported, so the caller rebuilds it, and never served.
        """
        directory = self.root / key
        try:
            entry = Entry.from_json((directory / MANIFEST).read_text(), directory)
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"unreadable manifest ({exc})"
        if entry.key != key:
            return None, f"manifest is for key {entry.key}"
        if entry.status == "verified":
            try:
                graph = (directory / GRAPH).read_bytes()
            except FileNotFoundError:
                return None, "converted graph is missing"
            actual = hashlib.sha256(graph).hexdigest()
            if actual != entry.onnx_sha256:
                return (
                    None,
                    f"converted graph checksum mismatch (expected {entry.onnx_sha256}, found {actual})",
                )
            entry = replace(entry, graph=graph)
        # A use, for the store's least-recently-used eviction (which counts converted graphs too).
        with contextlib.suppress(OSError):
            os.utime(directory / MANIFEST)
        return entry, None

    # ---- eviction (runtime.store.eviction) ----------------------------------------------------------

    def entry_keys(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p not in (self.locks, self.tmp))

    def last_used(self, key: str) -> float:
        try:
            return (self.root / key / MANIFEST).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def entry_bytes(self, key: str) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for path in (self.root / key).iterdir():
                with contextlib.suppress(FileNotFoundError):
                    total += path.stat().st_size
        return total

    def total_bytes(self) -> int:
        return sum(self.entry_bytes(key) for key in self.entry_keys())

    def remove(self, key: str) -> bool:
        """Remove an entry unless a replica is converting it right now (its lock is held); a replica
        serving the graph is unaffected (its session was built from the bytes). True when removed."""
        lock = self.lock(key, 0)
        try:
            lock.acquire()
        except Timeout:
            return False
        try:
            final = self.root / key
            if not final.exists():
                return False
            doomed = self.tmp / f"evicted.{key}.{uuid.uuid4().hex}.{time.time_ns()}"
            os.replace(final, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            return True
        finally:
            lock.release()

    def publish(self, entry: Entry, onnx_bytes: bytes | None) -> Entry:
        """Write ``entry`` (and its graph) under a temporary name, then rename it into place.

        Callers hold the key's lock, so the only thing that can sit at the final name is a broken entry,
        which is moved aside first.
        """
        staging = self.tmp / f"{entry.key}.{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            if onnx_bytes is not None:
                _write_synced(staging / GRAPH, onnx_bytes)
            _write_synced(staging / MANIFEST, entry.to_json().encode())
            final = self.root / entry.key
            if final.exists():
                discarded = self.tmp / f"discarded.{entry.key}.{uuid.uuid4().hex}"
                os.replace(final, discarded)
                shutil.rmtree(discarded, ignore_errors=True)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return replace(entry, directory=final, graph=onnx_bytes)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
