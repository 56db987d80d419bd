"""Where model calls run: inline on the event loop, or on one worker thread.

A sub-millisecond ONNX call is cheaper inline than the thread hop around it; a slower model (pandas,
scikit-learn, torch) runs on a worker thread so that the event loop keeps reading requests, which is
also what lets the batcher gather them. Either way calls are serialized: one model call at a time.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from runtime.loaders.base import LoadedModel
from runtime.types import Params, Prediction, Tensors


class ModelRunner:
    def __init__(self, model: LoadedModel, *, threaded: bool) -> None:
        self.model = model
        self.threaded = threaded
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="zeroserve-model") if threaded else None

    async def predict(self, inputs: Tensors, params: Params | None = None) -> Prediction:
        if self._executor is None:
            return self.model.predict(inputs, params)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.model.predict, inputs, params)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
