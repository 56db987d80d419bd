"""One served model and the machinery around its calls: admission, batching, execution, drain state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from runtime.admission import Admission
from runtime.batcher import Batcher
from runtime.config import ReplicaSettings
from runtime.errors import InvalidInput
from runtime.loaders.base import LoadedModel
from runtime.payload import Payload
from runtime.runner import ModelRunner
from runtime.types import Prediction
from runtime.validation import UNBATCHABLE
from runtime.warmup import WarmUp


class Replica:
    def __init__(
        self,
        model: LoadedModel,
        *,
        name: str,
        version: str | None,
        settings: ReplicaSettings,
        warm: WarmUp,
    ) -> None:
        self.model = model
        self.name = name
        self.version = version
        self.settings = settings
        self.warm = warm
        if settings.execution == "auto":
            threaded = warm.call_seconds * 1000.0 > settings.inline_threshold_ms
        else:
            threaded = settings.execution == "thread"
        self.runner = ModelRunner(model, threaded=threaded)
        self.admission = Admission(settings.concurrency, settings.max_queued)
        self.batching = settings.batching and warm.batchable and settings.max_batch_size > 1
        self.batcher: Batcher | None = None
        if self.batching:
            self.batcher = Batcher(
                self.runner.predict,
                max_batch_size=settings.max_batch_size,
                max_delay_s=settings.max_batch_delay_ms / 1000.0,
            )
        self.ready = False
        self.draining = False

    async def start(self) -> None:
        """Call on the serving event loop, before the first request."""
        if self.batcher is not None:
            self.batcher.start()
        self.ready = True

    def begin_drain(self) -> None:
        self.ready = False
        self.draining = True

    async def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.close()
        self.runner.close()

    async def infer(self, receive: Callable[[], Awaitable[Payload]]) -> Prediction:
        """Admit a request, receive and validate its payload, and predict (batched when possible)."""
        await self.admission.acquire()
        batcher = self.batcher
        announced = batcher is not None
        if batcher is not None:
            batcher.announce()
        try:
            payload = await receive()
            if payload.params and not self.model.accepts_params:
                raise InvalidInput(
                    f"this {self.model.flavor} model takes no params, got {sorted(payload.params)}"
                )
            inputs, rows = self.model.conform(payload, allow_nan=self.settings.allow_nan)
            if batcher is not None and rows != UNBATCHABLE and not payload.params:
                announced = False
                return await batcher.submit(inputs, rows, announced=True)
            return await self.runner.predict(inputs, payload.params)
        finally:
            if announced and batcher is not None:
                batcher.withdraw()
            self.admission.release()

    @property
    def in_flight(self) -> int:
        return self.admission.in_progress + self.admission.queued

    def __repr__(self) -> str:
        execution = "thread" if self.runner.threaded else "inline"
        return (
            f"<Replica {self.name!r} {self.model!r} execution={execution} batching={self.batching} "
            f"{self.admission!r}>"
        )
