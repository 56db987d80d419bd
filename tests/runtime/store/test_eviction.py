"""LRU eviction under the size budget; pinned versions (live processes) are never evicted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from runtime.store import StoreSettings, cache_stats, open_model
from runtime.store.cache import Cache
from runtime.store.eviction import evict


def make_model(root: Path, name: str, size: int) -> Path:
    path = root / f"{name}.bin"
    path.write_bytes(os.urandom(size))
    return path


def test_least_recently_used_unpinned_versions_go_first(tmp_path: Path) -> None:
    settings = StoreSettings(cache_dir=tmp_path / "cache", cache_max_bytes=0)
    models = [make_model(tmp_path, f"m{i}", 100_000) for i in range(4)]
    keys = []
    cache = Cache(settings.cache_dir)
    for index, model in enumerate(models):
        with open_model(str(model), settings) as handle:
            keys.append(handle.version_key)
        # Last used an hour ago plus index seconds: distinct, in fetch order, whatever the clock's grain.
        used = time.time() - 3600 + index
        os.utime(cache.versions / handle.version_key / "manifest.json", (used, used))
    open_model(str(models[0]), settings).close()  # m0 becomes the most recently used
    before = cache_stats().evictions
    evicted = evict(cache, max_bytes=250_000)
    assert evicted == [keys[1], keys[2]]
    assert set(cache.version_keys()) == {keys[0], keys[3]}
    assert cache.blob_bytes() == 200_000  # the evicted versions' blobs are gone too
    assert cache_stats().evictions == before + 2


def test_a_pinned_version_survives_even_over_budget(tmp_path: Path) -> None:
    settings = StoreSettings(cache_dir=tmp_path / "cache", cache_max_bytes=0)
    held = open_model(str(make_model(tmp_path, "held", 300_000)), settings)
    released = open_model(str(make_model(tmp_path, "released", 300_000)), settings)
    released.close()
    evicted = evict(Cache(settings.cache_dir), max_bytes=1)
    assert evicted == [released.version_key]
    assert (held.path / "held.bin").stat().st_size == 300_000
    held.close()
    assert evict(Cache(settings.cache_dir), max_bytes=1) == [held.version_key]


def test_fetching_past_the_budget_evicts_older_versions(tmp_path: Path) -> None:
    settings = StoreSettings(cache_dir=tmp_path / "cache", cache_max_bytes=250_000)
    first = open_model(str(make_model(tmp_path, "a", 100_000)), settings)
    first.close()
    second = open_model(str(make_model(tmp_path, "b", 100_000)), settings)  # pinned
    third = open_model(str(make_model(tmp_path, "c", 100_000)), settings)  # pinned; pushes "a" out
    assert set(Cache(settings.cache_dir).version_keys()) == {second.version_key, third.version_key}
    second.close()
    third.close()


def test_a_pin_held_by_another_process_blocks_eviction_until_it_dies(tmp_path: Path) -> None:
    settings = StoreSettings(cache_dir=tmp_path / "cache", cache_max_bytes=0)
    model = make_model(tmp_path, "shared", 50_000)
    with open_model(str(model), settings) as handle:
        key = handle.version_key
    script = textwrap.dedent(
        f"""
        import sys, time
        from runtime.store import StoreSettings, open_model
        handle = open_model({str(model)!r}, StoreSettings(cache_dir={str(settings.cache_dir)!r}))
        print("pinned", flush=True)
        time.sleep(60)
        """
    )
    replica = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    try:
        assert replica.stdout is not None
        assert replica.stdout.readline().strip() == "pinned"
        assert evict(Cache(settings.cache_dir), max_bytes=1) == []
        # A crash (SIGKILL: no cleanup code runs) releases the pin with the process.
        os.kill(replica.pid, signal.SIGKILL)
        replica.wait(timeout=10)
        assert evict(Cache(settings.cache_dir), max_bytes=1) == [key]
    finally:
        if replica.poll() is None:
            replica.kill()
            replica.wait(timeout=10)
        if replica.stdout is not None:
            replica.stdout.close()


def test_an_evicted_version_is_fetched_again_on_next_open(tmp_path: Path) -> None:
    settings = StoreSettings(cache_dir=tmp_path / "cache", cache_max_bytes=0)
    model = make_model(tmp_path, "m", 10_000)
    open_model(str(model), settings).close()
    evict(Cache(settings.cache_dir), max_bytes=0, force_all_unpinned=True)
    assert Cache(settings.cache_dir).version_keys() == []
    with open_model(str(model), settings) as handle:
        assert (handle.path / "m.bin").read_bytes() == model.read_bytes()
