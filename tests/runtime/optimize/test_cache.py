"""The conversion cache: atomic publish, checksum on lookup, keys that move with what matters."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from runtime.optimize.cache import ConversionCache, Entry, cache_key, model_digest
from runtime.optimize.types import AdapterSpec, FeedSpec, OutputSpec, Verification
from runtime.store import StoreSettings, open_model
from runtime.store.cache import Cache
from runtime.store.eviction import evict, stored_bytes

ADAPTER = AdapterSpec(
    feeds=(FeedSpec("input", "matrix", ("a",), "<f4"),), output=OutputSpec("label", "<i8", 1)
)


def verified(key: str) -> Entry:
    return Entry(
        key=key,
        status="verified",
        reason="float32 matrix input, verified",
        flavor="sklearn",
        converter="skl2onnx",
        converter_versions={"skl2onnx": "1.0"},
        adapter=ADAPTER,
        verification=Verification(rows=10, label_exact=True, max_rel_error=0.0, rtol=1e-5),
        onnx_sha256="",
    )


def publish(cache: ConversionCache, key: str, graph: bytes = b"graph") -> Entry:
    entry = replace(verified(key), onnx_sha256=hashlib.sha256(graph).hexdigest())
    return cache.publish(entry, graph)


def test_publish_then_lookup_round_trips(tmp_path: Path) -> None:
    cache = ConversionCache(tmp_path)
    published = publish(cache, "k1")
    found, problem = cache.lookup("k1")
    assert problem is None and found is not None
    assert found.adapter == ADAPTER and found.verification == published.verification
    assert found.onnx_path is not None and found.onnx_path.read_bytes() == b"graph"
    assert cache.lookup("absent") == (None, None)
    assert list(cache.tmp.iterdir()) == []


def test_tampered_truncated_or_missing_graph_is_reported(tmp_path: Path) -> None:
    cache = ConversionCache(tmp_path)
    entry = publish(cache, "k1")
    assert entry.onnx_path is not None
    entry.onnx_path.write_bytes(b"graPh")
    assert "checksum mismatch" in str(cache.lookup("k1")[1])
    entry.onnx_path.write_bytes(b"gr")
    assert "checksum mismatch" in str(cache.lookup("k1")[1])
    entry.onnx_path.unlink()
    assert cache.lookup("k1") == (None, "converted graph is missing")


def test_unreadable_or_foreign_manifest_is_reported(tmp_path: Path) -> None:
    cache = ConversionCache(tmp_path)
    publish(cache, "k1")
    manifest = tmp_path / "k1" / "manifest.json"
    manifest.write_text("{not json")
    assert "unreadable manifest" in str(cache.lookup("k1")[1])
    publish(cache, "k2")
    (tmp_path / "k2").rename(tmp_path / "k3")
    assert "manifest is for key k2" in str(cache.lookup("k3")[1])
    data = json.loads((tmp_path / "k3" / "manifest.json").read_text())
    data["format"] = 99
    (tmp_path / "k3" / "manifest.json").write_text(json.dumps(data))
    assert "format 99" in str(cache.lookup("k3")[1])


def test_publish_replaces_a_broken_entry(tmp_path: Path) -> None:
    cache = ConversionCache(tmp_path)
    publish(cache, "k1", b"old")
    (tmp_path / "k1" / "model.onnx").write_bytes(b"bad")
    publish(cache, "k1", b"new")
    found, problem = cache.lookup("k1")
    assert problem is None and found is not None and found.onnx_path is not None
    assert found.onnx_path.read_bytes() == b"new"
    assert list(cache.tmp.iterdir()) == []


def test_rejections_are_cached_without_a_graph(tmp_path: Path) -> None:
    cache = ConversionCache(tmp_path)
    rejected = Entry(
        key="k1",
        status="rejected",
        reason="no converter",
        flavor="sklearn",
        converter="skl2onnx",
        converter_versions={},
    )
    cache.publish(rejected, None)
    found, problem = cache.lookup("k1")
    assert problem is None and found is not None and found.status == "rejected" and found.onnx_path is None


def test_keys_follow_content_versions_and_tolerance(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}")
    (model / "data").mkdir()
    (model / "data" / "weights").write_bytes(b"abc")
    digest = model_digest(model)
    (model / "data" / "weights").write_bytes(b"abd")  # same size, other content
    assert model_digest(model) != digest
    versions = {"skl2onnx": "1.0"}
    key = cache_key(digest, "sklearn", versions, 1e-5)
    assert key == cache_key(digest, "sklearn", dict(versions), 1e-5)
    assert key != cache_key(digest, "sklearn", {"skl2onnx": "1.1"}, 1e-5)
    assert key != cache_key(digest, "sklearn", versions, 1e-4)
    assert key != cache_key(digest, "xgboost", versions, 1e-5)


def test_lookup_hands_out_the_checksummed_bytes_and_records_the_use(tmp_path: Path) -> None:
    cache = ConversionCache(tmp_path)
    publish(cache, "k1", b"verified graph")
    manifest = tmp_path / "k1" / "manifest.json"
    os.utime(manifest, (1_000_000, 1_000_000))
    found, _ = cache.lookup("k1")
    assert found is not None and found.graph == b"verified graph"
    assert cache.last_used("k1") > 1_000_000  # a lookup is a use, for LRU eviction
    # The bytes stay what was verified even when the file is replaced after the lookup.
    (tmp_path / "k1" / "model.onnx").write_bytes(b"swapped")
    assert found.graph == b"verified graph"


def test_converted_graphs_count_against_the_cache_budget_and_are_evicted_lru(tmp_path: Path) -> None:
    settings = StoreSettings(cache_dir=tmp_path / "cache", cache_max_bytes=0)
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(50_000))
    with open_model(str(model), settings) as handle:
        version = handle.version_key
    cache = Cache(settings.cache_dir)
    converted = ConversionCache(settings.cache_dir / "optimized")
    for index, key in enumerate(("old", "new")):
        publish(converted, key, os.urandom(40_000))
        os.utime(settings.cache_dir / "optimized" / key / "manifest.json", (2_000_000 + index,) * 2)
    os.utime(settings.cache_dir / "versions" / version / "manifest.json", (1_000_000,) * 2)
    assert 130_000 < stored_bytes(cache) < 135_000  # blobs + both graphs (+ their manifests)
    # Oldest first across both kinds: the model version, then the older graph; the newer one fits.
    assert evict(cache, max_bytes=60_000) == [version, "optimized/old"]
    assert converted.entry_keys() == ["new"] and cache.version_keys() == []
    # A graph whose conversion is under way (its lock held) is left alone.
    with converted.lock("new", 1):
        assert evict(cache, max_bytes=1) == []
    assert evict(cache, max_bytes=1) == ["optimized/new"]
    assert stored_bytes(cache) == 0
