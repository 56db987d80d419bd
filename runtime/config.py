"""Settings of one replica (environment prefix ``ZEROSERVE_``, command-line flags override them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The longest path a replica's Unix socket may have: sun_path is 108 bytes on Linux (104 on macOS),
# terminating NUL included.
MAX_UNIX_SOCKET_PATH = 103

ExecutionMode = Literal["auto", "inline", "thread"]


class ReplicaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZEROSERVE_", extra="ignore")

    # Adaptive batching: concurrent requests are merged into one model call of at most
    # ``max_batch_size`` rows; a batch waits at most ``max_batch_delay_ms`` for requests that are
    # already being received (never for requests that might come later), so an idle replica adds no delay.
    batching: bool = True
    max_batch_size: int = Field(default=64, ge=1)
    max_batch_delay_ms: float = Field(default=2.0, ge=0.0)

    # Container concurrency C: requests processed at once. Requests beyond C wait in a bounded FIFO
    # (``max_queued``); beyond that the replica answers 429 so the router can pick another replica.
    concurrency: int = Field(default=4, ge=1)
    max_queued: int = Field(default=256, ge=0)

    # SIGTERM: stop accepting, finish in-flight requests within this many seconds, exit 0.
    drain_timeout_s: float = Field(default=30.0, ge=0.0)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1)

    # Where model calls run. "inline" runs them on the event loop (best for sub-millisecond models,
    # a thread hop costs more than the call); "thread" runs them on one worker thread so the loop keeps
    # reading requests meanwhile; "auto" picks by the warm-up call's duration.
    execution: ExecutionMode = "auto"
    inline_threshold_ms: float = Field(default=1.0, ge=0.0)

    # NaN/Infinity in numeric inputs are rejected (400) unless allowed here or the MLflow column is optional.
    allow_nan: bool = False

    # Threads inside one model call. The defaults suit small models on a small (2-core) machine, where
    # the HTTP side needs the other core; raise them for big models on big machines.
    onnx_intra_op_threads: int = Field(default=1, ge=0)
    torch_threads: int = Field(default=1, ge=1)
    # Where the model runs: "cuda" on the GPU its backend gave it (CUDA_VISIBLE_DEVICES), set by the
    # backend for GPU workload types; a replica that cannot use it refuses to start (runtime/devices.py).
    device: Literal["cpu", "cuda"] = "cpu"

    # Automatic optimization of MLflow models (runtime/optimize): "auto" serves a conversion to ONNX that
    # answered exactly like the native model, "off" always the native flavor, "required" fails the load
    # when there is no such conversion. Scores must agree within ``optimization_rtol`` (relative).
    optimization: Literal["auto", "off", "required"] = "auto"
    optimization_rtol: float = Field(default=1e-5, gt=0.0)
