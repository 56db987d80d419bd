"""optimize_model: decide whether an MLflow model is served as a verified ONNX graph or natively.

    auto      convert and verify (or reuse a cached decision); serve ONNX if verified, else natively
    off       serve natively; nothing is read or converted
    required  like auto, but a model that cannot be converted and verified fails to load

The decision, the graph and the reason live in the warm cache (see cache.py), so on a machine that has
seen the model before a replica reads a manifest and checks one checksum: no MLflow import, no
conversion, no verification.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from pathlib import Path
from typing import Any

from filelock import Timeout

from runtime.errors import InvalidParameterValue, ModelLoadError
from runtime.optimize._mlmodel import MLmodelInfo, NotConvertible, read_mlmodel
from runtime.optimize.cache import ConversionCache, Entry, cache_key, model_digest
from runtime.optimize.converters import CONVERTER_NAMES, CONVERTER_PACKAGES
from runtime.optimize.types import OPTIMIZATION_MODES, OptimizationMode, OptimizationResult

log = logging.getLogger("zeroserve.optimize")

# Besides the converter's own packages, these decide whether a conversion verifies.
_COMMON_PACKAGES = ("onnx", "onnxruntime", "mlflow", "numpy")
# A few wheels ship under another distribution name than the module they install.
_DISTRIBUTION_ALIASES = {"xgboost": ("xgboost", "xgboost-cpu"),
                         "tensorflow": ("tensorflow", "tensorflow-cpu")}


def optimize_model(
    model_dir: Path,
    *,
    mode: OptimizationMode = "auto",
    cache_dir: Path,
    rtol: float = 1e-5,
    lock_timeout_s: float = 900.0,
) -> OptimizationResult:
    """Convert the MLflow model in ``model_dir`` to a verified ONNX graph, or say why it runs natively.

    Raises ``ModelLoadError`` only in ``"required"`` mode, when no verified graph can be had.
    """
    if mode not in OPTIMIZATION_MODES:
        raise InvalidParameterValue(f"optimization must be one of {list(OPTIMIZATION_MODES)}, got {mode!r}")
    if not rtol > 0:
        raise InvalidParameterValue(f"optimization tolerance must be positive, got {rtol!r}")
    started = time.monotonic()
    timings: dict[str, float] = {}
    if mode == "off":
        return OptimizationResult(path="native", reason="optimization is off", mode=mode)

    try:
        info = read_mlmodel(model_dir)
        flavor = info.flavor
        if flavor is None:
            loader = info.flavors.get("python_function", {}).get("loader_module")
            raise NotConvertible(
                f"no convertible flavor (pyfunc loader {loader!r}, flavors {sorted(info.flavors)})"
            )
        if info.inputs is None:
            raise NotConvertible("the model has no input signature to build graph inputs from")
        versions = _versions(flavor)
    except NotConvertible as exc:
        return _native(mode, str(exc), timings, started)

    mark = time.monotonic()
    key = None
    try:
        key = cache_key(model_digest(model_dir), flavor, versions, rtol)
        timings["digest_s"] = time.monotonic() - mark
        entry, problem, from_cache = _cached_or_built(
            ConversionCache(cache_dir / "optimized"), key, model_dir, info, flavor, versions, rtol,
            lock_timeout_s, timings,
        )  # fmt: skip
    except _Transient as exc:
        # Not a property of the model (a missing package, a lock held too long, an unwritable cache):
        # decided again next time rather than cached.
        return _native(mode, str(exc), timings, started, flavor=flavor, versions=versions, key=key)
    except OSError as exc:
        reason = f"the conversion cache is unusable: {type(exc).__name__}: {exc}"
        return _native(mode, reason, timings, started, flavor=flavor, versions=versions, key=key)

    timings["total_s"] = time.monotonic() - started
    rebuilt = f" (the cached entry was rebuilt: {problem})" if problem is not None else ""
    if entry.status != "verified":
        return _native(
            mode,
            entry.reason + rebuilt,
            timings,
            started,
            flavor=flavor,
            versions=versions,
            key=key,
            from_cache=from_cache,
        )
    result = OptimizationResult(
        path="onnx",
        reason=entry.reason + rebuilt,
        mode=mode,
        flavor=flavor,
        onnx_model_path=entry.onnx_path,
        onnx_model=entry.graph,
        adapter=entry.adapter,
        converter=entry.converter,
        converter_versions=entry.converter_versions,
        cache_key=key,
        from_cache=from_cache,
        verification=entry.verification,
        timings=timings,
    )
    log.info("optimization: %s", result.describe())
    return result


class _Transient(Exception):
    """A failure that says nothing about the model itself, so it is not cached."""


def _cached_or_built(
    cache: ConversionCache,
    key: str,
    model_dir: Path,
    info: MLmodelInfo,
    flavor: str,
    versions: dict[str, str],
    rtol: float,
    lock_timeout_s: float,
    timings: dict[str, float],
) -> tuple[Entry, str | None, bool]:
    """(entry, what was wrong with a cached one, whether it came from the cache).

    Single flight across processes: the first to take the key's lock converts, the others wait for it
    and then find its entry.
    """
    entry, problem = cache.lookup(key)
    if entry is not None:
        return entry, None, True
    mark = time.monotonic()
    try:
        with cache.lock(key, lock_timeout_s):
            timings["lock_wait_s"] = time.monotonic() - mark
            # Another replica may have converted while this one waited for the lock.
            entry, problem = cache.lookup(key)
            if entry is not None:
                return entry, None, True
            if problem is not None:
                log.warning("optimization: cached entry %s is unusable (%s); rebuilding it", key, problem)
            built, onnx_bytes = _build(model_dir, info, flavor, versions, key, rtol, timings)
            return cache.publish(built, onnx_bytes), problem, False
    except Timeout as exc:
        raise _Transient(f"another process held the conversion lock for {lock_timeout_s:g}s") from exc


def _build(
    model_dir: Path,
    info: MLmodelInfo,
    flavor: str,
    versions: dict[str, str],
    key: str,
    rtol: float,
    timings: dict[str, float],
) -> tuple[Entry, bytes | None]:
    # Imported here: only a replica that actually converts pays for MLflow and the converters.
    from runtime.optimize.verification import NativeModel, verify_attempts

    mark = time.monotonic()
    try:
        native = NativeModel.load(model_dir, info)
    except ImportError as exc:
        raise _Transient(f"cannot convert: {exc}") from exc
    except Exception as exc:
        raise _Transient(
            f"the native model did not load for verification: {type(exc).__name__}: {exc}"
        ) from exc
    timings["native_load_s"] = time.monotonic() - mark
    converter = CONVERTER_NAMES[flavor]
    base: dict[str, Any] = {
        "key": key,
        "flavor": flavor,
        "converter": converter,
        "converter_versions": versions,
    }
    try:
        outcome = verify_attempts(native, flavor, info, rtol, timings)
    except NotConvertible as exc:
        return Entry(status="rejected", reason=str(exc), **base), None
    except ImportError as exc:
        raise _Transient(f"cannot convert: {exc}") from exc
    if outcome.verified is None:
        return Entry(status="rejected", reason=outcome.reason, **base), None
    candidate, adapter, verification = outcome.verified
    import hashlib

    entry = Entry(
        status="verified",
        reason=outcome.reason,
        adapter=adapter,
        verification=verification,
        onnx_sha256=hashlib.sha256(candidate.onnx_bytes).hexdigest(),
        **base,
    )
    return entry, candidate.onnx_bytes


def _native(
    mode: OptimizationMode,
    reason: str,
    timings: dict[str, float],
    started: float,
    *,
    flavor: str | None = None,
    versions: dict[str, str] | None = None,
    key: str | None = None,
    from_cache: bool = False,
) -> OptimizationResult:
    timings["total_s"] = time.monotonic() - started
    if mode == "required":
        raise ModelLoadError(f"optimization is required but the model cannot be served as ONNX: {reason}")
    result = OptimizationResult(
        path="native",
        reason=reason,
        mode=mode,
        flavor=flavor,
        converter=None if flavor is None else CONVERTER_NAMES.get(flavor),
        converter_versions=versions or {},
        cache_key=key,
        from_cache=from_cache,
        timings=timings,
    )
    log.info("optimization: %s", result.describe())
    return result


def _versions(flavor: str) -> dict[str, str]:
    versions = {}
    for package in (*CONVERTER_PACKAGES[flavor], *_COMMON_PACKAGES):
        version = _distribution_version(package)
        if version is None:
            raise NotConvertible(
                f"{package} is not installed (install zeroserve[optimize] to convert {flavor} models)"
            )
        versions[package] = version
    return versions


def _distribution_version(package: str) -> str | None:
    for name in _DISTRIBUTION_ALIASES.get(package, (package,)):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
